"""Unary and pairwise potentials of the fully connected CRF (DeepLab §3.3, eq. 2-3).

The energy of a labelling x is

    E(x) = Σ_i θ_i(x_i) + Σ_{i<j} θ_ij(x_i, x_j)                                  (eq. 2)

with the unary θ_i(x_i) = −log P(x_i) taken from the network's probabilities and the
pairwise term

    θ_ij = μ(x_i, x_j) [ w1 exp(−|p_i−p_j|²/2σα² − |I_i−I_j|²/2σβ²)
                       + w2 exp(−|p_i−p_j|²/2σγ²) ]                              (eq. 3)

with Potts μ = [x_i ≠ x_j]. Scaling positions and colours by their σ turns each Gaussian
into exp(−½|f_i − f_j|²) of a *feature vector* f: this module builds those features, one
row per pixel in row-major order (pixel n = row·W + column).
"""
import numpy as np

from .. import backend, validate

# Probabilities are clipped here before the logarithm so that a zero gives a large finite
# unary instead of infinity.
PROB_FLOOR = np.float32(1e-10)
FLOAT32_MAX = float(np.finfo(np.float32).max)


def check_image(image):
    """Check an ``H×W×3`` uint8 photo or ``H×W×F`` float feature image; return it."""
    validate.array("image", image)
    if image.ndim != 3 or min(image.shape) < 1:
        raise ValueError(f"image must be H×W×3 (uint8) or H×W×F (float) with at least one pixel and one "
                         f"channel, got shape {tuple(image.shape)}")
    if image.dtype != np.uint8:
        if image.dtype not in validate.FLOATS:
            raise TypeError(f"image must be uint8 (a photo) or float32/float64 (features), got dtype {image.dtype}")
        validate.float_array("image", image, ndim=3)
    return image


def check_probs(probs, tolerance=1e-3):
    """Check a ``C×H×W`` probability map: float, C >= 2, finite, >= 0, pixels summing to 1."""
    validate.float_array("probs", probs, ndim=3, finite=False)
    if probs.shape[0] < 2 or min(probs.shape[1:]) < 1:
        raise ValueError(f"probs must have at least 2 labels and one pixel (C×H×W with C >= 2), "
                         f"got shape {tuple(probs.shape)}")
    xp = backend.array_module(probs)
    # three reductions, one transfer to the host (on a GPU, one synchronisation)
    finite, lowest, worst = xp.stack([xp.isfinite(probs).all(), probs.min(), xp.abs(probs.sum(axis=0) - 1).max()]
                                     ).tolist()
    if not finite:
        raise ValueError("probs contains NaN or infinity")
    if lowest < 0:
        raise ValueError("probs must be >= 0 (probabilities), got negative values")
    if worst > tolerance:
        raise ValueError(f"probs must sum to 1 over labels at every pixel (axis 0), "
                         f"got sums off by up to {worst:.3g}; apply a softmax first")
    return probs


def check_features(features):
    """Check an ``(N, d)`` float feature array, N >= 1 points and d >= 1 dimensions, finite."""
    validate.float_array("features", features, ndim=2)
    if min(features.shape) < 1:
        raise ValueError(f"features must be (N, d) with N >= 1 points and d >= 1 dimensions, "
                         f"got shape {tuple(features.shape)}")
    return features


def check_filter_arrays(n, values, out=None, in_scale=None, out_scale=None):
    """Check the arrays a filter built on ``n`` points is applied to: ``values`` (N, C) float,
    ``out`` of the same shape and writeable, ``in_scale`` and ``out_scale`` (N,) float
    (None: not given).

    Shapes and dtypes only, no scan of the values: this runs at every mean-field step, and
    the kernels would read or write out of bounds on a wrong size.
    """
    validate.float_array("values", values, shape=(n, None), finite=False)
    if out is not None:
        validate.float_array("out", out, shape=values.shape, finite=False)
        validate.writeable("out", out)
    for name, scale in (("in_scale", in_scale), ("out_scale", out_scale)):
        if scale is not None:
            validate.float_array(name, scale, shape=(n,), finite=False)


def spatial_features(shape, sigma_gamma, device="cpu"):
    """Smoothness-kernel features f = (x/σγ, y/σγ), x the column and y the row.

    Parameters
    ----------
    shape : (H, W)
    sigma_gamma : float > 0
        σγ of eq. (3); pydensecrf's ``addPairwiseGaussian(sxy=σγ)``.
    device : ``"cpu"`` (a NumPy array) or ``"gpu"`` (a CuPy array, computed there)

    Returns
    -------
    features : (H·W, 2) float32, pixel n = row·W + column.
    """
    h, w = validate.pair("shape", shape, minimum=1)
    sigma_gamma = _sigma("sigma_gamma", sigma_gamma, max(h, w) - 1)
    xp = backend.cupy if backend.resolve_device(device) == "gpu" else np
    return _positions(xp, h, w, sigma_gamma)


def bilateral_features(image, sigma_alpha, sigma_beta):
    """Appearance-kernel features f = (x/σα, y/σα, I/σβ) of eq. (3).

    Parameters
    ----------
    image : (H, W, 3) uint8 photo (channels 0..255) or (H, W, F) float features
        NumPy or CuPy; the result lives on the same device.
    sigma_alpha, sigma_beta : float > 0
        σα (position) and σβ (colour); pydensecrf's
        ``addPairwiseBilateral(sxy=σα, srgb=σβ)``.

    Returns
    -------
    features : (H·W, 2 + F) float32, pixel n = row·W + column. Computed in float32 as
        the reference C++ code does (``i / sx``, ``r / sr``), so lattices built from a
        photo match the reference's bit for bit. A float image is first shifted, in its own
        dtype, so that each channel's minimum is 0: the kernel depends only on differences,
        and float32 would otherwise round away the differences between values far from 0
        (1e8 + 2 is 1e8 in float32). Its shifted range must be a float32 number.
    """
    check_image(image)
    h, w, f = image.shape
    sigma_alpha = _sigma("sigma_alpha", sigma_alpha, max(h, w) - 1)
    xp = backend.array_module(image)
    values = image.reshape(h * w, f)
    reach = 255  # the largest colour value σβ divides
    if image.dtype != np.uint8:
        with np.errstate(over="ignore"):  # a range that overflows is refused below
            values = values - values.min(axis=0)
        reach = float(values.max())  # one number to the host
        if not reach <= FLOAT32_MAX:
            raise ValueError(f"image must span at most {FLOAT32_MAX:.4g} (float32's largest number) "
                             f"from min to max in each channel, got a range of {reach:g} in {image.dtype}")
    sigma_beta = _sigma("sigma_beta", sigma_beta, reach)
    out = xp.empty((h * w, 2 + f), dtype=np.float32)
    out[:, :2] = _positions(xp, h, w, sigma_alpha)
    out[:, 2:] = values.astype(np.float32) / sigma_beta
    return out


def _sigma(name, sigma, reach):
    """σ > 0 as a float32 (so at most float32's largest number), small enough that ``reach``
    (the largest value it divides) / σ is a finite float32."""
    value = validate.positive(name, sigma)
    if value > FLOAT32_MAX:  # infinite in float32: the term would silently ignore these features
        raise ValueError(f"{name} must be at most {FLOAT32_MAX:.4g} (float32's largest number), got {value:g}")
    if np.float32(value) == 0 or reach / float(np.float32(value)) > FLOAT32_MAX:
        raise ValueError(f"{name} must be large enough that {reach} / {name} is a float32 number, got {value:g}")
    return np.float32(value)


def _positions(xp, h, w, sigma):
    """(H·W, 2) float32 of (column/σ, row/σ), made by the array module ``xp`` (on its device)."""
    rows, cols = xp.divmod(xp.arange(h * w, dtype=np.int32), w)
    return xp.stack([cols.astype(np.float32) / sigma, rows.astype(np.float32) / sigma], axis=1)


def log_probs(probs):
    """``−θ_i = log P`` as an ``N×C`` float32 array (pixel-major), probabilities clipped at 1e-10.

    ``probs`` is ``C×H×W``; the result is laid out pixel by pixel (all labels of a pixel
    contiguous), the layout every filter in :mod:`minilab.crf` works on.
    """
    validate.float_array("probs", probs, ndim=3, finite=False)
    xp = backend.array_module(probs)
    c = probs.shape[0]
    p = xp.ascontiguousarray(probs.reshape(c, -1).T, dtype=np.float32)
    return xp.log(xp.maximum(p, PROB_FLOOR))

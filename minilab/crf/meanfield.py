"""Mean-field inference in the fully connected CRF (DeepLab §3.3; Krähenbühl & Koltun 2011).

Mean field keeps a factorised distribution Q and updates every pixel at once:

    Q_i(l) ∝ exp( −θ_i(l) − Σ_l' μ(l, l') Σ_m w_m Σ_j k̃_m(f_i, f_j) Q_j(l') )

With the Potts μ(l, l') = [l ≠ l'] and Σ_l' Q_j(l') = 1 this is, up to a per-pixel constant
the softmax removes,

    Q_i(l) = softmax_l( log P_i(l) + Σ_m w_m (K̃_m Q)_i(l) )

a positive weight rewarding agreement, exactly as the reference C++ code computes it. Each
K̃_m Q is one Gaussian filter of all C label maps at once in feature space (eq. 3): exact
over all pairs (``method="naive"``) or on the permutohedral lattice (``"lattice"``).

Two choices the paper leaves implicit are explicit arguments:

* ``normalization``: ``"symmetric"`` (K̃Q = n ⊙ K(n ⊙ Q) with n = (K1)^−½, the reference's
  default), ``"after"`` (K̃Q = K Q / K1, the NIPS 2011 code's) or ``"none"`` (K as printed in
  eq. 3).
* ``include_self``: the paper sums over j ≠ i; the reference's filter includes j = i
  (k(f_i, f_i) = 1). With ``include_self=False`` the kernel matrix has a zero diagonal, in the
  normaliser K1 as well.
"""
import numpy as np

from .. import backend, validate
from . import lattice, naive, potentials

METHODS = {"naive": naive.ExactFilter, "lattice": lattice.LatticeFilter}
NORMALIZATIONS = ("symmetric", "after", "none")


def gaussian_filter(features, values, method="lattice"):
    """Gaussian filter in feature space: ``out_i = Σ_j exp(−½|f_i − f_j|²) v_j``.

    Parameters
    ----------
    features : (N, F) float array
        One row per point, already divided by the kernel's σ (see
        :func:`bilateral_features`, :func:`spatial_features`).
    values : (N,) or (N, C) float array
        What is filtered; all C channels at once.
    method : ``"lattice"`` (permutohedral, O(N), approximate) or ``"naive"`` (exact, O(N²)).

    Returns
    -------
    out : float32 array of the shape of ``values``, on the device of ``features``.
    """
    validate.choice("method", method, METHODS)
    validate.float_array("features", features, ndim=2)
    validate.float_array("values", values)
    backend.array_module(features, values)
    if values.ndim not in (1, 2) or values.shape[0] != features.shape[0]:
        raise ValueError(f"values must be (N,) or (N, C) with N = features.shape[0] = {features.shape[0]}, "
                         f"got shape {tuple(values.shape)}")
    v = values.reshape(values.shape[0], -1).astype(np.float32)
    out = METHODS[method](features.astype(np.float32))(v)
    return out.reshape(values.shape)


class PairwiseTerm:
    """One Gaussian kernel of eq. (3) with its weight, set up once per image.

    Builds the filter (for the lattice: the lattice itself) and the normaliser ``K1``
    once; :meth:`message` then returns ``w · K̃Q`` for any ``Q``.

    Parameters
    ----------
    features : (N, F) float32 array (:func:`bilateral_features` or :func:`spatial_features`)
    weight : float, w_m of eq. (3) (pydensecrf's ``compat``)
    method, normalization, include_self : see :func:`dense_crf`.
    """

    def __init__(self, features, weight, method="lattice", normalization="symmetric", include_self=True):
        validate.choice("method", method, METHODS)
        validate.choice("normalization", normalization, NORMALIZATIONS)
        self.xp = backend.array_module(features)
        self.weight = np.float32(weight)
        self.normalization = normalization
        self.include_self = bool(include_self)
        if method == "lattice" and not include_self:
            raise ValueError("include_self=False needs method='naive': the lattice spreads a pixel's own value "
                             "over its simplex, so its self-contribution is not a constant to subtract")
        self.filter = METHODS[method](features)
        n = features.shape[0]
        if normalization == "none":
            self.norm = None
        else:
            k1 = self._kernel(self.xp.ones((n, 1), dtype=np.float32))[:, 0]
            power = 0.5 if normalization == "symmetric" else 1.0
            self.norm = (1.0 / (k1.astype(np.float64) + 1e-20) ** power).astype(np.float32)[:, None]

    def _kernel(self, values):
        """K v, with K's diagonal (k(f_i, f_i) = 1) removed unless include_self."""
        out = self.filter(values)
        if not self.include_self:
            out -= values
        return out

    def message(self, q):
        """``w · K̃ Q`` for ``q`` (N, C) float32: the pairwise part of the mean-field update."""
        if self.normalization == "symmetric":
            out = self.norm * self._kernel(self.norm * q)
        elif self.normalization == "after":
            out = self.norm * self._kernel(q)
        else:
            out = self._kernel(q)
        return self.weight * out


def softmax_labels(energy):
    """Row-wise softmax of an (N, C) array (max subtracted first), float32."""
    xp = backend.array_module(energy)
    e = xp.exp(energy - energy.max(axis=1, keepdims=True))
    return (e / e.sum(axis=1, keepdims=True)).astype(np.float32)


def mean_field_step(q, log_p, terms):
    """One synchronous mean-field update, all pixels at once.

        Q_new = softmax_l( log P + Σ_m w_m K̃_m Q )

    Parameters
    ----------
    q : (N, C) float32, the current Q, one row per pixel
    log_p : (N, C) float32, −θ_i = log P_i (:func:`minilab.crf.potentials.log_probs`)
    terms : list of :class:`PairwiseTerm`

    Returns
    -------
    (N, C) float32, each row summing to 1.
    """
    energy = log_p.copy()
    for term in terms:
        energy += term.message(q)
    return softmax_labels(energy)


def map_labels(q):
    """Most probable label per pixel: ``argmax`` over axis 0 of a C×H×W Q, as H×W int64."""
    validate.float_array("q", q, ndim=3)
    return q.argmax(axis=0)


def dense_crf(image, probs, *, iterations=10, w1, sigma_alpha, sigma_beta, w2=3.0, sigma_gamma=3.0,
              method="lattice", normalization="symmetric", include_self=True, device="cpu"):
    """Fully connected CRF (DeepLab §3.3, eq. 2-3) by mean-field inference.

    Starts from Q = P (the softmax of −θ = log P) and runs ``iterations`` synchronous updates

        Q_i(l) ← softmax_l( log P_i(l) + w1 (K̃_α Q)_i(l) + w2 (K̃_γ Q)_i(l) )

    where K_α is the appearance (bilateral) Gaussian exp(−|p_i−p_j|²/2σα² − |I_i−I_j|²/2σβ²)
    and K_γ the smoothness Gaussian exp(−|p_i−p_j|²/2σγ²), both normalised as
    ``normalization`` says. The Potts penalty of eq. (3) becomes this reward for agreement
    up to a per-pixel constant.

    The same run in pydensecrf::

        d = DenseCRF2D(W, H, C); d.setUnaryEnergy(-log(P))
        d.addPairwiseGaussian(sxy=sigma_gamma, compat=w2)
        d.addPairwiseBilateral(sxy=sigma_alpha, srgb=sigma_beta, rgbimg=image, compat=w1)
        Q = d.inference(iterations)

    which ``normalization="symmetric", include_self=True`` (the defaults) reproduces.

    Parameters
    ----------
    image : (H, W, 3) uint8 photo, or (H, W, F) float feature image (any F >= 1)
    probs : (C, H, W) float32/float64 probabilities (C >= 2, each pixel summing to 1)
    iterations : int >= 0 (the paper uses 10; 0 returns P)
    w1, sigma_alpha, sigma_beta : appearance kernel weight and widths
        (pydensecrf's bilateral ``compat``, ``sxy``, ``srgb``). The paper cross-validates
        w1 ∈ [3, 6], σα ∈ [30, 100], σβ ∈ [3, 6]; pydensecrf's examples use 10, 80, 13.
    w2, sigma_gamma : smoothness kernel weight and width (pydensecrf's Gaussian
        ``compat``, ``sxy``); the paper fixes both at 3.
    method : ``"lattice"`` (permutohedral, O(N)) or ``"naive"`` (exact, O(N²), at most
        :data:`minilab.crf.naive.MAX_PIXELS` pixels).
    normalization : ``"symmetric"`` (default; pydensecrf's NORMALIZE_SYMMETRIC),
        ``"after"`` (NORMALIZE_AFTER, the NIPS 2011 code DeepLab shipped) or ``"none"``
        (eq. 3 as printed).
    include_self : bool, default True
        Whether a pixel's own label counts in its message (j = i). The paper's sum excludes
        it; every reference implementation includes it, and its tuned weights assume that.
    device : ``"cpu"``, ``"gpu"`` or ``"auto"``; inputs are moved there and Q is returned
        there.

    Returns
    -------
    Q : (C, H, W) float32, each pixel summing to 1. :func:`map_labels` gives the labels.
    """
    image = potentials.check_image(image)
    probs = potentials.check_probs(probs)
    iterations = validate.integer("iterations", iterations, minimum=0)
    for name, value in (("w1", w1), ("w2", w2)):
        if isinstance(value, bool) or not np.isfinite(value):
            raise ValueError(f"{name} must be a finite number, got {value!r}")
    validate.choice("method", method, METHODS)
    validate.choice("normalization", normalization, NORMALIZATIONS)
    c, h, w = probs.shape
    if image.shape[:2] != (h, w):
        raise ValueError(f"image is {image.shape[0]}×{image.shape[1]} but probs is {h}×{w} (C×H×W); "
                         "they must cover the same pixels")
    if method == "naive" and h * w > naive.MAX_PIXELS:
        raise ValueError(f"method='naive' is exact and O(N²): it accepts at most {naive.MAX_PIXELS} "
                         f"pixels, got {h}×{w} = {h * w}; use method='lattice'")
    device = backend.resolve_device(device)
    image, probs = backend.to_device(image, device), backend.to_device(probs, device)
    spatial = backend.to_device(potentials.spatial_features((h, w), sigma_gamma), device)
    bilateral = potentials.bilateral_features(image, sigma_alpha, sigma_beta)
    terms = [PairwiseTerm(spatial, w2, method, normalization, include_self),  # the reference's order
             PairwiseTerm(bilateral, w1, method, normalization, include_self)]
    log_p = potentials.log_probs(probs)
    q = softmax_labels(log_p)
    for _ in range(iterations):
        q = mean_field_step(q, log_p, terms)
    return q.T.reshape(c, h, w).copy()

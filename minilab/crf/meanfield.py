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
  normaliser K1 as well (on the lattice: its own diagonal, computed exactly; see
  :class:`~minilab.crf.lattice.LatticeFilter`), and a pixel whose neighbours weigh next to
  nothing gets no message (:class:`PairwiseTerm`).
"""
import numpy as np
from numba import float32, njit, prange

from .. import backend, validate
from . import lattice, naive, potentials

# Each method is a filter class: built once from (N, F) features, called on (N, C) values.
METHODS = {"naive": naive.ExactFilter, "lattice": lattice.LatticeFilter}
NORMALIZATIONS = ("symmetric", "after", "none")
# Without the pixel itself, a neighbour mass (K1) at or below this fraction of the pixel's own
# weight counts as no neighbours (see PairwiseTerm): √ε of float32, about 3.5e-4.
NEIGHBOUR_FLOOR = float(np.sqrt(np.finfo(np.float32).eps))
# Largest |w| of a kernel: 1/ε of float32, 2**23. A normalised message is of order 1, so a
# larger weight puts the energies where float32 spaces its values more than 1 apart, coarser
# than the differences of log P that the unaries contribute: the network's probabilities
# stop counting. The bound also keeps w·K̃Q far from float32's overflow (3.4e38, where
# energies became infinite and Q NaN).
MAX_WEIGHT = float(1 / np.finfo(np.float32).eps)


def check_weight(name, value):
    """A kernel weight w_m: a real number with |w| <= :data:`MAX_WEIGHT`; returns it as a float."""
    value = validate.real(name, value)
    if abs(value) > MAX_WEIGHT:
        raise ValueError(f"{name} must be at most {MAX_WEIGHT:.0f} = 2**23 in magnitude (beyond it the "
                         f"messages drown the unaries in float32 rounding), got {value:g}")
    return value


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
    gaussian = METHODS[method](features)  # checks the features
    validate.float_array("values", values)
    backend.array_module(features, values)
    if values.ndim not in (1, 2) or values.shape[0] != features.shape[0]:
        raise ValueError(f"values must be (N,) or (N, C) with N = features.shape[0] = {features.shape[0]}, "
                         f"got shape {tuple(values.shape)}")
    return gaussian(values.reshape(values.shape[0], -1).astype(np.float32)).reshape(values.shape)


class PairwiseTerm:
    """One Gaussian kernel of eq. (3) with its weight, set up once per image.

    Builds the filter (for the lattice: the lattice itself) and the normaliser n from
    ``K1`` once; :meth:`add_message` then adds ``w · K̃Q`` to an energy for any ``Q``.

    Without the pixel itself (``include_self=False``) a pixel's normaliser rests on its
    neighbour mass m_i = Σ_{j≠i} k(f_i, f_j) alone, which may be tiny or zero (a pixel
    alone in feature space). A pixel with

        m_i <= √ε · s_i            (ε = 2^−23, float32's; √ε ≈ 3.5e-4)

    where s_i is its own weight (k(f_i, f_i) = 1 exactly, (K_lat)_ii on the lattice), has no
    neighbours: n_i = 0, so its message is zero and its Q stays the softmax of its unary.
    The lattice gets m_i only as K1 − s_i, both float32 sums of size s_i, so m_i carries an
    absolute rounding error of a few ε·s_i; the normalised message divides by m_i, and its
    relative error ε·s_i/m_i is below √ε exactly where m_i > √ε·s_i. Below, cancellation has
    eaten more than half of float32's digits (at m_i ≈ ε·s_i the message is pure noise, up to
    1e13). The exact filter computes m_i without cancellation but applies the
    same rule, so that both methods solve the same CRF.

    Parameters
    ----------
    features : (N, F) float32 array (:func:`bilateral_features` or :func:`spatial_features`)
    weight : float, w_m of eq. (3) (pydensecrf's ``compat``)
    method, normalization, include_self : see :func:`dense_crf`.

    Attributes
    ----------
    norm : (N,) float32 or None
        n = (K1)^−½ (symmetric) or (K1)^−1 (after), 0 for a pixel without neighbours; None
        for ``normalization="none"``.
    """

    def __init__(self, features, weight, method="lattice", normalization="symmetric", include_self=True):
        validate.choice("method", method, METHODS)
        validate.choice("normalization", normalization, NORMALIZATIONS)
        xp = backend.array_module(features)
        self.weight = check_weight("weight", weight)
        self.normalization = normalization
        self.filter = METHODS[method](features, include_self=include_self)
        self.norm = None
        if normalization != "none":
            k1 = self.filter(xp.ones((features.shape[0], 1), dtype=np.float32))[:, 0].astype(np.float64)
            if not include_self:  # no neighbours: n = 0, no message
                k1 = xp.where(k1 > NEIGHBOUR_FLOOR * self.filter.self_weight, k1, xp.inf)
            power = 0.5 if normalization == "symmetric" else 1.0
            self.norm = (k1**-power).astype(np.float32)

    def add_message(self, q, energy):
        """``energy += w · K̃ Q`` for ``q`` and ``energy`` (N, C) float32, C-contiguous.

        symmetric: K̃Q = n ⊙ K(n ⊙ Q), n = (K1)^−½; after: K̃Q = n ⊙ KQ, n = (K1)^−1;
        none: K̃Q = KQ.
        """
        validate.writeable("energy", energy)
        in_scale = self.norm if self.normalization == "symmetric" else None
        return self.filter.apply(q, energy, self.weight, in_scale=in_scale, out_scale=self.norm)

    def message(self, q):
        """``w · K̃ Q`` as a new (N, C) float32 array."""
        return self.add_message(q, backend.array_module(q).zeros_like(q))


@njit(cache=True, inline="always")
def _subtract_max_point(p, energy):
    """energy[p] −= max(energy[p])."""
    row = energy[p]
    top = row[0]
    for k in range(1, row.shape[0]):
        top = max(top, row[k])
    for k in range(row.shape[0]):
        row[k] = row[k] - top


@njit(cache=True, inline="always")
def _normalize_point(p, q):
    """q[p] /= Σ q[p]."""
    row = q[p]
    total = float32(0.0)
    for k in range(row.shape[0]):
        total += row[k]
    for k in range(row.shape[0]):
        row[k] = row[k] / total


@njit(parallel=True, cache=True)
def _subtract_max_cpu(energy):
    for p in prange(energy.shape[0]):
        _subtract_max_point(p, energy)


@njit(parallel=True, cache=True)
def _normalize_cpu(q):
    for p in prange(q.shape[0]):
        _normalize_point(p, q)


def softmax_labels(energy, out=None):
    """Softmax over labels of each row of an (N, C) float32 ``energy``, in float32:
    subtract the row's max, exponentiate, divide by the row's sum. ``energy`` is overwritten
    (max subtracted); returns ``out`` (new if None).

    NumPy arrays: a Numba loop over rows for the max and the sum, NumPy's vectorised
    exponential between. CuPy arrays: the same three steps as array code, whose reductions
    along a row read it coalesced; a CUDA thread per row, reading 84-byte rows a row apart,
    took 185 µs a step on an NVIDIA H100 for 500×375 pixels and 21 labels (2 ms of a
    10-iteration CRF).
    """
    validate.float_array("energy", energy, ndim=2, finite=False)
    validate.writeable("energy", energy)
    if out is not None:
        validate.float_array("out", out, shape=energy.shape, finite=False)
        validate.writeable("out", out)
    xp = backend.array_module(energy)
    out = xp.empty_like(energy) if out is None else out
    if xp is np:
        _subtract_max_cpu(energy)
        np.exp(energy, out=out)
        _normalize_cpu(out)
    else:
        energy -= energy.max(axis=1, keepdims=True)
        xp.exp(energy, out=out)
        out /= out.sum(axis=1, keepdims=True)
    return out


def mean_field_step(q, log_p, terms, out=None, energy=None):
    """One synchronous mean-field update, all pixels at once.

        Q_new = softmax_l( log P + Σ_m w_m K̃_m Q )

    Parameters
    ----------
    q : (N, C) float32, the current Q, one row per pixel
    log_p : (N, C) float32, −θ_i = log P_i (:func:`minilab.crf.potentials.log_probs`)
    terms : list of :class:`PairwiseTerm`
    out : optional (N, C) float32 array for the result (not ``q``)
    energy : optional (N, C) float32 scratch array (overwritten), so that a loop of steps
        allocates nothing

    Returns
    -------
    (N, C) float32, each row summing to 1.
    """
    validate.float_array("log_p", log_p, ndim=2, finite=False)
    if energy is None:
        energy = log_p.copy()
    else:
        validate.float_array("energy", energy, shape=log_p.shape, finite=False)
        validate.writeable("energy", energy)
        energy[...] = log_p
    for term in terms:
        term.add_message(q, energy)
    return softmax_labels(energy, out=out)


def map_labels(q):
    """Most probable label per pixel: ``argmax`` over axis 0 of a C×H×W Q, as H×W int64."""
    validate.float_array("q", q, ndim=3)
    return q.argmax(axis=0)


def dense_crf(image, probs, *, iterations=10, w1, sigma_alpha, sigma_beta, w2=3.0, sigma_gamma=3.0,
              method="lattice", normalization="symmetric", include_self=True, device="cpu"):
    """Fully connected CRF (DeepLab §3.3, eq. 2-3) by mean-field inference.

    Starts from Q₀ = softmax_l(log max(P, 1e-10)), the reference's start softmax(−θ), and
    runs ``iterations`` synchronous updates

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
    iterations : int >= 0
        The paper uses 10. 0 returns Q₀: P with entries below 1e-10 raised to 1e-10 and
        each pixel renormalised to sum to 1, in float32 (P itself to float32 rounding where
        every entry is >= 1e-10 and each pixel sums to 1).
    w1, sigma_alpha, sigma_beta : appearance kernel weight and widths
        (pydensecrf's bilateral ``compat``, ``sxy``, ``srgb``). The paper cross-validates
        w1 ∈ [3, 6], σα ∈ [30, 100], σβ ∈ [3, 6]; pydensecrf's examples use 10, 80, 13.
    w2, sigma_gamma : smoothness kernel weight and width (pydensecrf's Gaussian
        ``compat``, ``sxy``); the paper fixes both at 3. Weights are real numbers with
        |w| <= :data:`MAX_WEIGHT` = 2^23.
    method : ``"lattice"`` (permutohedral, O(N)) or ``"naive"`` (exact, O(N²), at most
        :data:`minilab.crf.naive.MAX_PIXELS` pixels).
    normalization : ``"symmetric"`` (default; pydensecrf's NORMALIZE_SYMMETRIC),
        ``"after"`` (NORMALIZE_AFTER, the NIPS 2011 code DeepLab shipped) or ``"none"``
        (eq. 3 as printed; NO_NORMALIZATION).
    include_self : bool, default True
        Whether a pixel's own label counts in its message (j = i). The paper's sum excludes
        it; every reference implementation includes it, and its tuned weights assume that.
        Both methods support False; the lattice is then less close to the exact filter
        where pixels have few neighbours in feature space (docs: "How far the lattice is"),
        and, under the symmetric and after normalisations, a pixel whose neighbours weigh at
        most √ε ≈ 3.5e-4 of its own weight gets no message (:class:`PairwiseTerm`).
    device : ``"cpu"``, ``"gpu"`` or ``"auto"``; inputs are moved there and Q is returned
        there.

    Returns
    -------
    Q : (C, H, W) float32, each pixel summing to 1. :func:`map_labels` gives the labels.
    """
    validate.array("image", image)
    validate.array("probs", probs)
    device = backend.resolve_device(device)
    # the value checks (finite, sums to 1) run where the arrays will be, a GPU's being faster
    image = potentials.check_image(backend.to_device(image, device))
    probs = potentials.check_probs(backend.to_device(probs, device))
    iterations = validate.integer("iterations", iterations, minimum=0)
    w1, w2 = check_weight("w1", w1), check_weight("w2", w2)
    validate.choice("method", method, METHODS)
    validate.choice("normalization", normalization, NORMALIZATIONS)
    c, h, w = probs.shape
    if image.shape[:2] != (h, w):
        raise ValueError(f"image is {image.shape[0]}×{image.shape[1]} but probs is {h}×{w} (C×H×W); "
                         "they must cover the same pixels")
    if method == "naive" and h * w > naive.MAX_PIXELS:
        raise ValueError(f"method='naive' is exact and O(N²): it accepts at most {naive.MAX_PIXELS} "
                         f"pixels, got {h}×{w} = {h * w}; use method='lattice'")
    spatial = potentials.spatial_features((h, w), sigma_gamma, device)
    bilateral = potentials.bilateral_features(image, sigma_alpha, sigma_beta)
    terms = [PairwiseTerm(spatial, w2, method, normalization, include_self),  # the reference's order
             PairwiseTerm(bilateral, w1, method, normalization, include_self)]
    log_p = potentials.log_probs(probs)
    q = softmax_labels(log_p.copy())
    xp = backend.array_module(q)
    spare, energy = xp.empty_like(q), xp.empty_like(q)
    for _ in range(iterations):
        q, spare = mean_field_step(q, log_p, terms, out=spare, energy=energy), q
    return q.T.reshape(c, h, w).copy()

"""Exact Gaussian filtering over all pairs of pixels: the ground truth, O(N²).

    out_i = Σ_j exp(−½ |f_i − f_j|²) v_j            (the sum in eq. 3, j over every pixel)

Squared distances come from one matrix product, |f_i − f_j|² = |f_i|² + |f_j|² − 2 f_i·f_j,
computed in float64 on features centred at their mean (so the cancellation stays small) one
block of rows at a time: memory is O(N·chunk), time O(N²·(F + C)). The same code runs on
NumPy and CuPy.
"""
import numpy as np

from .. import backend, validate
from .potentials import check_features, check_filter_arrays

# Largest image the exact filter accepts (N pixels; the work per filter is N² kernel values).
MAX_PIXELS = 65536
# Kernel values held at once (rows × N); 2**22 float64 values are 32 MiB.
CHUNK_ELEMENTS = 2**22


class ExactFilter:
    """Exact Gaussian filter for fixed ``features`` (N×F), applied to any ``values`` (N×C).

    Parameters
    ----------
    features : (N, F) float array, NumPy or CuPy; at most :data:`MAX_PIXELS` rows.
    include_self : bool
        False drops the diagonal of the kernel matrix (k(f_i, f_i) = 1): the sum runs over
        j != i, as in the paper's eq. (3). The diagonal is zeroed where the kernel rows are
        built, so a pixel's sum over its neighbours alone is exact even when it is tiny
        (subtracting v_i from the full sum afterwards would leave rounding noise of v_i's
        size).

    Attributes
    ----------
    self_weight : float or None
        The weight dropped from each row, k(f_i, f_i) = 1 (None when ``include_self``).
    """

    def __init__(self, features, include_self=True):
        n = check_features(features).shape[0]
        if n > MAX_PIXELS:
            raise ValueError(f"method='naive' is exact and O(N²): it accepts at most {MAX_PIXELS} "
                             f"pixels (256×256), got {n}; use method='lattice'")
        self.xp = backend.array_module(features)
        self.include_self = validate.boolean("include_self", include_self)
        self.self_weight = None if include_self else 1.0
        f = features.astype(np.float64)
        self.features = f - f.mean(axis=0)
        self.sq_norms = (self.features**2).sum(axis=1)
        # Small images: keep the whole kernel matrix (it fits in one chunk), so repeated
        # calls (mean-field iterations) are one matrix product each.
        self.matrix = self._kernel_rows(0, n) if n * n <= CHUNK_ELEMENTS else None

    def _kernel_rows(self, start, stop):
        """Rows start:stop of the kernel matrix exp(−½|f_i − f_j|²), float64; its diagonal
        entries (j = i) zero when ``include_self`` is False."""
        xp, f, sq = self.xp, self.features, self.sq_norms
        dist2 = sq[start:stop, None] + sq[None, :] - 2.0 * (f[start:stop] @ f.T)
        rows = xp.exp(-0.5 * xp.maximum(dist2, 0.0))
        if not self.include_self:
            i = xp.arange(start, stop)
            rows[i - start, i] = 0.0
        return rows

    def __call__(self, values):
        """``Σ_j exp(−½|f_i − f_j|²) v_j`` (j ≠ i without ``include_self``) for ``values`` (N, C);
        returns (N, C) of values' dtype."""
        n = self.features.shape[0]
        check_filter_arrays(n, values)
        v = values.astype(np.float64)
        if self.matrix is not None:
            out = self.matrix @ v
        else:
            out = self.xp.empty(values.shape, dtype=np.float64)
            rows = max(1, CHUNK_ELEMENTS // n)
            for start in range(0, n, rows):
                stop = min(n, start + rows)
                out[start:stop] = self._kernel_rows(start, stop) @ v
        return out.astype(values.dtype)

    def apply(self, values, out, factor=1.0, in_scale=None, out_scale=None, accumulate=True):
        """``out (+)= factor · out_scale ⊙ K(in_scale ⊙ values)`` (the lattice's signature)."""
        check_filter_arrays(self.features.shape[0], values, out, in_scale, out_scale)
        if in_scale is not None:
            values = in_scale[:, None] * values
        result = self(values)
        if out_scale is not None:
            result *= out_scale[:, None]
        result *= np.float32(factor)
        if accumulate:
            out += result
        else:
            out[...] = result
        return out

"""Exact Gaussian filtering over all pairs of pixels: the ground truth, O(N²).

    out_i = Σ_j exp(−½ |f_i − f_j|²) v_j            (the sum in eq. 3, j over every pixel)

Squared distances come from one matrix product, |f_i − f_j|² = |f_i|² + |f_j|² − 2 f_i·f_j,
computed in float64 on features centred at their mean (so the cancellation stays small) one
block of rows at a time: memory is O(N·chunk), time O(N²·(F + C)). The same code runs on
NumPy and CuPy.
"""
import numpy as np

from .. import backend

# Largest image the exact filter accepts (N pixels; the work per filter is N² kernel values).
MAX_PIXELS = 65536
# Kernel values held at once (rows × N); 2**22 float64 values are 32 MiB.
CHUNK_ELEMENTS = 2**22


class ExactFilter:
    """Exact Gaussian filter for fixed ``features`` (N×F), applied to any ``values`` (N×C).

    Parameters
    ----------
    features : (N, F) float array, NumPy or CuPy; at most :data:`MAX_PIXELS` rows.
    """

    def __init__(self, features):
        n = features.shape[0]
        if n > MAX_PIXELS:
            raise ValueError(f"method='naive' is exact and O(N²): it accepts at most {MAX_PIXELS} "
                             f"pixels (256×256), got {n}; use method='lattice'")
        self.xp = backend.array_module(features)
        f = features.astype(np.float64)
        self.features = f - f.mean(axis=0)
        self.sq_norms = (self.features**2).sum(axis=1)

    def __call__(self, values):
        """``Σ_j exp(−½|f_i − f_j|²) v_j`` for ``values`` (N, C); returns (N, C) of values' dtype."""
        xp, f, sq = self.xp, self.features, self.sq_norms
        n = f.shape[0]
        v = values.astype(np.float64)
        out = xp.empty(values.shape, dtype=np.float64)
        rows = max(1, CHUNK_ELEMENTS // n)
        for start in range(0, n, rows):
            stop = min(n, start + rows)
            dist2 = sq[start:stop, None] + sq[None, :] - 2.0 * (f[start:stop] @ f.T)
            kernel = xp.exp(-0.5 * xp.maximum(dist2, 0.0))
            out[start:stop] = kernel @ v
        return out.astype(values.dtype)

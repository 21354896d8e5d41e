"""Gaussian filtering on the permutohedral lattice (Adams, Baek, Davis, Eurographics 2010).

A Gaussian filter ``out_i = Σ_j exp(−½|f_i − f_j|²) v_j`` in d feature dimensions costs
O(N²) done exactly; on the lattice it costs O(N·d²) + O(M·d) for M lattice vertices:

1. **embed**: scale feature k by ``sqrt(2/3)·(d+1)/sqrt((k+1)(k+2))``, elevate to d+1
   coordinates on the plane Σx = 0, round to the nearest lattice point whose coordinates are
   all multiples of d+1 ("remainder 0"), and rank the differences to find the enclosing
   simplex; its d+1 vertices get barycentric weights;
2. **splat**: each point adds weight × value to its d+1 vertices;
3. **blur**: along each of the d+1 lattice axes, ``new = old + ½(left + right)``
   (a missing neighbour counts as zero);
4. **slice**: each point gathers weight × value from its d+1 vertices, times
   ``α = 1/(1 + 2^−d)``.

The lattice (steps 1 and the vertex bookkeeping) is built once per image and reused at
every mean-field iteration; steps 2-4 filter all C label maps at once, values stored
vertices × C contiguous. The arithmetic follows the reference C++ code (Krähenbühl's
``permutohedral.cpp``, SSE branch) in float32 step by step, so the two agree to rounding.

Two builds give the same lattice (vertex numbering aside):

* CPU (Numba): embed in parallel, then a serial open-addressing hash table gives each
  vertex key a number and the blur neighbours are looked up in it in parallel;
* GPU (Numba CUDA + CuPy, also runnable under the CUDA simulator with NumPy arrays):
  embed with the CUDA twin, encode each vertex key as one int64, number the vertices with
  ``unique(return_inverse=True)`` and find blur neighbours with ``searchsorted``.

Splat is written as a gather (each vertex sums its points, found through a counting sort of
the point-to-vertex table), so it is deterministic and parallel without atomics, and each
vertex sums its points in the same order as the sequential reference.
"""
import math

import numpy as np
from numba import float32, int32, njit, prange

from .. import backend

HALF = np.float32(0.5)
THREADS = 128


def scale_factors(d):
    """Per-dimension feature scale of the embedding, float32 as the reference computes it.

    ``sqrt(2/3)·(d+1)`` (the lattice's expected standard deviation, float32) times
    ``1/sqrt((k+1)(k+2))`` for k = 0..d−1.
    """
    inv_std = np.float64(np.float32(np.sqrt(2.0 / 3.0) * (d + 1)))
    return np.array([1.0 / np.sqrt((k + 2) * (k + 1)) * inv_std for k in range(d)], dtype=np.float32)


def slice_alpha(d):
    """The slice's constant ``α = 1 / (1 + 2^−d)`` (float32)."""
    return np.float32(1.0) / (np.float32(1.0) + np.float32(2.0) ** np.float32(-d))


def _embed_point(p, features, scale, elevated, rem0, rank, bary):
    """Embed point ``p``: fill its rows of ``elevated``, ``rem0``, ``rank`` and ``bary``.

    features (N, d) float32; elevated (N, d+1) float32; rem0, rank (N, d+1) int32;
    bary (N, d+2) float32 (column d+1 is scratch). Every product and sum is float32.
    """
    d = features.shape[1]
    dp1 = d + 1
    down = float32(1.0) / float32(dp1)
    # Elevate onto the plane Σx = 0: x_j = Σ_{k>=j} s_k f_k − j s_{j−1} f_{j−1}
    sm = float32(0.0)
    for j in range(d, 0, -1):
        cf = features[p, j - 1] * scale[j - 1]
        elevated[p, j] = sm - float32(j) * cf
        sm += cf
    elevated[p, 0] = sm
    # Nearest remainder-0 point: round x/(d+1) to the nearest integer, ties to even
    total = 0
    for i in range(dp1):
        v = down * elevated[p, i]
        fl = math.floor(v)
        frac = v - fl
        r = int32(fl)
        if frac > 0.5 or (frac == 0.5 and r % 2 != 0):
            r += 1
        rem0[p, i] = r * dp1
        total += r
    # Rank the differences (position of each coordinate in decreasing order)
    for i in range(dp1):
        rank[p, i] = 0
    for i in range(d):
        di = elevated[p, i] - float32(rem0[p, i])
        for j in range(i + 1, dp1):
            if di < elevated[p, j] - float32(rem0[p, j]):
                rank[p, i] += 1
            else:
                rank[p, j] += 1
    # Bring the point back onto the plane if the rounding left it off (total != 0)
    for i in range(dp1):
        rank[p, i] += total
        if rank[p, i] < 0:
            rank[p, i] += dp1
            rem0[p, i] += dp1
        elif rank[p, i] >= dp1:
            rank[p, i] -= dp1
            rem0[p, i] -= dp1
    # Barycentric weights of the d+1 vertices of the enclosing simplex
    for i in range(d + 2):
        bary[p, i] = float32(0.0)
    for i in range(dp1):
        v = (elevated[p, i] - float32(rem0[p, i])) * down
        k = d - rank[p, i]
        bary[p, k] += v
        bary[p, k + 1] -= v
    bary[p, 0] += float32(1.0) + bary[p, d + 1]


def _vertex_coordinate(rem0, rank, p, r, i, d):
    """Coordinate i (< d) of vertex r (0..d) of point p's simplex: rem0 + canonical offset."""
    if rank[p, i] <= d - r:
        return rem0[p, i] + r
    return rem0[p, i] + r - (d + 1)


def _splat_vertex(v, c0, c1, values, weights, start, order, out):
    """out[v, c0:c1] = Σ over the points e of vertex v (in point order) of weight × value."""
    dp1 = weights.shape[1]
    for c in range(c0, c1):
        out[v, c] = float32(0.0)
    for k in range(start[v], start[v + 1]):
        e = order[k]
        p = e // dp1
        w = weights[p, e - p * dp1]
        for c in range(c0, c1):
            out[v, c] += w * values[p, c]


def _blur_vertex(v, c0, c1, src, dst, neighbours):
    """dst[v] = src[v] + ½(src[left] + src[right]) along one axis; row M of src is zero."""
    a = neighbours[v, 0]
    b = neighbours[v, 1]
    for c in range(c0, c1):
        dst[v, c] = src[v, c] + HALF * (src[a, c] + src[b, c])


def _slice_point(p, c0, c1, vertex_values, offsets, weights, alpha, out):
    """out[p, c0:c1] = Σ_r (α · weight_r) × vertex value of p's vertex r."""
    for c in range(c0, c1):
        out[p, c] = float32(0.0)
    for r in range(offsets.shape[1]):
        o = offsets[p, r]
        w = weights[p, r] * alpha
        for c in range(c0, c1):
            out[p, c] += w * vertex_values[o, c]


_embed_point_cpu = njit(cache=True)(_embed_point)
_vertex_coordinate_cpu = njit(cache=True)(_vertex_coordinate)
_splat_vertex_cpu = njit(cache=True)(_splat_vertex)
_blur_vertex_cpu = njit(cache=True)(_blur_vertex)
_slice_point_cpu = njit(cache=True)(_slice_point)


@njit(parallel=True, cache=True)
def _embed_cpu(features, scale, elevated, rem0, rank, bary):
    for p in prange(features.shape[0]):
        _embed_point_cpu(p, features, scale, elevated, rem0, rank, bary)


@njit(parallel=True, cache=True)
def _splat_cpu(values, weights, start, order, out):
    for v in prange(start.shape[0] - 1):
        _splat_vertex_cpu(v, 0, values.shape[1], values, weights, start, order, out)


@njit(parallel=True, cache=True)
def _blur_cpu(src, dst, neighbours):
    for v in prange(neighbours.shape[0]):
        _blur_vertex_cpu(v, 0, src.shape[1], src, dst, neighbours)


@njit(parallel=True, cache=True)
def _slice_cpu(vertex_values, offsets, weights, alpha, out):
    for p in prange(offsets.shape[0]):
        _slice_point_cpu(p, 0, out.shape[1], vertex_values, offsets, weights, alpha, out)


@njit(cache=True)
def _hash(key_source, v, shift_all, j, shift_j, d):
    """Hash (the reference's: r = (r + k)·1664525) of key ``key_source[v] + shift``."""
    h = np.int64(0)
    for i in range(d):
        k = key_source[v, i] + (shift_j if i == j else shift_all)
        h = (h + k) * 1664525
    return h


@njit(cache=True)
def _build_hash_table(rem0, rank):
    """Number the vertices of all simplices with an open-addressing hash table.

    Returns offsets (N, d+1) int32 (vertex number of each point's vertex r), keys (M, d)
    int32 (first d coordinates of each vertex) and the table (int32, −1 = empty slot).
    """
    n, dp1 = rem0.shape
    d = dp1 - 1
    capacity = 1
    while capacity < 2 * n * dp1:
        capacity *= 2
    mask = capacity - 1
    table = np.full(capacity, -1, dtype=np.int32)
    keys = np.empty((n * dp1, d), dtype=np.int32)
    offsets = np.empty((n, dp1), dtype=np.int32)
    key = np.empty((1, d), dtype=np.int32)
    m = 0
    for p in range(n):
        for r in range(dp1):
            for i in range(d):
                key[0, i] = _vertex_coordinate_cpu(rem0, rank, p, r, i, d)
            slot = _hash(key, 0, 0, -1, 0, d) & mask
            while True:
                e = table[slot]
                if e == -1:
                    keys[m] = key[0]
                    table[slot] = m
                    e = m
                    m += 1
                    break
                same = True
                for i in range(d):
                    if keys[e, i] != key[0, i]:
                        same = False
                        break
                if same:
                    break
                slot = (slot + 1) & mask
            offsets[p, r] = e
    return offsets, keys[:m].copy(), table


@njit(cache=True)
def _lookup(table, keys, v, shift_all, j, shift_j):
    """Number of the vertex ``keys[v] + shift`` (coordinate j shifted by shift_j, the others
    by shift_all), or M when it is not in the lattice."""
    d = keys.shape[1]
    mask = table.shape[0] - 1
    slot = _hash(keys, v, shift_all, j, shift_j, d) & mask
    while True:
        e = table[slot]
        if e == -1:
            return keys.shape[0]
        same = True
        for i in range(d):
            if keys[e, i] != keys[v, i] + (shift_j if i == j else shift_all):
                same = False
                break
        if same:
            return e
        slot = (slot + 1) & mask


@njit(parallel=True, cache=True)
def _neighbours_cpu(table, keys):
    """Blur neighbours (d+1, M, 2) int32: along axis j the keys shifted by −1 (+1) in every
    coordinate and by +d (−d) in coordinate j; M marks a missing neighbour."""
    m, d = keys.shape
    out = np.empty((d + 1, m, 2), dtype=np.int32)
    for v in prange(m):
        for j in range(d + 1):
            out[j, v, 0] = _lookup(table, keys, v, -1, j, d)
            out[j, v, 1] = _lookup(table, keys, v, 1, j, -d)
    return out


@njit(cache=True)
def _splat_order_cpu(offsets, m):
    """Counting sort of the point-vertex pairs by vertex, stable in point order.

    Returns start (M+1) int64 and order (N(d+1)) int32 of flat indices p(d+1) + r."""
    flat = offsets.ravel()
    start = np.zeros(m + 1, dtype=np.int64)
    for e in range(flat.shape[0]):
        start[flat[e] + 1] += 1
    for v in range(m):
        start[v + 1] += start[v]
    fill = start[:-1].copy()
    order = np.empty(flat.shape[0], dtype=np.int32)
    for e in range(flat.shape[0]):
        order[fill[flat[e]]] = e
        fill[flat[e]] += 1
    return start, order


if backend.cuda is not None:
    _cuda = backend.cuda
    _embed_point_gpu = _cuda.jit(device=True)(_embed_point)
    _splat_vertex_gpu = _cuda.jit(device=True)(_splat_vertex)
    _blur_vertex_gpu = _cuda.jit(device=True)(_blur_vertex)
    _slice_point_gpu = _cuda.jit(device=True)(_slice_point)

    @_cuda.jit
    def _embed_gpu(features, scale, elevated, rem0, rank, bary):
        p = _cuda.grid(1)
        if p < features.shape[0]:
            _embed_point_gpu(p, features, scale, elevated, rem0, rank, bary)

    @_cuda.jit
    def _splat_gpu(values, weights, start, order, out):
        v, c = _cuda.grid(2)
        if v < start.shape[0] - 1 and c < values.shape[1]:
            _splat_vertex_gpu(v, c, c + 1, values, weights, start, order, out)

    @_cuda.jit
    def _blur_gpu(src, dst, neighbours):
        v, c = _cuda.grid(2)
        if v < neighbours.shape[0] and c < src.shape[1]:
            _blur_vertex_gpu(v, c, c + 1, src, dst, neighbours)

    @_cuda.jit
    def _slice_gpu(vertex_values, offsets, weights, alpha, out):
        p, c = _cuda.grid(2)
        if p < offsets.shape[0] and c < out.shape[1]:
            _slice_point_gpu(p, c, c + 1, vertex_values, offsets, weights, alpha, out)


def _grid2(rows, cols):
    """Launch shape for one thread per (row, channel)."""
    tc = min(cols, 32)
    tr = max(1, THREADS // tc)
    return ((rows + tr - 1) // tr, (cols + tc - 1) // tc), (tr, tc)


class LatticeFilter:
    """Permutohedral-lattice Gaussian filter for fixed ``features``, applied to any values.

    Parameters
    ----------
    features : (N, d) float32 array (NumPy or CuPy), already divided by the kernel's σ.
    kernels : ``"numba"`` (CPU) or ``"cuda"`` (Numba CUDA + array code; the default for
        CuPy arrays, also usable with NumPy arrays under the CUDA simulator).

    Attributes
    ----------
    offsets : (N, d+1) int32, the vertex number of each point's simplex vertex r
    weights : (N, d+1) float32, the barycentric weights (each row sums to 1)
    neighbours : (d+1, M, 2) int32, blur neighbours along each axis (M: none)
    start, order : the vertices' point lists (a counting sort of ``offsets``)
    n_vertices : M
    """

    def __init__(self, features, kernels=None):
        xp = backend.array_module(features)
        self.xp = xp
        self.kernels = kernels or ("cuda" if xp is not np else "numba")
        n, d = features.shape
        self.d = d
        self.alpha = slice_alpha(d)
        features = xp.ascontiguousarray(features, dtype=np.float32)
        scale = xp.asarray(scale_factors(d))
        elevated = xp.empty((n, d + 1), dtype=np.float32)
        rem0 = xp.empty((n, d + 1), dtype=np.int32)
        rank = xp.empty((n, d + 1), dtype=np.int32)
        bary = xp.empty((n, d + 2), dtype=np.float32)
        if self.kernels == "numba":
            _embed_cpu(features, scale, elevated, rem0, rank, bary)
            self.offsets, keys, table = _build_hash_table(rem0, rank)
            self.n_vertices = keys.shape[0]
            self.neighbours = _neighbours_cpu(table, keys)
            self.start, self.order = _splat_order_cpu(self.offsets, self.n_vertices)
        else:
            _embed_gpu[(n + THREADS - 1) // THREADS, THREADS](features, scale, elevated, rem0, rank, bary)
            self._build_sorted(rem0, rank)
        self.weights = xp.ascontiguousarray(bary[:, :d + 1])

    def _build_sorted(self, rem0, rank):
        """Vertex numbering without a hash table: sort the int64-encoded keys (NumPy or CuPy)."""
        xp, d = self.xp, self.d
        n = rem0.shape[0]
        canonical = np.array([[r if k <= d - r else r - (d + 1) for k in range(d + 1)] for r in range(d + 1)],
                             dtype=np.int32)
        # keys[p, r, i] = rem0[p, i] + canonical[r, rank[p, i]]
        keys = rem0[:, None, :d] + xp.asarray(canonical)[xp.arange(d + 1)[None, :, None], rank[:, None, :d]]
        low = int(keys.min()) - (d + 1)
        span = int(keys.max()) - low + d + 2  # room for the blur neighbours' ±d shifts
        if d * math.log2(span) > 62:
            raise ValueError(f"the lattice spans {span} points per axis in {d} dimensions, too many to encode "
                             "its vertices in 64 bits; use larger sigmas (features of a smaller range)")
        strides = xp.asarray(np.array([span**i for i in range(d)], dtype=np.int64))
        codes = ((keys - low).astype(np.int64) * strides).sum(axis=2).ravel()
        unique, inverse = xp.unique(codes, return_inverse=True)
        m = unique.shape[0]
        self.n_vertices = m
        self.offsets = inverse.reshape(n, d + 1).astype(np.int32)
        total = int(sum(span**i for i in range(d)))
        neighbours = xp.empty((d + 1, m, 2), dtype=np.int32)
        for j in range(d + 1):
            along = (d + 1) * span**j if j < d else 0
            for side, shift in ((0, along - total), (1, total - along)):
                wanted = unique + shift
                index = xp.minimum(xp.searchsorted(unique, wanted), m - 1)
                neighbours[j, :, side] = xp.where(unique[index] == wanted, index, m)
        self.neighbours = neighbours
        flat = self.offsets.ravel()
        self.order = xp.argsort(flat, kind="stable").astype(np.int32)
        self.start = xp.zeros(m + 1, dtype=np.int64)
        self.start[1:] = xp.cumsum(xp.bincount(flat, minlength=m))

    def __call__(self, values):
        """Filter ``values`` (N, C) float32 (all C channels at once); returns (N, C) float32."""
        xp = self.xp
        values = xp.ascontiguousarray(values, dtype=np.float32)
        n, c = values.shape
        m = self.n_vertices
        src = xp.zeros((m + 1, c), dtype=np.float32)  # row M: the missing neighbour, zero
        dst = xp.zeros((m + 1, c), dtype=np.float32)
        out = xp.empty((n, c), dtype=np.float32)
        if self.kernels == "numba":
            _splat_cpu(values, self.weights, self.start, self.order, src)
            for j in range(self.d + 1):
                _blur_cpu(src, dst, self.neighbours[j])
                src, dst = dst, src
            _slice_cpu(src, self.offsets, self.weights, self.alpha, out)
        else:
            _splat_gpu[_grid2(m, c)](values, self.weights, self.start, self.order, src)
            for j in range(self.d + 1):
                _blur_gpu[_grid2(m, c)](src, dst, self.neighbours[j])
                src, dst = dst, src
            _slice_gpu[_grid2(n, c)](src, self.offsets, self.weights, self.alpha, out)
        return out


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

Vertex numbering works on codes on both devices: each vertex key becomes one int64 code; the
CPU numbers the codes in order of first appearance (a hash table), the GPU by sorting them;
the blur neighbours are found by code arithmetic on the sorted codes (a linear merge on the
CPU, ``searchsorted`` on the GPU). Lattices too wide for 64-bit codes fall back, on the CPU,
to an open-addressing hash table (the reference's approach); tests check that both give the
same lattice.

The per-point and per-vertex bodies below are plain Python functions compiled twice, by
``njit`` for the CPU kernels and by ``cuda.jit(device=True)`` for their CUDA twins, so both
run the same index arithmetic. The CPU twins are compiled with ``inline="always"``, so that
Numba pastes the body into the parallel loop before LLVM sees it: called as a separate
function once per vertex, the blur ran 2.4× slower (41 against 17 ms for the six axes of a
500×375 photo's 212k-vertex lattice, one thread), its channel loop no longer vectorised
across the call. The one exception is the splat: the CPU scatters in point
order (one block of points per thread, each with its own buffer, summed at the end), the GPU
gathers per vertex through the sorted codes, which list each vertex's (point, corner) entries
(one thread per vertex and channel, deterministic, no atomics).
"""
import math

import numba
import numpy as np
from numba import float32, int32, njit, prange

from .. import backend, validate
from .potentials import check_features, check_filter_arrays

HALF = np.float32(0.5)
# Lattice points have integer coordinates; float32 holds every integer exactly only up to
# 2**24, so elevated coordinates beyond it no longer tell neighbouring vertices apart. Far
# beyond it the int32 coordinates overflow and the simplex ranks leave 0..d, which would
# index out of bounds: embed() refuses such features.
MAX_COORDINATE = 2.0**24


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
    # Rank the differences (position of each coordinate in decreasing order); without a
    # branch, whose outcome would be a coin toss (33 → 26 ms for 187 500 points, d = 5)
    for i in range(dp1):
        rank[p, i] = 0
    for i in range(d):
        di = elevated[p, i] - float32(rem0[p, i])
        for j in range(i + 1, dp1):
            less = int32(di < elevated[p, j] - float32(rem0[p, j]))
            rank[p, i] += less
            rank[p, j] += 1 - less
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


def _vertex_codes(p, rem0, rank, low, strides, codes):
    """codes[p, r] = Σ_i (coordinate i of vertex r − low) · strides[i]: each vertex key of point
    p as one int64 (coordinate i = rem0_i + r, or rem0_i + r − (d+1) when rank_i > d − r)."""
    d = rem0.shape[1] - 1
    for r in range(d + 1):
        code = 0
        for i in range(d):
            k = rem0[p, i] + r
            if rank[p, i] > d - r:
                k -= d + 1
            code += (k - low) * strides[i]
        codes[p, r] = code


def _splat_vertex(v, c0, c1, values, scale, start, pixel, weight, out):
    """out[v, c0:c1] = Σ over the points p of vertex v (in point order) of w_p · (s_p · values[p])."""
    row = out[v]
    for c in range(c0, c1):
        row[c] = float32(0.0)
    for k in range(start[v], start[v + 1]):
        p = pixel[k]
        w = weight[k]
        s = scale[p]
        point = values[p]
        for c in range(c0, c1):
            row[c] += w * (s * point[c])


def _splat_point(p, values, scale, offsets, weights, out):
    """Scatter: out[vertex r of p] += (w_r · s_p) · values[p] for r = 0..d (the reference's order)."""
    point = values[p]
    s = scale[p]
    for r in range(offsets.shape[1]):
        w = weights[p, r] * s
        row = out[offsets[p, r]]
        for c in range(point.shape[0]):
            row[c] += w * point[c]


def _blur_vertex(v, c0, c1, src, dst, neighbours):
    """dst[v] = src[v] + ½(src[left] + src[right]) along one axis; row M of src is zero."""
    a = neighbours[v, 0]
    b = neighbours[v, 1]
    for c in range(c0, c1):
        dst[v, c] = src[v, c] + HALF * (src[a, c] + src[b, c])


def _slice_point(p, c0, c1, vertex_values, offsets, weights, alpha, scale, factor, out, accumulate):
    """out[p, c0:c1] (+)= Σ_r (factor · s_p · α · w_r) · value of p's vertex r."""
    row = out[p]
    if not accumulate:
        for c in range(c0, c1):
            row[c] = float32(0.0)
    s = factor * scale[p] * alpha
    for r in range(offsets.shape[1]):
        w = s * weights[p, r]
        vertex = vertex_values[offsets[p, r]]
        for c in range(c0, c1):
            row[c] += w * vertex[c]


def _self_weight_point(p, offsets, weights, rank, neighbours, alpha):
    """The lattice's weight of point p on itself, (K_lat)_pp = α Σ_{r,r'} w_r w_r' B[v_r, v_r'].

    B, the blur, moves a value along axis j = 0..d in turn by s_j ∈ {−1, 0, +1} steps of
    u_j = (1, ..., 1) − (d+1)e_j, with weight ½ per step, through vertices that exist.
    Simplex vertex r+1 is vertex r plus u_k for the k of rank d − r, so v_r − v_r' is
    ±Σ_{j∈S} u_j with S = {j : d − max(r, r') < rank_j ≤ d − min(r, r')}; as Σ_j u_j = 0,
    the steps s = ±1_S and s = ∓1_(not S) both lead there (and s = 0, ±1 when r = r').
    Each is walked through the neighbour table; a missing vertex ends the walk."""
    d = offsets.shape[1] - 1
    missing = neighbours.shape[1]
    total = 0.0
    for r in range(d + 1):
        for r2 in range(d + 1):  # the value starts at vertex r2 (splat) and ends at vertex r (slice)
            lo, hi = min(r, r2), max(r, r2)
            toward = 1 if r > r2 else -1
            for variant in range(3 if r == r2 else 2):
                inside, outside = (toward, 0) if variant == 0 else (0, -toward)
                if r == r2:  # stay, or go once round all d+1 axes either way
                    inside, outside = 0, (0 if variant == 0 else (1 if variant == 1 else -1))
                w = offsets[p, r2]
                weight = 1.0
                for j in range(d + 1):
                    step = inside if d - hi < rank[p, j] <= d - lo else outside
                    if step != 0 and w != missing:
                        w = neighbours[j, w, 1 if step > 0 else 0]
                        weight *= 0.5
                if w == offsets[p, r]:
                    total += weights[p, r] * weights[p, r2] * weight
    return alpha * total


_embed_point_cpu = njit(cache=True, inline="always")(_embed_point)
_vertex_coordinate_cpu = njit(cache=True, inline="always")(_vertex_coordinate)
_vertex_codes_cpu = njit(cache=True, inline="always")(_vertex_codes)
_splat_point_cpu = njit(cache=True, inline="always")(_splat_point)
_blur_vertex_cpu = njit(cache=True, inline="always")(_blur_vertex)
_slice_point_cpu = njit(cache=True, inline="always")(_slice_point)
_self_weight_point_cpu = njit(cache=True, inline="always")(_self_weight_point)


@njit(parallel=True, cache=True)
def _self_weight_cpu(offsets, weights, rank, neighbours, alpha, out):
    for p in prange(offsets.shape[0]):
        out[p] = _self_weight_point_cpu(p, offsets, weights, rank, neighbours, alpha)


@njit(parallel=True, cache=True)
def _embed_cpu(features, scale, elevated, rem0, rank, bary):
    for p in prange(features.shape[0]):
        _embed_point_cpu(p, features, scale, elevated, rem0, rank, bary)


@njit(parallel=True, cache=True)
def _codes_cpu(rem0, rank, low, strides, codes):
    for p in prange(rem0.shape[0]):
        _vertex_codes_cpu(p, rem0, rank, low, strides, codes)


@njit(cache=True)
def _unique_codes_cpu(codes):
    """Number the distinct int64 ``codes`` in order of first appearance (as the reference's
    hash table does: vertices of neighbouring pixels get nearby numbers, which keeps splat and
    slice in cache) with an open-addressing table doubled when half full.

    Returns ids (N,) int32 (each code's number), the distinct codes sorted (M,) int64 and
    order (M,) int64 (the number of the k-th smallest code)."""
    n = codes.shape[0]
    capacity = 1 << 16
    slot_code = np.empty(capacity, dtype=np.int64)
    slot_id = np.full(capacity, -1, dtype=np.int32)
    first = np.empty(n, dtype=np.int64)  # distinct codes in order of appearance
    ids = np.empty(n, dtype=np.int32)
    m = 0
    for e in range(n):
        code = codes[e]
        mask = capacity - 1
        h = (code * -7046029254386353131) >> 17  # a multiplicative hash, high bits
        slot = h & mask
        while slot_id[slot] != -1 and slot_code[slot] != code:
            slot = (slot + 1) & mask
        if slot_id[slot] == -1:
            slot_id[slot] = m
            slot_code[slot] = code
            first[m] = code
            m += 1
            if 2 * m >= capacity:  # grow: reinsert the distinct codes so far
                capacity *= 2
                mask = capacity - 1
                slot_code = np.empty(capacity, dtype=np.int64)
                slot_id = np.full(capacity, -1, dtype=np.int32)
                for k in range(m):
                    s = ((first[k] * -7046029254386353131) >> 17) & mask
                    while slot_id[s] != -1:
                        s = (s + 1) & mask
                    slot_id[s] = k
                    slot_code[s] = first[k]
            ids[e] = m - 1
        else:
            ids[e] = slot_id[slot]
    order = np.argsort(first[:m])
    return ids, first[:m][order], order


@njit(cache=True)
def _merge_lookup(unique, order, shift, out):
    """out[order[v]] = order[k] where ``unique[k] == unique[v] + shift``, or M when absent.

    ``unique`` is sorted, so the wanted codes rise with v and one pass merging the two sorted
    sequences finds them all: O(M). ``order`` maps sorted positions to vertex numbers."""
    m = unique.shape[0]
    k = 0
    for v in range(m):
        wanted = unique[v] + shift
        while k < m and unique[k] < wanted:
            k += 1
        out[order[v]] = order[k] if k < m and unique[k] == wanted else m


@njit(parallel=True, cache=True)
def _splat_cpu(values, scale, offsets, weights, out, spare):
    """Splat by scattering, points split into one contiguous block per thread: block 0 adds
    into ``out``, block t > 0 into its own ``spare[t−1]`` (M+1, C), summed at the end. In
    point order within a block, as the sequential reference."""
    blocks = spare.shape[0] + 1
    n = values.shape[0]
    for t in prange(blocks):
        buf = out if t == 0 else spare[t - 1]
        buf[:] = 0
        for p in range(t * n // blocks, (t + 1) * n // blocks):
            _splat_point_cpu(p, values, scale, offsets, weights, buf)
    for v in prange(out.shape[0]):
        row = out[v]
        for t in range(blocks - 1):
            part = spare[t, v]
            for c in range(row.shape[0]):
                row[c] += part[c]


@njit(parallel=True, cache=True)
def _blur_cpu(src, dst, neighbours):
    for v in prange(neighbours.shape[0]):
        _blur_vertex_cpu(v, 0, src.shape[1], src, dst, neighbours)


@njit(parallel=True, cache=True)
def _slice_cpu(vertex_values, offsets, weights, alpha, scale, factor, out, accumulate):
    for p in prange(offsets.shape[0]):
        _slice_point_cpu(p, 0, out.shape[1], vertex_values, offsets, weights, alpha, scale, factor, out, accumulate)


@njit(cache=True)
def _hash(key_source, v, shift_all, j, shift_j, d):
    """Hash of the key ``key_source[v] + shift`` (coordinate j shifted by shift_j, the others by
    shift_all): the reference's r = (r + k)·1664525, then a 64-bit finaliser (MurmurHash3's)
    so that neighbouring lattice points do not land in neighbouring slots."""
    h = np.int64(0)
    for i in range(d):
        k = key_source[v, i] + (shift_j if i == j else shift_all)
        h = (h + k) * 1664525
    h ^= (h >> 33) & 0x7FFFFFFF
    h *= -49064778989728563  # 0xff51afd7ed558ccd as int64
    h ^= (h >> 33) & 0x7FFFFFFF
    return h


@njit(cache=True)
def _find(table, keys, key_source, v, shift_all, j, shift_j, insert_as):
    """Vertex number of the key ``key_source[v] + shift`` in the open-addressing ``table``
    (int32 vertex numbers, −1 for an empty slot; the keys themselves in ``keys``), or −1.
    An absent key is inserted with number ``insert_as`` (its key already in
    ``keys[insert_as]``) when that is >= 0."""
    d = keys.shape[1]
    mask = table.shape[0] - 1
    slot = _hash(key_source, v, shift_all, j, shift_j, d) & mask
    while True:
        e = table[slot]
        if e == -1:
            if insert_as >= 0:
                table[slot] = insert_as
            return insert_as
        same = True
        for i in range(d):
            if keys[e, i] != key_source[v, i] + (shift_j if i == j else shift_all):
                same = False
                break
        if same:
            return e
        slot = (slot + 1) & mask


@njit(cache=True)
def _build_hash_table(rem0, rank):
    """Number the vertices of all simplices with an open-addressing hash table that doubles
    when half full (as the reference's does, so it stays small enough to stay in cache).

    Returns offsets (N, d+1) int32 (vertex number of each point's vertex r), keys (M, d)
    int32 (first d coordinates of each vertex; the last is minus their sum) and the table.
    """
    n, dp1 = rem0.shape
    d = dp1 - 1
    capacity = 1024
    while capacity < 2 * n:
        capacity *= 2
    table = np.full(capacity, -1, dtype=np.int32)
    keys = np.empty((n * dp1, d), dtype=np.int32)
    offsets = np.empty((n, dp1), dtype=np.int32)
    m = 0
    for p in range(n):
        for r in range(dp1):
            for i in range(d):
                keys[m, i] = _vertex_coordinate_cpu(rem0, rank, p, r, i, d)
            e = _find(table, keys, keys, m, 0, -1, 0, m)
            offsets[p, r] = e
            if e == m:
                m += 1
                if 2 * m >= table.shape[0]:
                    table = np.full(2 * table.shape[0], -1, dtype=np.int32)
                    for v in range(m):
                        _find(table, keys, keys, v, 0, -1, 0, v)
    return offsets, keys[:m].copy(), table


@njit(cache=True)
def _lookup(table, keys, v, shift_all, j, shift_j):
    """Number of the vertex ``keys[v] + shift``, or M when it is not in the lattice."""
    e = _find(table, keys, keys, v, shift_all, j, shift_j, -1)
    return keys.shape[0] if e == -1 else e


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


if backend.cuda is not None:
    _cuda = backend.cuda
    _embed_point_gpu = _cuda.jit(device=True)(_embed_point)
    _vertex_codes_gpu = _cuda.jit(device=True)(_vertex_codes)
    _splat_vertex_gpu = _cuda.jit(device=True)(_splat_vertex)
    _blur_vertex_gpu = _cuda.jit(device=True)(_blur_vertex)
    _slice_point_gpu = _cuda.jit(device=True)(_slice_point)
    _self_weight_point_gpu = _cuda.jit(device=True)(_self_weight_point)

    @_cuda.jit
    def _self_weight_gpu(offsets, weights, rank, neighbours, alpha, out):
        p = _cuda.grid(1)
        if p < offsets.shape[0]:
            out[p] = _self_weight_point_gpu(p, offsets, weights, rank, neighbours, alpha)

    @_cuda.jit
    def _embed_gpu(features, scale, elevated, rem0, rank, bary):
        p = _cuda.grid(1)
        if p < features.shape[0]:
            _embed_point_gpu(p, features, scale, elevated, rem0, rank, bary)

    @_cuda.jit
    def _codes_gpu(rem0, rank, low, strides, codes):
        p = _cuda.grid(1)
        if p < rem0.shape[0]:
            _vertex_codes_gpu(p, rem0, rank, low, strides, codes)

    @_cuda.jit(device=True)
    def _row_and_channel():
        """This thread's (row, channel) in a :func:`_grid2` launch."""
        return (_cuda.blockIdx.x * _cuda.blockDim.y + _cuda.threadIdx.y,
                _cuda.blockIdx.y * _cuda.blockDim.x + _cuda.threadIdx.x)

    @_cuda.jit
    def _splat_gpu(values, scale, start, pixel, weight, out):
        v, c = _row_and_channel()
        if v < start.shape[0] - 1 and c < values.shape[1]:
            _splat_vertex_gpu(v, c, c + 1, values, scale, start, pixel, weight, out)

    @_cuda.jit
    def _blur_gpu(src, dst, neighbours):
        v, c = _row_and_channel()
        if v < neighbours.shape[0] and c < src.shape[1]:
            _blur_vertex_gpu(v, c, c + 1, src, dst, neighbours)

    @_cuda.jit
    def _slice_gpu(vertex_values, offsets, weights, alpha, scale, factor, out, accumulate):
        p, c = _row_and_channel()
        if p < offsets.shape[0] and c < out.shape[1]:
            _slice_point_gpu(p, c, c + 1, vertex_values, offsets, weights, alpha, scale, factor, out, accumulate)


def _kernels(kernels, xp):
    """``kernels`` checked against the arrays' module ``xp``, or its default (None)."""
    if kernels is None:
        return "cuda" if xp is not np else "numba"
    validate.choice("kernels", kernels, ("numba", "cuda"))
    if kernels == "numba" and xp is not np:
        raise TypeError("kernels='numba' runs on the CPU and needs NumPy features, got a CuPy array; "
                        "use kernels='cuda' (the default for CuPy arrays)")
    return kernels


def embed(features, kernels=None):
    """Step 1 for every point: elevate, find the nearest remainder-0 point and the enclosing
    simplex with its barycentric weights (the kernels' per-point body is ``_embed_point``).

    Parameters
    ----------
    features : (N, d) float32 NumPy or CuPy array, already divided by the kernel's σ
    kernels : ``"numba"`` (CPU) or ``"cuda"`` (default for CuPy; NumPy arrays under the
        CUDA simulator)

    Returns
    -------
    elevated : (N, d+1) float32, the point on the plane Σx = 0
    rem0 : (N, d+1) int32, the nearest remainder-0 lattice point
    rank : (N, d+1) int32, each coordinate's rank among the differences ``elevated − rem0``
        (0 = largest); simplex vertex r is ``rem0 + r`` where ``rank <= d − r``, else
        ``rem0 + r − (d+1)``
    bary : (N, d+2) float32, the weights of vertices 0..d in columns 0..d (column d+1 is
        scratch), each row summing to 1
    """
    xp = backend.array_module(check_features(features))
    n, d = features.shape
    scale = scale_factors(d)
    # |elevated_j| <= max|f| · (Σ_k s_k + j·s_{j−1}) by the elevation's formula (_embed_point)
    top = float(xp.abs(features).max())
    reach = top * float(scale.sum() + (np.arange(1, d + 1) * scale).max())
    if not reach < MAX_COORDINATE:  # also NaN
        raise ValueError(f"features up to |f| = {top:.3g} would put the lattice's "
                         f"coordinates near {reach:.3g}, past the {MAX_COORDINATE:.3g} that float32 holds "
                         "exactly; divide the features by a larger sigma (dense_crf: positions by "
                         "sigma_alpha and sigma_gamma, colours by sigma_beta), or, if they lie far from 0, "
                         "subtract their minimum first (the filter depends only on their differences)")
    features = xp.ascontiguousarray(features, dtype=np.float32)
    elevated = xp.empty((n, d + 1), dtype=np.float32)
    rem0 = xp.empty((n, d + 1), dtype=np.int32)
    rank = xp.empty((n, d + 1), dtype=np.int32)
    bary = xp.empty((n, d + 2), dtype=np.float32)
    scale = xp.asarray(scale)
    if _kernels(kernels, xp) == "numba":
        _embed_cpu(features, scale, elevated, rem0, rank, bary)
    else:
        backend.launch(_embed_gpu, n, features, scale, elevated, rem0, rank, bary)
    return elevated, rem0, rank, bary


def _grid2(rows, cols):
    """Launch shape for one thread per (row, channel) of a rows × cols array, channels fastest:
    blocks of (tc, tr) threads, the x index the channel, so that a warp reads neighbouring
    channels of neighbouring rows, contiguous in memory (one coalesced access, where rows
    fastest took a memory sector per thread); the grid's x counts row blocks, which may
    exceed the 65 535 its y allows."""
    tc = min(cols, 32)
    tr = max(1, backend.THREADS // tc)
    return ((rows + tr - 1) // tr, (cols + tc - 1) // tc), (tc, tr)


class LatticeFilter:
    """Permutohedral-lattice Gaussian filter for fixed ``features``, applied to any values.

    Parameters
    ----------
    features : (N, d) float32 array (NumPy or CuPy), already divided by the kernel's σ.
    kernels : ``"numba"`` (CPU) or ``"cuda"`` (Numba CUDA + array code; the default for
        CuPy arrays, also usable with NumPy arrays under the CUDA simulator).
    include_self : bool
        False removes the diagonal of the lattice's kernel matrix: each point's own
        contribution, (K_lat)_ii v_i with (K_lat)_ii computed exactly by
        ``_self_weight_point`` (below 1, depending on where the point sits in its simplex:
        the lattice spreads a point over the simplex's vertices and gets part of it back).
        The result approximates the paper's Σ_{j≠i} as the lattice approximates Σ_j.

    Attributes
    ----------
    offsets : (N, d+1) int32, the vertex number of each point's simplex vertex r
    weights : (N, d+1) float32, the barycentric weights (each row sums to 1)
    neighbours : (d+1, M, 2) int32, blur neighbours along each axis (M: none)
    start, pixel, weight : (GPU build) each vertex's points and their weights (vertex v owns
        entries start[v]:start[v+1]), a counting sort of ``offsets`` used by the gather splat
    n_vertices : M
    """

    def __init__(self, features, kernels=None, include_self=True):
        xp = backend.array_module(features)
        self.xp = xp
        self.include_self = validate.boolean("include_self", include_self)
        self.kernels = _kernels(kernels, xp)
        _, rem0, rank, bary = embed(features, self.kernels)  # checks the features
        n, d = features.shape
        self.d = d
        self.alpha = slice_alpha(d)
        self.weights = xp.ascontiguousarray(bary[:, :d + 1])
        # Vertex coordinates lie within d of rem0's; leave room for the blur's shifts of up to d.
        # one transfer; the copy into one contiguous run lets CuPy reduce it with CUB (on the
        # strided columns its own reduction ran one block: 0.3 ms each on an NVIDIA H100)
        coords = rem0[:, :d].ravel()
        low, high = xp.stack([coords.min(), coords.max()]).tolist()
        low -= 2 * d + 1
        span = high + 2 * d + 1 - low + 1
        if d * math.log2(span) <= 62:
            strides = xp.asarray(np.array([span**i for i in range(d)], dtype=np.int64))
            codes = xp.empty((n, d + 1), dtype=np.int64)
            if self.kernels == "numba":
                _codes_cpu(rem0, rank, low, strides, codes)
            else:
                backend.launch(_codes_gpu, n, rem0, rank, low, strides, codes)
            self._number_sorted(codes, span)
        elif self.kernels == "numba":
            self.offsets, keys, table = _build_hash_table(rem0, rank)
            self.n_vertices = keys.shape[0]
            self.neighbours = _neighbours_cpu(table, keys)
        else:
            raise ValueError(f"the lattice spans {span} points along each of its {d} axes, too many to encode "
                             "a vertex in 64 bits on the GPU; use larger sigmas or fewer feature channels")
        self.ones = xp.ones(n, dtype=np.float32)
        self._work = {}
        self.self_weight = None if include_self else self._self_weights(rank)

    def _self_weights(self, rank):
        """(N,) float32: the lattice's weight of each point on itself, (K_lat)_ii."""
        out = self.xp.empty(self.offsets.shape[0], dtype=np.float32)
        args = (self.offsets, self.weights, rank, self.neighbours, self.alpha, out)
        if self.kernels == "numba":
            _self_weight_cpu(*args)
        else:
            backend.launch(_self_weight_gpu, out.shape[0], *args)
        return out

    def _number_sorted(self, codes, span):
        """Number the vertices (CPU: in order of appearance; GPU: in the order of their codes)
        and find the blur neighbours by code arithmetic on the sorted codes: along axis j < d
        the neighbour's key is shifted by −1 (+1) in every coordinate and by +d (−d) in
        coordinate j, i.e. its code by ∓Σ_i span^i ± (d+1)·span^j; along axis d by ∓Σ_i span^i.

        On the GPU the numbering is a sort: a vertex starts where the sorted codes change, and
        the same sort lists each vertex's (point, corner) entries for the gather splat."""
        xp, d = self.xp, self.d
        total = sum(span**i for i in range(d))
        shifts = [s for j in range(d + 1) for along in [(d + 1) * span**j if j < d else 0]
                  for s in (along - total, total - along)]  # (axis j, side 0/1) in order
        if self.kernels == "numba":
            ids, unique, order = _unique_codes_cpu(codes.ravel())
            m = unique.shape[0]
            self.neighbours = np.empty((d + 1, m, 2), dtype=np.int32)
            for k, shift in enumerate(shifts):
                _merge_lookup(unique, order, shift, self.neighbours[k // 2, :, k % 2])
        else:
            flat = codes.ravel()
            order = xp.argsort(flat, kind="stable")  # a vertex's entries stay in point order
            ordered = flat[order]
            first = xp.empty(flat.shape[0], dtype=bool)
            first[0] = True
            xp.not_equal(ordered[1:], ordered[:-1], out=first[1:])
            starts = xp.flatnonzero(first)
            unique = ordered[starts]
            m = unique.shape[0]
            ids = xp.empty(flat.shape[0], dtype=np.int32)
            ids[order] = xp.cumsum(first, dtype=np.int32) - 1
            # the gather splat's lists: vertex v owns entries start[v]:start[v+1] of pixel/weight
            self.start = xp.empty(m + 1, dtype=np.int64)
            self.start[:m] = starts
            self.start[m] = flat.shape[0]
            self.pixel = (order // (d + 1)).astype(np.int32)
            self.weight = self.weights.ravel()[order]
            wanted = (unique[None, :] + xp.asarray(np.array(shifts, dtype=np.int64))[:, None]).ravel()
            index = xp.minimum(xp.searchsorted(unique, wanted), m - 1)
            found = xp.where(unique[index] == wanted, index, m).astype(np.int32)
            self.neighbours = xp.ascontiguousarray(found.reshape(d + 1, 2, m).transpose(0, 2, 1))
        self.n_vertices = m
        self.offsets = ids.reshape(codes.shape).astype(np.int32)

    def _buffers(self, c):
        """Work arrays for C channels, kept between calls: two (M+1, C') vertex buffers (row M is
        the zero "missing neighbour") and per-thread splat buffers (CPU). On the CPU the rows are
        padded with zero columns to C' = a multiple of 8 when C > 4 (21 labels: 24), as the
        reference pads to whole SSE registers: the blur then runs whole 8-wide vector steps."""
        if c not in self._work:
            xp, m = self.xp, self.n_vertices
            threads = numba.get_num_threads() if self.kernels == "numba" else 1
            width = -(-c // 8) * 8 if self.kernels == "numba" and c > 4 else c
            src = xp.zeros((m + 1, width), dtype=np.float32)
            dst = xp.zeros((m + 1, width), dtype=np.float32)
            spare = xp.empty((threads - 1, m + 1, width), dtype=np.float32)
            self._work = {c: (src, dst, spare)}
        return self._work[c]

    def apply(self, values, out, factor=1.0, in_scale=None, out_scale=None, accumulate=True):
        """``out (+)= factor · out_scale ⊙ K(in_scale ⊙ values)``, all C channels at once
        (K without its diagonal when ``include_self`` is False).

        Parameters
        ----------
        values : (N, C) float32, C-contiguous
        out : (N, C) float32, added to (``accumulate=True``) or overwritten
        factor : float, a weight w_m
        in_scale, out_scale : (N,) float32 per-point scales (the normalisation n), or None
        """
        check_filter_arrays(self.offsets.shape[0], values, out, in_scale, out_scale)
        xp = self.xp
        n, c = values.shape
        if c == 0:  # nothing to filter (and no CUDA launch has zero threads)
            return out
        m = self.n_vertices
        in_scale = self.ones if in_scale is None else in_scale
        out_scale = self.ones if out_scale is None else out_scale
        factor = np.float32(factor)
        src, dst, spare = self._buffers(c)
        if self.kernels == "numba":
            _splat_cpu(values, in_scale, self.offsets, self.weights, src, spare)
            for j in range(self.d + 1):
                _blur_cpu(src, dst, self.neighbours[j])
                src, dst = dst, src
            _slice_cpu(src, self.offsets, self.weights, self.alpha, out_scale, factor, out, accumulate)
        else:
            backend.launch(_splat_gpu, _grid2(m, c), values, in_scale, self.start, self.pixel, self.weight, src)
            for j in range(self.d + 1):
                backend.launch(_blur_gpu, _grid2(m, c), src, dst, self.neighbours[j])
                src, dst = dst, src
            backend.launch(_slice_gpu, _grid2(n, c), src, self.offsets, self.weights, self.alpha, out_scale, factor,
                           out, accumulate)
        if not self.include_self:
            out -= (factor * out_scale * self.self_weight * in_scale)[:, None] * values
        return out

    def __call__(self, values):
        """Filter ``values`` (N, C) float; returns a new (N, C) float32 array."""
        check_filter_arrays(self.offsets.shape[0], values)
        values = self.xp.ascontiguousarray(values, dtype=np.float32)
        return self.apply(values, self.xp.empty_like(values), accumulate=False)

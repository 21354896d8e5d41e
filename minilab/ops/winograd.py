"""Winograd's minimal filtering F(2×2, 3×3) (Lavin & Gray, CVPR 2016): 3×3 convolution at
stride 1 with 2.25× fewer multiplications, atrous convolution's ``"winograd"``.

At rate 1, each 2×2 block of outputs comes from a 4×4 tile d of the zero-padded input
(neighbouring tiles overlap by two pixels). At rate r the same holds on the dilated grid:
a tile's outputs, and its input pixels, are r apart, and the tiles of each residue mod r
cover that residue's outputs (``_origins``). Then

    Y = Aᵀ [ Σ_c U_fc ⊙ V_c ] A,      U = G g Gᵀ  (the 3×3 kernel g as 4×4),   V = Bᵀ d B

    Bᵀ = [[1, 0, −1, 0], [0, 1, 1, 0], [0, −1, 1, 0], [0, 1, 0, −1]]
    G  = [[1, 0, 0], [½, ½, ½], [½, −½, ½], [0, 0, 1]]
    Aᵀ = [[1, 1, 1, 0], [0, 1, −1, −1]]

For each of a tile's 16 positions (ξ, ν) the sum over c is a matrix product over the P
tiles of all images, M_ξν = U_ξν (F×C) · V_ξν (C×P): 16 GEMMs doing 16 multiply-adds
per 2×2 outputs and channel pair where the nine taps do 36. The transforms are adds and
subtracts (and halvings in G), done per tile by Numba. CPU only, with no CUDA twin yet: the
GPU profile had the other methods bound by kernel launches, not by multiplications, and
``method="auto"`` does not pick this one there. Memory: the forward keeps the transformed
tiles V for the backward, 16·C numbers per 2×2 outputs, four times the input (``shifted``
keeps the input itself).

The backward pass is the same linear pipeline transposed:

    dM = A dY Aᵀ (per tile),   dV_ξν = U_ξνᵀ dM_ξν,   dU_ξν = dM_ξν V_ξνᵀ,
    dx = Σ_tiles B dV Bᵀ (overlap-added),   dg = Gᵀ dU G.

In exact arithmetic this is the convolution; in floating point the transforms round
differently from the direct sum (relative differences of a few 1e-7 in float32).

Range: the transforms add before they multiply, in the maps' dtype. V adds up to 4 pixels,
U up to 9 taps (4.5·max|g| before its last halving), and A dY Aᵀ up to 4 values of dy, so
the method needs |x| and |dy| <= max/4 and |w| <= max/4.5, ``max`` the dtype's largest
number (8.5e37 and 7.5e37 in float32; just above, an infinite transform meets another
and gives NaN). The other methods multiply first and take any finite values whose products
and sums stay finite; here the sums over channels and in Aᵀ M A are bounded by
81·C·max|x|·max|w| where the direct sum's are by 9·C·max|x|·max|w|. Nothing scans the
input for this (a pass over memory on every call): choose another method for such values.
"""
import threading

import numpy as np
from numba import njit, prange

_scratch = threading.local()  # .buffers: name -> flat array, this thread's work space


@njit(cache=True, inline="always")
def _bt(k, d0, d1, d2, d3):
    """Row k of Bᵀ times (d0, d1, d2, d3)."""
    if k == 0:
        return d0 - d2
    if k == 1:
        return d1 + d2
    if k == 2:
        return d2 - d1
    return d1 - d3


@njit(cache=True, inline="always")
def _b(k, v0, v1, v2, v3):
    """Row k of B (column k of Bᵀ) times (v0, v1, v2, v3)."""
    if k == 0:
        return v0
    if k == 1:
        return v1 - v2 + v3
    if k == 2:
        return v1 + v2 - v0
    return -v3


@njit(cache=True, inline="always")
def _at(k, m0, m1, m2, m3):
    """Row k of Aᵀ times (m0, m1, m2, m3)."""
    if k == 0:
        return m0 + m1 + m2
    return m1 - m2 - m3


@njit(cache=True, inline="always")
def _a(k, y0, y1):
    """Row k of A (column k of Aᵀ) times (y0, y1)."""
    if k == 0:
        return y0
    if k == 1:
        return y0 + y1
    if k == 2:
        return y0 - y1
    return -y1


@njit(cache=True, inline="always")
def _pixel(x, n, c, r, q, zero):
    """x[n, c, r, q], or ``zero`` outside the image (the padding, or past the last block)."""
    if 0 <= r < x.shape[2] and 0 <= q < x.shape[3]:
        return x[n, c, r, q]
    return zero


@njit(cache=True, inline="always")
def _input_tile(x, n, c, i, j, rate, ph, pw, zero, v, p):
    """v[4ξ + ν, c, p] = (Bᵀ d B)[ξ, ν] for the tile d of pixels ``rate`` apart whose corner is
    x's pixel (i − ph, j − pw), (i, j) the tile's first output."""
    r, q = i - ph, j - pw
    r1, r2, r3, q1, q2, q3 = r + rate, r + 2 * rate, r + 3 * rate, q + rate, q + 2 * rate, q + 3 * rate
    for xi in range(4):
        s0 = _bt(xi, _pixel(x, n, c, r, q, zero), _pixel(x, n, c, r1, q, zero),
                 _pixel(x, n, c, r2, q, zero), _pixel(x, n, c, r3, q, zero))
        s1 = _bt(xi, _pixel(x, n, c, r, q1, zero), _pixel(x, n, c, r1, q1, zero),
                 _pixel(x, n, c, r2, q1, zero), _pixel(x, n, c, r3, q1, zero))
        s2 = _bt(xi, _pixel(x, n, c, r, q2, zero), _pixel(x, n, c, r1, q2, zero),
                 _pixel(x, n, c, r2, q2, zero), _pixel(x, n, c, r3, q2, zero))
        s3 = _bt(xi, _pixel(x, n, c, r, q3, zero), _pixel(x, n, c, r1, q3, zero),
                 _pixel(x, n, c, r2, q3, zero), _pixel(x, n, c, r3, q3, zero))
        for nu in range(4):
            v[4 * xi + nu, c, p] = _bt(nu, s0, s1, s2, s3)


@njit(cache=True, inline="always")
def _output_tile(m, n, f, r, q, rate, p, y):
    """y[n, f, r + i·rate, q + j·rate] = (Aᵀ M A)[i, j] for the outputs inside y."""
    for i in range(2):
        if r + i * rate < y.shape[2]:
            s0 = _at(i, m[0, f, p], m[4, f, p], m[8, f, p], m[12, f, p])
            s1 = _at(i, m[1, f, p], m[5, f, p], m[9, f, p], m[13, f, p])
            s2 = _at(i, m[2, f, p], m[6, f, p], m[10, f, p], m[14, f, p])
            s3 = _at(i, m[3, f, p], m[7, f, p], m[11, f, p], m[15, f, p])
            for j in range(2):
                if q + j * rate < y.shape[3]:
                    y[n, f, r + i * rate, q + j * rate] = _at(j, s0, s1, s2, s3)


@njit(cache=True, inline="always")
def _output_tile_t(dy, n, f, r, q, rate, zero, dm, p):
    """dm[4ξ + ν, f, p] = (A dYt Aᵀ)[ξ, ν], dYt the tile's 2×2 outputs of dy from (r, q), ``rate``
    apart (zero past its edge)."""
    y00, y01 = _pixel(dy, n, f, r, q, zero), _pixel(dy, n, f, r, q + rate, zero)
    y10, y11 = _pixel(dy, n, f, r + rate, q, zero), _pixel(dy, n, f, r + rate, q + rate, zero)
    for xi in range(4):
        s0, s1 = _a(xi, y00, y10), _a(xi, y01, y11)
        for nu in range(4):
            dm[4 * xi + nu, f, p] = _a(nu, s0, s1)


@njit(cache=True, inline="always")
def _input_tile_t(dv, n, c, i, j, rate, p, ph, pw, dx):
    """dx[n, c, i − ph + a·rate, j − pw + e·rate] += (B dV Bᵀ)[a, e] for the pixels inside dx,
    (i, j) the tile's first output."""
    r, q = i - ph, j - pw
    for e in range(4):
        if 0 <= q + e * rate < dx.shape[3]:
            w0 = _b(e, dv[0, c, p], dv[1, c, p], dv[2, c, p], dv[3, c, p])
            w1 = _b(e, dv[4, c, p], dv[5, c, p], dv[6, c, p], dv[7, c, p])
            w2 = _b(e, dv[8, c, p], dv[9, c, p], dv[10, c, p], dv[11, c, p])
            w3 = _b(e, dv[12, c, p], dv[13, c, p], dv[14, c, p], dv[15, c, p])
            for a in range(4):
                if 0 <= r + a * rate < dx.shape[2]:
                    dx[n, c, r + a * rate, q + e * rate] += _b(a, w0, w1, w2, w3)


# One thread per plane (image n, channel c), its tiles in order. In the transposed input
# transform the tiles of a plane overlap, so a plane is never split between threads.

@njit(parallel=True, cache=True)
def _input_cpu(x, rate, ph, pw, rows, cols, zero, v):
    n, c = x.shape[0], x.shape[1]
    th, tw = rows.shape[0], cols.shape[0]
    for t in prange(n * c):
        for ti in range(th):
            for tj in range(tw):
                _input_tile(x, t // c, t % c, rows[ti], cols[tj], rate, ph, pw, zero, v, (t // c * th + ti) * tw + tj)


@njit(parallel=True, cache=True)
def _output_cpu(m, rate, rows, cols, y):
    n, f = y.shape[0], y.shape[1]
    th, tw = rows.shape[0], cols.shape[0]
    for t in prange(n * f):
        for ti in range(th):
            for tj in range(tw):
                _output_tile(m, t // f, t % f, rows[ti], cols[tj], rate, (t // f * th + ti) * tw + tj, y)


@njit(parallel=True, cache=True)
def _output_t_cpu(dy, rate, rows, cols, zero, dm):
    n, f = dy.shape[0], dy.shape[1]
    th, tw = rows.shape[0], cols.shape[0]
    for t in prange(n * f):
        for ti in range(th):
            for tj in range(tw):
                _output_tile_t(dy, t // f, t % f, rows[ti], cols[tj], rate, zero, dm, (t // f * th + ti) * tw + tj)


@njit(parallel=True, cache=True)
def _input_t_cpu(dv, rate, rows, cols, ph, pw, dx):
    n, c = dx.shape[0], dx.shape[1]
    th, tw = rows.shape[0], cols.shape[0]
    for t in prange(n * c):
        dx[t // c, t % c] = 0
        for ti in range(th):
            for tj in range(tw):
                _input_tile_t(dv, t // c, t % c, rows[ti], cols[tj], rate, (t // c * th + ti) * tw + tj, ph, pw, dx)


def _kernel_transform(w):
    """U = G g Gᵀ for every (f, c): (16, F, C), row 4ξ + ν."""
    g = w.transpose(2, 3, 0, 1)  # (3, 3, F, C)
    rows = np.stack([g[0], (g[0] + g[1] + g[2]) / 2, (g[0] - g[1] + g[2]) / 2, g[2]])  # G g
    u = np.stack([rows[:, 0], (rows[:, 0] + rows[:, 1] + rows[:, 2]) / 2,
                  (rows[:, 0] - rows[:, 1] + rows[:, 2]) / 2, rows[:, 2]], axis=1)  # (G g) Gᵀ
    return np.ascontiguousarray(u.reshape(16, *w.shape[:2]), dtype=w.dtype)


def _kernel_transform_t(du):
    """dg = Gᵀ dU G for every (f, c): (F, C, 3, 3) from (16, F, C)."""
    d = du.reshape(4, 4, *du.shape[1:])
    rows = np.stack([d[0] + (d[1] + d[2]) / 2, (d[1] - d[2]) / 2, (d[1] + d[2]) / 2 + d[3]])  # Gᵀ dU
    g = np.stack([rows[:, 0] + (rows[:, 1] + rows[:, 2]) / 2, (rows[:, 1] - rows[:, 2]) / 2,
                  (rows[:, 1] + rows[:, 2]) / 2 + rows[:, 3]], axis=1)  # (Gᵀ dU) G
    return np.ascontiguousarray(g.transpose(2, 3, 0, 1))


def _work(name, shape, dtype):
    """A work array for this thread, a view of a flat buffer kept between calls and grown
    when too small. The GEMM products (M, dM, dV) are several times the input's size (106 MB
    for VGG's conv1_2); allocated fresh at every call, their page faults cost more than the
    transforms themselves and cancelled the method's gain on whole models."""
    buffers = _scratch.__dict__.setdefault("buffers", {})
    size = int(np.prod(shape))
    flat = buffers.get(name)
    if flat is None or flat.dtype != dtype or flat.size < size:
        flat = buffers[name] = np.empty(size, dtype)
    return flat[:size].reshape(shape)


def _origins(size, rate):
    """The first output of each tile along a side of ``size`` outputs: the tiles of residue
    s mod ``rate`` take that residue's outputs two by two, s, s + 2·rate, s + 4·rate, ... (a
    last tile may stick out), for the residues s < min(rate, size) that have outputs, and
    only the origins below ``size``. At rate 1: 0, 2, 4, ...; at a rate of ``size`` or more,
    one tile per output, 0, 1, ..., size - 1."""
    per_residue = -(-(-(-size // rate)) // 2)  # the tiles of residue 0, which has the most outputs
    origins = np.arange(min(rate, size)) + 2 * rate * np.arange(per_residue)[:, None]
    return origins[origins < size]


def forward(x, w, rate, stride, padding):
    """``y = conv2d(x, w, padding, dilation=rate)`` for 3×3 ``w`` at stride 1, NumPy arrays
    (:func:`minilab.ops.atrous.unsupported` checks that first)."""
    x = np.ascontiguousarray(x)
    n, c, h, wd = x.shape
    (ph, pw), zero = padding, x.dtype.type(0)
    ho, wo = h + 2 * ph - 2 * rate, wd + 2 * pw - 2 * rate
    rows, cols = _origins(ho, rate), _origins(wo, rate)
    v = np.empty((16, c, n * rows.size * cols.size), x.dtype)
    _input_cpu(x, rate, ph, pw, rows, cols, zero, v)
    u = _kernel_transform(w)
    y = np.empty((n, w.shape[0], ho, wo), x.dtype)
    _output_cpu(np.matmul(u, v, out=_work("products", (16, w.shape[0], v.shape[2]), x.dtype)), rate, rows, cols, y)
    return y, (x.shape, u, v, rate, ph, pw, rows, cols)


def backward(dy, ctx):
    """``(dx, dw)`` of :func:`forward` (module docstring)."""
    x_shape, u, v, rate, ph, pw, rows, cols = ctx
    dy = np.ascontiguousarray(dy)
    dm = _work("products", (16, dy.shape[1], v.shape[2]), dy.dtype)
    _output_t_cpu(dy, rate, rows, cols, dy.dtype.type(0), dm)
    dw = _kernel_transform_t(np.matmul(dm, v.transpose(0, 2, 1)))
    dx = np.empty(x_shape, dy.dtype)
    dv = np.matmul(u.transpose(0, 2, 1), dm, out=_work("dv", v.shape, dy.dtype))
    _input_t_cpu(dv, rate, rows, cols, ph, pw, dx)
    return dx, dw

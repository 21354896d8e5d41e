"""Atrous (dilated) convolution: DeepLab §3.1, eq. (1) and Fig. 2-3.

Chen, Papandreou, Kokkinos, Murphy, Yuille, "DeepLab: Semantic Image Segmentation with Deep
Convolutional Nets, Atrous Convolution, and Fully Connected CRFs", TPAMI 2017.

In one dimension (eq. 1) a filter ``w`` of length K applied at rate ``r`` reads the input
every ``r`` samples::

    y[i] = sum_k x[i + r*k] * w[k]

In two dimensions, with an input ``x`` of shape N×C×H×W zero-padded by (ph, pw) into
``xpad``, a filter ``w`` of shape F×C×kh×kw, rate ``r`` and stride ``s``::

    y[n, f, i, j] = b[f] + sum_{c, u, v} xpad[n, c, s*i + r*u, s*j + r*v] * w[f, c, u, v]

the cross-correlation that PyTorch calls ``conv2d(x, w, b, stride=s, padding=(ph, pw),
dilation=r)``. The filter sees a window of k_e = k + (k - 1)(r - 1) pixels per side (its
field of view) with only k taps: rate 1 is an ordinary convolution. Output size per side:
``(H + 2 ph - k_e) // s + 1``.

The paper names three ways to compute it (``"zeros"``, ``"sparse"``, ``"deinterlace"``).
:data:`METHODS` registers them, each with a hand-written backward, beside a loop reference
and two more ways that are faster here, six in all:

``"direct"``
    The formula above as loops (Numba ``@njit``, and a ``@cuda.jit`` twin with the same index
    arithmetic on the GPU). The reference; slow on big inputs.
``"zeros"``
    Upsample the filter to k_e×k_e by inserting r - 1 zeros between the taps, then an ordinary
    convolution (im2col + one GEMM). The literal definition; costs (k_e / k)² more.
``"sparse"``
    im2col that samples the padded input at stride r (Caffe's way), then one GEMM with the
    batch folded in.
``"deinterlace"``
    Split the padded input into r² sub-images ``xpad[:, :, a::r, b::r]`` (space to batch),
    ordinary convolution on all of them at once, re-interlace the outputs (TensorFlow's
    way). Stride 1 only.
``"shifted"``
    No im2col and no padding: for each tap (u, v) the GEMM ``W[:, :, u, v] @ x[n]`` (F × C
    by C × H·W) on the unpadded input, added into the output shifted by (r·u - ph, r·v - pw)
    and cropped to where it lands; taps are stacked into one GEMM per group of tap rows,
    over only the input rows the group reads. Its copies touch F-channel maps
    rather than a C·kh·kw-row im2col, and the zero padding is never multiplied.
``"winograd"``
    Not one of the paper's: Winograd's F(2×2, 3×3) (:mod:`minilab.ops.winograd`), 16 GEMMs
    on transformed 4×4 tiles doing 2.25× fewer multiply-adds, the tiles' pixels ``rate``
    apart. 3×3 kernels at stride 1 only, NumPy arrays only, and a narrower range: its
    transforms add before multiplying, so it needs |x|, |dout| <= max/4 and |w| <= max/4.5
    (about 8e37 in float32) where the other methods take any values with finite sums.

``method="auto"`` (the default) picks one per call with :func:`auto_method`: ``"winograd"``
for big 3×3 layers at rate 1 or 2 and stride 1 on the CPU; ``"shifted"`` for 1×1 kernels at
stride 1; otherwise ``"sparse"`` where the input has few channels next to the output's, as
in a network's first layer on an RGB image, or where a stride skips most input positions,
and ``"shifted"`` elsewhere. :func:`unsupported` says which methods cannot take a convolution.

Every method but ``"winograd"`` accepts NumPy arrays (CPU) or CuPy arrays (GPU, GEMMs
through cuBLAS) and returns arrays of the same kind and dtype (float32 or float64).
"""
import collections

import numpy as np
from numba import njit, prange

from .. import backend, validate
from . import winograd
from ._checks import INT32_MAX

cuda = backend.cuda


def effective_kernel_size(k, rate):
    """Field of view k_e = k + (k - 1)(rate - 1) of a k-tap filter at ``rate`` (§3.1)."""
    k = validate.integer("k", k, minimum=1)
    rate = validate.integer("rate", rate, minimum=1)
    return k + (k - 1) * (rate - 1)


def atrous_conv1d(x, w, rate):
    """Eq. (1): ``y[i] = sum_k x[i + rate*k] * w[k]``, at the positions where it is defined.

    Parameters
    ----------
    x : ndarray, shape (L,), float32 or float64
        The signal.
    w : ndarray, shape (K,), same dtype
        The filter.
    rate : int >= 1
        The stride with which the input is sampled; 1 is an ordinary correlation.

    Returns
    -------
    y : ndarray, shape (L - k_e + 1,), with k_e = K + (K - 1)(rate - 1).
    """
    validate.float_array("x", x, ndim=1)
    validate.float_array("w", w, ndim=1)
    _same_kind("w", w, x)
    rate = validate.integer("rate", rate, minimum=1)
    if w.shape[0] == 0:
        raise ValueError("w must have at least one tap, got shape (0,)")
    ke = effective_kernel_size(w.shape[0], rate)
    if ke > x.shape[0]:
        raise ValueError(f"w spans k_e = {ke} samples at rate {rate}, longer than x ({x.shape[0]})")
    length = x.shape[0] - ke + 1
    y = backend.array_module(x).zeros(length, x.dtype)
    for k in range(w.shape[0]):
        y += x[rate * k: rate * k + length] * w[k]
    return y


def auto_method(in_channels, out_channels, stride, rate, kernel_size=(3, 3), pixels=0, gpu=False):
    """The method ``method="auto"`` runs for C = ``in_channels``, F = ``out_channels`` and an
    input of ``pixels`` = H·W per channel:

    * ``"winograd"`` for a 3×3 kernel at stride 1 on the CPU: at rate 1 when C >= 128, or
      C >= 64 on at least 256×256 pixels; at rate 2 when C >= 256 and C·H·W >= 786 432
      (3·2¹⁸);
    * ``"shifted"`` for a 1×1 kernel at stride 1, which without padding it computes as one
      batched GEMM with neither copies nor adds (an im2col would copy the input as it is);
    * otherwise ``"sparse"`` if m·C <= F·stride², else ``"shifted"``, with m = 2 at rate 1
      and m = 4 at higher rates.

    Both ``"sparse"`` and ``"shifted"`` do the same multiply-adds; what differs is the memory
    they stream. ``"sparse"`` writes an im2col of C·k² rows by Ho·Wo output positions;
    ``"shifted"`` writes tap products of k²·F rows by the H·W input positions
    (Ho·Wo·stride²), then reads them back to add them into the output, so the im2col is the
    smaller by F·stride²/C. The margin m leaves ``"shifted"`` the layers where its larger
    GEMM outputs pay for themselves: C = F (a GEMM per tap group beats the im2col copies),
    and at rates above 1 also C = F/2, where much of what the outer taps read is zero
    padding, which ``"shifted"`` skips and ``"sparse"`` copies and multiplies (LargeFOV's
    fc6: over a third at rate 12 on a 41×41 map). Forward+backward on 2 CPU cores
    (``benchmarks/results/bench_atrous_cpu_haswell.md``), ms for sparse / shifted: VGG's
    conv1_1 (3→64, 321×321) 14 / 108; ResNet's 7×7 stride-2 stem 16 / 473; VGG's conv2_1
    (64→128, 161×161) 66 / 99; fc6 (512→1024, rate 12, 41×41) 233 / 197.

    ``"winograd"`` does 2.25× fewer multiply-adds but writes and reads transformed tiles
    four times the input's size; it pays where the GEMMs dominate. Forward+backward, ms,
    best of sparse/shifted against winograd, from the runs that set these thresholds (same
    machine, layers timed one by one): 64→64 on 321×321 156 / 154 (shifted alone 203),
    128→128 on 161×161 145 / 111, 256→256 on 81×81 118 / 87, 512→512 on 41×41 114 / 85,
    128→128 on 41×41 8.1 / 7.5; but 64→64 on 81×81 8.6 / 17.7 and 32→32 on 161×161
    11.9 / 19.7. The committed table above has 256→256 on 81×81 (case i) at 117 / 74-79 and
    64→64 on 321×321 (case j) at 198 / 164-227: there the two are even within the noise of
    a shared machine (docs/atrous.md). At rate 2 (its tiles on the dilated grid) it
    multiplies the zero padding that ``"shifted"`` skips, so it needs bigger layers:
    ``shifted`` / winograd, C→C, 512 on 41×41 117 / 107, 256 on 81×81 115 / 106, 512 on
    65×65 275 / 221, 1024 on 41×41 446 / 381 (the table's case b, 256 on 65×65: 74 / 68);
    but 256 on 41×41 29 / 33 and 512 on 33×33 73 / 82. At higher rates the padding
    dominates (fc6, 512→1024 at rate 12 on 41×41: 197 / 231). Its float range
    is narrower (module docstring): for values within a factor 4.5 of the dtype's largest,
    name another method rather than ``"auto"``.
    """
    in_channels = validate.integer("in_channels", in_channels, minimum=1)
    out_channels = validate.integer("out_channels", out_channels, minimum=1)
    stride = validate.integer("stride", stride, minimum=1)
    rate = validate.integer("rate", rate, minimum=1)
    kernel_size = validate.pair("kernel_size", kernel_size, minimum=1)
    pixels = validate.integer("pixels", pixels, minimum=0)
    gpu = validate.boolean("gpu", gpu)
    if kernel_size == (3, 3) and stride == 1 and not gpu and (
            (rate == 1 and (in_channels >= 128 or (in_channels >= 64 and pixels >= 256 * 256)))
            or (rate == 2 and in_channels >= 256 and in_channels * pixels >= 3 * 2**18)):
        return "winograd"
    if kernel_size == (1, 1) and stride == 1:
        return "shifted"
    margin = 2 if rate == 1 else 4
    return "sparse" if margin * in_channels <= out_channels * stride ** 2 else "shifted"


def unsupported(method, kernel_size, rate, stride, gpu=False):
    """Why ``method`` cannot compute a convolution with this kernel size (kh, kw), rate and
    stride (on NumPy arrays, or CuPy ones when ``gpu``): a message, or None when it can."""
    if method not in METHODS and method != "auto":  # auto picks a method that can
        return f"method must be one of {sorted(['auto', *METHODS])}, got {method!r}"
    if method == "deinterlace" and stride != 1:
        return (f"stride must be 1 for method='deinterlace' (sub-images are convolved densely), "
                f"got stride={stride}; use method='sparse'")
    if method == "winograd" and (tuple(kernel_size) != (3, 3) or stride != 1 or gpu):
        return (f"method='winograd' computes 3×3 kernels at stride 1 on NumPy arrays, got a "
                f"{kernel_size[0]}×{kernel_size[1]} kernel at stride {stride}"
                f"{' on a GPU' if gpu else ''}; use method='auto'")
    return None


def atrous_conv2d_forward(x, w, b=None, *, rate=1, stride=1, padding=0, method="auto"):
    """Atrous convolution (§3.1): ``conv2d(x, w, b, stride, padding, dilation=rate)``.

    ``y[n, f, i, j] = b[f] + sum_{c,u,v} xpad[n, c, stride*i + rate*u, stride*j + rate*v] * w[f, c, u, v]``

    Parameters
    ----------
    x : ndarray, shape (N, C, H, W), float32 or float64, NumPy or CuPy
    w : ndarray, shape (F, C, kh, kw), same dtype and array module
    b : ndarray, shape (F,), or None
    rate : int in [1, 2**31 - 1]
        Dilation: taps are ``rate`` pixels apart.
    stride : int in [1, 2**31 - 1]
        Output step (``"deinterlace"`` needs 1).
    padding : int or (int, int), each in [0, 2**31 - 1]
        Zeros added on both sides of H and of W.
    method : str
        A key of :data:`METHODS`, or ``"auto"`` for :func:`auto_method`'s choice.

    Returns
    -------
    out : ndarray, shape (N, F, Ho, Wo), Ho = (H + 2 ph - k_e) // stride + 1, k_e = kh + (kh-1)(rate-1)
    cache : tuple for :func:`atrous_conv2d_backward`. It may hold ``x`` itself rather than a
        copy (whether it does depends on the method and the padding), so write into ``x``
        only after the backward.
    """
    validate.float_array("x", x, ndim=4)
    validate.float_array("w", w, ndim=4)
    _same_kind("w", w, x)
    if b is not None:
        validate.float_array("b", b, ndim=1)
        _same_kind("b", b, x)
        if b.shape[0] != w.shape[0]:
            raise ValueError(f"b must have w.shape[0] = {w.shape[0]} entries, got shape {tuple(b.shape)}")
    if x.size == 0 or w.size == 0:
        raise ValueError(f"x and w must not be empty, got shapes {tuple(x.shape)} and {tuple(w.shape)}")
    if w.shape[1] != x.shape[1]:
        raise ValueError(f"w has {w.shape[1]} input channels (w.shape[1]) but x has {x.shape[1]} (x.shape[1])")
    rate = validate.integer("rate", rate, minimum=1, maximum=INT32_MAX)
    stride = validate.integer("stride", stride, minimum=1, maximum=INT32_MAX)
    ph, pw = validate.pair("padding", padding, minimum=0, maximum=INT32_MAX)
    validate.choice("method", method, ["auto", *METHODS])
    gpu = backend.is_gpu_array(x)
    if method == "auto":
        method = auto_method(x.shape[1], w.shape[0], stride, rate, w.shape[2:], x.shape[2] * x.shape[3], gpu)
    problem = unsupported(method, w.shape[2:], rate, stride, gpu)
    if problem:
        raise ValueError(problem)
    hp, wp = x.shape[2] + 2 * ph, x.shape[3] + 2 * pw
    keh, kew = effective_kernel_size(w.shape[2], rate), effective_kernel_size(w.shape[3], rate)
    if keh > hp or kew > wp:
        raise ValueError(f"w spans {keh}×{kew} pixels at rate {rate} (k_e = k + (k-1)(rate-1)), "
                         f"larger than the padded input {hp}×{wp}; increase padding or lower rate")

    out, ctx = METHODS[method].forward(x, backend.array_module(w).ascontiguousarray(w), rate, stride, (ph, pw))
    if b is not None:
        out += b[:, None, None]
    return out, (method, ctx, b is not None, out.shape, out.dtype, gpu)


def atrous_conv2d_backward(dout, cache):
    """Gradients of :func:`atrous_conv2d_forward`.

    ``dx[n, c, p, q] = sum over (f, u, v, i, j) with stride*i + rate*u = p + ph (and likewise
    for q) of dout[n, f, i, j] * w[f, c, u, v]``;
    ``dw[f, c, u, v] = sum_{n,i,j} dout[n, f, i, j] * xpad[n, c, stride*i + rate*u, stride*j + rate*v]``;
    ``db[f] = sum_{n,i,j} dout[n, f, i, j]``.

    Parameters
    ----------
    dout : ndarray, shape (N, F, Ho, Wo), the dtype and array module of the forward output
    cache : what :func:`atrous_conv2d_forward` returned

    Returns
    -------
    dx : ndarray (N, C, H, W); dw : ndarray (F, C, kh, kw); db : ndarray (F,) or None when
    the forward had no bias.
    """
    method, ctx, has_bias, out_shape, dtype, on_gpu = cache
    validate.float_array("dout", dout, ndim=4)
    if backend.is_gpu_array(dout) != on_gpu:
        raise TypeError(f"dout is a {'CuPy' if not on_gpu else 'NumPy'} array but the forward ran on "
                        f"{'CuPy' if on_gpu else 'NumPy'} arrays; move it with minilab.backend.to_device")
    if tuple(dout.shape) != tuple(out_shape):
        raise ValueError(f"dout must have the forward output's shape {tuple(out_shape)}, got {tuple(dout.shape)}")
    if dout.dtype != dtype:
        raise TypeError(f"dout must have the forward output's dtype {dtype}, got {dout.dtype}")
    dx, dw = METHODS[method].backward(dout, ctx)
    xp = backend.array_module(dout)
    db = dout.sum(axis=(0, 2, 3)) if has_bias else None
    return xp.ascontiguousarray(dx), dw, db


def _same_kind(name, a, x):
    """``a`` must live where ``x`` lives (NumPy or CuPy) and share its dtype."""
    if backend.is_gpu_array(a) != backend.is_gpu_array(x):
        kind = lambda z: "CuPy" if backend.is_gpu_array(z) else "NumPy"
        raise TypeError(f"{name} is a {kind(a)} array but x is a {kind(x)} array; "
                        "move both to one device with minilab.backend.to_device")
    if a.dtype != x.dtype:
        raise TypeError(f"{name} must have x's dtype {x.dtype}, got {a.dtype}")


def _pad(x, ph, pw):
    """x zero-padded by ph rows and pw columns on each side, C-contiguous (x itself when it
    already is and there is nothing to add), so the kernels see one memory layout."""
    xp = backend.array_module(x)
    if ph == 0 and pw == 0:
        return xp.ascontiguousarray(x)
    n, c, h, w = x.shape
    xpad = xp.zeros((n, c, h + 2 * ph, w + 2 * pw), x.dtype)
    xpad[:, :, ph:ph + h, pw:pw + w] = x
    return xpad


def _out_size(xpad_shape, w_shape, rate, stride):
    """(Ho, Wo) of a valid atrous correlation of an already padded input."""
    return tuple((xpad_shape[d] - (w_shape[d] - 1) * rate - 1) // stride + 1 for d in (2, 3))


# ---- "sparse": im2col sampling the input at stride `rate`, then GEMM ----------------------
# The im2col matrix cols[(c, u, v), (n, i, j)] = xpad[n, c, stride*i + rate*u, stride*j + rate*v]
# has C·kh·kw rows and N·Ho·Wo columns (the batch folded into the GEMM). It is built one block
# of output rows (n, i) at a time into a reused buffer small enough to stay in the CPU's
# cache, and rebuilt in the backward instead of being kept: the cache holds only xpad.

_BLOCK_BYTES = {"cpu": 8 * 2**20, "gpu": 512 * 2**20}  # size of one im2col block


def _blocks(xpad, k_rows, ho, wo):
    """Split the N·Ho output rows (n, i) into blocks whose im2col fits in ``_BLOCK_BYTES``."""
    rows = xpad.shape[0] * ho
    budget = _BLOCK_BYTES["gpu" if backend.is_gpu_array(xpad) else "cpu"]
    count = -(-rows // max(1, budget // (k_rows * wo * xpad.itemsize)))
    step = -(-rows // count)
    return [(r0, min(rows, r0 + step)) for r0 in range(0, rows, step)], step


def _im2col(xpad, kh, kw, rate, stride, ho, wo, r0, r1, buf):
    """cols[(c, u, v), (t, j)] = xpad[n, c, stride*i + rate*u, stride*j + rate*v] with
    n·Ho + i = r0 + t, for the output rows r0 <= n·Ho + i < r1; a view of ``buf`` of shape
    (C·kh·kw, (r1 - r0)·Wo). A parallel Numba gather on the CPU, its CUDA twin on the GPU."""
    k_rows = xpad.shape[1] * kh * kw
    cols = buf[:k_rows * (r1 - r0) * wo].reshape(k_rows, r1 - r0, wo)
    (_im2col_cpu if isinstance(xpad, np.ndarray) else _im2col_cuda)(xpad, kh, kw, rate, stride, ho, r0, cols)
    return cols.reshape(k_rows, (r1 - r0) * wo)


def _col2im(dcols, kh, kw, rate, stride, ho, wo, r0, r1, dxpad):
    """The adjoint of :func:`_im2col`: add each entry of the block ``dcols`` into ``dxpad``
    where it was read from."""
    dcols = dcols.reshape(-1, r1 - r0, wo)
    (_col2im_cpu if isinstance(dcols, np.ndarray) else _col2im_cuda)(dcols, kh, kw, rate, stride, ho, r0, dxpad)


@njit(parallel=True, cache=True)
def _im2col_cpu(xpad, kh, kw, rate, stride, ho, r0, cols):
    for row in prange(cols.shape[0]):  # row = (c, u, v)
        c, u, v = row // (kh * kw), row // kw % kh, row % kw
        for t in range(cols.shape[1]):
            n, i = (r0 + t) // ho, (r0 + t) % ho
            src, dst = xpad[n, c, stride * i + rate * u], cols[row, t]
            if stride == 1:  # a contiguous copy, which the compiler vectorises
                dst[:] = src[rate * v: rate * v + dst.size]
            else:
                for j in range(dst.size):
                    dst[j] = src[stride * j + rate * v]


@njit(parallel=True, cache=True)
def _col2im_cpu(dcols, kh, kw, rate, stride, ho, r0, dxpad):
    for c in prange(dxpad.shape[1]):  # one thread owns channel c: a scatter without races
        for u in range(kh):
            for v in range(kw):
                row = (c * kh + u) * kw + v
                for t in range(dcols.shape[1]):
                    n, i = (r0 + t) // ho, (r0 + t) % ho
                    src, dst = dcols[row, t], dxpad[n, c, stride * i + rate * u]
                    if stride == 1:
                        dst[rate * v: rate * v + src.size] += src
                    else:
                        for j in range(src.size):
                            dst[stride * j + rate * v] += src[j]


def _sparse_forward(xpad, w, rate, stride):
    """y[:, block] = W (F × C·kh·kw) @ cols[:, block] for each block; y reshaped to N×F×Ho×Wo."""
    xp = backend.array_module(xpad)
    f, c, kh, kw = w.shape
    n = xpad.shape[0]
    ho, wo = _out_size(xpad.shape, w.shape, rate, stride)
    w2 = w.reshape(f, c * kh * kw)
    y = xp.empty((f, n * ho * wo), xpad.dtype)
    blocks, step = _blocks(xpad, c * kh * kw, ho, wo)
    buf = xp.empty(c * kh * kw * step * wo, xpad.dtype)
    for r0, r1 in blocks:
        cols = _im2col(xpad, kh, kw, rate, stride, ho, wo, r0, r1, buf)
        xp.matmul(w2, cols, out=y[:, r0 * wo:r1 * wo])
    y = y.reshape(f, n, ho, wo).transpose(1, 0, 2, 3)
    return xp.ascontiguousarray(y), (xpad, w, rate, stride)


def _sparse_backward(dy, ctx):
    """Per block: dW += dY @ colsᵀ, dcols = Wᵀ @ dY, dxpad += col2im(dcols)."""
    xpad, w, rate, stride = ctx
    xp = backend.array_module(dy)
    f, c, kh, kw = w.shape
    ho, wo = dy.shape[2:]
    w2 = w.reshape(f, c * kh * kw)
    dy2 = xp.ascontiguousarray(dy.transpose(1, 0, 2, 3)).reshape(f, -1)
    dw2 = xp.zeros_like(w2)
    dxpad = xp.zeros_like(xpad)
    blocks, step = _blocks(xpad, c * kh * kw, ho, wo)
    buf, dbuf = (xp.empty(c * kh * kw * step * wo, xpad.dtype) for _ in range(2))
    for r0, r1 in blocks:
        cols = _im2col(xpad, kh, kw, rate, stride, ho, wo, r0, r1, buf)
        dyb = dy2[:, r0 * wo:r1 * wo]
        dw2 += dyb @ cols.T
        dcols = xp.matmul(w2.T, dyb, out=dbuf[:cols.size].reshape(cols.shape))
        _col2im(dcols, kh, kw, rate, stride, ho, wo, r0, r1, dxpad)
    return dxpad, dw2.reshape(w.shape)


# ---- "zeros": the filter upsampled with rate - 1 zeros between taps, ordinary convolution --

def _zeros_forward(xpad, w, rate, stride):
    f, c, kh, kw = w.shape
    w_up = backend.array_module(w).zeros(
        (f, c, (kh - 1) * rate + 1, (kw - 1) * rate + 1), w.dtype)
    w_up[:, :, ::rate, ::rate] = w
    y, ctx = _sparse_forward(xpad, w_up, 1, stride)
    return y, (ctx, rate)


def _zeros_backward(dy, ctx):
    ctx, rate = ctx
    dxpad, dw_up = _sparse_backward(dy, ctx)
    return dxpad, backend.array_module(dy).ascontiguousarray(dw_up[:, :, ::rate, ::rate])


# ---- "deinterlace": space to batch, ordinary convolution, batch to space -----------------

def _space_to_batch(a, r, hq, wq):
    """(N, C, H, W) -> (r·r·N, C, hq, wq): sub-image (p, q) is a[:, :, p::r, q::r], zero-filled."""
    xp = backend.array_module(a)
    n, c, h, w = a.shape
    grid = xp.zeros((n, c, hq * r, wq * r), a.dtype)
    grid[:, :, :h, :w] = a
    sub = grid.reshape(n, c, hq, r, wq, r).transpose(3, 5, 0, 1, 2, 4)
    return sub.reshape(r * r * n, c, hq, wq)


def _batch_to_space(sub, r, h, w):
    """The inverse of :func:`_space_to_batch`, cropped to h×w: interlace r² sub-images."""
    b, c, hq, wq = sub.shape
    n = b // (r * r)
    grid = sub.reshape(r, r, n, c, hq, wq).transpose(2, 3, 4, 0, 5, 1).reshape(n, c, hq * r, wq * r)
    return backend.array_module(sub).ascontiguousarray(grid[:, :, :h, :w])


def _deinterlace_forward(xpad, w, rate, stride):
    """Sub-image (p, q) convolved densely with w gives the outputs y[..., p::rate, q::rate]."""
    if w.shape[2:] == (1, 1):  # one tap: the rate spaces nothing, and rate² sub-images would be waste
        rate = 1
    hp, wp = xpad.shape[2:]
    ho, wo = _out_size(xpad.shape, w.shape, rate, stride)
    hq, wq = -(-hp // rate), -(-wp // rate)  # sub-image size: padded up to a multiple of rate
    y_sub, ctx = _sparse_forward(_space_to_batch(xpad, rate, hq, wq), w, 1, 1)
    return _batch_to_space(y_sub, rate, ho, wo), (ctx, xpad.shape, rate, y_sub.shape)


def _deinterlace_backward(dy, ctx):
    ctx, xpad_shape, rate, (_, _, hs, ws) = ctx
    dsub, dw = _sparse_backward(_space_to_batch(dy, rate, hs, ws), ctx)
    return _batch_to_space(dsub, rate, xpad_shape[2], xpad_shape[3]), dw


# ---- "shifted": GEMMs on the unpadded input, their outputs added at shifted places -------
# Tap (u, v) contributes W[:, :, u, v] @ x[n] (F × C times C × H·W) to the output, shifted by
# (rate·u - ph, rate·v - pw) pixels and cropped to where it lands inside both x and y: the
# zero padding is never built nor multiplied, and no im2col copy of x is made; the copies
# touch only F-channel maps. Taps are stacked into one GEMM per group of tap rows u0:u1,
# Z = W_g ((u1-u0)·kw·F × C) @ x[n, :, a0:a1] (C × (a1-a0)·W), over only the input rows
# a0:a1 that the group reads (a third of the map for the outer rows of a rate-24 filter on
# 33×33), a contiguous column range of x[n] seen as C × H·W. Each group holds as many tap
# rows as fit in ``_BLOCK_BYTES`` (at least one) and reuses one buffer.
#
# On the CPU the shifted adds are NumPy slice operations, one per tap. On the GPU each slice
# operation is a kernel launch, and launches, not arithmetic, bound a small network there:
# one kernel adds all the taps of a group (_add_taps_kernel), and one gathers dy for all of
# them in the backward (_gather_taps_kernel). 3×3 convolutions: 2 launches in place of 19.

def _tap_ranges(rate, stride, pad, k, size_in, size_out):
    """For each tap t < k: the output slice i0:i1 whose input index stride·i + rate·t - pad
    lies in 0..size_in-1, and the input slice it reads; None for a tap that reads only padding."""
    ranges = []
    for t in range(k):
        off = rate * t - pad
        i0 = max(0, -(off // stride))  # the first i with stride·i + off >= 0
        i1 = min(size_out, (size_in - 1 - off) // stride + 1) if size_in - 1 - off >= 0 else 0
        a0 = stride * i0 + off
        ranges.append((slice(i0, i1), slice(a0, a0 + stride * (i1 - i0 - 1) + 1, stride)) if i0 < i1 else None)
    return ranges


def _tap_groups(x, w_shape, rows):
    """Groups (u0, u1, a0, a1) of consecutive tap rows whose stacked GEMM output fits in one
    block, with the input rows a0:a1 they read; groups that read only padding are left out."""
    f, _, kh, kw = w_shape
    row_bytes = kw * f * x.shape[2] * x.shape[3] * x.itemsize
    step = max(1, _BLOCK_BYTES["gpu" if backend.is_gpu_array(x) else "cpu"] // row_bytes)
    groups = []
    for u0 in range(0, kh, step):
        read = [rows[u][1] for u in range(u0, min(kh, u0 + step)) if rows[u] is not None]
        if read:
            groups.append((u0, min(kh, u0 + step), min(r.start for r in read), max(r.stop for r in read)))
    return groups


def _shifted_forward(x, w, rate, stride, padding):
    """y[n][:, out_rows_u, out_cols_v] += Z[u, v][:, in_rows_u, in_cols_v], Z = W_g @ x[n] per tap group."""
    xp = backend.array_module(x)
    x = xp.ascontiguousarray(x)
    n, c, h, wd = x.shape
    f, _, kh, kw = w.shape
    ho, wo = _out_size((n, c, h + 2 * padding[0], wd + 2 * padding[1]), w.shape, rate, stride)
    rows = _tap_ranges(rate, stride, padding[0], kh, h, ho)
    cols = _tap_ranges(rate, stride, padding[1], kw, wd, wo)
    groups = _tap_groups(x, w.shape, rows)
    w_taps = xp.ascontiguousarray(w.transpose(2, 3, 0, 1)).reshape(kh * kw * f, c)  # rows (u, v, f)
    if (kh, kw, stride, *padding) == (1, 1, 1, 0, 0):  # pointwise: the one tap's GEMM is the output
        y = xp.matmul(w_taps, x.reshape(n, c, h * wd)).reshape(n, f, h, wd)
        return y, (x, w_taps, w.shape, rate, stride, padding, None, None, None)
    y = xp.zeros((n, f, ho, wo), x.dtype)
    z_buf = xp.empty(max((u1 - u0) * kw * f * (a1 - a0) * wd for u0, u1, a0, a1 in groups), x.dtype) if groups else None
    for i in range(n):
        for u0, u1, a0, a1 in groups:
            z = xp.matmul(w_taps[u0 * kw * f:u1 * kw * f], x[i, :, a0:a1].reshape(c, (a1 - a0) * wd),
                          out=z_buf[:(u1 - u0) * kw * f * (a1 - a0) * wd].reshape(-1, (a1 - a0) * wd))
            z = z.reshape(u1 - u0, kw, f, a1 - a0, wd)
            if xp is np or cuda is None:  # CuPy without numba-cuda: the slices, one launch each
                _add_taps(z, y[i], u0, a0, rows, cols, stride)
            else:
                backend.launch(_add_taps_kernel, y[i].size, z, u0, a0, rate, stride, *padding, y[i])
    return y, (x, w_taps, w.shape, rate, stride, padding, rows, cols, groups)


def _add_taps(z, y, u0, a0, rows, cols, stride):
    """y[:, out_rows_u, out_cols_v] += z[u − u0, v][:, in_rows_u − a0, in_cols_v] for the taps
    (u, v) of a group, z its stacked GEMM output (u1−u0, kw, F, a1−a0, W) over input rows a0:a1."""
    for u in range(u0, u0 + z.shape[0]):
        for v in range(z.shape[1]):
            if rows[u] is not None and cols[v] is not None:
                read = slice(rows[u][1].start - a0, rows[u][1].stop - a0, stride)
                y[:, rows[u][0], cols[v][0]] += z[u - u0, v][:, read, cols[v][1]]


def _gather_taps(dy, u0, a0, rows, cols, stride, d):
    """The adjoint's gather: d[u − u0, v][:, in_rows_u − a0, in_cols_v] = dy[:, out_rows_u,
    out_cols_v] for the taps of a group, zero where a tap reads no output (d shaped as z above)."""
    d[...] = 0
    for u in range(u0, u0 + d.shape[0]):
        for v in range(d.shape[1]):
            if rows[u] is not None and cols[v] is not None:
                read = slice(rows[u][1].start - a0, rows[u][1].stop - a0, stride)
                d[u - u0, v][:, read, cols[v][1]] = dy[:, rows[u][0], cols[v][0]]


def _shifted_backward(dy, ctx):
    """Per image and tap group: D[u, v] = dy moved back onto x's rows a0:a1 (zeros elsewhere),
    dx[n, :, a0:a1] += W_gᵀ @ D, dW_g += D @ x[n, :, a0:a1]ᵀ."""
    x, w_taps, w_shape, rate, stride, padding, rows, cols, groups = ctx
    xp = backend.array_module(dy)
    n, c, h, wd = x.shape
    f, _, kh, kw = w_shape
    if groups is None:  # pointwise: dx[n] = Wᵀ dy[n], dW = Σ_n dy[n] x[n]ᵀ
        dy, x = dy.reshape(n, f, h * wd), x.reshape(n, c, h * wd)
        dw = dy[0] @ x[0].T
        for i in range(1, n):
            dw += dy[i] @ x[i].T
        return xp.matmul(w_taps.T, dy).reshape(n, c, h, wd), dw.reshape(w_shape)
    # The first GEMM into a block of dx or dW writes it rather than adding to zeros: the first
    # group's, when it reads every row of x, for dx[n]; the first image's for each group's rows
    # of dW, which need zeros first only when a tap row reads nothing but padding (no group).
    whole = bool(groups) and groups[0][2:] == (0, h)
    dx = xp.empty_like(x) if whole else xp.zeros_like(x)
    dw_taps = xp.empty_like(w_taps) if sum(u1 - u0 for u0, u1, _, _ in groups) == kh else xp.zeros_like(w_taps)
    size = max(((u1 - u0) * kw * f * (a1 - a0) * wd for u0, u1, a0, a1 in groups), default=0)
    d_buf = xp.empty(size, x.dtype)
    dx_buf = xp.empty(c * h * wd, x.dtype)
    for i in range(n):
        for g, (u0, u1, a0, a1) in enumerate(groups):
            m = (a1 - a0) * wd
            d = d_buf[:(u1 - u0) * kw * f * m].reshape(u1 - u0, kw, f, a1 - a0, wd)
            if xp is np or cuda is None:
                _gather_taps(dy[i], u0, a0, rows, cols, stride, d)
            else:
                _gather_taps_cuda(xp.ascontiguousarray(dy[i]), u0, a0, rate, stride, padding, d)
            d = d.reshape(-1, m)
            w_g, dw_g = w_taps[u0 * kw * f:u1 * kw * f], dw_taps[u0 * kw * f:u1 * kw * f]
            if g == 0 and whole:
                xp.matmul(w_g.T, d, out=dx[i].reshape(c, m))
            else:
                dx[i, :, a0:a1] += xp.matmul(w_g.T, d, out=dx_buf[:c * m].reshape(c, m)).reshape(c, a1 - a0, wd)
            if i == 0:
                xp.matmul(d, x[i, :, a0:a1].reshape(c, m).T, out=dw_g)
            else:
                dw_g += d @ x[i, :, a0:a1].reshape(c, m).T
    return dx, xp.ascontiguousarray(dw_taps.reshape(kh, kw, f, c).transpose(2, 3, 0, 1))


# ---- "direct": the formula as loops; Numba on the CPU, a CUDA twin on the GPU -------------
# Each element function is compiled twice, by @njit and by @cuda.jit(device=True), so both
# devices run exactly the same index arithmetic (the CPU twin inlined into its loop, as in
# minilab/crf/lattice.py). Accumulation is in float64.

def _out_element(xpad, w, n, f, i, j, rate, stride):
    """y[n, f, i, j] = sum_{c,u,v} xpad[n, c, stride*i + rate*u, stride*j + rate*v] * w[f, c, u, v]."""
    acc = 0.0
    for c in range(w.shape[1]):
        for u in range(w.shape[2]):
            for v in range(w.shape[3]):
                acc += xpad[n, c, stride * i + rate * u, stride * j + rate * v] * w[f, c, u, v]
    return acc


def _dx_element(dy, w, n, c, p, q, rate, stride):
    """dxpad[n, c, p, q] = sum of dy[n, f, i, j] * w[f, c, u, v] over stride*i + rate*u = p, stride*j + rate*v = q."""
    acc = 0.0
    for u in range(w.shape[2]):
        di = p - rate * u
        if di < 0 or di % stride != 0 or di // stride >= dy.shape[2]:
            continue
        for v in range(w.shape[3]):
            dj = q - rate * v
            if dj < 0 or dj % stride != 0 or dj // stride >= dy.shape[3]:
                continue
            for f in range(w.shape[0]):
                acc += dy[n, f, di // stride, dj // stride] * w[f, c, u, v]
    return acc


def _dw_element(xpad, dy, c, f, u, v, rate, stride):
    """dw[f, c, u, v] = sum_{n,i,j} dy[n, f, i, j] * xpad[n, c, stride*i + rate*u, stride*j + rate*v]."""
    acc = 0.0
    for n in range(dy.shape[0]):
        for i in range(dy.shape[2]):
            for j in range(dy.shape[3]):
                acc += dy[n, f, i, j] * xpad[n, c, stride * i + rate * u, stride * j + rate * v]
    return acc


_out_element_cpu = njit(cache=True, inline="always")(_out_element)
_dx_element_cpu = njit(cache=True, inline="always")(_dx_element)
_dw_element_cpu = njit(cache=True, inline="always")(_dw_element)


def _unravel(t, shape):
    """The 4-D index of flat position t in a C-ordered array of ``shape``."""
    d = t % shape[3]
    t //= shape[3]
    c = t % shape[2]
    t //= shape[2]
    return t // shape[1], t % shape[1], c, d


_unravel_cpu = njit(cache=True, inline="always")(_unravel)


@njit(parallel=True, cache=True)
def _direct_forward_cpu(xpad, w, rate, stride, y):
    for t in prange(y.size):
        n, f, i, j = _unravel_cpu(t, y.shape)
        y[n, f, i, j] = _out_element_cpu(xpad, w, n, f, i, j, rate, stride)


@njit(parallel=True, cache=True)
def _direct_backward_cpu(xpad, w, dy, rate, stride, dxpad, dw):
    for t in prange(dxpad.size):
        n, c, p, q = _unravel_cpu(t, dxpad.shape)
        dxpad[n, c, p, q] = _dx_element_cpu(dy, w, n, c, p, q, rate, stride)
    for t in prange(dw.size):
        f, c, u, v = _unravel_cpu(t, dw.shape)
        dw[f, c, u, v] = _dw_element_cpu(xpad, dy, c, f, u, v, rate, stride)


if cuda is not None:
    _out_element_gpu = cuda.jit(device=True)(_out_element)
    _dx_element_gpu = cuda.jit(device=True)(_dx_element)
    _dw_element_gpu = cuda.jit(device=True)(_dw_element)
    _unravel_gpu = cuda.jit(device=True)(_unravel)

    @cuda.jit
    def _im2col_kernel(xpad, kh, kw, rate, stride, ho, r0, cols):
        e = cuda.grid(1)
        if e < cols.size:
            row, t, j = e // (cols.shape[1] * cols.shape[2]), e // cols.shape[2] % cols.shape[1], e % cols.shape[2]
            c, u, v = row // (kh * kw), row // kw % kh, row % kw
            n, i = (r0 + t) // ho, (r0 + t) % ho
            cols[row, t, j] = xpad[n, c, stride * i + rate * u, stride * j + rate * v]

    @cuda.jit
    def _col2im_kernel(dcols, kh, kw, rate, stride, ho, r0, dxpad):
        # the same sums as _col2im_cpu, gathered per element of dxpad so no atomics are needed
        e = cuda.grid(1)
        if e < dxpad.size:
            n, c, p, q = _unravel_gpu(e, dxpad.shape)
            acc = 0.0
            for u in range(kh):
                di = p - rate * u
                t = n * ho + di // stride - r0
                if di < 0 or di % stride != 0 or di // stride >= ho or t < 0 or t >= dcols.shape[1]:
                    continue
                for v in range(kw):
                    dj = q - rate * v
                    if dj < 0 or dj % stride != 0 or dj // stride >= dcols.shape[2]:
                        continue
                    acc += dcols[(c * kh + u) * kw + v, t, dj // stride]
            dxpad[n, c, p, q] += acc

    @cuda.jit
    def _add_taps_kernel(z, u0, a0, rate, stride, ph, pw, y):
        # y[f, i, j] += z[u − u0, v, f, r − a0, q] over the taps (u, v) of the group whose input
        # pixel (r, q) = (stride·i + rate·u − ph, stride·j + rate·v − pw) lies in rows a0:a1 (all
        # the rows those taps read) and columns 0..W−1: what _add_taps adds, summed in float64
        t = cuda.grid(1)
        if t < y.size:
            f, i, j = t // (y.shape[1] * y.shape[2]), t // y.shape[2] % y.shape[1], t % y.shape[2]
            acc = 0.0
            for u in range(z.shape[0]):
                r = stride * i + rate * (u0 + u) - ph - a0
                if 0 <= r < z.shape[3]:
                    for v in range(z.shape[1]):
                        q = stride * j + rate * v - pw
                        if 0 <= q < z.shape[4]:
                            acc += z[u, v, f, r, q]
            y[f, i, j] += acc

    @cuda.jit
    def _gather_taps_kernel(dy, u0, a0, rate, stride, ph, pw, d):
        # d[u, v, f, r, q] = dy[f, i, j] for the output (i, j) that read input pixel (a0 + r, q)
        # through tap (u0 + u, v), and 0 where none did: what _gather_taps writes. Block
        # p·rows + r fills row r of plane p = (u, v, f), its threads stepping along the row:
        # the indices are divided out once per thread, not per element (a grid of one thread
        # per element unravelling its five indices was bound by integer division, 0.3 TB/s on
        # an H200); one grid dimension, so no count of rows or planes meets CUDA's 65 535
        p, r = cuda.blockIdx.x // d.shape[3], cuda.blockIdx.x % d.shape[3]
        f = p % d.shape[2]
        v = p // d.shape[2] % d.shape[1]
        u = p // (d.shape[1] * d.shape[2])
        di = a0 + r + ph - rate * (u0 + u)  # stride·i
        i = di // stride
        row = di >= 0 and di % stride == 0 and i < dy.shape[1]
        for q in range(cuda.threadIdx.x, d.shape[4], cuda.blockDim.x):
            dj = q + pw - rate * v  # stride·j
            j = dj if stride == 1 else dj // stride
            if row and dj >= 0 and (stride == 1 or dj % stride == 0) and j < dy.shape[2]:
                d[u, v, f, r, q] = dy[f, i, j]
            else:
                d[u, v, f, r, q] = 0

    @cuda.jit
    def _forward_kernel(xpad, w, rate, stride, y):
        t = cuda.grid(1)
        if t < y.size:
            n, f, i, j = _unravel_gpu(t, y.shape)
            y[n, f, i, j] = _out_element_gpu(xpad, w, n, f, i, j, rate, stride)

    @cuda.jit
    def _dx_kernel(dy, w, rate, stride, dxpad):
        t = cuda.grid(1)
        if t < dxpad.size:
            n, c, p, q = _unravel_gpu(t, dxpad.shape)
            dxpad[n, c, p, q] = _dx_element_gpu(dy, w, n, c, p, q, rate, stride)

    @cuda.jit
    def _dw_kernel(xpad, dy, rate, stride, dw):
        t = cuda.grid(1)
        if t < dw.size:
            f, c, u, v = _unravel_gpu(t, dw.shape)
            dw[f, c, u, v] = _dw_element_gpu(xpad, dy, c, f, u, v, rate, stride)


def _gather_taps_cuda(dy, u0, a0, rate, stride, padding, d):
    """Launch the gather: a block of 32 threads per row of each plane of d."""
    backend.launch(_gather_taps_kernel, (d.shape[0] * d.shape[1] * d.shape[2] * d.shape[3], 32),
                   dy, u0, a0, rate, stride, *padding, d)


def _im2col_cuda(xpad, kh, kw, rate, stride, ho, r0, cols):
    backend.launch(_im2col_kernel, cols.size, xpad, kh, kw, rate, stride, ho, r0, cols)


def _col2im_cuda(dcols, kh, kw, rate, stride, ho, r0, dxpad):
    backend.launch(_col2im_kernel, dxpad.size, dcols, kh, kw, rate, stride, ho, r0, dxpad)


def _direct_forward_cuda(xpad, w, rate, stride, y):
    """Launch the forward kernel (device arrays; NumPy arrays under the CUDA simulator)."""
    backend.launch(_forward_kernel, y.size, xpad, w, rate, stride, y)


def _direct_backward_cuda(xpad, w, dy, rate, stride, dxpad, dw):
    """Launch the dx and dw kernels."""
    backend.launch(_dx_kernel, dxpad.size, dy, w, rate, stride, dxpad)
    backend.launch(_dw_kernel, dw.size, xpad, dy, rate, stride, dw)


def _direct_forward(xpad, w, rate, stride):
    xp = backend.array_module(xpad)
    y = xp.empty((xpad.shape[0], w.shape[0]) + _out_size(xpad.shape, w.shape, rate, stride), xpad.dtype)
    (_direct_forward_cpu if xp is np else _direct_forward_cuda)(xpad, w, rate, stride, y)
    return y, (xpad, w, rate, stride)


def _direct_backward(dy, ctx):
    xpad, w, rate, stride = ctx
    xp = backend.array_module(dy)
    dxpad, dw = xp.empty_like(xpad), xp.empty_like(w)
    dy = xp.ascontiguousarray(dy)
    (_direct_backward_cpu if xp is np else _direct_backward_cuda)(xpad, w, dy, rate, stride, dxpad, dw)
    return dxpad, dw


Method = collections.namedtuple("Method", "forward backward")
Method.__doc__ = """One implementation: ``forward(x, w, rate, stride, (ph, pw)) -> (y, ctx)``,
without bias; ``backward(dy, ctx) -> (dx, dw)``."""


def _on_padded(forward, backward):
    """A :class:`Method` from a forward(xpad, w, rate, stride) and a backward(dy, ctx) ->
    (dxpad, dw) that work on the zero-padded input: pad before, crop dxpad after."""
    def padded_forward(x, w, rate, stride, padding):
        y, ctx = forward(_pad(x, *padding), w, rate, stride)
        return y, (ctx, padding, x.shape)

    def cropped_backward(dy, ctx):
        ctx, (ph, pw), shape = ctx
        dxpad, dw = backward(dy, ctx)
        return dxpad[:, :, ph:ph + shape[2], pw:pw + shape[3]], dw
    return Method(padded_forward, cropped_backward)


#: The registered implementations of atrous convolution, by name (see the module docstring).
METHODS = {
    "direct": _on_padded(_direct_forward, _direct_backward),
    "zeros": _on_padded(_zeros_forward, _zeros_backward),
    "sparse": _on_padded(_sparse_forward, _sparse_backward),
    "deinterlace": _on_padded(_deinterlace_forward, _deinterlace_backward),
    "shifted": Method(_shifted_forward, _shifted_backward),
    "winograd": Method(winograd.forward, winograd.backward),
}

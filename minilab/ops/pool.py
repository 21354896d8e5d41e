"""2-D max pooling (forward and backward).

DeepLab-VGG keeps VGG-16's five 3×3 max poolings with padding 1 but sets the stride of
pool4 and pool5 to 1 (§3.1), so the network's output stride is 8 instead of 32; the
other three pool with stride 2. For output pixel ``(i, j)`` of channel ``c``,

    out[n, c, i, j] = max_{0 <= a < kh, 0 <= b < kw} xpad[n, c, s_h i + a, s_w j + b],

where ``xpad`` is ``x`` padded with ``-inf`` (padding never wins the max, even against an
input of ``-inf``). NaN wins over any number, as in PyTorch, so a diverging network's NaNs
reach its loss. The backward pass sends ``dout[n, c, i, j]`` to the one input pixel that won,
the first in row-major window order when several are equal (or NaN), and adds up what
reaches each input pixel (windows overlap when the stride is smaller than the kernel).

Output size (``ceil_mode=False``, PyTorch's default): ``floor((H + 2p - k) / s) + 1``.
``ceil_mode=True`` (Caffe's rule, which DeepLab's prototxts use): ``ceil((H + 2p - k) / s) + 1``,
minus one if the last window would start inside the bottom padding; it also takes an input
smaller than the kernel, whose one window is cut short by the image's end. For the 3×3, stride-2,
pad-1 pools of DeepLab both give ``ceil(H / 2)`` for odd ``H`` (321 → 161 → 81 → 41); they
differ by one for even ``H``.

Two implementations, registered in :data:`METHODS`, give identical results:

``"numba"`` (default)
    One output pixel at a time: scan its window, keep the first maximum (Numba ``@njit`` on
    the CPU, a ``@cuda.jit`` twin on the GPU compiled from the same element function). The
    backward pass never has two threads write one pixel: on the CPU each thread owns whole
    planes and adds ``dout`` to their windows' winners; on the GPU each input pixel gathers
    ``dout`` from the windows it won.
``"xp"``
    Array code written once against ``xp``: a loop over the ``kh·kw`` window offsets that
    keeps a running maximum and its offset, each step a strided slice of the ``-inf``-padded
    input; the backward pass adds ``dout`` back offset by offset.
"""
import collections

import numpy as np
from numba import njit, prange

from .. import backend, validate
from ._checks import INT32_MAX, upstream_gradient

cuda = backend.cuda


def max_pool2d_forward(x, kernel, stride=None, padding=0, *, ceil_mode=False, method="numba"):
    """Max pooling of ``N×C×H×W`` maps.

    Parameters
    ----------
    x : ndarray (NumPy or CuPy), float32 or float64, shape (N, C, H, W)
    kernel : int or (int, int)
        Window size ``(kh, kw)``, each >= 1, with ``kh·kw <= 2**31 - 1``.
    stride : int or (int, int), optional
        Default: the kernel size; each at most ``2**31 - 1``.
    padding : int or (int, int)
        Implicit ``-inf`` border, at most half the kernel (as in PyTorch).
    ceil_mode : bool
        Output size rule (module docstring); ``False`` is PyTorch's default, ``True`` Caffe's.
    method : str
        A key of :data:`METHODS`.

    Returns
    -------
    out : ndarray, same dtype, shape (N, C, Ho, Wo)
    cache : tuple, for :func:`max_pool2d_backward` (holds the winning offset ``a·kw + b`` of
        every window as int32)
    """
    validate.float_array("x", x, ndim=4)
    kh, kw = validate.pair("kernel", kernel, minimum=1)
    if kh * kw > INT32_MAX:
        raise ValueError(f"kernel must have kh·kw <= {INT32_MAX} offsets (the winner's is kept "
                         f"as int32), got {(kh, kw)}")
    sh, sw = validate.pair("stride", kernel if stride is None else stride, minimum=1, maximum=INT32_MAX)
    ph, pw = validate.pair("padding", padding, minimum=0)
    ceil_mode = validate.boolean("ceil_mode", ceil_mode)
    validate.choice("method", method, METHODS)
    if ph > kh // 2 or pw > kw // 2:
        raise ValueError(f"padding must be at most half the kernel {(kh, kw)}, got {(ph, pw)}")
    n, c, h, w = x.shape
    ho = _output_size(h, kh, sh, ph, ceil_mode)
    wo = _output_size(w, kw, sw, pw, ceil_mode)
    if ho < 1 or wo < 1:
        raise ValueError(f"x of spatial size {(h, w)} is smaller than the kernel {(kh, kw)} "
                         f"with padding {(ph, pw)}")
    geometry = (kh, kw, sh, sw, ph, pw)
    out, arg = METHODS[method].forward(x, ho, wo, geometry)
    return out, (method, arg, x.shape, x.dtype, geometry)


def max_pool2d_backward(dout, cache):
    """Gradient of :func:`max_pool2d_forward`: ``dout`` routed to each window's winner.

    Parameters
    ----------
    dout : ndarray, shape (N, C, Ho, Wo), the dtype of the forward input
    cache : the cache returned by the forward pass

    Returns
    -------
    dx : ndarray, shape (N, C, H, W)
    """
    method, arg, x_shape, dtype, geometry = cache
    upstream_gradient(dout, arg.shape, dtype)
    backend.array_module(dout, arg)  # both on one device
    return METHODS[method].backward(dout, arg, x_shape, geometry)


def _output_size(size, k, s, p, ceil_mode):
    """``floor`` or Caffe's ``ceil`` output size (module docstring)."""
    span = size + 2 * p - k
    if not ceil_mode:
        return max(span // s + 1, 0)
    out = -(-span // s) + 1
    if (out - 1) * s >= size + p:  # the last window would start in the padding
        out -= 1
    return out


# ---- "xp": strided slices of the padded input, one per window offset --------------------

def _xp_forward(x, ho, wo, geometry):
    kh, kw, sh, sw, ph, pw = geometry
    xp = backend.array_module(x)
    n, c, h, w = x.shape
    # Padded with -inf on all sides, and far enough right/down for the last window.
    hp, wp = max(h + 2 * ph, (ho - 1) * sh + kh), max(w + 2 * pw, (wo - 1) * sw + kw)
    xpad = xp.full((n, c, hp, wp), -np.inf, dtype=x.dtype)
    xpad[:, :, ph:ph + h, pw:pw + w] = x
    inside = xp.zeros((hp, wp), dtype=bool)  # which padded pixels are x's
    inside[ph:ph + h, pw:pw + w] = True
    best = arg = None
    for a in range(kh):
        for b in range(kw):
            window = (slice(a, a + sh * (ho - 1) + 1, sh), slice(b, b + sw * (wo - 1) + 1, sw))
            v, v_inside = xpad[(..., *window)], inside[window]
            if best is None:
                best, arg, best_inside = v.copy(), xp.zeros(v.shape, dtype=np.int32), v_inside.copy()
                continue
            # strict: on ties the earlier offset keeps the gradient; a NaN beats a number; and
            # x's pixels beat padding, which matters only where x is -inf
            wins = v_inside & ((v > best) | (xp.isnan(v) & ~xp.isnan(best)) | ~best_inside)
            xp.copyto(best, v, where=wins)
            xp.copyto(arg, a * kw + b, where=wins)
            best_inside |= v_inside
    return best, arg


def _xp_backward(dout, arg, x_shape, geometry):
    kh, kw, sh, sw, ph, pw = geometry
    xp = backend.array_module(dout)
    n, c, h, w = x_shape
    ho, wo = arg.shape[2:]
    hp, wp = max(h + 2 * ph, (ho - 1) * sh + kh), max(w + 2 * pw, (wo - 1) * sw + kw)
    dxpad = xp.zeros((n, c, hp, wp), dtype=dout.dtype)
    for a in range(kh):
        for b in range(kw):
            # Within one offset the strided slice hits each input pixel at most once.
            dxpad[:, :, a:a + sh * (ho - 1) + 1:sh, b:b + sw * (wo - 1) + 1:sw] += \
                xp.where(arg == a * kw + b, dout, 0)
    return dxpad[:, :, ph:ph + h, pw:pw + w].copy()


# ---- "numba": one window per thread; @njit on the CPU, a @cuda.jit twin on the GPU -------
# Arrays are seen as planes, x (N·C)×H×W. The forward element function is compiled twice, by
# @njit(inline="always") and by @cuda.jit(device=True), so both devices run the same index
# arithmetic (inlined, the CPU forward is 1.7× faster than calling it per window). The
# backward differs by design: on the CPU each thread owns whole planes and scatters dout to
# the winners (no races, no divisions); on the GPU each thread owns one input pixel and
# gathers from the windows that contain it (no atomics).

def _pool_element(x, p, i, j, kh, kw, sh, sw, ph, pw, out, arg):
    """Window (i, j) of plane p: write its first maximum (or first NaN) and that offset a·kw + b."""
    r0, q0 = i * sh - ph, j * sw - pw  # the window's top-left corner, maybe in the padding
    a0, b0 = max(0, -r0), max(0, -q0)  # offsets inside the image only; the first starts the scan
    a1, b1 = min(kh, x.shape[1] - r0), min(kw, x.shape[2] - q0)
    best, where = x[p, r0 + a0, q0 + b0], a0 * kw + b0
    total = 0.0  # the window's sum: NaN if a value is NaN (or the window holds +inf and -inf)
    for a in range(a0, a1):
        for b in range(b0, b1):
            v = x[p, r0 + a, q0 + b]
            total += v
            if v > best:
                best, where = v, a * kw + b
    # A NaN compares false, so the scan above skips it; the sum is NaN instead. Only then
    # (rare) look for the first NaN: a test of each value in the scan would cost 2.5×.
    if total != total:
        for a in range(a1 - 1, a0 - 1, -1):
            for b in range(b1 - 1, b0 - 1, -1):
                if x[p, r0 + a, q0 + b] != x[p, r0 + a, q0 + b]:
                    best, where = x[p, r0 + a, q0 + b], a * kw + b
    out[p, i, j] = best
    arg[p, i, j] = where


_pool_element_cpu = njit(cache=True, inline="always")(_pool_element)


@njit(parallel=True, cache=True)
def _forward_cpu(x, kh, kw, sh, sw, ph, pw, out, arg):
    for p in prange(out.shape[0]):
        for i in range(out.shape[1]):
            for j in range(out.shape[2]):
                _pool_element_cpu(x, p, i, j, kh, kw, sh, sw, ph, pw, out, arg)


@njit(parallel=True, cache=True)
def _backward_cpu(dout, arg, kh, kw, sh, sw, ph, pw, dx):
    for p in prange(dx.shape[0]):
        dx[p] = 0
        for i in range(dout.shape[1]):
            for j in range(dout.shape[2]):
                k = arg[p, i, j]
                dx[p, i * sh - ph + k // kw, j * sw - pw + k % kw] += dout[p, i, j]


if cuda is not None:
    _pool_element_gpu = cuda.jit(device=True)(_pool_element)

    @cuda.jit
    def _forward_kernel(x, kh, kw, sh, sw, ph, pw, out, arg):
        t = cuda.grid(1)
        if t < out.size:
            ho, wo = out.shape[1], out.shape[2]
            _pool_element_gpu(x, t // (ho * wo), t // wo % ho, t % wo, kh, kw, sh, sw, ph, pw, out, arg)

    @cuda.jit
    def _backward_kernel(dout, arg, kh, kw, sh, sw, ph, pw, dx):
        # dx[p, r, q] = sum of dout over the windows whose winner is (r, q). Window (i, j)
        # sees padded pixel (u, v) = (r + ph, q + pw) at offset (u - i·sh, v - j·sw) when that
        # lies in [0, kh) × [0, kw): i from ceil((u - kh + 1) / sh) to floor(u / sh).
        t = cuda.grid(1)
        if t < dx.size:
            h, w = dx.shape[1], dx.shape[2]
            p, r, q = t // (h * w), t // w % h, t % w
            u, v = r + ph, q + pw
            i_first = 0 if u < kh else (u - kh + sh) // sh
            j_first = 0 if v < kw else (v - kw + sw) // sw
            acc = 0.0
            for i in range(i_first, min(u // sh, dout.shape[1] - 1) + 1):
                for j in range(j_first, min(v // sw, dout.shape[2] - 1) + 1):
                    if arg[p, i, j] == (u - i * sh) * kw + (v - j * sw):
                        acc += dout[p, i, j]
            dx[p, r, q] = acc


def _forward_cuda(x, kh, kw, sh, sw, ph, pw, out, arg):
    """Launch the forward kernel (device arrays; NumPy arrays under the CUDA simulator)."""
    backend.launch(_forward_kernel, out.size, x, kh, kw, sh, sw, ph, pw, out, arg)


def _backward_cuda(dout, arg, kh, kw, sh, sw, ph, pw, dx):
    """Launch the backward kernel (device arrays; NumPy arrays under the CUDA simulator)."""
    backend.launch(_backward_kernel, dx.size, dout, arg, kh, kw, sh, sw, ph, pw, dx)


def _numba_forward(x, ho, wo, geometry):
    xp = backend.array_module(x)
    if xp is not np and cuda is None:
        raise RuntimeError("method='numba' on CuPy arrays needs numba-cuda (the 'gpu' extra); "
                           "install it or use method='xp'")
    n, c, h, w = x.shape
    planes = xp.ascontiguousarray(x).reshape(n * c, h, w)
    out = xp.empty((n * c, ho, wo), dtype=x.dtype)
    arg = xp.empty((n * c, ho, wo), dtype=np.int32)
    (_forward_cpu if xp is np else _forward_cuda)(planes, *geometry, out, arg)
    return out.reshape(n, c, ho, wo), arg.reshape(n, c, ho, wo)


def _numba_backward(dout, arg, x_shape, geometry):
    xp = backend.array_module(dout)
    n, c, h, w = x_shape
    ho, wo = arg.shape[2:]
    dx = xp.empty((n * c, h, w), dtype=dout.dtype)
    (_backward_cpu if xp is np else _backward_cuda)(
        xp.ascontiguousarray(dout).reshape(n * c, ho, wo), arg.reshape(n * c, ho, wo), *geometry, dx)
    return dx.reshape(x_shape)


Method = collections.namedtuple("Method", "forward backward")
Method.__doc__ = """One implementation: ``forward(x, ho, wo, geometry) -> (out, arg)`` and
``backward(dout, arg, x_shape, geometry) -> dx``, with ``geometry = (kh, kw, sh, sw, ph, pw)``
and ``arg`` the winning offset of each window (int32, N×C×Ho×Wo)."""

#: The registered implementations of max pooling, by name (see the module docstring).
METHODS = {
    "numba": Method(_numba_forward, _numba_backward),
    "xp": Method(_xp_forward, _xp_backward),
}

"""2-D max pooling (forward and backward).

DeepLab-VGG keeps VGG-16's five 3×3 max poolings with padding 1 but sets the stride of
pool4 and pool5 to 1 (§3.1, §4.1), so the network's output stride is 8 instead of 32; the
other three pool with stride 2. For output pixel ``(i, j)`` of channel ``c``,

    out[n, c, i, j] = max_{0 <= a < kh, 0 <= b < kw} xpad[n, c, s_h i + a, s_w j + b],

where ``xpad`` is ``x`` padded with ``-inf`` (padding never wins the max). The backward pass
sends ``dout[n, c, i, j]`` to the one input pixel that won, the first in row-major window
order when several are equal, and adds up what reaches each input pixel (windows overlap
when the stride is smaller than the kernel).

Output size (``ceil_mode=False``, PyTorch's default): ``floor((H + 2p - k) / s) + 1``.
``ceil_mode=True`` (Caffe's rule, which DeepLab's prototxts use): ``ceil((H + 2p - k) / s) + 1``,
minus one if the last window would start inside the bottom padding. For the 3×3, stride-2,
pad-1 pools of DeepLab both give ``ceil(H / 2)`` for odd ``H`` (321 → 161 → 81 → 41); they
differ by one for even ``H``.

The implementation loops over the ``kh·kw`` window offsets and keeps a running maximum and
its offset, each step a strided slice of the padded input, so it is written once against
``xp`` for NumPy and CuPy and never materialises the windows.
"""
import numpy as np

from .. import backend, validate
from ._checks import upstream_gradient


def max_pool2d_forward(x, kernel, stride=None, padding=0, *, ceil_mode=False):
    """Max pooling of ``N×C×H×W`` maps.

    Parameters
    ----------
    x : ndarray (NumPy or CuPy), float32 or float64, shape (N, C, H, W)
    kernel : int or (int, int)
        Window size ``(kh, kw)``, each >= 1.
    stride : int or (int, int), optional
        Default: the kernel size.
    padding : int or (int, int)
        Implicit ``-inf`` border, at most half the kernel (as in PyTorch).
    ceil_mode : bool
        Output size rule (module docstring); ``False`` is PyTorch's default, ``True`` Caffe's.

    Returns
    -------
    out : ndarray, same dtype, shape (N, C, Ho, Wo)
    cache : tuple, for :func:`max_pool2d_backward` (the winning offset ``a·kw + b`` per output)
    """
    validate.float_array("x", x, ndim=4)
    kh, kw = validate.pair("kernel", kernel, minimum=1)
    sh, sw = validate.pair("stride", kernel if stride is None else stride, minimum=1)
    ph, pw = validate.pair("padding", padding, minimum=0)
    if not isinstance(ceil_mode, bool):
        raise TypeError(f"ceil_mode must be True or False, got {ceil_mode!r}")
    if ph > kh // 2 or pw > kw // 2:
        raise ValueError(f"padding must be at most half the kernel {(kh, kw)}, got {(ph, pw)}")
    n, c, h, w = x.shape
    ho = _output_size(h, kh, sh, ph, ceil_mode)
    wo = _output_size(w, kw, sw, pw, ceil_mode)
    if ho < 1 or wo < 1:
        raise ValueError(f"x of spatial size {(h, w)} is smaller than the kernel {(kh, kw)} "
                         f"with padding {(ph, pw)}")
    xp = backend.array_module(x)
    # Padded with -inf on all sides, and far enough right/down for the last window.
    hp, wp = max(h + 2 * ph, (ho - 1) * sh + kh), max(w + 2 * pw, (wo - 1) * sw + kw)
    xpad = xp.full((n, c, hp, wp), -np.inf, dtype=x.dtype)
    xpad[:, :, ph:ph + h, pw:pw + w] = x
    best = arg = None
    for a in range(kh):
        for b in range(kw):
            v = xpad[:, :, a:a + sh * (ho - 1) + 1:sh, b:b + sw * (wo - 1) + 1:sw]
            if best is None:
                best, arg = v.copy(), xp.zeros(v.shape, dtype=np.int32)
                continue
            wins = v > best  # strict: on ties the earlier offset keeps the gradient
            xp.copyto(best, v, where=wins)
            xp.copyto(arg, a * kw + b, where=wins)
    return best, (arg, x.shape, x.dtype, (kh, kw), (sh, sw), (ph, pw), (hp, wp))


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
    arg, x_shape, dtype, (kh, kw), (sh, sw), (ph, pw), (hp, wp) = cache
    upstream_gradient(dout, arg.shape, dtype)
    xp = backend.array_module(dout, arg)
    n, c, h, w = x_shape
    ho, wo = arg.shape[2:]
    dxpad = xp.zeros((n, c, hp, wp), dtype=dtype)
    for a in range(kh):
        for b in range(kw):
            # Within one offset the strided slice hits each input pixel at most once.
            dxpad[:, :, a:a + sh * (ho - 1) + 1:sh, b:b + sw * (wo - 1) + 1:sw] += \
                xp.where(arg == a * kw + b, dout, 0)
    return dxpad[:, :, ph:ph + h, pw:pw + w].copy()


def _output_size(size, k, s, p, ceil_mode):
    """``floor`` or Caffe's ``ceil`` output size (module docstring)."""
    span = size + 2 * p - k
    if span < 0:
        return 0
    if not ceil_mode:
        return span // s + 1
    out = -(-span // s) + 1
    if (out - 1) * s >= size + p:  # the last window would start in the padding
        out -= 1
    return out

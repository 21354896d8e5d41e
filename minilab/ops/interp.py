"""Bilinear resizing of score maps and nearest-neighbour subsampling of label maps (§3.1).

DeepLab computes its score map at output stride 8 and brings it back to the image size by
bilinear interpolation (§3.1, Fig. 5): the map is smooth, so ×8 bilinear upsampling loses
almost nothing and costs nothing to learn. During training the ground truth is subsampled
by 8 instead (§4), so that the loss is computed on the stride-8 grid.

Bilinear interpolation is separable: along one axis, output sample ``i`` reads the input at
the real-valued source coordinate ``s_i`` and mixes its two neighbours,

    y_i = (1 - l_i) x[floor(s_i)] + l_i x[min(floor(s_i) + 1, n_in - 1)],   l_i = s_i - floor(s_i),

which is the product of ``x`` with a sparse ``n_out × n_in`` matrix ``A`` (two non-zeros per
row). In two dimensions ``Y = A_h X A_w^T`` for every image and channel, and the backward
pass is the transpose, ``dX = A_h^T dY A_w``. The two corner conventions differ only in
``s_i``:

* ``align_corners=True`` (Caffe's Interp layer, TensorFlow DeepLab): the centres of the
  corner pixels of input and output coincide, ``s_i = i (n_in - 1) / (n_out - 1)``
  (``s_i = 0`` when ``n_out = 1``). Upsampling a stride-8 map of ``n`` pixels to
  ``8 (n - 1) + 1`` pixels puts score pixel ``i`` exactly on image pixel ``8 i``.
* ``align_corners=False`` (PyTorch's default, half-pixel centres): the outer edges of the
  images coincide, ``s_i = (i + 1/2) n_in / n_out - 1/2``, clamped below at 0 (as PyTorch
  does); beyond the last centre the last pixel is repeated.

The height pass is always one GEMM with ``A_h`` on the small input. The width pass, which
writes the large output, has two implementations in :data:`METHODS`: ``"matmul"`` (one GEMM
with ``A_w``, any ``xp``; the default on the GPU) and ``"numba"`` (the two taps of each
output pixel, one row per thread: ``@njit`` on the CPU, where it is the default, and a
``@cuda.jit`` twin), since a dense product with a matrix that is almost all zeros does
``n_in / 2`` times the necessary work.

Both conventions coincide with ``scipy.ndimage.zoom(x, zoom, order=1)`` for every size:
``align_corners=True`` with ``grid_mode=False``, and ``align_corners=False`` with
``grid_mode=True, mode="nearest"`` (or ``"reflect"``: half a pixel beyond the edge both
repeat the edge pixel, which is exactly the clamping); ``"mirror"``, ``"wrap"`` and the
constant modes differ at the borders when upsampling.
"""
import collections
import functools

import numpy as np
from numba import njit, prange

from .. import backend, validate
from ._checks import upstream_gradient

cuda = backend.cuda


def interpolation_taps(n_out, n_in, align_corners):
    """The two taps of 1-D linear interpolation: ``(lo, hi, frac)``, each of length ``n_out``.

    ``lo = floor(s_i)`` and ``hi = min(lo + 1, n_in - 1)`` (int64), ``frac = s_i - lo``
    (float64), with ``s_i`` the source coordinate of the chosen convention (module docstring);
    ``y_i = (1 - frac_i) x[lo_i] + frac_i x[hi_i]``. ``n_out`` and ``n_in`` are integers >= 1,
    ``align_corners`` a bool.
    """
    n_out = validate.integer("n_out", n_out, minimum=1)
    n_in = validate.integer("n_in", n_in, minimum=1)
    align_corners = validate.boolean("align_corners", align_corners)
    i = np.arange(n_out, dtype=np.float64)
    if align_corners:
        scale = (n_in - 1) / (n_out - 1) if n_out > 1 else 0.0
        src = i * scale
    else:
        src = np.maximum((i + 0.5) * (n_in / n_out) - 0.5, 0.0)
    lo = np.minimum(np.floor(src).astype(np.int64), n_in - 1)
    return lo, np.minimum(lo + 1, n_in - 1), src - lo


def interpolation_matrix(n_out, n_in, align_corners, dtype=np.float64):
    """The ``n_out × n_in`` matrix of 1-D linear interpolation (NumPy, two non-zeros a row).

    Row ``i`` holds the weights ``1 - frac_i`` and ``frac_i`` at columns ``lo_i`` and ``hi_i``
    of :func:`interpolation_taps`, which checks the arguments; ``dtype`` is float32 or float64.
    """
    dtype = validate.float_dtype("dtype", dtype)
    lo, hi, frac = interpolation_taps(n_out, n_in, align_corners)
    a = np.zeros((n_out, n_in), dtype=dtype)
    rows = np.arange(n_out)
    a[rows, lo] += 1.0 - frac  # each row once per line, so fancy += is safe
    a[rows, hi] += frac        # (lo == hi at the last pixel: the weights add to 1)
    return a


@functools.lru_cache(maxsize=128)
def _kept_matrix(n_out, n_in, align_corners, dtype, gpu):
    """:func:`interpolation_matrix`, made once per size, convention, dtype and device
    (``gpu``: a CUDA device id, or None for NumPy) and shared: read only.

    A network resizes to the same few sizes again and again; each fresh matrix was built in
    NumPy and, on a GPU, copied through a pinned staging buffer, host work at every resize.
    The copy is waited for once, so that work on any other stream may read the matrix.
    """
    a = interpolation_matrix(n_out, n_in, align_corners, dtype)
    if gpu is None:
        a.flags.writeable = False
        return a
    with backend.cupy.cuda.Device(gpu):
        a = backend.cupy.asarray(a)
        backend.cupy.cuda.get_current_stream().synchronize()
        return a


def _matrix_like(t, n_out, n_in, align_corners):
    """The kept interpolation matrix on ``t``'s device, in ``t``'s dtype."""
    return _kept_matrix(n_out, n_in, align_corners, t.dtype, t.device.id if backend.is_gpu_array(t) else None)


def bilinear_resize_forward(x, size, *, align_corners, method=None):
    """Resize ``N×C×H×W`` maps to ``size = (h, w)`` by bilinear interpolation.

    ``out[n, c] = A_h @ x[n, c] @ A_w.T`` with the interpolation matrices of
    :func:`interpolation_matrix`; up- and downsampling alike (no antialiasing, as in Caffe,
    TensorFlow and PyTorch).

    Parameters
    ----------
    x : ndarray (NumPy or CuPy), float32 or float64, shape (N, C, H, W)
    size : int or (int, int)
        Output height and width, each >= 1.
    align_corners : bool
        Required. ``True``: Caffe / TensorFlow DeepLab corner alignment; ``False``:
        PyTorch's half-pixel convention (see the module docstring).
    method : str, optional
        A key of :data:`METHODS`; by default ``"numba"`` for NumPy arrays and ``"matmul"``
        for CuPy arrays (cuBLAS makes the dense product the faster one on a GPU).

    Returns
    -------
    out : ndarray, same dtype, shape (N, C, h, w)
    cache : tuple, for :func:`bilinear_resize_backward`
    """
    validate.float_array("x", x, ndim=4)
    if min(x.shape[2:]) < 1:
        raise ValueError(f"x must have a height and width of at least 1, got shape {tuple(x.shape)}")
    h, w = validate.pair("size", size, minimum=1)
    align_corners = validate.boolean("align_corners", align_corners)
    if method is None:
        method = "matmul" if backend.is_gpu_array(x) else "numba"
    validate.choice("method", method, METHODS)
    n, c, hin, win = x.shape
    a_h = _matrix_like(x, h, hin, align_corners)
    # Height first on the small input, as one GEMM; then the width, over all N*C*h rows.
    t = _left_multiply(a_h, x.reshape(n * c, hin, win)).reshape(n * c * h, win)
    out, width = METHODS[method].forward(t, w, align_corners)
    return out.reshape(n, c, h, w), (method, a_h, width, x.shape, (h, w))


def bilinear_resize_backward(dout, cache):
    """Gradient of :func:`bilinear_resize_forward`: ``dx[n, c] = A_h.T @ dout[n, c] @ A_w``.

    Parameters
    ----------
    dout : ndarray, shape (N, C, h, w), the dtype of the forward input
    cache : the cache returned by the forward pass

    Returns
    -------
    dx : ndarray, shape (N, C, H, W)
    """
    method, a_h, width, in_shape, (h, w) = cache
    n, c, hin, win = in_shape
    upstream_gradient(dout, (n, c, h, w), a_h.dtype)
    backend.array_module(dout, a_h)  # both on one device
    t = METHODS[method].backward(dout.reshape(n * c * h, w), width, win)
    return _left_multiply(a_h.T, t.reshape(n * c, h, win)).reshape(in_shape)


def _left_multiply(a, t):
    """``a @ t[k]`` for every ``k`` of a ``B×R×C`` stack, as one GEMM ``a @ (R × B·C)``.

    One large product instead of ``B`` small ones: BLAS threads pay their start-up once.
    """
    b, r, c = t.shape
    out = a @ t.transpose(1, 0, 2).reshape(r, b * c)
    return out.reshape(a.shape[0], b, c).transpose(1, 0, 2)


# ---- the width pass: rows (M × W_in) -> (M × w) ------------------------------------------
# "matmul": one dense GEMM with A_w (any xp). "numba": the two taps of each output, one row
# per thread (@njit on the CPU, a @cuda.jit twin from the same element functions): it writes
# the output once instead of multiplying by a matrix that is almost all zeros.

def _matmul_forward(t, w, align_corners):
    a_w = _matrix_like(t, w, t.shape[1], align_corners)
    return t @ a_w.T, a_w


def _matmul_backward(dout, a_w, win):
    return dout @ a_w


def _lerp_row(t, r, lo, hi, frac, out):
    """out[r, j] = (1 - frac[j]) t[r, lo[j]] + frac[j] t[r, hi[j]] for every j."""
    for j in range(out.shape[1]):
        out[r, j] = (1 - frac[j]) * t[r, lo[j]] + frac[j] * t[r, hi[j]]


def _lerp_row_backward(dout, r, frac, spans, dt):
    """The transpose of :func:`_lerp_row` for row r, gathered per input column k:
    dt[r, k] = sum of (1 - frac[j]) dout[r, j] over j with lo[j] = k, plus frac[j] dout[r, j]
    over j with hi[j] = k. Those j are the contiguous spans[0, k]:spans[1, k] and
    spans[2, k]:spans[3, k] (lo and hi never decrease)."""
    for k in range(dt.shape[1]):
        acc = 0.0
        for j in range(spans[0, k], spans[1, k]):
            acc += (1 - frac[j]) * dout[r, j]
        for j in range(spans[2, k], spans[3, k]):
            acc += frac[j] * dout[r, j]
        dt[r, k] = acc


_lerp_row_cpu = njit(cache=True, inline="always")(_lerp_row)
_lerp_row_backward_cpu = njit(cache=True, inline="always")(_lerp_row_backward)


@njit(parallel=True, cache=True)
def _lerp_cpu(t, lo, hi, frac, out):
    for r in prange(out.shape[0]):
        _lerp_row_cpu(t, r, lo, hi, frac, out)


@njit(parallel=True, cache=True)
def _lerp_backward_cpu(dout, frac, spans, dt):
    for r in prange(dt.shape[0]):
        _lerp_row_backward_cpu(dout, r, frac, spans, dt)


if cuda is not None:
    _lerp_row_gpu = cuda.jit(device=True)(_lerp_row)
    _lerp_row_backward_gpu = cuda.jit(device=True)(_lerp_row_backward)

    @cuda.jit
    def _lerp_kernel(t, lo, hi, frac, out):
        r = cuda.grid(1)
        if r < out.shape[0]:
            _lerp_row_gpu(t, r, lo, hi, frac, out)

    @cuda.jit
    def _lerp_backward_kernel(dout, frac, spans, dt):
        r = cuda.grid(1)
        if r < dt.shape[0]:
            _lerp_row_backward_gpu(dout, r, frac, spans, dt)


def _lerp_cuda(t, lo, hi, frac, out):
    """Launch the width-pass kernel (device arrays; NumPy arrays under the CUDA simulator)."""
    backend.launch(_lerp_kernel, out.shape[0], t, lo, hi, frac, out)


def _lerp_backward_cuda(dout, frac, spans, dt):
    """Launch the transposed width-pass kernel (device arrays, or NumPy under the simulator)."""
    backend.launch(_lerp_backward_kernel, dt.shape[0], dout, frac, spans, dt)


def _numba_forward(t, w, align_corners):
    xp = backend.array_module(t)
    if xp is not np and cuda is None:
        raise RuntimeError("method='numba' on CuPy arrays needs numba-cuda (the 'gpu' extra); "
                           "install it or use method='matmul'")
    lo, hi, frac = interpolation_taps(w, t.shape[1], align_corners)
    columns = np.arange(t.shape[1])
    spans = np.stack([np.searchsorted(lo, columns, "left"), np.searchsorted(lo, columns, "right"),
                      np.searchsorted(hi, columns, "left"), np.searchsorted(hi, columns, "right")])
    lo, hi, frac, spans = (xp.asarray(a) for a in (lo, hi, frac.astype(t.dtype), spans))
    out = xp.empty((t.shape[0], w), dtype=t.dtype)
    (_lerp_cpu if xp is np else _lerp_cuda)(xp.ascontiguousarray(t), lo, hi, frac, out)
    return out, (frac, spans)


def _numba_backward(dout, width, win):
    frac, spans = width
    xp = backend.array_module(dout)
    dt = xp.empty((dout.shape[0], win), dtype=dout.dtype)
    (_lerp_backward_cpu if xp is np else _lerp_backward_cuda)(xp.ascontiguousarray(dout), frac, spans, dt)
    return dt


Method = collections.namedtuple("Method", "forward backward")
Method.__doc__ = """One implementation of the width pass: ``forward(t, w, align_corners) ->
(out, width)`` on rows ``t`` (M × W_in) and ``backward(dout, width, W_in) -> dt``."""

#: The registered implementations of the width pass, by name (see above).
METHODS = {
    "matmul": Method(_matmul_forward, _matmul_backward),
    "numba": Method(_numba_forward, _numba_backward),
}


def downsample_labels(labels, factor=None, *, size=None):
    """Subsample label maps by nearest neighbour, keeping the label values (255 included).

    Exactly one of ``factor`` and ``size`` is given:

    * ``factor=f`` takes rows and columns ``0, f, 2f, ...``: ``labels[..., ::f, ::f]``, of
      size ``((H - 1) // f + 1, (W - 1) // f + 1)``. This is the pixel that an
      ``align_corners=True`` upsampling by ``f`` puts score pixel ``i`` on (``f i``), the one
      Caffe DeepLab's label shrinking samples on its ``321 → 41`` crops, and the size of a
      stride-``f`` score map (e.g. three 3×3 stride-2 pad-1 poolings: ``ceil(H / 8)``).
    * ``size=(h, w)`` takes row ``round(i (H - 1) / (h - 1))`` (row 0 when ``h = 1``), the
      nearest pixel under the ``align_corners=True`` geometry; likewise for columns. When
      ``H - 1`` is a multiple of ``h - 1`` this equals ``factor = (H - 1) / (h - 1)``.
      Rounding is half-up (``floor(s + 1/2)``).

    Parameters
    ----------
    labels : ndarray (NumPy or CuPy) of integers, shape (..., H, W), ndim >= 2
    factor : int >= 1, optional
    size : int or (int, int), optional, each >= 1

    Returns
    -------
    ndarray of the same dtype, shape (..., h, w); a copy.
    """
    validate.label_array("labels", labels)
    if labels.ndim < 2 or min(labels.shape[-2:]) < 1:
        raise ValueError(f"labels must have at least 2 dimensions (..., H, W) with H, W >= 1, "
                         f"got shape {tuple(labels.shape)}")
    if (factor is None) == (size is None):
        raise ValueError("give exactly one of factor and size")
    if factor is not None:
        f = validate.integer("factor", factor, minimum=1)
        return labels[..., ::f, ::f].copy()
    h, w = validate.pair("size", size, minimum=1)
    xp = backend.array_module(labels)
    rows = xp.asarray(_nearest_aligned(h, labels.shape[-2]))
    cols = xp.asarray(_nearest_aligned(w, labels.shape[-1]))
    return labels[..., rows[:, None], cols[None, :]]


def _nearest_aligned(n_out, n_in):
    """Indices ``floor(i (n_in - 1) / (n_out - 1) + 1/2)`` for i < n_out (0 when n_out = 1)."""
    if n_out == 1:
        return np.zeros(1, dtype=np.int64)
    # Exact integer arithmetic: floor((2 i (n_in - 1) + (n_out - 1)) / (2 (n_out - 1))).
    i = np.arange(n_out, dtype=np.int64)
    return (2 * i * (n_in - 1) + (n_out - 1)) // (2 * (n_out - 1))

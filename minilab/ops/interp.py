"""Bilinear resizing of score maps and nearest-neighbour subsampling of label maps (§3.1).

DeepLab computes its score map at output stride 8 and brings it back to the image size by
bilinear interpolation (§3.1, Fig. 5): the map is smooth, so ×8 bilinear upsampling loses
almost nothing and costs nothing to learn. During training the ground truth is subsampled
by 8 instead (§4.1), so that the loss is computed on the stride-8 grid.

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
"""
import numpy as np

from .. import backend, validate
from ._checks import label_array, upstream_gradient


def interpolation_matrix(n_out, n_in, align_corners, dtype=np.float64):
    """The ``n_out × n_in`` matrix of 1-D linear interpolation (NumPy, two non-zeros a row).

    Row ``i`` holds the weights ``1 - l_i`` and ``l_i`` at columns ``floor(s_i)`` and
    ``min(floor(s_i) + 1, n_in - 1)``, with ``s_i`` the source coordinate of the chosen
    convention (module docstring).
    """
    i = np.arange(n_out, dtype=np.float64)
    if align_corners:
        scale = (n_in - 1) / (n_out - 1) if n_out > 1 else 0.0
        src = i * scale
    else:
        src = np.maximum((i + 0.5) * (n_in / n_out) - 0.5, 0.0)
    lo = np.minimum(np.floor(src).astype(np.int64), n_in - 1)
    hi = np.minimum(lo + 1, n_in - 1)
    frac = src - lo
    a = np.zeros((n_out, n_in), dtype=dtype)
    rows = np.arange(n_out)
    a[rows, lo] += 1.0 - frac  # each row once per line, so fancy += is safe
    a[rows, hi] += frac        # (lo == hi at the last pixel: the weights add to 1)
    return a


def bilinear_resize_forward(x, size, *, align_corners):
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

    Returns
    -------
    out : ndarray, same dtype, shape (N, C, h, w)
    cache : tuple, for :func:`bilinear_resize_backward`
    """
    validate.float_array("x", x, ndim=4)
    h, w = validate.pair("size", size, minimum=1)
    if not isinstance(align_corners, bool):
        raise TypeError(f"align_corners must be True or False, got {align_corners!r}")
    xp = backend.array_module(x)
    n, c, hin, win = x.shape
    a_h = xp.asarray(interpolation_matrix(h, hin, align_corners, x.dtype))
    a_w = xp.asarray(interpolation_matrix(w, win, align_corners, x.dtype))
    # Height first (N*C small products), then width as one large GEMM over all N*C*h rows.
    t = xp.matmul(a_h, x.reshape(n * c, hin, win))
    out = (t.reshape(n * c * h, win) @ a_w.T).reshape(n, c, h, w)
    return out, (a_h, a_w, x.shape)


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
    a_h, a_w, in_shape = cache
    n, c, hin, win = in_shape
    h, w = a_h.shape[0], a_w.shape[0]
    upstream_gradient(dout, (n, c, h, w), a_h.dtype)
    xp = backend.array_module(dout, a_h)
    t = (dout.reshape(n * c * h, w) @ a_w).reshape(n * c, h, win)
    return xp.matmul(a_h.T, t).reshape(in_shape)


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
    label_array("labels", labels)
    if labels.ndim < 2:
        raise ValueError(f"labels must have at least 2 dimensions (..., H, W), got shape {tuple(labels.shape)}")
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

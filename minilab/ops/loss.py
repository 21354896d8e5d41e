"""Per-pixel softmax cross-entropy with ignored pixels, DeepLab's training loss (§4).

DeepLab trains on the stride-8 score map against the ground truth subsampled by 8 (see
:func:`minilab.ops.interp.downsample_labels`); pixels labelled ``ignore_index`` (255,
"unlabelled" in PASCAL VOC) contribute nothing. With ``V`` the set of labelled pixels,

    L = -(1 / |V|) sum_{(n, i, j) in V} log softmax(z[n, :, i, j])_{y[n, i, j]},

computed through the log-sum-exp form of :func:`minilab.ops.activations.log_softmax_forward`,
so it is exact for huge logits. Its gradient is

    dL/dz[n, c, i, j] = (softmax(z)_c - [c = y]) / |V|   for labelled pixels, 0 otherwise.

When every pixel is ignored (``|V| = 0``) the loss is defined as 0 and the gradient is 0,
so a crop that happens to contain only unlabelled pixels does not stop training.
"""
import numbers

import numpy as np

from .. import backend, validate
from ._checks import upstream_gradient
from .activations import log_softmax_forward


def softmax_cross_entropy_forward(logits, labels, ignore_index=255):
    """Mean softmax cross-entropy over the labelled pixels.

    Parameters
    ----------
    logits : ndarray (NumPy or CuPy), float32 or float64, shape (N, C, h, w)
        Score map (unnormalised log-probabilities).
    labels : ndarray of integers, shape (N, h, w)
        Class ids in ``0..C-1``, or ``ignore_index``; anything else raises ``ValueError``.
    ignore_index : int
        Label value of unlabelled pixels.

    Returns
    -------
    loss : 0-d ndarray of the dtype of ``logits`` (``float(loss)`` for a number)
    cache : tuple, for :func:`softmax_cross_entropy_backward`
    """
    validate.float_array("logits", logits, ndim=4)
    validate.label_array("labels", labels)
    n, c, h, w = logits.shape
    if c == 0:
        raise ValueError(f"logits must have at least one class (axis 1), got shape {tuple(logits.shape)}")
    if tuple(labels.shape) != (n, h, w):
        raise ValueError(f"labels must have shape (N, h, w) = {(n, h, w)} to match logits "
                         f"{tuple(logits.shape)}, got {tuple(labels.shape)}")
    ignore_index = validate.integer("ignore_index", ignore_index)
    xp = backend.array_module(logits, labels)
    valid = labels != ignore_index
    if bool((valid & ((labels < 0) | (labels >= c))).any()):
        bad = labels[valid & ((labels < 0) | (labels >= c))]
        raise ValueError(f"labels must be in 0..{c - 1} or {ignore_index} (ignored), "
                         f"got values such as {sorted(set(backend.to_numpy(bad[:10]).tolist()))}")
    logp, _ = log_softmax_forward(logits)
    target = xp.where(valid, labels, 0).astype(np.int64)
    picked = xp.take_along_axis(logp, target[:, None], axis=1)[:, 0]
    count = int(valid.sum())
    total = -xp.where(valid, picked, 0).sum()
    loss = xp.asarray(total / count if count else 0, dtype=logits.dtype)
    return loss, (logp, target, valid, count)


def softmax_cross_entropy_backward(dout, cache):
    """Gradient of :func:`softmax_cross_entropy_forward` with respect to the logits.

    Parameters
    ----------
    dout : float or 0-d ndarray
        Upstream gradient of the scalar loss (1 when the loss is the objective).
    cache : the cache returned by the forward pass

    Returns
    -------
    dlogits : ndarray, shape (N, C, h, w), the dtype of the logits
    """
    logp, target, valid, count = cache
    xp = backend.array_module(logp)
    if isinstance(dout, bool) or not isinstance(dout, numbers.Real):  # asarray would read None as NaN
        validate.float_array("dout", dout)
    dout = upstream_gradient(xp.asarray(dout, dtype=logp.dtype), (), logp.dtype)  # a scalar
    if count == 0:
        return xp.zeros_like(logp)
    grad = xp.exp(logp)
    onehot = xp.arange(logp.shape[1])[None, :, None, None] == target[:, None]
    grad -= onehot
    grad *= (valid[:, None] * (dout / count)).astype(logp.dtype)
    return grad

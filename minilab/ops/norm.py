"""Batch normalisation over N, H, W, per channel (forward and backward).

For channel ``c``, with ``M = N·H·W`` values ``x`` of that channel,

    y = gamma_c · x̂ + beta_c,        x̂ = (x - mu_c) / sqrt(var_c + eps).

Three modes choose ``mu`` and ``var``:

* ``"train"``: the batch's own statistics, ``mu = mean(x)`` and the *biased* variance
  ``var = mean((x - mu)²)``; the running statistics are updated **in place**, as PyTorch
  does, with the *unbiased* variance:
  ``running_mean ← (1 - momentum) running_mean + momentum · mu``,
  ``running_var ← (1 - momentum) running_var + momentum · var · M / (M - 1)``.
  Because ``mu`` and ``var`` depend on every ``x``, the gradient has the two extra terms

      dx = gamma / sqrt(var + eps) · (dy - mean(dy) - x̂ · mean(dy · x̂)).

* ``"eval"``: the running statistics, a fixed affine map per channel,
  ``dx = gamma / sqrt(running_var + eps) · dy``; nothing is updated.
* ``"frozen"``: the same computation as ``"eval"``, named for the way DeepLab's ResNet is
  fine-tuned: its batch normalisation keeps the statistics of ImageNet pre-training
  (Caffe's ``use_global_stats``) while the rest of the network learns. A layer uses it in
  training so that ``train()`` does not bring batch statistics back; ``gamma`` and ``beta``
  still receive gradients, and the optimiser decides whether to update them.

In every mode ``dgamma = sum(dy · x̂)`` and ``dbeta = sum(dy)`` over N, H, W.
"""
from .. import backend, validate
from ._checks import unit_interval, upstream_gradient

MODES = ("train", "eval", "frozen")


def batch_norm_forward(x, gamma, beta, running_mean, running_var, *, mode,
                       momentum=0.1, eps=1e-5):
    """Batch normalisation of ``N×C×H×W`` maps per channel (module docstring).

    Parameters
    ----------
    x : ndarray (NumPy or CuPy), float32 or float64, shape (N, C, H, W)
    gamma, beta : ndarray, shape (C,), the dtype of ``x``
        Scale and shift.
    running_mean, running_var : ndarray, shape (C,), the dtype of ``x``
        Updated in place when ``mode="train"``; read otherwise.
    mode : {"train", "eval", "frozen"}
        Required: which statistics normalise ``x``.
    momentum : float in [0, 1]
        Weight of the batch statistics in the running-statistics update.
    eps : float > 0
        Added to the variance.

    Returns
    -------
    out : ndarray, like ``x``
    cache : tuple, for :func:`batch_norm_backward`
    """
    validate.float_array("x", x, ndim=4)
    c = x.shape[1]
    for name, v in (("gamma", gamma), ("beta", beta), ("running_mean", running_mean),
                    ("running_var", running_var)):
        validate.float_array(name, v, ndim=1)
        if v.shape != (c,):
            raise ValueError(f"{name} must have shape ({c},) for x with {c} channels, got {tuple(v.shape)}")
        if v.dtype != x.dtype:
            raise TypeError(f"{name} must have the dtype of x ({x.dtype}), got {v.dtype}")
    validate.choice("mode", mode, MODES)
    momentum = unit_interval("momentum", momentum)
    eps = validate.positive("eps", eps)
    xp = backend.array_module(x, gamma, beta, running_mean, running_var)
    if mode == "train":
        m = x.shape[0] * x.shape[2] * x.shape[3]
        if m < 2:
            raise ValueError(f"mode='train' needs more than one value per channel, got x of shape {tuple(x.shape)}")
        mu = x.mean(axis=(0, 2, 3))
        var = x.var(axis=(0, 2, 3))
        running_mean *= 1 - momentum
        running_mean += momentum * mu
        running_var *= 1 - momentum
        running_var += (momentum * m / (m - 1)) * var
    else:
        if bool((running_var < 0).any()):
            raise ValueError("running_var must be >= 0")
        mu, var = running_mean, running_var
    inv_std = 1 / xp.sqrt(var + eps)
    xhat = (x - mu[:, None, None]) * inv_std[:, None, None]
    out = gamma[:, None, None] * xhat + beta[:, None, None]
    return out, (xhat, gamma, inv_std, mode)


def batch_norm_backward(dout, cache):
    """Gradients of :func:`batch_norm_forward` (module docstring).

    Parameters
    ----------
    dout : ndarray, shape (N, C, H, W), the dtype of the forward input
    cache : the cache returned by the forward pass

    Returns
    -------
    dx : ndarray, shape (N, C, H, W)
    dgamma, dbeta : ndarray, shape (C,)
    """
    xhat, gamma, inv_std, mode = cache
    upstream_gradient(dout, xhat.shape, xhat.dtype)
    dbeta = dout.sum(axis=(0, 2, 3))
    dgamma = (dout * xhat).sum(axis=(0, 2, 3))
    scale = (gamma * inv_std)[:, None, None]
    if mode == "train":
        m = xhat.shape[0] * xhat.shape[2] * xhat.shape[3]
        dx = scale * (dout - (dbeta / m)[:, None, None] - xhat * (dgamma / m)[:, None, None])
    else:
        dx = scale * dout
    return dx, dgamma, dbeta


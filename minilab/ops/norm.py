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

NumPy arrays go through the array expressions below. On CuPy arrays the same expressions
would launch about 26 kernels per layer (forward and backward), each a few per-channel
numbers or one pass over the maps, and a small network on a GPU is bound by its launches:
there (with numba-cuda installed) the forward is two Numba CUDA kernels (statistics of every channel, then the
normalisation) and the backward two more (the sums, then dx), tested against the array
expressions.
"""
import math

import numpy as np
from numba import float64

from .. import backend, validate
from ._checks import unit_interval, upstream_gradient

MODES = ("train", "eval", "frozen")
cuda = backend.cuda
_BLOCK = 512  # threads per block of the per-channel reductions, a power of 2


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
    m = x.shape[0] * x.shape[2] * x.shape[3]
    if mode == "train" and m < 2:
        raise ValueError(f"mode='train' needs more than one value per channel, got x of shape {tuple(x.shape)}")
    if mode != "train" and bool((running_var < 0).any()):
        raise ValueError("running_var must be >= 0")
    if xp is not np and cuda is not None:  # without numba-cuda, CuPy runs the expressions below
        return _forward_kernels(x, gamma, beta, running_mean, running_var, mode, momentum, eps)
    if mode == "train":
        mu = x.mean(axis=(0, 2, 3))
        var = x.var(axis=(0, 2, 3))
        running_mean *= 1 - momentum
        running_mean += momentum * mu
        running_var *= 1 - momentum
        running_var += (momentum * m / (m - 1)) * var
    else:
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
    if backend.is_gpu_array(dout) and cuda is not None:
        return _backward_kernels(dout, xhat, gamma, inv_std, mode)
    dbeta = dout.sum(axis=(0, 2, 3))
    dgamma = (dout * xhat).sum(axis=(0, 2, 3))
    scale = (gamma * inv_std)[:, None, None]
    if mode == "train":
        m = xhat.shape[0] * xhat.shape[2] * xhat.shape[3]
        dx = scale * (dout - (dbeta / m)[:, None, None] - xhat * (dgamma / m)[:, None, None])
    else:
        dx = scale * dout
    return dx, dgamma, dbeta



# ---- the GPU's kernels: the same equations, four launches per layer ----------------------
# Maps are seen as (N, C, H·W). A reduction runs one block of _BLOCK threads per channel, in
# float64; the elementwise kernels run one thread per value.

def _forward_kernels(x, gamma, beta, running_mean, running_var, mode, momentum, eps):
    """:func:`batch_norm_forward` in two kernels (arguments checked by it)."""
    xp = backend.array_module(x)
    n, c, h, w = x.shape
    planes = xp.ascontiguousarray(x).reshape(n, c, h * w)
    if mode == "train":
        mu, inv_std = xp.empty(c, x.dtype), xp.empty(c, x.dtype)
        backend.launch(_statistics_kernel, (c, _BLOCK), planes, eps, momentum, running_mean, running_var, mu, inv_std)
    else:
        mu, inv_std = running_mean, 1 / xp.sqrt(running_var + eps)
    xhat, out = xp.empty_like(planes), xp.empty_like(planes)
    backend.launch(_normalize_kernel, planes.size, planes, mu, inv_std, gamma, beta, xhat, out)
    return out.reshape(x.shape), (xhat.reshape(x.shape), gamma, inv_std, mode)


def _backward_kernels(dout, xhat, gamma, inv_std, mode):
    """:func:`batch_norm_backward` in two kernels."""
    xp = backend.array_module(dout)
    n, c, h, w = xhat.shape
    planes, xhat = xp.ascontiguousarray(dout).reshape(n, c, h * w), xhat.reshape(n, c, h * w)
    dbeta, dgamma = xp.empty(c, dout.dtype), xp.empty(c, dout.dtype)
    backend.launch(_sums_kernel, (c, _BLOCK), planes, xhat, dbeta, dgamma)
    dx = xp.empty_like(planes)
    m = n * h * w if mode == "train" else 0
    backend.launch(_input_grad_kernel, planes.size, planes, xhat, gamma, inv_std, dbeta, dgamma, m, dx)
    return dx.reshape(n, c, h, w), dgamma, dbeta


if cuda is not None:
    @cuda.jit(device=True)
    def _block_sum(buf, value):
        """The sum of ``value`` over the block's threads, returned to every thread."""
        t = cuda.threadIdx.x
        buf[t] = value
        cuda.syncthreads()
        step = _BLOCK // 2
        while step > 0:
            if t < step:
                buf[t] += buf[t + step]
            cuda.syncthreads()
            step //= 2
        total = buf[0]
        cuda.syncthreads()  # every thread has read the total before buf is written again
        return total

    @cuda.jit
    def _statistics_kernel(x, eps, momentum, running_mean, running_var, mu, inv_std):
        # block c: mu = mean(x_c), var = mean((x_c − mu)²) (two passes), inv_std = 1/sqrt(var + eps),
        # running_mean ← (1 − momentum)·running_mean + momentum·mu, and running_var likewise
        # with the unbiased var·M/(M − 1)
        c, t = cuda.blockIdx.x, cuda.threadIdx.x
        buf = cuda.shared.array(_BLOCK, float64)
        hw = x.shape[2]
        m = x.shape[0] * hw
        total = 0.0
        for k in range(t, m, _BLOCK):
            total += x[k // hw, c, k % hw]
        mean = _block_sum(buf, total) / m
        total = 0.0
        for k in range(t, m, _BLOCK):
            deviation = x[k // hw, c, k % hw] - mean
            total += deviation * deviation
        var = _block_sum(buf, total) / m
        if t == 0:
            mu[c] = mean
            inv_std[c] = 1 / math.sqrt(var + eps)
            running_mean[c] = (1 - momentum) * running_mean[c] + momentum * mean
            running_var[c] = (1 - momentum) * running_var[c] + momentum * var * m / (m - 1)

    @cuda.jit
    def _normalize_kernel(x, mu, inv_std, gamma, beta, xhat, out):
        # xhat = (x − mu_c)·inv_std_c, out = gamma_c·xhat + beta_c
        e = cuda.grid(1)
        if e < x.size:
            c, hw = x.shape[1], x.shape[2]
            n, ch, k = e // (c * hw), e // hw % c, e % hw
            value = (x[n, ch, k] - mu[ch]) * inv_std[ch]
            xhat[n, ch, k] = value
            out[n, ch, k] = gamma[ch] * value + beta[ch]

    @cuda.jit
    def _sums_kernel(dout, xhat, dbeta, dgamma):
        # block c: dbeta_c = Σ dout_c, dgamma_c = Σ dout_c·xhat_c
        c, t = cuda.blockIdx.x, cuda.threadIdx.x
        buf = cuda.shared.array(_BLOCK, float64)
        hw = dout.shape[2]
        total, weighted = 0.0, 0.0
        for k in range(t, dout.shape[0] * hw, _BLOCK):
            g = dout[k // hw, c, k % hw]
            total += g
            weighted += g * xhat[k // hw, c, k % hw]
        total = _block_sum(buf, total)
        weighted = _block_sum(buf, weighted)
        if t == 0:
            dbeta[c] = total
            dgamma[c] = weighted

    @cuda.jit
    def _input_grad_kernel(dout, xhat, gamma, inv_std, dbeta, dgamma, m, dx):
        # dx = gamma_c·inv_std_c·(dout − dbeta_c/M − xhat·dgamma_c/M) with M = m values per
        # channel ("train"), dx = gamma_c·inv_std_c·dout when m = 0 (running statistics)
        e = cuda.grid(1)
        if e < dout.size:
            c, hw = dout.shape[1], dout.shape[2]
            n, ch, k = e // (c * hw), e // hw % c, e % hw
            g = 1.0 * dout[n, ch, k]
            if m > 0:
                g -= (dbeta[ch] + xhat[n, ch, k] * dgamma[ch]) / m
            dx[n, ch, k] = gamma[ch] * inv_std[ch] * g

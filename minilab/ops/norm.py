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

The per-channel sums (mean, variance, dgamma, dbeta) are redone in float64 where they
overflow the maps' float32 (the squared deviations do once ``|x - mu|`` passes 1.8e19), as
the GPU kernels always sum in float64; the outputs, gradients and running statistics are
stored in the maps' dtype.

NumPy arrays go through the array expressions below. On CuPy arrays the same expressions
would launch about 26 kernels per layer (forward and backward), each a few per-channel
numbers or one pass over the maps, and a small network on a GPU is bound by its launches:
there (with numba-cuda installed) the forward is one Numba CUDA kernel and the backward
another, a block per channel that reduces the channel and then applies the result to it
(statistics, then the normalisation; the sums, then dx), tested against the array
expressions.
"""
import math

import numpy as np
from numba import float64

from .. import backend, validate
from ._checks import epsilon, unit_interval, upstream_gradient

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
        Updated in place when ``mode="train"`` (so they must be writeable then); read
        otherwise.
    mode : {"train", "eval", "frozen"}
        Required: which statistics normalise ``x``.
    momentum : float in [0, 1]
        Weight of the batch statistics in the running-statistics update.
    eps : float >= the smallest normal number of x's dtype (1.2e-38 for float32)
        Added to the variance; smaller, ``1 / sqrt(var + eps)`` could overflow where var = 0.

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
    eps = epsilon(eps, x.dtype)
    xp = backend.array_module(x, gamma, beta, running_mean, running_var)
    m = x.shape[0] * x.shape[2] * x.shape[3]
    if mode == "train" and m < 2:
        raise ValueError(f"mode='train' needs more than one value per channel, got x of shape {tuple(x.shape)}")
    for name, v in (("running_mean", running_mean), ("running_var", running_var)):
        if mode == "train" and isinstance(v, np.ndarray) and not v.flags.writeable:  # CuPy has no such flag
            raise ValueError(f"{name} must be writeable: mode='train' updates it in place, got a read-only array")
    if mode != "train" and validate.scans_on() and bool((running_var < 0).any()):
        raise ValueError("running_var must be >= 0")
    if xp is not np and cuda is not None:  # without numba-cuda, CuPy runs the expressions below
        return _gpu_forward(x, gamma, beta, running_mean, running_var, mode, momentum, eps)
    if mode == "train":
        # The deviations from mu serve both var and xhat; their squares overflow float32 once
        # |x - mu| passes 1.8e19, and _channel_sum then redoes the sum in float64.
        mu = _channel_sum(x) / m
        centred = x - mu.astype(x.dtype)[:, None, None]
        var = _channel_sum(centred, centred) / m
        running_mean *= 1 - momentum
        running_mean += momentum * mu
        running_var *= 1 - momentum
        running_var += (momentum * m / (m - 1)) * var
    else:
        centred = x - running_mean[:, None, None]
        var = running_var.astype(np.float64)
    inv_std = (1 / xp.sqrt(var.astype(np.float64) + eps)).astype(x.dtype)
    xhat = xp.multiply(centred, inv_std[:, None, None], out=centred)
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
        return _gpu_backward(dout, xhat, gamma, inv_std, mode)
    dbeta = _channel_sum(dout)
    dgamma = _channel_sum(dout, xhat)
    scale = (gamma * inv_std)[:, None, None]
    if mode == "train":
        m = xhat.shape[0] * xhat.shape[2] * xhat.shape[3]
        mean_dy, mean_dy_xhat = (dbeta / m).astype(dout.dtype), (dgamma / m).astype(dout.dtype)
        dx = scale * (dout - mean_dy[:, None, None] - xhat * mean_dy_xhat[:, None, None])
    else:
        dx = scale * dout
    return dx, dgamma.astype(dout.dtype), dbeta.astype(dout.dtype)


def _channel_sum(a, b=None):
    """Σ over N, H, W per channel of ``a`` (or of ``a·b``), in ``a``'s dtype, and again in
    float64, the products too, where that overflowed (the GPU kernels always sum in
    float64): the total, or the mean that is wanted, may still be finite. Summing float32
    in float64 every time doubled the time. On CuPy arrays (without numba-cuda) the sum is
    float64 at once: checking for an overflow would make the host wait for the GPU."""
    xp = backend.array_module(a)
    if xp is np:
        with np.errstate(over="ignore", invalid="ignore"):  # an overflow is handled here
            total = (a if b is None else a * b).sum(axis=(0, 2, 3))
        if np.isfinite(total).all():
            return total
    if b is None:
        return a.sum(axis=(0, 2, 3), dtype=np.float64)
    return xp.einsum("nchw,nchw->c", a, b, dtype=np.float64)



# ---- the GPU's kernels: the same equations, one launch per layer and direction ------------
# Maps are seen as (N, C, H·W). Block c of _BLOCK threads handles channel c: it reduces the
# channel's statistics or sums in float64, then applies them to the channel's values, so the
# per-channel numbers never leave the block and never need a second launch.

def _gpu_forward(x, gamma, beta, running_mean, running_var, mode, momentum, eps):
    """:func:`batch_norm_forward` in one kernel (arguments checked by it)."""
    xp = backend.array_module(x)
    n, c, h, w = x.shape
    planes = xp.ascontiguousarray(x).reshape(n, c, h * w)
    inv_std, xhat, out = xp.empty(c, x.dtype), xp.empty_like(planes), xp.empty_like(planes)
    backend.launch(_forward_kernel, (c, _BLOCK), planes, mode == "train", eps, momentum,
                   running_mean, running_var, gamma, beta, inv_std, xhat, out)
    return out.reshape(x.shape), (xhat.reshape(x.shape), gamma, inv_std, mode)


def _gpu_backward(dout, xhat, gamma, inv_std, mode):
    """:func:`batch_norm_backward` in one kernel."""
    xp = backend.array_module(dout)
    n, c, h, w = xhat.shape
    planes, xhat = xp.ascontiguousarray(dout).reshape(n, c, h * w), xhat.reshape(n, c, h * w)
    dbeta, dgamma, dx = xp.empty(c, dout.dtype), xp.empty(c, dout.dtype), xp.empty_like(planes)
    backend.launch(_backward_kernel, (c, _BLOCK), planes, xhat, gamma, inv_std, mode == "train", dbeta, dgamma, dx)
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
    def _forward_kernel(x, train, eps, momentum, running_mean, running_var, gamma, beta, inv_std, xhat, out):
        # block c, train: mu = mean(x_c), var = mean((x_c − mu)²) (two passes), and
        #   running_mean ← (1 − momentum)·running_mean + momentum·mu, running_var likewise
        #   with the unbiased var·M/(M − 1); otherwise mu, var = running_mean_c, running_var_c.
        # Then inv_std_c = 1/sqrt(var + eps), xhat = (x_c − mu)·inv_std_c, out = gamma_c·xhat + beta_c
        c, t = cuda.blockIdx.x, cuda.threadIdx.x
        buf = cuda.shared.array(_BLOCK, float64)
        hw = x.shape[2]
        m = x.shape[0] * hw
        if train:  # the same for the whole block, so its threads all reach _block_sum's barriers
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
                running_mean[c] = (1 - momentum) * running_mean[c] + momentum * mean
                running_var[c] = (1 - momentum) * running_var[c] + momentum * var * m / (m - 1)
        else:
            mean, var = 1.0 * running_mean[c], 1.0 * running_var[c]
        scale = 1 / math.sqrt(var + eps)
        if t == 0:
            inv_std[c] = scale
        for k in range(t, m, _BLOCK):
            value = (x[k // hw, c, k % hw] - mean) * scale
            xhat[k // hw, c, k % hw] = value
            out[k // hw, c, k % hw] = gamma[c] * value + beta[c]

    @cuda.jit
    def _backward_kernel(dout, xhat, gamma, inv_std, train, dbeta, dgamma, dx):
        # block c: dbeta_c = Σ dout_c, dgamma_c = Σ dout_c·xhat_c, then
        # dx = gamma_c·inv_std_c·(dout − dbeta_c/M − xhat·dgamma_c/M) over the M values of
        # channel c (train), dx = gamma_c·inv_std_c·dout with the running statistics
        c, t = cuda.blockIdx.x, cuda.threadIdx.x
        buf = cuda.shared.array(_BLOCK, float64)
        hw = dout.shape[2]
        m = dout.shape[0] * hw
        total, weighted = 0.0, 0.0
        for k in range(t, m, _BLOCK):
            g = dout[k // hw, c, k % hw]
            total += g
            weighted += g * xhat[k // hw, c, k % hw]
        total = _block_sum(buf, total)
        weighted = _block_sum(buf, weighted)
        if t == 0:
            dbeta[c] = total
            dgamma[c] = weighted
        scale = gamma[c] * inv_std[c]
        for k in range(t, m, _BLOCK):
            g = 1.0 * dout[k // hw, c, k % hw]
            if train:
                g -= (total + xhat[k // hw, c, k % hw] * weighted) / m
            dx[k // hw, c, k % hw] = scale * g

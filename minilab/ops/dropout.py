"""Dropout (forward and backward), element-wise or channel-wise.

DeepLab's fc6 and fc7 layers (and each ASPP branch, §3.2) are followed by dropout with
``p = 0.5`` in training. With inverted scaling the expected output equals the input, so
evaluation is the identity:

    out = x · keep / (1 - p),     keep ~ Bernoulli(1 - p),     dx = dout · keep / (1 - p).

``channelwise=True`` draws one ``keep`` per (image, channel) and drops whole feature maps
(PyTorch's ``Dropout2d``), since neighbouring pixels of a map are strongly correlated;
``channelwise=False`` draws one per element (PyTorch's ``Dropout``, Caffe's ``Dropout``
layer that DeepLab's prototxts use).

Randomness comes only from the ``rng`` passed in (``numpy.random.Generator`` for NumPy
arrays, ``cupy.random.Generator`` for CuPy arrays), so a seeded run is reproducible.
"""
import numpy as np

from .. import backend, validate
from ._checks import unit_interval, upstream_gradient


def dropout_forward(x, p, rng, *, training=True, channelwise=False):
    """Inverted dropout: zero each element (or channel) with probability ``p``, scale the rest.

    Parameters
    ----------
    x : ndarray (NumPy or CuPy), float32 or float64; shape (N, C, ...) when ``channelwise``
    p : float in [0, 1]
        Drop probability; ``p = 1`` gives zeros.
    rng : numpy.random.Generator (NumPy ``x``) or cupy.random.Generator (CuPy ``x``)
    training : bool
        ``False``: the identity (no random numbers are drawn).
    channelwise : bool
        ``True``: one draw per ``(n, c)``, dropping whole maps (Dropout2d).

    Returns
    -------
    out : ndarray, like ``x``; ``x`` itself (not a copy) when not training or ``p = 0``
    cache : the scaled mask ``keep / (1 - p)`` (broadcastable to ``x``), or ``None`` in eval
    """
    validate.float_array("x", x)
    p = unit_interval("p", p)
    training = validate.boolean("training", training)
    channelwise = validate.boolean("channelwise", channelwise)
    if channelwise and x.ndim < 2:
        raise ValueError(f"channelwise dropout needs x of shape (N, C, ...), got shape {tuple(x.shape)}")
    gpu = backend.is_gpu_array(x)
    expected = backend.cupy.random.Generator if gpu else np.random.Generator
    if not isinstance(rng, expected):
        kind = "cupy.random.Generator for CuPy" if gpu else "numpy.random.Generator for NumPy"
        raise TypeError(f"rng must be a {kind} arrays (e.g. default_rng(seed)), got {type(rng).__name__}")
    if not training or p == 0:
        return x, (None, x.shape, x.dtype)
    shape = x.shape[:2] + (1,) * (x.ndim - 2) if channelwise else x.shape
    keep = rng.random(shape, dtype=x.dtype) >= p
    mask = keep * x.dtype.type(1 / (1 - p)) if p < 1 else keep * x.dtype.type(0)
    return x * mask, (mask, x.shape, x.dtype)


def dropout_backward(dout, cache):
    """Gradient of :func:`dropout_forward`: ``dx = dout · mask`` (``dout`` itself in eval)."""
    mask, shape, dtype = cache
    upstream_gradient(dout, shape, dtype)
    return dout if mask is None else dout * mask

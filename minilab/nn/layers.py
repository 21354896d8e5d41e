"""Layers: the ops of :mod:`minilab.ops` wrapped with their parameters and caches.

Each layer's ``forward`` calls an op's ``*_forward`` and keeps the cache; ``backward``
calls the matching ``*_backward``, adds the parameter gradients into ``.grad`` and
returns the gradient with respect to the input. A layer remembers only its *last*
forward; to run the same weights on several inputs before one backward, use
:meth:`~minilab.nn.module.Module.shared_copy` (as :class:`~minilab.nn.deeplab.MultiScale` does).

Initialisation (seeded by an explicit ``rng``): convolution weights are drawn from
N(0, std²) with He et al.'s (2015, "MSRA") std = sqrt(2 / fan_in), fan_in = C_in·k·k, unless
``std`` is given — DeepLab's Caffe models draw the classifier fc8 with std 0.01; biases
start at 0; batch-norm scale at 1, shift at 0, running mean 0 and variance 1.
"""
import math

import numpy as np

from .. import backend, validate
from ..ops import activations, atrous, dropout, interp, norm, pool
from ..ops._checks import INT32_MAX, epsilon, unit_interval
from .module import Module, Parameter


def make_rng(rng):
    """``rng`` as a ``numpy.random.Generator``: a Generator as it is, an int as a seed,
    ``None`` as seed 0 (so an unseeded model is still reproducible)."""
    if isinstance(rng, np.random.Generator):
        return rng
    if rng is None:
        return np.random.default_rng(0)
    return np.random.default_rng(validate.integer("rng", rng, 0))


class Conv2d(Module):
    """Atrous (dilated) 2-D convolution, eq. (1) of §3.1 in two dimensions.

    ``y[n, o, i, j] = b[o] + sum_{c, u, v} x[n, c, s*i + r*u - p, s*j + r*v - p] * w[o, c, u, v]``
    with rate ``r`` (1 is an ordinary convolution), stride ``s`` and zero padding ``p``;
    the effective kernel is ``r*(k-1) + 1``. Computed by :func:`minilab.ops.atrous.
    atrous_conv2d_forward` with any of ``atrous.METHODS``, by default the one
    :func:`minilab.ops.atrous.auto_method` picks for the layer's shape.

    Shapes: x (N, C_in, H, W) → (N, C_out, H', W'), weight (C_out, C_in, k, k), bias (C_out,).

    Parameters
    ----------
    in_channels, out_channels, kernel_size : int
    stride, rate : int
    padding : int or (int, int)
        Zero padding; ``rate * (kernel_size - 1) // 2`` keeps the size at stride 1.
    bias : bool
    method : str
        A key of ``minilab.ops.atrous.METHODS``, or ``"auto"``.
    std : float, optional
        Weight standard deviation; default He/MSRA ``sqrt(2 / (in_channels * k * k))``.
    rng : numpy.random.Generator or int, optional
    dtype : float32 or float64
    """

    def __init__(self, in_channels, out_channels, kernel_size, *, stride=1, padding=0, rate=1,
                 bias=True, method="auto", std=None, rng=None, dtype=np.float32):
        super().__init__()
        cin = validate.integer("in_channels", in_channels, 1)
        cout = validate.integer("out_channels", out_channels, 1)
        k = validate.integer("kernel_size", kernel_size, 1)
        self.stride = validate.integer("stride", stride, 1, INT32_MAX)
        self.rate = validate.integer("rate", rate, 1, INT32_MAX)
        self.padding = validate.pair("padding", padding, 0, INT32_MAX)
        self.method = validate.choice("method", method, ["auto", *atrous.METHODS])
        why = atrous.unsupported(self.method, (k, k), self.rate, self.stride)
        if why:
            raise ValueError(why)
        dtype = validate.float_dtype("dtype", dtype)
        std = np.sqrt(2.0 / (cin * k * k)) if std is None else validate.positive("std", std)
        self.weight = Parameter((make_rng(rng).standard_normal((cout, cin, k, k)) * std).astype(dtype))
        self.bias = Parameter(np.zeros(cout, dtype)) if validate.boolean("bias", bias) else None
        self._cache = None

    def extra_repr(self):
        cout, cin, k, _ = self.weight.shape
        return (f"{cin}, {cout}, kernel_size={k}, stride={self.stride}, rate={self.rate}, "
                f"padding={self.padding}, bias={self.bias is not None}, method={self.method!r}")

    def forward(self, x):
        b = None if self.bias is None else self.bias.data
        out, self._cache = atrous.atrous_conv2d_forward(
            x, self.weight.data, b, rate=self.rate, stride=self.stride,
            padding=self.padding, method=self.method)
        return out

    def backward(self, dout):
        dx, dw, db = atrous.atrous_conv2d_backward(dout, self._saved())
        self.weight.grad += dw
        if self.bias is not None:
            self.bias.grad += db
        return dx

    def receptive_field(self, rf=1, jump=1):
        k = atrous.effective_kernel_size(self.weight.shape[-1], self.rate)
        return rf + (k - 1) * jump, jump * self.stride


class BatchNorm2d(Module):
    """Batch normalisation over N, H, W for each channel (Ioffe & Szegedy 2015).

    ``y = gamma * (x - mean) / sqrt(var + eps) + beta``. Three modes:

    - training (``.train()``): mean and biased variance of the batch; the running
      statistics move by ``momentum`` (PyTorch's convention, unbiased variance);
    - evaluation (``.eval()``): the running statistics;
    - ``frozen=True``: the running statistics in training too, and ``weight``/``bias``
      receive no gradient and are marked ``trainable = False`` (so an optimiser skips
      them, weight decay included) — how DeepLab-v2 fine-tunes its ResNet (§4.2: batches
      too small for batch statistics).

    Buffers ``running_mean``, ``running_var``, ``num_batches_tracked`` are named as in
    torchvision so ImageNet statistics load directly.
    """

    buffers = ("running_mean", "running_var", "num_batches_tracked")

    def __init__(self, num_features, *, eps=1e-5, momentum=0.1, frozen=False, dtype=np.float32):
        super().__init__()
        c = validate.integer("num_features", num_features, 1)
        dtype = validate.float_dtype("dtype", dtype)
        self.eps = epsilon(eps, dtype)
        self.momentum = unit_interval("momentum", momentum)
        self.weight = Parameter(np.ones(c, dtype))
        self.bias = Parameter(np.zeros(c, dtype))
        self.frozen = frozen
        self.running_mean = np.zeros(c, dtype)
        self.running_var = np.ones(c, dtype)
        self.num_batches_tracked = np.zeros((), np.int64)
        self._cache = None

    def extra_repr(self):
        return f"{self.weight.shape[0]}, eps={self.eps}, momentum={self.momentum}, frozen={self.frozen}"

    @property
    def frozen(self):
        """Whether the layer uses running statistics always and leaves weight/bias alone."""
        return self._frozen

    @frozen.setter
    def frozen(self, value):
        self._frozen = validate.boolean("frozen", value)
        self.weight.trainable = self.bias.trainable = not self._frozen

    @property
    def mode(self):
        """``"frozen"``, ``"train"`` or ``"eval"``: which statistics the next forward uses."""
        return "frozen" if self.frozen else ("train" if self.training else "eval")

    def forward(self, x):
        out, self._cache = norm.batch_norm_forward(
            x, self.weight.data, self.bias.data, self.running_mean, self.running_var,
            mode=self.mode, momentum=self.momentum, eps=self.eps)
        if self.mode == "train":
            self.num_batches_tracked[...] += 1
        return out

    def backward(self, dout):
        dx, dgamma, dbeta = norm.batch_norm_backward(dout, self._saved())
        if not self.frozen:
            self.weight.grad += dgamma
            self.bias.grad += dbeta
        return dx


class ReLU(Module):
    """``max(x, 0)`` elementwise."""

    def forward(self, x):
        out, self._cache = activations.relu_forward(x)
        return out

    def backward(self, dout):
        return activations.relu_backward(dout, self._saved())


class MaxPool2d(Module):
    """Max pooling over ``kernel_size``² windows (padding counts as -inf).

    DeepLab's VGG-16 pools 3×3 with padding 1, stride 2 in pool1-3 and stride 1 in pool4-5
    (so the output stride stays 8). ``ceil_mode=True`` is Caffe's output-size rule, the
    default ``False`` PyTorch's; they agree when ``(H + 2p - k)`` is a multiple of the stride
    (for example 321×321 inputs).
    """

    def __init__(self, kernel_size, stride=None, padding=0, *, ceil_mode=False):
        super().__init__()
        self.kernel_size = validate.integer("kernel_size", kernel_size, 1, math.isqrt(INT32_MAX))  # k² offsets fit int32
        self.stride = self.kernel_size if stride is None else validate.integer("stride", stride, 1, INT32_MAX)
        self.padding = validate.integer("padding", padding, 0)
        self.ceil_mode = validate.boolean("ceil_mode", ceil_mode)

    def extra_repr(self):
        return f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}"

    def forward(self, x):
        out, self._cache = pool.max_pool2d_forward(
            x, self.kernel_size, stride=self.stride, padding=self.padding, ceil_mode=self.ceil_mode)
        return out

    def backward(self, dout):
        return pool.max_pool2d_backward(dout, self._saved())

    def receptive_field(self, rf=1, jump=1):
        return rf + (self.kernel_size - 1) * jump, jump * self.stride


class Dropout2d(Module):
    """Inverted dropout on N×C×H×W maps in training mode, the identity in evaluation.

    Kept values are scaled by ``1 / (1 - p)``. DeepLab drops fc6 and fc7 outputs with
    p = 0.5 element by element (Caffe's Dropout, the default here); ``channelwise=True``
    drops whole maps as PyTorch's ``nn.Dropout2d`` does.
    """

    def __init__(self, p=0.5, *, channelwise=False, rng=None):
        super().__init__()
        self.p = unit_interval("p", p)
        if self.p == 1:
            raise ValueError("p must be below 1 (p = 1 drops everything), got 1")
        self.channelwise = validate.boolean("channelwise", channelwise)
        self.rng = make_rng(rng)
        self._gpu_rng = None

    def extra_repr(self):
        return f"p={self.p}, channelwise={self.channelwise}"

    def forward(self, x):
        rng = self.rng
        if backend.is_gpu_array(x):  # CuPy arrays need a CuPy generator, seeded from this one
            if self._gpu_rng is None:
                self._gpu_rng = backend.cupy.random.default_rng(int(self.rng.integers(2**63)))
            rng = self._gpu_rng
        out, self._cache = dropout.dropout_forward(x, self.p, rng, training=self.training,
                                                   channelwise=self.channelwise)
        return out

    def backward(self, dout):
        return dropout.dropout_backward(dout, self._saved())


class Upsample(Module):
    """Bilinear resize of N×C×H×W maps to ``size`` or by ``scale_factor`` (§3.1).

    ``align_corners`` must be given: ``True`` maps corner pixel centres onto each other
    (Caffe's Interp layer, DeepLab's convention: 41 → 321 is exactly ×8 on (41-1)·8+1);
    ``False`` is the half-pixel convention (PyTorch's default). With ``scale_factor`` the
    output is ``(H - 1) * f + 1`` for ``align_corners=True`` and ``H * f`` otherwise.
    """

    def __init__(self, size=None, scale_factor=None, *, align_corners):
        super().__init__()
        if (size is None) == (scale_factor is None):
            raise ValueError("give exactly one of size and scale_factor")
        self.size = None if size is None else validate.pair("size", size, 1)
        self.scale_factor = None if scale_factor is None else validate.integer("scale_factor", scale_factor, 1)
        self.align_corners = validate.boolean("align_corners", align_corners)

    def extra_repr(self):
        what = f"size={self.size}" if self.size else f"scale_factor={self.scale_factor}"
        return f"{what}, align_corners={self.align_corners}"

    def output_size(self, h, w):
        if self.size is not None:
            return self.size
        f = self.scale_factor
        return ((h - 1) * f + 1, (w - 1) * f + 1) if self.align_corners else (h * f, w * f)

    def forward(self, x):
        validate.float_array("x", x, ndim=4)
        out, self._cache = interp.bilinear_resize_forward(
            x, self.output_size(*x.shape[2:]), align_corners=self.align_corners)
        return out

    def backward(self, dout):
        return interp.bilinear_resize_backward(dout, self._saved())

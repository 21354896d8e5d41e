"""Atrous spatial pyramid pooling: DeepLab-v2's classifier head (§3.2, Fig. 4).

Each branch looks at the backbone's stride-8 features through a 3×3 atrous convolution of
its own rate r, then two 1×1 layers::

    fc6 (3×3, rate r, C → hidden) → ReLU → dropout → fc7 (1×1, hidden → hidden)
        → ReLU → dropout → fc8 (1×1, hidden → classes)

and the branch score maps are *summed*. With one branch of rate 12 this is DeepLab-LargeFOV;
ASPP-S uses rates {2, 4, 8, 12} and ASPP-L {6, 12, 18, 24} (Table 3). A rate-r 3×3 branch
sees an effective 2r+1 window of stride-8 units, so ASPP-L's branches look at objects of
very different sizes at once.

:class:`ASPPv3` is DeepLab-v3's form of the head (Chen et al. 2017, "Rethinking atrous
convolution", §3.3): batch-normalised branches, an image-level branch, and the branch
features *concatenated* rather than the score maps summed.
"""
import numpy as np

from .. import backend, validate
from ..ops._checks import upstream_gradient
from .layers import BatchNorm2d, Conv2d, Dropout2d, ReLU, make_rng
from .module import Module, Sequential

LARGE_FOV = (12,)
ASPP_S = (2, 4, 8, 12)
ASPP_L = (6, 12, 18, 24)
ASPP_V3 = (6, 12, 18)  # DeepLab-v3's rates at output stride 16 (doubled at stride 8)


class ASPPBranch(Sequential):
    """One field of view: fc6 (3×3 at ``rate``) → ReLU → dropout → fc7 → ReLU → dropout → fc8.

    fc8 is drawn with std 0.01 (DeepLab's Caffe initialisation of the classifier), the
    others with He/MSRA. With ``hidden=None`` the branch is fc6 alone, straight to the
    classes (std 0.01): the head of DeepLab-v2's released ResNet-101 model. A
    :class:`Sequential` whose layers are named attributes (``fc6.weight``, ``fc7.weight``, ...).
    """

    children = Module.children

    def __init__(self, in_channels, num_classes, rate, hidden=1024, *, kernel_size=3, dropout=0.5,
                 method="auto", rng=None, dtype=np.float32):
        Module.__init__(self)
        rng = make_rng(rng)
        rate = validate.integer("rate", rate, 1)
        k = validate.integer("kernel_size", kernel_size, 1)
        if rate * (k - 1) % 2:  # padding on both sides keeps the size only for an even span
            raise ValueError(f"kernel_size {k} with rate {rate} spans rate * (kernel_size - 1) = {rate * (k - 1)} "
                             "pixels, an odd number that no padding keeps the feature map's size for: "
                             "use an odd kernel_size or an even rate")
        pad = rate * (k - 1) // 2
        if hidden is None:  # DeepLab-v2's ResNet head: one atrous conv straight to classes
            self.fc6 = Conv2d(in_channels, num_classes, k, rate=rate, padding=pad, method=method,
                              std=0.01, rng=rng, dtype=dtype)
            return
        self.fc6 = Conv2d(in_channels, hidden, k, rate=rate, padding=pad, method=method, rng=rng, dtype=dtype)
        self.relu6 = ReLU()
        self.drop6 = Dropout2d(dropout, rng=rng)
        self.fc7 = Conv2d(hidden, hidden, 1, method=method, rng=rng, dtype=dtype)
        self.relu7 = ReLU()
        self.drop7 = Dropout2d(dropout, rng=rng)
        self.fc8 = Conv2d(hidden, num_classes, 1, method=method, std=0.01, rng=rng, dtype=dtype)

    @property
    def classifier(self):
        """The layer that outputs the class scores: fc8, or fc6 when ``hidden=None``."""
        return self.fc8 if hasattr(self, "fc8") else self.fc6


class ASPP(Module):
    """Parallel :class:`ASPPBranch` es, one per rate, their score maps summed (§3.2).

    ``y = sum_b branch_b(x)``; backward sends ``dout`` to every branch and sums the input
    gradients, ``dx = sum_b dbranch_b/dx (dout)``.

    Shapes: x (N, in_channels, H, W) → (N, num_classes, H, W); parameters
    ``branches.<i>.fc6.weight`` and so on.

    Parameters
    ----------
    in_channels, num_classes : int
    rates : tuple of int
        ``LARGE_FOV``, ``ASPP_S``, ``ASPP_L`` or any rates.
    hidden : int or None
        Width of fc6/fc7 (1024 in the paper); ``None``: each branch is a single atrous
        convolution to the classes (DeepLab-v2's ResNet-101 head).
    kernel_size : int
        fc6's kernel: 3 in DeepLab-v2; Table 1 also tries 7 and 4 (padding
        ``rate * (kernel_size - 1) // 2``, which keeps the size only when
        ``rate * (kernel_size - 1)`` is even: an even kernel needs even rates, as Table 1's
        4×4 at rates 4 and 8).
    dropout : float
    method : str
        Atrous convolution method for every layer.
    rng : numpy.random.Generator or int, optional
    dtype : float32 or float64
    """

    def __init__(self, in_channels, num_classes, rates=ASPP_L, hidden=1024, *, kernel_size=3,
                 dropout=0.5, method="auto", rng=None, dtype=np.float32):
        super().__init__()
        rng = make_rng(rng)
        if not (isinstance(rates, (tuple, list)) and rates):
            raise ValueError(f"rates must be a non-empty tuple of ints, got {rates!r}")
        self.rates = tuple(validate.integer("rates", r, 1) for r in rates)
        self.branches = [ASPPBranch(in_channels, num_classes, r, hidden, kernel_size=kernel_size,
                                    dropout=dropout, method=method, rng=rng, dtype=dtype)
                         for r in self.rates]

    def forward(self, x):
        out = self.branches[0].forward(x)
        for branch in self.branches[1:]:
            out = out + branch.forward(x)
        return out

    def backward(self, dout):
        dx = self.branches[0].backward(dout)
        for branch in self.branches[1:]:
            dx = dx + branch.backward(dout)
        return dx

    def receptive_field(self, rf=1, jump=1):
        """The widest branch (the largest rate) sets the field of view."""
        return max(b.receptive_field(rf, jump) for b in self.branches)


def conv_bn_relu(in_channels, out_channels, kernel_size=1, *, rate=1, method="auto", rng=None,
                 dtype=np.float32):
    """Conv2d (no bias, "same" padding at stride 1) → BatchNorm2d → ReLU: DeepLab-v3's unit."""
    return Sequential(Conv2d(in_channels, out_channels, kernel_size, rate=rate, padding=rate * (kernel_size - 1) // 2,
                             bias=False, method=method, rng=rng, dtype=dtype),
                      BatchNorm2d(out_channels, dtype=dtype), ReLU())


class ImagePooling(Module):
    """DeepLab-v3's image-level features: the global average of each channel through a
    :func:`conv_bn_relu` 1×1 unit, spread back over the whole map,

        ``y[n, :, i, j] = g( mean_{a,b} x[n, :, a, b] )``  for every (i, j).

    Backward sums ``dout`` over the map, goes back through ``g``, and spreads the result
    evenly: ``dx[n, c, a, b] = dm[n, c] / (H·W)``. In training mode the batch norm needs
    a batch of at least two images (one value per channel per image). Parameters
    ``unit.0.weight``, ``unit.1.weight``, ...
    """

    def __init__(self, in_channels, out_channels, *, method="auto", rng=None, dtype=np.float32):
        super().__init__()
        self.unit = conv_bn_relu(in_channels, out_channels, method=method, rng=rng, dtype=dtype)
        self._cache = None

    def forward(self, x):
        validate.float_array("x", x, ndim=4)
        if min(x.shape[2:]) < 1:  # the mean of no pixels is NaN
            raise ValueError(f"x must have a height and width of at least 1, got shape {tuple(x.shape)}")
        y = self.unit.forward(x.mean(axis=(2, 3), keepdims=True))
        out = backend.array_module(y).broadcast_to(y, y.shape[:2] + x.shape[2:]).copy()
        self._cache = (x.shape, out.shape, out.dtype)
        return out

    def backward(self, dout):
        x_shape, out_shape, dtype = self._saved()
        upstream_gradient(dout, out_shape, dtype)  # the sum below would take any map size
        dm = self.unit.backward(dout.sum(axis=(2, 3), keepdims=True))
        h, w = x_shape[2:]
        return backend.array_module(dm).broadcast_to(dm / (h * w), x_shape).copy()

    def receptive_field(self, rf=1, jump=1):
        """Every output unit sees the whole input: no finite window."""
        return float("inf"), jump


class ASPPv3(Module):
    """DeepLab-v3's ASPP head: a 1×1 unit, one 3×3 unit per rate and :class:`ImagePooling`,
    each ``width`` channels wide, concatenated, then a 1×1 unit and a 1×1 classifier,

        ``y = classifier( project( concat_b branch_b(x) ) )``

    every unit being conv → batch norm → ReLU. Backward splits the gradient of the
    concatenation by channels, one block per branch, and sums the branches' input gradients.
    Pass ``rates`` doubled (12, 24, 36) at output stride 8.

    Shapes: x (N, in_channels, H, W) → (N, num_classes, H, W); parameters ``branches.<i>.*``,
    ``project.*``, ``classifier.*``.

    Parameters
    ----------
    in_channels, num_classes : int
    rates : tuple of int, the 3×3 branches' rates (``ASPP_V3``)
    width : int, channels of every branch and of the projection (256 in the paper)
    dropout : float, dropout before the classifier (0.1, as torchvision's DeepLab-v3 head uses)
    method, rng, dtype : as for :class:`ASPP`
    """

    def __init__(self, in_channels, num_classes, rates=ASPP_V3, width=256, *, dropout=0.1, method="auto",
                 rng=None, dtype=np.float32):
        super().__init__()
        rng = make_rng(rng)
        if not (isinstance(rates, (tuple, list)) and rates):
            raise ValueError(f"rates must be a non-empty tuple of ints, got {rates!r}")
        self.rates = tuple(validate.integer("rates", r, 1) for r in rates)
        width = validate.integer("width", width, 1)
        unit = dict(method=method, rng=rng, dtype=dtype)
        self.branches = ([conv_bn_relu(in_channels, width, 1, **unit)]
                         + [conv_bn_relu(in_channels, width, 3, rate=r, **unit) for r in self.rates]
                         + [ImagePooling(in_channels, width, **unit)])
        self.project = conv_bn_relu(width * len(self.branches), width, 1, **unit)
        self.drop = Dropout2d(dropout, rng=rng)
        self.classifier = Conv2d(width, num_classes, 1, method=method, std=0.01, rng=rng, dtype=dtype)

    def forward(self, x):
        xp = backend.array_module(x)
        features = xp.concatenate([branch.forward(x) for branch in self.branches], axis=1)
        return self.classifier.forward(self.drop.forward(self.project.forward(features)))

    def backward(self, dout):
        d = self.project.backward(self.drop.backward(self.classifier.backward(dout)))
        width = d.shape[1] // len(self.branches)
        dx = self.branches[0].backward(d[:, :width])
        for i, branch in enumerate(self.branches[1:], 1):
            dx = dx + branch.backward(d[:, i * width:(i + 1) * width])
        return dx

    def receptive_field(self, rf=1, jump=1):
        """The image-level branch sees everything."""
        return max(b.receptive_field(rf, jump)[0] for b in self.branches), jump

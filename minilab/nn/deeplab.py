"""DeepLab: backbone + ASPP head → stride-8 scores; multi-scale inputs; field of view.

``DeepLab(backbone, head)`` computes class scores at 1/8 of the input resolution (§3.1);
:meth:`DeepLab.predict` brings them to the input size by bilinear interpolation (×8 is
enough because the score maps are smooth, Fig. 5). :class:`MultiScale` runs the same
network on the input at several scales (0.5, 0.75, 1) and fuses the score maps by a
pixel-wise maximum (§3.2, "multi-scale inputs"). :func:`receptive_field` measures the
window of input pixels one output unit sees; :func:`table1_fov` is the "FOV" column of
Table 1.
"""
import math

import numpy as np

from .. import backend, validate
from ..ops import interp
from ..ops._checks import upstream_gradient
from .aspp import ASPP, ASPP_L, ASPP_S, LARGE_FOV
from .backbones import resnet, vgg16_largefov
from .layers import make_rng
from .module import Module


class DeepLab(Module):
    """``head(backbone(x))``: class scores at the backbone's output stride (8).

    Shapes: x (N, 3, H, W) float → scores (N, classes, ⌈H/8⌉, ⌈W/8⌉); state-dict names
    ``backbone.*`` and ``head.*``.

    Parameters
    ----------
    backbone : Module
        Has ``out_channels``; e.g. :func:`~minilab.nn.backbones.vgg16_largefov` or
        :func:`~minilab.nn.backbones.resnet`.
    head : Module
        E.g. :class:`~minilab.nn.aspp.ASPP`.
    """

    def __init__(self, backbone, head):
        super().__init__()
        self.backbone = backbone
        self.head = head

    def forward(self, x):
        validate.float_array("x", x, ndim=4)
        if x.shape[1] != 3:
            raise ValueError(f"x must have 3 channels (N×3×H×W), got shape {tuple(x.shape)}")
        dtype = next(self.named_parameters())[1].data.dtype  # the first only: no walk of the whole tree
        if x.dtype != dtype:
            raise TypeError(f"x is {x.dtype} but the model's parameters are {dtype}: pass x.astype({dtype.name}) "
                            f"or convert the model with .to(dtype=...)")
        with validate.finite_scans_off():  # x was scanned: the layers need not scan again
            return self.head.forward(self.backbone.forward(x))

    def backward(self, dout):
        validate.float_array("dout", dout, ndim=4)
        with validate.finite_scans_off():
            return self.backbone.backward(self.head.backward(dout))

    def predict(self, x):
        """Scores at the input's size: the stride-8 scores upsampled bilinearly.

        Uses ``align_corners=True`` (DeepLab's Caffe Interp convention: a 321×321 input
        gives 41×41 scores, and (41-1)·8+1 = 321). Call ``.eval()`` first for inference.
        Returns (N, classes, H, W); ``.argmax(1)`` gives the label map.
        """
        return upsample_to(self.forward(x), x.shape[2:])


class MultiScale(Module):
    """Multi-scale inputs with max fusion (§3.2): one network, several input scales.

    The input is resized (bilinear, ``align_corners=True``, side ``(H-1)·s + 1``) to each
    scale, each resized input goes through its own *shared copy* of ``model`` (same
    :class:`~minilab.nn.module.Parameter` objects, separate caches), each score map is
    resized to the largest scale's score-map size and the maps are fused by a pixel-wise
    maximum,

        ``y[n, c, i, j] = max_s  up_s(f(down_s(x)))[n, c, i, j]``.

    Backward sends each ``dout`` entry to the scale that won the max (the first on a tie)
    and back through that branch, so every branch *adds* into the shared ``.grad``; ``dout``
    must have the fused output's shape and dtype.
    Parameters and state dict are those of ``model`` (same names), so checkpoints move
    between single- and multi-scale use.
    """

    def __init__(self, model, scales=(0.5, 0.75, 1.0)):
        super().__init__()
        if not (isinstance(scales, (tuple, list)) and scales):
            raise ValueError(f"scales must be a non-empty tuple of numbers, got {scales!r}")
        self.scales = tuple(validate.positive("scales", s) for s in scales)
        self.model = model
        self._branches, self._winner, self._dtype = [], None, None

    def children(self):
        return self.model.children()

    def named_modules(self, prefix=""):
        """This wrapper, then the model's modules under the model's own paths (the model
        shares this wrapper's path), as the state dict names them."""
        yield prefix, self
        yield from self.model.named_modules(prefix)

    def _named_state(self, prefix=""):
        return self.model._named_state(prefix)  # the model's own parameters too, by its names

    def receptive_field(self, rf=1, jump=1):
        return self.model.receptive_field(rf, jump)

    def forward(self, x):
        validate.float_array("x", x, ndim=4)
        h, w = x.shape[2:]
        self._branches, scores = [], []
        for s in self.scales:
            # floor((H-1)·s) + 1, the floor taken with a margin for s's binary rounding
            # (100 · 0.29 is 28.999999999999996 in floating point)
            size = (math.floor((h - 1) * s + 1e-9) + 1, math.floor((w - 1) * s + 1e-9) + 1)
            down = None
            xs = x
            if size != (h, w):
                xs, down = interp.bilinear_resize_forward(x, size, align_corners=True)
            branch = self.model.shared_copy()
            scores.append(branch.forward(xs))
            self._branches.append((branch, down, None))
        target = scores[int(np.argmax(self.scales))].shape[2:]
        for i, y in enumerate(scores):
            if y.shape[2:] != target:
                scores[i], up = interp.bilinear_resize_forward(y, target, align_corners=True)
                branch, down, _ = self._branches[i]
                self._branches[i] = (branch, down, up)
        xp = backend.array_module(x)
        stack = xp.stack(scores)
        self._winner, self._dtype = stack.argmax(axis=0), stack.dtype
        return stack.max(axis=0)

    def backward(self, dout):
        xp = backend.array_module(dout)
        winner = self._saved("_winner")
        with validate.finite_scans_off():  # shape and dtype here (no broadcasting of a wrong shape);
            upstream_gradient(dout, winner.shape, self._dtype)  # each branch scans what it is sent
        dx = None
        for i, (branch, down, up) in enumerate(self._branches):
            dy = xp.where(winner == i, dout, 0).astype(dout.dtype)
            if up is not None:
                dy = interp.bilinear_resize_backward(dy, up)
            dxs = branch.backward(dy)
            if down is not None:
                dxs = interp.bilinear_resize_backward(dxs, down)
            dx = dxs if dx is None else dx + dxs
        return dx

    def predict(self, x):
        """Fused scores upsampled to the input size (see :meth:`DeepLab.predict`)."""
        return upsample_to(self.forward(x), x.shape[2:])


def upsample_to(scores, size):
    """Bilinear (``align_corners=True``) resize of N×C×h×w ``scores`` to ``size`` (an int or
    a pair of ints)."""
    out, _ = interp.bilinear_resize_forward(scores, validate.pair("size", size, 1), align_corners=True)
    return out


# -- builders and presets ---------------------------------------------------------------
def deeplab_vgg16(num_classes=21, *, rates=LARGE_FOV, hidden=1024, width=1.0, depth=(2, 2, 3, 3, 3),
                  kernel_size=3, dropout=0.5, method="auto", seed=0, dtype=np.float32):
    """DeepLab on VGG-16 (LargeFOV by default: one fc6 3×3 branch at rate 12, 1024 wide).

    ``width``/``depth`` shrink the backbone (see
    :func:`~minilab.nn.backbones.vgg16_largefov`); ``rates``, ``hidden``, ``kernel_size``
    and ``dropout`` configure the :class:`~minilab.nn.aspp.ASPP` head. ``seed`` seeds every
    initialisation and dropout mask.
    """
    rng = make_rng(seed)
    backbone = vgg16_largefov(width=width, depth=depth, method=method, rng=rng, dtype=dtype)
    head = ASPP(backbone.out_channels, num_classes, rates, hidden, kernel_size=kernel_size,
                dropout=dropout, method=method, rng=rng, dtype=dtype)
    return DeepLab(backbone, head)


def deeplab_resnet(num_classes=21, *, blocks=(3, 4, 23, 3), width=64, output_stride=8,
                   frozen_bn=False, rates=ASPP_L, hidden=1024, dropout=0.5, method="auto",
                   seed=0, dtype=np.float32):
    """DeepLab on a ResNet (ResNet-101 with ASPP-L by default: DeepLab-v2's best model).

    See :func:`~minilab.nn.backbones.resnet` for ``blocks``, ``width``, ``output_stride``
    and ``frozen_bn``; the head as in :func:`deeplab_vgg16`.
    """
    rng = make_rng(seed)
    backbone = resnet(blocks, width=width, output_stride=output_stride, frozen_bn=frozen_bn,
                      method=method, rng=rng, dtype=dtype)
    head = ASPP(backbone.out_channels, num_classes, rates, hidden, dropout=dropout,
                method=method, rng=rng, dtype=dtype)
    return DeepLab(backbone, head)


PRESETS = {
    # the paper's models
    "vgg16-largefov": (deeplab_vgg16, dict(rates=LARGE_FOV, hidden=1024)),
    "vgg16-aspp-s": (deeplab_vgg16, dict(rates=ASPP_S, hidden=1024)),
    "vgg16-aspp-l": (deeplab_vgg16, dict(rates=ASPP_L, hidden=1024)),
    # DeepLab-v2's released ResNet models: each ASPP branch one 3×3 atrous conv to the classes
    "resnet101-aspp-l": (deeplab_resnet, dict(blocks=(3, 4, 23, 3), width=64, rates=ASPP_L, hidden=None)),
    "resnet50-aspp-l": (deeplab_resnet, dict(blocks=(3, 4, 6, 3), width=64, rates=ASPP_L, hidden=None)),
    # small enough to train on a laptop in minutes (64-128 px inputs)
    "tiny-resnet-aspp": (deeplab_resnet, dict(blocks=(1, 1, 1, 1), width=8, rates=(1, 2, 3, 4),
                                              hidden=32, dropout=0.1)),
    "tiny-vgg-largefov": (deeplab_vgg16, dict(width=0.125, depth=(1, 1, 1, 1, 1), rates=(3,),
                                              hidden=32, dropout=0.1)),
}


def deeplab(preset="tiny-resnet-aspp", num_classes=21, **overrides):
    """Build a preset from ``PRESETS``; keyword arguments override the preset's.

    >>> model = deeplab("tiny-resnet-aspp", num_classes=4, seed=1)
    """
    validate.choice("preset", preset, PRESETS)
    build, kwargs = PRESETS[preset]
    return build(num_classes, **{**kwargs, **overrides})


# -- field of view -----------------------------------------------------------------------
def receptive_field(model):
    """Side, in input pixels, of the window one output unit of ``model`` depends on.

    Composes ``rf ← rf + (k_eff - 1)·jump``, ``jump ← jump·stride`` through the layers
    (k_eff = r(k-1)+1 for an atrous kernel), following the main path of residual blocks
    and the widest ASPP branch. This is the theoretical receptive field; see
    :func:`table1_fov` for the paper's FOV column.
    """
    return model.receptive_field()[0]


def output_stride(model):
    """Input pixels between neighbouring output units (8 for DeepLab)."""
    return model.receptive_field()[1]


def table1_fov(kernel_size, rate, output_stride=8, cell=32):
    """Table 1's "field of view" of an fc6 layer: ``output_stride·rate·(kernel_size-1) + cell``.

    The span of fc6's taps on the image plus one ``cell`` of 32 pixels (the stride of a
    pool5 unit in the ImageNet VGG-16, so that the original fc6, 7×7 on stride 32, has
    the FOV 224 of its input). Gives 224, 128, 224, 224 for (7×7, r4), (4×4, r4),
    (4×4, r8), (3×3, r12). ``receptive_field`` counts every layer below fc6 too.
    """
    k = validate.integer("kernel_size", kernel_size, 1)
    r = validate.integer("rate", rate, 1)
    return validate.integer("output_stride", output_stride, 1) * r * (k - 1) + validate.integer("cell", cell, 1)

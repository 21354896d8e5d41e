"""Backbones with atrous conversion: VGG-16 LargeFOV and ResNet (§3.1, §4).

An ImageNet network shrinks its input 32 times. DeepLab keeps the first three (VGG) or
two/three (ResNet) downsamplings and replaces the stride of the later ones by atrous rate:
every layer after a removed stride s samples its input at rate s (times the earlier
rates), so it sees the same window as before but its output is s times denser. The
result is a stride-8 feature map computed with the ImageNet weights unchanged.

Parameter names follow torchvision (``features.0.weight`` for VGG; ``conv1.weight``,
``layer1.0.bn1.running_mean``, ``layer1.0.downsample.0.weight`` for ResNet), so a
torchvision ``state_dict()`` loads with ``load_state_dict(..., strict=False)`` (VGG's
``classifier.*`` and ResNet's ``fc.*`` are returned as unexpected keys).
"""
import numpy as np

from .. import validate
from .layers import BatchNorm2d, Conv2d, MaxPool2d, ReLU, make_rng
from .module import Module, Sequential

VGG16_CHANNELS = (64, 128, 256, 512, 512)
VGG16_DEPTH = (2, 2, 3, 3, 3)


class VGG(Module):
    """VGG-16 convolutional layers as DeepLab-LargeFOV uses them (output stride 8).

    ``features`` holds conv3×3+ReLU blocks and five 3×3 max pools with padding 1: pool1-3
    with stride 2, pool4-5 with stride 1; the conv5 block runs at rate 2 (the stride pool4
    gave up). The fc6/fc7/fc8 layers live in the head (:class:`~minilab.nn.aspp.ASPP`
    with ``LARGE_FOV``: fc6 3×3 at rate 12).

    Shapes: x (N, 3, H, W) → (N, channels[-1], ⌈H/8⌉, ⌈W/8⌉) for H, W ≡ 1 mod 8
    (e.g. 321 → 41).
    """

    def __init__(self, channels=VGG16_CHANNELS, depth=VGG16_DEPTH, *, method="auto",
                 rng=None, dtype=np.float32):
        super().__init__()
        rng = make_rng(rng)
        for name, value in (("channels", channels), ("depth", depth)):
            if not isinstance(value, (tuple, list)):
                raise TypeError(f"{name} must be a tuple of 5 ints, one per stage, got {value!r}")
        if len(channels) != 5 or len(depth) != 5:
            raise ValueError(f"channels and depth must list 5 stages, got {channels!r}, {depth!r}")
        layers, cin = [], 3
        for stage, (cout, n) in enumerate(zip(channels, depth)):
            rate = 2 if stage == 4 else 1
            for _ in range(validate.integer("depth", n, 1)):
                layers += [Conv2d(cin, cout, 3, rate=rate, padding=rate, method=method, rng=rng, dtype=dtype),
                           ReLU()]
                cin = cout
            layers.append(MaxPool2d(3, stride=2 if stage < 3 else 1, padding=1))
        self.features = Sequential(*layers)
        self.out_channels = cin

    def forward(self, x):
        return self.features.forward(x)

    def backward(self, dout):
        return self.features.backward(dout)


def vgg16_largefov(*, width=1.0, depth=VGG16_DEPTH, method="auto", rng=None, dtype=np.float32):
    """The VGG-16 backbone of DeepLab-LargeFOV (pool4/pool5 3×3 stride 1, conv5 rate 2).

    ``width`` scales every stage's channels (1.0 = VGG-16: 64, 128, 256, 512, 512);
    ``depth`` sets the convolutions per stage (VGG-16: 2, 2, 3, 3, 3). Only the full size
    loads torchvision's ``vgg16`` weights.
    """
    width = validate.positive("width", width)
    channels = tuple(max(1, int(round(c * width))) for c in VGG16_CHANNELS)
    return VGG(channels, depth, method=method, rng=rng, dtype=dtype)


class Bottleneck(Module):
    """ResNet bottleneck: 1×1 → 3×3 (stride, rate) → 1×1 (×4 channels), plus a shortcut.

    ``y = relu(bn3(conv3(relu(bn2(conv2(relu(bn1(conv1(x)))))))) + shortcut(x))`` with
    shortcut the identity or ``downsample`` (1×1 conv with the stride, then batch norm)
    when the shape changes. Stride sits on conv2 as in torchvision ("ResNet v1.5").
    """

    expansion = 4

    def __init__(self, in_channels, planes, *, stride=1, rate=1, frozen_bn=False,
                 method="auto", rng=None, dtype=np.float32):
        super().__init__()
        out = planes * self.expansion
        conv = dict(bias=False, method=method, rng=rng, dtype=dtype)
        bn = dict(frozen=frozen_bn, dtype=dtype)
        self.conv1 = Conv2d(in_channels, planes, 1, **conv)
        self.bn1 = BatchNorm2d(planes, **bn)
        self.relu1 = ReLU()
        self.conv2 = Conv2d(planes, planes, 3, stride=stride, rate=rate, padding=rate, **conv)
        self.bn2 = BatchNorm2d(planes, **bn)
        self.relu2 = ReLU()
        self.conv3 = Conv2d(planes, out, 1, **conv)
        self.bn3 = BatchNorm2d(out, **bn)
        self.relu3 = ReLU()
        self.downsample = None
        if stride != 1 or in_channels != out:
            self.downsample = Sequential(Conv2d(in_channels, out, 1, stride=stride, **conv),
                                         BatchNorm2d(out, **bn))

    def _main(self):
        return (self.conv1, self.bn1, self.relu1, self.conv2, self.bn2, self.relu2, self.conv3, self.bn3)

    def forward(self, x):
        out = x
        for layer in self._main():
            out = layer.forward(out)
        shortcut = x if self.downsample is None else self.downsample.forward(x)
        return self.relu3.forward(out + shortcut)

    def backward(self, dout):
        dsum = self.relu3.backward(dout)
        dx = dsum
        for layer in reversed(self._main()):
            dx = layer.backward(dx)
        return dx + (dsum if self.downsample is None else self.downsample.backward(dsum))

    def receptive_field(self, rf=1, jump=1):
        """The main path (the shortcut is 1×1 with the same stride)."""
        for layer in self._main():
            rf, jump = layer.receptive_field(rf, jump)
        return rf, jump


class ResNet(Sequential):
    """ResNet with bottlenecks whose last stages trade stride for rate (DeepLab-v2, §4).

    Stem: conv1 7×7 stride 2 → bn1 → relu → maxpool 3×3 stride 2 (stride 4), then
    ``layer1..layer4`` of ``blocks`` bottlenecks with ``width·(1, 2, 4, 8)`` planes.
    ``output_stride`` 8: layer3 and layer4 keep stride 1 and run at rates 2 and 4;
    16: layer4 only, at rate 2; 32: the ImageNet network. Every block of a converted stage
    uses the stage's rate (as DeepLab's Caffe ResNet does).

    Shapes: x (N, 3, H, W) → (N, 32·width, ≈H/os, ≈W/os). A :class:`Sequential` over its
    named children ``conv1, bn1, relu, maxpool, layer1..layer4``.
    """

    children = Module.children

    def __init__(self, blocks=(3, 4, 23, 3), *, width=64, output_stride=8, frozen_bn=False,
                 method="auto", rng=None, dtype=np.float32):
        Module.__init__(self)
        rng = make_rng(rng)
        if not isinstance(blocks, (tuple, list)):
            raise TypeError(f"blocks must be a tuple of 4 ints, one per stage, got {blocks!r}")
        if len(blocks) != 4:
            raise ValueError(f"blocks must list 4 stages, got {blocks!r}")
        width = validate.integer("width", width, 1)
        validate.choice("output_stride", output_stride, (8, 16, 32))
        strides, rates = {8: ((1, 2, 1, 1), (1, 1, 2, 4)), 16: ((1, 2, 2, 1), (1, 1, 1, 2)),
                          32: ((1, 2, 2, 2), (1, 1, 1, 1))}[output_stride]
        self.conv1 = Conv2d(3, width, 7, stride=2, padding=3, bias=False, method=method, rng=rng, dtype=dtype)
        self.bn1 = BatchNorm2d(width, frozen=frozen_bn, dtype=dtype)
        self.relu = ReLU()
        self.maxpool = MaxPool2d(3, stride=2, padding=1)
        cin = width
        for i, (n, stride, rate) in enumerate(zip(blocks, strides, rates)):
            planes = width * 2 ** i
            stage = []
            for j in range(validate.integer("blocks", n, 1)):
                stage.append(Bottleneck(cin, planes, stride=stride if j == 0 else 1, rate=rate,
                                        frozen_bn=frozen_bn, method=method, rng=rng, dtype=dtype))
                cin = planes * Bottleneck.expansion
            setattr(self, f"layer{i + 1}", Sequential(*stage))
        self.out_channels = cin


def resnet(blocks=(3, 4, 23, 3), *, width=64, output_stride=8, frozen_bn=False, method="auto",
           rng=None, dtype=np.float32):
    """A DeepLab ResNet backbone: ``(3, 4, 23, 3)`` is ResNet-101, ``(3, 4, 6, 3)`` ResNet-50.

    ``width`` is the stem's channels (64 in torchvision); tiny presets such as
    ``blocks=(1, 1, 1, 1), width=8`` train on a laptop. See :class:`ResNet`.
    """
    return ResNet(blocks, width=width, output_stride=output_stride, frozen_bn=frozen_bn,
                  method=method, rng=rng, dtype=dtype)

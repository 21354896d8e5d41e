"""PyTorch builds of the same DeepLab architectures, written independently with torch.nn.

They are the oracle of the model tests and the reference of ``benchmarks/bench_model.py``:
a minilab model and its twin hold parameters of identical names and shapes, so
``twin.load_state_dict(to_torch(model.state_dict()))`` gives both the same weights, and
they must then agree on outputs and gradients. Needs torch (not a dependency of minilab).
"""
import numpy as np
import torch
from torch import nn


class Branch(nn.Module):
    """fc6 (k×k, dilation r) → ReLU → dropout → fc7 → ReLU → dropout → fc8; fc6 alone
    (to the classes) when ``hidden`` is None."""

    def __init__(self, cin, classes, rate, hidden, kernel_size=3, p=0.5):
        super().__init__()
        self.hidden = hidden
        self.fc6 = nn.Conv2d(cin, hidden or classes, kernel_size, padding=rate * (kernel_size - 1) // 2,
                             dilation=rate)
        if hidden is not None:
            self.fc7 = nn.Conv2d(hidden, hidden, 1)
            self.fc8 = nn.Conv2d(hidden, classes, 1)
        self.drop = nn.Dropout(p)

    def forward(self, x):
        if self.hidden is None:
            return self.fc6(x)
        x = self.drop(torch.relu(self.fc6(x)))
        x = self.drop(torch.relu(self.fc7(x)))
        return self.fc8(x)


class ASPP(nn.Module):
    """Sum of one :class:`Branch` per rate."""

    def __init__(self, cin, classes, rates, hidden, kernel_size=3, p=0.5):
        super().__init__()
        self.branches = nn.ModuleList(Branch(cin, classes, r, hidden, kernel_size, p) for r in rates)

    def forward(self, x):
        return sum(b(x) for b in self.branches)


class FrozenBatchNorm2d(nn.BatchNorm2d):
    """Batch norm on its running statistics in training too, with a fixed scale and shift:
    minilab's ``BatchNorm2d(frozen=True)``."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.weight.requires_grad_(False)
        self.bias.requires_grad_(False)
        self.eval()

    def train(self, mode=True):
        return super().train(False)


def unit(cin, cout, kernel_size=1, rate=1):
    """Conv (no bias) → batch norm → ReLU, DeepLab-v3's unit."""
    return nn.Sequential(nn.Conv2d(cin, cout, kernel_size, padding=rate * (kernel_size - 1) // 2, dilation=rate,
                                   bias=False), nn.BatchNorm2d(cout), nn.ReLU())


class ImagePooling(nn.Module):
    """Global average → 1×1 unit → the same vector at every position."""

    def __init__(self, cin, cout):
        super().__init__()
        self.unit = unit(cin, cout)

    def forward(self, x):
        return self.unit(x.mean((2, 3), keepdim=True)).expand(-1, -1, *x.shape[2:])


class ASPPv3(nn.Module):
    """DeepLab-v3's head: 1×1 unit, a 3×3 unit per rate, image pooling; concatenated,
    projected by a 1×1 unit, dropout, 1×1 classifier."""

    def __init__(self, cin, classes, rates, width, p=0.1):
        super().__init__()
        self.branches = nn.ModuleList([unit(cin, width)] + [unit(cin, width, 3, r) for r in rates]
                                      + [ImagePooling(cin, width)])
        self.project = unit(width * (len(rates) + 2), width)
        self.drop = nn.Dropout(p)
        self.classifier = nn.Conv2d(width, classes, 1)

    def forward(self, x):
        return self.classifier(self.drop(self.project(torch.cat([b(x) for b in self.branches], 1))))


class VGG(nn.Module):
    """VGG-16 with DeepLab's pools (3×3, pad 1; stride 2, 2, 2, 1, 1) and conv5 at dilation 2."""

    def __init__(self, channels=(64, 128, 256, 512, 512), depth=(2, 2, 3, 3, 3)):
        super().__init__()
        layers, cin = [], 3
        for stage, (cout, n) in enumerate(zip(channels, depth)):
            d = 2 if stage == 4 else 1
            for _ in range(n):
                layers += [nn.Conv2d(cin, cout, 3, padding=d, dilation=d), nn.ReLU()]
                cin = cout
            layers.append(nn.MaxPool2d(3, stride=2 if stage < 3 else 1, padding=1))
        self.features = nn.Sequential(*layers)

    def forward(self, x):
        return self.features(x)


class Bottleneck(nn.Module):
    """torchvision's bottleneck (stride on the 3×3), with a dilation."""

    def __init__(self, cin, planes, stride, dilation):
        super().__init__()
        out = planes * 4
        self.conv1 = nn.Conv2d(cin, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, padding=dilation, dilation=dilation, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, out, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out)
        self.downsample = None
        if stride != 1 or cin != out:
            self.downsample = nn.Sequential(nn.Conv2d(cin, out, 1, stride, bias=False), nn.BatchNorm2d(out))

    def forward(self, x):
        y = torch.relu(self.bn1(self.conv1(x)))
        y = torch.relu(self.bn2(self.conv2(y)))
        y = self.bn3(self.conv3(y))
        return torch.relu(y + (x if self.downsample is None else self.downsample(x)))


class ResNet(nn.Module):
    """torchvision's ResNet layout, output stride 8 (layer3 dilation 2, layer4 dilation 4)."""

    def __init__(self, blocks=(3, 4, 23, 3), width=64):
        super().__init__()
        self.conv1 = nn.Conv2d(3, width, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        cin = width
        for i, (n, stride, dilation) in enumerate(zip(blocks, (1, 2, 1, 1), (1, 1, 2, 4))):
            stage = []
            for j in range(n):
                stage.append(Bottleneck(cin, width * 2 ** i, stride if j == 0 else 1, dilation))
                cin = width * 2 ** i * 4
            setattr(self, f"layer{i + 1}", nn.Sequential(*stage))

    def forward(self, x):
        x = self.maxpool(torch.relu(self.bn1(self.conv1(x))))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))


class DeepLab(nn.Module):
    def __init__(self, backbone, head):
        super().__init__()
        self.backbone = backbone
        self.head = head

    def forward(self, x):
        return self.head(self.backbone(x))


def twin_of(model):
    """An (independently built) torch twin of a minilab DeepLab on VGG or ResNet, holding
    the same weights; float64 when the model is."""
    from . import aspp, backbones, layers
    bb, head = model.backbone, model.head
    if isinstance(bb, backbones.VGG):
        channels, depth, n = [], [], 0
        for m in bb.features:
            if hasattr(m, "weight"):
                n, width = n + 1, m.weight.shape[0]
            elif hasattr(m, "kernel_size"):  # a pool closes a stage
                channels.append(width)
                depth.append(n)
                n = 0
        tbb = VGG(channels, depth)
    else:
        if bb.receptive_field()[1] != 8:
            raise ValueError("twin_of builds ResNets of output stride 8 only")
        blocks = tuple(len(getattr(bb, f"layer{i}")) for i in range(1, 5))
        tbb = ResNet(blocks, bb.conv1.weight.shape[0])
    if isinstance(head, aspp.ASPPv3):
        thead = ASPPv3(bb.out_channels, head.classifier.weight.shape[0], head.rates, head.project[0].weight.shape[0],
                       head.drop.p)
    else:
        first = head.branches[0]
        fc6 = first.fc6.weight.shape
        hidden, classes = (fc6[0], first.fc8.weight.shape[0]) if hasattr(first, "fc8") else (None, fc6[0])
        p = first.drop6.p if hasattr(first, "drop6") else 0.0
        thead = ASPP(bb.out_channels, classes, head.rates, hidden, fc6[-1], p)
    twin = DeepLab(tbb, thead)
    state = model.state_dict()
    twin = twin.to(torch.float64 if state[next(iter(state))].dtype == np.float64 else torch.float32)
    twin.load_state_dict({k: torch.from_numpy(np.array(v, order="C")) for k, v in state.items()})
    for path, m in model.named_modules():  # batch-norm settings, which the state dict does not hold
        if isinstance(m, layers.BatchNorm2d):
            bn = twin.get_submodule(path)
            if m.frozen:
                parent, _, name = path.rpartition(".")
                frozen = FrozenBatchNorm2d(bn.num_features).to(bn.weight.dtype)
                frozen.load_state_dict(bn.state_dict())
                setattr(twin.get_submodule(parent), name, frozen)
                bn = frozen
            bn.eps, bn.momentum = m.eps, m.momentum
    return twin

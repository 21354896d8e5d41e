"""ASPP, backbones, DeepLab and multi-scale fusion: gradient checks of whole tiny models,
the branch sum, output strides, Table 1's field-of-view and parameter columns."""
import numpy as np
import pytest

from minilab import nn
from minilab.train.trainer import module_generators
from nn_checks import check_module, jitter_biases


def replay_dropout(model, seed=7):
    """A reset for check_module: every dropout layer draws the same masks on each forward."""
    layers = [m for m in model.modules() if isinstance(m, nn.Dropout2d)]
    return lambda: [setattr(m, "rng", np.random.default_rng(seed)) for m in layers]


def test_nn_aspp_gradients_and_branch_sum(rng):
    head = jitter_biases(nn.ASPP(4, 3, rates=(1, 2, 3), hidden=5, dropout=0.3, rng=rng, dtype=np.float64), rng)
    x = rng.standard_normal((2, 4, 7, 7))
    check_module(head, x, rng, reset=replay_dropout(head))
    head.eval()
    total = 0
    for branch in head.branches:  # one branch at a time, summed by hand
        total = total + branch.forward(x)
    np.testing.assert_allclose(head.forward(x), total, atol=1e-12)
    assert head.rates == (1, 2, 3)
    assert [b.fc6.rate for b in head.branches] == [1, 2, 3]


def test_nn_aspp_presets():
    assert nn.LARGE_FOV == (12,) and nn.ASPP_S == (2, 4, 8, 12) and nn.ASPP_L == (6, 12, 18, 24)
    head = nn.ASPP(8, 21, nn.ASPP_L, hidden=16)
    assert list(head.state_dict())[:6] == ["branches.0.fc6.weight", "branches.0.fc6.bias", "branches.0.fc7.weight",
                                           "branches.0.fc7.bias", "branches.0.fc8.weight", "branches.0.fc8.bias"]
    assert head.forward(np.zeros((1, 8, 9, 9), np.float32)).shape == (1, 21, 9, 9)
    with pytest.raises(ValueError, match="rates must be a non-empty tuple"):
        nn.ASPP(8, 21, ())


def test_nn_aspp_even_kernel_needs_even_rates():
    """Table 1's 4×4 fc6 keeps the map's size at even rates; at an odd rate no padding can."""
    head = nn.ASPP(8, 3, rates=(4, 8), hidden=4, kernel_size=4)
    assert head.forward(np.zeros((1, 8, 13, 13), np.float32)).shape == (1, 3, 13, 13)
    with pytest.raises(ValueError, match=r"kernel_size 4 with rate 3 .* odd kernel_size or an even rate"):
        nn.ASPP(8, 3, rates=(4, 3), hidden=4, kernel_size=4)
    with pytest.raises(ValueError, match="kernel_size 4 with rate 3"):
        nn.deeplab_vgg16(3, width=0.125, depth=(1,) * 5, rates=(3,), hidden=8, kernel_size=4)


@pytest.mark.parametrize("preset", ["tiny-resnet-aspp", "tiny-vgg-largefov"])
def test_nn_deeplab_gradients(preset, rng):
    model = jitter_biases(nn.deeplab(preset, num_classes=3, dtype=np.float64, seed=3), rng)
    x = rng.standard_normal((2, 3, 33, 33))
    check_module(model, x, rng, samples=3, reset=replay_dropout(model))


def test_nn_multiscale_gradients_through_the_max(rng):
    model = jitter_biases(nn.deeplab("tiny-resnet-aspp", num_classes=3, dtype=np.float64, seed=4), rng)
    multi = nn.MultiScale(model, scales=(0.5, 0.75, 1.0))
    x = rng.standard_normal((1, 3, 33, 33))
    check_module(multi, x, rng, samples=2, reset=replay_dropout(model))
    assert [id(p) for p in multi.parameters()] == [id(p) for p in model.parameters()]
    assert list(multi.state_dict()) == list(model.state_dict())


def test_nn_multiscale_backward_wants_the_fused_output_shape_and_dtype():
    multi = nn.MultiScale(nn.Conv2d(3, 2, 3, padding=1, dtype=np.float64), scales=(0.5, 1.0))
    y = multi.forward(np.zeros((2, 3, 9, 9)))
    for bad in (np.ones((1, 2, 9, 9)), np.ones((2, 2, 1, 1)), np.ones((2, 2, 9))):
        with pytest.raises(ValueError, match=r"dout must (have the forward output's shape|have 4 dimensions)"):
            multi.backward(bad)
    with pytest.raises(TypeError, match="dout must be a NumPy or CuPy array"):
        multi.backward(1.0)
    with pytest.raises(TypeError, match="dout must have the forward output's dtype float64, got float32"):
        multi.backward(np.ones(y.shape, np.float32))
    assert multi.backward(np.ones_like(y)).shape == (2, 3, 9, 9)


def test_nn_multiscale_of_a_module_that_holds_its_own_parameters():
    conv = nn.Conv2d(3, 2, 3, padding=1, dtype=np.float64)
    multi = nn.MultiScale(conv, scales=(0.5, 1.0))
    assert list(multi.state_dict()) == ["weight", "bias"]
    assert [id(p) for p in multi.parameters()] == [id(conv.weight), id(conv.bias)]
    assert list(multi.modules()) == [multi, conv]
    dropout = nn.Dropout2d(0.5, rng=3)
    assert list(module_generators(nn.MultiScale(dropout))) == [""]  # checkpoints keep its generator
    assert multi.receptive_field() == conv.receptive_field() == (3, 1)
    multi.to(dtype=np.float32).eval()
    assert conv.weight.data.dtype == np.float32 and not conv.training


def test_nn_multiscale_sizes_are_exact_for_scales_rounded_in_binary():
    seen = []
    model = nn.Sequential()
    model.forward = lambda x: seen.append(x.shape[2:]) or x
    nn.MultiScale(model, scales=(0.29, 0.57, 1.0)).forward(np.zeros((1, 1, 101, 101)))
    assert seen == [(30, 30), (58, 58), (101, 101)]  # (101 - 1)·s + 1, though 100 · 0.29 < 29


def test_nn_multiscale_fuses_by_max(rng):
    model = nn.deeplab("tiny-vgg-largefov", num_classes=3, dtype=np.float64, seed=5).eval()
    x = rng.standard_normal((1, 3, 49, 49))
    fused = nn.MultiScale(model, scales=(1.0, 0.5)).forward(x)
    full = model.forward(x)
    half = model.forward(nn.upsample_to(x, (25, 25)))
    np.testing.assert_allclose(fused, np.maximum(full, nn.upsample_to(half, full.shape[2:])), atol=1e-12)
    winners = nn.MultiScale(model, scales=(1.0,)).forward(x)
    np.testing.assert_allclose(winners, full, atol=1e-12)


def test_nn_predict_upsamples_to_the_input(rng):
    model = nn.deeplab("tiny-resnet-aspp", num_classes=4, seed=0).eval()
    x = rng.standard_normal((1, 3, 65, 65)).astype(np.float32)
    scores = model.forward(x)
    assert scores.shape == (1, 4, 9, 9)
    full = model.predict(x)
    assert full.shape == (1, 4, 65, 65) and full.dtype == np.float32
    np.testing.assert_allclose(full[:, :, ::8, ::8], scores, rtol=1e-5, atol=1e-6)
    assert nn.MultiScale(model).predict(x).shape == (1, 4, 65, 65)


def test_nn_predict_upsamples_a_non_square_input_to_its_height_and_width(rng):
    """predict brings the scores to the input's (H, W) with H != W: taking W for H (or H
    twice) would give the wrong shape, or a map that is not the scores on the ×8 grid."""
    model = nn.deeplab("tiny-resnet-aspp", num_classes=4, seed=0).eval()
    x = rng.standard_normal((1, 3, 65, 41)).astype(np.float32)
    scores = model.forward(x)
    assert scores.shape == (1, 4, 9, 6)
    full = model.predict(x)
    assert full.shape == (1, 4, 65, 41)
    np.testing.assert_allclose(full[:, :, ::8, ::8], scores, rtol=1e-5, atol=1e-6)
    tall = model.predict(np.ascontiguousarray(x.transpose(0, 1, 3, 2)))
    assert tall.shape == (1, 4, 41, 65)
    assert nn.MultiScale(model, scales=(0.5, 1.0)).predict(x).shape == (1, 4, 65, 41)


def test_nn_output_stride_and_shapes():
    vgg = nn.deeplab("tiny-vgg-largefov", num_classes=2)
    assert nn.output_stride(vgg) == 8
    assert vgg.forward(np.zeros((1, 3, 321, 321), np.float32)).shape == (1, 2, 41, 41)
    for os_ in (8, 16, 32):
        model = nn.deeplab("tiny-resnet-aspp", num_classes=2, output_stride=os_)
        assert nn.output_stride(model) == os_
        assert model.forward(np.zeros((1, 3, 65, 65), np.float32)).shape[2:] == (64 // os_ + 1,) * 2
    with pytest.raises(ValueError, match="x must have 3 channels"):
        vgg.forward(np.zeros((1, 1, 33, 33), np.float32))
    with pytest.raises(ValueError, match="x must have 4 dimensions"):
        vgg.forward(np.zeros((3, 33, 33), np.float32))
    # the model scans its input and upstream gradient once; its layers then skip the scan
    with pytest.raises(ValueError, match="x contains NaN"):
        vgg.forward(np.full((1, 3, 33, 33), np.nan, np.float32))
    out = vgg.forward(np.zeros((1, 3, 33, 33), np.float32))
    with pytest.raises(ValueError, match="dout contains NaN"):
        vgg.backward(np.full(out.shape, np.inf, np.float32))
    with pytest.raises(ValueError, match="preset must be one of"):
        nn.deeplab("resnet-9000")
    with pytest.raises(ValueError, match="output_stride must be one of"):
        nn.resnet(output_stride=4)
    with pytest.raises(TypeError, match="depth must be a tuple of 5 ints, one per stage, got 3"):
        nn.deeplab("tiny-vgg-largefov", depth=3)  # was "object of type 'int' has no len()"
    with pytest.raises(TypeError, match="blocks must be a tuple of 4 ints, one per stage, got 3"):
        nn.deeplab("tiny-resnet-aspp", blocks=3)
    assert nn.upsample_to(out, 5).shape == (1, 2, 5, 5)  # was "'int' object is not iterable"
    with pytest.raises(ValueError, match="size must be >= 1"):
        nn.upsample_to(out, (0, 5))


@pytest.mark.parametrize("kernel, rate, fov", [(7, 4, 224), (4, 4, 128), (4, 8, 224), (3, 12, 224)])
def test_nn_table1_field_of_view(kernel, rate, fov):
    """Table 1's FOV column, from the fc6 layer of a VGG-16 DeepLab built with that fc6."""
    model = nn.deeplab_vgg16(2, rates=(rate,), kernel_size=kernel, hidden=4, width=1 / 64)
    fc6 = model.head.branches[0].fc6
    assert nn.output_stride(model.backbone) == 8
    assert nn.table1_fov(fc6.weight.shape[-1], fc6.rate, nn.output_stride(model.backbone)) == fov
    # the theoretical receptive field adds everything below fc6: 227 pixels at pool5
    assert nn.receptive_field(model.backbone) == 227
    assert nn.receptive_field(model) == 227 + 8 * rate * (kernel - 1)


def test_nn_table1_parameters():
    """Table 1's parameter column: the real VGG-16 backbone plus fc6 (k×k, 512 → hidden),
    fc7 (hidden → hidden) and fc8 (hidden → 21), with biases."""
    backbone = sum(p.data.size for p in nn.vgg16_largefov().parameters())
    assert backbone == 14_714_688  # VGG-16's 13 convolutions

    def head(kernel, hidden):
        small = nn.ASPP(512 // 64, 21, (4,), hidden // 64, kernel_size=kernel)  # Table 1: 4×4 at rate 4
        assert small.branches[0].fc6.weight.shape == (hidden // 64, 512 // 64, kernel, kernel)
        return 512 * kernel ** 2 * hidden + hidden + hidden * hidden + hidden + hidden * 21 + 21

    assert round((backbone + head(7, 4096)) / 1e6, 1) == 134.3
    assert round((backbone + head(4, 4096)) / 1e6, 1) == 65.1
    assert round((backbone + head(3, 1024)) / 1e6, 1) == 20.5


def test_nn_aspp_v3_gradients_and_concatenation(rng):
    head = nn.ASPPv3(4, 3, rates=(1, 2), width=3, dropout=0.2, rng=rng, dtype=np.float64)
    x = rng.standard_normal((3, 4, 6, 6))  # batch >= 2: the image-level batch norm needs two values
    check_module(head, x, rng, reset=replay_dropout(head))
    assert len(head.branches) == 4 and head.project[0].weight.shape == (3, 12, 1, 1)
    head.eval()  # the head by hand: concatenate the branches, project, classify
    features = np.concatenate([b.forward(x) for b in head.branches], axis=1)
    np.testing.assert_allclose(head.forward(x), head.classifier.forward(head.project.forward(features)),
                               atol=1e-12)
    assert nn.receptive_field(nn.DeepLab(nn.resnet((1, 1, 1, 1), width=4), head)) == float("inf")
    with pytest.raises(ValueError, match="rates must be a non-empty tuple"):
        nn.ASPPv3(4, 3, rates=())


def test_nn_image_pooling_spreads_the_mean(rng):
    pool = jitter_biases(nn.ImagePooling(3, 2, rng=rng, dtype=np.float64), rng)
    x = rng.standard_normal((3, 3, 5, 4))
    check_module(pool, x, rng)
    y = pool.eval().forward(x)
    assert y.shape == (3, 2, 5, 4)
    np.testing.assert_allclose(y, y[:, :, :1, :1] * np.ones((1, 1, 5, 4)), atol=0)  # constant over the map
    np.testing.assert_allclose(y[:, :, 0, 0], pool.unit.forward(x.mean(axis=(2, 3), keepdims=True))[:, :, 0, 0])


def test_nn_deeplab_with_the_v3_head(rng):
    backbone = nn.resnet((1, 1, 1, 1), width=4, output_stride=16, rng=rng, dtype=np.float64)
    model = nn.DeepLab(backbone, nn.ASPPv3(backbone.out_channels, 3, width=4, rng=rng, dtype=np.float64))
    x = rng.standard_normal((3, 3, 33, 33))  # with two images the pooled batch norm's output is ±1 whatever
    assert model.forward(x).shape == (3, 3, 3, 3)  # the input: its gradient vanishes and the check sees noise
    check_module(model, x, rng, samples=4, reset=replay_dropout(model))


def test_nn_image_pooling_checks_its_input_and_dout():
    pool = nn.ImagePooling(4, 3, rng=0).eval()
    with pytest.raises(TypeError, match="x must be a NumPy or CuPy array"):
        pool.forward([[1.0]])
    with pytest.raises(ValueError, match="x must have a height and width of at least 1"):  # was a NaN
        pool.forward(np.ones((2, 4, 0, 5), np.float32))
    y = pool.forward(np.ones((2, 4, 5, 5), np.float32))
    with pytest.raises(ValueError, match=r"dout must have the forward output's shape \(2, 3, 5, 5\)"):
        pool.backward(np.ones((2, 3, 9, 9), np.float32))
    with pytest.raises(ValueError, match="dout must have 4 dimensions"):
        pool.backward(np.ones((2, 3, 9), np.float32))
    with pytest.raises(TypeError, match="dout must have the forward output's dtype float32"):
        pool.backward(np.ones(y.shape))
    assert pool.backward(np.ones_like(y)).shape == (2, 4, 5, 5)


@pytest.mark.parametrize("rates", [(2, 12), (12, 2)])
def test_nn_aspp_field_of_view_is_its_widest_branch(rates):
    assert nn.ASPP(4, 3, rates=rates, hidden=2).receptive_field() == (1 + 2 * 12, 1)


def test_nn_multiscale_sizes_are_floored_not_rounded():
    """Scale s of an H×H input is floor((H − 1)·s) + 1 pixels: (34 − 1)·0.75 = 24.75 gives 25."""
    seen = []
    model = nn.Sequential()
    model.forward = lambda x: seen.append(x.shape[2:]) or x
    nn.MultiScale(model, scales=(0.75, 1.0)).forward(np.zeros((1, 1, 34, 34)))
    assert seen == [(25, 25), (34, 34)]


def test_nn_multiscale_ties_send_the_gradient_to_the_first_scale(rng):
    """Every scale scores the same everywhere: the max takes the first, as documented, so
    the gradient is the first scale's alone."""
    x = rng.standard_normal((1, 3, 9, 9))
    grads = []
    for scales in ((1.0, 0.5), (1.0,)):
        conv = nn.Conv2d(3, 2, 1, dtype=np.float64)
        conv.weight.data[...] = 0
        conv.bias.data[...] = 1.0
        multi = nn.MultiScale(conv, scales=scales)
        y = multi.forward(x)
        multi.zero_grad()
        multi.backward(np.ones_like(y))
        grads.append(conv.weight.grad.copy())
    np.testing.assert_allclose(grads[0], grads[1], atol=1e-12)


@pytest.mark.parametrize("output_stride, strides, rates", [(8, (1, 2, 1, 1), (1, 1, 2, 4)),
                                                           (16, (1, 2, 2, 1), (1, 1, 1, 2)),
                                                           (32, (1, 2, 2, 2), (1, 1, 1, 1))])
def test_nn_resnet_trades_stride_for_rate_in_every_block(output_stride, strides, rates):
    """§4: a converted stage drops its stride and runs *every* block at the stage's rate (the
    tiny presets have one block per stage, which hid a rate given to the first block only)."""
    net = nn.resnet((2, 2, 2, 2), width=2, output_stride=output_stride)
    for i, (stride, rate) in enumerate(zip(strides, rates)):
        for j, block in enumerate(getattr(net, f"layer{i + 1}")):
            conv = block.conv2
            assert (conv.stride, conv.rate, conv.padding) == (stride if j == 0 else 1, rate, (rate, rate)), (i, j)


def test_nn_aspp_v3_rates():
    assert nn.ASPP_V3 == (6, 12, 18)  # DeepLab-v3 at output stride 16


def test_nn_paper_presets_hold_the_paper_numbers():
    """The paper's presets (built full size, not run): VGG-16's 13 convolutions of 64-512
    channels with conv5 at rate 2 and pools of strides 2, 2, 2, 1, 1; fc6 3×3, 1024 wide at
    rate 12 (LargeFOV) or ASPP-S/-L's rates; ResNet-101/-50's (3, 4, 23/6, 3) bottlenecks
    of 64·2^i planes, layer3/4 at rates 2/4; output stride 8. The parameter counts are
    torchvision's vgg16 features (14,714,688), resnet101 (44,549,160) and resnet50
    (25,557,032) less their 1000-class fc (2,049,000)."""
    def count(module):
        return sum(p.data.size for p in module.parameters())

    for preset, rates in (("vgg16-largefov", (12,)), ("vgg16-aspp-s", (2, 4, 8, 12)),
                          ("vgg16-aspp-l", (6, 12, 18, 24))):
        model = nn.deeplab(preset)
        convs = [m for m in model.backbone.features if isinstance(m, nn.Conv2d)]
        assert [c.weight.shape[0] for c in convs] == [64] * 2 + [128] * 2 + [256] * 3 + [512] * 6
        assert [c.rate for c in convs] == [1] * 10 + [2] * 3
        assert [m.stride for m in model.backbone.features if isinstance(m, nn.MaxPool2d)] == [2, 2, 2, 1, 1]
        assert count(model.backbone) == 14_714_688
        assert model.head.rates == rates and nn.output_stride(model) == 8
        for branch, rate in zip(model.head.branches, rates):
            assert (branch.fc6.weight.shape, branch.fc6.rate, branch.fc6.padding) == ((1024, 512, 3, 3), rate,
                                                                                       (rate, rate))
            assert branch.fc7.weight.shape == (1024, 1024, 1, 1) and branch.fc8.weight.shape == (21, 1024, 1, 1)
            assert branch.drop6.p == branch.drop7.p == 0.5
        assert count(model.head) == len(rates) * (512 * 9 * 1024 + 1024 + 1024 * 1024 + 1024 + 1024 * 21 + 21)
    assert round(count(nn.deeplab("vgg16-largefov")) / 1e6, 1) == 20.5  # Table 1's DeepLab-LargeFOV

    for preset, blocks, params in (("resnet101-aspp-l", (3, 4, 23, 3), 44_549_160 - 2_049_000),
                                   ("resnet50-aspp-l", (3, 4, 6, 3), 25_557_032 - 2_049_000)):
        model = nn.deeplab(preset)
        net = model.backbone
        assert net.conv1.weight.shape == (64, 3, 7, 7) and net.out_channels == 2048
        for i, (n, planes, rate) in enumerate(zip(blocks, (64, 128, 256, 512), (1, 1, 2, 4))):
            stage = list(getattr(net, f"layer{i + 1}"))
            assert len(stage) == n, preset
            assert all(b.conv2.weight.shape[0] == planes and b.conv2.rate == rate for b in stage), (preset, i)
            assert stage[-1].conv3.weight.shape[0] == 4 * planes
        assert count(net) == params, preset
        assert nn.output_stride(model) == 8
        assert model.head.rates == (6, 12, 18, 24)
        for branch in model.head.branches:  # DeepLab-v2's ResNet head: fc6 straight to the classes
            assert branch.fc6.weight.shape == (21, 2048, 3, 3) and not hasattr(branch, "fc7")

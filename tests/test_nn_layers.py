"""Float64 gradient checks of every layer, their modes, and their input checks."""
import numpy as np
import pytest

from minilab import nn
from minilab.ops import atrous
from nn_checks import check_module


@pytest.mark.parametrize("method", sorted(atrous.METHODS))
def test_nn_conv2d_gradients(method, rng):
    stride = 1 if atrous.unsupported(method, (3, 3), 2, 2) else 2
    rate = 1 if atrous.unsupported(method, (3, 3), 2, stride) else 2
    conv = nn.Conv2d(3, 4, 3, rate=rate, stride=stride, padding=2, method=method, rng=rng, dtype=np.float64)
    conv.bias.data[:] = rng.standard_normal(4)
    check_module(conv, rng.standard_normal((2, 3, 9, 8)), rng)


def test_nn_conv2d_matches_definition(rng):
    conv = nn.Conv2d(2, 3, 3, rate=3, padding=3, rng=rng, dtype=np.float64)
    x = rng.standard_normal((1, 2, 7, 7))
    xpad = np.pad(x, ((0, 0), (0, 0), (3, 3), (3, 3)))
    w = conv.weight.data
    expected = np.zeros((1, 3, 7, 7))
    for u in range(3):
        for v in range(3):
            expected += np.einsum("oc,nchw->nohw", w[:, :, u, v], xpad[:, :, 3 * u:3 * u + 7, 3 * v:3 * v + 7])
    np.testing.assert_allclose(conv.forward(x), expected, atol=1e-12)


def test_nn_conv2d_init_is_he_and_seeded():
    a = nn.Conv2d(64, 128, 3, rng=3)
    b = nn.Conv2d(64, 128, 3, rng=3)
    np.testing.assert_array_equal(a.weight.data, b.weight.data)
    assert abs(a.weight.data.std() / np.sqrt(2 / (64 * 9)) - 1) < 0.02
    assert not a.bias.data.any() and a.weight.data.dtype == np.float32
    assert abs(nn.Conv2d(64, 21, 1, std=0.01, rng=0).weight.data.std() - 0.01) < 0.001


@pytest.mark.parametrize("mode", ["train", "eval", "frozen"])
def test_nn_batchnorm_gradients(mode, rng):
    bn = nn.BatchNorm2d(3, frozen=mode == "frozen", dtype=np.float64)
    bn.weight.data[:] = rng.uniform(0.5, 2, 3)
    bn.bias.data[:] = rng.standard_normal(3)
    bn.running_mean[:] = rng.standard_normal(3)
    bn.running_var[:] = rng.uniform(0.5, 2, 3)
    bn.train(mode != "eval")
    assert bn.mode == mode
    x = rng.standard_normal((2, 3, 4, 5)) * 2 + 1
    if mode == "frozen":  # no gradient for the frozen scale and shift
        out = bn.forward(x)
        bn.zero_grad()
        dx = bn.backward(np.ones_like(out))
        assert not bn.weight.grad.any() and not bn.weight.trainable
        np.testing.assert_allclose(dx, np.ones_like(x) * (bn.weight.data / np.sqrt(bn.running_var + bn.eps))[:, None, None])
        return
    check_module(bn, x, rng)


def test_nn_batchnorm_modes_and_running_statistics(rng):
    bn = nn.BatchNorm2d(2, dtype=np.float64)
    x = rng.standard_normal((4, 2, 3, 3)) * 3 + 5
    y = bn.forward(x)
    np.testing.assert_allclose(y.mean(axis=(0, 2, 3)), 0, atol=1e-12)
    np.testing.assert_allclose(bn.running_mean, 0.1 * x.mean(axis=(0, 2, 3)))
    assert int(bn.num_batches_tracked) == 1
    bn.eval()
    np.testing.assert_allclose(bn.forward(x), (x - bn.running_mean[:, None, None]) /
                               np.sqrt(bn.running_var[:, None, None] + 1e-5))
    assert int(bn.num_batches_tracked) == 1


def test_nn_relu_and_maxpool_gradients(rng):
    x = rng.standard_normal((2, 3, 7, 7))
    check_module(nn.ReLU(), x, rng)
    for stride in (1, 2):
        check_module(nn.MaxPool2d(3, stride=stride, padding=1), x, rng)
    assert nn.MaxPool2d(3, 1, 1).forward(x).shape == x.shape
    assert nn.MaxPool2d(3, 2, 1).forward(x).shape == (2, 3, 4, 4)


def test_nn_dropout(rng):
    layer = nn.Dropout2d(0.5, rng=4)
    x = rng.standard_normal((2, 3, 5, 5))
    check_module(layer, x, rng, reset=lambda: setattr(layer, "rng", np.random.default_rng(4)))
    y = layer.forward(x)
    assert set(np.unique(np.round(y / x, 12))) <= {0.0, 2.0}
    layer.eval()
    assert layer.forward(x) is x
    channel = nn.Dropout2d(0.5, channelwise=True, rng=1)
    y = channel.forward(np.ones((4, 8, 3, 3)))
    assert all(len(np.unique(m)) == 1 for m in y.reshape(32, 9))
    assert nn.Dropout2d(np.float32(0.25)).p == 0.25
    for p in (1.0, -0.1):
        with pytest.raises(ValueError, match="p must be"):
            nn.Dropout2d(p)
    for p in (True, "0.5"):
        with pytest.raises(TypeError, match="p must be a real number"):
            nn.Dropout2d(p)


def test_nn_layer_settings_that_cannot_run_are_refused_when_built():
    for dtype in (np.float16, np.int32, "complex"):
        with pytest.raises(TypeError, match="dtype must be float32 or float64"):
            nn.Conv2d(2, 2, 3, dtype=dtype)
        with pytest.raises(TypeError, match="dtype must be float32 or float64"):
            nn.BatchNorm2d(2, dtype=dtype)
    with pytest.raises(ValueError, match="method='winograd' computes 3×3 kernels at stride 1"):
        nn.Conv2d(2, 2, 5, method="winograd")
    with pytest.raises(ValueError, match="stride must be 1 for method='deinterlace'"):
        nn.Conv2d(2, 2, 3, stride=2, method="deinterlace")
    assert nn.BatchNorm2d(2, momentum=0.0).momentum == 0.0  # frozen statistics, as the op allows
    with pytest.raises(ValueError, match="momentum must be in \\[0, 1\\]"):
        nn.BatchNorm2d(2, momentum=1.5)
    with pytest.raises(ValueError, match="eps must be >= "):
        nn.BatchNorm2d(2, eps=1e-50)  # 0 in float32
    assert nn.BatchNorm2d(2, eps=1e-50, dtype=np.float64).eps == 1e-50


@pytest.mark.parametrize("align_corners", [True, False])
def test_nn_upsample(align_corners, rng):
    x = rng.standard_normal((1, 2, 5, 4))
    up = nn.Upsample(scale_factor=8, align_corners=align_corners)
    assert up.forward(x).shape == ((1, 2, 33, 25) if align_corners else (1, 2, 40, 32))
    check_module(nn.Upsample(size=(9, 7), align_corners=align_corners), x, rng)
    if align_corners:  # corners land exactly on input pixels
        np.testing.assert_allclose(up.forward(x)[:, :, ::8, ::8], x, atol=1e-12)


def test_nn_layer_arguments_are_checked():
    with pytest.raises(ValueError, match="method must be one of"):
        nn.Conv2d(3, 4, 3, method="fft")
    with pytest.raises(ValueError, match="rate must be >= 1"):
        nn.Conv2d(3, 4, 3, rate=0)
    with pytest.raises(TypeError, match="kernel_size must be an integer"):
        nn.Conv2d(3, 4, 2.5)
    # the ops' int32 bounds, refused when the layer is built rather than at its first forward
    with pytest.raises(ValueError, match="rate must be <= 2147483647"):
        nn.Conv2d(3, 4, 3, rate=2**31)
    with pytest.raises(ValueError, match="padding must be <= 2147483647"):
        nn.Conv2d(3, 4, 3, padding=2**40)
    with pytest.raises(ValueError, match="kernel_size must be <= 46340"):
        nn.MaxPool2d(2**16)
    with pytest.raises(ValueError, match="stride must be <= 2147483647"):
        nn.MaxPool2d(3, stride=2**31)
    with pytest.raises(TypeError, match="align_corners must be True or False"):
        nn.Upsample(scale_factor=2, align_corners=None)
    assert nn.Upsample(scale_factor=2, align_corners=np.True_).align_corners is True
    with pytest.raises(ValueError, match="exactly one of size and scale_factor"):
        nn.Upsample(align_corners=True)
    conv = nn.Conv2d(3, 4, 3, padding=1)
    with pytest.raises(ValueError, match="input channels"):
        conv.forward(np.zeros((1, 2, 5, 5), np.float32))
    with pytest.raises(ValueError, match="NaN or infinity"):
        conv.forward(np.full((1, 3, 5, 5), np.nan, np.float32))
    with pytest.raises(TypeError, match="x must be a NumPy or CuPy array"):
        conv.forward([[1.0]])


def test_nn_flags_must_be_booleans():
    """The string "False" is truthy: bool() would have read it as True."""
    for build, name in ((lambda v: nn.MaxPool2d(2, ceil_mode=v), "ceil_mode"),
                        (lambda v: nn.Dropout2d(channelwise=v), "channelwise"),
                        (lambda v: nn.BatchNorm2d(3, frozen=v), "frozen"),
                        (lambda v: nn.Conv2d(1, 1, 1, bias=v), "bias"),
                        (lambda v: nn.ReLU().train(v), "mode")):
        with pytest.raises(TypeError, match=f"{name} must be True or False, got 'False'"):
            build("False")
        build(np.False_)
    assert nn.MaxPool2d(2, ceil_mode=np.True_).ceil_mode is True
    assert nn.Conv2d(1, 1, 1, bias=np.False_).bias is None
    assert nn.BatchNorm2d(3, frozen=np.True_).frozen is True
    assert nn.ReLU().train(np.False_).training is False


def test_nn_strided_conv_field_of_view():
    assert nn.Conv2d(1, 1, 7, stride=2, padding=3).receptive_field() == (7, 2)
    assert nn.Sequential(nn.Conv2d(1, 1, 3, stride=2), nn.Conv2d(1, 1, 3)).receptive_field() == (3 + 2 * 2, 2)


def test_nn_frozen_batch_norm_counts_no_batches():
    bn = nn.BatchNorm2d(2, frozen=True, dtype=np.float64)
    bn.forward(np.ones((2, 2, 3, 3)))
    assert int(bn.num_batches_tracked) == 0

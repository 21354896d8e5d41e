"""Atrous convolution: gradient checks for every method, eq. (1) against the 2-D code,
scipy's correlate2d as an independent reference, and bad inputs."""
import numpy as np
import pytest

from minilab.gradcheck import numerical_gradient, relative_error
from minilab.ops.atrous import (METHODS, atrous_conv1d, atrous_conv2d_backward,
                                atrous_conv2d_forward, auto_method, effective_kernel_size, unsupported)

signal = pytest.importorskip("scipy.signal")


def test_effective_kernel_size():
    assert effective_kernel_size(3, 1) == 3
    assert effective_kernel_size(3, 2) == 5
    assert effective_kernel_size(3, 12) == 25
    assert effective_kernel_size(1, 24) == 1
    with pytest.raises(ValueError, match="rate"):
        effective_kernel_size(3, 0)


def test_conv1d_is_equation_1_written_out(rng):
    x, w, rate = rng.standard_normal(20), rng.standard_normal(3), 4
    y = atrous_conv1d(x, w, rate)
    expected = [sum(x[i + rate * k] * w[k] for k in range(3)) for i in range(20 - 8)]
    np.testing.assert_allclose(y, expected, rtol=1e-12)


@pytest.mark.parametrize("method", sorted(METHODS))
@pytest.mark.parametrize("rate", [1, 2, 5])
def test_conv1d_matches_2d_code_on_one_row(method, rate, rng):
    if unsupported(method, (1, 4), rate, 1):
        pytest.skip(unsupported(method, (1, 4), rate, 1))
    x, w = rng.standard_normal(30), rng.standard_normal(4)
    y2, _ = atrous_conv2d_forward(x[None, None, None], w[None, None, None], rate=rate, method=method)
    np.testing.assert_allclose(atrous_conv1d(x, w, rate), y2[0, 0, 0], rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("method", sorted(METHODS))
@pytest.mark.parametrize("rate", [1, 3])
def test_single_channel_matches_scipy_correlate2d(method, rate, rng):
    kernel = (3, 3) if method == "winograd" else (3, 2)
    if unsupported(method, kernel, rate, 1):
        pytest.skip(unsupported(method, kernel, rate, 1))
    x, w = rng.standard_normal((17, 15)), rng.standard_normal(kernel)
    w_up = np.zeros(((kernel[0] - 1) * rate + 1, (kernel[1] - 1) * rate + 1))
    w_up[::rate, ::rate] = w
    expected = signal.correlate2d(np.pad(x, 2), w_up, mode="valid")
    y, _ = atrous_conv2d_forward(x[None, None], w[None, None], rate=rate, padding=2, method=method)
    np.testing.assert_allclose(y[0, 0], expected, rtol=1e-12, atol=1e-12)


GRAD_CASES = [  # N, C, H, W, F, kh, kw, rate, stride, padding
    (2, 3, 7, 8, 2, 3, 3, 2, 1, 2),
    (1, 2, 9, 7, 3, 2, 3, 3, 1, (3, 1)),
    (2, 2, 8, 9, 2, 3, 2, 2, 2, 1),
    (1, 1, 6, 6, 1, 1, 1, 4, 1, 0),
    (2, 3, 5, 4, 2, 1, 1, 1, 1, 0),       # 1×1 at stride 1: a GEMM per image ("shifted")
    (2, 3, 7, 8, 2, 3, 3, 1, 1, 1),       # 3×3 at rate 1: Winograd's case, odd and even sizes
    (1, 2, 6, 5, 3, 3, 3, 1, 1, (2, 0)),
]


@pytest.mark.parametrize("method, case", [(m, case) for m in sorted(METHODS) for case in GRAD_CASES
                                           if not unsupported(m, case[5:7], case[7], case[8])])
def test_gradients_match_central_differences(method, case, rng):
    n, c, h, w_, f, kh, kw, rate, stride, padding = case
    x = rng.standard_normal((n, c, h, w_))
    w = rng.standard_normal((f, c, kh, kw))
    b = rng.standard_normal(f)
    kw_args = dict(rate=rate, stride=stride, padding=padding, method=method)
    out, cache = atrous_conv2d_forward(x, w, b, **kw_args)
    dout = rng.standard_normal(out.shape)
    dx, dw, db = atrous_conv2d_backward(dout, cache)
    forward = lambda: atrous_conv2d_forward(x, w, b, **kw_args)[0]
    # The output is linear in each of x, w, b, so central differences have no truncation
    # error and a large step h only shrinks their rounding error (eps·|sum|/h): with the
    # default h = 1e-6 that rounding alone reaches ~1e-6 elementwise on some draws.
    h = 1e-3
    assert relative_error(dx, numerical_gradient(forward, x, dout, h=h)) < 1e-7
    assert relative_error(dw, numerical_gradient(forward, w, dout, h=h)) < 1e-7
    assert relative_error(db, numerical_gradient(forward, b, dout, h=h)) < 1e-7


@pytest.mark.parametrize("method", sorted(METHODS))
def test_no_bias_gives_no_bias_gradient_and_keeps_dtype(method, rng):
    x = rng.standard_normal((1, 2, 9, 9)).astype(np.float32)
    w = rng.standard_normal((3, 2, 3, 3)).astype(np.float32)
    rate = 1 if unsupported(method, (3, 3), 2, 1) else 2
    out, cache = atrous_conv2d_forward(x, w, rate=rate, padding=rate, method=method)
    assert out.dtype == np.float32 and out.shape == (1, 3, 9, 9)
    dx, dw, db = atrous_conv2d_backward(np.ones_like(out), cache)
    assert db is None and dx.dtype == np.float32 and dw.dtype == np.float32
    assert dx.shape == x.shape and dw.shape == w.shape


def test_rate_one_is_an_ordinary_convolution(rng):
    x, w = rng.standard_normal((1, 1, 6, 6)), rng.standard_normal((1, 1, 3, 3))
    y, _ = atrous_conv2d_forward(x, w, rate=1)
    np.testing.assert_allclose(y[0, 0], signal.correlate2d(x[0, 0], w[0, 0], mode="valid"), rtol=1e-12)


@pytest.mark.parametrize("c, f, stride, rate, k, side, expected", [
    (3, 64, 1, 1, 3, 321, "sparse"),       # VGG's first layer on an RGB image
    (3, 16, 2, 1, 7, 321, "sparse"),       # ResNet's 7×7 stem
    (32, 32, 2, 1, 3, 81, "sparse"),       # a strided 3×3 inside a bottleneck
    (256, 512, 2, 1, 1, 81, "sparse"),     # a strided 1×1 shortcut
    (64, 128, 1, 1, 3, 161, "sparse"),     # VGG's conv2_1
    (64, 128, 1, 2, 3, 161, "shifted"),
    (16, 64, 1, 4, 3, 81, "sparse"),
    (64, 64, 1, 1, 3, 81, "shifted"),      # few channels on a small map: not Winograd
    (64, 64, 1, 1, 3, 321, "winograd"),    # VGG's conv1_2
    (128, 128, 1, 1, 3, 161, "winograd"),  # VGG's conv2_2 and every 3×3 at rate 1 after it
    (512, 512, 1, 2, 3, 41, "winograd"),   # conv5 at rate 2: a big layer
    (256, 256, 1, 2, 3, 41, "shifted"),    # a smaller one at rate 2
    (64, 64, 1, 2, 3, 161, "shifted"),     # few channels at rate 2
    (256, 256, 1, 4, 3, 81, "shifted"),    # rates above 2: the padding it multiplies dominates
    (512, 1024, 1, 12, 3, 41, "shifted"),  # LargeFOV's fc6
    (1024, 1024, 1, 1, 1, 41, "shifted"),  # fc7
    (16, 64, 1, 1, 1, 81, "shifted"),      # a bottleneck's widening 1×1: a GEMM, no im2col copy
    (512, 21, 1, 6, 3, 41, "shifted"),     # ASPP's classifier branches
])
def test_auto_method_picks_by_the_measured_rules(c, f, stride, rate, k, side, expected):
    assert auto_method(c, f, stride, rate, (k, k), side * side) == expected
    if expected == "winograd":  # CPU only
        assert auto_method(c, f, stride, rate, (k, k), side * side, gpu=True) == "shifted"


@pytest.mark.parametrize("kwargs, error, name", [
    (dict(in_channels="64"), TypeError, "in_channels"),
    (dict(out_channels=0), ValueError, "out_channels"),
    (dict(stride=1.0), TypeError, "stride"),
    (dict(rate=0), ValueError, "rate"),
    (dict(kernel_size=(3, 3, 3)), ValueError, "kernel_size"),
    (dict(pixels=-1), ValueError, "pixels"),
    (dict(gpu="yes"), TypeError, "gpu"),
])
def test_auto_method_names_a_bad_argument(kwargs, error, name):
    args = dict(in_channels=64, out_channels=64, stride=1, rate=1) | kwargs
    with pytest.raises(error, match=name):
        auto_method(**args)


@pytest.mark.parametrize("c, f, stride", [(1, 4, 1), (4, 4, 1), (2, 2, 2)])
def test_auto_runs_the_method_it_picks(c, f, stride, rng):
    x, w = rng.standard_normal((2, c, 9, 7)), rng.standard_normal((f, c, 3, 3))
    y, cache = atrous_conv2d_forward(x, w, rate=2, stride=stride, padding=1)
    picked = auto_method(c, f, stride, 2)
    assert cache[0] == picked
    y_picked, cache_picked = atrous_conv2d_forward(x, w, rate=2, stride=stride, padding=1, method=picked)
    np.testing.assert_array_equal(y, y_picked)
    dy = rng.standard_normal(y.shape)
    for got, want in zip(atrous_conv2d_backward(dy, cache)[:2], atrous_conv2d_backward(dy, cache_picked)[:2]):
        np.testing.assert_array_equal(got, want)


def _inputs(rng):
    return (rng.standard_normal((1, 2, 8, 8)).astype(np.float32),
            rng.standard_normal((3, 2, 3, 3)).astype(np.float32))


@pytest.mark.parametrize("change, error, name", [
    (dict(x=np.zeros((2, 8, 8), np.float32)), ValueError, "x"),
    (dict(w=np.zeros((3, 2, 3), np.float32)), ValueError, "w"),
    (dict(w=np.zeros((3, 4, 3, 3), np.float32)), ValueError, "channels"),
    (dict(rate=0), ValueError, "rate"),
    (dict(rate=1.5), TypeError, "rate"),
    (dict(stride=0), ValueError, "stride"),
    (dict(padding=-1), ValueError, "padding"),
    (dict(padding=(1, 2, 3)), ValueError, "padding"),
    (dict(stride=2**63), ValueError, "stride must be <= 2147483647"),  # no int64 for Numba
    (dict(rate=2**63, padding=2**63), ValueError, "rate must be <= 2147483647"),
    (dict(padding=(0, 2**31)), ValueError, "padding must be <= 2147483647"),
    (dict(rate=5), ValueError, "larger than the padded input"),
    (dict(x=np.zeros((1, 2, 8, 8), np.int64)), TypeError, "x"),
    (dict(x=[[[[1.0]]]]), TypeError, "x"),
    (dict(w=np.zeros((3, 2, 3, 3), np.float64)), TypeError, "w"),
    (dict(b=np.zeros(3, np.float64)), TypeError, "b"),
    (dict(b=np.zeros(4, np.float32)), ValueError, "b"),
    (dict(x=np.full((1, 2, 8, 8), np.nan, np.float32)), ValueError, "x"),
    (dict(w=np.full((3, 2, 3, 3), np.inf, np.float32)), ValueError, "w"),
    (dict(method="fft"), ValueError, "method"),
    (dict(method="deinterlace", stride=2), ValueError, "stride"),
    (dict(method="winograd", stride=2), ValueError, "3×3 kernels at stride 1"),
    (dict(method="winograd", w=np.zeros((3, 2, 1, 1), np.float32)), ValueError, "got a 1×1 kernel"),
])
def test_bad_inputs_raise_naming_the_argument(change, error, name, rng):
    x, w = _inputs(rng)
    args = dict(x=x, w=w, b=None, rate=1, stride=1, padding=0, method="sparse")
    args.update(change)
    with pytest.raises(error, match=name):
        atrous_conv2d_forward(args.pop("x"), args.pop("w"), args.pop("b"), **args)


def test_bad_dout_raises(rng):
    x, w = _inputs(rng)
    out, cache = atrous_conv2d_forward(x, w)
    with pytest.raises(ValueError, match="dout"):
        atrous_conv2d_backward(np.zeros((1, 3, 5, 5), np.float32), cache)
    with pytest.raises(TypeError, match="dout"):
        atrous_conv2d_backward(np.zeros(out.shape, np.float64), cache)
    with pytest.raises(ValueError, match="dout"):
        atrous_conv2d_backward(np.full(out.shape, np.nan, np.float32), cache)


def test_unsupported_names_an_unknown_method():
    assert unsupported("fft", (3, 3), 1, 1) == "method must be one of " + str(sorted(["auto", *METHODS])) + ", got 'fft'"
    assert unsupported("sparse", (3, 3), 1, 2) is None and unsupported("auto", (5, 5), 2, 2) is None


def test_conv1d_bad_inputs(rng):
    x, w = rng.standard_normal(10), rng.standard_normal(3)
    with pytest.raises(ValueError, match="x"):
        atrous_conv1d(x[None], w, 1)
    with pytest.raises(ValueError, match="rate"):
        atrous_conv1d(x, w, 0)
    with pytest.raises(ValueError, match="w spans"):
        atrous_conv1d(x, w, 5)
    with pytest.raises(TypeError, match="w"):
        atrous_conv1d(x, w.astype(np.float32), 1)


class _FakeGpuArray(np.ndarray):
    """Stands in for a CuPy array where CuPy is absent, to test the mixed-inputs check."""


def test_mixed_numpy_and_gpu_arrays_are_refused(rng, monkeypatch):
    from minilab import backend
    monkeypatch.setattr(backend, "is_gpu_array", lambda a: isinstance(a, _FakeGpuArray))
    monkeypatch.setattr(backend, "cupy", np)  # what array_module returns for a "GPU" array
    x, w = _inputs(rng)
    with pytest.raises(TypeError, match="w is a CuPy array but x is a NumPy array"):
        atrous_conv2d_forward(x, w.view(_FakeGpuArray))
    with pytest.raises(TypeError, match="b is a NumPy array but x is a CuPy array"):
        atrous_conv2d_forward(x.view(_FakeGpuArray), w.view(_FakeGpuArray), np.zeros(3, np.float32))
    out, cache = atrous_conv2d_forward(x, w)
    with pytest.raises(TypeError, match="dout is a CuPy array but the forward ran on NumPy"):
        atrous_conv2d_backward(np.ones_like(out).view(_FakeGpuArray), cache)


@pytest.mark.parametrize("method", sorted(METHODS))
def test_non_contiguous_inputs_give_the_contiguous_result(method, rng):
    x = rng.standard_normal((2, 3, 18, 16))[:, :, ::2, ::2]          # strided view, no padding
    w = rng.standard_normal((3, 4, 3, 3)).transpose(1, 0, 2, 3)      # transposed view
    rate = 1 if unsupported(method, (3, 3), 2, 1) else 2
    out, cache = atrous_conv2d_forward(x, w, rate=rate, method=method)
    dout = rng.standard_normal(out.shape)[..., ::-1]                  # negative strides
    expected, cache_c = atrous_conv2d_forward(np.ascontiguousarray(x), np.ascontiguousarray(w),
                                              rate=rate, method=method)
    np.testing.assert_allclose(out, expected, rtol=1e-12, atol=1e-12)
    for got, want in zip(atrous_conv2d_backward(dout, cache)[:2],
                         atrous_conv2d_backward(np.ascontiguousarray(dout), cache_c)[:2]):
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)


def test_winograd_is_refused_for_gpu_arrays_without_a_gpu():
    """unsupported() is pure: it can say that winograd has no GPU path on any machine."""
    assert unsupported("winograd", (3, 3), 1, 1) is None
    assert "on a GPU" in unsupported("winograd", (3, 3), 1, 1, gpu=True)

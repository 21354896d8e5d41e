"""ReLU, softmax and log-softmax over the channel axis: values against scipy, stability for
huge logits, float64 gradient checks, bad inputs."""
import numpy as np
import pytest
from scipy import special

from minilab import backend, validate
from minilab.gradcheck import numerical_gradient, relative_error
from minilab.ops.activations import (log_softmax_backward, log_softmax_forward, relu_backward,
                                     relu_forward, softmax_backward, softmax_forward)

PAIRS = {"relu": (relu_forward, relu_backward), "softmax": (softmax_forward, softmax_backward),
         "log_softmax": (log_softmax_forward, log_softmax_backward)}


def test_relu_values():
    x = np.array([[-2.0, -0.0, 0.0, 0.5, 3.0]], dtype=np.float32)
    out, cache = relu_forward(x)
    np.testing.assert_array_equal(out, [[0, 0, 0, 0.5, 3]])
    assert out.dtype == np.float32 and not np.signbit(out).any()
    np.testing.assert_array_equal(relu_backward(np.ones_like(x), cache), [[0, 0, 0, 1, 1]])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_relu_forward_is_numpy_maximum_on_any_layout(dtype, rng):
    x = rng.standard_normal((2, 4, 5, 3)).astype(dtype).transpose(0, 3, 2, 1)[:, ::-1]  # not contiguous
    out, _ = relu_forward(x)
    assert out.dtype == dtype and out.shape == x.shape
    np.testing.assert_array_equal(out, np.maximum(x, 0))
    with validate.finite_scans_off():  # inside a network NaN is not scanned for: it stays NaN
        x = np.array([np.nan, -np.inf, np.inf, -1, 2], dtype)
        np.testing.assert_array_equal(relu_forward(x)[0], np.maximum(x, 0))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_relu_backward_is_a_masked_copy_of_any_layout(dtype, rng):
    x = rng.standard_normal((2, 3, 5, 4)).astype(dtype)
    out, cache = relu_forward(x)
    dout = rng.standard_normal((2, 4, 5, 3)).astype(dtype).transpose(0, 3, 2, 1)  # not contiguous
    dx = relu_backward(dout, cache)
    assert dx.dtype == dtype and dx.shape == x.shape
    np.testing.assert_array_equal(dx, np.where(x > 0, dout, 0))
    with validate.finite_scans_off():  # as inside a network, where dout is not scanned
        dout = np.full(x.shape, np.inf, dtype)
        np.testing.assert_array_equal(relu_backward(dout, cache), np.where(x > 0, np.inf, 0))


@pytest.mark.parametrize("shape", [(2, 5, 3, 4), (3, 7)])
def test_softmax_and_log_softmax_match_scipy(shape, rng):
    x = rng.standard_normal(shape) * 3
    p, _ = softmax_forward(x)
    logp, _ = log_softmax_forward(x)
    np.testing.assert_allclose(p, special.softmax(x, axis=1), rtol=1e-13)
    np.testing.assert_allclose(logp, special.log_softmax(x, axis=1), rtol=1e-13, atol=1e-13)
    np.testing.assert_allclose(p.sum(axis=1), 1, rtol=1e-14)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_stable_for_huge_logits(dtype):
    x = np.array([[1e4, 0.0, -1e4], [3e38 if dtype == np.float32 else 1e300, 0.0, 0.0]], dtype=dtype)
    x = x.reshape(2, 3, 1, 1)
    p, _ = softmax_forward(x)
    logp, _ = log_softmax_forward(x)
    assert p.dtype == logp.dtype == dtype
    assert np.isfinite(p).all() and np.isfinite(logp).all()
    np.testing.assert_allclose(p[:, :, 0, 0], [[1, 0, 0], [1, 0, 0]], atol=1e-30)
    assert logp[0, 0, 0, 0] == 0 and logp[0, 1, 0, 0] == -1e4
    # shifting all logits of a pixel changes nothing
    y = np.random.default_rng(1).standard_normal((1, 4, 2, 2)).astype(dtype)
    np.testing.assert_allclose(softmax_forward(y + dtype(1000))[0], softmax_forward(y)[0], rtol=1e-4)


@pytest.mark.parametrize("name", PAIRS)
@pytest.mark.parametrize("shape", [(2, 4, 3, 3), (3, 5)])
def test_gradient_check(name, shape, rng):
    forward, backward = PAIRS[name]
    x = rng.standard_normal(shape)
    x[np.abs(x) < 1e-3] = 0.5  # keep ReLU's kink away from the finite differences
    out, cache = forward(x)
    dout = rng.standard_normal(out.shape)
    num = numerical_gradient(lambda: forward(x)[0], x, dout)
    assert relative_error(backward(dout, cache), num) < 1e-6


def test_gradients_match_torch(rng):
    torch = pytest.importorskip("torch")
    x = rng.standard_normal((2, 6, 4, 5))
    dout = rng.standard_normal(x.shape)
    for name, fn in (("relu", torch.relu), ("softmax", lambda t: torch.softmax(t, 1)),
                     ("log_softmax", lambda t: torch.log_softmax(t, 1))):
        forward, backward = PAIRS[name]
        tx = torch.from_numpy(x).requires_grad_()
        ty = fn(tx)
        ty.backward(torch.from_numpy(dout))
        out, cache = forward(x)
        np.testing.assert_allclose(out, ty.detach().numpy(), rtol=1e-12, atol=1e-14)
        np.testing.assert_allclose(backward(dout, cache), tx.grad.numpy(), rtol=1e-10, atol=1e-14)


@pytest.mark.parametrize("name", PAIRS)
def test_bad_inputs(name):
    forward, backward = PAIRS[name]
    with pytest.raises(TypeError, match="x must be float32 or float64"):
        forward(np.zeros((2, 3), dtype=np.int64))
    with pytest.raises(ValueError, match="x contains NaN"):
        forward(np.array([[np.inf, 0.0]]))
    with pytest.raises(TypeError, match="x must be a NumPy"):
        forward([[1.0, 2.0]])
    out, cache = forward(np.zeros((2, 3, 4, 4), dtype=np.float32))
    with pytest.raises(ValueError, match="dout must have the forward output's shape"):
        backward(np.zeros((2, 3, 4, 5), np.float32), cache)
    with pytest.raises(TypeError, match="dout must have the forward output's dtype"):
        backward(np.zeros((2, 3, 4, 4), np.float64), cache)


def test_softmax_needs_a_channel_axis():
    with pytest.raises(ValueError, match="at least 2 dimensions"):
        softmax_forward(np.zeros(3))
    with pytest.raises(ValueError, match="at least 2 dimensions"):
        log_softmax_forward(np.zeros(3))
    for forward in (softmax_forward, log_softmax_forward):  # nothing to normalise over
        with pytest.raises(ValueError, match="at least one channel"):
            forward(np.zeros((2, 0, 3)))


@pytest.mark.gpu
@pytest.mark.parametrize("name", PAIRS)
def test_cupy_matches_numpy(name, rng):
    cp = backend.cupy
    forward, backward = PAIRS[name]
    x = rng.standard_normal((2, 5, 6, 7)).astype(np.float32)
    dout = rng.standard_normal(x.shape).astype(np.float32)
    out, cache = forward(x)
    gout, gcache = forward(cp.asarray(x))
    np.testing.assert_allclose(cp.asnumpy(gout), out, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(cp.asnumpy(backward(cp.asarray(dout), gcache)), backward(dout, cache),
                               rtol=1e-5, atol=1e-6)


@pytest.mark.gpu
def test_relu_backward_on_the_gpu_takes_any_layout_and_keeps_infinities_out():
    """The CUDA kernel's masked copy: a transposed dout, and dout = inf where x <= 0 gives 0."""
    cp = backend.cupy
    x = cp.asarray(np.random.default_rng(1).standard_normal((2, 3, 5, 4)))
    out, cache = relu_forward(x)
    dout = cp.asarray(np.random.default_rng(2).standard_normal((2, 4, 5, 3))).transpose(0, 3, 2, 1)
    np.testing.assert_array_equal(cp.asnumpy(relu_backward(dout, cache)), np.where(cp.asnumpy(x) > 0, cp.asnumpy(dout), 0))
    with validate.finite_scans_off():
        dx = relu_backward(cp.full(x.shape, cp.inf), cache)
    np.testing.assert_array_equal(cp.asnumpy(dx), np.where(cp.asnumpy(x) > 0, np.inf, 0))


@pytest.mark.cudasim
def test_relu_backward_cuda_kernel_is_the_masked_copy(rng):
    from minilab.ops import activations
    out = np.maximum(rng.standard_normal(300), 0).astype(np.float32)
    dout = rng.standard_normal(300).astype(np.float32)
    dx = np.full(300, np.nan, np.float32)
    backend.launch(activations._relu_backward_gpu, dx.size, dout, out, dx)
    np.testing.assert_array_equal(dx, np.where(out > 0, dout, 0))

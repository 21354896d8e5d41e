"""Dropout: inverted scaling, the keep rate, channel-wise masks, reproducibility from the
rng, identity in eval, gradient checks, bad inputs."""
import numpy as np
import pytest

from minilab import backend, nn
from minilab.gradcheck import numerical_gradient, relative_error
from minilab.ops.dropout import dropout_backward, dropout_forward


@pytest.mark.parametrize("channelwise", [False, True])
def test_inverted_scaling_and_keep_rate(channelwise):
    x = np.ones((20, 50, 8, 8), dtype=np.float32)
    out, _ = dropout_forward(x, 0.3, np.random.default_rng(0), channelwise=channelwise)
    assert out.dtype == np.float32
    assert set(np.unique(out)) <= {0.0, np.float32(1 / 0.7)}
    assert abs((out > 0).mean() - 0.7) < 0.03
    assert abs(out.mean() - 1.0) < 0.05  # the expectation is the input
    if channelwise:  # whole maps kept or dropped
        assert (out.min(axis=(2, 3)) == out.max(axis=(2, 3))).all()


@pytest.mark.parametrize("flag", [np.True_, np.False_])
def test_numpy_bools_are_flags_like_python_bools(flag, rng):
    x = rng.standard_normal((2, 3, 5, 5))
    for name in ("training", "channelwise"):
        want, _ = dropout_forward(x, 0.5, np.random.default_rng(7), **{name: bool(flag)})
        got, _ = dropout_forward(x, 0.5, np.random.default_rng(7), **{name: flag})
        np.testing.assert_array_equal(got, want)


def test_reproducible_from_the_rng_and_different_across_seeds(rng):
    x = rng.standard_normal((2, 3, 5, 5))
    a, _ = dropout_forward(x, 0.5, np.random.default_rng(7))
    b, _ = dropout_forward(x, 0.5, np.random.default_rng(7))
    c, _ = dropout_forward(x, 0.5, np.random.default_rng(8))
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


@pytest.mark.parametrize("channelwise", [False, True])
def test_eval_and_p0_are_the_identity_and_p1_gives_zeros(channelwise, rng):
    x = rng.standard_normal((2, 3, 4, 4))
    g = np.random.default_rng(0)
    for out, cache in (dropout_forward(x, 0.5, g, training=False, channelwise=channelwise),
                       dropout_forward(x, 0.0, g, channelwise=channelwise)):
        np.testing.assert_array_equal(out, x)
        np.testing.assert_array_equal(dropout_backward(x, cache), x)
    out, cache = dropout_forward(x, 1.0, g, channelwise=channelwise)
    np.testing.assert_array_equal(out, 0)
    np.testing.assert_array_equal(dropout_backward(x, cache), 0)


@pytest.mark.parametrize("channelwise", [False, True])
def test_gradient_check(channelwise, rng):
    x = rng.standard_normal((2, 3, 4, 5))
    out, cache = dropout_forward(x, 0.4, np.random.default_rng(3), channelwise=channelwise)
    dout = rng.standard_normal(out.shape)
    fwd = lambda: dropout_forward(x, 0.4, np.random.default_rng(3), channelwise=channelwise)[0]
    assert relative_error(dropout_backward(dout, cache), numerical_gradient(fwd, x, dout)) < 1e-6


def test_bad_inputs(rng):
    x = rng.standard_normal((2, 3, 4, 4))
    g = np.random.default_rng(0)
    with pytest.raises(ValueError, match="p must be in"):
        dropout_forward(x, 1.5, g)
    with pytest.raises(TypeError, match="p must be a real number"):
        dropout_forward(x, "0.5", g)
    with pytest.raises(TypeError, match="rng must be a numpy.random.Generator"):
        dropout_forward(x, 0.5, np.random.RandomState(0))
    with pytest.raises(TypeError, match="rng"):
        dropout_forward(x, 0.5, 0)
    with pytest.raises(TypeError, match="training"):
        dropout_forward(x, 0.5, g, training="yes")
    with pytest.raises(ValueError, match="channelwise dropout needs"):
        dropout_forward(x[0, 0, 0], 0.5, g, channelwise=True)
    with pytest.raises(TypeError, match="x must be float32 or float64"):
        dropout_forward(x.astype(np.int32), 0.5, g)
    _, cache = dropout_forward(x, 0.5, g)
    with pytest.raises(ValueError, match="dout must have the forward output's shape"):
        dropout_backward(x[:1], cache)


@pytest.mark.parametrize("p", [True, False])
def test_p_must_not_be_a_bool(p, rng):
    """A bool is no drop probability (``dropout=True`` meant as "on" would silently drop
    everything, ``False`` nothing): dropout_forward and Dropout2d refuse it, naming p."""
    x = rng.standard_normal((2, 3, 4, 4))
    with pytest.raises(TypeError, match="p must be a real number, got (True|False)"):
        dropout_forward(x, p, np.random.default_rng(0))
    with pytest.raises(TypeError, match="p must be a real number, got (True|False)"):
        nn.Dropout2d(p)


@pytest.mark.gpu
@pytest.mark.parametrize("channelwise", [False, True])
def test_cupy(channelwise):
    cp = backend.cupy
    x = cp.ones((8, 16, 6, 6), dtype=cp.float32)
    out, cache = dropout_forward(x, 0.25, cp.random.default_rng(0), channelwise=channelwise)
    assert isinstance(out, cp.ndarray) and out.dtype == cp.float32
    assert abs(float((out > 0).mean()) - 0.75) < 0.1
    cp.testing.assert_array_equal(dropout_backward(x, cache), out)
    with pytest.raises(TypeError, match="rng must be a cupy"):
        dropout_forward(x, 0.5, np.random.default_rng(0))


@pytest.mark.parametrize("channelwise", [False, True])
def test_p0_returns_x_itself_and_draws_nothing(channelwise):
    x = np.random.default_rng(1).standard_normal((2, 3, 4, 4))
    g = np.random.default_rng(0)
    before = g.bit_generator.state
    out, cache = dropout_forward(x, 0.0, g, channelwise=channelwise)
    assert out is x and cache[0] is None
    assert g.bit_generator.state == before

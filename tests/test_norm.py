"""Batch normalisation in its three modes: torch's batch_norm, running-statistics updates,
float64 gradient checks of x, gamma and beta, bad inputs."""
import warnings

import numpy as np
import pytest

from minilab import backend
from minilab.gradcheck import numerical_gradient, relative_error
from minilab.ops import norm
from minilab.ops.norm import MODES, batch_norm_backward, batch_norm_forward


def make(rng, shape=(3, 4, 5, 6), dtype=np.float64):
    c = shape[1]
    x = (rng.standard_normal(shape) * 2 + 1).astype(dtype)
    gamma, beta = rng.standard_normal(c).astype(dtype), rng.standard_normal(c).astype(dtype)
    mean, var = rng.standard_normal(c).astype(dtype), (rng.random(c) + 0.5).astype(dtype)
    return x, gamma, beta, mean, var


@pytest.mark.parametrize("mode", MODES)
def test_gradient_check(mode, rng):
    x, gamma, beta, mean, var = make(rng, (2, 3, 4, 3))
    fwd = lambda: batch_norm_forward(x, gamma, beta, mean.copy(), var.copy(), mode=mode)[0]
    out, cache = batch_norm_forward(x, gamma, beta, mean.copy(), var.copy(), mode=mode)
    dout = rng.standard_normal(out.shape)
    dx, dgamma, dbeta = batch_norm_backward(dout, cache)
    for analytic, wrt in ((dx, x), (dgamma, gamma), (dbeta, beta)):
        assert relative_error(analytic, numerical_gradient(fwd, wrt, dout)) < 1e-6


@pytest.mark.parametrize("mode", MODES)
def test_matches_torch(mode, rng):
    torch = pytest.importorskip("torch")
    x, gamma, beta, mean, var = make(rng)
    rm, rv = mean.copy(), var.copy()
    out, cache = batch_norm_forward(x, gamma, beta, rm, rv, mode=mode, momentum=0.3, eps=1e-3)
    t = [torch.from_numpy(a.copy()).requires_grad_(i < 3) for i, a in enumerate((x, gamma, beta, mean, var))]
    ty = torch.nn.functional.batch_norm(t[0], t[3], t[4], t[1], t[2], training=mode == "train",
                                        momentum=0.3, eps=1e-3)
    np.testing.assert_allclose(out, ty.detach().numpy(), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(rm, t[3].numpy(), rtol=1e-12)  # running stats: torch's update
    np.testing.assert_allclose(rv, t[4].numpy(), rtol=1e-12)
    dout = rng.standard_normal(out.shape)
    ty.backward(torch.from_numpy(dout))
    for ours, theirs in zip(batch_norm_backward(dout, cache), t[:3]):
        np.testing.assert_allclose(ours, theirs.grad.numpy(), rtol=1e-10, atol=1e-12)


def test_train_normalises_with_biased_variance_and_updates_with_unbiased(rng):
    x, gamma, beta, mean, var = make(rng)
    rm, rv = mean.copy(), var.copy()
    out, _ = batch_norm_forward(x, np.ones(4), np.zeros(4), rm, rv, mode="train", momentum=0.1, eps=1e-12)
    np.testing.assert_allclose(out.mean(axis=(0, 2, 3)), 0, atol=1e-12)
    np.testing.assert_allclose(out.var(axis=(0, 2, 3)), 1, rtol=1e-9)
    m = 3 * 5 * 6
    np.testing.assert_allclose(rm, 0.9 * mean + 0.1 * x.mean(axis=(0, 2, 3)), rtol=1e-12)
    np.testing.assert_allclose(rv, 0.9 * var + 0.1 * x.var(axis=(0, 2, 3)) * m / (m - 1), rtol=1e-12)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_eval_and_frozen_use_running_statistics_and_leave_them_alone(dtype, rng):
    x, gamma, beta, mean, var = make(rng, dtype=dtype)
    rm, rv = mean.copy(), var.copy()
    outs = [batch_norm_forward(x, gamma, beta, rm, rv, mode=mode)[0] for mode in ("eval", "frozen")]
    expected = gamma[:, None, None] * (x - mean[:, None, None]) / np.sqrt(var[:, None, None] + 1e-5) \
        + beta[:, None, None]
    for out in outs:
        assert out.dtype == dtype
        np.testing.assert_allclose(out, expected, rtol=1e-5 if dtype == np.float32 else 1e-12, atol=1e-5)
    np.testing.assert_array_equal(rm, mean)
    np.testing.assert_array_equal(rv, var)


def test_bad_inputs(rng):
    x, gamma, beta, mean, var = make(rng)
    with pytest.raises(TypeError, match="mode"):
        batch_norm_forward(x, gamma, beta, mean, var)  # the mode is never implicit
    with pytest.raises(ValueError, match="mode must be one of"):
        batch_norm_forward(x, gamma, beta, mean, var, mode="training")
    with pytest.raises(ValueError, match=r"gamma must have shape \(4,\)"):
        batch_norm_forward(x, gamma[:3], beta, mean, var, mode="eval")
    with pytest.raises(TypeError, match="running_var must have the dtype of x"):
        batch_norm_forward(x, gamma, beta, mean, var.astype(np.float32), mode="eval")
    with pytest.raises(ValueError, match="momentum must be in"):
        batch_norm_forward(x, gamma, beta, mean, var, mode="train", momentum=1.5)
    with pytest.raises(ValueError, match="eps"):
        batch_norm_forward(x, gamma, beta, mean, var, mode="train", eps=0)
    with pytest.raises(ValueError, match="more than one value per channel"):
        batch_norm_forward(x[:1, :, :1, :1], gamma, beta, mean, var, mode="train")
    with pytest.raises(ValueError, match="running_var must be >= 0"):
        batch_norm_forward(x, gamma, beta, mean, -var, mode="eval")
    with pytest.raises(ValueError, match="beta contains NaN"):
        batch_norm_forward(x, gamma, beta * np.nan, mean, var, mode="eval")
    out, cache = batch_norm_forward(x, gamma, beta, mean, var, mode="eval")
    with pytest.raises(ValueError, match="dout must have the forward output's shape"):
        batch_norm_backward(out[:1], cache)


def test_float32_statistics_that_overflow_are_redone_in_float64(rng):
    """Deviations of 1e19 square to 1e38: summed in float32 the variance overflowed, and the
    output became beta. Redone in float64 it matches the statistics of the same values in float64."""
    x = (rng.standard_normal((2, 1, 4, 4)) * 1e19 + 1e19).astype(np.float32)
    gamma, beta, mean, var = (np.array([v], np.float32) for v in (1, 0, 0, 1))
    out, _ = batch_norm_forward(x, gamma, beta, mean, var, mode="train")
    x64 = x.astype(np.float64)
    np.testing.assert_allclose(out, (x64 - x64.mean()) / x64.std(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(mean, 0.1 * x64.mean(), rtol=1e-6)
    np.testing.assert_allclose(var, 0.9 + 0.1 * x64.var() * 32 / 31, rtol=1e-6)


def test_float32_gradient_sums_that_overflow_are_redone_in_float64():
    """dout of ±1e38 whose float32 partial sums overflow (inf - inf = NaN) though dbeta and
    dgamma are 0: redone in float64, dx is gamma·inv_std·dout, finite."""
    x = np.tile(np.float32([1, -1]), 16).reshape(2, 1, 4, 4)  # xhat = x, orthogonal to dout
    dout = np.tile(np.float32([1, 1, 1, 1, -1, -1, -1, -1]) * 1e38, 4).reshape(x.shape)
    gamma, beta, mean, var = (np.array([v], np.float32) for v in (1, 0, 0, 1))
    _, cache = batch_norm_forward(x, gamma, beta, mean, var, mode="train")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the float32 overflow is handled, not reported
        dx, dgamma, dbeta = batch_norm_backward(dout, cache)
    np.testing.assert_allclose(dx, dout, rtol=1e-4)
    np.testing.assert_array_equal(dgamma, 0)
    np.testing.assert_array_equal(dbeta, 0)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("mode", MODES)
def test_eps_must_be_a_normal_number_of_the_dtype(dtype, mode):
    """eps = 1e-50 passed as > 0 but is 0 in float32: a channel of equal values (or a
    running variance of 0) gave 0 · inf = NaN. The smallest normal number still works."""
    x, one = np.ones((2, 1, 2, 2), dtype), np.ones(1, dtype)
    tiny = float(np.finfo(dtype).tiny)
    with pytest.raises(ValueError, match=f"eps must be >= {tiny}, got 1e-320"):
        batch_norm_forward(x, one, one, one, one * 0, mode=mode, eps=1e-320)
    if dtype == np.float32:
        with pytest.raises(ValueError, match="eps must be >= "):
            batch_norm_forward(x, one, one, one, one * 0, mode=mode, eps=1e-50)
    out, cache = batch_norm_forward(x, one, one, one, one * 0, mode=mode, eps=tiny)
    np.testing.assert_array_equal(out, 1)
    for grad in batch_norm_backward(x, cache):
        assert np.isfinite(grad).all()


@pytest.mark.parametrize("frozen", ["running_mean", "running_var"])
def test_train_refuses_read_only_running_statistics_before_updating_either(frozen, rng):
    x, gamma, beta, mean, var = make(rng)
    stats = {"running_mean": mean.copy(), "running_var": var.copy()}
    stats[frozen].flags.writeable = False
    with pytest.raises(ValueError, match=f"{frozen} must be writeable"):
        batch_norm_forward(x, gamma, beta, stats["running_mean"], stats["running_var"], mode="train")
    np.testing.assert_array_equal(stats["running_mean"], mean)  # neither was touched
    np.testing.assert_array_equal(stats["running_var"], var)
    batch_norm_forward(x, gamma, beta, stats["running_mean"], stats["running_var"], mode="eval")  # only read


@pytest.mark.cudasim
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("shape", [(2, 3, 4, 5), (2, 2, 17, 19)])  # 40 values per channel; 646 > _BLOCK
def test_cuda_kernels_match_the_array_expressions(mode, shape, rng):
    """The GPU's two kernels (run here on NumPy arrays, under the simulator when there is no
    GPU) give the NumPy expressions' output, running statistics and gradients, also where a
    block's threads each take several values of their channel."""
    x, gamma, beta, mean, var = make(rng, shape)
    stats, stats_k = (mean.copy(), var.copy()), (mean.copy(), var.copy())
    out, cache = batch_norm_forward(x, gamma, beta, *stats, mode=mode, momentum=0.3, eps=1e-3)
    out_k, cache_k = norm._gpu_forward(x, gamma, beta, *stats_k, mode, 0.3, 1e-3)
    np.testing.assert_allclose(out_k, out, rtol=1e-12, atol=1e-12)
    for ours, expected in zip(stats_k, stats):
        np.testing.assert_allclose(ours, expected, rtol=1e-12)
    dout = rng.standard_normal(x.shape)
    grads = batch_norm_backward(dout, cache)
    for ours, expected in zip(norm._gpu_backward(dout, *cache_k), grads):
        np.testing.assert_allclose(ours, expected, rtol=1e-10, atol=1e-12)


@pytest.mark.gpu
@pytest.mark.parametrize("mode", MODES)
def test_cupy_matches_numpy(mode, rng):
    cp = backend.cupy
    args = make(rng, dtype=np.float32)
    out, cache = batch_norm_forward(*[a.copy() for a in args], mode=mode)
    gout, gcache = batch_norm_forward(*[cp.asarray(a) for a in args], mode=mode)
    np.testing.assert_allclose(cp.asnumpy(gout), out, rtol=1e-4, atol=1e-5)
    dout = rng.standard_normal(out.shape).astype(np.float32)
    for g, c in zip(batch_norm_backward(cp.asarray(dout), gcache), batch_norm_backward(dout, cache)):
        np.testing.assert_allclose(cp.asnumpy(g), c, rtol=1e-4, atol=1e-4)

"""Helpers for the nn tests: gradient checks of layers and models on sampled entries."""
import contextlib

import numba
import numpy as np

from minilab.gradcheck import numerical_gradient

try:  # tiny float64 GEMMs run fastest on one BLAS thread; waiting threads on a busy machine
    from threadpoolctl import threadpool_limits  # can make them 50x slower
except ImportError:  # pragma: no cover - optional
    threadpool_limits = None


def scaled_error(analytic, numeric):
    """max |a - n| / max(|a| + |n|): rounding in the central difference is absolute (about
    1e-16·|L|/h), so entries near zero are compared on the scale of the whole gradient."""
    a, n = np.asarray(analytic, np.float64), np.asarray(numeric, np.float64)
    assert a.shape == n.shape, (a.shape, n.shape)
    return float(np.abs(a - n).max() / max(np.abs(a).max() + np.abs(n).max(), 1e-12))


def sampled_gradient(f, x, dout, index, h=1e-6):
    """Central differences of ``sum(f() * dout)`` at the flat positions ``index`` of ``x``:
    :func:`minilab.gradcheck.numerical_gradient` on the vector of those entries, written
    back into ``x`` before each evaluation."""
    flat = x.reshape(-1)
    assert np.shares_memory(flat, x), "x must be contiguous"
    entries = flat[index].copy()

    def g():
        flat[index] = entries
        return f()

    grad = numerical_gradient(g, entries, dout, h)
    flat[index] = entries
    return grad


def check_module(module, x, rng, samples=None, tol=1e-6, reset=lambda: None):
    """Check ``module.backward`` (dx and every parameter's grad) against central differences.

    ``samples=None`` checks every entry, an int checks that many random entries per array.
    ``reset()`` is called before each forward (to replay dropout masks). Returns the worst
    :func:`scaled_error`; asserts it is below ``tol``.
    """
    def f():
        reset()
        return module.forward(x)

    threads = numba.get_num_threads()
    numba.set_num_threads(1)  # the same for Numba's parallel loops on tiny arrays
    try:
        with threadpool_limits(1, "blas") if threadpool_limits else contextlib.nullcontext():
            return _check(module, x, rng, samples, tol, f)
    finally:
        numba.set_num_threads(threads)


def _check(module, x, rng, samples, tol, f):
    out = f()
    dout = rng.standard_normal(out.shape)
    module.zero_grad()
    dx = module.backward(dout)
    worst = 0.0
    for name, array, analytic in [("x", x, dx)] + [(n, p.data, p.grad) for n, p in module.named_parameters()]:
        n = array.size
        index = np.arange(n) if samples is None or samples >= n else rng.choice(n, samples, replace=False)
        numeric = sampled_gradient(f, array, dout, index)
        err = scaled_error(analytic.reshape(-1)[index], numeric)
        assert err < tol, f"gradient of {name}: relative error {err:.2e}"
        worst = max(worst, err)
    return worst


def jitter_biases(module, rng, scale=0.1):
    """Give every zero-initialised bias a small random value, so that no pre-activation sits
    exactly on a ReLU's kink (where the central difference is half the one-sided slope)."""
    for name, p in module.named_parameters():
        if name.endswith("bias"):
            p.data[...] = scale * rng.standard_normal(p.data.shape)
    return module

"""Numerical gradient checks (central differences), for tests and for the lessons.

For a scalar function L(x), the central difference

    dL/dx_i ≈ (L(x + h e_i) - L(x - h e_i)) / 2h

has error O(h²). In float64 with h = 1e-6 an analytic gradient that is right agrees to a
relative error of about 1e-5 or better (worst on entries whose gradient is near 0, where
the rounding of L dominates the difference); a wrong one is typically off by 1e-2 or more.
Every backward in minilab is checked this way.
"""
import numpy as np


def numerical_gradient(f, x, dout, h=1e-6):
    """Central-difference gradient of ``sum(f(x) * dout)`` with respect to ``x``.

    Parameters
    ----------
    f : callable
        Takes no argument and returns an array; it must read ``x`` (which is perturbed in
        place, element by element, and restored).
    x : ndarray, float64
        The input to differentiate with respect to.
    dout : ndarray
        Upstream gradient, same shape as ``f()``: the check is of the vector-Jacobian product.
    h : float
        Step size.

    Returns
    -------
    ndarray, the same shape as ``x``.
    """
    if not isinstance(x, np.ndarray) or x.dtype != np.float64:
        raise TypeError(f"x must be a float64 NumPy array (central differences need its precision), "
                        f"got {getattr(x, 'dtype', type(x).__name__)}")
    grad = np.zeros_like(x)
    it = np.nditer(x, flags=["multi_index"], op_flags=["readwrite"])
    for _ in it:
        i = it.multi_index
        old = x[i]
        x[i] = old + h
        plus = np.sum(f() * dout)
        x[i] = old - h
        minus = np.sum(f() * dout)
        x[i] = old
        grad[i] = (plus - minus) / (2 * h)
    return grad


def relative_error(a, b):
    """max |a - b| / max(|a| + |b|, 1e-12), elementwise maximum: 0 when equal, 1 when opposite."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:  # broadcasting could make a wrong shape look right
        raise ValueError(f"a and b must have one shape, got {a.shape} and {b.shape}")
    return float(np.max(np.abs(a - b) / np.maximum(np.abs(a) + np.abs(b), 1e-12)))

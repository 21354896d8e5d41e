import numpy as np
import pytest

from minilab.gradcheck import numerical_gradient, relative_error


def test_numerical_gradient_of_known_function(rng):
    x = rng.standard_normal((3, 4))
    dout = rng.standard_normal((3, 4))
    num = numerical_gradient(lambda: np.sin(x) * x, x, dout)
    exact = (np.cos(x) * x + np.sin(x)) * dout
    assert relative_error(num, exact) < 1e-7


def test_relative_error_detects_a_wrong_gradient(rng):
    x = rng.standard_normal(5)
    num = numerical_gradient(lambda: x ** 2, x, np.ones(5))
    assert relative_error(num, 2 * x) < 1e-7
    assert relative_error(num, 2.1 * x) > 1e-2


def test_checks_refuse_what_would_make_them_meaningless():
    with pytest.raises(TypeError, match="x must be a float64 NumPy array"):
        numerical_gradient(lambda: np.ones(2), np.ones(2, np.float32), np.ones(2))
    with pytest.raises(ValueError, match="a and b must have one shape"):
        relative_error(np.ones((3, 1)), np.ones((3, 4)))  # broadcasting would give 0


def test_relative_error_is_the_worst_entry_and_scale_free():
    """One entry opposite, the rest equal and tiny: 1, whichever argument comes first (not a
    mean over entries, not signed, not an absolute error on small gradients). A weaker
    measure would let every gradient check in the suite pass."""
    a = np.array([1e-3, 2e-3, 0.0, 3e-4])
    b = a.copy()
    b[3] = -a[3]
    assert relative_error(a, b) == 1.0 and relative_error(b, a) == 1.0

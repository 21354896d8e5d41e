import numpy as np

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

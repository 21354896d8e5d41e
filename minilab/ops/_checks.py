"""Argument checks shared by the ops in this package (beside minilab.validate)."""
import numbers

from .. import validate


def upstream_gradient(dout, shape, dtype, name="dout"):
    """Check that the upstream gradient ``dout`` matches the forward output's shape and dtype."""
    validate.float_array(name, dout, ndim=len(shape))
    if tuple(dout.shape) != tuple(shape):
        raise ValueError(f"{name} must have the forward output's shape {tuple(shape)}, got {tuple(dout.shape)}")
    if dout.dtype != dtype:
        raise TypeError(f"{name} must have the forward output's dtype {dtype}, got {dout.dtype}")
    return dout


def unit_interval(name, value):
    """Check that ``value`` is a real number in [0, 1]; returns it as a float."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {value!r}")
    if not 0 <= value <= 1:
        raise ValueError(f"{name} must be in [0, 1], got {value}")
    return float(value)

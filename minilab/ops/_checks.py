"""Argument checks shared by the ops in this package (beside minilab.validate)."""
import numbers

import numpy as np

from .. import validate

#: The bound on sizes, steps and rates that reach the ops' Numba kernels, which take Python
#: ints as int64 (and fail past 2**63 with an error that names nothing) or store window
#: offsets as int32; no image comes near it.
INT32_MAX = 2**31 - 1


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


def epsilon(value, dtype):
    """Check batch normalisation's ``eps``: a real number no smaller than the smallest normal
    number of ``dtype`` (1.2e-38 for float32), so that ``1 / sqrt(var + eps)`` stays finite
    in ``dtype`` even where ``var = 0``; returns it as a float."""
    return validate.real("eps", value, minimum=float(np.finfo(dtype).tiny))

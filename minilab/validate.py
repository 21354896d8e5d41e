"""Input checks shared by every public function.

Numba does not check bounds, so a wrong shape reaching a kernel is a segfault or a silent
wrong answer. Public functions call these helpers first; each raises ``TypeError`` (wrong
kind of thing) or ``ValueError`` (right kind, wrong value) with a message that names the
argument, what was expected and what was given.
"""
import contextlib
import math
import numbers
import threading

import numpy as np

from . import backend

FLOATS = (np.float32, np.float64)
_scans = threading.local()  # .off: True inside finite_scans_off() on this thread


def array(name, x):
    """Check that ``x`` is a NumPy or CuPy array (not a list, not a scalar); returns it."""
    if not (isinstance(x, np.ndarray) or backend.is_gpu_array(x)):
        raise TypeError(f"{name} must be a NumPy or CuPy array, got {type(x).__name__}")
    return x


def float_array(name, x, ndim=None, finite=True, shape=None):
    """Check that ``x`` is a float32/float64 NumPy or CuPy array of ``ndim`` dimensions, or of
    ``shape`` (a tuple; None on an axis allows any size there).

    ``finite=True`` also rejects NaN and infinity (a scan of every element, skipped inside
    :func:`finite_scans_off`). Returns ``x`` unchanged.
    """
    array(name, x)
    if ndim is not None and x.ndim != ndim:
        raise ValueError(f"{name} must have {ndim} dimensions, got shape {tuple(x.shape)}")
    if shape is not None and (x.ndim != len(shape) or any(s not in (None, t) for s, t in zip(shape, x.shape))):
        wanted = ", ".join("any" if s is None else str(s) for s in shape)
        raise ValueError(f"{name} must have shape ({wanted}{',' if len(shape) == 1 else ''}), "
                         f"got shape {tuple(x.shape)}")
    if x.dtype not in FLOATS:
        raise TypeError(f"{name} must be float32 or float64, got dtype {x.dtype}")
    if finite and scans_on() and not bool(backend.array_module(x).isfinite(x).all()):
        raise ValueError(f"{name} contains NaN or infinity")
    return x


def scans_on():
    """False inside :func:`finite_scans_off` on this thread: whether checks that read every
    value of an array (and so, on a GPU, wait for it) run."""
    return not getattr(_scans, "off", False)


@contextlib.contextmanager
def finite_scans_off():
    """Within this block (on this thread) :func:`float_array` skips its NaN/infinity scan,
    and batch normalisation its check that the running variance is >= 0; the type, dtype
    and shape checks stay.

    A network checks its input once and runs its layers inside this block: otherwise each
    layer's op scans its input again, an extra pass over memory per op and, on a GPU, a
    device-to-host synchronisation per op that leaves the GPU idle while Python waits.
    Values inside a network come from finite inputs and weights; training still stops at a
    non-finite loss.
    """
    before = getattr(_scans, "off", False)
    _scans.off = True
    try:
        yield
    finally:
        _scans.off = before


def float_dtype(name, dtype):
    """``dtype`` as a NumPy dtype, float32 or float64 (what the ops compute in)."""
    try:
        dt = np.dtype(dtype)
    except TypeError:
        raise TypeError(f"{name} must be float32 or float64, got {dtype!r}") from None
    if dt not in FLOATS:
        raise TypeError(f"{name} must be float32 or float64, got {dt}")
    return dt


def writeable(name, x):
    """Check that ``x``, an array a function writes in place, is not a read-only NumPy array
    (a Numba kernel has no code for one: a raw TypingError). CuPy arrays have no such flag;
    returns ``x``."""
    if isinstance(x, np.ndarray) and not x.flags.writeable:
        raise ValueError(f"{name} must be writeable (it is written in place), got a read-only array")
    return x


def label_array(name, x):
    """Check that ``x`` is a NumPy or CuPy array of an integer dtype (not bool); returns it."""
    array(name, x)
    if x.dtype == bool or not np.issubdtype(x.dtype, np.integer):
        raise TypeError(f"{name} must have an integer dtype, got dtype {x.dtype}")
    return x


def integer(name, value, minimum=None, maximum=None):
    """Check that ``value`` is an integer (not a bool) in [``minimum``, ``maximum``] (either
    bound optional); returns it as an int."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an integer, got {value!r}")
    if minimum is not None and value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    if maximum is not None and value > maximum:
        raise ValueError(f"{name} must be <= {maximum}, got {value}")
    return int(value)


def real(name, value, positive=False, minimum=None, maximum=None):
    """Check that ``value`` is a finite real number (not a bool), > 0 when ``positive``,
    >= ``minimum`` and <= ``maximum`` when given; returns it as a float.

    Any ``numbers.Real`` is taken (a ``Fraction``, a Python int of any size) and judged as
    the float it becomes: one too large for a float is not finite, one that rounds to 0 is
    not > 0."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {value!r}")
    try:
        number = float(value)
    except OverflowError:  # e.g. 10**400
        number = math.inf
    if not math.isfinite(number) or (positive and number <= 0):
        raise ValueError(f"{name} must be a finite number{' > 0' if positive else ''}, got {value}")
    if minimum is not None and number < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    if maximum is not None and number > maximum:
        raise ValueError(f"{name} must be <= {maximum}, got {value}")
    return number


def boolean(name, value):
    """Check that ``value`` is a bool (Python's or NumPy's); returns it as a bool."""
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be True or False, got {value!r}")
    return bool(value)


def positive(name, value):
    """Check that ``value`` is a finite real number > 0; returns it as a float."""
    return real(name, value, positive=True)


def pair(name, value, minimum=0, maximum=None):
    """An int or a pair of ints (e.g. padding), each in [``minimum``, ``maximum``] (no upper
    bound when ``maximum`` is None), as a tuple of two."""
    sequence = isinstance(value, (tuple, list)) or (isinstance(value, np.ndarray) and value.ndim == 1)
    values = tuple(value) if sequence else (value, value)
    if len(values) != 2:
        raise ValueError(f"{name} must be an int or a pair of ints, got {value!r}")
    return tuple(integer(name, v, minimum, maximum) for v in values)


def choice(name, value, options):
    """Check that ``value`` is one of ``options``."""
    if value not in options:
        raise ValueError(f"{name} must be one of {sorted(options)}, got {value!r}")
    return value

"""Which array module (NumPy or CuPy) and which device.

minilab writes array code once against ``xp``, the module that owns the arrays::

    xp = backend.array_module(x, w)
    y = xp.tensordot(x, w, ...)

and it runs unchanged on NumPy (CPU) and CuPy (GPU). This is the only module that imports
CuPy or ``numba.cuda``; both are optional. Nothing moves between host and device unless the
caller asks for it with :func:`to_device`.

Numba CUDA kernels are defined with ``backend.cuda.jit`` beside the function that calls
them, and queued with :func:`launch`, which hands them CuPy arrays without a
synchronisation. Without a GPU they still run under Numba's CUDA simulator
(``NUMBA_ENABLE_CUDASIM=1``), which takes NumPy arrays: :func:`cudasim` says whether it is on.
"""
import os
import warnings

import numpy as np

try:  # optional: the GPU array module
    import cupy
except ImportError:  # pragma: no cover - depends on the machine
    cupy = None

try:  # optional: numba-cuda (or Numba's built-in copy); also provides the simulator
    from numba import cuda
except ImportError:  # pragma: no cover - depends on the machine
    cuda = None

try:  # what numba-cuda launches kernels with (see launch)
    import cuda.core as _core
except ImportError:  # pragma: no cover - depends on the machine
    _core = None

DEVICES = ("cpu", "gpu", "auto")
THREADS = 128  # threads per block of a one-dimensional launch
_warned_fallback = False
_configs = {}  # (grid, block) -> cuda.core launch configuration, see launch
_streams = {}  # CuPy stream pointer -> cuda.core's object for that stream
_kernels = {}  # (kernel, argument types) -> compiled kernel, see launch


def cudasim():
    """True when Numba's CUDA simulator is on (``NUMBA_ENABLE_CUDASIM=1``)."""
    return cuda is not None and os.environ.get("NUMBA_ENABLE_CUDASIM", "0") == "1"


def gpu_available():
    """True when CuPy is installed and sees at least one CUDA device."""
    if cupy is None:
        return False
    try:
        return cupy.cuda.runtime.getDeviceCount() > 0
    except Exception:  # no driver, no device, or a broken install
        return False


def is_gpu_array(x):
    """True for a CuPy array."""
    return cupy is not None and isinstance(x, cupy.ndarray)


def array_module(*arrays):
    """The array module (``numpy`` or ``cupy``) that owns ``arrays``.

    ``None`` entries are ignored; anything that is not a CuPy array counts as NumPy.
    Mixing NumPy and CuPy arrays raises ``TypeError``: minilab never copies between host
    and device behind the caller's back.
    """
    kinds = {is_gpu_array(a) for a in arrays if a is not None}
    if len(kinds) > 1:
        where = ", ".join(f"argument {i}: {'cupy' if is_gpu_array(a) else 'numpy'}"
                          for i, a in enumerate(arrays) if a is not None)
        raise TypeError(f"arrays must all be NumPy or all be CuPy, got a mix ({where}); "
                        "move them with minilab.backend.to_device first")
    return cupy if kinds == {True} else np


def resolve_device(device):
    """Turn ``"cpu" | "gpu" | "auto"`` into ``"cpu"`` or ``"gpu"``.

    ``"auto"`` picks the GPU when one is usable and otherwise falls back to the CPU, saying so
    once per process. ``"gpu"`` without a usable GPU raises ``RuntimeError``.
    """
    global _warned_fallback
    if device not in DEVICES:
        raise ValueError(f"device must be one of {DEVICES}, got {device!r}")
    if device == "cpu":
        return "cpu"
    if gpu_available():
        return "gpu"
    if device == "gpu":
        reason = "CuPy is not installed" if cupy is None else "CuPy sees no CUDA device"
        raise RuntimeError(f"device='gpu' was requested but {reason}; "
                           "install the 'gpu' extra on a machine with an NVIDIA GPU, or use device='cpu'")
    if not _warned_fallback:
        warnings.warn("device='auto': no usable GPU, running on the CPU", RuntimeWarning, stacklevel=2)
        _warned_fallback = True
    return "cpu"


def to_device(x, device):
    """Return ``x`` as an array on ``device`` (``"cpu"``, ``"gpu"`` or ``"auto"``).

    An array already on that device is returned as it is, without a copy.
    """
    if resolve_device(device) == "gpu":
        return cupy.asarray(x)
    return cupy.asnumpy(x) if is_gpu_array(x) else np.asarray(x)


def to_numpy(x):
    """``x`` as a NumPy array (copied from the GPU when it is a CuPy array)."""
    return cupy.asnumpy(x) if is_gpu_array(x) else np.asarray(x)


def launch(kernel, threads, *args):
    """Queue the Numba CUDA ``kernel`` with ``args`` on CuPy's current stream, after the work
    CuPy has queued there and without waiting for it.

    ``threads`` is the number of threads, one per element, in blocks of :data:`THREADS`, or a
    ``(grid, block)`` pair. Where there are no threads or no blocks (0 threads, a grid with a
    0 in it) nothing is launched, as CUDA refuses a grid of no blocks. Under the simulator
    the arguments are NumPy arrays and pass through to Numba.

    On a GPU the kernel Numba compiled for these argument types is launched here, with the
    parameters Numba would pass (for an array: two null pointers, its size, item size,
    address, shape and strides in bytes; a number as it is), not through Numba's own
    launch: that one prepares every argument in Python, about 40 µs a launch with three
    arrays and 80 µs with eight on an NVIDIA H200's host (numba-cuda 0.30), which bounds a
    small network, and handed CuPy arrays it also waits for CuPy's stream first.
    """
    if isinstance(threads, (int, np.integer)):
        grid, block = (int(threads) + THREADS - 1) // THREADS, THREADS
    else:
        grid, block = threads
    if 0 in (grid if isinstance(grid, tuple) else (grid,)):
        return
    if not any(is_gpu_array(a) for a in args):  # the simulator's NumPy arrays
        kernel[grid, block](*args)
        return
    if _core is None:
        raise RuntimeError("launching Numba kernels on CuPy arrays needs numba-cuda >= 0.30 "
                           "(pip install 'minilab[gpu]')")
    params = []
    for a in args:
        if isinstance(a, np.ndarray):
            raise TypeError("backend.launch takes CuPy arrays on the GPU, got a NumPy array")
        if is_gpu_array(a):
            params += (0, 0, a.size, a.itemsize, a.data.ptr, *a.shape, *a.strides)
        else:
            params.append(a)
    config = _configs.get((grid, block))
    if config is None:
        config = _configs[grid, block] = _core.LaunchConfig(grid=grid, block=block)
    pointer = cupy.cuda.get_current_stream().ptr
    stream = _streams.get(pointer)
    if stream is None:
        stream = _streams[pointer] = _core.Stream.from_handle(pointer)
    _core.launch(stream, config, _compiled(kernel, args), *params)


def _compiled(kernel, args):
    """The compiled ``kernel`` (a ``cuda.core`` kernel) for the Numba types of ``args``, which
    an array's dtype, dimensions and contiguity decide, and a number's Python type.

    An array's layout is taken from CuPy's flags, not from Numba's reading of its strides:
    numba-cuda 0.30 compares them with the dtype's width in bits, so it types a float32 view
    whose step is 32 bytes (``x[::8]``) as C-contiguous, and a C-layout kernel ignores strides.
    """
    key = (kernel, *((a.dtype.char, a.ndim, a.flags.c_contiguous, a.flags.f_contiguous)
                     if is_gpu_array(a) else type(a) for a in args))
    found = _kernels.get(key)
    if found is None:
        types = tuple(kernel.typeof_pyval(a).copy(layout="C" if a.flags.c_contiguous else
                                                  "F" if a.flags.f_contiguous else "A")
                      if is_gpu_array(a) else kernel.typeof_pyval(a) for a in args)
        found = _kernels[key] = kernel.compile(types)._codelibrary.get_cufunc().kernel
    return found

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

DEVICES = ("cpu", "gpu", "auto")
THREADS = 128  # threads per block of a one-dimensional launch
_warned_fallback = False
_streams = {}  # CuPy stream pointer -> the Numba object for that stream
_views = {}  # (device, address, shape, strides, dtype) -> Numba view, see numba_view


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


def numba_view(x):
    """A Numba device array viewing the CuPy array ``x`` (anything else is returned as it is).

    Handed a CuPy array, Numba reads its ``__cuda_array_interface__``, which names CuPy's
    current stream, and synchronises that stream first: the host waits for every kernel
    queued so far, at every launch, and can never run ahead of the GPU. The view made here
    leaves the stream out, so nothing waits; :func:`launch` keeps the order instead by
    queueing on CuPy's stream.

    A view is only an address, a shape, strides and a dtype, without a reference to the
    memory's owner, so views are kept by those and reused: making one cost 10.8 µs on an
    NVIDIA H100, finding a kept one 0.6 µs on an H200 (numba-cuda 0.30). Memory freed and
    handed to a new array of the same layout is seen correctly through the same view; the
    caller keeps ``x`` alive while its kernels are queued, as for any CuPy array.
    """
    if not is_gpu_array(x):
        return x
    key = (x.device.id, x.data.ptr, x.shape, x.strides, x.dtype.char)
    view = _views.get(key)
    if view is None:
        if len(_views) >= 4096:
            _views.clear()
        interface = dict(x.__cuda_array_interface__, stream=None)
        view = _views[key] = cuda.from_cuda_array_interface(interface, owner=None, sync=False)
    return view


def launch(kernel, threads, *args):
    """Queue the Numba CUDA ``kernel`` with ``args`` on CuPy's current stream, after the work
    CuPy has queued there and without waiting for it (:func:`numba_view`).

    ``threads`` is the number of threads, one per element, in blocks of :data:`THREADS`, or a
    ``(grid, block)`` pair. Where there are no threads or no blocks (0 threads, a grid with a
    0 in it) nothing is launched, as CUDA refuses a grid of no blocks. Under the simulator
    the arguments are NumPy arrays and pass through.
    """
    if isinstance(threads, (int, np.integer)):
        grid, block = (int(threads) + THREADS - 1) // THREADS, THREADS
    else:
        grid, block = threads
    if 0 in (grid if isinstance(grid, tuple) else (grid,)):
        return
    stream = 0  # the default stream, which is CuPy's null stream
    if cupy is not None and not cudasim():
        pointer = cupy.cuda.get_current_stream().ptr
        if pointer:
            stream = _streams.get(pointer) or _streams.setdefault(pointer, cuda.external_stream(pointer))
    kernel[grid, block, stream](*(numba_view(a) for a in args))

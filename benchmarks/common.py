"""Timing, memory and result-table helpers shared by the benchmark scripts.

Timings on a shared machine swing from run to run, so every script measures minilab and
its reference in the same run, interleaved, and reports medians and ratios.
"""
import json
import os
import platform
import time
import tracemalloc
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).parent / "results"


def machine():
    """A one-line description of the machine: CPU model, cores, and the GPU when there is one."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    text = f"{cpu}, {os.cpu_count()} cores"
    try:
        import cupy
        props = cupy.cuda.runtime.getDeviceProperties(0)
        text += f", GPU {props['name'].decode()} (CUDA runtime {cupy.cuda.runtime.runtimeGetVersion()})"
    except Exception:
        text += ", no GPU"
    return text


def openblas_core():
    """The OpenBLAS kernel family NumPy runs (e.g. 'Haswell', 'SkylakeX'), or 'unknown'."""
    try:
        import ctypes
        libs = Path(np.__file__).parent.parent / "numpy.libs"
        lib = ctypes.CDLL(str(next(libs.glob("libscipy_openblas*.so*"))))
        get = getattr(lib, "scipy_openblas_get_corename64_")
        get.restype = ctypes.c_char_p
        return get().decode()
    except Exception:  # another BLAS, another packaging: not essential
        return "unknown"


def cpu_kernels(torch=None):
    """(sentence, file-name suffix) naming the instruction sets each side's CPU kernels use.

    NumPy's OpenBLAS picks its kernels from the CPU unless ``OPENBLAS_CORETYPE`` forces a
    family; torch's oneDNN convolutions use the CPU's best unless ``ONEDNN_MAX_CPU_ISA``
    caps them, and its own vector code follows ``ATEN_CPU_CAPABILITY``. Both variables must
    be set before the process starts. On an AVX-512 CPU with ``OPENBLAS_CORETYPE=Haswell``
    the GEMMs of minilab run AVX2 code while torch's run AVX-512: set the torch variables
    too (``ONEDNN_MAX_CPU_ISA=AVX2 ATEN_CPU_CAPABILITY=avx2``) to compare like with like.
    """
    text = f"OpenBLAS kernels {openblas_core()}"
    suffix = "_" + os.environ["OPENBLAS_CORETYPE"].lower() if os.environ.get("OPENBLAS_CORETYPE") else ""
    if torch is not None:
        capability = torch.backends.cpu.get_cpu_capability()
        onednn = os.environ.get("ONEDNN_MAX_CPU_ISA", "")
        text += f"; torch vector code {capability}, oneDNN ISA {onednn or 'the CPU best'}"
        if onednn:
            suffix += "_torch" + onednn.lower()
    return text, suffix


def torch_plain_float32(torch):
    """Turn off TF32 in torch's cuDNN and cuBLAS calls, so the GPU reference computes in the
    same IEEE float32 as minilab (TF32 rounds operands to 10 mantissa bits and runs faster)."""
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False


def median_ms(fn, repeat=5, warmup=1, sync=None):
    """Median wall time of ``fn()`` in milliseconds over ``repeat`` runs after ``warmup``.

    ``sync`` (e.g. a CUDA synchronise) is called after each run so GPU work is counted.
    """
    for _ in range(warmup):
        fn()
        if sync:
            sync()
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        if sync:
            sync()
        times.append((time.perf_counter() - t) * 1e3)
    return float(np.median(times))


def interleaved_ms(fns, repeat=5, warmup=1, sync=None):
    """Median ms of each callable in the dict ``fns``, run in turn so noise hits all alike."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    if sync:  # the warm-up's queued device work must not land in the first timed run
        sync()
    times = {name: [] for name in fns}
    for _ in range(repeat):
        for name, fn in fns.items():
            t = time.perf_counter()
            fn()
            if sync:
                sync()
            times[name].append((time.perf_counter() - t) * 1e3)
    return {name: float(np.median(t)) for name, t in times.items()}


def peak_mib(fn):
    """Peak memory (MiB) that NumPy and Python allocate while ``fn()`` runs (tracemalloc)."""
    tracemalloc.start()
    try:
        fn()
        return tracemalloc.get_traced_memory()[1] / 2**20
    finally:
        tracemalloc.stop()


def write_results(name, rows, notes=""):
    """Print ``rows`` (a list of dicts with the same keys) as a table and save it.

    Writes ``results/<name>.json`` and ``results/<name>.md`` with the machine named. The
    Markdown table leaves out a column that is NaN in every row (one measured only on the
    CPU, in a GPU run); the JSON keeps it.
    """
    empty = lambda k: all(isinstance(r[k], float) and r[k] != r[k] for r in rows)
    header = [k for k in rows[0] if not empty(k)]
    fmt = lambda v: f"{v:.3g}" if isinstance(v, float) else str(v)
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(fmt(r[k]) for k in header) + " |" for r in rows]
    table = "\n".join(lines)
    print(table)
    RESULTS.mkdir(exist_ok=True)
    info = {"machine": machine(), "date": time.strftime("%Y-%m-%d"), "notes": notes, "rows": rows}
    (RESULTS / f"{name}.json").write_text(json.dumps(info, indent=1))
    (RESULTS / f"{name}.md").write_text(
        f"# {name}\n\nMachine: {info['machine']}. Date: {info['date']}.\n\n{notes}\n\n{table}\n")

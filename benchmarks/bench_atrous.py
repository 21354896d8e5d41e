"""Atrous convolution: every method against torch's conv2d(dilation=rate), float32.

Shapes from DeepLab (§3.1-3.2, §4): (a) LargeFOV fc6, (b) a rate-2 ResNet block, (c) a
small-channel layer with a batch of 4 at rates 1 and 4, (d) ASPP-L's four branches (rates
6, 12, 18, 24, summed); and layers of the models at a 321×321 input, where ``method="auto"``
(also timed) chooses among "sparse", "shifted" and, on the CPU, "winograd" (the table's
header says which it ran): (e) VGG's conv1_1 on the RGB image, (f) ResNet's 7×7 stride-2
stem, (g) VGG's conv2_1, (h) LargeFOV's fc6 on the 41×41 map, (i) VGG's conv3_2 and (j)
its conv1_2.
For each method: median ms of the forward and of forward+backward,
GFLOP/s counted as useful work (2·N·F·C·kh·kw·Ho·Wo per pass, three passes for
forward+backward whatever the method really computes), the ratio to torch measured in the
same run (below 1 = faster than torch), and the peak memory allocated during
forward+backward (tracemalloc on the CPU, the CuPy pool's high-water mark on the GPU).

    python benchmarks/bench_atrous.py                # CPU, against torch CPU
    python benchmarks/bench_atrous.py --device gpu   # CuPy, against torch CUDA (cuDNN)
    python benchmarks/bench_atrous.py --threads 1    # one thread for OpenBLAS, Numba and torch

On a CPU with AVX-512, OpenBLAS may pick its AVX2 ("Haswell") kernels while torch's oneDNN
uses AVX-512; ``OPENBLAS_CORETYPE=SkylakeX`` selects OpenBLAS's AVX-512 kernels. The
OpenBLAS core type in use is written into the results.
"""
import argparse
import os
import sys
from pathlib import Path

if __name__ == "__main__" and "--threads" in sys.argv:  # must be set before NumPy/Numba start
    _threads = sys.argv[sys.argv.index("--threads") + 1]
    for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "NUMBA_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[_var] = _threads

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.common import cpu_kernels, interleaved_ms, peak_mib, torch_plain_float32, write_results  # noqa: E402
from minilab import backend  # noqa: E402
from minilab.ops.atrous import (METHODS, atrous_conv2d_backward, atrous_conv2d_forward,  # noqa: E402
                                auto_method, effective_kernel_size, unsupported)

# name: (N, C, H, W, F, k, rates, stride); padding = rate·(k - 1)/2 ("same" output at stride 1)
CASES = {
    "a LargeFOV fc6 r12": (1, 512, 65, 65, 1024, 3, (12,), 1),
    "b 256ch r2": (1, 256, 65, 65, 256, 3, (2,), 1),
    "c 4x64ch r1": (4, 64, 64, 64, 64, 3, (1,), 1),
    "c 4x64ch r4": (4, 64, 64, 64, 64, 3, (4,), 1),
    "d ASPP-L r6-24": (1, 512, 33, 33, 21, 3, (6, 12, 18, 24), 1),
    "e VGG conv1_1 3->64": (1, 3, 321, 321, 64, 3, (1,), 1),
    "f ResNet stem 7x7 s2": (1, 3, 321, 321, 64, 7, (1,), 2),
    "g VGG conv2_1 64->128": (1, 64, 161, 161, 128, 3, (1,), 1),
    "h LargeFOV fc6 41x41": (1, 512, 41, 41, 1024, 3, (12,), 1),
    "i VGG conv3_2 256->256": (1, 256, 81, 81, 256, 3, (1,), 1),
    "j VGG conv1_2 64->64": (1, 64, 321, 321, 64, 3, (1,), 1),
}
ZEROS_LIMIT = 2**30  # skip "zeros" when its im2col matrix alone would exceed 1 GiB


def branches(x, ws, rates, stride, method):
    """Forward and forward+backward of a sum of atrous branches (one branch except in ASPP)."""
    def forward():
        return [atrous_conv2d_forward(x, w, rate=r, stride=stride, padding=r * (w.shape[2] - 1) // 2, method=method)
                for w, r in zip(ws, rates)]

    def fwd():
        out = forward()
        return sum(o for o, _ in out)

    def fwd_bwd():
        out = forward()
        dout = backend.array_module(x).ones_like(out[0][0])
        grads = [atrous_conv2d_backward(dout, cache) for _, cache in out]
        return sum(g[0] for g in grads), [g[1] for g in grads]
    return fwd, fwd_bwd


def torch_branches(torch, x, ws, rates, stride):
    xt = torch.as_tensor(x).requires_grad_(True)
    wts = [torch.as_tensor(w).requires_grad_(True) for w in ws]

    def conv(w, r):
        return torch.nn.functional.conv2d(xt, w, stride=stride, padding=r * (w.shape[2] - 1) // 2, dilation=r)

    def fwd():
        with torch.no_grad():
            return sum(conv(w, r) for w, r in zip(wts, rates))

    def fwd_bwd():
        y = sum(conv(w, r) for w, r in zip(wts, rates))
        y.backward(torch.ones_like(y))
        xt.grad = None
        for w in wts:
            w.grad = None
    return fwd, fwd_bwd


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=["cpu", "gpu"], default="cpu")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None, help="threads for every library (default: theirs)")
    parser.add_argument("--cases", nargs="*", default=list(CASES), help="subset of case names")
    args = parser.parse_args()
    try:
        import torch
    except ImportError:
        torch = None
        print("torch is not installed: no reference column")
    if torch is not None and args.threads:
        torch.set_num_threads(args.threads)

    if args.device == "gpu":
        import cupy
        to_array, pool = cupy.asarray, cupy.get_default_memory_pool()

        if torch is not None:
            torch_plain_float32(torch)

        def sync():
            cupy.cuda.Device().synchronize()
            if torch is not None:
                torch.cuda.synchronize()

        def peak(fn):  # growth of the pool, as tracemalloc's growth on the CPU: inputs excluded
            pool.free_all_blocks()
            held = pool.used_bytes()
            fn()
            sync()
            return (pool.total_bytes() - held) / 2**20
    else:
        to_array, sync, peak = (lambda a: a), None, peak_mib

    rng = np.random.default_rng(0)
    rows, picks = [], {}
    for name in args.cases:
        n, c, h, w_, f, k, rates, stride = CASES[name]
        x = to_array(rng.standard_normal((n, c, h, w_)).astype(np.float32))
        ws = [to_array((rng.standard_normal((f, c, k, k)) / np.sqrt(c * k * k)).astype(np.float32))
              for _ in rates]
        ho, wo = (h - 1) // stride + 1, (w_ - 1) // stride + 1
        gflop = 2 * n * f * c * k * k * ho * wo * len(rates) / 1e9
        fwds, fbs, skipped = {}, {}, []
        picks[name.split()[0]] = "/".join(sorted({auto_method(c, f, stride, r, (k, k), h * w_, args.device == "gpu")
                                                  for r in rates}))
        for method in ["auto", *METHODS]:
            ke = max(effective_kernel_size(k, r) for r in rates)
            if method == "direct":
                skipped.append("direct (loop reference, minutes at this size)")
                continue
            if method == "zeros" and c * ke * ke * n * ho * wo * 4 > ZEROS_LIMIT:
                skipped.append(f"zeros (its {ke}×{ke} im2col would take "
                               f"{c * ke * ke * n * ho * wo * 4 / 2**30:.1f} GiB)")
                continue
            problem = method != "auto" and unsupported(method, (k, k), max(rates), stride, args.device == "gpu")
            if problem:
                skipped.append(f"{method} ({problem.split(';')[0]})")
                continue
            fwds[method], fbs[method] = branches(x, ws, rates, stride, method)
        if torch is not None:
            ref = "cudnn" if args.device == "gpu" else "torch"
            tx = x if args.device == "cpu" else torch.as_tensor(x, device="cuda")
            tws = ws if args.device == "cpu" else [torch.as_tensor(w, device="cuda") for w in ws]
            fwds[ref], fbs[ref] = torch_branches(torch, tx, tws, rates, stride)
        t_fwd = interleaved_ms(fwds, repeat=args.repeat, sync=sync)
        t_fb = interleaved_ms(fbs, repeat=args.repeat, sync=sync)
        ref_f = t_fwd.get("cudnn", t_fwd.get("torch"))
        ref_fb = t_fb.get("cudnn", t_fb.get("torch"))
        for method in fwds:
            is_ref = method in ("torch", "cudnn")
            rows.append({
                "case": name, "method": method,
                "fwd ms": t_fwd[method], "fwd GFLOP/s": gflop / t_fwd[method] * 1e3,
                "fwd / torch": t_fwd[method] / ref_f if ref_f else float("nan"),
                "fwd+bwd ms": t_fb[method], "fwd+bwd GFLOP/s": 3 * gflop / t_fb[method] * 1e3,
                "fwd+bwd / torch": t_fb[method] / ref_fb if ref_fb else float("nan"),
                "peak MiB": float("nan") if is_ref else peak(fbs[method]),
            })
            print(rows[-1], flush=True)
        for s in skipped:
            print(f"  {name}: skipped {s}")
    threads = args.threads or os.cpu_count()
    kernels, kernel_suffix = cpu_kernels(torch)
    load = ", ".join(f"{v:.1f}" for v in os.getloadavg())
    notes = (("GPU: CuPy against torch's cuDNN in plain float32 (TF32 off). " if args.device == "gpu" else "")
             + f"{threads} thread(s); {kernels}; load average at the end "
             f"{load} (other jobs shared the machine: compare ratios, not times). float32, padding = rate·(k - 1)/2. 'auto' runs "
             + ", ".join(f"{case} {method}" for case, method in picks.items())
             + ". Ratios are minilab time / torch time in the same "
             "run (below 1 = faster). Peak MiB: memory allocated during forward+backward "
             "(not measured for torch). 'direct' is skipped on every shape (a loop reference); "
             f"'zeros' is skipped where its upsampled-filter im2col would exceed {ZEROS_LIMIT / 2**30:.0f} GiB.")
    suffix = (f"_{args.threads}thread" if args.threads else "") + (kernel_suffix if args.device == "cpu" else "")
    write_results(f"bench_atrous_{args.device}{suffix}", rows, notes)


if __name__ == "__main__":
    main()

"""Dense CRF timing: minilab's lattice (CPU; GPU with --device gpu) and exact filter against
pydensecrf (Krähenbühl's C++ code, single-threaded) in the same run.

500×375 VOC photo and the same photo upscaled to 1000×750, 21 labels, 10 iterations, both
parameter settings: pydensecrf's example σ's (σα 80, σβ 13; its README has w1 10) with w1 4,
and a point of DeepLab's search grid (σα 50, σβ 3, w1 5), with w2 = 3, σγ = 3. Reports the lattice build (both kernels) and the time per
iteration separately, medians of interleaved runs, and the peak resident memory each tool
adds (measured in a fresh process). The exact filter runs on a 40×40 crop.

    PYTHONPATH=. python benchmarks/bench_crf.py [--device gpu] [--repeat 3]
"""
import argparse
import os
import subprocess
import sys
from pathlib import Path

import numba
import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).parents[1]))
from common import interleaved_ms, write_results  # noqa: E402

from minilab import backend, crf  # noqa: E402

PHOTO = Path(__file__).parents[1] / "minilab" / "data" / "voc_sample" / "2007_000346"
SETTINGS = {"example (80, 13, 4)": (80.0, 13.0, 4.0), "DeepLab (50, 3, 5)": (50.0, 3.0, 5.0)}
SIZES = {"500×375": 1, "1000×750": 2}
ITERATIONS = 10
LABELS = 21
try:
    import pydensecrf.densecrf  # noqa: F401
    HAS_PYDENSECRF = True
except ImportError:
    HAS_PYDENSECRF = False


def problem(scale, crop=None):
    """The photo (upscaled by ``scale``) and coarse noisy 21-label probabilities."""
    image = Image.open(f"{PHOTO}.png").convert("RGB")
    label = Image.open(f"{PHOTO}_label.png")
    if scale != 1:
        size = (image.width * scale, image.height * scale)
        image, label = image.resize(size, Image.BILINEAR), label.resize(size, Image.NEAREST)
    image, label = np.array(image), np.array(label)
    if crop:
        image, label = image[:crop, :crop].copy(), label[:crop, :crop]
    rng = np.random.default_rng(0)
    h, w = label.shape
    onehot = (np.arange(LABELS)[:, None, None] == label[None]).astype(np.float32)
    hh, ww = -(-h // 8), -(-w // 8)
    padded = np.zeros((LABELS, hh * 8, ww * 8), np.float32)
    padded[:, :h, :w] = onehot
    logits = 3 * padded.reshape(LABELS, hh, 8, ww, 8).mean((2, 4)) + rng.normal(0, 1, (LABELS, hh, ww))
    logits = np.kron(logits, np.ones((8, 8), np.float32))[:, :h, :w]
    p = np.exp(logits - logits.max(0))
    return image, (p / p.sum(0)).astype(np.float32)


def pydensecrf_run(image, probs, sa, sb, w1, iterations=ITERATIONS):
    import pydensecrf.densecrf as dcrf
    c, h, w = probs.shape
    d = dcrf.DenseCRF2D(w, h, c)
    d.setUnaryEnergy(np.ascontiguousarray(-np.log(np.maximum(probs, np.float32(1e-10))).reshape(c, -1)))
    d.addPairwiseGaussian(sxy=3, compat=3)
    d.addPairwiseBilateral(sxy=sa, srgb=sb, rgbim=image, compat=w1)
    return np.array(d.inference(iterations))


def minilab_run(image, probs, sa, sb, w1, iterations=ITERATIONS, method="lattice", device="cpu"):
    """Q in host memory (from a GPU: end to end, both copies included), or left on the GPU
    (synchronised) when ``image`` and ``probs`` are CuPy arrays, as after a network on the GPU."""
    q = crf.dense_crf(image, probs, iterations=iterations, w1=w1, sigma_alpha=sa, sigma_beta=sb, method=method,
                      device=device)
    if backend.is_gpu_array(image):
        backend.cupy.cuda.Device().synchronize()
        return q
    return backend.to_numpy(q)


def peak_rss_mib(fn):
    """Growth of this process's resident memory at its peak while ``fn()`` runs: the kernel's
    high-water mark (VmHWM, reset first through /proc/self/clear_refs) over the resident size
    before. Exact, where a sampling thread would miss what compiled code holds the GIL for."""
    def status_kib(field):
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith(field))
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # resets VmHWM to the current resident size
    base = status_kib("VmRSS:")
    fn()
    return (status_kib("VmHWM:") - base) / 1024


def memory_probe(tool, size, setting):
    """Runs in a fresh process: one run of ``tool`` after a tiny warm-up; prints MiB."""
    image, probs = problem(SIZES[size])
    sa, sb, w1 = SETTINGS[setting]
    run = pydensecrf_run if tool == "pydensecrf" else minilab_run
    run(image[:16, :16].copy(), probs[:, :16, :16] / probs[:, :16, :16].sum(0), sa, sb, w1)
    print(peak_rss_mib(lambda: run(image, probs, sa, sb, w1)))


def fresh_process_mib(tool, size, setting):
    out = subprocess.run([sys.executable, __file__, "--memory-probe", tool, size, setting], check=True,
                         capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])})
    return float(out.stdout.split()[-1])


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=["cpu", "gpu"], default="cpu")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--memory-probe", nargs=3, metavar=("TOOL", "SIZE", "SETTING"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory_probe:
        return memory_probe(*args.memory_probe)
    threads = numba.get_num_threads()
    rows = []
    for size, scale in SIZES.items():
        image, probs = problem(scale)
        for setting, (sa, sb, w1) in SETTINGS.items():
            minilab_run(image[:32, :32].copy(), probs[:, :32, :32] / probs[:, :32, :32].sum(0), sa, sb, w1)  # compile

            def single_thread(runner):
                def run():
                    numba.set_num_threads(1)
                    try:
                        runner()
                    finally:
                        numba.set_num_threads(threads)
                return run
            runs = {
                f"minilab {threads} threads": lambda: minilab_run(image, probs, sa, sb, w1),
                f"minilab {threads} threads build": lambda: minilab_run(image, probs, sa, sb, w1, iterations=0),
            }
            if HAS_PYDENSECRF:
                runs["pydensecrf"] = lambda: pydensecrf_run(image, probs, sa, sb, w1)
                runs["pydensecrf setup"] = lambda: pydensecrf_run(image, probs, sa, sb, w1, iterations=0)
            if args.device == "cpu":
                runs["minilab 1 thread"] = single_thread(lambda: minilab_run(image, probs, sa, sb, w1))
                runs["minilab 1 thread build"] = single_thread(
                    lambda: minilab_run(image, probs, sa, sb, w1, iterations=0))
            gpu_runs = {}
            if args.device == "gpu":
                minilab_run(image, probs, sa, sb, w1, device="gpu")  # compile the kernels first
                gpu_runs["minilab gpu"] = lambda: minilab_run(image, probs, sa, sb, w1, device="gpu")
                gpu_runs["minilab gpu build"] = lambda: minilab_run(image, probs, sa, sb, w1, iterations=0,
                                                                    device="gpu")
                gimage, gprobs = backend.to_device(image, "gpu"), backend.to_device(probs, "gpu")
                gpu_runs["minilab gpu, arrays on the GPU"] = lambda: minilab_run(gimage, gprobs, sa, sb, w1,
                                                                                 device="gpu")
                gpu_runs["minilab gpu, arrays on the GPU build"] = lambda: minilab_run(gimage, gprobs, sa, sb, w1,
                                                                                      iterations=0, device="gpu")
            # The GPU runs are timed in a loop of their own. Interleaved with the runs on all CPU
            # threads, the host-to-host GPU run took 20.8 ms against 17.0 ms on its own (NVIDIA
            # H200, same call): its host, which queues the kernels one by one, shared the CPU with
            # the winding-down worker threads, we think.
            ms = {**interleaved_ms(runs, repeat=args.repeat), **interleaved_ms(gpu_runs, repeat=4 * args.repeat)}
            runs.update(gpu_runs)
            tools = ("pydensecrf", "minilab") if HAS_PYDENSECRF and args.device == "cpu" else ()
            memory = {tool: fresh_process_mib(tool, size, setting) for tool in tools}
            ref = ms.get("pydensecrf", float("nan"))
            for tool in [k for k in runs if not k.endswith(("build", "setup"))]:
                build = ms[f"{tool} setup" if tool == "pydensecrf" else f"{tool} build"]
                rows.append({"size": size, "setting": setting, "tool": tool, "total ms": ms[tool],
                             "build ms": build, "per iteration ms": (ms[tool] - build) / ITERATIONS,
                             "vs pydensecrf": ms[tool] / ref,
                             "peak MiB": memory.get("pydensecrf" if tool == "pydensecrf" else "minilab", float("nan"))})
            print(rows[-len(runs) // 2:], flush=True)
    if args.device == "gpu":
        return write_results("crf_gpu", rows, notes=(
            f"{LABELS} labels, {ITERATIONS} mean-field iterations, w2 = 3, σγ = 3; photo 2007_000346 (upscaled ×2 for "
            "1000×750) with coarse noisy unaries. 'minilab gpu': end to end, the image and probabilities start and Q ends "
            "in host memory; 'arrays on the GPU': they start and Q ends in GPU memory, as after a network on the GPU. "
            f"The CPU lattice runs on all {threads} Numba threads of the same machine. 'build' is the set-up "
            "(features, both lattices, normalisers); per iteration = (total − build)/10. "
            f"Medians of {args.repeat} interleaved runs ({4 * args.repeat} for the GPU runs, interleaved among "
            "themselves, apart from the CPU runs)."))
    # the exact O(N²) filter, on a crop where it is feasible
    image, probs = problem(1, crop=40)
    sa, sb, w1 = SETTINGS["DeepLab (50, 3, 5)"]
    ms = interleaved_ms({"pydensecrf": lambda: pydensecrf_run(image, probs, sa, sb, w1),
                         "minilab lattice": lambda: minilab_run(image, probs, sa, sb, w1),
                         "minilab naive": lambda: minilab_run(image, probs, sa, sb, w1, method="naive")},
                        repeat=args.repeat)
    for tool, t in ms.items():
        rows.append({"size": "40×40 crop", "setting": "DeepLab (50, 3, 5)", "tool": tool, "total ms": t,
                     "build ms": float("nan"), "per iteration ms": float("nan"),
                     "vs pydensecrf": t / ms["pydensecrf"], "peak MiB": float("nan")})
    write_results("crf", rows, notes=(
        f"{LABELS} labels, {ITERATIONS} mean-field iterations, w2 = 3, σγ = 3; photo 2007_000346 (upscaled ×2 for "
        "1000×750) with coarse noisy unaries. pydensecrf is single-threaded C++; minilab's lattice runs with all "
        f"Numba threads ({threads}) and with 1. 'build' is the set-up (features, both lattices, normalisers; "
        "pydensecrf: its addPairwise calls); per iteration = (total − build)/10. "
        f"Medians of {args.repeat} interleaved runs. Peak MiB: growth of resident memory during one run, in a fresh process. The machine was shared with "
        "other jobs: compare ratios within one run only."))


if __name__ == "__main__":
    main()

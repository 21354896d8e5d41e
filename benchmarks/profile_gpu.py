"""Where the GPU time goes: kernel-launch costs, the dense CRF's stages, every kernel the
models and the CRF launch (a census through torch.profiler, device times), the models'
layers, each timed on the host clock with the device synchronised around it, where the
host spends a model's forward+backward (cProfile, Python functions and the C calls beneath),
and batch normalisation's kernels against cuDNN on large and small maps.

    PYTHONPATH=. python benchmarks/profile_gpu.py

Needs a CUDA GPU with CuPy and numba-cuda. Prints tables; writes nothing.
"""
import sys
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).parents[1]))
from bench_crf import SETTINGS, problem  # noqa: E402
from common import interleaved_ms  # noqa: E402

from minilab import backend, nn  # noqa: E402
from minilab.crf import meanfield, potentials  # noqa: E402
from minilab.crf.lattice import LatticeFilter  # noqa: E402

cp, cuda = backend.cupy, backend.cuda


def sync():
    cp.cuda.Device().synchronize()


def per_call_us(fn, calls=300):
    """Host time per call of ``fn`` over ``calls`` back-to-back calls (one sync at the end)."""
    fn()
    sync()
    t = time.perf_counter()
    for _ in range(calls):
        fn()
    sync()
    return (time.perf_counter() - t) / calls * 1e6


def launch_costs():
    @cuda.jit
    def add3(a, b, c):
        i = cuda.grid(1)
        if i < c.shape[0]:
            c[i] = a[i] + b[i]

    @cuda.jit
    def add8(a, b, c, d, e, f, g, h):
        i = cuda.grid(1)
        if i < h.shape[0]:
            h[i] = a[i] + b[i] + c[i] + d[i] + e[i] + f[i] + g[i]

    arrays = [cp.ones(1024, np.float32) for _ in range(8)]
    views = [cuda.as_cuda_array(a) for a in arrays]
    rows = {
        "numba kernel, 3 CuPy arrays": lambda: add3[8, 128](*arrays[:3]),
        "numba kernel, 3 numba device arrays": lambda: add3[8, 128](*views[:3]),
        "numba kernel, 8 CuPy arrays": lambda: add8[8, 128](*arrays),
        "numba kernel, 8 numba device arrays": lambda: add8[8, 128](*views),
        "backend.launch, 3 CuPy arrays": lambda: backend.launch(add3, 1024, *arrays[:3]),
        "backend.launch, 8 CuPy arrays": lambda: backend.launch(add8, 1024, *arrays),
        "cuda.as_cuda_array of one CuPy array": lambda: cuda.as_cuda_array(arrays[0]),
        "CuPy add(a, b, out=c)": lambda: cp.add(arrays[0], arrays[1], out=arrays[2]),
        "CuPy strided slice += slice": lambda: arrays[2][1:500:2].__iadd__(arrays[3][2:501:2]),
        "CuPy matmul 32x32": lambda: cp.matmul(arrays[0][:1024].reshape(32, 32), arrays[1].reshape(32, 32)),
    }
    print("\n## launch costs (µs per call, host time)")
    for name, fn in rows.items():
        print(f"{name:45s} {per_call_us(fn):8.1f}")


class Clock:
    def __init__(self):
        self.rows = []
        sync()
        self.t = time.perf_counter()

    def __call__(self, name):
        sync()
        now = time.perf_counter()
        self.rows.append((name, (now - self.t) * 1e3))
        self.t = now


def crf_stages(scale):
    image, probs = problem(scale)
    sa, sb, w1 = SETTINGS["DeepLab (50, 3, 5)"]
    h, w = image.shape[:2]
    for _ in range(2):  # the second pass is the timed one (kernels compiled)
        clock = Clock()
        potentials.check_image(image)
        potentials.check_probs(probs)
        clock("checks on the host")
        gimage, gprobs = cp.asarray(image), cp.asarray(probs)
        clock("image and probs to the GPU")
        potentials.check_probs(gprobs)
        clock("probs checks on the GPU")
        spatial = cp.asarray(potentials.spatial_features((h, w), 3.0))
        bilateral = potentials.bilateral_features(gimage, sa, sb)
        clock("features")
        lat = LatticeFilter(bilateral)
        clock(f"bilateral lattice build ({lat.n_vertices} vertices)")
        LatticeFilter(spatial)
        clock("spatial lattice build")
        terms = [meanfield.PairwiseTerm(spatial, 3.0), meanfield.PairwiseTerm(bilateral, w1)]
        clock("both PairwiseTerms (builds + normalisers)")
        log_p = potentials.log_probs(gprobs)
        q = meanfield.softmax_labels(log_p.copy())
        clock("log P and softmax")
        energy, spare = cp.empty_like(q), cp.empty_like(q)
        q2 = meanfield.mean_field_step(q, log_p, terms, out=spare, energy=energy)
        clock("one mean-field step")
        terms[1].add_message(q, energy)
        clock("  bilateral message")
        terms[0].add_message(q, energy)
        clock("  spatial message")
        meanfield.softmax_labels(energy, out=spare)
        clock("  softmax")
        out = q2.T.reshape(-1, h, w).copy()
        clock("Q to C×H×W")
        backend.to_numpy(out)
        clock("Q to the host")
    print(f"\n## dense CRF stages, {w}×{h}, 21 labels, DeepLab setting (ms)")
    for name, ms in clock.rows:
        print(f"{name:45s} {ms:8.2f}")


def count_launches():
    """Count Numba CUDA launches by wrapping ``backend.launch``, which every one goes through."""
    counter = {"n": 0}
    original = backend.launch

    def counted(*args):
        counter["n"] += 1
        return original(*args)
    backend.launch = counted
    return counter


def model_layers(counter):
    from minilab.nn import module
    leaves = [c for c in vars(nn).values() if isinstance(c, type) and issubclass(c, module.Module)]
    times = defaultdict(float)
    counts = defaultdict(int)

    def timed(cls, name):
        original = getattr(cls, name)

        def run(self, x):
            sync()
            t = time.perf_counter()
            out = original(self, x)
            sync()
            key = f"{cls.__name__}.{name}"
            times[key] += (time.perf_counter() - t) * 1e3
            counts[key] += 1
            return out
        return run
    for cls in leaves:
        if cls.__name__ in ("Conv2d", "BatchNorm2d", "ReLU", "MaxPool2d", "Dropout2d", "Upsample"):
            for name in ("forward", "backward"):
                if name in vars(cls):
                    setattr(cls, name, timed(cls, name))
    rng = np.random.default_rng(0)
    x = cp.asarray(rng.standard_normal((1, 3, 321, 321)).astype(np.float32))
    for label, method in (("shifted", "shifted"), ("sparse", "sparse")):
        models = [("tiny ResNet ASPP-L", nn.deeplab_resnet(21, blocks=(1, 1, 1, 1), width=16, rates=nn.ASPP_L,
                                                             hidden=1024, seed=0, method=method)),
                  ("VGG LargeFOV", nn.deeplab("vgg16-largefov", 21, seed=0, method=method))]
        for name, model in models:
            model.to("gpu").train()
            out = model.forward(x)
            model.backward(cp.ones_like(out))
            sync()
            times.clear()
            counts.clear()
            t = time.perf_counter()
            launches = counter["n"]
            for _ in range(3):
                out = model.forward(x)
                model.backward(cp.ones_like(out))
            sync()
            print(f"\n{name}, method={label}: {(time.perf_counter() - t) / 3 * 1e3:.1f} ms per fwd+bwd "
                  f"(layers timed with syncs), {(counter['n'] - launches) / 3:.0f} Numba launches")
            for key in sorted(times, key=times.get, reverse=True)[:8]:
                print(f"  {key:28s} {times[key] / 3:8.2f} ms  ({counts[key] // 3} calls)")


def kernel_census():
    """Every kernel one call launches, whoever launches it (CuPy, Numba, cuBLAS), counted and
    timed on the device by CUPTI through torch.profiler: launches against device-busy time
    says whether a stage is bound by launches or by the GPU."""
    import torch.profiler as tp
    from minilab.crf import dense_crf
    rng = np.random.default_rng(0)
    x = cp.asarray(rng.standard_normal((1, 3, 321, 321)).astype(np.float32))
    image, probs = problem(1)
    gimage, gprobs = cp.asarray(image), cp.asarray(probs)
    sa, sb, w1 = SETTINGS["DeepLab (50, 3, 5)"]
    models = {"tiny ResNet ASPP-L": nn.deeplab_resnet(21, blocks=(1, 1, 1, 1), width=16, rates=nn.ASPP_L,
                                                       hidden=1024, seed=0),
              "VGG LargeFOV": nn.deeplab("vgg16-largefov", 21, seed=0)}
    jobs = {name: (lambda m=m.to("gpu").train(): m.backward(cp.ones_like(m.forward(x))))
            for name, m in models.items()}
    jobs["dense CRF 500×375, arrays on the GPU"] = lambda: dense_crf(
        gimage, gprobs, w1=w1, sigma_alpha=sa, sigma_beta=sb, device="gpu")
    for name, job in jobs.items():
        job()
        sync()
        t = time.perf_counter()
        job()
        sync()
        wall = (time.perf_counter() - t) * 1e3
        with tp.profile(activities=[tp.ProfilerActivity.CUDA]) as prof:
            job()
            sync()
        rows = [(e.key, e.count, e.device_time_total)
                for e in prof.key_averages()]
        rows = [r for r in rows if r[2] > 0]
        print(f"\n## {name}: {wall:.1f} ms wall, {sum(r[1] for r in rows)} kernels, "
              f"{sum(r[2] for r in rows) / 1e3:.1f} ms busy on the device")
        for key, count, us in sorted(rows, key=lambda r: -r[2])[:18]:
            print(f"{count:5d} {us / 1e3:8.2f} ms  {key[:90]}")


def batch_norm_maps():
    """Batch normalisation's one kernel per layer and direction (a block of threads per
    channel, which also normalises the channel) against torch's cuDNN, forward+backward, on
    the large few-channel maps where a block per channel may leave most of the GPU idle (a
    ResNet stem at batch 10) and on the small maps of a launch-bound network."""
    import torch
    from minilab.ops import norm
    print("\n## batch norm forward+backward, ms (minilab / torch)")
    for shape in ((10, 64, 161, 161), (1, 64, 161, 161), (1, 2048, 41, 41), (1, 16, 81, 81)):
        c = shape[1]
        x = cp.asarray(np.random.default_rng(0).standard_normal(shape).astype(np.float32))
        dout, stats = cp.ones_like(x), [cp.ones(c, np.float32), cp.zeros(c, np.float32)]
        tx = torch.as_tensor(cp.asnumpy(x), device="cuda").requires_grad_()
        tdout, tstats = torch.ones_like(tx), [torch.ones(c, device="cuda"), torch.zeros(c, device="cuda")]
        for mode in ("train", "eval"):
            def ours():
                out, cache = norm.batch_norm_forward(x, stats[0], stats[1], stats[1].copy(), stats[0].copy(), mode=mode)
                norm.batch_norm_backward(dout, cache)

            def theirs():
                torch.nn.functional.batch_norm(tx, tstats[1].clone(), tstats[0].clone(), tstats[0], tstats[1],
                                               training=mode == "train").backward(tdout)

            t = interleaved_ms({"ours": ours, "torch": theirs}, repeat=11,
                               sync=lambda: (sync(), torch.cuda.synchronize()))
            print(f"{str(shape):22s} {mode:5s} {t['ours']:8.3f} {t['torch']:8.3f}  {t['ours'] / t['torch']:5.2f}")


def host_profile(steps=10, rows=30):
    """cProfile of the tiny ResNet's forward+backward on the GPU, no syncs inside: a host-bound
    step is the sum of these calls, and the census's launches at their measured prices
    account for less than the wall time, so this says where the rest goes."""
    import cProfile
    import pstats
    rng = np.random.default_rng(0)
    x = cp.asarray(rng.standard_normal((1, 3, 321, 321)).astype(np.float32))
    model = nn.deeplab_resnet(21, blocks=(1, 1, 1, 1), width=16, rates=nn.ASPP_L, hidden=1024, seed=0)
    model.to("gpu").train()
    dout = cp.ones_like(model.forward(x))
    for _ in range(2):
        model.forward(x)
        model.backward(dout)
    sync()
    profile = cProfile.Profile()
    t = time.perf_counter()
    profile.enable()
    for _ in range(steps):
        model.forward(x)
        model.backward(dout)
    sync()
    profile.disable()
    print(f"\n## host profile, tiny ResNet ASPP-L forward+backward: "
          f"{(time.perf_counter() - t) / steps * 1e3:.1f} ms per step under cProfile, {steps} steps")
    for key in ("tottime", "cumtime"):
        pstats.Stats(profile, stream=sys.stdout).sort_stats(key).print_stats(rows)


if __name__ == "__main__":
    print(backend.cupy.cuda.runtime.getDeviceProperties(0)["name"].decode())
    sections = (launch_costs, host_profile, batch_norm_maps, lambda: crf_stages(1), lambda: crf_stages(2), kernel_census,
                lambda: model_layers(count_launches()))
    for section in sections:
        try:
            section()
        except Exception as error:  # keep going: every section is worth its device time
            print("section failed:", repr(error))

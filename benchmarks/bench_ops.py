"""Time the network's functional ops against torch on the CPU: bilinear ×8 upsampling of a
DeepLab score map, and the pooling, normalisation, activation and loss layers at DeepLab-VGG
sizes. Forward and forward+backward, interleaved medians, ratio = minilab / torch.

    PYTHONPATH=. python benchmarks/bench_ops.py [--threads N]

``--threads N`` (default 2) sets the threads of NumPy's BLAS, Numba and torch alike; on a
busy machine ``--threads 1`` gives the steadier ratio.
"""
import argparse
import os

PARSER = argparse.ArgumentParser(description="Time the network ops against torch on the CPU.")
PARSER.add_argument("--threads", type=int, default=2, help="threads for BLAS, Numba and torch")
THREADS = PARSER.parse_args().threads if __name__ == "__main__" else 2
for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS"):
    os.environ[var] = str(THREADS)  # before NumPy, Numba and torch start their thread pools

import numpy as np  # noqa: E402

from common import interleaved_ms, write_results  # noqa: E402
from minilab.ops import activations, interp, loss, norm, pool  # noqa: E402

import torch  # noqa: E402  after minilab, whose import asks OpenMP for passive waiting (docs/atrous.md)

F = torch.nn.functional


def cases(rng):
    """(name, minilab forward, minilab forward+backward, torch forward, torch forward+backward)."""
    score = rng.standard_normal((1, 21, 65, 65)).astype(np.float32)
    up_dout = rng.standard_normal((1, 21, 513, 513)).astype(np.float32)
    feat = rng.standard_normal((1, 64, 321, 321)).astype(np.float32)
    feat2 = rng.standard_normal((1, 512, 41, 41)).astype(np.float32)
    logits = rng.standard_normal((4, 21, 41, 41)).astype(np.float32)
    labels = rng.integers(0, 21, size=(4, 41, 41))
    labels[:, :5] = 255
    bn = [rng.standard_normal(256).astype(np.float32) for _ in range(2)] + \
         [np.zeros(256, np.float32), np.ones(256, np.float32)]
    feat3 = rng.standard_normal((4, 256, 41, 41)).astype(np.float32)

    def ours(fwd, bwd, x, dout=None):
        def both():
            out, cache = fwd(x)
            bwd(np.ones_like(out) if dout is None else dout, cache)
        return (lambda: fwd(x)), both

    def theirs(fn, x, dout=None):
        tx = torch.from_numpy(x)
        leaf = tx.clone().requires_grad_()  # made once: minilab's side copies nothing either
        def both():
            leaf.grad = None
            out = fn(leaf)
            out.backward(torch.ones_like(out) if dout is None else torch.from_numpy(dout))
        return (lambda: fn(tx)), both

    for ac in (True, False):
        yield (f"bilinear x8 1x21x65x65->513 align_corners={ac}",
               *ours(lambda x: interp.bilinear_resize_forward(x, (513, 513), align_corners=ac),
                     interp.bilinear_resize_backward, score, up_dout),
               *theirs(lambda t: F.interpolate(t, size=(513, 513), mode="bilinear", align_corners=ac),
                       score, up_dout))
    for method in pool.METHODS:
        yield (f"max_pool 3x3 s2 p1 1x64x321x321 method={method}",
               *ours(lambda x: pool.max_pool2d_forward(x, 3, 2, 1, method=method), pool.max_pool2d_backward, feat),
               *theirs(lambda t: F.max_pool2d(t, 3, 2, 1), feat))
        yield (f"max_pool 3x3 s1 p1 1x512x41x41 method={method}",
               *ours(lambda x: pool.max_pool2d_forward(x, 3, 1, 1, method=method), pool.max_pool2d_backward, feat2),
               *theirs(lambda t: F.max_pool2d(t, 3, 1, 1), feat2))
    yield ("relu 1x64x321x321", *ours(activations.relu_forward, activations.relu_backward, feat),
           *theirs(torch.relu, feat))
    yield ("batch_norm train 4x256x41x41",
           *ours(lambda x: norm.batch_norm_forward(x, *[b.copy() for b in bn], mode="train"),
                 lambda d, c: norm.batch_norm_backward(d, c), feat3),
           *theirs(lambda t: F.batch_norm(t, torch.zeros(256), torch.ones(256), torch.from_numpy(bn[0]),
                                          torch.from_numpy(bn[1]), training=True), feat3))
    yield ("softmax cross-entropy 4x21x41x41",
           *ours(lambda x: loss.softmax_cross_entropy_forward(x, labels),
                 lambda d, c: loss.softmax_cross_entropy_backward(1.0, c), logits),
           (lambda: F.cross_entropy(torch.from_numpy(logits), torch.from_numpy(labels), ignore_index=255)),
           (lambda: F.cross_entropy(torch.from_numpy(logits).requires_grad_(), torch.from_numpy(labels),
                                    ignore_index=255).backward()))


def main():
    threads = THREADS
    torch.set_num_threads(threads)
    rows = []
    for name, f, fb, tf, tfb in cases(np.random.default_rng(0)):
        t = interleaved_ms({"f": f, "fb": fb, "tf": tf, "tfb": tfb}, repeat=15, warmup=2)
        rows.append({"op": name, "minilab fwd ms": t["f"], "torch fwd ms": t["tf"],
                     "fwd ratio": t["f"] / t["tf"], "minilab fwd+bwd ms": t["fb"],
                     "torch fwd+bwd ms": t["tfb"], "fwd+bwd ratio": t["fb"] / t["tfb"]})
    load = os.getloadavg()[0]
    write_results(f"ops_{threads}thread", rows,
                  notes=f"float32, CPU, {threads} thread(s) for BLAS, Numba and torch alike; medians of 15 "
                  f"interleaved runs; ratio = minilab time / torch time (below 1: minilab faster). "
                  f"Load average at the end of the run: {load:.1f} (a shared machine).")


if __name__ == "__main__":
    main()

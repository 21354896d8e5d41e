"""Training throughput of the demo's model: images per second for one SGD iteration
(forward, loss, backward, update), minilab against its PyTorch twin in the same run.

The demo trains a 140-thousand-parameter DeepLab-ASPP on 113×113 scenes (`DEMO_SIZE`), batch 4. minilab
runs on one thread (the demo's default; its kernels are too small to share) and also on
all cores; torch on the same thread counts. On a GPU (CuPy present) minilab's GPU path and
torch's CUDA path are measured with `--device gpu`.
"""
import argparse
import os
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).parents[1]))
from common import interleaved_ms, machine, torch_plain_float32, write_results  # noqa: E402

from minilab import backend  # noqa: E402
from minilab.ops.loss import softmax_cross_entropy_backward, softmax_cross_entropy_forward  # noqa: E402
from minilab.train import SGD, build_model, limit_threads, model_spec, param_groups  # noqa: E402
from minilab.train.demo import DEMO_MODEL, DEMO_SIZE  # noqa: E402

SIZE, BATCH = DEMO_SIZE, 4
CELLS = (SIZE - 1) // 8 + 1  # side of the stride-8 score map


def minilab_step(device="cpu"):
    model = build_model(model_spec("deeplab_vgg16", 5, **DEMO_MODEL))
    if device == "gpu":
        model.to("gpu")
    opt = SGD(param_groups(model))
    rng = np.random.default_rng(0)
    x = backend.to_device(rng.standard_normal((BATCH, 3, SIZE, SIZE)).astype(np.float32), device)
    y = backend.to_device(rng.integers(0, 5, (BATCH, CELLS, CELLS)).astype(np.uint8), device)

    def step():
        opt.zero_grad()
        loss, cache = softmax_cross_entropy_forward(model.forward(x), y)
        model.backward(softmax_cross_entropy_backward(1.0, cache))
        opt.step(1e-3)
    return step


def torch_step(device="cpu"):
    import torch
    from minilab.nn.torch_twins import twin_of
    twin = twin_of(build_model(model_spec("deeplab_vgg16", 5, **DEMO_MODEL))).to(device).train()
    opt = torch.optim.SGD(twin.parameters(), lr=1e-3, momentum=0.9, weight_decay=5e-4)
    rng = np.random.default_rng(0)
    x = torch.from_numpy(rng.standard_normal((BATCH, 3, SIZE, SIZE)).astype(np.float32)).to(device)
    y = torch.from_numpy(rng.integers(0, 5, (BATCH, CELLS, CELLS))).to(device)

    def step():
        opt.zero_grad()
        torch.nn.functional.cross_entropy(twin(x), y, ignore_index=255).backward()
        opt.step()
        if device == "cuda":
            torch.cuda.synchronize()
    return step


def main(device="cpu", repeat=7):
    rows = []
    try:
        import torch
    except ImportError:
        torch = None
    for threads in sorted({1, os.cpu_count() or 1}) if device == "cpu" else ():
        fns = {"minilab": minilab_step()}
        if torch is not None:
            torch.set_num_threads(threads)
            fns["torch"] = torch_step()
        with limit_threads(threads):
            ms = interleaved_ms(fns, repeat=repeat, warmup=2)
        row = {"device": f"cpu, {threads} thread(s)", "minilab ms/iter": ms["minilab"],
               "minilab images/s": BATCH * 1e3 / ms["minilab"]}
        if "torch" in ms:
            row.update({"torch ms/iter": ms["torch"], "torch images/s": BATCH * 1e3 / ms["torch"],
                        "minilab / torch time": ms["minilab"] / ms["torch"]})
        rows.append(row)
    if device == "gpu":
        fns = {"minilab": minilab_step("gpu")}
        sync = backend.cupy.cuda.Device().synchronize
        if torch is not None and torch.cuda.is_available():
            torch_plain_float32(torch)
            fns["torch"] = torch_step("cuda")
        ms = interleaved_ms(fns, repeat=repeat, warmup=3, sync=sync)
        row = {"device": "gpu", "minilab ms/iter": ms["minilab"], "minilab images/s": BATCH * 1e3 / ms["minilab"]}
        if "torch" in ms:
            row.update({"torch ms/iter": ms["torch"], "torch images/s": BATCH * 1e3 / ms["torch"],
                        "minilab / torch time": ms["minilab"] / ms["torch"]})
        rows.append(row)
    write_results("train" if device == "cpu" else "train_gpu", rows, notes=(
        f"One SGD iteration of the demo's DeepLab-ASPP (batch {BATCH}, {SIZE}×{SIZE}, 5 classes), median of "
        f"{repeat}, minilab and torch interleaved"
        f"{' (torch in plain float32, TF32 off)' if device == 'gpu' else ''}. {machine()}."))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=["cpu", "gpu"], default="cpu")
    parser.add_argument("--repeat", type=int, default=7)
    args = parser.parse_args()
    main(args.device, args.repeat)

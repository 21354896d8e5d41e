"""Whole-model timings: DeepLab-ASPP-L on a tiny ResNet and VGG-16 LargeFOV at 1×3×321×321,
forward and forward+backward, and ×8 bilinear upsampling of 1×21×65×65 to 513×513, each
against its PyTorch twin (same weights, same modes) measured in the same run, interleaved.

    python benchmarks/bench_model.py                # CPU
    python benchmarks/bench_model.py --device gpu   # CuPy + a CUDA GPU

The result file is named by the CPU kernels each side runs (``common.cpu_kernels``). On a
CPU with AVX-512 whose environment holds OpenBLAS to AVX2 (``OPENBLAS_CORETYPE=Haswell``),
compare like with like by capping torch too, or by freeing OpenBLAS:

    ONEDNN_MAX_CPU_ISA=AVX2 ATEN_CPU_CAPABILITY=avx2 python benchmarks/bench_model.py
    OPENBLAS_CORETYPE=SkylakeX python benchmarks/bench_model.py

Targets (issue): whole-model forward+backward within 1.5× of the torch twin on the CPU
(2× on a GPU); bilinear ×8 within 1.2× of ``torch.nn.functional.interpolate``.
"""
import argparse
import os
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import cpu_kernels, interleaved_ms, torch_plain_float32, write_results  # noqa: E402
from minilab import backend, nn  # noqa: E402
from minilab.ops import interp  # noqa: E402


def models():
    """(name, minilab model) pairs, float32, in training mode (batch norm on batch
    statistics, dropout 0.5 on fc6/fc7, as when DeepLab trains)."""
    return [
        ("DeepLab-ASPP-L, tiny ResNet (1,1,1,1) width 16, hidden 1024",
         nn.deeplab_resnet(21, blocks=(1, 1, 1, 1), width=16, rates=nn.ASPP_L, hidden=1024, seed=0)),
        ("DeepLab-LargeFOV, VGG-16", nn.deeplab("vgg16-largefov", 21, seed=0)),
    ]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", choices=["cpu", "gpu"])
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    import torch
    import torch.nn.functional as F

    from minilab.nn.torch_twins import twin_of

    device = backend.resolve_device(args.device)
    tdev = "cuda" if device == "gpu" else "cpu"
    xp = backend.cupy if device == "gpu" else np
    if device == "gpu":
        torch_plain_float32(torch)

        def sync():
            backend.cupy.cuda.Device().synchronize()
            torch.cuda.synchronize()
    else:
        sync = None
    rng = np.random.default_rng(0)
    rows = []
    for name, model in models():
        twin = twin_of(model).to(tdev).train()
        model.to(device).train()
        x = backend.to_device(rng.standard_normal((1, 3, 321, 321)).astype(np.float32), device)
        tx = torch.as_tensor(backend.to_numpy(x), device=tdev)
        out = model.forward(x)
        dout = xp.asarray(rng.standard_normal(out.shape).astype(np.float32))
        tdout = torch.as_tensor(backend.to_numpy(dout), device=tdev)

        def ours_fb():
            model.forward(x)
            model.backward(dout)

        def torch_f():
            with torch.no_grad():
                twin(tx)

        def torch_fb():
            twin(tx).backward(tdout)

        t = interleaved_ms({"ours_f": lambda: model.forward(x), "torch_f": torch_f,
                            "ours_fb": ours_fb, "torch_fb": torch_fb}, repeat=args.repeat, sync=sync)
        for what in ("f", "fb"):
            rows.append({"case": f"{name}: {'forward' if what == 'f' else 'forward+backward'}",
                         "minilab ms": t[f"ours_{what}"], "torch ms": t[f"torch_{what}"],
                         "ratio": t[f"ours_{what}"] / t[f"torch_{what}"]})
        del model, twin

    scores = backend.to_device(rng.standard_normal((1, 21, 65, 65)).astype(np.float32), device)
    tscores = torch.as_tensor(backend.to_numpy(scores), device=tdev)
    t = interleaved_ms({
        "ours": lambda: interp.bilinear_resize_forward(scores, (513, 513), align_corners=True),
        "torch": lambda: F.interpolate(tscores, size=(513, 513), mode="bilinear", align_corners=True),
    }, repeat=4 * args.repeat, sync=sync)
    rows.append({"case": "bilinear x8, 1x21x65x65 -> 513x513 (align_corners=True)",
                 "minilab ms": t["ours"], "torch ms": t["torch"], "ratio": t["ours"] / t["torch"]})
    load = ", ".join(f"{v:.1f}" for v in os.getloadavg())
    kernels, suffix = cpu_kernels(torch) if device == "cpu" else ("", "")
    write_results(f"bench_model_{device}{suffix}", rows, notes=(
        f"float32, batch 1, training mode (batch statistics, dropout 0.5); median of {args.repeat} "
        f"interleaved runs ({4 * args.repeat} for the bilinear row); torch {torch.__version__} with {torch.get_num_threads()} threads"
        f"{' (GPU: cuDNN and cuBLAS in plain float32, TF32 off)' if device == 'gpu' else '; ' + kernels}; "
        f"load average at the end {load}; ratio = minilab / torch (lower is better)."))


if __name__ == "__main__":
    main()

"""``minilab demo``: train a tiny DeepLab-ASPP on synthetic scenes, evaluate it before and
after the dense CRF, and write a figure, training curves and a report.

The whole paper in three minutes on a laptop CPU: a small VGG-style backbone at output
stride 8 (pool4 and pool5 with stride 1, conv5 at rate 2), an ASPP head whose four
branches look at the score map with rates 1, 2, 3 and 4 (ASPP-S scaled down to 113×113
images), per-pixel cross-entropy on the stride-8 map, SGD with momentum, the poly policy,
×8 bilinear upsampling, and the fully connected CRF with parameters chosen for these
scenes (§4.1 cross-validates them; here they were picked once on scenes outside the
test set).
"""
import json
import time
from pathlib import Path

import numpy as np

from .. import validate
from ..data import SyntheticScenes
from .checkpoint import build_model, model_spec
from .evaluate import evaluate, json_ready
from .trainer import Trainer, TrainConfig

#: The demo's model: a VGG-16 LargeFOV-shaped backbone at 1/8 width with one convolution per
#: stage, and an ASPP head with rates 1-4 and 32 hidden channels (140 thousand parameters).
DEMO_MODEL = dict(width=0.125, depth=(1, 1, 1, 1, 1), rates=(1, 2, 3, 4), hidden=32, dropout=0.1)
#: Dense-CRF settings for the synthetic scenes (small objects: short range, sharp colours).
DEMO_CRF = dict(iterations=10, w1=5.0, sigma_alpha=10.0, sigma_beta=10.0, w2=3.0, sigma_gamma=1.0)
#: Scene size: 8·14 + 1, so the stride-8 score map (15×15) lands exactly on image pixels. At 81
#: pixels the thinnest shapes (rings, small triangles) are narrower than one score cell and the
#: same training stops near 0.81 mean IoU; 113 reaches about 0.88 in the same few minutes.
DEMO_SIZE = 113
#: SGD iterations of batch 4 (about two minutes on one core of a laptop-class CPU).
DEMO_ITERATIONS = 3000


def demo_config(iterations=DEMO_ITERATIONS, seed=0, **overrides):
    """The demo's training settings (poly, lr 0.01, batch 4, whole scenes of DEMO_SIZE pixels)."""
    return TrainConfig(**{**dict(iterations=iterations, batch_size=4, crop_size=DEMO_SIZE, base_lr=0.01,
                                 scale_range=None, seed=seed), **overrides})


def run_demo(out, *, iterations=DEMO_ITERATIONS, val_images=60, size=DEMO_SIZE, seed=0, progress=True, log=print):
    """Train, evaluate with and without the CRF, and write the results to the folder ``out``.

    Writes ``out/segmentations.png`` (image / ground truth / before CRF / after CRF),
    ``out/training.png`` (loss, learning rate), ``out/report.md``, ``out/report.json`` and
    ``out/model.npz`` (a checkpoint that ``minilab segment`` and ``minilab eval`` read).

    Returns
    -------
    dict: the report (``miou_before_crf``, ``miou_after_crf``, per-class IoU, timings, settings).
    """
    from .. import viz

    validate.integer("val_images", val_images, 1)  # before training, not after it
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    classes = SyntheticScenes.classes
    spec = model_spec("deeplab_vgg16", len(classes), seed=seed, **DEMO_MODEL)
    model = build_model(spec)
    config = demo_config(iterations, seed, crop_size=size)
    train_set = SyntheticScenes(10**6, size, seed=seed)
    test_set = SyntheticScenes(val_images, size, seed=seed + 10**6)  # held out: another seed
    trainer = Trainer(model, train_set, config, len(classes), checkpoint=out / "model.npz", model_spec=spec,
                      data_spec={"data": "synthetic", "size": size, "scenes": val_images, "seed": test_set.seed},
                      progress=progress)
    log(f"training a tiny DeepLab-ASPP ({sum(p.data.size for p in model.parameters())} parameters) "
        f"on {size}×{size} synthetic scenes for {iterations} iterations")
    trainer.fit()
    t_train = time.perf_counter() - t0
    log(f"evaluating on {val_images} held-out scenes, before and after the CRF")
    result = evaluate(model, test_set, len(classes), crf=DEMO_CRF, mean=config.mean,
                      input_scale=config.input_scale, trimap_width=3, keep=4)
    t_total = time.perf_counter() - t0
    viz.comparison_grid(result["examples"], out / "segmentations.png")
    viz.training_curves(trainer.history, out / "training.png", title="minilab demo")
    report = {
        "miou_before_crf": result["miou"], "miou_after_crf": result["miou_crf"],
        "pixel_accuracy_before_crf": result["pixel_accuracy"], "pixel_accuracy_after_crf": result["pixel_accuracy_crf"],
        "trimap3_accuracy_before_crf": result["trimap_accuracy"], "trimap3_accuracy_after_crf": result["trimap_accuracy_crf"],
        "class_iou_before_crf": dict(zip(classes, result["class_iou"])),
        "class_iou_after_crf": dict(zip(classes, result["class_iou_crf"])),
        "final_loss": float(np.mean(trainer.history["loss"][-50:])),
        "train_seconds": round(t_train, 1), "total_seconds": round(t_total, 1),
        "test_images": val_images, "image_size": size, "model_spec": spec, "crf": DEMO_CRF,
        "config": {k: v for k, v in vars(config).items()},
    }
    (out / "report.json").write_text(json.dumps(json_ready(report), indent=2, allow_nan=False))  # NaN IoU: null
    (out / "report.md").write_text(_markdown(report, classes))
    return report


def _markdown(r, classes):
    rows = "\n".join(f"| {c} | {r['class_iou_before_crf'][c]:.4f} | {r['class_iou_after_crf'][c]:.4f} |"
                     for c in classes)
    return f"""# minilab demo

A tiny DeepLab-ASPP trained from scratch for {r['config']['iterations']} iterations on
{r['image_size']}×{r['image_size']} synthetic scenes ({r['train_seconds']} s of training,
{r['total_seconds']} s in all), evaluated on {r['test_images']} held-out scenes.

| | before CRF | after CRF |
|---|---|---|
| mean IoU | {r['miou_before_crf']:.4f} | {r['miou_after_crf']:.4f} |
| pixel accuracy | {r['pixel_accuracy_before_crf']:.4f} | {r['pixel_accuracy_after_crf']:.4f} |
| accuracy within 3 px of a boundary | {r['trimap3_accuracy_before_crf']:.4f} | {r['trimap3_accuracy_after_crf']:.4f} |

| class | IoU before CRF | IoU after CRF |
|---|---|---|
{rows}

![segmentations](segmentations.png)

![training](training.png)
"""

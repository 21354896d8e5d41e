"""The paper's CRF experiment on the seven PASCAL VOC sample photos (§4.1, Fig. 6, Fig. 10).

A DCNN with output stride 8 sees the image through blocks of 8×8 pixels and its score map,
upsampled ×8 bilinearly, is blurry exactly where the objects' outlines are; the fully
connected CRF puts the outlines back where the image's edges are. Without a trained
network at hand, this module imitates such a score map from the ground truth:

1. one-hot labels, C×H×W (void pixels, 255, spread uniformly over the classes);
2. average-pooled over 8×8 blocks (the stride-8 map);
3. blurred with a Gaussian of ``blur`` coarse pixels (the network's large receptive field);
4. turned into scores ``gain · log(p + 0.001) + noise``, with independent Gaussian noise of
   standard deviation ``noise`` per coarse cell and class (the network's mistakes); with
   ``gain = 1`` the probabilities are the blurred block fractions themselves, confident
   inside objects and uncertain across the 8-16 pixels of each outline, as a network's are;
5. upsampled ×8 bilinearly (half-pixel centres, so each block's value sits at the block's
   centre; ``scipy.ndimage.zoom(order=1, grid_mode=True)``) and soft-maxed over classes.

:func:`run` then compares the argmax of those probabilities with the CRF's MAP labels:
mean IoU and pixel accuracy over all seven photos (one pooled confusion matrix), and the
accuracy and mean IoU inside trimap bands of growing width around the label boundaries
(Fig. 10). Run ``python -m minilab.crf.experiment --out DIR`` to redo the figures and
numbers of ``docs/crf_experiment.md``.

The score maps come from the ground truth itself, so the absolute numbers say nothing about
a real network; what the experiment shows is the CRF's effect on a stride-8 map's
boundaries, the part of the paper it is meant to illustrate.
"""
import argparse
import json
from pathlib import Path

import numpy as np
from scipy import ndimage

from .. import metrics, validate
from . import dense_crf, map_labels, tune
from .tune import DEEPLAB_PARAMS

VOC_SAMPLE = Path(__file__).resolve().parent.parent / "data" / "voc_sample"
NUM_CLASSES = 21
WIDTHS = (0, 1, 2, 4, 6, 8, 12, 16, 20, 30, 40)


def load_voc_sample(scale=1.0):
    """The seven VOC sample photos: a list of ``(name, image H×W×3 uint8, labels H×W int64)``.

    ``scale`` < 1 shrinks them (bilinear for the photo, nearest for the labels), for fast
    tests and lessons.
    """
    from PIL import Image

    scale = validate.positive("scale", scale)
    samples = []
    for path in sorted(VOC_SAMPLE.glob("*_label.png")):
        name = path.name[: -len("_label.png")]
        image = Image.open(VOC_SAMPLE / f"{name}.png").convert("RGB")
        labels = Image.open(path)
        if scale != 1.0:
            size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
            image = image.resize(size, Image.BILINEAR)
            labels = labels.resize(size, Image.NEAREST)
        samples.append((name, np.asarray(image), np.asarray(labels).astype(np.int64)))
    return samples


def coarse_probs(labels, num_classes=NUM_CLASSES, *, factor=8, blur=1.0, gain=1.0, noise=1.0,
                 rng=None, ignore_index=255):
    """A stride-``factor`` DCNN-like probability map made from ground-truth ``labels``.

    Parameters
    ----------
    labels : ndarray of int, H×W
        Class ids in 0..C-1, or ``ignore_index``.
    num_classes : int
        C.
    factor : int
        Output stride: the labels are average-pooled over factor×factor blocks (the image is
        padded by repeating its last row and column up to a multiple of ``factor``).
    blur : float >= 0
        Standard deviation, in coarse pixels, of the Gaussian blur of the pooled map.
    gain, noise : float
        Scores = ``gain · log(pooled + 0.001) + N(0, noise²)`` per coarse cell and class,
        before the ×8 upsampling and the softmax.
    rng : numpy.random.Generator, optional

    Returns
    -------
    probs : ndarray of float32, C×H×W, summing to 1 over C.
    """
    validate.label_array("labels", labels)
    if labels.ndim != 2:
        raise ValueError(f"labels must be H×W, got shape {labels.shape}")
    num_classes = validate.integer("num_classes", num_classes, minimum=1)
    factor = validate.integer("factor", factor, minimum=1)
    blur = validate.real("blur", blur, minimum=0)
    gain = validate.real("gain", gain)
    noise = validate.real("noise", noise, minimum=0)
    rng = np.random.default_rng() if rng is None else rng
    h, w = labels.shape
    hc, wc = -(-h // factor), -(-w // factor)
    padded = np.pad(labels, ((0, hc * factor - h), (0, wc * factor - w)), mode="edge")
    onehot = (padded[None] == np.arange(num_classes)[:, None, None]).astype(np.float64)
    onehot[:, padded == ignore_index] = 1.0 / num_classes
    pooled = onehot.reshape(num_classes, hc, factor, wc, factor).mean(axis=(2, 4))
    if blur > 0:
        pooled = ndimage.gaussian_filter(pooled, sigma=(0, blur, blur), mode="nearest")
    scores = gain * np.log(pooled + 1e-3) + noise * rng.standard_normal(pooled.shape)
    fine = ndimage.zoom(scores, (1, factor, factor), order=1, mode="nearest", grid_mode=True)[:, :h, :w]
    fine = np.exp(fine - fine.max(axis=0, keepdims=True))
    return (fine / fine.sum(axis=0, keepdims=True)).astype(np.float32)


def run(samples, params=None, *, scale=1.0, widths=WIDTHS, seed=0, method="lattice",
        iterations=10, keep_maps=False, **coarse_options):
    """Coarse probabilities → CRF on each sample; scores before and after.

    Parameters
    ----------
    samples : list of (name, image, labels)
        As :func:`load_voc_sample` returns.
    params : dict, optional
        CRF parameters (``w1, sigma_alpha, sigma_beta, w2, sigma_gamma``); default
        :data:`~minilab.crf.tune.DEEPLAB_PARAMS`. The position scales σα and σγ are
        multiplied by ``scale``, so that downscaled photos see the same kernels relative to
        their size.
    scale : float
        The scale the samples were loaded at.
    widths : sequence of int
        Trimap half-widths (pixels at the samples' scale).
    seed : int
        Seed of the score maps' noise.
    keep_maps : bool
        Also return, per image, the coarse and CRF label maps (for figures).
    **coarse_options
        Passed to :func:`coarse_probs`.

    Returns
    -------
    dict with ``"before"`` and ``"after"``, each ``{"miou", "accuracy", "trimap_accuracy":
    [...], "trimap_miou": [...]}`` pooled over all samples; ``"per_image"``: a list of
    ``{"name", "miou_before", "miou_after"}``; ``"widths"``, ``"params"``; with
    ``keep_maps``, ``"maps"``: a list of ``(coarse labels, CRF labels)``.
    """
    params = dict(DEEPLAB_PARAMS if params is None else params)
    params["sigma_alpha"] *= scale
    params["sigma_gamma"] *= scale
    rng = np.random.default_rng(seed)
    c = NUM_CLASSES
    conf = {k: np.zeros((c, c), np.int64) for k in ("before", "after")}
    band_conf = {k: [np.zeros((c, c), np.int64) for _ in widths] for k in ("before", "after")}
    per_image, maps = [], []
    for name, image, labels in samples:
        probs = coarse_probs(labels, c, rng=rng, **coarse_options)
        q = dense_crf(image, probs, iterations=iterations, method=method, **params)
        preds = {"before": probs.argmax(axis=0), "after": map_labels(q)}
        bands = [metrics.trimap_band(labels, w) for w in widths]
        row = {"name": name}
        for key, pred in preds.items():
            one = metrics.confusion_matrix(pred, labels, c)
            conf[key] += one
            row[f"miou_{key}"] = metrics.mean_iou(one)
            for k, band in enumerate(bands):
                band_conf[key][k] += metrics.confusion_matrix(pred, labels, c, mask=band)
        per_image.append(row)
        if keep_maps:
            maps.append((preds["before"], preds["after"]))
    result = {"params": params, "widths": list(widths), "per_image": per_image}
    for key in ("before", "after"):
        result[key] = {"miou": metrics.mean_iou(conf[key]),
                       "accuracy": metrics.pixel_accuracy(conf[key]),
                       "trimap_accuracy": [metrics.pixel_accuracy(b) for b in band_conf[key]],
                       "trimap_miou": [metrics.mean_iou(b) for b in band_conf[key]]}
    if keep_maps:
        result["maps"] = maps
    return result


def figures(samples, result, out):
    """Write ``crf_examples.png`` (image / ground truth / coarse / CRF) and ``crf_trimap.png``."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ..viz import voc_palette

    palette = voc_palette()
    out = Path(out)
    n = len(samples)
    fig, axes = plt.subplots(n, 4, figsize=(10, 2.1 * n))
    for row, ((name, image, labels), (before, after), scores) in enumerate(
            zip(samples, result["maps"], result["per_image"])):
        panels = [(image, name), (palette[labels], "ground truth"),
                  (palette[before], f"coarse, IoU {scores['miou_before']:.3f}"),
                  (palette[after], f"CRF, IoU {scores['miou_after']:.3f}")]
        for ax, (picture, title) in zip(axes[row], panels):
            ax.imshow(picture)
            ax.set_title(title, fontsize=8)
            ax.axis("off")
    fig.tight_layout()
    fig.savefig(out / "crf_examples.png", dpi=60)
    plt.close(fig)

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.2))
    for ax, key, label in ((axes[0], "trimap_accuracy", "pixel accuracy"),
                           (axes[1], "trimap_miou", "mean IoU")):
        for stage, style in (("before", "o--"), ("after", "o-")):
            ax.plot(result["widths"], result[stage][key], style,
                    label="coarse (stride 8, ×8 bilinear)" if stage == "before" else "after the CRF")
        ax.set_xlabel("trimap half-width (pixels)")
        ax.set_ylabel(f"{label} in the band")
        ax.grid(alpha=0.3)
    axes[0].legend()
    fig.tight_layout()
    fig.savefig(out / "crf_trimap.png", dpi=80)
    plt.close(fig)


def held_out(samples, tune_count=3, *, scale=1.0, seed=0, coarse=None, rounds=1,
             progress=True, **coarse_options):
    """Cross-validate w1, σα, σβ on the first ``tune_count`` samples; compare on the others.

    :func:`minilab.crf.tune.cross_validate` (``coarse``: the paper's grid by default; σα and σγ scaled
    by ``scale`` like the photos) picks the parameters on coarse maps of the first samples
    (noise seed ``seed + 1``); :func:`run` then scores the remaining samples with
    :data:`~minilab.crf.tune.DEEPLAB_PARAMS` and with the tuned parameters.

    Returns
    -------
    dict with ``"tuned"`` (the parameters, σ's in full-size pixels), ``"default"`` and
    ``"tuned_run"`` (:func:`run`'s results on the held-out samples) and ``"table"`` (the
    search's rows, σα in pixels of the scaled photos).
    """
    coarse = tune.COARSE_GRID if coarse is None else coarse
    rng = np.random.default_rng(seed + 1)
    tuning = [(image, coarse_probs(labels, rng=rng, **coarse_options), labels)
              for _, image, labels in samples[:tune_count]]
    grid = dict(coarse, sigma_alpha=tuple(s * scale for s in coarse["sigma_alpha"]))
    steps = dict(tune.FINE_STEPS, sigma_alpha=tune.FINE_STEPS["sigma_alpha"] * scale)
    best, table = tune.cross_validate(tuning, coarse=grid, fine_steps=steps, rounds=rounds,
                                      sigma_gamma=DEEPLAB_PARAMS["sigma_gamma"] * scale, progress=progress)
    best["sigma_alpha"] /= scale
    best["sigma_gamma"] = DEEPLAB_PARAMS["sigma_gamma"]  # fixed, in full-size pixels
    rest = samples[tune_count:]
    return {"tuned": best, "table": table,
            "default": run(rest, scale=scale, seed=seed, **coarse_options),
            "tuned_run": run(rest, best, scale=scale, seed=seed, **coarse_options)}


def main(argv=None):
    parser = argparse.ArgumentParser(description="The CRF experiment on the VOC sample photos.")
    parser.add_argument("--out", default="docs/img", help="folder for the figures and crf_experiment.json")
    parser.add_argument("--scale", type=float, default=1.0, help="shrink the photos (default 1)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the score maps' noise")
    for name in ("noise", "blur", "gain"):
        parser.add_argument(f"--{name}", type=float, default=1.0, help=f"coarse_probs' {name} (default 1)")
    parser.add_argument("--held-out", action="store_true",
                        help="instead: cross-validate on 3 photos, compare DeepLab's and the tuned parameters "
                             "on the other 4 (writes crf_held_out.json)")
    args = parser.parse_args(argv)
    samples = load_voc_sample(args.scale)
    options = dict(noise=args.noise, blur=args.blur, gain=args.gain)
    Path(args.out).mkdir(parents=True, exist_ok=True)
    if args.held_out:
        result = held_out(samples, scale=args.scale, seed=args.seed, **options)
        name = "crf_held_out.json"
        summary = {"tuned": result["tuned"], "mIoU without CRF": result["default"]["before"]["miou"],
                   "mIoU, DeepLab's parameters": result["default"]["after"]["miou"],
                   "mIoU, tuned parameters": result["tuned_run"]["after"]["miou"]}
    else:
        result = run(samples, scale=args.scale, seed=args.seed, keep_maps=True, **options)
        figures(samples, result, args.out)
        result.pop("maps")
        name = "crf_experiment.json"
        summary = {k: result[k] for k in ("before", "after")}
    with open(Path(args.out) / name, "w") as f:
        json.dump(result, f, indent=1)
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()

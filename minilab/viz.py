"""Pictures of segmentations: the PASCAL VOC colour palette, colourised label maps, overlays,
the image / ground truth / before CRF / after CRF grid of Fig. 6, and training curves.

Label maps are saved as palette ("P" mode) PNGs: one byte per pixel holding the class id,
plus a 256-entry colour table, which is how PASCAL VOC ships its ground truth
(``SegmentationClass/*.png``); 255 ("void") is drawn in cream.

Figures are built with :class:`matplotlib.figure.Figure` directly, not through pyplot, so
they work without a display (and in threads); save them with ``fig.savefig(path)``, or pass
``path=`` to write a PNG.
"""
import numpy as np

from . import validate


def voc_palette():
    """The PASCAL VOC colour map: 256 RGB colours, row ``k`` the colour of class id ``k``.

    Class ``k``'s colour spreads the bits of ``k`` over the three channels, most significant
    bit of each channel first: bit ``3j + c`` of ``k`` becomes bit ``7 − j`` of channel ``c``
    (c = 0 red, 1 green, 2 blue). So background (0) is black, aeroplane (1) is dark red
    (128, 0, 0), person (15) is (192, 128, 128), and void (255) is (224, 224, 192).

    Returns
    -------
    palette : ndarray of uint8, 256×3
    """
    k = np.arange(256)
    palette = np.zeros((256, 3), dtype=np.int64)
    for j in range(8):
        for c in range(3):
            palette[:, c] |= ((k >> (3 * j + c)) & 1) << (7 - j)
    return palette.astype(np.uint8)


def colorize(labels, palette=None):
    """An H×W label map (class ids 0..255) as an H×W×3 uint8 picture in the VOC colours, or
    in ``palette``'s: a K×3 array of integers 0..255, a row for each class id up to the
    largest in ``labels``. A float palette is refused rather than guessed at (0..1 as
    matplotlib gives, or 0..255?): pass ``(palette * 255).round().astype(np.uint8)``."""
    labels = np.asarray(labels)
    if labels.ndim != 2 or labels.dtype.kind not in "iu":
        raise ValueError(f"labels must be an H×W integer array, got {labels.dtype} of shape {labels.shape}")
    top = labels.max() if labels.size else -1
    if labels.size and (labels.min() < 0 or top > 255):
        raise ValueError(f"labels must hold class ids 0..255, got {labels.min()}..{top}")
    if palette is None:
        return voc_palette()[labels]
    palette = validate.label_array("palette", np.asarray(palette))
    if palette.ndim != 2 or palette.shape[1] != 3 or palette.shape[0] <= top:
        raise ValueError(f"palette must be K×3 with a row for each class id up to {top}, got shape {palette.shape}")
    if palette.size and (palette.min() < 0 or palette.max() > 255):
        raise ValueError(f"palette must hold colour values 0..255, got {palette.min()}..{palette.max()}")
    return palette.astype(np.uint8)[labels]


def overlay(image, labels, alpha=0.5):
    """The image with its label colours blended in (``alpha`` of colour); background (0) and
    unlabelled (255) pixels are left as they are."""
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3 or image.shape[:2] != np.shape(labels):
        raise ValueError(f"image must be H×W×3 with the labels' size {np.shape(labels)}, got {image.shape}")
    if image.dtype != np.uint8:
        raise TypeError(f"image must be uint8 (0-255, as Pillow reads it), got {image.dtype}")
    alpha = validate.real("alpha", alpha)
    if not 0 <= alpha <= 1:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    labels = np.asarray(labels)
    out = image.astype(np.float32)
    fg = (labels != 0) & (labels != 255)
    out[fg] = (1 - alpha) * out[fg] + alpha * colorize(labels).astype(np.float32)[fg]
    return np.clip(out + 0.5, 0, 255).astype(np.uint8)


def _figure(width, height):
    from matplotlib.figure import Figure
    return Figure(figsize=(width, height), dpi=100, layout="constrained")


def comparison_grid(examples, path=None, titles=("image", "ground truth", "before CRF", "after CRF")):
    """Fig. 6's layout: one row per example with the image, the ground truth, and the
    predictions before and after the CRF.

    Parameters
    ----------
    examples : list of dict
        Each with ``image`` (H×W×3 uint8), ``labels``, ``pred`` and optionally ``pred_crf``
        (H×W class ids), as returned in ``evaluate(..., keep=k)["examples"]``.
    path : str or Path, optional
        Where to save the figure (PNG).

    Returns
    -------
    matplotlib.figure.Figure
    """
    if not examples:
        raise ValueError("examples must hold at least one example")
    keys = ["image", "labels", "pred"] + (["pred_crf"] if "pred_crf" in examples[0] else [])
    if any(("pred_crf" in ex) != ("pred_crf" in examples[0]) for ex in examples):
        raise ValueError("examples must all have pred_crf, or none")
    fig = _figure(2.0 * len(keys), 2.0 * len(examples))
    axes = fig.subplots(len(examples), len(keys), squeeze=False)
    for row, ex in zip(axes, examples):
        for ax, key in zip(row, keys):
            ax.imshow(ex[key] if key == "image" else colorize(ex[key]), interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
    for ax, title in zip(axes[0], titles):
        ax.set_title(title, fontsize=10)
    if path is not None:
        fig.savefig(path)
    return fig


def training_curves(history, path=None, title=None):
    """The training loss (and its running mean), the learning rate, and validation mean IoU.

    ``history`` is a trainer's history: lists ``iteration``, ``loss``, ``lr`` and ``val`` (a
    list of dicts with ``iteration``, ``miou`` and maybe ``miou_crf`` and ``seconds``).
    Several histories can be compared by passing a dict ``{name: history}`` (Table 2's poly
    against step). With one history whose validations carry ``seconds`` (training time),
    the validation panel gets a second axis in minutes of training on top.

    Returns
    -------
    matplotlib.figure.Figure
    """
    runs = history if "loss" not in history else {"": history}
    if not runs or any(len(h["loss"]) == 0 for h in runs.values()):
        raise ValueError("history must hold at least one training step (its loss list is empty)")
    validated = any(h.get("val") for h in runs.values())  # no validation panel without validations
    fig = _figure(10 if validated else 6.7, 3.2)
    ax_loss, ax_lr, *ax_val = fig.subplots(1, 3 if validated else 2)
    for name, h in runs.items():
        it, loss = np.asarray(h["iteration"]), np.asarray(h["loss"])
        k = max(1, len(loss) // 20)
        smooth = np.convolve(loss, np.ones(k) / k, mode="valid")
        line, = ax_loss.plot(it, loss, alpha=0.25, linewidth=0.8)
        ax_loss.plot(it[k - 1:], smooth, color=line.get_color(), label=name or "loss")
        ax_lr.plot(it, h["lr"], color=line.get_color(), label=name or None)
        if h.get("val"):
            vit = [v["iteration"] for v in h["val"]]
            ax_val[0].plot(vit, [v["miou"] for v in h["val"]], "o-", color=line.get_color(),
                        label=f"{name} before CRF".strip())
            if "miou_crf" in h["val"][0]:
                ax_val[0].plot(vit, [v["miou_crf"] for v in h["val"]], "s--", color=line.get_color(),
                            label=f"{name} after CRF".strip())
    ax_loss.set(xlabel="iteration", ylabel="cross-entropy", title="training loss", yscale="log")
    ax_lr.set(xlabel="iteration", ylabel="base learning rate", title="learning rate")
    for ax in ax_val:
        ax.set(xlabel="iteration", ylabel="mean IoU", title="validation")
    val = next(iter(runs.values())).get("val")
    if len(runs) == 1 and len(val or ()) > 1 and all("seconds" in v for v in val):
        it = [0] + [v["iteration"] for v in val]
        minutes = [0] + [v["seconds"] / 60 for v in val]
        it.append(10 * it[-1])  # beyond the last validation: the average pace
        minutes.append(10 * minutes[-1])
        top = ax_val[0].secondary_xaxis("top", functions=(lambda i: np.interp(i, it, minutes),
                                                       lambda m: np.interp(m, minutes, it)))
        top.set_xlabel("minutes of training", fontsize=8)
    for ax in [ax_loss, *ax_val] + ([ax_lr] if len(runs) > 1 else []):
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    if title:
        fig.suptitle(title)
    if path is not None:
        fig.savefig(path)
    return fig

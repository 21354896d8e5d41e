"""Digit scenes: real handwritten digits (scikit-learn's ``load_digits``) scattered on textured backgrounds.

``load_digits`` holds 1,797 8×8 scans of handwritten digits 0-9 (the UCI "optical
recognition of handwritten digits" set), ink 0-16. A scene places 1-``max_digits`` of them,
each upscaled bilinearly to a square of side ``h`` drawn from ``scale_range`` (several
scales), as ink of a random dark colour on paper of a random light tint with noise and a
shading gradient. Digits do not overlap (an occluded digit cannot be told from another), so
a digit that finds no free place after a few tries is left out. Labels: 0 background,
``d + 1`` for digit ``d`` (11 classes); a pixel belongs to a digit where its upscaled ink
exceeds :data:`INK_THRESHOLD`.

Why digits of 32-64 pixels on 129×129 scenes: DeepLab scores pixels on a stride-8 grid and
upsamples the scores bilinearly. A stroke is about a quarter of a digit's side, so a digit
of 20 pixels has strokes 5 pixels wide, narrower than one score cell; even the best
stride-8 score map (the labels' own class fractions on the grid, upsampled) then scores
only about 0.66 mean IoU at 20-44 pixels, against about 0.81 at 32-64.

Digits are split by index so held-out scenes (``split="val"``) show digit samples never
seen in training: every fifth digit is held out. (``load_digits`` is the test part of the
UCI set, written by 13 people and not labelled by writer, so the same hands appear in both
splits.)
"""
import numpy as np
from PIL import Image

from .. import validate

CLASSES = ("background",) + tuple(str(d) for d in range(10))
#: A pixel is labelled with its digit where the upscaled ink (0-1) exceeds this.
INK_THRESHOLD = 0.4
#: Places tried for each digit before it is left out of a crowded scene.
PLACEMENT_TRIES = 20


def load_digit_images():
    """(images N×8×8 float in [0, 1], targets N ints) from scikit-learn."""
    try:
        from sklearn.datasets import load_digits
    except ImportError as e:
        raise ImportError("digit scenes need scikit-learn: pip install 'minilab[digits]' "
                          "(or pip install scikit-learn)") from e
    d = load_digits()
    return d.images / 16.0, d.target.astype(int)


def digit_ink(digit, side):
    """An 8×8 digit (ink in [0, 1]) upscaled bilinearly to ``side``×``side`` (ink in [0, 1])."""
    image = Image.fromarray(np.round(np.asarray(digit) * 255).astype(np.uint8))
    return np.asarray(image.resize((side, side), Image.BILINEAR)) / 255.0


def paste_digit(image, labels, ink, y, x, colour, label):
    """Paint ``ink`` (h×w in [0, 1]) in ``colour`` onto ``image`` at row ``y``, column ``x``, in place.

    The window becomes ``image·(1 - ink) + colour·ink``; its labels become ``label`` where
    ``ink > INK_THRESHOLD`` (the rest of the window keeps its labels).
    """
    h, w = ink.shape
    window = image[y:y + h, x:x + w]
    window[...] = window * (1 - ink[..., None]) + np.asarray(colour, float) * ink[..., None]
    labels[y:y + h, x:x + w][ink > INK_THRESHOLD] = label


def _free(box, boxes):
    """Whether the square ``box = (y, x, h)`` overlaps none of ``boxes``."""
    y, x, h = box
    return all(y + h <= b or b + s <= y or x + h <= a or a + s <= x for b, a, s in boxes)


def make_digit_scene(rng, digits, targets, size, scale_range=(32, 64), max_digits=4):
    """One scene: ``(image size×size×3 uint8, labels size×size uint8 in 0..10)``.

    ``digits`` (N×8×8 ink in [0, 1]) and ``targets`` (N ints 0-9) are the pool to draw
    from; digit sides are drawn uniformly from ``scale_range`` (both ends included).
    """
    paper = rng.uniform(150, 240, 3)
    image = (paper + rng.normal(0, 12, (size, size, 3))
             + rng.normal(0, 25, 3) * np.linspace(-1, 1, size)[:, None, None])
    labels = np.zeros((size, size), np.uint8)
    boxes = []
    for _ in range(rng.integers(1, max_digits + 1)):
        k = int(rng.integers(len(digits)))
        h = int(rng.integers(scale_range[0], scale_range[1] + 1))
        colour = rng.uniform(0, 90, 3)  # dark ink
        for _ in range(PLACEMENT_TRIES):
            y, x = (int(v) for v in rng.integers(0, size - h + 1, 2))
            if _free((y, x, h), boxes):
                boxes.append((y, x, h))
                paste_digit(image, labels, digit_ink(digits[k], h), y, x, colour, targets[k] + 1)
                break
    return np.clip(image, 0, 255).astype(np.uint8), labels


class DigitScenes:
    """``length`` scenes of handwritten digits, scene ``i`` drawn from ``(seed, i)``.

    ``dataset[i]`` is ``(image size×size×3 uint8, labels size×size uint8 in 0..10)``.

    Parameters
    ----------
    length : int
        Number of scenes.
    size : int
        Scene side in pixels (``8k + 1`` fits the stride-8 score map).
    seed : int
        Scenes of different seeds are independent draws (use one seed to train, another to test).
    split : ``"train"`` or ``"val"``
        Which digits to draw from: ``"val"`` holds every fifth of the 1,797 digits.
    scale_range : (int, int), optional
        Smallest and largest digit side in pixels (both included; at most ``size``);
        default ``(size // 4, size // 2)``, 32-64 pixels on the default 129-pixel scenes.
    max_digits : int
        Each scene holds 1 to ``max_digits`` digits (fewer when they do not fit).
    """

    classes = CLASSES
    class_names = CLASSES
    num_classes = len(CLASSES)

    def __init__(self, length=1000, size=129, seed=0, split="train", scale_range=None, max_digits=4):
        if split not in ("train", "val"):
            raise ValueError(f"split must be 'train' or 'val', got {split!r}")
        # scene i is drawn from default_rng([seed, i]), which reads each entry as 32-bit words:
        # above 2**32 - 1 one seed's scenes would repeat another's
        self.length = validate.integer("length", length, 1, 2**32)
        self.size = validate.integer("size", size, 8)
        self.seed = validate.integer("seed", seed, 0, 2**32 - 1)
        if scale_range is None:
            scale_range = (max(8, self.size // 4), max(8, self.size // 2))
        lo, hi = validate.pair("scale_range", scale_range, 8)
        if not lo <= hi <= self.size:
            raise ValueError(f"scale_range must be (low, high) with 8 <= low <= high <= size ({self.size}), "
                             f"got {scale_range!r}")
        self.scale_range = (lo, hi)
        self.max_digits = validate.integer("max_digits", max_digits, 1)
        images, targets = load_digit_images()
        keep = (np.arange(len(images)) % 5 == 0) == (split == "val")
        self.digits, self.targets = images[keep], targets[keep]

    def __len__(self):
        return self.length

    def __getitem__(self, i):
        if not 0 <= i < self.length:
            raise IndexError(f"scene index {i} out of range 0..{self.length - 1}")
        return make_digit_scene(np.random.default_rng([self.seed, i]), self.digits, self.targets,
                                self.size, self.scale_range, self.max_digits)

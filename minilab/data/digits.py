"""Digit scenes: real handwritten digits (scikit-learn's ``load_digits``) scattered on textured backgrounds.

``load_digits`` holds 1,797 8×8 scans of handwritten digits 0-9 (the UCI "optical
recognition of handwritten digits" set). A scene places 1-4 of them, each upscaled
bilinearly to a height of ``scale_range`` pixels, in a random colour, on a noisy background
of another colour. Labels: 0 background, ``d + 1`` for digit ``d`` (11 classes); a pixel
belongs to a digit where its upscaled ink exceeds 40 %.

Digits are split by index so held-out scenes (``split="val"``) show digits (writers' samples)
never seen in training: every fifth digit is held out.
"""
import numpy as np
from PIL import Image

CLASSES = ("background",) + tuple(str(d) for d in range(10))


def load_digit_images():
    """(images N×8×8 float in [0, 1], targets N ints) from scikit-learn."""
    try:
        from sklearn.datasets import load_digits
    except ImportError as e:
        raise ImportError("digit scenes need scikit-learn: pip install 'minilab[digits]' "
                          "(or pip install scikit-learn)") from e
    d = load_digits()
    return d.images / 16.0, d.target.astype(int)


class DigitScenes:
    """``length`` scenes of handwritten digits, scene ``i`` drawn from ``(seed, i)``.

    ``dataset[i]`` is ``(image size×size×3 uint8, labels size×size uint8 in 0..10)``.
    """

    classes = CLASSES
    class_names = CLASSES
    num_classes = len(CLASSES)

    def __init__(self, length=1000, size=96, seed=0, split="train", scale_range=(20, 44), max_digits=4):
        if split not in ("train", "val"):
            raise ValueError(f"split must be 'train' or 'val', got {split!r}")
        images, targets = load_digit_images()
        keep = (np.arange(len(images)) % 5 == 0) == (split == "val")
        self.digits, self.targets = images[keep], targets[keep]
        self.length, self.size, self.seed = length, size, seed
        self.scale_range, self.max_digits = scale_range, max_digits

    def __len__(self):
        return self.length

    def __getitem__(self, i):
        if not 0 <= i < self.length:
            raise IndexError(f"scene index {i} out of range 0..{self.length - 1}")
        rng = np.random.default_rng([self.seed, i])
        s = self.size
        background = rng.uniform(30, 225, 3)
        image = background + rng.normal(0, 12, (s, s, 3)) + rng.normal(0, 25, 3) * np.linspace(-1, 1, s)[:, None, None]
        labels = np.zeros((s, s), np.uint8)
        for _ in range(rng.integers(1, self.max_digits + 1)):
            k = int(rng.integers(len(self.digits)))
            h = int(rng.integers(*self.scale_range))
            ink = np.asarray(Image.fromarray((self.digits[k] * 255).astype(np.uint8)).resize((h, h), Image.BILINEAR)) / 255.0
            y, x = rng.integers(0, s - h + 1, 2)
            colour = rng.uniform(0, 255, 3)
            while np.abs(colour - background).sum() < 150:  # keep the ink visible on its background
                colour = rng.uniform(0, 255, 3)
            window = image[y:y + h, x:x + h]
            window[...] = window * (1 - ink[..., None]) + colour * ink[..., None]
            labels[y:y + h, x:x + h][ink > 0.4] = self.targets[k] + 1
        return np.clip(image, 0, 255).astype(np.uint8), labels

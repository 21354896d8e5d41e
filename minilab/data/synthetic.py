"""Synthetic scenes: shapes with textures on cluttered backgrounds, generated from a seed.

Each scene is drawn on the fly from ``(seed, index)``, so a data set of any length costs no
disk and is the same on every machine. Four object classes, each with its own shape, colour
family and texture, appear at widely varying sizes (radius 12 %-40 % of the image side),
may overlap, and sit on a background of muted colour gradients strewn with thin lines and
small blobs of every colour (clutter that is *not* an object: a small red blob is not a
disc). So:

* the network must look at a neighbourhood wide enough to tell a big textured disc from the
  background (field of view, ASPP);
* the same class comes at several scales (multi-scale inputs);
* a stride-8 score map blurs the sharp object outlines, which the colour-sensitive CRF can
  restore (boundary refinement).

Classes: 0 background, 1 disc (warm, smooth radial shading), 2 square (green, stripes),
3 triangle (blue, checkerboard), 4 ring (yellow, speckled; its hole is background).
"""
import numpy as np

from .. import validate

CLASSES = ("background", "disc", "square", "triangle", "ring")
_BASE_COLOURS = np.array([[0, 0, 0], [215, 70, 50], [60, 180, 70], [60, 90, 210], [225, 200, 60]], float)


def _shape_mask(kind, u, v, r):
    """Inside-mask of one shape in its own (rotated, centred) coordinates u, v."""
    if kind == 1:
        return u * u + v * v <= r * r
    if kind == 2:
        return np.maximum(np.abs(u), np.abs(v)) <= 0.8 * r
    if kind == 3:  # equilateral triangle: three half-planes at distance 0.6 r from the centre
        inside = np.ones(u.shape, bool)
        for a in (np.pi / 2, np.pi / 2 + 2 * np.pi / 3, np.pi / 2 + 4 * np.pi / 3):
            inside &= u * np.cos(a) + v * np.sin(a) <= 0.6 * r
        return inside
    d = u * u + v * v
    return (d <= r * r) & (d >= (0.45 * r) ** 2)


def _texture(kind, u, v, r, rng):
    """Brightness factor in [0.55, 1] that marks the class: shading, stripes, checks, speckle."""
    if kind == 1:
        return 1.0 - 0.4 * np.clip((u * u + v * v) / (r * r), 0, 1)
    period = max(2.0, r / 3)
    if kind == 2:
        return np.where(np.sin(np.pi * u / period * 2) > 0, 1.0, 0.6)
    if kind == 3:
        return np.where((np.floor(u / period) + np.floor(v / period)) % 2 == 0, 1.0, 0.55)
    return np.where(rng.random(u.shape) < 0.25, 0.6, 1.0)


def make_scene(rng, size=64, max_objects=3):
    """One scene: ``(image H×W×3 uint8, labels H×W uint8)`` with H = W = ``size``."""
    yy, xx = np.mgrid[0:size, 0:size].astype(float)
    # Background: a smooth gradient between two random muted (greyish) colours ...
    c0 = rng.uniform(50, 200) + rng.uniform(-25, 25, 3)
    c1 = rng.uniform(50, 200) + rng.uniform(-25, 25, 3)
    a = rng.uniform(0, 2 * np.pi)
    t = ((xx * np.cos(a) + yy * np.sin(a)) / size + 1) / 2
    image = c0 * (1 - t[..., None]) + c1 * t[..., None]
    # ... cluttered with thin lines and small blobs of any colour.
    for _ in range(rng.integers(3, 9)):
        colour = rng.uniform(0, 255, 3)
        if rng.random() < 0.5:
            b = rng.uniform(0, np.pi)
            off = rng.uniform(-size / 2, size / 2)
            dist = np.abs((xx - size / 2) * np.sin(b) - (yy - size / 2) * np.cos(b) - off)
            image[dist < rng.uniform(0.5, 1.5)] = colour
        else:
            cy, cx, rr = rng.uniform(0, size), rng.uniform(0, size), rng.uniform(1, 0.04 * size + 1)
            image[(yy - cy) ** 2 + (xx - cx) ** 2 <= rr * rr] = colour
    labels = np.zeros((size, size), np.uint8)
    for _ in range(rng.integers(1, max_objects + 1)):
        kind = int(rng.integers(1, len(CLASSES)))
        r = rng.uniform(0.12, 0.40) * size
        cy, cx = rng.uniform(0.1, 0.9, 2) * size
        th = rng.uniform(0, 2 * np.pi)
        u = (xx - cx) * np.cos(th) + (yy - cy) * np.sin(th)
        v = -(xx - cx) * np.sin(th) + (yy - cy) * np.cos(th)
        inside = _shape_mask(kind, u, v, r)
        colour = np.clip(_BASE_COLOURS[kind] + rng.uniform(-30, 30, 3), 0, 255)
        shade = _texture(kind, u, v, r, rng)
        image[inside] = colour * shade[inside][:, None]
        labels[inside] = kind
    image += rng.normal(0, 6, image.shape)
    return np.clip(image, 0, 255).astype(np.uint8), labels


class SyntheticScenes:
    """A data set of ``length`` synthetic scenes; scene ``i`` is drawn from ``(seed, i)``.

    ``dataset[i]`` is ``(image size×size×3 uint8, labels size×size uint8)``. Two instances with
    different seeds are disjoint samples (use one seed for training, another held out).
    """

    classes = CLASSES
    class_names = CLASSES
    num_classes = len(CLASSES)

    def __init__(self, length=1000, size=64, seed=0, max_objects=3):
        # scene i is drawn from default_rng([seed, i]), which reads each entry as 32-bit words:
        # above 2**32 - 1 one seed's scenes would repeat another's
        self.length = validate.integer("length", length, 0, 2**32)
        self.size = validate.integer("size", size, 8)
        self.seed = validate.integer("seed", seed, 0, 2**32 - 1)
        self.max_objects = validate.integer("max_objects", max_objects, 1)

    def __len__(self):
        return self.length

    def __getitem__(self, i):
        if not 0 <= i < self.length:
            raise IndexError(f"scene index {i} out of range 0..{self.length - 1}")
        return make_scene(np.random.default_rng([self.seed, i]), self.size, self.max_objects)

"""Inputs shared by the dense CRF tests: the VOC sample photos and coarse noisy score maps."""
from pathlib import Path

import numpy as np
from PIL import Image

import minilab

PHOTOS = Path(minilab.__file__).parent / "data" / "voc_sample"


def photo(name, shrink=1, size=None):
    """A sample photo (H×W×3 uint8) and its labels, shrunk by ``shrink`` or resized to ``size`` (W, H)."""
    image = Image.open(PHOTOS / f"{name}.png").convert("RGB")
    label = Image.open(PHOTOS / f"{name}_label.png")
    size = size or (image.width // shrink, image.height // shrink)
    if size != image.size:
        image, label = image.resize(size, Image.BILINEAR), label.resize(size, Image.NEAREST)
    return np.array(image), np.array(label)


def coarse_probs(label, c, rng, factor=8, gain=3.0):
    """What a DCNN gives, roughly: the one-hot ground truth (labels >= c folded into c−1)
    average-pooled by ``factor``, times ``gain``, plus unit noise, upsampled (nearest) and
    soft-maxed. (C, H, W) float32."""
    h, w = label.shape
    onehot = (np.arange(c)[:, None, None] == np.minimum(label, c - 1)[None]).astype(np.float64)
    hh, ww = -(-h // factor), -(-w // factor)
    padded = np.zeros((c, hh * factor, ww * factor))
    padded[:, :h, :w] = onehot
    logits = gain * padded.reshape(c, hh, factor, ww, factor).mean((2, 4)) + rng.normal(0, 1.0, (c, hh, ww))
    logits = np.kron(logits, np.ones((factor, factor)))[:, :h, :w]
    p = np.exp(logits - logits.max(0))
    return (p / p.sum(0)).astype(np.float32)


def assert_same_lattice(offsets_a, neighbours_a, offsets_b, neighbours_b):
    """Two lattices are the same up to the numbering of their vertices: map a's numbers to
    b's through the point-vertex table, then the blur neighbours must match."""
    m = neighbours_b.shape[1]
    assert neighbours_a.shape == neighbours_b.shape
    to_b = np.full(m, -1, np.int64)
    to_b[np.asarray(offsets_a).ravel()] = np.asarray(offsets_b).ravel()
    assert (to_b >= 0).all()
    mapped = np.where(neighbours_a == m, m, to_b[np.minimum(neighbours_a, m - 1)])
    np.testing.assert_array_equal(mapped[:, np.argsort(to_b), :], neighbours_b)

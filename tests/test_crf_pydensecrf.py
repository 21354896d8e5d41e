"""minilab's dense CRF set up like pydensecrf (Krähenbühl's C++ code) gives its answer.

Skipped where pydensecrf (the ``pydensecrf2`` package) is not installed. Unaries: coarse
noisy score maps made from the ground truth (as a DCNN would give) and smooth random ones.
"""
import numpy as np
import pytest
from crf_helpers import coarse_probs, photo

from minilab import crf

dcrf = pytest.importorskip("pydensecrf.densecrf")

SETTINGS = [(4.0, 80.0, 13.0), (5.0, 50.0, 3.0)]  # (w1, σα, σβ): pydensecrf's example σ's, DeepLab's grid


def smooth_random_probs(c, h, w, rng):
    logits = rng.normal(0, 2.0, (c, h // 16 + 1, w // 16 + 1))
    logits = np.kron(logits, np.ones((16, 16)))[:, :h, :w]
    p = np.exp(logits - logits.max(0))
    return (p / p.sum(0)).astype(np.float32)


def reference(image, probs, w1, sa, sb, iterations=10, normalization=None):
    c, h, w = probs.shape
    d = dcrf.DenseCRF2D(w, h, c)
    d.setUnaryEnergy(np.ascontiguousarray(-np.log(np.maximum(probs, np.float32(1e-10))).reshape(c, -1)))
    norm = dict(normalization=normalization) if normalization is not None else {}
    d.addPairwiseGaussian(sxy=3, compat=3, **norm)
    d.addPairwiseBilateral(sxy=sa, srgb=sb, rgbim=np.ascontiguousarray(image), compat=w1, **norm)
    return np.array(d.inference(iterations)).reshape(c, h, w)


def assert_agrees(q, q_ref):
    labels = (q.argmax(0) == q_ref.argmax(0)).mean()
    assert labels >= 0.999, f"MAP labels agree on {labels:.5f} of pixels"
    assert np.abs(q - q_ref).max() <= 1e-3


@pytest.mark.parametrize("name", ["2007_000129", "2007_000346"])
@pytest.mark.parametrize("w1, sa, sb", SETTINGS)
def test_agrees_with_pydensecrf_on_voc_photos(name, w1, sa, sb):
    rng = np.random.default_rng(7)
    image, label = photo(name, shrink=3)
    for probs in (coarse_probs(label, 21, rng), smooth_random_probs(21, *label.shape, rng)):
        q = crf.dense_crf(image, probs, w1=w1, sigma_alpha=sa, sigma_beta=sb)
        assert_agrees(q, reference(image, probs, w1, sa, sb))


@pytest.mark.parametrize("normalization, reference_normalization", [("after", "NORMALIZE_AFTER"),
                                                                     ("none", "NO_NORMALIZATION")])
def test_other_normalizations_agree_with_pydensecrf(normalization, reference_normalization):
    rng = np.random.default_rng(8)
    image, label = photo("2007_000033", shrink=3)
    probs = coarse_probs(label, 21, rng)
    q = crf.dense_crf(image, probs, w1=5, sigma_alpha=50, sigma_beta=3, normalization=normalization)
    assert_agrees(q, reference(image, probs, 5, 50, 3, normalization=getattr(dcrf, reference_normalization)))


def test_iterations_agree_one_by_one():
    rng = np.random.default_rng(9)
    image, label = photo("2007_000847", shrink=4)
    probs = coarse_probs(label, 5, rng)
    for iterations in (0, 1, 3):
        q = crf.dense_crf(image, probs, iterations=iterations, w1=4, sigma_alpha=20, sigma_beta=10)
        np.testing.assert_allclose(q, reference(image, probs, 4, 20, 10, iterations=iterations), atol=2e-5)


@pytest.mark.slow
def test_agrees_with_pydensecrf_at_full_size():
    rng = np.random.default_rng(10)
    image, label = photo("2007_001288")
    probs = coarse_probs(label, 21, rng)
    w1, sa, sb = SETTINGS[1]  # DeepLab's: the larger lattice
    assert_agrees(crf.dense_crf(image, probs, w1=w1, sigma_alpha=sa, sigma_beta=sb),
                  reference(image, probs, w1, sa, sb))

"""Softmax cross-entropy with ignored pixels: a direct per-pixel sum, torch's
cross_entropy, huge logits, all-ignored crops, float64 gradient checks, bad labels."""
import numpy as np
import pytest

from minilab import backend
from minilab.gradcheck import numerical_gradient, relative_error
from minilab.ops.loss import softmax_cross_entropy_backward, softmax_cross_entropy_forward


def make(rng, n=2, c=5, h=4, w=6, ignored=0.3):
    logits = rng.standard_normal((n, c, h, w)) * 2
    labels = rng.integers(0, c, size=(n, h, w))
    labels[rng.random((n, h, w)) < ignored] = 255
    return logits, labels


def test_matches_a_direct_per_pixel_sum(rng):
    logits, labels = make(rng)
    loss, _ = softmax_cross_entropy_forward(logits, labels)
    terms = [np.log(np.exp(logits[b, :, i, j]).sum()) - logits[b, labels[b, i, j], i, j]
             for b, i, j in np.ndindex(labels.shape) if labels[b, i, j] != 255]
    assert loss.shape == () and loss.dtype == np.float64
    assert np.isclose(float(loss), np.mean(terms), rtol=1e-13)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_matches_torch(dtype, rng):
    torch = pytest.importorskip("torch")
    logits, labels = make(rng, c=21, h=9, w=7)
    logits = logits.astype(dtype)
    loss, cache = softmax_cross_entropy_forward(logits, labels.astype(np.uint8))
    t = torch.from_numpy(logits).requires_grad_()
    tloss = torch.nn.functional.cross_entropy(t, torch.from_numpy(labels), ignore_index=255)
    tloss.backward()
    tol = 1e-5 if dtype == np.float32 else 1e-12
    assert loss.dtype == dtype
    np.testing.assert_allclose(loss, tloss.item(), rtol=tol)
    np.testing.assert_allclose(softmax_cross_entropy_backward(1.0, cache), t.grad.numpy(), rtol=tol, atol=tol)


def test_gradient_check(rng):
    logits, labels = make(rng)
    logits /= 4  # no probability so small that its gradient drowns in finite-difference noise
    loss, cache = softmax_cross_entropy_forward(logits, labels)
    num = numerical_gradient(lambda: softmax_cross_entropy_forward(logits, labels)[0], logits, np.array(0.7))
    grad = softmax_cross_entropy_backward(0.7, cache)
    assert relative_error(grad, num) < 1e-6
    assert (grad.transpose(1, 0, 2, 3)[:, labels == 255] == 0).all()


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_stable_for_huge_logits(dtype):
    logits = np.zeros((1, 3, 1, 2), dtype=dtype)
    logits[0, :, 0, 0] = [1e4, -1e4, 0]  # confidently right
    logits[0, :, 0, 1] = [1e4, -1e4, 0]  # confidently wrong: label 1
    loss, cache = softmax_cross_entropy_forward(logits, np.array([[[0, 1]]]))
    assert np.isclose(float(loss), 2e4 / 2, rtol=1e-6)
    grad = softmax_cross_entropy_backward(1.0, cache)
    np.testing.assert_allclose(grad[0, :, 0, 1], [0.5, -0.5, 0], atol=1e-6)
    assert np.isfinite(grad).all()


def test_all_ignored_gives_zero_loss_and_zero_gradient(rng):
    logits, labels = make(rng)
    labels[:] = 255
    loss, cache = softmax_cross_entropy_forward(logits, labels)
    assert float(loss) == 0.0
    np.testing.assert_array_equal(softmax_cross_entropy_backward(1.0, cache), 0)


def test_other_ignore_index(rng):
    logits, labels = make(rng)
    ref, _ = softmax_cross_entropy_forward(logits, labels)
    other = np.where(labels == 255, -1, labels)
    loss, _ = softmax_cross_entropy_forward(logits, other, ignore_index=-1)
    assert float(loss) == float(ref)


@pytest.mark.parametrize("label", [255, 0])  # every pixel ignored, or labelled outside 0..-1
def test_logits_without_classes_are_named(label):
    with pytest.raises(ValueError, match=r"logits must have at least one class \(axis 1\), got shape \(1, 0, 2, 2\)"):
        softmax_cross_entropy_forward(np.zeros((1, 0, 2, 2)), np.full((1, 2, 2), label))


def test_bad_inputs(rng):
    logits, labels = make(rng)
    with pytest.raises(ValueError, match=r"labels must be in 0\.\.4 or 255"):
        softmax_cross_entropy_forward(logits, np.where(labels == 0, 5, labels))
    with pytest.raises(ValueError, match=r"got values such as \[-1\]"):
        softmax_cross_entropy_forward(logits, np.where(labels == 0, -1, labels))
    with pytest.raises(ValueError, match="labels must have shape"):
        softmax_cross_entropy_forward(logits, labels[:, :3])
    with pytest.raises(TypeError, match="integer dtype"):
        softmax_cross_entropy_forward(logits, labels.astype(np.float32))
    with pytest.raises(ValueError, match="logits contains NaN"):
        softmax_cross_entropy_forward(logits * np.nan, labels)
    with pytest.raises(ValueError, match="logits must have 4 dimensions"):
        softmax_cross_entropy_forward(logits[0], labels[0])
    _, cache = softmax_cross_entropy_forward(logits, labels)
    with pytest.raises(ValueError, match="dout must have 0 dimensions"):
        softmax_cross_entropy_backward(np.ones(2), cache)
    with pytest.raises(ValueError, match="dout contains NaN"):
        softmax_cross_entropy_backward(float("nan"), cache)
    for bad in (None, "1", True):  # None was read as NaN
        with pytest.raises(TypeError, match="dout must be a NumPy or CuPy array"):
            softmax_cross_entropy_backward(bad, cache)
    with pytest.raises(TypeError, match="dout must be float32 or float64"):
        softmax_cross_entropy_backward(np.array(1), cache)
    np.testing.assert_array_equal(softmax_cross_entropy_backward(np.float32(2), cache)[0],
                                  2 * softmax_cross_entropy_backward(1, cache)[0])


@pytest.mark.gpu
def test_cupy_matches_numpy(rng):
    cp = backend.cupy
    logits, labels = make(rng, c=21, h=9, w=7)
    logits = logits.astype(np.float32)
    loss, cache = softmax_cross_entropy_forward(logits, labels)
    gloss, gcache = softmax_cross_entropy_forward(cp.asarray(logits), cp.asarray(labels))
    assert np.isclose(float(gloss), float(loss), rtol=1e-5)
    np.testing.assert_allclose(cp.asnumpy(softmax_cross_entropy_backward(1.0, gcache)),
                               softmax_cross_entropy_backward(1.0, cache), rtol=1e-5, atol=1e-6)

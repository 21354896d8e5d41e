"""Metrics against direct set computations on random label maps."""
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from minilab import metrics


def direct_ious(pred, labels, num_classes, ignore_index=255):
    """IoU per class as |A ∩ B| / |A ∪ B| of pixel index sets (nan when both are empty)."""
    kept = [i for i in range(labels.size) if labels.flat[i] != ignore_index]
    ious = []
    for c in range(num_classes):
        a = {i for i in kept if labels.flat[i] == c}
        b = {i for i in kept if pred.flat[i] == c}
        ious.append(len(a & b) / len(a | b) if a | b else np.nan)
    return np.array(ious)


def direct_band(labels, width, ignore_index=255):
    """Trimap band by loops: labelled pixels within Chebyshev distance ``width`` of a boundary pixel."""
    h, w = labels.shape
    edge = np.zeros((h, w), bool)
    for y in range(h):
        for x in range(w):
            for dy, dx in ((0, 1), (1, 0), (0, -1), (-1, 0)):
                if 0 <= y + dy < h and 0 <= x + dx < w and labels[y + dy, x + dx] != labels[y, x]:
                    edge[y, x] = True
    band = np.zeros((h, w), bool)
    for y in range(h):
        for x in range(w):
            window = edge[max(y - width, 0):y + width + 1, max(x - width, 0):x + width + 1]
            band[y, x] = window.any() and labels[y, x] != ignore_index
    return band


label_maps = st.tuples(st.integers(1, 9), st.integers(1, 9), st.integers(1, 5), st.integers(0, 2**31))


def random_maps(h, w, c, seed, void=True):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, c, (h, w))
    if void:
        labels[rng.random((h, w)) < 0.2] = 255
    pred = rng.integers(0, c, (h, w))
    return pred, labels


@settings(max_examples=40, deadline=None)
@given(label_maps)
def test_iou_and_accuracy_match_sets(args):
    h, w, c, seed = args
    pred, labels = random_maps(h, w, c, seed)
    kept = labels != 255
    if not kept.any():
        with pytest.raises(ValueError, match="no pixel"):
            metrics.mean_iou(metrics.confusion_matrix(pred, labels, c))
        return
    conf = metrics.confusion_matrix(pred, labels, c)
    assert conf.shape == (c, c) and conf.dtype == np.int64 and conf.sum() == kept.sum()
    expected = direct_ious(pred, labels, c)
    np.testing.assert_allclose(metrics.class_iou(conf), expected)
    assert metrics.mean_iou(conf) == pytest.approx(np.nanmean(expected))
    assert metrics.pixel_accuracy(conf) == pytest.approx((pred == labels)[kept].mean())


@settings(max_examples=30, deadline=None)
@given(label_maps, st.integers(0, 4))
def test_trimap_band_matches_loops(args, width):
    h, w, c, seed = args
    _, labels = random_maps(h, w, c, seed)
    np.testing.assert_array_equal(metrics.trimap_band(labels, width), direct_band(labels, width))


def test_confusion_matrices_add_over_images(rng):
    a = [random_maps(6, 7, 4, s) for s in range(3)]
    total = sum(metrics.confusion_matrix(p, t, 4) for p, t in a)
    stacked = metrics.confusion_matrix(np.stack([p for p, _ in a]), np.stack([t for _, t in a]), 4)
    np.testing.assert_array_equal(total, stacked)
    band = metrics.trimap_band(np.stack([t for _, t in a]), 1)
    np.testing.assert_array_equal(band[1], metrics.trimap_band(a[1][1], 1))


def test_known_values():
    labels = np.array([[0, 0, 1, 1], [0, 0, 1, 255]])
    pred = np.array([[0, 1, 1, 1], [0, 0, 2, 0]])
    conf = metrics.confusion_matrix(pred, labels, 4)
    # class 0: TP 3, FN 1 (pixel predicted 1), FP 0 -> 3/4; class 1: TP 2, FP 1, FN 1 -> 2/4;
    # class 2: TP 0, FP 1 -> 0; class 3: absent -> nan
    np.testing.assert_allclose(metrics.class_iou(conf), [0.75, 0.5, 0.0, np.nan])
    assert metrics.mean_iou(conf) == pytest.approx((0.75 + 0.5 + 0.0) / 3)
    assert metrics.pixel_accuracy(conf) == pytest.approx(5 / 7)
    # boundaries: column 1|2 in both rows, and 1|255 at the bottom right (void counts)
    band0 = metrics.trimap_band(labels, 0)
    np.testing.assert_array_equal(band0, [[0, 1, 1, 1], [0, 1, 1, 0]])
    assert metrics.trimap_accuracy(pred, labels, 0) == pytest.approx(3 / 5)
    assert metrics.trimap_accuracy(pred, labels, 5) == pytest.approx(5 / 7)
    masked = metrics.confusion_matrix(pred, labels, 4, mask=band0)
    assert masked.sum() == 5


def test_ignore_index_none_counts_everything():
    labels = np.array([[0, 1], [1, 0]])
    conf = metrics.confusion_matrix(labels, labels, 2, ignore_index=None)
    assert metrics.mean_iou(conf) == 1.0 and conf.sum() == 4


@pytest.mark.parametrize("pred, labels, c, err, match", [
    (np.zeros((2, 2)), np.zeros((2, 2), int), 2, TypeError, "pred.*integer"),
    (np.zeros((2, 2), int), np.zeros((2, 2), bool), 2, TypeError, "labels.*integer"),
    ([[0]], np.zeros((1, 1), int), 2, TypeError, "pred"),
    (np.zeros((2, 2), int), np.zeros((2, 3), int), 2, ValueError, "same shape"),
    (np.zeros((2, 2), int), np.full((2, 2), 2), 2, ValueError, "labels must hold class ids in 0..1"),
    (np.full((2, 2), -1), np.zeros((2, 2), int), 2, ValueError, "pred must hold class ids"),
    (np.full((2, 2), 2**63, np.uint64), np.zeros((2, 2), int), 2, ValueError,  # not read as negative
     f"pred must hold class ids in 0..1, got values from {2**63} to {2**63}"),
    (np.zeros((2, 2), int), np.zeros((2, 2), int), 0, ValueError, "num_classes"),
    (np.zeros((0,), int), np.zeros((0,), int), 2, ValueError, "empty"),
])
def test_bad_input(pred, labels, c, err, match):
    with pytest.raises(err, match=match):
        metrics.confusion_matrix(pred, labels, c)


def test_bad_conf_mask_and_width():
    labels = np.zeros((3, 3), int)
    with pytest.raises(ValueError, match="mask"):
        metrics.confusion_matrix(labels, labels, 2, mask=np.ones((3, 2), bool))
    with pytest.raises(ValueError, match="square"):
        metrics.mean_iou(np.zeros((2, 3), int))
    with pytest.raises(ValueError, match="no pixel"):
        metrics.pixel_accuracy(np.zeros((2, 2), int))
    with pytest.raises(ValueError, match="width"):
        metrics.trimap_band(labels, -1)
    with pytest.raises(ValueError, match="no boundary"):
        metrics.trimap_accuracy(labels, labels, 3)
    with pytest.raises(ValueError, match="2 dimensions"):
        metrics.trimap_band(np.zeros(4, int), 1)
    with pytest.raises(TypeError, match="mask"):
        metrics.confusion_matrix(labels, labels, 2, mask=[[True] * 3] * 3)
    with pytest.raises(ValueError, match="finite counts"):
        metrics.class_iou(np.array([[1.0, np.nan], [0.0, 1.0]]))
    edge = np.array([[0, 0, 1, 1]] * 4)
    for bad in (-1, 255):
        with pytest.raises(ValueError, match="pred must hold class ids"):
            metrics.trimap_accuracy(np.full((4, 4), bad), edge, 1)


def test_evaluate_gives_nan_for_an_empty_trimap_band():
    """Pooled over a data set without boundaries the band is empty: no value (NaN), not 0.0."""
    from minilab.train import evaluate

    class Constant:
        def eval(self):
            return self

        def train(self, mode=True):
            return self

        def parameters(self):
            return []

        def forward(self, x):
            return np.zeros((1, 2, 2, 2), np.float32)

    flat = [(np.zeros((9, 9, 3), np.uint8), np.zeros((9, 9), np.uint8))]
    assert np.isnan(evaluate(Constant(), flat, 2, trimap_width=2)["trimap_accuracy"])


def test_pred_ignored_where_label_void():
    labels = np.array([[0, 255]])
    pred = np.array([[0, 255]])  # a prediction copied from the labels: the void pixel is not scored
    assert metrics.pixel_accuracy(metrics.confusion_matrix(pred, labels, 2)) == 1.0


def test_xp(xp):
    pred, labels = random_maps(8, 9, 3, 1)
    conf = metrics.confusion_matrix(xp.asarray(pred), xp.asarray(labels), 3)
    np.testing.assert_array_equal(np.asarray(conf.get() if hasattr(conf, "get") else conf),
                                  metrics.confusion_matrix(pred, labels, 3))
    band = metrics.trimap_band(xp.asarray(labels), 2)
    np.testing.assert_array_equal(band.get() if hasattr(band, "get") else band, metrics.trimap_band(labels, 2))
    assert metrics.mean_iou(conf) == pytest.approx(metrics.mean_iou(metrics.confusion_matrix(pred, labels, 3)))


def test_confusion_rows_are_labels_and_a_mask_still_ignores_void():
    labels = np.array([[0, 0, 1, 255]])
    pred = np.array([[0, 1, 1, 0]])
    conf = metrics.confusion_matrix(pred, labels, 2)
    np.testing.assert_array_equal(conf, [[1, 1], [0, 1]])  # conf[t, p]
    np.testing.assert_array_equal(metrics.confusion_matrix(pred, labels, 2, mask=np.ones((1, 4), bool)), conf)


@pytest.mark.parametrize("width", [1, 2])
def test_trimap_band_dilates_both_axes_around_one_small_object(width):
    """Random maps are boundary almost everywhere; one pixel in a plain field shows the square."""
    labels = np.zeros((11, 13), int)
    labels[5, 6] = 1
    band = metrics.trimap_band(labels, width)
    np.testing.assert_array_equal(band, direct_band(labels, width))
    assert band[5 - 1 - width, 6] and not band[5 - 2 - width, 6]  # reaches width rows above the edge pixels


def test_an_all_ignored_image_counts_nothing():
    labels = np.full((3, 4), 255, np.uint8)
    conf = metrics.confusion_matrix(np.zeros((3, 4), np.uint8), labels, 3)
    assert conf.shape == (3, 3) and conf.sum() == 0


def test_negative_counts_are_refused():
    with pytest.raises(ValueError, match="finite counts >= 0"):
        metrics.class_iou(np.array([[2, -1], [0, 1]]))

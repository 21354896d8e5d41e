"""Segmentation metrics: confusion matrix, IoU, pixel accuracy, trimap-band accuracy.

The paper (Chen et al., TPAMI 2017, §4) reports the PASCAL VOC measure, mean
intersection-over-union over the classes, and studies the CRF near object boundaries by
evaluating only the pixels in a narrow band (a "trimap") around them (Fig. 10: mean IoU as
a function of the band width; the earlier ICLR 2015 version plots pixel accuracy). Both
come from one confusion matrix:

    conf[t, p] = number of pixels whose label is t and whose prediction is p

    IoU_c      = conf[c, c] / (Σ_p conf[c, p] + Σ_t conf[t, c] − conf[c, c])    (TP / (TP + FN + FP))
    mean IoU   = mean of IoU_c over the classes that occur in the labels or the predictions
    accuracy   = Σ_c conf[c, c] / Σ conf

Pixels labelled ``ignore_index`` (255, PASCAL VOC's "void") are left out of everything.
Confusion matrices add: the dataset's matrix is the sum of the images' matrices, which is
how the VOC benchmark pools its counts (not an average of per-image scores).

Everything is written against ``xp``: NumPy arrays give NumPy results, CuPy arrays CuPy
results (the scalars are Python floats either way).
"""
import numpy as np

from . import backend, validate


def _label_array(name, x):
    """Check that ``x`` is an integer NumPy or CuPy array with at least one element."""
    validate.label_array(name, x)
    if x.size == 0:
        raise ValueError(f"{name} must not be empty, got shape {tuple(x.shape)}")
    return x


def confusion_matrix(pred, labels, num_classes, ignore_index=255, mask=None):
    """Count pixels by (label, prediction): the matrix every other metric is read from.

    Parameters
    ----------
    pred : ndarray of int, any shape (e.g. H×W or N×H×W)
        Predicted class per pixel, in ``0..num_classes-1`` wherever the label is not ignored.
    labels : ndarray of int, same shape as ``pred``
        Ground-truth class per pixel, in ``0..num_classes-1`` or ``ignore_index``.
    num_classes : int
        C, the number of classes (21 for PASCAL VOC: background + 20 objects).
    ignore_index : int or None
        Label value that marks unlabelled pixels (255 in VOC); those pixels are not counted.
        ``None`` counts every pixel.
    mask : ndarray of bool, same shape, optional
        Count only where ``mask`` is True (for example a :func:`trimap_band`).

    Returns
    -------
    conf : ndarray of int64, C×C, on the arrays' device
        ``conf[t, p]`` = number of counted pixels with label ``t`` and prediction ``p``
        (rows are the ground truth, columns the prediction).

    Raises
    ------
    TypeError, ValueError
        Non-integer arrays, shapes that differ, or class ids outside the range.
    """
    _label_array("pred", pred)
    _label_array("labels", labels)
    if mask is not None:
        validate.array("mask", mask)
    num_classes = validate.integer("num_classes", num_classes, minimum=1)
    xp = backend.array_module(pred, labels, mask)
    if pred.shape != labels.shape:
        raise ValueError(f"pred and labels must have the same shape, got {tuple(pred.shape)} "
                         f"and {tuple(labels.shape)}")
    keep = xp.ones(labels.shape, dtype=bool)
    if ignore_index is not None:
        keep = labels != validate.integer("ignore_index", ignore_index)
    if mask is not None:
        if mask.shape != labels.shape or mask.dtype != bool:
            raise ValueError(f"mask must be a bool array of shape {tuple(labels.shape)}, got "
                             f"{mask.dtype} of shape {tuple(mask.shape)}")
        keep = keep & mask
    t, p = labels[keep], pred[keep]
    for name, values in (("labels", t), ("pred", p)):  # in their own dtype: uint64 may exceed int64
        if values.size and (int(values.min()) < 0 or int(values.max()) >= num_classes):
            where = f" (other than ignore_index={ignore_index})" if name == "labels" and ignore_index is not None else ""
            raise ValueError(f"{name} must hold class ids in 0..{num_classes - 1}{where}, got values "
                             f"from {int(values.min())} to {int(values.max())}")
    codes = t.astype(np.int64) * num_classes + p.astype(np.int64)
    return xp.bincount(codes, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def _confusion(conf):
    validate.array("conf", conf)
    if conf.ndim != 2 or conf.shape[0] != conf.shape[1]:
        raise ValueError(f"conf must be a square C×C matrix, got shape {tuple(conf.shape)}")
    if not bool(backend.array_module(conf).isfinite(conf).all()) or bool((conf < 0).any()):
        raise ValueError("conf must hold finite counts >= 0")
    if int(conf.sum()) == 0:
        raise ValueError("conf counts no pixel (every label ignored, or an empty mask)")
    return conf.astype(np.float64)


def class_iou(conf):
    """Per-class intersection over union, TP / (TP + FP + FN).

    Parameters
    ----------
    conf : ndarray, C×C
        A :func:`confusion_matrix` (or a sum of them).

    Returns
    -------
    iou : ndarray of float64, shape (C,)
        ``nan`` for a class absent from both the labels and the predictions (0/0: nothing
        to score); 0 for a class that is predicted but never labelled, or labelled but
        never predicted.
    """
    conf = _confusion(conf)
    xp = backend.array_module(conf)
    tp = xp.diag(conf)
    union = conf.sum(axis=0) + conf.sum(axis=1) - tp
    return xp.where(union > 0, tp / xp.maximum(union, 1), xp.nan)


def mean_iou(conf):
    """Mean IoU over the classes present in the labels or the predictions (the VOC measure).

    Classes absent from both (``nan`` in :func:`class_iou`) are left out of the mean rather
    than counted as 0 or 1: a class nobody labelled or predicted says nothing about the
    segmenter. On a whole dataset every VOC class occurs, so this is the usual mean over
    all 21 classes; on a single image it is the mean over the classes that image involves.
    """
    iou = class_iou(conf)
    xp = backend.array_module(iou)
    return float(xp.nanmean(iou))


def pixel_accuracy(conf):
    """Fraction of counted pixels whose prediction equals the label, Σ_c conf[c, c] / Σ conf."""
    conf = _confusion(conf)
    xp = backend.array_module(conf)
    return float(xp.trace(conf) / conf.sum())


def trimap_band(labels, width, ignore_index=255):
    """The pixels within ``width`` pixels of a label boundary (the trimap of Fig. 10).

    A pixel is on a boundary when one of its 4 neighbours has a different label value; a
    change to or from ``ignore_index`` counts too, because in PASCAL VOC the void band is
    drawn exactly along object outlines. The band is the set of boundary pixels dilated by a
    (2·width+1)×(2·width+1) square (Chebyshev distance ≤ ``width``), with pixels labelled
    ``ignore_index`` removed, so they are never scored.

    The dilation is a box sum computed with cumulative sums (O(H·W) whatever the width).

    Parameters
    ----------
    labels : ndarray of int, ...×H×W
        Ground-truth labels (leading axes, e.g. a batch, are independent images).
    width : int >= 0
        Half-width of the band in pixels; 0 keeps only the boundary pixels.
    ignore_index : int or None
        The void label.

    Returns
    -------
    band : ndarray of bool, same shape as ``labels``
    """
    _label_array("labels", labels)
    width = validate.integer("width", width, minimum=0)
    if labels.ndim < 2:
        raise ValueError(f"labels must have at least 2 dimensions (…×H×W), got shape {tuple(labels.shape)}")
    xp = backend.array_module(labels)
    edge = xp.zeros(labels.shape, dtype=np.int32)
    rows = labels[..., 1:, :] != labels[..., :-1, :]
    cols = labels[..., :, 1:] != labels[..., :, :-1]
    edge[..., 1:, :] |= rows
    edge[..., :-1, :] |= rows
    edge[..., :, 1:] |= cols
    edge[..., :, :-1] |= cols
    band = _box_sum(_box_sum(edge, width, axis=-1), width, axis=-2) > 0
    if ignore_index is not None:
        band &= labels != ignore_index
    return band


def _box_sum(x, radius, axis):
    """out[i] = Σ_{|j−i| ≤ radius} x[j] along ``axis`` (zeros beyond the edges), via cumsum."""
    xp = backend.array_module(x)
    n = x.shape[axis]
    c = xp.cumsum(x, axis=axis)
    shape = list(c.shape)
    shape[axis] = 1
    c = xp.concatenate([xp.zeros(shape, c.dtype), c], axis=axis)  # now c[k] = Σ_{j<k} x[j]
    i = xp.arange(n)
    hi = xp.take(c, xp.minimum(i + radius + 1, n), axis=axis)
    lo = xp.take(c, xp.maximum(i - radius, 0), axis=axis)
    return hi - lo


def trimap_accuracy(pred, labels, width, ignore_index=255):
    """Pixel accuracy inside the trimap band of half-width ``width`` (Fig. 10).

    ``pred`` and ``labels`` are ...×H×W integer arrays. For the band's mean IoU, or to pool
    several images, build the counts yourself:
    ``confusion_matrix(pred, labels, C, mask=trimap_band(labels, width))``.
    Raises ``ValueError`` when the band holds no labelled pixel (an image of one class).
    """
    band = trimap_band(labels, width, ignore_index)
    _label_array("pred", pred)
    if pred.shape != labels.shape:
        raise ValueError(f"pred and labels must have the same shape, got {tuple(pred.shape)} "
                         f"and {tuple(labels.shape)}")
    total = int(band.sum())
    if total == 0:
        raise ValueError("the trimap band holds no labelled pixel (labels have no boundary)")
    banded = pred[band]
    if int(banded.min()) < 0 or (ignore_index is not None and bool((banded == ignore_index).any())):
        raise ValueError(f"pred must hold class ids >= 0 other than ignore_index={ignore_index}, got values "
                         f"from {int(banded.min())} to {int(banded.max())}")
    return int((band & (pred == labels)).sum()) / total

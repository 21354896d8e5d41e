"""Inference and evaluation (§4): full-resolution probabilities, mean IoU before and after the CRF.

At test time DeepLab computes the stride-8 score map, upsamples it bilinearly to the image
size (``align_corners=True``, Caffe's Interp layer) and takes the softmax; the dense CRF
(eq. 2-3) then refines those probabilities using the image's colours. Scores are pooled
over the whole data set into one confusion matrix (:mod:`minilab.metrics`).
"""
import numpy as np

from .. import backend, metrics, validate
from ..data.transforms import INPUT_MEAN, INPUT_SCALE, to_input
from ..ops.activations import softmax_forward
from ..ops.interp import bilinear_resize_forward


def check_image(name, image):
    """Check an H×W×3 uint8 NumPy image, the only kind the models take: a float image in 0..1
    or a 16-bit one would pass ``(image - mean) * input_scale`` as a wrong but plausible input."""
    if not isinstance(image, np.ndarray):
        raise TypeError(f"{name} must be a NumPy array, got {type(image).__name__}")
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"{name} must be H×W×3, got shape {image.shape}")
    if image.dtype != np.uint8:
        raise TypeError(f"{name} must be uint8 (0..255), got dtype {image.dtype}")
    return image


def predict_probs(model, image, mean=INPUT_MEAN, input_scale=INPUT_SCALE):
    """Class probabilities of one image at full resolution.

    Parameters
    ----------
    model : minilab.nn.Module, in eval mode (the caller's job) mapping N×3×H×W to stride-8 logits.
    image : ndarray, H×W×3 uint8.

    Returns
    -------
    probs : ndarray, C×H×W float32 (NumPy), summing to 1 over C at every pixel.
    """
    check_image("image", image)
    h, w = image.shape[:2]
    x = to_input(image, mean, input_scale)
    params = model.parameters()
    if params and backend.is_gpu_array(params[0].data):
        x = backend.to_device(x, "gpu")
    logits = model.forward(x)
    up, _ = bilinear_resize_forward(logits, (h, w), align_corners=True)
    probs, _ = softmax_forward(up)
    return backend.to_numpy(probs[0]).astype(np.float32)


def evaluate(model, dataset, num_classes, *, crf=None, mean=INPUT_MEAN, input_scale=INPUT_SCALE,
             trimap_width=None, keep=0, progress=False):
    """Score ``model`` on every image of ``dataset``, before and (given ``crf``) after the dense CRF.

    Parameters
    ----------
    dataset : sequence of ``(image, labels)``: H×W×3 uint8 images, H×W class ids (255 unlabelled).
    crf : dict, optional
        Keyword arguments of :func:`minilab.crf.dense_crf` (``w1``, ``sigma_alpha``, ...).
    trimap_width : int, optional
        Also report the accuracy within this many pixels of a label boundary (Fig. 10).
    keep : int
        Also return the first ``keep`` images with their labels and predictions (for figures).

    Returns
    -------
    dict with ``miou``, ``pixel_accuracy``, ``class_iou`` (list), ``confusion`` (C×C list),
    the same keys suffixed ``_crf`` when ``crf`` is given, ``trimap_accuracy[_crf]`` when
    ``trimap_width`` is given (NaN when no labelled pixel of the whole data set lies within
    the band, as ``class_iou`` is NaN for a class absent from labels and predictions;
    :func:`minilab.metrics.trimap_accuracy` of one image raises instead), and ``examples``: a list of dicts ``image, labels, pred[, pred_crf]``.
    """
    num_classes = validate.integer("num_classes", num_classes, minimum=1)
    if len(dataset) == 0:  # not the metrics' "conf counts no pixel"
        raise ValueError("dataset is empty: there is no image to evaluate")
    if crf is not None:
        from ..crf import dense_crf
    was_training = getattr(model, "training", False)
    model.eval()
    names = [""] + (["_crf"] if crf is not None else [])
    conf = {s: np.zeros((num_classes, num_classes), np.int64) for s in names}
    trimap = {s: [0, 0] for s in names}
    examples = []
    items = range(len(dataset))
    if progress:
        from tqdm.auto import tqdm
        items = tqdm(items, desc="evaluate", leave=False)
    try:
        for i in items:
            image, labels = dataset[i]
            check_image(f"dataset[{i}]'s image", image)
            probs = predict_probs(model, image, mean, input_scale)
            preds = {"": probs.argmax(0)}
            if crf is not None:
                preds["_crf"] = dense_crf(image, probs, **crf).argmax(0)
            for s, pred in preds.items():
                conf[s] += metrics.confusion_matrix(pred, labels, num_classes)
                if trimap_width is not None:
                    band = metrics.trimap_band(labels, trimap_width)
                    trimap[s][0] += int(((pred == labels) & band).sum())
                    trimap[s][1] += int(band.sum())
            if i < keep:
                examples.append({"image": image, "labels": labels,
                                 **{f"pred{s}": p.astype(np.uint8) for s, p in preds.items()}})
    finally:
        model.train(was_training)
    result = {"examples": examples}
    for s in names:
        result[f"miou{s}"] = metrics.mean_iou(conf[s])
        result[f"pixel_accuracy{s}"] = metrics.pixel_accuracy(conf[s])
        result[f"class_iou{s}"] = [float(v) for v in metrics.class_iou(conf[s])]
        result[f"confusion{s}"] = conf[s].tolist()
        if trimap_width is not None:
            result[f"trimap_accuracy{s}"] = trimap[s][0] / trimap[s][1] if trimap[s][1] else float("nan")
    return result


def json_ready(value):
    """``value`` (dicts, lists, numbers) with every NaN (the IoU of a class absent from data
    and predictions) replaced by None, which JSON writes as null: a bare NaN is not JSON."""
    if isinstance(value, dict):
        return {k: json_ready(v) for k, v in value.items()}
    if isinstance(value, list):
        return [json_ready(v) for v in value]
    return None if isinstance(value, float) and np.isnan(value) else value

"""Training-time augmentation and the network's input convention (§4).

DeepLab augments by random scaling of the input image by a factor in [0.5, 1.5] (§4.3),
random crops (321×321 on VOC) whose outside is padded with the mean colour in the image and
with 255 ("unlabelled", ignored by the loss) in the labels, and horizontal flips. The
network sees ``(image - mean) * input_scale`` as N×3×H×W float32.

Input normalisation: Caffe's DeepLab subtracts :data:`VOC_MEAN` and keeps the 0-255 scale,
which suits its ImageNet-pretrained weights. minilab's models train from scratch, without
batch norm in the demo's model, so every data source defaults to :data:`INPUT_MEAN` and
:data:`INPUT_SCALE`: ``(image - 128) / 64`` keeps inputs within [-2, 2]; on raw ±128
inputs SGD at the usual learning rates diverges within a few iterations. The values a model
was trained with are stored in its checkpoint and used again by evaluation and inference.

Images are H×W×3 uint8 (RGB); label maps are H×W uint8 with classes 0..C-1 and 255.
Every function that is random takes a ``numpy.random.Generator`` so training is
reproducible from one seed.
"""
import numpy as np
from PIL import Image

from .. import validate

#: PASCAL VOC's mean colour in RGB order (Caffe's DeepLab subtracts it in BGR order: 104.008, 116.669, 122.675).
VOC_MEAN = (122.675, 116.669, 104.008)
#: The colour subtracted from every image by default (mid-grey), and the factor applied after it.
INPUT_MEAN = (128.0, 128.0, 128.0)
INPUT_SCALE = 1 / 64
IGNORE = 255


def check_pair(image, labels):
    """Check an image (H×W×3 uint8) and its label map (H×W integers) and return them."""
    if not isinstance(image, np.ndarray) or image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"image must be an H×W×3 uint8 array, got "
                         f"{getattr(image, 'shape', type(image).__name__)} {getattr(image, 'dtype', '')}")
    if not isinstance(labels, np.ndarray) or labels.ndim != 2 or labels.dtype.kind not in "iu":
        raise ValueError(f"labels must be an H×W integer array, got "
                         f"{getattr(labels, 'shape', type(labels).__name__)} {getattr(labels, 'dtype', '')}")
    if labels.shape != image.shape[:2]:
        raise ValueError(f"labels must have the image's size {image.shape[:2]}, got {labels.shape}")
    if labels.size and not 0 <= labels.min() <= labels.max() <= IGNORE:
        raise ValueError(f"labels must hold class ids 0..{IGNORE - 1} and {IGNORE} (unlabelled), got values "
                         f"{labels.min()}..{labels.max()}")
    return image, labels


def check_scale_range(scale_range):
    """None, or ``(low, high)`` with 0 < low <= high, as a tuple of floats."""
    if scale_range is None:
        return None
    if not isinstance(scale_range, (tuple, list, np.ndarray)) or len(scale_range) != 2:
        raise ValueError(f"scale_range must be (low, high) or None, got {scale_range!r}")
    low, high = (validate.positive("scale_range", s) for s in scale_range)
    if low > high:
        raise ValueError(f"scale_range must be (low, high) with low <= high, got {scale_range}")
    return low, high


def check_mean(mean):
    """An (R, G, B) colour of 0..255 values, as a tuple of floats: it is subtracted from the
    images and pads their crops, where a value outside 0..255 would wrap around in uint8."""
    if not isinstance(mean, (tuple, list, np.ndarray)) or len(mean) != 3:
        raise ValueError(f"mean must hold one value per colour channel (R, G, B), got {mean!r}")
    return tuple(validate.real("mean", m, minimum=0, maximum=255) for m in mean)


def resize_pair(image, labels, size):
    """Resize to ``size = (H, W)``: the image bilinearly, the labels by nearest neighbour."""
    h, w = size
    image = np.asarray(Image.fromarray(image).resize((w, h), Image.BILINEAR))
    labels = np.asarray(Image.fromarray(labels.astype(np.uint8)).resize((w, h), Image.NEAREST))
    return image, labels


def random_scale(image, labels, rng, scale_range=(0.5, 1.5)):
    """Scale both by one factor drawn uniformly from ``scale_range`` (§4.3: 0.5 to 1.5)."""
    s = rng.uniform(*scale_range)
    h, w = labels.shape
    return resize_pair(image, labels, (max(1, round(h * s)), max(1, round(w * s))))


def random_crop(image, labels, size, rng, mean=INPUT_MEAN):
    """A ``size = (H, W)`` crop at a random place.

    Where the image is smaller than the crop it is first padded (bottom and right) with
    ``mean`` in the image and 255 in the labels, as Caffe's DeepLab does.
    """
    ch, cw = size
    h, w = labels.shape
    ph, pw = max(ch - h, 0), max(cw - w, 0)
    if ph or pw:
        padded = np.empty((h + ph, w + pw, 3), np.uint8)
        padded[...] = np.round(mean).astype(np.uint8)
        padded[:h, :w] = image
        image = padded
        labels = np.pad(labels, ((0, ph), (0, pw)), constant_values=IGNORE)
    y = int(rng.integers(0, labels.shape[0] - ch + 1))
    x = int(rng.integers(0, labels.shape[1] - cw + 1))
    return image[y:y + ch, x:x + cw], labels[y:y + ch, x:x + cw]


def random_flip(image, labels, rng):
    """Mirror both left-right with probability 1/2."""
    if rng.random() < 0.5:
        return image[:, ::-1], labels[:, ::-1]
    return image, labels


def augment(image, labels, rng, crop_size, scale_range=(0.5, 1.5), flip=True, mean=INPUT_MEAN):
    """Random scaling (skipped when ``scale_range`` is None), random crop, random flip.

    ``rng`` is a ``numpy.random.Generator``; not a seed, which would give every call the same
    draws. ``scale_range`` is ``(low, high)`` with 0 < low <= high, ``mean`` (the padding
    colour) three values in 0..255.
    """
    check_pair(image, labels)
    if not isinstance(rng, np.random.Generator):
        raise TypeError(f"rng must be a numpy.random.Generator (np.random.default_rng(seed)), got {rng!r}")
    scale_range, mean = check_scale_range(scale_range), check_mean(mean)
    flip = validate.boolean("flip", flip)
    if scale_range is not None:
        image, labels = random_scale(image, labels, rng, scale_range)
    image, labels = random_crop(image, labels, validate.pair("crop_size", crop_size, 1), rng, mean)
    if flip:
        image, labels = random_flip(image, labels, rng)
    return image, labels


def to_input(images, mean=INPUT_MEAN, scale=INPUT_SCALE):
    """Images (H×W×3 or N×H×W×3 uint8) → network input N×3×H×W float32: ``(image - mean) * scale``."""
    images = np.asarray(images)
    if images.ndim == 3:
        images = images[None]
    if images.ndim != 4 or images.shape[3] != 3:
        raise ValueError(f"images must be H×W×3 or N×H×W×3, got shape {images.shape}")
    if images.dtype != np.uint8:  # a float image in 0..1 would pass as a nearly black one
        raise TypeError(f"images must be uint8 (0..255), got dtype {images.dtype}")
    x = (images.astype(np.float32) - np.asarray(mean, np.float32)) * np.float32(scale)
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2))


def make_batch(dataset, indices, rng, crop_size, scale_range=(0.5, 1.5), flip=True,
               mean=INPUT_MEAN, input_scale=INPUT_SCALE):
    """Load ``dataset[i]`` for each index, augment, and stack.

    Returns
    -------
    x : ndarray, N×3×H×W float32 (mean subtracted)
    labels : ndarray, N×H×W uint8 (0..C-1, 255 unlabelled)
    """
    images, labels = [], []
    for i in indices:
        im, lab = augment(*dataset[int(i)], rng, crop_size, scale_range, flip, mean)
        images.append(im)
        labels.append(lab)
    return to_input(np.stack(images), mean, input_scale), np.stack(labels).astype(np.uint8)

"""Reading segmentation data from disk: PASCAL VOC folders and plain image/mask folders.

Labels are class indices 0..C-1 with 255 meaning "unlabelled" (ignored by the loss and the
metrics), stored as single-channel PNGs: palette ("P" mode) PNGs like VOC's
``SegmentationClass/``, whose pixel values *are* the indices (the palette only colours
them), or greyscale ("L") PNGs. A colour (RGB) mask is refused with an explanation: its
colours would have to be mapped back to indices first.
"""
from pathlib import Path

import numpy as np
from PIL import Image

from .. import validate
from .transforms import IGNORE

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff")
VOC_CLASSES = ("background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat",
               "chair", "cow", "diningtable", "dog", "horse", "motorbike", "person", "pottedplant",
               "sheep", "sofa", "train", "tvmonitor")


def read_image(path):
    """An image file as H×W×3 uint8 RGB. A 16-bit greyscale image keeps its top 8 bits
    (value // 256); 32-bit integer and float images, whose range is unknown, are refused."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"image file not found: {path}")
    with Image.open(path) as im:
        if im.mode.startswith("I;16"):
            grey = (np.asarray(im).astype(np.uint16) >> 8).astype(np.uint8)
            return np.repeat(grey[:, :, None], 3, axis=2)
        if im.mode in ("I", "F"):
            raise ValueError(f"image {path} is a {'32-bit integer' if im.mode == 'I' else 'float'} "
                             f"({im.mode!r}) image; convert it to 8-bit RGB first")
        return np.asarray(im.convert("RGB"))


def read_mask(path):
    """A label PNG (palette, greyscale or 1-bit, whose pixels read as 0 and 1) as H×W uint8 class indices."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"mask file not found: {path}")
    with Image.open(path) as im:
        if im.mode not in ("P", "L", "1", "I", "I;16"):
            raise ValueError(f"mask {path} is a {im.mode!r} image; masks must be single-channel PNGs "
                             "whose pixel values are class indices (palette 'P' or greyscale 'L'), "
                             "with 255 for unlabelled pixels")
        mask = np.asarray(im)
    if mask.max(initial=0) > 255 or mask.min(initial=0) < 0:  # 'I' images hold int32
        raise ValueError(f"mask {path} has values from {mask.min()} to {mask.max()}; class indices must be "
                         "0..C-1 or 255")
    return mask.astype(np.uint8)


def check_labels(labels, num_classes, where="labels"):
    """Raise ``ValueError`` when ``labels`` holds values outside 0..num_classes-1 other than 255
    (``TypeError`` when they are not integers)."""
    if not np.issubdtype(labels.dtype, np.integer):
        raise TypeError(f"{where} must hold integer class ids, got dtype {labels.dtype}")
    bad = ((labels < 0) | (labels >= num_classes)) & (labels != IGNORE)
    if bad.any():
        values = np.unique(labels[bad])
        raise ValueError(f"{where} contains class ids {values[:10].tolist()} outside 0..{num_classes - 1} "
                         f"(255 is the only other value allowed: 'unlabelled')")
    return labels


def check_num_classes(num_classes):
    """Check that ``num_classes`` is an integer in 2..255 (ids 0..254: 255 means unlabelled); returns it."""
    validate.integer("num_classes", num_classes, 2)
    if num_classes > IGNORE:
        raise ValueError(f"num_classes must be <= {IGNORE} (class ids 0..{IGNORE - 1}; {IGNORE} means "
                         f"'unlabelled'), got {num_classes}")
    return num_classes


def load_pair(image_path, mask_path, num_classes):
    """Read and check one (image, labels) pair: files exist, sizes match, ids in range."""
    image, labels = read_image(image_path), read_mask(mask_path)
    if labels.shape != image.shape[:2]:
        raise ValueError(f"mask {mask_path} is {labels.shape[1]}×{labels.shape[0]} (W×H) but image "
                         f"{image_path} is {image.shape[1]}×{image.shape[0]}; they must be the same size")
    return image, check_labels(labels, num_classes, f"mask {mask_path}")


class VOCSegmentation:
    """A PASCAL VOC-style folder: ``root/JPEGImages/<id>.jpg``, ``root/SegmentationClass/<id>.png``
    (palette PNGs) and the ids in ``root/ImageSets/Segmentation/<split>.txt``.

    ``dataset[i]`` is ``(image H×W×3 uint8, labels H×W uint8)``; ``dataset.ids[i]`` its id.
    """

    def __init__(self, root, split="train", num_classes=21):
        self.root = Path(root)
        self.num_classes = check_num_classes(num_classes)
        self.class_names = VOC_CLASSES if num_classes == 21 else tuple(str(c) for c in range(num_classes))
        listing = self.root / "ImageSets" / "Segmentation" / f"{split}.txt"
        if not listing.is_file():
            raise FileNotFoundError(f"split file not found: {listing} (expected a VOC folder with "
                                    "JPEGImages/, SegmentationClass/ and ImageSets/Segmentation/<split>.txt)")
        self.ids = [line.split()[0] for line in listing.read_text().splitlines() if line.strip()]
        if not self.ids:
            raise ValueError(f"split file {listing} lists no images")

    def __len__(self):
        return len(self.ids)

    def __getitem__(self, i):
        name = self.ids[i]
        return load_pair(self.root / "JPEGImages" / f"{name}.jpg",
                         self.root / "SegmentationClass" / f"{name}.png", self.num_classes)


class ImageMaskFolder:
    """Your own data: every image in ``images_dir`` with the mask of the same stem in ``masks_dir``.

    ``images_dir/cat1.jpg`` pairs with ``masks_dir/cat1<mask_suffix>.png``. Masks hold class
    indices 0..num_classes-1 and 255 for unlabelled pixels. ``dataset[i]`` is
    ``(image, labels)``; ``dataset.names[i]`` the image's file name.
    """

    def __init__(self, images_dir, masks_dir, num_classes, mask_suffix=""):
        self.images_dir, self.masks_dir = Path(images_dir), Path(masks_dir)
        self.num_classes, self.mask_suffix = check_num_classes(num_classes), mask_suffix
        self.class_names = tuple(str(c) for c in range(num_classes))
        for d, what in ((self.images_dir, "images_dir"), (self.masks_dir, "masks_dir")):
            if not d.is_dir():
                raise FileNotFoundError(f"{what} is not a folder: {d}")
        self.names = sorted(p.name for p in self.images_dir.iterdir()
                            if p.suffix.lower() in IMAGE_SUFFIXES)
        if not self.names:
            raise ValueError(f"images_dir {self.images_dir} holds no images ({', '.join(IMAGE_SUFFIXES)})")

    def __len__(self):
        return len(self.names)

    def __getitem__(self, i):
        name = self.names[i]
        mask = self.masks_dir / f"{Path(name).stem}{self.mask_suffix}.png"
        return load_pair(self.images_dir / name, mask, self.num_classes)

    def check_masks(self):
        """Read every mask once and raise ``ValueError`` when none holds a class other than 0.

        Such data has nothing to learn. The usual cause: masks of a two-class problem saved
        as 0/255, whose 255 means "unlabelled" and is ignored, not "class 1". ``minilab
        train --data folder`` calls this before training. Returns the ids found, sorted.
        """
        found = set()
        for name in self.names:
            found.update(np.unique(read_mask(self.masks_dir / f"{Path(name).stem}{self.mask_suffix}.png")).tolist())
        if not found - {0, IGNORE}:
            hint = (f" (255 means 'unlabelled' and is ignored: if 255 marks your objects, store them as "
                    f"class 1, e.g. mask // 255)" if IGNORE in found else "")
            raise ValueError(f"no mask in {self.masks_dir} holds a class other than 0, only the values "
                             f"{sorted(found)}: there is nothing to learn{hint}")
        return sorted(found)

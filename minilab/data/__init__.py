"""Data for training and evaluation: generated scenes, PASCAL VOC folders, your own folders,
and the augmentation of §4 (random scale 0.5-1.5, crop padded with 255, flip, mean
subtraction).

Every data set is indexable: ``image, labels = dataset[i]`` with ``image`` H×W×3 uint8 and
``labels`` H×W uint8 holding classes 0..C-1 and 255 for unlabelled pixels; it has ``len()``,
``num_classes`` and ``class_names``.
"""
from .digits import DigitScenes
from .folders import ImageMaskFolder, VOCSegmentation, check_labels, read_image, read_mask
from .synthetic import SyntheticScenes
from .transforms import INPUT_MEAN, INPUT_SCALE, VOC_MEAN, augment, make_batch, to_input

__all__ = ["DigitScenes", "INPUT_MEAN", "INPUT_SCALE", "ImageMaskFolder", "SyntheticScenes", "VOCSegmentation",
           "VOC_MEAN", "augment", "check_labels", "make_batch", "read_image", "read_mask", "to_input"]

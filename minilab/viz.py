"""Pictures of segmentations: the PASCAL VOC colour palette.

Label maps are saved as palette ("P" mode) PNGs: one byte per pixel holding the class id,
plus a 256-entry colour table, which is how PASCAL VOC ships its ground truth
(``SegmentationClass/*.png``); 255 ("void") is drawn in cream.
"""
import numpy as np


def voc_palette():
    """The PASCAL VOC colour map: 256 RGB colours, row ``k`` the colour of class id ``k``.

    Class ``k``'s colour spreads the bits of ``k`` over the three channels, most significant
    bit of each channel first: bit ``3j + c`` of ``k`` becomes bit ``7 − j`` of channel ``c``
    (c = 0 red, 1 green, 2 blue). So background (0) is black, aeroplane (1) is dark red
    (128, 0, 0), person (15) is (192, 128, 128), and void (255) is (224, 224, 192).

    Returns
    -------
    palette : ndarray of uint8, 256×3
    """
    k = np.arange(256)
    palette = np.zeros((256, 3), dtype=np.int64)
    for j in range(8):
        for c in range(3):
            palette[:, c] |= ((k >> (3 * j + c)) & 1) << (7 - j)
    return palette.astype(np.uint8)

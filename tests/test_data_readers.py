"""Data: VOC and image/mask folders (built here from the shipped VOC photos), bad data,
generated scenes, augmentation."""
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from minilab import data
from minilab.data import transforms
from minilab.viz import voc_palette

SAMPLE = Path(data.__file__).parent / "voc_sample"
IDS = sorted(p.stem for p in SAMPLE.glob("*.png") if not p.stem.endswith("_label"))


def save_palette_png(path, labels):
    im = Image.fromarray(labels.astype(np.uint8), mode="L").convert("P")
    im.putpalette(voc_palette().ravel().tolist())
    im.save(path)


@pytest.fixture
def voc_root(tmp_path):
    """A PASCAL VOC folder: JPEG photos, palette-PNG labels (with a 255 border), train/val lists."""
    for d in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        (tmp_path / d).mkdir(parents=True)
    for name in IDS:
        Image.open(SAMPLE / f"{name}.png").convert("RGB").save(tmp_path / "JPEGImages" / f"{name}.jpg", quality=95)
        labels = np.asarray(Image.open(SAMPLE / f"{name}_label.png")).copy()
        labels[:2] = 255  # a void band, as VOC draws around objects
        save_palette_png(tmp_path / "SegmentationClass" / f"{name}.png", labels)
    (tmp_path / "ImageSets/Segmentation/train.txt").write_text("\n".join(IDS[:5]) + "\n")
    (tmp_path / "ImageSets/Segmentation/val.txt").write_text("\n".join(IDS[5:]) + "\n")
    return tmp_path


def test_voc_reader_reads_photos_and_palette_labels(voc_root):
    train = data.VOCSegmentation(voc_root, "train")
    val = data.VOCSegmentation(voc_root, "val")
    assert len(train) == 5 and len(val) == len(IDS) - 5 and train.ids == IDS[:5]
    assert train.class_names[15] == "person"
    for i, name in enumerate(train.ids):
        image, labels = train[i]
        truth = np.asarray(Image.open(SAMPLE / f"{name}_label.png"))
        photo = np.asarray(Image.open(SAMPLE / f"{name}.png").convert("RGB"))
        assert image.dtype == np.uint8 and image.shape == photo.shape
        assert np.abs(image.astype(int) - photo).mean() < 6  # JPEG, not bit-exact
        assert labels.dtype == np.uint8
        assert np.array_equal(labels[2:], truth[2:]) and (labels[:2] == 255).all()


def test_image_mask_folder(tmp_path):
    (tmp_path / "img").mkdir()
    (tmp_path / "mask").mkdir()
    for name in IDS[:3]:
        Image.open(SAMPLE / f"{name}.png").save(tmp_path / "img" / f"{name}.png")
        labels = np.asarray(Image.open(SAMPLE / f"{name}_label.png"))
        Image.fromarray(labels).save(tmp_path / "mask" / f"{name}_m.png")  # greyscale ids
    ds = data.ImageMaskFolder(tmp_path / "img", tmp_path / "mask", num_classes=21, mask_suffix="_m")
    assert len(ds) == 3 and ds.names[0] == f"{IDS[0]}.png"
    image, labels = ds[1]
    assert np.array_equal(labels, np.asarray(Image.open(SAMPLE / f"{IDS[1]}_label.png")))
    assert image.shape[:2] == labels.shape


def test_bad_data_is_reported_clearly(voc_root):
    ds = data.VOCSegmentation(voc_root, "train")
    name = ds.ids[0]
    # a class id outside 0..C-1 that is not 255
    labels = np.asarray(Image.open(voc_root / "SegmentationClass" / f"{name}.png")).copy()
    labels[5, 5] = 40
    save_palette_png(voc_root / "SegmentationClass" / f"{name}.png", labels)
    with pytest.raises(ValueError, match=r"class ids \[40\] outside 0..20"):
        ds[0]
    # fewer classes declared than the labels use
    with pytest.raises(ValueError, match="outside 0..2"):
        data.VOCSegmentation(voc_root, "val", num_classes=3)[0]
    # a mask of another size
    name = ds.ids[1]
    Image.open(voc_root / "SegmentationClass" / f"{name}.png").resize((50, 40)).save(
        voc_root / "SegmentationClass" / f"{name}.png")
    with pytest.raises(ValueError, match="50×40.*same size"):
        ds[1]
    # a colour mask
    name = ds.ids[2]
    Image.open(voc_root / "SegmentationClass" / f"{name}.png").convert("RGB").save(
        voc_root / "SegmentationClass" / f"{name}.png")
    with pytest.raises(ValueError, match="'RGB' image.*single-channel"):
        ds[2]
    # missing files
    (voc_root / "JPEGImages" / f"{ds.ids[3]}.jpg").unlink()
    with pytest.raises(FileNotFoundError, match="image file not found"):
        ds[3]
    with pytest.raises(FileNotFoundError, match="split file not found"):
        data.VOCSegmentation(voc_root, "test")
    with pytest.raises(FileNotFoundError, match="not a folder"):
        data.ImageMaskFolder(voc_root / "nope", voc_root, 21)
    (voc_root / "empty").mkdir()
    with pytest.raises(ValueError, match="no images"):
        data.ImageMaskFolder(voc_root / "empty", voc_root, 21)
    (voc_root / "imgs").mkdir()
    Image.new("RGB", (8, 8)).save(voc_root / "imgs" / "a.png")
    with pytest.raises(FileNotFoundError, match="mask file not found"):
        data.ImageMaskFolder(voc_root / "imgs", voc_root / "empty", 21)[0]


def test_synthetic_scenes_are_reproducible_and_varied():
    a, b = data.SyntheticScenes(20, 65, seed=3), data.SyntheticScenes(20, 65, seed=3)
    for i in (0, 7):
        assert np.array_equal(a[i][0], b[i][0]) and np.array_equal(a[i][1], b[i][1])
    other = data.SyntheticScenes(20, 65, seed=4)
    assert not np.array_equal(a[0][0], other[0][0])
    labels = np.stack([a[i][1] for i in range(20)])
    assert set(np.unique(labels)) == set(range(5))
    fractions = [(a[i][1] > 0).mean() for i in range(20)]
    assert min(fractions) < 0.1 < 0.4 < max(fractions)  # widely varying object sizes
    with pytest.raises(IndexError):
        a[20]


def test_digit_scenes():
    pytest.importorskip("sklearn")
    train = data.DigitScenes(10, 64, split="train")
    val = data.DigitScenes(10, 64, split="val")
    assert len(train.digits) + len(val.digits) == 1797
    image, labels = train[0]
    assert image.shape == (64, 64, 3) and labels.max() <= 10 and labels.max() > 0
    assert np.array_equal(train[3][1], data.DigitScenes(10, 64, split="train")[3][1])
    with pytest.raises(ValueError, match="split"):
        data.DigitScenes(3, split="test")


def test_digit_scenes_without_scikit_learn(monkeypatch):
    import builtins
    real_import = builtins.__import__

    def no_sklearn(name, *args, **kwargs):
        if name.startswith("sklearn"):
            raise ImportError("No module named 'sklearn'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_sklearn)
    with pytest.raises(ImportError, match=r"pip install 'minilab\[digits\]'"):
        data.DigitScenes(3)


def test_crop_pads_with_mean_and_255():
    rng = np.random.default_rng(0)
    image = np.full((5, 6, 3), 7, np.uint8)
    labels = np.ones((5, 6), np.uint8)
    im, lab = transforms.random_crop(image, labels, (9, 9), rng, mean=(10, 20, 30))
    assert im.shape == (9, 9, 3) and lab.shape == (9, 9)
    assert (lab == 1).sum() == 30 and (lab == 255).sum() == 81 - 30
    assert (im[lab == 255] == [10, 20, 30]).all() and (im[lab == 1] == 7).all()


def test_augment_keeps_image_and_labels_aligned():
    """Scaling, cropping and flipping move pixels and labels together."""
    rng = np.random.default_rng(1)
    labels = np.zeros((40, 50), np.uint8)
    labels[10:30, 5:20] = 2
    image = np.where(labels[..., None] == 2, 200, 30).astype(np.uint8).repeat(3, 2)
    for _ in range(10):
        im, lab = transforms.augment(image, labels, rng, 33, scale_range=(0.5, 1.5))
        assert im.shape == (33, 33, 3) and lab.shape == (33, 33)
        # bilinear resizing blends colours across the edge: only pixels there may disagree
        for value, bright in ((2, True), (0, False)):
            if (lab == value).sum() > 20:
                assert ((im[lab == value] > 115) == bright).mean() > 0.9
    with pytest.raises(ValueError, match="labels must have the image's size"):
        transforms.augment(image, labels[:10], rng, 33)


def test_make_batch_and_to_input():
    ds = data.SyntheticScenes(4, 33)
    x, labels = transforms.make_batch(ds, [0, 3], np.random.default_rng(0), 33, scale_range=None, flip=False,
                                      mean=(100, 100, 100), input_scale=0.5)
    assert x.shape == (2, 3, 33, 33) and x.dtype == np.float32 and labels.shape == (2, 33, 33)
    image, lab = ds[3]
    assert np.array_equal(labels[1], lab)
    assert np.allclose(x[1], (image.transpose(2, 0, 1).astype(np.float32) - 100) * 0.5)
    with pytest.raises(ValueError, match="images must be"):
        transforms.to_input(np.zeros((4, 4)))

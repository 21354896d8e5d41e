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
    with pytest.raises(ValueError, match=r"class ids \[-1\] outside"):
        data.check_labels(np.array([[0, -1]]), 21)
    with pytest.raises(TypeError, match="integer class ids"):
        data.check_labels(np.zeros((2, 2), np.float32), 21)
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


def test_images_of_unknown_range_are_refused(tmp_path):
    Image.fromarray(np.full((3, 4), 70000, np.int32)).save(tmp_path / "wide.tif")
    with pytest.raises(ValueError, match="32-bit integer"):
        data.read_image(tmp_path / "wide.tif")
    Image.fromarray(np.full((3, 4), 0.5, np.float32)).save(tmp_path / "float.tif")
    with pytest.raises(ValueError, match="float"):
        data.read_image(tmp_path / "float.tif")


def test_masks_of_nothing_but_0_and_255_are_refused(tmp_path):
    """0/255 masks for a two-class problem: 255 is 'unlabelled', so there would be nothing to learn."""
    for d in ("img", "mask"):
        (tmp_path / d).mkdir()
    for i in range(2):
        Image.new("RGB", (8, 8)).save(tmp_path / "img" / f"{i}.png")
        Image.fromarray(np.where(np.arange(64).reshape(8, 8) % 3, 0, 255).astype(np.uint8)).save(
            tmp_path / "mask" / f"{i}.png")
    ds = data.ImageMaskFolder(tmp_path / "img", tmp_path / "mask", num_classes=2)
    with pytest.raises(ValueError, match=r"only the values \[0, 255\].*mask // 255"):
        ds.check_masks()
    Image.fromarray(np.eye(8, dtype=np.uint8)).save(tmp_path / "mask" / "1.png")
    assert ds.check_masks() == [0, 1, 255]


def test_one_bit_masks_read_as_0_and_1(tmp_path):
    Image.fromarray(np.eye(4, dtype=bool)).save(tmp_path / "m.png")  # mode '1'
    labels = data.read_mask(tmp_path / "m.png")
    assert labels.dtype == np.uint8 and np.array_equal(labels, np.eye(4))


@pytest.mark.parametrize("values", [[0, 1, 300], [0, 1, -1]])
def test_32_bit_masks_outside_0_to_255_are_refused(tmp_path, values):
    """An 'I' (int32) TIFF with -1 wrapped to 255, 'unlabelled', when cast to uint8."""
    Image.fromarray(np.array([values], np.int32)).save(tmp_path / "m.tif")
    with pytest.raises(ValueError, match=f"values from {min(values)} to {max(values)}"):
        data.read_mask(tmp_path / "m.tif")


@pytest.mark.parametrize("num_classes, error", [(-2, ValueError), (1, ValueError), (256, ValueError),
                                                 (2.0, TypeError)])
def test_folders_check_num_classes(voc_root, num_classes, error):
    with pytest.raises(error, match="num_classes"):
        data.VOCSegmentation(voc_root, "train", num_classes=num_classes)
    with pytest.raises(error, match="num_classes"):
        data.ImageMaskFolder(voc_root / "JPEGImages", voc_root / "SegmentationClass", num_classes)


def test_labels_beyond_255_are_refused_not_wrapped():
    image = np.zeros((4, 4, 3), np.uint8)
    with pytest.raises(ValueError, match="labels must hold class ids 0..254 and 255"):
        transforms.augment(image, np.full((4, 4), 257, np.int64), np.random.default_rng(0), 4)


@pytest.mark.parametrize("kwargs, match", [(dict(size=0), "size"), (dict(size=-3), "size"), (dict(length=-1), "length"),
                                           (dict(seed=-1), "seed"), (dict(max_objects=0), "max_objects"),
                                           (dict(size=33.0), "size")])
def test_synthetic_scenes_check_their_arguments(kwargs, match):
    with pytest.raises((ValueError, TypeError), match=match):
        data.SyntheticScenes(**kwargs)


def test_scene_seeds_and_lengths_stay_within_32_bits():
    """Scene i is drawn from default_rng([seed, i]), which reads 32-bit words: seed 2**32 + k
    would give seed k's scene 1 as its scene 0."""
    for make in (data.SyntheticScenes, data.DigitScenes):
        with pytest.raises(ValueError, match="seed must be <= 4294967295"):
            make(seed=2**32)
        with pytest.raises(ValueError, match="length must be <= 4294967296"):
            make(length=2**32 + 1)


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
    train = data.DigitScenes(10, 65, split="train", scale_range=(16, 32))
    val = data.DigitScenes(10, 65, split="val", scale_range=(16, 32))
    assert len(train.digits) + len(val.digits) == 1797 and len(val.digits) == 360
    image, labels = train[0]
    assert image.shape == (65, 65, 3) and image.dtype == np.uint8
    assert labels.shape == (65, 65) and labels.dtype == np.uint8
    assert set(np.unique(np.stack([train[i][1] for i in range(10)]))) <= set(range(11))
    assert all(train[i][1].max() > 0 for i in range(10))  # every scene holds a digit
    # determinism by seed: the same (seed, index) gives the same scene; another seed another
    again = data.DigitScenes(10, 65, split="train", scale_range=(16, 32))
    assert np.array_equal(train[3][0], again[3][0]) and np.array_equal(train[3][1], again[3][1])
    assert not np.array_equal(train[3][0], data.DigitScenes(10, 65, seed=1, scale_range=(16, 32))[3][0])
    with pytest.raises(ValueError, match="split"):
        data.DigitScenes(3, split="test")
    with pytest.raises(ValueError, match="scale_range"):
        data.DigitScenes(3, 33, scale_range=(16, 40))
    with pytest.raises(IndexError):
        train[10]


def test_digit_labels_follow_the_ink():
    pytest.importorskip("sklearn")
    from minilab.data.digits import INK_THRESHOLD, digit_ink, load_digit_images, paste_digit
    digits, targets = load_digit_images()
    ink = digit_ink(digits[3], 24)  # digits[3] is a handwritten 3
    assert targets[3] == 3 and ink.shape == (24, 24) and 0 <= ink.min() and ink.max() <= 1
    # bilinear upscaling keeps the digit in place: block means of the ink follow the 8×8 scan
    assert np.corrcoef(ink.reshape(8, 3, 8, 3).mean(axis=(1, 3)).ravel(), digits[3].ravel())[0, 1] > 0.95
    image, labels = np.full((40, 50, 3), 100.0), np.zeros((40, 50), np.uint8)
    paste_digit(image, labels, ink, 5, 17, (250, 0, 0), targets[3] + 1)
    expected = np.zeros((40, 50), np.uint8)
    expected[5:29, 17:41][ink > INK_THRESHOLD] = 4  # class id of digit 3
    assert np.array_equal(labels, expected) and 0.15 < (labels == 4).mean() * 2000 / 576 < 0.7
    assert np.allclose(image[5:29, 17:41, 0], 100 + 150 * ink)  # ink blended into the window
    outside = np.ones((40, 50), bool)
    outside[5:29, 17:41] = False
    assert np.all(image[outside] == 100)


def test_digits_do_not_overlap(monkeypatch):
    from minilab.data import digits

    boxes = []
    paste = digits.paste_digit

    def recording_paste(image, labels, ink, y, x, colour, label):
        boxes.append((y, x, ink.shape[0]))
        paste(image, labels, ink, y, x, colour, label)

    monkeypatch.setattr(digits, "paste_digit", recording_paste)
    pool, targets = np.ones((10, 8, 8)), np.arange(10)  # solid squares: a placed digit fills its box
    placed = 0
    for seed in range(30):
        boxes.clear()
        _, labels = digits.make_digit_scene(np.random.default_rng(seed), pool, targets, 65, (8, 24), max_digits=4)
        assert 1 <= len(boxes) <= 4
        placed += len(boxes)
        for i, (y, x, h) in enumerate(boxes):
            assert 8 <= h <= 24 and 0 <= y <= 65 - h and 0 <= x <= 65 - h
            assert (labels[y:y + h, x:x + h] > 0).all()
            for b, a, s in boxes[:i]:
                assert y + h <= b or b + s <= y or x + h <= a or a + s <= x
        assert (labels > 0).sum() == sum(h * h for _, _, h in boxes)
    assert placed > 60  # crowded scenes drop a digit now and then, not usually


def test_digit_sides_span_both_ends_of_the_scale_range(monkeypatch):
    """scale_range is (smallest, largest) side, both included: an off-by-one in the draw would never
    make the largest (or the smallest) digits, and training would never see that scale."""
    pytest.importorskip("sklearn")
    from minilab.data import digits

    sides = []
    ink = digits.digit_ink
    monkeypatch.setattr(digits, "digit_ink", lambda digit, side: sides.append(side) or ink(digit, side))
    scenes = data.DigitScenes(20, 33, scale_range=(8, 10))
    for i in range(len(scenes)):
        scenes[i]
    assert set(sides) == {8, 9, 10}
    assert data.DigitScenes(1).scale_range == (32, 64)  # the default on 129-pixel scenes (docs/digits.md)


def test_digit_ink_is_upscaled_bilinearly():
    """Nearest-neighbour upscaling would give blocky digits whose block means still follow the scan
    (test_digit_labels_follow_the_ink): compare with an explicit bilinear resize (half-pixel centres,
    edges clamped), to within the 8-bit rounding of the image it goes through."""
    pytest.importorskip("sklearn")
    from minilab.data.digits import digit_ink, load_digit_images
    from minilab.ops.interp import interpolation_matrix
    digits, _ = load_digit_images()
    for k, side in ((3, 24), (0, 13), (7, 64)):
        source = np.round(digits[k] * 255) / 255
        a = interpolation_matrix(side, 8, align_corners=False)
        np.testing.assert_allclose(digit_ink(digits[k], side), a @ source @ a.T, rtol=0, atol=1.01 / 255)


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


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(mean=(300, -5, 128)), ValueError, "mean must be <= 255"),  # wrapped in the uint8 padding
    (dict(mean=(-5, 0, 0)), ValueError, "mean must be >= 0"),
    (dict(scale_range=(-2, -1)), ValueError, "scale_range must be a finite number > 0"),  # 1-pixel images
    (dict(scale_range=(2, 1)), ValueError, "scale_range must be .* low <= high"),  # NumPy's "high - low < 0"
    (dict(rng=0), TypeError, "rng must be a numpy.random.Generator"),  # an AttributeError
    (dict(flip="no"), TypeError, "flip must be True or False"),
])
def test_augment_checks_its_arguments(kwargs, error, match):
    image, labels = np.zeros((8, 8, 3), np.uint8), np.zeros((8, 8), np.uint8)
    kwargs = {"rng": np.random.default_rng(0), "crop_size": 9, **kwargs}
    with pytest.raises(error, match=match):
        transforms.augment(image, labels, **kwargs)


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
    for wrong in (image / 255.0, image.astype(np.uint16)):  # silently scaled as if 0..255 before
        with pytest.raises(TypeError, match="images must be uint8"):
            transforms.to_input(wrong)


def test_random_flip_mirrors_left_right():
    """Image and labels flipped up-down together still align: only this test tells the axes apart."""
    image = np.arange(4 * 5 * 3, dtype=np.uint8).reshape(4, 5, 3)
    labels = np.arange(20, dtype=np.uint8).reshape(4, 5)
    flips = [transforms.random_flip(image, labels, np.random.default_rng(s)) for s in range(8)]
    mirrored = [np.array_equal(im, image[:, ::-1]) and np.array_equal(lab, labels[:, ::-1]) for im, lab in flips]
    kept = [np.array_equal(im, image) and np.array_equal(lab, labels) for im, lab in flips]
    assert any(mirrored) and any(kept) and all(m or k for m, k in zip(mirrored, kept))


def test_voc_split_files_take_the_first_word_and_skip_blank_lines(tmp_path):
    (tmp_path / "ImageSets/Segmentation").mkdir(parents=True)
    (tmp_path / "ImageSets/Segmentation/train.txt").write_text("2007_000032\n\n  2007_000033  1\n\n")
    assert data.VOCSegmentation(tmp_path, "train").ids == ["2007_000032", "2007_000033"]


def test_image_mask_folder_takes_upper_case_suffixes(tmp_path):
    for d in ("img", "mask"):
        (tmp_path / d).mkdir()
    Image.new("RGB", (4, 4)).save(tmp_path / "img" / "a.JPG", format="JPEG")
    Image.new("RGB", (4, 4)).save(tmp_path / "img" / "b.Png", format="PNG")
    Image.fromarray(np.eye(4, dtype=np.uint8)).save(tmp_path / "mask" / "a.png")
    ds = data.ImageMaskFolder(tmp_path / "img", tmp_path / "mask", num_classes=2)
    assert ds.names == ["a.JPG", "b.Png"]
    assert ds[0][1].tolist() == np.eye(4).tolist()


def test_a_class_id_equal_to_num_classes_is_refused():
    data.check_labels(np.array([[0, 2, 255]]), 3)
    with pytest.raises(ValueError, match=r"class ids \[3\] outside 0..2"):
        data.check_labels(np.array([[0, 3]]), 3)


def test_synthetic_scenes_of_other_seeds_share_no_scene():
    a, b = data.SyntheticScenes(4, 33, seed=3), data.SyntheticScenes(4, 33, seed=4)
    for i in range(4):
        for j in range(4):
            assert not np.array_equal(a[i][0], b[j][0]), (i, j)


def test_synthetic_scenes_reach_max_objects():
    scenes = data.SyntheticScenes(40, 33, seed=0, max_objects=2)
    assert max(len(set(np.unique(scenes[i][1]).tolist()) - {0}) for i in range(40)) == 2
    single = data.SyntheticScenes(20, 33, seed=0, max_objects=1)
    assert all(len(set(np.unique(single[i][1]).tolist()) - {0}) == 1 for i in range(20))


def test_augment_scales_before_cropping():
    """A 10×12 scene doubled fills a 20×24 crop exactly: no padding (255) in the labels."""
    labels = np.zeros((10, 12), np.uint8)
    image = np.full((10, 12, 3), 50, np.uint8)
    im, lab = transforms.augment(image, labels, np.random.default_rng(0), (20, 24), scale_range=(2.0, 2.0),
                                 flip=False)
    assert (lab == 0).all() and (im == 50).all()
    _, lab = transforms.augment(image, labels, np.random.default_rng(0), (20, 24), scale_range=None, flip=False)
    assert (lab == 255).any()


def test_to_input_subtracts_each_channels_own_mean():
    """The default mean is the same grey in every channel, which hid a reversed mean."""
    x = transforms.to_input(np.full((2, 3, 3), 100, np.uint8), mean=(10, 20, 30), scale=1.0)
    assert x.shape == (1, 3, 2, 3)
    np.testing.assert_array_equal(x[0, :, 0, 0], [90, 80, 70])


def test_random_flip_is_a_fair_coin():
    image, labels = np.arange(6, dtype=np.uint8).reshape(1, 2, 3), np.arange(2, dtype=np.uint8).reshape(1, 2)
    rng = np.random.default_rng(0)
    flipped = [transforms.random_flip(image, labels, rng)[1][0, 0] == 1 for _ in range(400)]
    assert 0.4 < np.mean(flipped) < 0.6

"""The ``minilab`` command.

Each subcommand is one ``add_<name>(subparsers)`` function that declares its arguments and
sets ``run=`` to the function doing the work; :data:`SUBCOMMANDS` lists them. Adding a
subcommand is one function and one line in that list.

Errors a user can cause (a missing file, arrays of the wrong shape, a bad parameter, a GPU
asked for where there is none, an optional package not installed) are reported as
``minilab <command>: error: <message>`` with exit status 2, like argparse's own.
Ctrl-C ends a command with one line, ``minilab <command>: interrupted...``, and exit status 130.
"""
import argparse
import concurrent.futures
import json
import multiprocessing
import os
import subprocess
import sys
import time
import warnings
from pathlib import Path

# One BLAS thread unless the user chose otherwise (before NumPy loads OpenBLAS): the small
# matrix products of the tiny models gain little from a second thread and lose several-fold
# when BLAS threads and Numba's threads compete for the same cores.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import numpy as np  # noqa: E402

from . import validate

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".ppm")
# What bad input raises (minilab.validate's errors, missing files, no GPU, an optional package
# missing, such as scikit-learn for --data digits): reported in one line.
USER_ERRORS = (OSError, ValueError, TypeError, RuntimeError, ImportError)


def main(argv=None):
    """Run the ``minilab`` command line with ``argv`` (default ``sys.argv[1:]``); returns 0."""
    parser = build_parser()
    args = parser.parse_args(argv)
    silence_occupancy_advice()
    try:
        args.run(args)
    except USER_ERRORS as error:
        parser.exit(2, f"minilab {args.command}: error: {error}\n")
    except KeyboardInterrupt as stop:  # Ctrl-C: what it left behind, if the command says, in one line
        parser.exit(130, f"minilab {args.command}: interrupted{': ' if str(stop) else ''}{stop}\n")
    return 0


def silence_occupancy_advice():
    """Hide numba-cuda's warning at the first launch of each grid under 128 blocks.

    The commands' grids are the size of their data (batch norm runs a block per channel)
    and their user cannot change them. The message may start with colour codes, hence the
    leading ``.*``. Set by the command, not on import: a program using minilab keeps its own
    warning filters.
    """
    warnings.filterwarnings("ignore", message=r".*Grid size \d+ will likely result in GPU under-utilization")


def build_parser():
    """The argument parser with every subcommand in :data:`SUBCOMMANDS`."""
    parser = argparse.ArgumentParser(
        prog="minilab",
        description="DeepLab (atrous convolution, ASPP, fully connected CRF) from scratch in NumPy and Numba.")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in SUBCOMMANDS:
        add(subparsers)
    return parser


# ---------------------------------------------------------------------------------------
# minilab crf
# ---------------------------------------------------------------------------------------

def add_crf(subparsers):
    from .crf import METHODS
    from .crf.tune import DEEPLAB_PARAMS

    p = subparsers.add_parser(
        "crf", help="refine class probabilities with the fully connected CRF",
        description=(
            "Refine a probability map with the fully connected CRF (paper §3.3, eq. 2-3) and write "
            "the most likely label of each pixel as a palette PNG (PASCAL VOC colours, pixel value = "
            "class id). PROBS.npy holds a C×H×W float array (C classes, the image's H×W) of "
            "probabilities summing to 1 over C, or of raw scores with --logits. With two folders, "
            "every PROBS_DIR/NAME.npy is paired with IMAGES_DIR/NAME.png (or .jpg) and written to "
            "OUT_DIR/NAME.png, several images at a time."),
        epilog="example: minilab crf photo.jpg probs.npy -o labels.png --w1 4 --sigma-alpha 80 --sigma-beta 13")
    p.add_argument("image", metavar="IMAGE", help="an RGB image file, or a folder of them")
    p.add_argument("probs", metavar="PROBS", help="a C×H×W .npy file, or a folder of them")
    p.add_argument("-o", "--output", required=True, metavar="OUT",
                   help="the label PNG to write, or a folder (created if missing) in folder mode")
    p.add_argument("--logits", action="store_true",
                   help="PROBS holds raw class scores: apply a softmax over C first")
    p.add_argument("--iterations", type=int, default=10, help="mean-field iterations (default 10)")
    p.add_argument("--w1", type=float, default=DEEPLAB_PARAMS["w1"],
                   help="weight of the appearance (bilateral) kernel; pydensecrf's bilateral compat "
                        "(default %(default)s)")
    p.add_argument("--sigma-alpha", type=float, default=DEEPLAB_PARAMS["sigma_alpha"],
                   help="σα, position scale of the appearance kernel in pixels; pydensecrf's sxy "
                        "(default %(default)s)")
    p.add_argument("--sigma-beta", type=float, default=DEEPLAB_PARAMS["sigma_beta"],
                   help="σβ, colour scale of the appearance kernel in 0-255 units; pydensecrf's srgb "
                        "(default %(default)s)")
    p.add_argument("--w2", type=float, default=DEEPLAB_PARAMS["w2"],
                   help="weight of the smoothness kernel; pydensecrf's Gaussian compat (default %(default)s)")
    p.add_argument("--sigma-gamma", type=float, default=DEEPLAB_PARAMS["sigma_gamma"],
                   help="σγ, position scale of the smoothness kernel; pydensecrf's Gaussian sxy "
                        "(default %(default)s)")
    p.add_argument("--method", choices=sorted(METHODS), default="lattice",
                   help="naive: exact O(N²) filtering (small images only); lattice: permutohedral "
                        "approximation, O(N) (default)")
    p.add_argument("--normalization", choices=["symmetric", "after", "none"], default="symmetric",
                   help="kernel normalisation; symmetric is pydensecrf's (default)")
    p.add_argument("--exclude-self", action="store_true",
                   help="sum messages over j ≠ i as eq. (3) prints it (pydensecrf includes j = i)")
    p.add_argument("--device", choices=["cpu", "gpu", "auto"], default="cpu", help="default cpu")
    p.add_argument("--jobs", type=int, default=os.cpu_count() or 1,
                   help="folder mode: images processed at once, in separate processes "
                        "(default: the number of CPUs)")
    p.set_defaults(run=run_crf)


def run_crf(args):
    from tqdm import tqdm

    params = dict(iterations=args.iterations, w1=args.w1, sigma_alpha=args.sigma_alpha,
                  sigma_beta=args.sigma_beta, w2=args.w2, sigma_gamma=args.sigma_gamma,
                  method=args.method, normalization=args.normalization,
                  include_self=not args.exclude_self, device=args.device)
    image, probs, out = Path(args.image), Path(args.probs), Path(args.output)
    if not image.is_dir():
        _output_file("-o/--output", out, (".png",))
        crf_file(image, probs, out, params, args.logits)
        return
    if not probs.is_dir():
        raise ValueError(f"IMAGE {image} is a folder, so PROBS must be one too; got {probs}")
    jobs = _crf_jobs(image, probs, out)
    workers = min(validate.integer("--jobs", args.jobs, minimum=1), len(jobs))
    out.mkdir(parents=True, exist_ok=True)
    # spawn, not fork: Numba's OpenMP threads do not survive a fork
    context = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(
            workers, mp_context=context, initializer=_limit_threads,
            initargs=(max(1, (os.cpu_count() or 1) // workers),)) as pool:
        futures = {pool.submit(crf_file, i, q, o, params, args.logits): q for i, q, o in jobs}
        for future in tqdm(concurrent.futures.as_completed(futures), total=len(futures),
                           desc="crf", unit="image", file=sys.stderr):
            error = future.exception()
            if error is not None:
                for other in futures:
                    other.cancel()
                if isinstance(error, USER_ERRORS):
                    raise type(error)(f"{futures[future].name}: {error}") from error
                raise error


def _output_file(option, path, suffixes):
    """``path`` as a Path, checked before any work is done: a file name ending in one of
    ``suffixes`` (Pillow picks the format by the suffix, and fails on a folder or a name
    without one only when it saves)."""
    path = Path(path)
    if path.is_dir() or path.suffix.lower() not in suffixes:
        raise ValueError(f"{option} must be a file name ending in {' or '.join(suffixes)}, got {str(path)!r}"
                         + (", a folder" if path.is_dir() else ""))
    return path


def _crf_jobs(images, probs, out):
    """(image, probs, output) paths for every ``probs/NAME.npy``; an image must exist for each."""
    jobs = []
    for q in sorted(probs.glob("*.npy")):
        candidates = [images / (q.stem + s) for s in IMAGE_SUFFIXES]
        found = [c for c in candidates if c.is_file()]
        if not found:
            raise FileNotFoundError(f"no image for {q.name} in {images} (looked for "
                                    f"{q.stem}{{{','.join(IMAGE_SUFFIXES)}}})")
        jobs.append((found[0], q, out / (q.stem + ".png")))
    if not jobs:
        raise FileNotFoundError(f"no .npy file in {probs}")
    return jobs


def _limit_threads(n):
    import numba
    numba.set_num_threads(min(n, numba.config.NUMBA_NUM_THREADS))


def crf_file(image_path, probs_path, out_path, params, logits=False):
    """Read an image and a C×H×W ``.npy``, run :func:`minilab.crf.dense_crf`, save the labels.

    ``params`` are :func:`~minilab.crf.dense_crf`'s keyword arguments. The labels go to
    ``out_path`` as a palette PNG (:func:`save_labels`).
    """
    from . import crf
    from .data import read_image

    image = read_image(image_path)
    try:
        probs = np.load(probs_path, allow_pickle=False)
    except ValueError as error:  # NumPy's reading of a file that is no .npy: "pickled data"
        raise ValueError(f"PROBS {probs_path} is not a .npy array file") from error
    if not isinstance(probs, np.ndarray):
        probs.close()
        raise ValueError(f"PROBS {probs_path} is an .npz archive; it must be a .npy file holding one C×H×W array")
    if probs.ndim != 3 or probs.shape[1:] != image.shape[:2]:
        raise ValueError(f"{probs_path} must hold a C×H×W array with H×W = {image.shape[:2]} "
                         f"(the size of {image_path}), got shape {probs.shape}")
    if not np.issubdtype(probs.dtype, np.floating):
        raise TypeError(f"{probs_path} must hold floats, got dtype {probs.dtype}")
    if probs.shape[0] > 256:
        raise ValueError(f"{probs_path} has {probs.shape[0]} classes; a palette PNG holds at most 256")
    probs = probs.astype(np.float32, copy=False)
    if logits:
        probs = np.exp(probs - probs.max(axis=0, keepdims=True))
        probs /= probs.sum(axis=0, keepdims=True)
    q = crf.dense_crf(image, probs, **params)
    save_labels(out_path, crf.map_labels(q))


def save_labels(path, labels):
    """Write an H×W map of class ids 0..255 as a palette PNG in PASCAL VOC colours."""
    from PIL import Image

    from .viz import voc_palette

    labels = np.asarray(labels)
    if labels.ndim != 2 or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"labels must be an H×W array of integer class ids, got shape {labels.shape} "
                         f"and dtype {labels.dtype}")
    if labels.size and (labels.min() < 0 or labels.max() > 255):
        raise ValueError(f"labels must be class ids 0..255 to fit a palette PNG, "
                         f"got values from {labels.min()} to {labels.max()}")
    image = Image.fromarray(labels.astype(np.uint8))  # mode L; the palette makes it P
    image.putpalette(voc_palette().ravel().tolist())
    image.save(path)


# ---------------------------------------------------------------------------------------
# minilab demo / train / eval / segment / bench
# ---------------------------------------------------------------------------------------

DATA_HELP = ("what to train or evaluate on: 'synthetic' (generated shapes, 5 classes), 'digits' "
             "(handwritten digits from scikit-learn, 11 classes), 'voc' (a PASCAL VOC folder: --root), "
             "or 'folder' (your own images and masks: --images, --masks, --num-classes)")


def _set_threads(n):
    from .train import limit_threads
    limit_threads(validate.integer("--threads", n, 1)).__enter__()  # for the rest of the command


def _option(name, value, default, minimum=1):
    """``value`` checked as an integer >= ``minimum`` (the error names the option ``name``), or ``default`` when None."""
    return default if value is None else validate.integer(name, value, minimum)


def add_demo(subparsers):
    from .train.demo import DEMO_ITERATIONS, DEMO_SIZE

    p = subparsers.add_parser(
        "demo", help="train a tiny DeepLab on synthetic scenes and show the CRF's effect (about 2-3 min)",
        description=(
            "Train a tiny DeepLab-ASPP from scratch on synthetic scenes (discs, squares, triangles and rings "
            "on cluttered backgrounds), evaluate it on held-out scenes before and after the fully connected "
            "CRF, and write into --out: segmentations.png (image / ground truth / before CRF / after CRF), "
            "training.png (loss and learning rate), report.md, report.json and model.npz (a checkpoint for "
            "'minilab segment' and 'minilab eval'). The last two lines printed are the mean IoU before and "
            "after the CRF."),
        epilog="example: minilab demo --out demo-out      (quick check: minilab demo --out /tmp/d --quick)")
    p.add_argument("--out", default="demo-out", metavar="DIR", help="output folder (default: demo-out)")
    p.add_argument("--iterations", type=int, default=DEMO_ITERATIONS,
                   help=f"SGD iterations (default {DEMO_ITERATIONS})")
    p.add_argument("--test-images", type=int, default=60, help="held-out scenes to evaluate on (default 60)")
    p.add_argument("--quick", action="store_true",
                   help="a small run (150 iterations, 10 test images, under a minute) to check the installation; "
                        "its scores are low")
    p.add_argument("--size", type=int, default=DEMO_SIZE,
                   help=f"scene side in pixels (default {DEMO_SIZE}; 8k+1 fits the stride-8 score map)")
    p.add_argument("--seed", type=int, default=0, help="seed of the model, the data and the sampling")
    p.add_argument("--threads", type=int, default=1, help="CPU threads for the Numba kernels (default 1)")
    p.set_defaults(run=run_demo)


def run_demo(args):
    from .train.demo import run_demo as demo

    _set_threads(args.threads)
    iterations, test_images = (150, 10) if args.quick else (args.iterations, args.test_images)
    iterations = _option("--iterations", iterations, None)
    test_images = _option("--test-images", test_images, None)
    size, seed = _option("--size", args.size, None, minimum=8), _option("--seed", args.seed, None, minimum=0)
    report = demo(args.out, iterations=iterations, val_images=test_images, size=size, seed=seed,
                  log=lambda m: print(m, file=sys.stderr))
    print(f"wrote {args.out}/segmentations.png, training.png, report.md, report.json, model.npz "
          f"({report['total_seconds']} s)")
    print(f"mIoU before CRF: {report['miou_before_crf']:.4f}")
    print(f"mIoU after CRF: {report['miou_after_crf']:.4f}")


#: Digit scenes' default side: 8·16 + 1 pixels, room for a few digits of 32-64 pixels (minilab.data.digits).
DIGITS_SIZE = 129
#: Generated data: the default scene side and number of held-out scenes; training draws from an unlimited supply.
GENERATED = {"synthetic": {"size": 81}, "digits": {"size": DIGITS_SIZE}}
HELD_OUT_SCENES = 100
#: Seeds of the generated training scenes and of the held-out ones.
TRAIN_SEED, HELD_OUT_SEED = 0, 10**6


def _add_data_args(p, train=True):
    default = "synthetic" if train else None
    p.add_argument("--data", choices=["synthetic", "digits", "voc", "folder"], default=default,
                   help=DATA_HELP + (" (default synthetic)" if train else
                                     " (default: the data the checkpoint was trained on, else synthetic)"))
    p.add_argument("--root", metavar="DIR", help="voc: the folder holding JPEGImages/, SegmentationClass/, ImageSets/")
    p.add_argument("--split", default="train" if train else "val",
                   help="voc: the list ImageSets/Segmentation/SPLIT.txt (default %(default)s)")
    p.add_argument("--images", metavar="DIR", help="folder: the images (jpg/png)")
    p.add_argument("--masks", metavar="DIR",
                   help="folder: one PNG per image, same name, pixel value = class id 0..C-1, 255 = unlabelled")
    p.add_argument("--num-classes", type=int, help="folder: the number of classes C (background included)")
    saved = "" if train else "; default: the checkpoint's, where it was trained on such scenes"
    p.add_argument("--size", type=int, default=None,
                   help=f"synthetic/digits: scene side in pixels (default 81 / {DIGITS_SIZE}{saved})")
    p.add_argument("--scenes", type=int, default=None,
                   help=f"synthetic/digits: number of held-out scenes to {'validate' if train else 'evaluate'} on "
                        f"(default {HELD_OUT_SCENES}{saved}); training scenes are drawn without limit")
    p.set_defaults(held_out_seed=HELD_OUT_SEED)


def _dataset(args, split):
    """The data set the arguments name; ``split`` is 'train' or 'val' (held-out scenes for generated data)."""
    from . import data
    if args.data in GENERATED:
        size = _option("--size", args.size, GENERATED[args.data]["size"])
        length, seed = ((10**6, TRAIN_SEED) if split == "train" else
                        (_option("--scenes", args.scenes, HELD_OUT_SCENES), args.held_out_seed))
        if args.data == "synthetic":
            return data.SyntheticScenes(length, size, seed=seed)
        return data.DigitScenes(length, size, seed=seed, split=split)
    if args.data == "voc":
        if not args.root:
            raise ValueError("--data voc needs --root DIR (the folder with JPEGImages/ and SegmentationClass/)")
        return data.VOCSegmentation(args.root, args.split, num_classes=args.num_classes or 21)
    if not (args.images and args.masks and args.num_classes):
        raise ValueError("--data folder needs --images DIR, --masks DIR and --num-classes C")
    folder = data.ImageMaskFolder(args.images, args.masks, args.num_classes)
    if split == "train":
        folder.check_masks()
    return folder


def _data_spec(args, dataset):
    """What a checkpoint records of its data, for ``minilab eval``'s defaults: the name, and
    for generated scenes the held-out set (size, number, seed)."""
    if args.data not in GENERATED:
        return {"data": args.data}
    return {"data": args.data, "size": dataset.size, "scenes": _option("--scenes", args.scenes, HELD_OUT_SCENES),
            "seed": args.held_out_seed}


def _describe(args, dataset):
    """The data set in words, e.g. ``60 synthetic scenes of 113×113 pixels (seed 1000000)``."""
    if args.data in GENERATED:
        return f"{len(dataset)} {args.data} scenes of {dataset.size}×{dataset.size} pixels (seed {dataset.seed})"
    where = f"{args.root} ({args.split})" if args.data == "voc" else args.images
    return f"{len(dataset)} images of {where}"


def add_train(subparsers):
    from .nn import PRESETS
    p = subparsers.add_parser(
        "train", help="train a DeepLab on generated data, a PASCAL VOC folder or your own images and masks",
        description=(
            "Train a DeepLab with SGD (momentum 0.9, weight decay 5e-4, classifier at 10x the learning rate, "
            "'poly' or 'step' policy) and save a checkpoint (.npz) that 'minilab eval' and 'minilab segment' "
            "read. Labels are PNGs whose pixel values are class ids 0..C-1 (0 usually background) and 255 for "
            "pixels to ignore; VOC's palette PNGs are exactly that. Training images are randomly scaled "
            "(0.5-1.5), cropped to --crop-size (padding labelled 255) and flipped (digit scenes: whole scenes, "
            "neither scaled nor flipped). Stop with Ctrl-C and "
            "continue later with --resume: the result is the same as one uninterrupted run."),
        epilog=("examples:\n  minilab train --data synthetic --iterations 1500 --checkpoint shapes.npz\n"
                "  minilab train --data digits --batch-size 4 --iterations 12000 --val-every 1000 "
                "--checkpoint digits.npz --curve digits.png   (about 9 min, docs/digits.md)\n"
                "  minilab train --data folder --images imgs/ --masks masks/ --num-classes 3 --model demo "
                "--crop-size 161 --checkpoint mine.npz"),
        formatter_class=argparse.RawDescriptionHelpFormatter)
    _add_data_args(p)
    p.add_argument("--model", default="demo", choices=["demo"] + sorted(PRESETS),
                   help="'demo' is the demo's tiny VGG-ASPP; the others are minilab.nn presets (default demo)")
    p.add_argument("--checkpoint", required=True, metavar="FILE.npz", help="where to save (and --resume from)")
    p.add_argument("--resume", action="store_true",
                   help="continue from --checkpoint, with the model and settings it was trained with")
    p.add_argument("--iterations", type=int, default=1500,
                   help="SGD iterations (default 1500). Under --policy poly this is the length of the "
                        "learning-rate schedule, so --resume keeps it; under --policy step, --resume with "
                        "a larger value trains on as if it had been given from the start")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--crop-size", type=int, default=None,
                   help="side of the training crops; 8k+1 is best (default: whole scenes for synthetic/digits, 81 "
                        "otherwise)")
    p.add_argument("--lr", type=float, default=0.01, help="base learning rate (default 0.01)")
    p.add_argument("--policy", choices=["poly", "step"], default="poly")
    p.add_argument("--step-size", type=int, default=2000, help="step policy: iterations between x0.1 drops")
    p.add_argument("--scale", action=argparse.BooleanOptionalAction, default=None,
                   help="random scaling 0.5-1.5 (default: on, except for digits, whose scenes already hold "
                        "digits of several sizes and whose smallest digits would fall below the stride-8 "
                        "score map's resolution)")
    p.add_argument("--flip", action=argparse.BooleanOptionalAction, default=None,
                   help="random horizontal flips (default: on, except for digits: a mirrored 2 is no digit)")
    p.add_argument("--val-every", type=int, default=0, help="validate every N iterations (0: never)")
    p.add_argument("--checkpoint-every", type=int, default=100, help="save every N iterations (default 100)")
    p.add_argument("--curve", metavar="FILE.png",
                   help="also draw the training loss, learning rate and validation mean IoU (--val-every) "
                        "into FILE.png")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", choices=["cpu", "gpu", "auto"], default="cpu")
    p.add_argument("--threads", type=int, default=1, help="CPU threads for the Numba kernels (default 1)")
    p.set_defaults(run=run_train)


def run_train(args):
    from . import nn
    from .train import Trainer, TrainConfig, build_model, model_spec
    from .train.checkpoint import load_checkpoint, writable
    from .train.demo import DEMO_MODEL

    _set_threads(args.threads)
    writable("--checkpoint", args.checkpoint)  # before the data and the training, not at the first save
    train_set = _dataset(args, "train")
    c = train_set.num_classes
    if args.model == "demo":
        spec = model_spec("deeplab_vgg16", c, seed=args.seed, **DEMO_MODEL)
    else:
        builder, kwargs = nn.PRESETS[args.model]
        spec = model_spec(builder.__name__, c, seed=args.seed, **kwargs)
    generated = args.data in GENERATED
    if args.val_every and not generated:
        raise ValueError(f"--val-every needs held-out data, which only --data synthetic or digits provides; "
                         f"score a checkpoint trained on --data {args.data} with 'minilab eval' instead")
    crop_size = _option("--crop-size", args.crop_size, train_set.size if generated else 81)
    scale = args.scale if args.scale is not None else args.data != "digits"
    flip = args.flip if args.flip is not None else args.data != "digits"
    # A resumed model keeps the input normalisation it was trained with (older checkpoints of
    # folder and VOC data hold VOC's mean colour and scale 1, not today's default).
    saved = load_checkpoint(args.checkpoint)[2]["config"] if args.resume and Path(args.checkpoint).exists() else {}
    normalisation = {k: tuple(saved[k]) if k == "mean" else saved[k] for k in ("mean", "input_scale") if k in saved}
    config = TrainConfig(iterations=args.iterations, batch_size=args.batch_size, crop_size=crop_size,
                         base_lr=args.lr, policy=args.policy, step_size=args.step_size,
                         scale_range=(0.5, 1.5) if scale else None, flip=flip, val_every=args.val_every,
                         checkpoint_every=args.checkpoint_every, seed=args.seed, device=args.device,
                         **normalisation)
    val_set = _dataset(args, "val") if args.val_every and generated else None
    trainer = Trainer(build_model(spec), train_set, config, c, val_set=val_set, checkpoint=args.checkpoint,
                      model_spec=spec, data_spec=_data_spec(args, train_set))
    if args.resume:
        trainer.load(args.checkpoint)
        print(f"resumed from {args.checkpoint} at iteration {trainer.iteration}", file=sys.stderr)
    try:
        history = trainer.fit()
    except KeyboardInterrupt:
        kept = (f"{args.checkpoint} holds iteration {trainer.saved_iteration}; continue with --resume"
                if trainer.saved_iteration is not None else "no checkpoint was written yet")
        raise KeyboardInterrupt(f"at iteration {trainer.iteration}; {kept}") from None
    if args.curve:
        from .viz import training_curves
        training_curves(history, args.curve, title=f"minilab train --data {args.data}")
    print(f"saved {args.checkpoint} at iteration {trainer.iteration} after {trainer.train_seconds:.0f} s of "
          f"training; mean loss of the last 50 iterations {np.mean(history['loss'][-50:]):.4f}")
    if history["val"]:
        print(f"validation mIoU at iteration {history['val'][-1]['iteration']}: {history['val'][-1]['miou']:.4f}")


def _crf_params(args):
    from .train.demo import DEMO_CRF
    return dict(DEMO_CRF, **{k: getattr(args, k) for k in ("w1", "sigma_alpha", "sigma_beta")
                             if getattr(args, k) is not None})


def _add_crf_args(p):
    p.add_argument("--crf", action="store_true", help="refine with the fully connected CRF")
    p.add_argument("--w1", type=float, help="CRF appearance-kernel weight (default: the demo's, 5)")
    p.add_argument("--sigma-alpha", type=float, help="CRF appearance-kernel position scale, pixels (default 10)")
    p.add_argument("--sigma-beta", type=float, help="CRF appearance-kernel colour scale (default 10)")


def add_eval(subparsers):
    p = subparsers.add_parser(
        "eval", help="score a checkpoint: mean IoU and pixel accuracy, with and without the CRF",
        description=("Evaluate a checkpoint on a data set (held-out generated scenes by default) and print the "
                     "mean IoU over classes, pixel accuracy and per-class IoU, before and (with --crf) after "
                     "the CRF. Pixels labelled 255 are not scored."),
        epilog="example: minilab eval --checkpoint demo-out/model.npz --crf")
    p.add_argument("--checkpoint", required=True, metavar="FILE.npz")
    _add_data_args(p, train=False)
    _add_crf_args(p)
    p.add_argument("--trimap", type=int, metavar="PX", help="also score pixels within PX of a boundary (Fig. 10)")
    p.add_argument("--json", metavar="FILE", help="also write the scores as JSON")
    p.add_argument("--threads", type=int, default=1)
    p.set_defaults(run=run_eval)


def run_eval(args):
    from .train import evaluate, load_model
    from .train.evaluate import json_ready

    _set_threads(args.threads)
    args.trimap = _option("--trimap", args.trimap, None, minimum=0)  # before the model runs, not after
    model, meta = load_model(args.checkpoint)
    saved = meta.get("data_spec") or {}
    args.data = args.data or saved.get("data", "synthetic")
    if saved.get("data") == args.data and args.data in GENERATED:
        args.size = saved.get("size") if args.size is None else args.size
        args.scenes = saved.get("scenes") if args.scenes is None else args.scenes
        args.held_out_seed = saved.get("seed", args.held_out_seed)
    dataset = _dataset(args, "val")
    c = meta["model_spec"]["num_classes"]
    if dataset.num_classes != c:
        raise ValueError(f"the data has {dataset.num_classes} classes but the checkpoint's model {c}")
    r = evaluate(model, dataset, c, crf=_crf_params(args) if args.crf else None, mean=meta["config"]["mean"],
                 input_scale=meta["config"]["input_scale"], trimap_width=args.trimap, progress=True)
    r.pop("examples")
    print(f"evaluated {args.checkpoint} on {_describe(args, dataset)}")
    for s, name in (("", "before CRF"), ("_crf", "after CRF")):
        if f"miou{s}" in r:
            per = ", ".join(f"{n} {v:.3f}" for n, v in zip(dataset.class_names, r[f"class_iou{s}"]))
            trimap = (f", accuracy within {args.trimap} px of a boundary {r[f'trimap_accuracy{s}']:.4f}"
                      if args.trimap is not None else "")
            print(f"{name}: mIoU {r[f'miou{s}']:.4f}, pixel accuracy {r[f'pixel_accuracy{s}']:.4f}{trimap} ({per})")
    if args.json:
        Path(args.json).write_text(json.dumps(json_ready(r), indent=2, allow_nan=False))


def add_segment(subparsers):
    p = subparsers.add_parser(
        "segment", help="label every pixel of one image with a trained checkpoint",
        description=("Run a checkpoint on IMAGE and write the label map as a palette PNG (pixel value = class id, "
                     "VOC colours). With --crf the probabilities are refined by the fully connected CRF first. "
                     "--overlay also writes the image with the labels blended in."),
        epilog="example: minilab segment photo.png --checkpoint demo-out/model.npz --crf -o labels.png")
    p.add_argument("image", metavar="IMAGE")
    p.add_argument("--checkpoint", required=True, metavar="FILE.npz")
    p.add_argument("-o", "--output", required=True, metavar="OUT.png")
    p.add_argument("--overlay", metavar="FILE.png", help="also write the image with the labels blended in")
    _add_crf_args(p)
    p.set_defaults(run=run_segment)


def run_segment(args):
    from PIL import Image

    from .crf import dense_crf
    from .data import read_image
    from .train import load_model, predict_probs
    from .viz import overlay

    _output_file("-o/--output", args.output, (".png",))
    if args.overlay:
        _output_file("--overlay", args.overlay, IMAGE_SUFFIXES)
    model, meta = load_model(args.checkpoint)
    image = read_image(args.image)
    probs = predict_probs(model, image, meta["config"]["mean"], meta["config"]["input_scale"])
    if args.crf:
        probs = dense_crf(image, probs, **_crf_params(args))
    labels = probs.argmax(0).astype(np.uint8)
    save_labels(args.output, labels)
    if args.overlay:
        Image.fromarray(overlay(image, labels)).save(args.overlay)
    counts = np.bincount(labels.ravel(), minlength=probs.shape[0])
    print(f"wrote {args.output}: " + ", ".join(f"class {k} {n / labels.size:.1%}" for k, n in enumerate(counts) if n))


def add_bench(subparsers):
    p = subparsers.add_parser(
        "bench", help="run the timing scripts in benchmarks/ (from a source checkout)",
        description=("Run every benchmarks/bench_*.py (or those named) one after the other; each prints a table "
                     "and writes JSON to benchmarks/results/. Needs the source tree (benchmarks/ is not installed)."))
    p.add_argument("names", nargs="*", metavar="NAME", help="e.g. train crf (default: all)")
    p.add_argument("--dir", default=None, metavar="DIR", help="the benchmarks folder (default: ./benchmarks, "
                   "or the one beside the minilab package)")
    p.set_defaults(run=run_bench)


def run_bench(args):
    candidates = [Path(args.dir)] if args.dir else [Path("benchmarks"), Path(__file__).resolve().parent.parent / "benchmarks"]
    folder = next((d for d in candidates if d.is_dir()), None)
    if folder is None:
        raise FileNotFoundError(f"no benchmarks folder (looked in {', '.join(map(str, candidates))}); "
                                "run from a source checkout or pass --dir")
    scripts = sorted(folder.glob("bench_*.py"))
    if args.names:
        names = [s.stem[len("bench_"):] for s in scripts]
        unknown = [n for n in args.names if n not in names]
        if unknown:
            raise ValueError(f"NAME {', '.join(unknown)} matches no benchmark script in {folder}; "
                             f"the names are {', '.join(names) or 'none'}")
        scripts = [s for s, n in zip(scripts, names) if n in args.names]
    if not scripts:
        raise FileNotFoundError(f"no benchmark script matches in {folder}")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(Path(__file__).resolve().parent.parent),
                                                       os.environ.get("PYTHONPATH", "")]))
    for script in scripts:
        print(f"== {script.name}", flush=True)
        if subprocess.run([sys.executable, str(script)], cwd=folder.parent, env=env).returncode:
            raise ValueError(f"{script.name} failed")


SUBCOMMANDS = [add_crf, add_demo, add_train, add_eval, add_segment, add_bench]

if __name__ == "__main__":
    sys.exit(main())

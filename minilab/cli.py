"""The ``minilab`` command.

Each subcommand is one ``add_<name>(subparsers)`` function that declares its arguments and
sets ``run=`` to the function doing the work; :data:`SUBCOMMANDS` lists them. Adding a
subcommand is one function and one line in that list.

Errors a user can cause (a missing file, arrays of the wrong shape, a bad parameter) are
reported as ``minilab <command>: error: <message>`` with exit status 2, like argparse's own.
"""
import argparse
import concurrent.futures
import multiprocessing
import os
import sys
from pathlib import Path

import numpy as np

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".ppm")


def main(argv=None):
    """Run the ``minilab`` command line with ``argv`` (default ``sys.argv[1:]``); returns 0."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        args.run(args)
    except (OSError, ValueError, TypeError) as error:
        parser.exit(2, f"minilab {args.command}: error: {error}\n")
    return 0


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
        crf_file(image, probs, out, params, args.logits)
        return
    if not probs.is_dir():
        raise ValueError(f"IMAGE {image} is a folder, so PROBS must be one too; got {probs}")
    jobs = _crf_jobs(image, probs, out)
    out.mkdir(parents=True, exist_ok=True)
    workers = min(max(1, args.jobs), len(jobs))
    # spawn, not fork: Numba's OpenMP threads do not survive a fork
    context = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(
            workers, mp_context=context, initializer=_limit_threads,
            initargs=(max(1, (os.cpu_count() or 1) // workers),)) as pool:
        futures = [pool.submit(crf_file, i, q, o, params, args.logits) for i, q, o in jobs]
        for future in tqdm(concurrent.futures.as_completed(futures), total=len(futures),
                           desc="crf", unit="image", file=sys.stderr):
            future.result()


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
    from PIL import Image

    from . import crf

    with Image.open(image_path) as im:
        image = np.asarray(im.convert("RGB"))
    probs = np.load(probs_path, allow_pickle=False)
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

    image = Image.fromarray(np.asarray(labels).astype(np.uint8))  # mode L; the palette makes it P
    image.putpalette(voc_palette().ravel().tolist())
    image.save(path)


SUBCOMMANDS = [add_crf]

if __name__ == "__main__":
    sys.exit(main())

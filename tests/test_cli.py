"""The ``minilab`` command, run through ``main([...])`` on tiny files."""
import json
import sys
import warnings

import numpy as np
import pytest
from PIL import Image

from minilab import cli, viz
from minilab.crf import dense_crf, map_labels

PARAMS = ["--method", "naive", "--iterations", "3", "--sigma-alpha", "4", "--sigma-gamma", "1"]


def tiny_pair(folder, name, rng, h=10, w=12, c=3):
    image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    probs = rng.random((c, h, w)).astype(np.float32) + 0.1
    probs /= probs.sum(axis=0)
    Image.fromarray(image).save(folder / f"{name}.png")
    np.save(folder / f"{name}.npy", probs)
    return image, probs


def expected_labels(image, probs):
    q = dense_crf(image, probs, iterations=3, w1=5.0, sigma_alpha=4.0, sigma_beta=3.0, w2=3.0,
                  sigma_gamma=1.0, method="naive")
    return map_labels(q)


def read_png(path):
    with Image.open(path) as im:
        assert im.mode == "P"
        assert list(im.getpalette()[:6]) == [0, 0, 0, 128, 0, 0]
        return np.asarray(im)


def test_crf_one_image(tmp_path, rng):
    image, probs = tiny_pair(tmp_path, "a", rng)
    assert cli.main(["crf", str(tmp_path / "a.png"), str(tmp_path / "a.npy"), "-o", str(tmp_path / "out.png"),
                     *PARAMS]) == 0
    np.testing.assert_array_equal(read_png(tmp_path / "out.png"), expected_labels(image, probs))


def test_crf_logits(tmp_path, rng):
    image, probs = tiny_pair(tmp_path, "a", rng)
    np.save(tmp_path / "scores.npy", np.log(probs) + 7.0)  # softmax of these is probs again
    cli.main(["crf", str(tmp_path / "a.png"), str(tmp_path / "scores.npy"), "-o", str(tmp_path / "out.png"),
              "--logits", *PARAMS])
    np.testing.assert_array_equal(read_png(tmp_path / "out.png"), expected_labels(image, probs))


def test_crf_folder_in_parallel(tmp_path, rng):
    images, probs = tmp_path / "images", tmp_path / "probs"
    images.mkdir()
    probs.mkdir()
    pairs = {name: tiny_pair(images, name, rng) for name in ("x", "y", "z")}
    for name in pairs:
        (images / f"{name}.npy").rename(probs / f"{name}.npy")
    (images / "unused.png").write_bytes((images / "x.png").read_bytes())  # images without probs are skipped
    out = tmp_path / "out" / "labels"
    cli.main(["crf", str(images), str(probs), "-o", str(out), "--jobs", "2", *PARAMS])
    assert sorted(p.name for p in out.iterdir()) == ["x.png", "y.png", "z.png"]
    for name, (image, p) in pairs.items():
        np.testing.assert_array_equal(read_png(out / f"{name}.png"), expected_labels(image, p))


def run_error(capsys, argv):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(argv)
    assert exit_info.value.code == 2
    return capsys.readouterr().err


def test_bad_input(tmp_path, rng, capsys):
    image, probs = tiny_pair(tmp_path, "a", rng)
    img, npy, out = str(tmp_path / "a.png"), str(tmp_path / "a.npy"), str(tmp_path / "o.png")
    assert "a.png" not in run_error(capsys, ["crf", img, npy])  # -o is required
    err = run_error(capsys, ["crf", str(tmp_path / "missing.png"), npy, "-o", out])
    assert "minilab crf: error" in err and "missing.png" in err
    err = run_error(capsys, ["crf", img, str(tmp_path / "missing.npy"), "-o", out])
    assert "missing.npy" in err
    np.save(tmp_path / "wide.npy", np.full((3, 10, 13), 1 / 3, np.float32))
    err = run_error(capsys, ["crf", img, str(tmp_path / "wide.npy"), "-o", out])
    assert "C×H×W" in err and "(10, 12)" in err and "(3, 10, 13)" in err
    np.save(tmp_path / "int.npy", np.ones((3, 10, 12), np.int64))
    assert "floats" in run_error(capsys, ["crf", img, str(tmp_path / "int.npy"), "-o", out])
    np.save(tmp_path / "unnormalised.npy", probs * 2)
    assert "sum to 1" in run_error(capsys, ["crf", img, str(tmp_path / "unnormalised.npy"), "-o", out])
    assert "sigma_alpha" in run_error(capsys, ["crf", img, npy, "-o", out, "--sigma-alpha", "0"])
    assert "iterations" in run_error(capsys, ["crf", img, npy, "-o", out, "--iterations", "-1"])
    assert "invalid choice" in run_error(capsys, ["crf", img, npy, "-o", out, "--method", "fast"])
    # folder mode: a folder of images with a file of probabilities, and a missing image
    assert "must be one too" in run_error(capsys, ["crf", str(tmp_path), npy, "-o", out])
    (tmp_path / "probs").mkdir()
    np.save(tmp_path / "probs" / "b.npy", probs)
    assert "no image for b.npy" in run_error(capsys, ["crf", str(tmp_path), str(tmp_path / "probs"), "-o", out])
    np.save(tmp_path / "probs" / "b.npy", probs * 2)
    (tmp_path / "b.png").write_bytes((tmp_path / "a.png").read_bytes())
    err = run_error(capsys, ["crf", str(tmp_path), str(tmp_path / "probs"), "-o", str(tmp_path / "o"), "--jobs", "1"])
    assert "b.npy: probs must sum to 1" in err  # a worker's error names its file
    assert "--jobs must be >= 1" in run_error(capsys, ["crf", str(tmp_path), str(tmp_path / "probs"), "-o", out, "--jobs", "0"])
    assert not (tmp_path / "o.png").exists()  # refused before the output folder is made
    np.savez(tmp_path / "archive.npz", probs=probs)
    err = run_error(capsys, ["crf", img, str(tmp_path / "archive.npz"), "-o", out])
    assert "minilab crf: error: PROBS" in err and "archive.npz is an .npz archive" in err
    assert f"PROBS {img} is not a .npy array file" in run_error(capsys, ["crf", img, img, "-o", out])
    for wrong in (img, npy):  # an image, a .npy: neither is a checkpoint
        err = run_error(capsys, ["eval", "--checkpoint", wrong])
        assert err.startswith("minilab eval: error: ") and "is not a minilab checkpoint" in err
    (tmp_path / "empty").mkdir()
    assert "no .npy file" in run_error(capsys, ["crf", str(tmp_path), str(tmp_path / "empty"), "-o", out])


def test_output_files_are_checked_before_the_work(tmp_path, rng, capsys):
    tiny_pair(tmp_path, "a", rng)
    img, npy = str(tmp_path / "a.png"), str(tmp_path / "a.npy")
    (tmp_path / "dir.png").mkdir()
    for out in (tmp_path, tmp_path / "dir.png", tmp_path / "labels", tmp_path / "labels.jpg"):
        err = run_error(capsys, ["crf", img, npy, "-o", str(out), *PARAMS])
        assert err.startswith(f"minilab crf: error: -o/--output must be a file name ending in .png, got '{out}'")
    # the checkpoint is missing too: the output paths are checked first
    segment = ["segment", img, "--checkpoint", str(tmp_path / "missing.npz")]
    err = run_error(capsys, segment + ["-o", str(tmp_path)])
    assert err.startswith("minilab segment: error: -o/--output must be a file name ending in .png")
    err = run_error(capsys, segment + ["-o", str(tmp_path / "l.PNG"), "--overlay", str(tmp_path)])
    assert err.startswith("minilab segment: error: --overlay must be a file name ending in .png or .jpg")
    assert "missing.npz" in run_error(capsys, segment + ["-o", str(tmp_path / "l.PNG"), "--overlay",
                                                         str(tmp_path / "o.jpg")])


def test_save_labels_refuses_what_a_palette_png_cannot_hold(tmp_path):
    cli.save_labels(tmp_path / "ok.png", np.array([[0, 255]]))
    np.testing.assert_array_equal(read_png(tmp_path / "ok.png"), [[0, 255]])
    for labels, match in ((np.array([[0, 256]]), "0..255"), (np.array([[-1, 0]]), "0..255"),
                          (np.array([[0.5, 1.0]]), "integer class ids"), (np.zeros(3, int), "H×W")):
        with pytest.raises(ValueError, match=match):
            cli.save_labels(tmp_path / "bad.png", labels)


def test_crf_reads_16_bit_images_by_their_top_8_bits(tmp_path, rng):
    grey = rng.integers(0, 2**16, (10, 12)).astype(np.uint16)
    Image.fromarray(grey).save(tmp_path / "deep.png")
    probs = rng.random((3, 10, 12)).astype(np.float32) + 0.1
    np.save(tmp_path / "deep.npy", probs / probs.sum(axis=0))
    assert cli.main(["crf", str(tmp_path / "deep.png"), str(tmp_path / "deep.npy"), "-o", str(tmp_path / "out.png"),
                     *PARAMS]) == 0
    image = np.repeat((grey >> 8).astype(np.uint8)[:, :, None], 3, axis=2)
    np.testing.assert_array_equal(read_png(tmp_path / "out.png"),
                                  expected_labels(image, np.load(tmp_path / "deep.npy")))


def test_help_lists_crf(capsys):
    with pytest.raises(SystemExit):
        cli.main(["--help"])
    assert "crf" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        cli.main(["crf", "--help"])
    text = capsys.readouterr().out
    assert "--sigma-alpha" in text and "sxy" in text


def test_voc_palette():
    palette = viz.voc_palette()
    assert palette.shape == (256, 3) and palette.dtype == np.uint8
    assert palette[0].tolist() == [0, 0, 0] and palette[1].tolist() == [128, 0, 0]
    assert palette[15].tolist() == [192, 128, 128] and palette[20].tolist() == [0, 64, 128]
    assert palette[255].tolist() == [224, 224, 192]
    assert len({tuple(c) for c in palette}) == 256


def test_colorize_checks_its_palette():
    labels = np.array([[0, 2]])
    assert viz.colorize(labels, [[0, 0, 0], [1, 1, 1], [255, 0, 7]]).tolist() == [[[0, 0, 0], [255, 0, 7]]]
    for palette in (np.zeros((2, 3), np.uint8), np.zeros((3, 4), np.uint8), np.zeros(3, np.uint8)):
        with pytest.raises(ValueError, match="palette must be K×3 with a row for each class id up to 2"):
            viz.colorize(labels, palette)  # too few rows was an IndexError
    with pytest.raises(TypeError, match="palette must have an integer dtype"):
        viz.colorize(labels, np.full((3, 3), 0.5))  # was truncated to 0
    with pytest.raises(ValueError, match="palette must hold colour values 0..255"):
        viz.colorize(labels, np.full((3, 3), 256))


def test_the_command_hides_only_numbas_low_occupancy_advice():
    message = "Grid size {} will likely result in GPU under-utilization due to low occupancy."
    with warnings.catch_warnings(record=True) as caught:
        cli.silence_occupancy_advice()
        warnings.warn(message.format(16), UserWarning)
        warnings.warn("\x1b[1m" + message.format(17) + "\x1b[0m", UserWarning)  # as colorama prints it
        warnings.warn("Grid size is not the only warning", UserWarning)
    assert [str(w.message) for w in caught] == ["Grid size is not the only warning"]


def test_a_missing_optional_package_is_a_message(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "sklearn", None)  # as if scikit-learn were not installed
    monkeypatch.setitem(sys.modules, "sklearn.datasets", None)
    err = run_error(capsys, ["train", "--data", "digits", "--checkpoint", str(tmp_path / "c.npz")])
    assert err.startswith("minilab train: error: digit scenes need scikit-learn") and "Traceback" not in err


def test_bench_names_a_name_that_matches_no_script(tmp_path, capsys):
    (tmp_path / "bench_a.py").write_text("raise SystemExit('bench_a ran')\n")
    err = run_error(capsys, ["bench", "a", "nosuch", "--dir", str(tmp_path)])
    assert err == f"minilab bench: error: NAME nosuch matches no benchmark script in {tmp_path}; the names are a\n"


def test_a_damaged_checkpoint_is_a_one_line_error(tmp_path, capsys):
    np.savez(tmp_path / "c.npz", meta=np.array('{"format": "minilab-checkpoint"}'))
    for command in (["eval"], ["segment", str(tmp_path / "a.png"), "-o", str(tmp_path / "o.png")]):
        err = run_error(capsys, command + ["--checkpoint", str(tmp_path / "c.npz")])
        assert err.startswith(f"minilab {command[0]}: error: checkpoint ") and "c.npz is damaged" in err
        assert err.count("\n") == 1


def test_eval_checks_trimap_before_loading_anything(tmp_path, capsys):
    err = run_error(capsys, ["eval", "--checkpoint", str(tmp_path / "none.npz"), "--trimap", "-1"])
    assert err == "minilab eval: error: --trimap must be >= 0, got -1\n"


def test_train_flags_reach_their_own_settings():
    parse = cli.build_parser().parse_args
    args = parse(["train", "--checkpoint", "c.npz", "--no-flip"])
    assert args.flip is False and args.scale is None
    train, val = cli._dataset(args, "train"), cli._dataset(args, "val")
    assert (train.seed, val.seed) == (cli.TRAIN_SEED, cli.HELD_OUT_SEED)
    args = parse(["segment", "x.png", "--checkpoint", "c.npz", "-o", "o.png", "--w1", "2", "--sigma-alpha", "3",
                  "--sigma-beta", "4"])
    assert {k: cli._crf_params(args)[k] for k in ("w1", "sigma_alpha", "sigma_beta")} == dict(
        w1=2.0, sigma_alpha=3.0, sigma_beta=4.0)


def test_train_no_flip_reaches_the_checkpoint(tmp_path):
    cli.main(["train", "--size", "33", "--batch-size", "1", "--iterations", "1", "--no-flip",
              "--checkpoint", str(tmp_path / "c.npz")])
    config = json.loads(str(np.load(tmp_path / "c.npz")["meta"]))["config"]
    assert config["flip"] is False and config["scale_range"] == [0.5, 1.5]


def test_crf_logits_of_any_size(tmp_path, rng):
    """Softmax is shift-invariant: logits of size 1000 (exp overflows float32) give the same labels."""
    image, probs = tiny_pair(tmp_path, "a", rng)
    np.save(tmp_path / "scores.npy", np.log(probs) + 1000.0)
    assert cli.main(["crf", str(tmp_path / "a.png"), str(tmp_path / "scores.npy"), "-o", str(tmp_path / "out.png"),
                     "--logits", *PARAMS]) == 0
    np.testing.assert_array_equal(read_png(tmp_path / "out.png"), expected_labels(image, probs))


def test_crf_refuses_more_classes_than_a_palette_holds(tmp_path, rng, capsys):
    tiny_pair(tmp_path, "a", rng)
    np.save(tmp_path / "many.npy", np.full((257, 10, 12), 1 / 257, np.float32))
    err = run_error(capsys, ["crf", str(tmp_path / "a.png"), str(tmp_path / "many.npy"), "-o", str(tmp_path / "o.png")])
    assert "257 classes; a palette PNG holds at most 256" in err

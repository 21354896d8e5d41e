"""The demo and the train / eval / segment commands, end to end at a small size."""
import json

import numpy as np
import pytest
from PIL import Image

from minilab import cli, viz
from minilab.data import SyntheticScenes
from minilab.train import limit_threads
from minilab.train.evaluate import json_ready


@pytest.fixture(autouse=True)
def one_thread():
    with limit_threads(1):
        yield


def test_demo_end_to_end(tmp_path, capsys):
    cli.main(["demo", "--out", str(tmp_path), "--iterations", "60", "--test-images", "3", "--size", "41"])
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[-2].startswith("mIoU before CRF: 0.") and lines[-1].startswith("mIoU after CRF: 0.")
    report = json.loads((tmp_path / "report.json").read_text())
    assert f"{report['miou_before_crf']:.4f}" == lines[-2].split(": ")[1]
    loss = json.loads(str(np.load(tmp_path / "model.npz")["meta"]))["history"]["loss"]
    assert np.mean(loss[-10:]) < np.mean(loss[:10]) - 0.3  # it learns (the full demo's scores: docs/training.md)
    for name in ("segmentations.png", "training.png", "report.md", "model.npz"):
        assert (tmp_path / name).stat().st_size > 0
    # the checkpoint serves the other commands
    image, labels = SyntheticScenes(1, 41, seed=7)[0]
    Image.fromarray(image).save(tmp_path / "scene.png")
    cli.main(["segment", str(tmp_path / "scene.png"), "--checkpoint", str(tmp_path / "model.npz"), "--crf",
              "-o", str(tmp_path / "labels.png"), "--overlay", str(tmp_path / "overlay.png")])
    with Image.open(tmp_path / "labels.png") as im:
        assert im.mode == "P" and im.size == (41, 41)
        assert np.asarray(im).max() < 5
    capsys.readouterr()
    cli.main(["eval", "--checkpoint", str(tmp_path / "model.npz"), "--crf", "--trimap", "2",
              "--json", str(tmp_path / "eval.json")])
    out = capsys.readouterr().out
    # by default the held-out scenes the demo scored, and the boundary accuracy is printed
    assert "on 3 synthetic scenes of 41×41 pixels (seed 1000000)" in out
    assert "before CRF: mIoU " + lines[-2].split(": ")[1] in out and "after CRF: mIoU " + lines[-1].split(": ")[1] in out
    assert out.count("accuracy within 2 px of a boundary 0.") == 2
    scores = json.loads((tmp_path / "eval.json").read_text(), parse_constant=pytest.fail)  # no bare NaN
    assert 0 <= scores["miou"] <= 1 and 0 <= scores["miou_crf"] <= 1 and 0 <= scores["trimap_accuracy"] <= 1


def test_train_command_resumes(tmp_path, capsys):
    args = ["train", "--data", "synthetic", "--size", "41", "--crop-size", "41", "--batch-size", "2",
            "--checkpoint", str(tmp_path / "c.npz"), "--checkpoint-every", "2", "--policy", "step"]
    cli.main(args + ["--iterations", "4"])
    first = dict(np.load(tmp_path / "c.npz"))
    cli.main(args + ["--iterations", "6", "--resume"])
    assert "at iteration 6" in capsys.readouterr().out
    assert not np.array_equal(first["model/head.branches.0.fc8.weight"],
                              np.load(tmp_path / "c.npz")["model/head.branches.0.fc8.weight"])
    err = run_error(capsys, args[:-2] + ["--iterations", "8", "--resume"])  # poly: T may not change
    assert "iterations=6 (now 8)" in err and "Traceback" not in err
    err = run_error(capsys, args + ["--iterations", "6", "--resume", "--model", "tiny-vgg-largefov"])
    assert err.startswith("minilab train: error: checkpoint") and "holds another model" in err
    assert len(err.strip().splitlines()) == 1


def test_train_and_eval_on_digit_scenes(tmp_path, capsys):
    pytest.importorskip("sklearn")
    common = ["--data", "digits", "--size", "33", "--scenes", "2"]
    cli.main(["train", *common, "--batch-size", "2", "--iterations", "4", "--no-scale", "--val-every", "2",
              "--checkpoint", str(tmp_path / "d.npz"), "--curve", str(tmp_path / "curve.png")])
    out = capsys.readouterr().out
    assert "saved" in out and "validation mIoU at iteration 4: 0." in out
    assert (tmp_path / "curve.png").stat().st_size > 0
    meta = json.loads(str(np.load(tmp_path / "d.npz")["meta"]))
    config = meta["config"]
    assert config["crop_size"] == 33 and config["scale_range"] is None and config["flip"] is False  # whole scenes
    assert [v["iteration"] for v in meta["history"]["val"]] == [2, 4]
    assert 0 < meta["history"]["val"][0]["seconds"] <= meta["history"]["val"][1]["seconds"] <= meta["train_seconds"]
    assert len(meta["history"]["val"][1]["class_iou"]) == 11
    cli.main(["eval", "--checkpoint", str(tmp_path / "d.npz"), *common, "--json", str(tmp_path / "e.json")])
    assert "before CRF: mIoU" in capsys.readouterr().out
    assert len(json.loads((tmp_path / "e.json").read_text())["class_iou"]) == 11


def run_error(capsys, argv):
    """The one-line message of a command that fails with a user error."""
    with pytest.raises(SystemExit) as info:
        cli.main(argv)
    assert info.value.code == 2
    return capsys.readouterr().err


def scene_folder(root, n=4, size=41):
    """``root/img/s<i>.png`` and ``root/mask/s<i>.png``: ``n`` synthetic scenes as your own data."""
    for d in ("img", "mask"):
        (root / d).mkdir(parents=True)
    for i in range(n):
        image, labels = SyntheticScenes(n, size, seed=5)[i]
        Image.fromarray(image).save(root / "img" / f"s{i}.png")
        Image.fromarray(labels).save(root / "mask" / f"s{i}.png")
    return root / "img", root / "mask"


def test_train_on_a_folder_keeps_inputs_small_and_the_checkpoint_remembers(tmp_path, capsys):
    """The default model (no batch norm) at lr 0.01 diverges on raw 0-255 inputs within a few
    iterations; every data source is normalised alike, and eval/segment reuse the checkpoint's values."""
    images, masks = scene_folder(tmp_path)
    folder = ["--data", "folder", "--images", str(images), "--masks", str(masks), "--num-classes", "5"]
    cli.main(["train", *folder, "--iterations", "8", "--batch-size", "4", "--crop-size", "41",
              "--checkpoint", str(tmp_path / "f.npz")])
    config = json.loads(str(np.load(tmp_path / "f.npz")["meta"]))["config"]
    assert config["mean"] == [128.0] * 3 and config["input_scale"] == 1 / 64
    cli.main(["eval", "--checkpoint", str(tmp_path / "f.npz"), *folder])
    cli.main(["segment", str(images / "s0.png"), "--checkpoint", str(tmp_path / "f.npz"), "-o", str(tmp_path / "l.png")])
    assert "before CRF: mIoU" in capsys.readouterr().out


def rewrite_meta(path, change):
    """Rewrite a checkpoint's metadata with ``change(meta)``, as a checkpoint of an older minilab would hold it."""
    arrays = dict(np.load(path))
    meta = json.loads(str(arrays["meta"]))
    change(meta)
    arrays["meta"] = np.array(json.dumps(meta))
    np.savez(path, **arrays)


def test_resume_keeps_the_checkpoints_normalisation_and_eval_takes_a_partial_data_spec(tmp_path, capsys):
    images, masks = scene_folder(tmp_path)
    folder = ["--data", "folder", "--images", str(images), "--masks", str(masks), "--num-classes", "5"]
    run = ["train", *folder, "--batch-size", "2", "--crop-size", "41", "--policy", "step", "--lr", "1e-5",
           "--checkpoint", str(tmp_path / "f.npz")]
    cli.main([*run, "--iterations", "2"])
    voc = [122.675, 116.669, 104.008]  # the default before every data source was normalised alike

    def older(meta):
        meta["config"].update(mean=voc, input_scale=1.0)
        meta["data_spec"] = {"data": "folder"}
    rewrite_meta(tmp_path / "f.npz", older)
    cli.main([*run, "--iterations", "3", "--resume"])
    config = json.loads(str(np.load(tmp_path / "f.npz")["meta"]))["config"]
    assert config["mean"] == voc and config["input_scale"] == 1.0 and config["iterations"] == 3
    rewrite_meta(tmp_path / "f.npz", lambda meta: meta.update(data_spec={"data": "synthetic"}))
    cli.main(["eval", "--checkpoint", str(tmp_path / "f.npz")])  # size and scenes: the defaults
    assert "before CRF: mIoU" in capsys.readouterr().out


def test_a_fresh_run_over_an_old_checkpoint_takes_todays_normalisation(tmp_path):
    """Only --resume reads the checkpoint's mean and input_scale: a run started afresh over an older
    checkpoint (VOC mean, scale 1) that took them would feed the new model raw 0-255 inputs."""
    images, masks = scene_folder(tmp_path)
    run = ["train", "--data", "folder", "--images", str(images), "--masks", str(masks), "--num-classes", "5",
           "--batch-size", "2", "--crop-size", "41", "--iterations", "2", "--checkpoint", str(tmp_path / "f.npz")]
    cli.main(run)
    rewrite_meta(tmp_path / "f.npz", lambda meta: meta["config"].update(mean=[122.675, 116.669, 104.008],
                                                                         input_scale=1.0))
    cli.main(run)  # no --resume: a new run that overwrites the file
    config = json.loads(str(np.load(tmp_path / "f.npz")["meta"]))["config"]
    assert config["mean"] == [128.0] * 3 and config["input_scale"] == 1 / 64


def test_demo_settings_are_the_documented_ones(tmp_path, monkeypatch):
    """docs/training.md and docs/digits.md quote these (3000 iterations of batch 4 on whole 113×113
    scenes, lr 0.01 under poly, momentum 0.9, the classifier at 10×, a 1/8-width VGG backbone with one
    convolution per stage and ASPP rates 1-4, 32 wide: 140 thousand parameters, 5 classes; the CRF's
    w1 5, σα 10, σβ 10 in the CLI's help): a silently changed one would leave the published scores
    unreproducible and no test failing."""
    from minilab.train import build_model, demo, model_spec
    config = demo.demo_config()
    assert (config.iterations, config.batch_size, config.crop_size, config.base_lr, config.policy) == (
        3000, 4, 113, 0.01, "poly")
    assert (config.power, config.momentum, config.weight_decay, config.classifier_lr_mult) == (0.9, 0.9, 5e-4, 10.0)
    assert config.scale_range is None and config.flip is True and config.seed == 0  # whole scenes, flipped
    assert config.mean == (128.0,) * 3 and config.input_scale == 1 / 64
    assert (demo.DEMO_ITERATIONS, demo.DEMO_SIZE) == (3000, 113)
    assert {k: demo.DEMO_MODEL[k] for k in ("width", "depth", "rates", "hidden")} == dict(  # docs/training.md
        width=0.125, depth=(1, 1, 1, 1, 1), rates=(1, 2, 3, 4), hidden=32)
    assert {k: demo.DEMO_CRF[k] for k in ("w1", "sigma_alpha", "sigma_beta")} == dict(w1=5.0, sigma_alpha=10.0,
                                                                                     sigma_beta=10.0)
    model = build_model(model_spec("deeplab_vgg16", 5, **demo.DEMO_MODEL))
    assert round(sum(p.data.size for p in model.parameters()), -4) == 140_000
    other = demo.demo_config(7, seed=3, crop_size=41)
    assert (other.iterations, other.seed, other.crop_size, other.batch_size) == (7, 3, 41, 4)
    args = cli.build_parser().parse_args(["demo"])
    assert (args.iterations, args.test_images, args.size, args.seed) == (3000, 60, 113, 0)

    class Stop(Exception):
        pass

    def stop(model, train_set, config, num_classes, **kwargs):  # run_demo trains with these settings
        raise Stop(config, num_classes, kwargs["model_spec"])

    monkeypatch.setattr(demo, "Trainer", stop)
    with pytest.raises(Stop) as info:
        demo.run_demo(tmp_path, iterations=5, size=41, seed=2, progress=False, log=lambda *a: None)
    used, num_classes, spec = info.value.args
    assert used == demo.demo_config(5, 2, crop_size=41) and num_classes == 5
    assert spec == model_spec("deeplab_vgg16", 5, seed=2, **demo.DEMO_MODEL)


def test_eval_json_writes_null_for_absent_classes():
    assert json_ready({"miou": 0.5, "class_iou": [1.0, float("nan")]}) == {"miou": 0.5, "class_iou": [1.0, None]}


def test_scenes_counts_held_out_scenes_only():
    args = cli.build_parser().parse_args(["train", "--scenes", "2", "--size", "33", "--checkpoint", "c.npz"])
    assert len(cli._dataset(args, "train")) == 10**6 and len(cli._dataset(args, "val")) == 2


def test_options_are_checked_by_name(tmp_path, capsys):
    images, masks = scene_folder(tmp_path)
    folder = ["--data", "folder", "--images", str(images), "--masks", str(masks), "--num-classes", "5"]
    ck = ["--checkpoint", str(tmp_path / "c.npz")]
    assert "--val-every needs held-out data" in run_error(capsys, ["train", *folder, *ck, "--val-every", "2"])
    for option in ("--size", "--scenes", "--crop-size", "--threads"):
        err = run_error(capsys, ["train", *ck, "--val-every", "1", option, "0"])
        assert f"minilab train: error: {option} must be >= 1, got 0" in err
    for mask in masks.iterdir():  # 0/255 masks of a two-class problem: 255 is 'unlabelled'
        Image.fromarray(np.where(np.asarray(Image.open(mask)) > 0, 255, 0).astype(np.uint8)).save(mask)
    err = run_error(capsys, ["train", *folder, "--num-classes", "2", *ck])
    assert "no mask in" in err and "holds a class other than 0" in err
    assert not (tmp_path / "c.npz").exists()


def test_train_checks_the_checkpoint_path_before_training(tmp_path, capsys, monkeypatch):
    from minilab.train import Trainer
    monkeypatch.setattr(Trainer, "fit", lambda self: pytest.fail("trained with a checkpoint it cannot write"))
    (tmp_path / "file").write_text("")
    err = run_error(capsys, ["train", "--size", "33", "--checkpoint", str(tmp_path)])
    assert err == f"minilab train: error: --checkpoint must be a file to write, got the folder {tmp_path}\n"
    err = run_error(capsys, ["train", "--size", "33", "--checkpoint", str(tmp_path / "file" / "c.npz")])
    assert err.startswith(f"minilab train: error: --checkpoint {tmp_path / 'file' / 'c.npz'} cannot be written: ")


def test_ctrl_c_says_where_the_checkpoint_is(tmp_path, capsys, monkeypatch):
    from minilab.train import Trainer
    step = Trainer.train_step

    def interrupted_at_3(self):
        if self.iteration == 3:
            raise KeyboardInterrupt
        return step(self)

    monkeypatch.setattr(Trainer, "train_step", interrupted_at_3)
    with pytest.raises(SystemExit) as info:
        cli.main(["train", "--size", "33", "--batch-size", "1", "--iterations", "5", "--checkpoint-every", "2",
                  "--checkpoint", str(tmp_path / "c.npz")])
    assert info.value.code == 130
    last = capsys.readouterr().err.splitlines()[-1]  # after the progress bar
    assert last == f"minilab train: interrupted: at iteration 3; {tmp_path / 'c.npz'} holds iteration 2; continue with --resume"


def test_demo_checks_its_options_before_training(tmp_path, capsys):
    out = tmp_path / "out"
    for option, value in (("--test-images", "0"), ("--size", "-3"), ("--iterations", "0"), ("--threads", "0")):
        err = run_error(capsys, ["demo", "--out", str(out), option, value])
        assert err.startswith(f"minilab demo: error: {option} must be >= ")
    assert not (out / "model.npz").exists()


def test_cli_errors_are_messages(tmp_path):
    with pytest.raises(SystemExit) as e:
        cli.main(["segment", str(tmp_path / "none.png"), "--checkpoint", str(tmp_path / "none.npz"), "-o", "x.png"])
    assert e.value.code == 2
    with pytest.raises(SystemExit):
        cli.main(["train", "--data", "voc", "--checkpoint", str(tmp_path / "c.npz")])


def test_viz_pictures(tmp_path):
    labels = np.array([[0, 1], [15, 255]])
    colours = viz.colorize(labels)
    assert colours.shape == (2, 2, 3) and colours[0, 1].tolist() == [128, 0, 0]
    assert colours[1, 1].tolist() == [224, 224, 192]
    image = np.full((2, 2, 3), 100, np.uint8)
    blended = viz.overlay(image, labels, alpha=0.5)
    assert blended[0, 0].tolist() == [100, 100, 100] and blended[0, 1].tolist() == [114, 50, 50]
    with pytest.raises(ValueError, match="labels"):
        viz.colorize(np.zeros((2, 2, 2), int))
    ex = {"image": np.zeros((8, 8, 3), np.uint8), "labels": np.zeros((8, 8), np.uint8),
          "pred": np.ones((8, 8), np.uint8), "pred_crf": np.zeros((8, 8), np.uint8)}
    fig = viz.comparison_grid([ex, ex], tmp_path / "grid.png")
    assert len(fig.axes) == 8 and (tmp_path / "grid.png").exists()
    history = {"iteration": [1, 2, 3], "loss": [1.0, 0.5, 0.2], "lr": [0.1, 0.05, 0.0],
               "val": [{"iteration": 3, "miou": 0.5, "miou_crf": 0.6}]}
    viz.training_curves({"poly": history, "step": history}, tmp_path / "curves.png")
    assert (tmp_path / "curves.png").exists()
    assert len(viz.training_curves(dict(history, val=[])).axes) == 2  # no empty validation panel
    with pytest.raises(TypeError, match="image must be uint8"):
        viz.overlay(image / 255.0, labels)
    with pytest.raises(ValueError, match="alpha must be in"):
        viz.overlay(image, labels, alpha=1.5)
    with pytest.raises(ValueError, match="all have pred_crf, or none"):
        viz.comparison_grid([ex, {k: v for k, v in ex.items() if k != "pred_crf"}])
    with pytest.raises(ValueError, match="at least one training step"):
        viz.training_curves({"iteration": [], "loss": [], "lr": [], "val": []})


def test_overlay_leaves_void_and_background_and_rounds_the_blend():
    image = np.full((1, 3, 3), 101, np.uint8)
    blended = viz.overlay(image, np.array([[0, 255, 1]]), alpha=0.5)
    assert blended[0, 0].tolist() == [101] * 3 and blended[0, 1].tolist() == [101] * 3
    assert blended[0, 2].tolist() == [115, 51, 51]  # 0.5·101 + 0.5·(128, 0, 0), rounded half up


def test_demo_report_takes_each_after_crf_number_from_the_crf_scores(tmp_path, monkeypatch):
    """At test sizes the CRF changes nothing, so before == after hides a swapped key: give the
    CRF scores values of their own."""
    from minilab.train import demo
    real = demo.evaluate

    def distinct(*args, **kwargs):
        r = real(*args, **kwargs)
        r.update(miou_crf=0.31, pixel_accuracy_crf=0.32, trimap_accuracy_crf=0.33,
                 class_iou_crf=[0.1, 0.2, 0.3, 0.4, float("nan")])  # NaN: a class absent from data and predictions
        return r

    monkeypatch.setattr(demo, "evaluate", distinct)
    with limit_threads(1):
        report = demo.run_demo(tmp_path, iterations=2, val_images=1, size=41, progress=False, log=lambda *a: None)
    assert (report["miou_after_crf"], report["pixel_accuracy_after_crf"], report["trimap3_accuracy_after_crf"]) == (
        0.31, 0.32, 0.33)
    assert list(report["class_iou_after_crf"].values())[:4] == [0.1, 0.2, 0.3, 0.4]
    assert report["pixel_accuracy_before_crf"] != 0.32
    saved = json.loads((tmp_path / "report.json").read_text(), parse_constant=pytest.fail)  # strict JSON: no NaN
    assert list(saved["class_iou_after_crf"].values()) == [0.1, 0.2, 0.3, 0.4, None]


def test_viz_figures_hold_what_they_promise():
    ex = {"image": np.zeros((8, 8, 3), np.uint8), "labels": np.zeros((8, 8), np.uint8),
          "pred": np.ones((8, 8), np.uint8), "pred_crf": np.zeros((8, 8), np.uint8)}
    fig = viz.comparison_grid([ex, ex])
    assert [ax.get_title() for ax in fig.axes] == ["image", "ground truth", "before CRF", "after CRF"] + [""] * 4
    loss = np.linspace(2.0, 0.1, 40)
    history = {"iteration": list(range(1, 41)), "loss": loss.tolist(), "lr": [0.1] * 40,
               "val": [{"iteration": 20, "miou": 0.5, "miou_crf": 0.6, "seconds": 60.0},
                       {"iteration": 40, "miou": 0.7, "miou_crf": 0.8, "seconds": 120.0}]}
    ax_loss, ax_lr, ax_val = viz.training_curves(history).axes[:3]
    raw, smooth = ax_loss.get_lines()
    np.testing.assert_allclose(smooth.get_ydata(), np.convolve(loss, np.ones(2) / 2, mode="valid"))  # k = 40 // 20
    assert [line.get_label() for line in ax_val.get_lines()] == ["before CRF", "after CRF"]
    assert [a.get_xlabel() for a in ax_val.child_axes] == ["minutes of training"]
    both = viz.training_curves({"poly": history, "step": history})
    assert [t.get_text() for t in both.axes[1].get_legend().get_texts()] == ["poly", "step"]

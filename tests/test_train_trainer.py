"""The trainer: it can overfit one batch, resumes bit for bit, and stops on a non-finite loss."""
import json
import types
from pathlib import Path

import numpy as np
import pytest

from minilab import backend, nn
from minilab.data import SyntheticScenes
from minilab.data.transforms import to_input
from minilab.ops.activations import softmax_forward
from minilab.ops.interp import downsample_labels
from minilab.ops.loss import softmax_cross_entropy_backward, softmax_cross_entropy_forward
from minilab.train import (SGD, Trainer, TrainConfig, TrainingDiverged, limit_threads, load_checkpoint, load_model,
                           model_spec, param_groups, poly_lr, predict_probs)
from minilab.train.checkpoint import build_model


@pytest.fixture(autouse=True)
def one_thread():
    """Small models: one thread is fastest, and immune to a busy machine."""
    with limit_threads(1):
        yield


def tiny(seed=0, dropout=0.0):
    return nn.deeplab_vgg16(5, width=0.125, depth=(1,) * 5, rates=(1, 2), hidden=8, dropout=dropout, seed=seed)


def config(**kw):
    return TrainConfig(**{**dict(iterations=6, batch_size=2, crop_size=33, base_lr=0.01, scale_range=(0.5, 1.5),
                                 mean=(128, 128, 128), input_scale=1 / 64, seed=3), **kw})


def test_overfits_one_batch():
    """A tiny DeepLab drives the loss on one fixed batch near zero: forward, backward and update agree."""
    model = tiny()
    data = SyntheticScenes(2, 33, seed=5)
    images, labels = zip(*(data[i] for i in range(2)))
    x = ((np.stack(images).astype(np.float32) - 128) / 64).transpose(0, 3, 1, 2).copy()
    opt = SGD(param_groups(model), momentum=0.9, weight_decay=0.0)
    losses = []
    for _ in range(150):
        opt.zero_grad()
        logits = model.forward(x)
        loss, cache = softmax_cross_entropy_forward(logits, downsample_labels(np.stack(labels), size=logits.shape[2:]))
        losses.append(float(loss))
        model.backward(softmax_cross_entropy_backward(1.0, cache))
        opt.step(0.02)
    assert losses[0] > 1.0
    assert losses[-1] < 0.05, losses[-10:]


def test_frozen_batch_norm_stays_unchanged():
    """frozen_bn=True: training moves the convolutions but not one bit of the batch norms' weights."""
    model = nn.deeplab("tiny-resnet-aspp", num_classes=5, frozen_bn=True, dropout=0.0)
    bn = {n: p.data.copy() for n, p in model.named_parameters() if not p.trainable}
    assert bn and all(".bn" in n or "downsample.1" in n for n in bn)
    conv1 = model.backbone.conv1.weight.data.copy()
    Trainer(model, SyntheticScenes(10, 40), config(iterations=2, weight_decay=0.1), 5, progress=False).fit()
    params = dict(model.named_parameters())
    for n, before in bn.items():
        assert np.array_equal(params[n].data, before), n
    assert not np.array_equal(model.backbone.conv1.weight.data, conv1)


def test_resume_equals_uninterrupted_bitwise(tmp_path):
    data = SyntheticScenes(50, 40, seed=1)
    straight = Trainer(tiny(dropout=0.3), data, config(), 5, progress=False)
    straight.fit()
    first = Trainer(tiny(dropout=0.3), data, config(), 5, checkpoint=tmp_path / "c.npz", progress=False)
    first.fit(until=3)
    assert load_checkpoint(tmp_path / "c.npz")[2]["iteration"] == 3
    second = Trainer(tiny(seed=99, dropout=0.3), data, config(), 5, checkpoint=tmp_path / "c.npz", progress=False)
    second.load(tmp_path / "c.npz")
    second.fit()
    a, b = straight.model.state_dict(), second.model.state_dict()
    assert a.keys() == b.keys()
    for k in a:
        assert np.array_equal(a[k], b[k]), k
    assert straight.history["loss"] == second.history["loss"]
    for va, vb in zip(straight.optimizer.velocity, second.optimizer.velocity):
        assert np.array_equal(va, vb)


def test_resume_refuses_other_settings(tmp_path):
    data = SyntheticScenes(10, 40)
    t = Trainer(tiny(), data, config(iterations=1), 5, checkpoint=tmp_path / "c.npz", progress=False)
    t.fit()
    other = Trainer(tiny(), data, config(base_lr=0.5), 5, progress=False)
    with pytest.raises(ValueError, match="base_lr"):
        other.load(tmp_path / "c.npz")


def test_resume_refuses_another_model(tmp_path):
    data = SyntheticScenes(10, 40)
    spec = model_spec("deeplab_vgg16", 5, width=0.125, depth=(1,) * 5, rates=(1, 2), hidden=8, dropout=0.0)
    Trainer(build_model(spec), data, config(iterations=1), 5, checkpoint=tmp_path / "c.npz", model_spec=spec,
            progress=False).fit()
    other = dict(spec, kwargs={**spec["kwargs"], "rates": [1, 2, 3]})
    with pytest.raises(ValueError, match=r"holds another model: .*rates=\[1, 2\],.*\(now .*rates=\[1, 2, 3\]"):
        Trainer(build_model(other), data, config(iterations=1), 5, model_spec=other, progress=False).load(
            tmp_path / "c.npz")
    # without a model_spec the parameter names tell: a one-line ValueError, not a KeyError
    bigger = nn.deeplab_vgg16(5, width=0.125, depth=(1,) * 5, rates=(1, 2, 3), hidden=8, dropout=0.0)
    with pytest.raises(ValueError, match="holds another model"):
        Trainer(bigger, data, config(iterations=1), 5, progress=False).load(tmp_path / "c.npz")
    # the initialisation seed does not matter: loading replaces the weights
    reseeded = dict(spec, kwargs={**spec["kwargs"], "seed": 7})
    Trainer(build_model(reseeded), data, config(iterations=1), 5, model_spec=reseeded, progress=False).load(
        tmp_path / "c.npz")


def test_resume_with_more_iterations_only_under_the_step_policy(tmp_path):
    """Under poly, iterations is T: another value would change every learning rate still to come.
    Under step it does not enter the schedule: extending gives the longer uninterrupted run."""
    data = SyntheticScenes(20, 40, seed=1)
    Trainer(tiny(), data, config(iterations=3), 5, checkpoint=tmp_path / "p.npz", progress=False).fit()
    with pytest.raises(ValueError, match="iterations=3 \\(now 6\\).*poly policy"):
        Trainer(tiny(), data, config(iterations=6), 5, progress=False).load(tmp_path / "p.npz")
    step = dict(policy="step", step_size=2)
    straight = Trainer(tiny(), data, config(iterations=6, **step), 5, progress=False)
    straight.fit()
    Trainer(tiny(), data, config(iterations=3, **step), 5, checkpoint=tmp_path / "s.npz", progress=False).fit()
    extended = Trainer(tiny(), data, config(iterations=6, **step), 5, progress=False)
    extended.load(tmp_path / "s.npz")
    extended.fit()
    assert extended.history["loss"] == straight.history["loss"]
    a, b = straight.model.state_dict(), extended.model.state_dict()
    assert all(np.array_equal(a[k], b[k]) for k in a)


def test_non_finite_loss_stops_and_keeps_last_checkpoint(tmp_path):
    path = tmp_path / "c.npz"
    t = Trainer(tiny(), SyntheticScenes(10, 40), config(iterations=10, checkpoint_every=2), 5,
                checkpoint=path, progress=False)
    t.fit(until=2)
    good = path.read_bytes()
    t.model.backbone.features.layers[0].weight.data[0, 0, 0, 0] = np.nan  # as a bad update would leave it
    with pytest.raises(TrainingDiverged, match=r"loss became (nan|inf) at iteration 2") as info, \
            np.errstate(invalid="ignore"):  # NumPy's own warning on the NaN is expected here
        t.fit()
    assert f"last good checkpoint is {path}" in str(info.value)
    assert path.read_bytes() == good
    assert load_checkpoint(path)[2]["iteration"] == 2


def test_divergence_names_only_a_checkpoint_this_run_wrote(tmp_path):
    path = tmp_path / "c.npz"
    Trainer(tiny(), SyntheticScenes(10, 40), config(iterations=1), 5, checkpoint=path, progress=False).fit()
    t = Trainer(tiny(), SyntheticScenes(10, 40), config(), 5, checkpoint=path, progress=False)  # a new run
    t.model.backbone.features.layers[0].weight.data[0, 0, 0, 0] = np.nan
    with pytest.raises(TrainingDiverged, match="this run wrote no checkpoint yet"), np.errstate(invalid="ignore"):
        t.fit()


def test_divergence_in_validation_is_reported_as_such():
    """Finite weights can still overflow the activations: validation says so as training would."""
    t = Trainer(tiny(), SyntheticScenes(10, 40), config(), 5, val_set=SyntheticScenes(1, 33), progress=False)
    for p in t.model.parameters():
        p.data[...] = 1e12
    with pytest.raises(TrainingDiverged, match="validation scores became non-finite at iteration 0"), \
            np.errstate(over="ignore", invalid="ignore"):
        t.validate()


def test_checkpoint_round_trip_and_model_rebuild(tmp_path):
    spec = model_spec("deeplab_vgg16", 5, width=0.125, depth=(1,) * 5, rates=(1, 2), hidden=8, dropout=0.0)
    model = build_model(spec)
    t = Trainer(model, SyntheticScenes(10, 40), config(iterations=2), 5, checkpoint=tmp_path / "m.npz",
                model_spec=spec, progress=False)
    t.fit()
    loaded, meta = load_model(tmp_path / "m.npz")
    assert meta["iteration"] == 2 and meta["config"]["base_lr"] == 0.01
    x = np.random.default_rng(0).standard_normal((1, 3, 33, 33)).astype(np.float32)
    assert np.array_equal(loaded.forward(x), model.eval().forward(x))
    assert not list(tmp_path.glob("*.tmp"))  # the atomic write left nothing behind
    (tmp_path / "bad.npz").write_bytes(b"not a zip")
    with pytest.raises(Exception):
        load_checkpoint(tmp_path / "bad.npz")
    np.savez(tmp_path / "plain.npz", a=np.zeros(2))
    with pytest.raises(ValueError, match="not a minilab checkpoint"):
        load_checkpoint(tmp_path / "plain.npz")
    with pytest.raises(FileNotFoundError):
        load_checkpoint(tmp_path / "missing.npz")
    json.dumps(meta)  # the metadata stays plain JSON


@pytest.mark.parametrize("meta, match", [
    ('{"format": "minilab-checkpoint"', "'meta' entry is not JSON"),
    ('["minilab-checkpoint"]', "'meta' entry is not a JSON object, got a list"),
    ('{"format": "minilab-checkpoint", "version": 1}', "no 'config' object"),
])
def test_a_damaged_meta_is_named_with_its_file(tmp_path, meta, match):
    """A meta that was no JSON object, or had no config, raised a raw JSONDecodeError (naming no
    file), AttributeError or KeyError."""
    np.savez(tmp_path / "c.npz", meta=np.array(meta))
    with pytest.raises(ValueError, match=f"checkpoint .*c.npz is damaged: .*{match}"):
        load_checkpoint(tmp_path / "c.npz")


def test_load_model_needs_the_settings_it_promises(tmp_path):
    spec = model_spec("deeplab_vgg16", 5, width=0.125, depth=(1,) * 5, rates=(1, 2), hidden=8, dropout=0.0)
    config = {"mean": [0, 0, 0], "input_scale": 1.0}
    for meta, match in (({"model_spec": spec, "config": {"mean": [0, 0, 0]}}, "c.npz is damaged: .*input_scale"),
                        ({"model_spec": {"builder": "deeplab_vgg16"}, "config": config}, "num_classes"),
                        ({"model_spec": spec, "config": config}, "c.npz does not hold its model's weights")):
        np.savez(tmp_path / "c.npz", meta=np.array(json.dumps({"format": "minilab-checkpoint", **meta})))
        with pytest.raises(ValueError, match=match):
            load_model(tmp_path / "c.npz")


def test_inference_takes_uint8_images_only():
    """A float image in 0..1 or a 16-bit one passed as a wrong but plausible input."""
    from minilab.train import evaluate, predict_probs
    model, image = tiny(), np.zeros((9, 9, 3), np.uint8)
    assert predict_probs(model, image).shape == (5, 9, 9)
    for wrong in (image / 255.0, image.astype(np.uint16)):
        with pytest.raises(TypeError, match="image must be uint8"):
            predict_probs(model, wrong)
        with pytest.raises(TypeError, match=r"dataset\[0\]'s image must be uint8"):
            evaluate(model, [(wrong, np.zeros((9, 9), np.uint8))], 5)
    with pytest.raises(ValueError, match="image must be H×W×3"):
        predict_probs(model, image[None])


def test_evaluate_names_an_empty_dataset_and_a_float_class_count():
    """An empty data set was reported as "conf counts no pixel", num_classes=5.0 in NumPy's words."""
    from minilab.train import evaluate
    with pytest.raises(ValueError, match="dataset is empty"):
        evaluate(tiny(), [], 5)
    with pytest.raises(TypeError, match="num_classes must be an integer"):
        evaluate(tiny(), [(np.zeros((9, 9, 3), np.uint8), np.zeros((9, 9), np.uint8))], 5.0)


def test_numpy_numbers_are_checkpointed_as_python_numbers(tmp_path):
    """Settings from a NumPy sweep (np.int64, np.float32) train and checkpoint like Python numbers."""
    cfg = config(iterations=np.int64(2), batch_size=np.arange(3)[2], base_lr=np.float32(0.01),
                 momentum=np.float32(0.5), weight_decay=np.float32(1e-4), flip=np.bool_(True))
    assert type(cfg.iterations) is int and type(cfg.base_lr) is float and cfg.flip is True
    assert type(cfg.momentum) is float and type(cfg.weight_decay) is float
    spec = model_spec("deeplab_vgg16", np.int64(5), width=np.float32(0.125), depth=tuple(np.ones(5, int)),
                      rates=(np.int64(1), 2), hidden=8, dropout=0.0, seed=np.int64(4))
    Trainer(build_model(spec), SyntheticScenes(10, 40), cfg, 5, checkpoint=tmp_path / "c.npz", model_spec=spec,
            data_spec={"data": "synthetic", "size": np.int64(40)}, progress=False).fit()
    meta = load_checkpoint(tmp_path / "c.npz")[2]
    assert meta["config"]["iterations"] == 2 and meta["model_spec"]["kwargs"]["depth"] == [1] * 5
    assert meta["data_spec"]["size"] == 40 and meta["model_spec"]["kwargs"]["seed"] == 4
    assert load_model(tmp_path / "c.npz")[0].head.rates == (1, 2)


def test_specs_json_cannot_hold_are_refused_before_training(tmp_path):
    with pytest.raises(TypeError, match="dtype must be a number, a string.*got <class 'numpy.float32'>"):
        model_spec("deeplab_vgg16", 5, dtype=np.float32)
    with pytest.raises(TypeError, match=r"data_spec\['root'\] must be a number, a string"):
        Trainer(tiny(), SyntheticScenes(4, 33), config(), 5, checkpoint=tmp_path / "c.npz",
                data_spec={"root": tmp_path}, progress=False)
    assert not (tmp_path / "c.npz").exists()


def test_checkpoint_path_is_checked_before_training(tmp_path):
    (tmp_path / "file").write_text("")
    with pytest.raises(ValueError, match="checkpoint must be a file to write, got the folder"):
        Trainer(tiny(), SyntheticScenes(4, 33), config(), 5, checkpoint=tmp_path, progress=False)
    with pytest.raises(ValueError, match=r"checkpoint \S*file/c.npz cannot be written"):
        Trainer(tiny(), SyntheticScenes(4, 33), config(), 5, checkpoint=tmp_path / "file" / "c.npz", progress=False)
    Trainer(tiny(), SyntheticScenes(4, 33), config(), 5, checkpoint=tmp_path / "new" / "c.npz", progress=False)
    assert (tmp_path / "new").is_dir()  # created, as the first save would


def test_config_checks():
    with pytest.raises(ValueError, match="policy"):
        TrainConfig(policy="exp")
    with pytest.raises(ValueError, match="base_lr"):
        TrainConfig(base_lr=0)
    with pytest.raises(ValueError, match="batch_size"):
        TrainConfig(batch_size=0)
    for bad in ((0.5,), (1.5, 0.5), (-0.5, 1.5)):
        with pytest.raises(ValueError, match="scale_range"):
            TrainConfig(scale_range=bad)
    with pytest.raises(ValueError, match="mean must hold one value per colour channel"):
        TrainConfig(mean=(128, 128))
    with pytest.raises(ValueError, match="mean must be <= 255"):  # the crops' padding colour, a uint8
        TrainConfig(mean=(300, 128, 128))
    for name in ("input_scale", "gamma"):
        with pytest.raises(ValueError, match=name):
            TrainConfig(**{name: 0})
    with pytest.raises(ValueError, match="gamma must be <= 1"):  # a step decay, not growth
        TrainConfig(gamma=10.0)
    for name in ("power", "classifier_lr_mult"):
        TrainConfig(**{name: 0})  # a constant poly rate, a frozen classifier
        with pytest.raises(ValueError, match=name):
            TrainConfig(**{name: -1})


def test_trainer_checks_the_data_against_the_model():
    scenes = SyntheticScenes(length=4, size=33)
    with pytest.raises(ValueError, match="train_set is empty"):
        Trainer(tiny(), SyntheticScenes(length=0, size=33), config(), 5, progress=False)
    with pytest.raises(ValueError, match="the model scores 5 classes but num_classes is 7"):
        Trainer(tiny(), scenes, config(), 7, progress=False).fit()


@pytest.mark.gpu
def test_trainer_on_the_gpu_follows_the_cpu(tmp_path):
    """device="gpu": the same seeded run as on the CPU (to float32 rounding), weights on the
    GPU, validation and a checkpoint that loads on a machine without one."""
    data, val = SyntheticScenes(20, 40, seed=1), SyntheticScenes(2, 41, seed=9)
    cpu = Trainer(tiny(), data, config(val_every=3), 5, val_set=val, progress=False)
    gpu = Trainer(tiny(), data, config(val_every=3, device="gpu"), 5, val_set=val, checkpoint=tmp_path / "g.npz",
                  progress=False)
    cpu.fit()
    gpu.fit()
    assert all(backend.is_gpu_array(p.data) for p in gpu.model.parameters())
    np.testing.assert_allclose(gpu.history["loss"], cpu.history["loss"], rtol=1e-3)
    np.testing.assert_allclose([v["miou"] for v in gpu.history["val"]], [v["miou"] for v in cpu.history["val"]],
                               atol=0.02)
    model_state, _, meta = load_checkpoint(tmp_path / "g.npz")
    assert meta["iteration"] == 6 and all(isinstance(v, np.ndarray) for v in model_state.values())
    for name, value in cpu.model.state_dict().items():
        np.testing.assert_allclose(model_state[name], value, rtol=1e-3, atol=1e-5, err_msg=name)


def test_the_learning_rate_of_step_t_is_the_policy_at_t():
    """The first step runs at base_lr: an off-by-one in the schedule passed every other test."""
    cfg = TrainConfig(iterations=4, batch_size=1, crop_size=33, base_lr=0.01, scale_range=None, seed=3)
    trainer = Trainer(tiny(), SyntheticScenes(4, 33, seed=1), cfg, 5, progress=False)
    trainer.fit()
    assert trainer.history["lr"] == [poly_lr(0.01, i, 4) for i in range(4)]


def test_predict_probs_is_the_softmax_of_the_corner_aligned_upsampling():
    """predict_probs must upsample as model.predict does (align_corners=True, as DeepLab's
    Caffe Interp layer): the other convention shifts every reported score by half a pixel."""
    model = tiny().eval()
    image = np.random.default_rng(0).integers(0, 256, (33, 33, 3), dtype=np.uint8)
    expected, _ = softmax_forward(model.predict(to_input(image)))
    np.testing.assert_allclose(predict_probs(model, image), expected[0], rtol=1e-5, atol=1e-6)


def test_train_step_trains_a_model_handed_over_in_eval_mode():
    """A model arriving in eval mode (load_model returns one) is trained in training mode:
    batch statistics, dropout; otherwise batch norm would keep its running statistics."""
    model = nn.deeplab("tiny-resnet-aspp", num_classes=5, dropout=0.0).eval()
    stats = {k: v.copy() for k, v in model.state_dict().items() if k.endswith("running_mean")}
    assert stats
    Trainer(model, SyntheticScenes(4, 40), config(iterations=1), 5, progress=False).fit()
    assert all(m.training for m in model.modules())
    after = model.state_dict()
    assert any(not np.array_equal(after[k], v) for k, v in stats.items())


def test_batches_draw_every_image_even_from_a_one_image_set(monkeypatch):
    from minilab.train import trainer
    t = Trainer(tiny(), SyntheticScenes(1, 40), config(scale_range=None, flip=False), 5, progress=False)
    x, labels = t.next_batch()  # two random 33×33 crops of the one 40×40 scene
    assert x.shape == (2, 3, 33, 33) and labels.shape == (2, 33, 33)
    drawn = []
    monkeypatch.setattr(trainer, "make_batch", lambda dataset, idx, *args: drawn.extend(idx.tolist()) or (x, labels))
    Trainer(tiny(), SyntheticScenes(3, 40), config(batch_size=60), 5, progress=False).next_batch()
    assert set(drawn) == {0, 1, 2}


def test_fit_stops_at_the_configured_iterations_whatever_until_says():
    t = Trainer(tiny(), SyntheticScenes(4, 40), config(iterations=2), 5, progress=False)
    t.fit(until=5)
    assert t.iteration == 2 and t.history["iteration"] == [1, 2]


def test_resume_restores_the_training_time_and_names_the_checkpoint_it_resumed_from(tmp_path):
    path = tmp_path / "c.npz"
    first = Trainer(tiny(), SyntheticScenes(10, 40), config(iterations=4), 5, checkpoint=path, progress=False)
    first.fit(until=2)
    again = Trainer(tiny(), SyntheticScenes(10, 40), config(iterations=4), 5, checkpoint=path, progress=False)
    again.load(path)
    assert again.train_seconds == load_checkpoint(path)[2]["train_seconds"] == first.train_seconds > 0
    assert again.saved_iteration == 2
    again.model.backbone.features.layers[0].weight.data[0, 0, 0, 0] = np.nan
    with pytest.raises(TrainingDiverged, match=f"last good checkpoint is {path} \\(iteration 2\\)"), \
            np.errstate(invalid="ignore"):
        again.fit()


def test_load_model_returns_the_model_in_eval_mode(tmp_path):
    spec = model_spec("deeplab_vgg16", 5, width=0.125, depth=(1,) * 5, rates=(1, 2), hidden=8, dropout=0.5)
    Trainer(build_model(spec), SyntheticScenes(4, 40), config(iterations=1), 5, checkpoint=tmp_path / "m.npz",
            model_spec=spec, progress=False).fit()
    model, _ = load_model(tmp_path / "m.npz")
    assert not any(m.training for m in model.modules())
    x = np.random.default_rng(0).standard_normal((1, 3, 33, 33)).astype(np.float32)
    assert np.array_equal(model.forward(x), model.forward(x))  # no dropout: segment is deterministic


def test_trainer_gives_the_classifier_its_configured_multiplier():
    t = Trainer(tiny(), SyntheticScenes(4, 40), config(classifier_lr_mult=3.0), 5, progress=False)
    assert [g["lr_mult"] for g in t.optimizer.groups] == [1.0, 3.0]


def test_training_time_adds_up_the_steps_and_is_recorded_with_each_validation(monkeypatch):
    """train_seconds sums the time of every train_step (validation excluded) and each history
    entry of validation records the training time so far."""
    from minilab.train import trainer
    ticks = iter(range(1000))
    monkeypatch.setattr(trainer, "time", types.SimpleNamespace(perf_counter=lambda: float(next(ticks))))
    t = Trainer(tiny(), SyntheticScenes(4, 40), config(iterations=4, val_every=2), 5,
                val_set=SyntheticScenes(1, 33), progress=False)
    t.fit()
    assert t.train_seconds == 4.0  # one tick per step
    assert [v["seconds"] for v in t.history["val"]] == [2.0, 4.0]


def test_an_update_that_makes_the_weights_non_finite_stops_training(tmp_path):
    """A finite loss whose update overflows a weight stops training at once, even on the last
    iteration, and writes no checkpoint of the broken weights."""
    path = tmp_path / "c.npz"
    t = Trainer(tiny(), SyntheticScenes(4, 40), config(iterations=1, base_lr=1e38), 5, checkpoint=path,
                progress=False)
    with pytest.raises(TrainingDiverged, match="an update made the weights non-finite at iteration 0"), \
            np.errstate(over="ignore", invalid="ignore"):
        t.fit()
    assert not path.exists()


def test_an_infinite_loss_stops_training_too(monkeypatch):
    """The check is on finiteness, not NaN alone: an infinite loss stops training before any update."""
    from minilab.train import trainer
    forward = trainer.softmax_cross_entropy_forward

    def infinite(logits, labels, ignore_index=255):
        loss, cache = forward(logits, labels, ignore_index)
        return np.float32(np.inf), cache

    monkeypatch.setattr(trainer, "softmax_cross_entropy_forward", infinite)
    t = Trainer(tiny(), SyntheticScenes(4, 40), config(), 5, progress=False)
    before = {k: v.copy() for k, v in t.model.state_dict().items()}
    with pytest.raises(TrainingDiverged, match="loss became inf at iteration 0"):
        t.fit()
    assert all(np.array_equal(before[k], v) for k, v in t.model.state_dict().items())


def test_a_save_elsewhere_is_not_the_last_good_checkpoint(tmp_path):
    """Only writing the trainer's own checkpoint makes it the one a divergence names."""
    t = Trainer(tiny(), SyntheticScenes(10, 40), config(), 5, checkpoint=tmp_path / "c.npz", progress=False)
    t.save(tmp_path / "copy.npz")
    t.model.backbone.features.layers[0].weight.data[0, 0, 0, 0] = np.nan
    with pytest.raises(TrainingDiverged, match="this run wrote no checkpoint yet"), np.errstate(invalid="ignore"):
        t.fit()


def test_specs_with_keys_json_would_change_are_refused():
    """JSON turns the key 1 into "1": a spec that would not read back as written is refused."""
    with pytest.raises(TypeError, match="must have str keys"):
        model_spec("deeplab_vgg16", 5, extra={1: "a"})


@pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="needs Linux's /proc (a folder no one can write to)")
def test_a_folder_that_takes_no_files_is_refused_before_training():
    """Even for root, who passes permission checks: the folder must actually take a new file."""
    with pytest.raises(ValueError, match=r"checkpoint /proc/c.npz cannot be written"):
        Trainer(tiny(), SyntheticScenes(4, 33), config(), 5, checkpoint="/proc/c.npz", progress=False)


def test_a_failed_checkpoint_write_leaves_no_temporary_file(tmp_path, monkeypatch):
    from minilab.train import checkpoint

    def broken(f, **arrays):
        f.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(checkpoint.np, "savez", broken)
    t = Trainer(tiny(), SyntheticScenes(4, 33), config(iterations=1), 5, checkpoint=tmp_path / "c.npz",
                progress=False)
    with pytest.raises(OSError, match="disk full"):
        t.fit()
    assert list(tmp_path.iterdir()) == []


def test_val_every_without_a_validation_set_just_trains():
    t = Trainer(tiny(), SyntheticScenes(4, 40), config(iterations=2, val_every=1), 5, progress=False)
    assert t.fit()["val"] == [] and t.iteration == 2

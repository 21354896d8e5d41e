"""The paper's experiment at a small size: the CRF must raise mean IoU and the accuracy near boundaries."""
import json

import numpy as np
import pytest

from minilab import metrics
from minilab.crf import experiment


def test_coarse_probs_look_like_a_stride_8_network(rng):
    labels = np.zeros((40, 50), np.int64)
    labels[10:30, 12:40] = 15
    labels[0, 0] = 255
    probs = experiment.coarse_probs(labels, rng=rng, noise=0.0)
    assert probs.shape == (21, 40, 50) and probs.dtype == np.float32
    np.testing.assert_allclose(probs.sum(axis=0), 1, atol=1e-5)
    pred = probs.argmax(axis=0)
    assert set(np.unique(pred)) == {0, 15}
    block = metrics.trimap_band(labels, 8)
    assert (pred == labels)[~block & (labels != 255)].all()  # right farther than a block from the outline
    near = metrics.trimap_band(labels, 2)
    assert 0.2 < probs[15][near].mean() < 0.8  # uncertain along it
    with pytest.raises(ValueError, match="labels"):
        experiment.coarse_probs(labels[None])
    with pytest.raises(TypeError, match="labels must be a NumPy or CuPy array"):
        experiment.coarse_probs(labels.tolist())
    with pytest.raises(TypeError, match="labels must have an integer dtype"):
        experiment.coarse_probs(labels.astype(np.float32))
    with pytest.raises(ValueError, match="blur must be >= 0"):
        experiment.coarse_probs(labels, blur=-1.0)
    with pytest.raises(ValueError, match="noise must be >= 0"):
        experiment.coarse_probs(labels, noise=-1.0)


def test_crf_gain_is_positive():
    samples = experiment.load_voc_sample(scale=0.25)[:2]
    assert samples[0][1].shape == (92, 125, 3)
    result = experiment.run(samples, scale=0.25, widths=(1, 2, 4), seed=0)
    before, after = result["before"], result["after"]
    assert after["miou"] > before["miou"] + 0.01
    assert after["accuracy"] > before["accuracy"]
    for b, a in zip(before["trimap_accuracy"], after["trimap_accuracy"]):
        assert a > b + 0.01
    assert result["params"]["sigma_alpha"] == 50 * 0.25


def test_main_writes_figures_and_numbers(tmp_path, capsys):
    import json

    experiment.main(["--scale", "0.05", "--out", str(tmp_path), "--noise", "0.5"])
    assert {p.name for p in tmp_path.iterdir()} == {"crf_examples.png", "crf_trimap.png", "crf_experiment.json"}
    saved = json.loads((tmp_path / "crf_experiment.json").read_text())
    assert len(saved["per_image"]) == 7 and saved["widths"] == list(experiment.WIDTHS)
    assert json.loads(capsys.readouterr().out)["after"]["miou"] == saved["after"]["miou"]


def test_held_out_tunes_on_some_photos_and_scores_the_others():
    samples = experiment.load_voc_sample(scale=0.05)[:3]
    grid = dict(w1=(3.0, 6.0), sigma_alpha=(40.0,), sigma_beta=(3.0, 6.0))
    result = experiment.held_out(samples, tune_count=2, scale=0.05, coarse=grid, rounds=0, progress=False, factor=4)
    best = max(result["table"], key=lambda row: row["miou"])
    assert len(result["table"]) == 4
    assert result["tuned"] == dict(w1=best["w1"], sigma_alpha=best["sigma_alpha"] / 0.05,
                                   sigma_beta=best["sigma_beta"], w2=3.0, sigma_gamma=3.0)
    assert result["tuned"]["sigma_alpha"] == pytest.approx(40.0)
    assert [r["name"] for r in result["default"]["per_image"]] == [samples[2][0]]
    again = experiment.run(samples[2:], result["tuned"], scale=0.05, factor=4)
    assert again["after"]["miou"] == result["tuned_run"]["after"]["miou"]


def test_main_held_out(tmp_path, capsys, monkeypatch):
    import json

    monkeypatch.setattr(experiment.tune, "COARSE_GRID", dict(w1=(4.0,), sigma_alpha=(50.0,), sigma_beta=(3.0,)))
    experiment.main(["--held-out", "--scale", "0.05", "--out", str(tmp_path)])
    saved = json.loads((tmp_path / "crf_held_out.json").read_text())
    assert len(saved["table"]) == 1 + 26  # the one-point grid and its refinement
    printed = json.loads(capsys.readouterr().out)
    assert printed["mIoU, tuned parameters"] == saved["tuned_run"]["after"]["miou"]


def test_run_summaries_are_the_scores_of_its_maps():
    samples = experiment.load_voc_sample(scale=0.1)[:3]
    widths = (1, 3)
    result = experiment.run(samples, scale=0.1, widths=widths, seed=0, iterations=3, keep_maps=True)
    for k, key in enumerate(("before", "after")):
        confs = [metrics.confusion_matrix(maps[k], labels, 21) for (_, _, labels), maps in zip(samples, result["maps"])]
        assert [row[f"miou_{key}"] for row in result["per_image"]] == [metrics.mean_iou(c) for c in confs]
        assert result[key]["miou"] == metrics.mean_iou(sum(confs))
        for i, w in enumerate(widths):
            band = sum(metrics.confusion_matrix(maps[k], labels, 21, mask=metrics.trimap_band(labels, w))
                       for (_, _, labels), maps in zip(samples, result["maps"]))
            assert result[key]["trimap_accuracy"][i] == metrics.pixel_accuracy(band)
            assert result[key]["trimap_miou"][i] == metrics.mean_iou(band)


def test_coarse_probs_spread_void_uniformly_and_centre_each_block():
    labels = np.full((8, 8), 15, np.int64)
    labels[4:] = 255  # one block, half person, half void
    probs = experiment.coarse_probs(labels, noise=0.0, blur=0.0)
    pooled = np.full(21, 0.5 / 21)
    pooled[15] += 0.5
    np.testing.assert_allclose(probs[:, 0, 0], (pooled + 1e-3) / (1 + 21e-3), rtol=1e-5)
    labels = np.zeros((8, 16), np.int64)
    labels[:, 8:] = 15  # two blocks side by side
    probs = experiment.coarse_probs(labels, noise=0.0, blur=0.0)
    # a block's value sits at its centre, 3.5 pixels in; nearer the edge it is held
    for column in range(4):
        np.testing.assert_array_equal(probs[:, :, column], probs[:, :, 0])
        np.testing.assert_array_equal(probs[:, :, 15 - column], probs[:, :, 15])
    assert probs[15, 0, 4] > probs[15, 0, 3] and probs[15, 0, 11] < probs[15, 0, 12]


def test_main_held_out_summary_names_each_number_right(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(experiment.tune, "COARSE_GRID", dict(w1=(4.0,), sigma_alpha=(50.0,), sigma_beta=(3.0,)))
    experiment.main(["--held-out", "--scale", "0.05", "--out", str(tmp_path)])
    saved = json.loads((tmp_path / "crf_held_out.json").read_text())
    printed = json.loads(capsys.readouterr().out)
    assert printed["mIoU without CRF"] == saved["default"]["before"]["miou"]
    assert printed["mIoU, DeepLab's parameters"] == saved["default"]["after"]["miou"]
    assert printed["mIoU, tuned parameters"] == saved["tuned_run"]["after"]["miou"]
    assert printed["tuned"] == saved["tuned"]

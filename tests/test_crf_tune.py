"""The coarse-to-fine search against an exhaustive computation on a tiny set."""
import itertools

import numpy as np
import pytest

from minilab import metrics
from minilab.crf import dense_crf, experiment, map_labels, tune

COARSE = dict(w1=(2.0, 6.0), sigma_alpha=(2.0, 6.0), sigma_beta=(5.0, 20.0))
STEPS = dict(w1=1.0, sigma_alpha=1.5, sigma_beta=4.0)
FIXED = dict(w2=3.0, sigma_gamma=1.0, iterations=2, method="naive")


@pytest.fixture(scope="module")
def tiny_set():
    rng = np.random.default_rng(3)
    samples = []
    for _, image, labels in experiment.load_voc_sample(scale=0.03)[:2]:
        probs = experiment.coarse_probs(labels, factor=4, rng=rng)
        samples.append((image, probs, labels))
    return samples


def direct_miou(samples, w1, sigma_alpha, sigma_beta):
    conf = np.zeros((21, 21), np.int64)
    for image, probs, labels in samples:
        q = dense_crf(image, probs, w1=w1, sigma_alpha=sigma_alpha, sigma_beta=sigma_beta, **FIXED)
        conf += metrics.confusion_matrix(map_labels(q), labels, 21)
    return metrics.mean_iou(conf)


def key(row):
    return tuple(row[n] for n in tune.NAMES)


def test_search_equals_exhaustive_grid(tiny_set):
    exhaustive = {s: direct_miou(tiny_set, *s) for s in itertools.product(*(COARSE[n] for n in tune.NAMES))}
    coarse_best = max(exhaustive, key=exhaustive.get)  # first of the maxima, in grid order

    best, table = tune.cross_validate(tiny_set, coarse=COARSE, fine_steps=STEPS, rounds=1,
                                      progress=False, **FIXED)
    coarse = [r for r in table if r["stage"] == "coarse"]
    assert [key(r) for r in coarse] == list(exhaustive)
    assert [r["miou"] for r in coarse] == pytest.approx(list(exhaustive.values()), abs=1e-12)
    assert best["w2"] == 3.0 and best["sigma_gamma"] == 1.0
    neighbourhood = set(itertools.product(*([v + d * STEPS[n] for d in (-1, 0, 1) if v + d * STEPS[n] > 0]
                                             for n, v in zip(tune.NAMES, coarse_best))))
    fine = {key(r): r["miou"] for r in table if r["stage"] == "fine 1"}
    assert set(fine) == neighbourhood - set(exhaustive)
    for setting, miou in fine.items():
        assert miou == pytest.approx(direct_miou(tiny_set, *setting), abs=1e-12)
    everything = {**exhaustive, **fine}
    assert key(best) == max(everything, key=everything.get)


def test_a_value_reached_by_other_arithmetic_is_not_scored_twice(tiny_set):
    """0.1·3 (0.30000000000000004) in the coarse grid is the fine round's 0.3: one setting."""
    best, table = tune.cross_validate(tiny_set[:1], coarse=dict(w1=(3.0,), sigma_alpha=(3.0,), sigma_beta=(0.1 * 3,)),
                                      rounds=1, progress=False, **FIXED)
    keys = [key(r) for r in table]
    assert len(keys) == len(set(keys)) == 3 * 2 * 2  # σα − 5 and σβ − 0.5 are <= 0, dropped
    assert (3.0, 3.0, 0.3) in keys


def test_bad_arguments(tiny_set):
    best, table = tune.cross_validate(tiny_set[:1], coarse=dict(w1=(3.0,), sigma_alpha=(2.0,), sigma_beta=(5.0, 9.0)),
                                      rounds=0, progress=False, **FIXED)  # the coarse grid alone
    assert len(table) == 2 and key(best) == key(tune.best_row(table))
    with pytest.raises(ValueError, match="samples"):
        tune.cross_validate([], progress=False)
    with pytest.raises(ValueError, match="missing 'sigma_beta'"):
        tune.cross_validate(tiny_set, coarse=dict(w1=(3.0,), sigma_alpha=(2.0,)), progress=False)
    with pytest.raises(ValueError, match="fine_steps must give a value.*missing 'w1'"):
        tune.cross_validate(tiny_set, fine_steps=dict(sigma_alpha=5.0, sigma_beta=0.5), progress=False)
    with pytest.raises(TypeError, match=r"coarse\['w1'\] must be a sequence of values, got 3.0"):
        tune.cross_validate(tiny_set, coarse=dict(tune.COARSE_GRID, w1=3.0), progress=False)
    with pytest.raises(TypeError, match=r"grid\['sigma_beta'\] values must be a real number"):
        tune.grid_search(tiny_set, dict(w1=(3.0,), sigma_alpha=(2.0,), sigma_beta=("5",)), progress=False)
    grid = dict(w1=range(3, 5), sigma_alpha=np.array([30.0]), sigma_beta=[3])  # any iterable of numbers
    assert len(tune.grid_search(tiny_set[:1], grid, progress=False, **FIXED)) == 2
    with pytest.raises(ValueError, match="rounds"):
        tune.cross_validate(tiny_set, rounds=-1, progress=False)
    with pytest.raises(ValueError, match="grid key"):
        tune.grid_search(tiny_set, dict(w3=(1.0,)), progress=False)
    with pytest.raises(ValueError, match="grid must give at least one value.*missing 'w1'"):
        tune.grid_search(tiny_set, dict(w1=(), sigma_alpha=(2.0,), sigma_beta=(5.0,)), progress=False)
    with pytest.raises(TypeError, match=r"\(image, probs, labels\) triples, got a tuple of length 2"):
        tune.score([tiny_set[0][:2]], w1=3.0, sigma_alpha=2.0, sigma_beta=5.0)


def test_samples_are_read_once_and_must_not_be_empty(tiny_set):
    """No samples gave "conf must be a NumPy or CuPy array, got int"; a one-shot iterator was
    exhausted after the first setting and failed the same way at the second."""
    grid = dict(w1=(3.0, 4.0), sigma_alpha=(2.0,), sigma_beta=(5.0,))
    for search in (lambda s: tune.score(s, w1=3.0, sigma_alpha=2.0, sigma_beta=5.0),
                   lambda s: tune.grid_search(s, grid, progress=False)):
        with pytest.raises(ValueError, match="samples must hold at least one"):
            search([])
    with pytest.raises(TypeError, match="samples must be a sequence of .* got int"):
        tune.score(3, w1=3.0, sigma_alpha=2.0, sigma_beta=5.0)
    once = tune.grid_search(iter(tiny_set[:1]), grid, progress=False, **FIXED)
    assert once == tune.grid_search(tiny_set[:1], grid, progress=False, **FIXED)


def test_paper_grid():
    assert tune.COARSE_GRID["sigma_alpha"] == tuple(range(30, 101, 10))
    assert len(list(itertools.product(*tune.COARSE_GRID.values()))) == 4 * 8 * 4


def test_fine_steps_halve_each_round(monkeypatch):
    """With rounds=2 the second round searches half steps around the first round's best."""
    monkeypatch.setattr(tune, "score", lambda samples, **p: -sum(abs(p[n] - 4.0) for n in tune.NAMES))
    _, table = tune.cross_validate([None], coarse=dict(w1=(3.0,), sigma_alpha=(3.0,), sigma_beta=(3.0,)),
                                   fine_steps=dict(w1=1.0, sigma_alpha=1.0, sigma_beta=1.0), rounds=2,
                                   progress=False)
    second = {tuple(row[n] for n in tune.NAMES) for row in table if row["stage"] == "fine 2"}
    assert (4.5, 4.5, 4.5) in second and (5.0, 5.0, 5.0) not in second


def test_a_repeated_grid_value_is_scored_once(monkeypatch):
    """A grid that names a value twice (by hand, or 0.1·3 and 0.3) is one setting: scoring it again
    would double the CRF runs of the search and put the row in the table twice."""
    calls = []
    monkeypatch.setattr(tune, "score", lambda samples, **p: calls.append(p) or 0.5)
    grid = dict(w1=(3.0, 4.0, 3.0), sigma_alpha=(2.0, 2.0), sigma_beta=(5.0, 0.1 * 3, 0.3))
    table = tune.grid_search([None], grid, progress=False)
    assert [key(p) for p in calls] == [(3.0, 2.0, 5.0), (3.0, 2.0, 0.3), (4.0, 2.0, 5.0), (4.0, 2.0, 0.3)]
    assert [key(r) for r in table] == [key(p) for p in calls]


def test_a_fine_value_of_exactly_0_is_dropped(monkeypatch):
    """best − step lands exactly on 0 (1 − 1, 0.3 − 0.3): the CRF divides by σα and σβ and a zero
    w1 switches its kernel off, so the fine round keeps only positive values, 0 not among them."""
    scored = []

    def fake_score(samples, **p):
        scored.append(key(p))
        return -sum(abs(p[n] - 1.0) for n in tune.NAMES)

    monkeypatch.setattr(tune, "score", fake_score)
    _, table = tune.cross_validate([None], coarse=dict(w1=(1.0,), sigma_alpha=(0.3,), sigma_beta=(2.5,)),
                                   fine_steps=dict(w1=1.0, sigma_alpha=0.3, sigma_beta=2.5), rounds=1,
                                   progress=False)
    assert all(v > 0 for s in scored for v in s)
    fine = {key(r) for r in table if r["stage"] == "fine 1"}
    assert fine == set(itertools.product((1.0, 2.0), (0.3, 0.6), (2.5, 5.0))) - {(1.0, 0.3, 2.5)}

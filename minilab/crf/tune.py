"""Cross-validating the CRF parameters, coarse to fine (paper §4.1).

The paper fixes the smoothness kernel (w2 = 3, σγ = 3) and picks the appearance kernel's
w1, σα and σβ by grid search on held-out images, maximising mean IoU: first a coarse grid,
w1 ∈ {3, 4, 5, 6}, σα ∈ {30, 40, …, 100}, σβ ∈ {3, 4, 5, 6}, then finer steps around the
best point. :func:`cross_validate` does exactly that over a list of (image, probs, labels)
triples, pooling one confusion matrix over all of them per parameter setting (the VOC way:
counts added over images, not scores averaged).
"""
import collections.abc
import itertools

from tqdm import tqdm

from .. import metrics, validate
from . import dense_crf, map_labels

# A point of the paper's search grid (bilateral compat 5, sxy 50, srgb 3) with its fixed
# Gaussian kernel (compat 3, sxy 3). The released models used settings cross-validated for
# each (DeepLab v1 LargeFOV: compat 4, sxy 121, srgb 5), not this one.
DEEPLAB_PARAMS = dict(w1=5.0, sigma_alpha=50.0, sigma_beta=3.0, w2=3.0, sigma_gamma=3.0)

# The paper's first-round grid (§4.1).
COARSE_GRID = dict(w1=(3.0, 4.0, 5.0, 6.0),
                   sigma_alpha=tuple(float(s) for s in range(30, 101, 10)),
                   sigma_beta=(3.0, 4.0, 5.0, 6.0))

# Second-round steps: half the first round's, one step either side of the best point.
FINE_STEPS = dict(w1=0.5, sigma_alpha=5.0, sigma_beta=0.5)

NAMES = ("w1", "sigma_alpha", "sigma_beta")


def score(samples, *, w1, sigma_alpha, sigma_beta, w2=3.0, sigma_gamma=3.0, iterations=10,
          method="lattice", ignore_index=255, **crf_options):
    """Mean IoU of the CRF's MAP labels over ``samples``, one confusion matrix pooled over all.

    Parameters
    ----------
    samples : sequence of (image, probs, labels)
        image H×W×3 uint8, probs C×H×W float (the DCNN's probabilities), labels H×W int with
        ``ignore_index`` for unlabelled pixels. C must be the same for every sample.
    w1, sigma_alpha, sigma_beta, w2, sigma_gamma, iterations, method, **crf_options
        Passed to :func:`minilab.crf.dense_crf`.

    Returns
    -------
    float : mean IoU (:func:`minilab.metrics.mean_iou`).
    """
    conf = None
    for sample in _check_samples(samples):
        if not (isinstance(sample, (tuple, list)) and len(sample) == 3):
            raise TypeError(f"samples must hold (image, probs, labels) triples, got a {type(sample).__name__}"
                            + (f" of length {len(sample)}" if hasattr(sample, "__len__") else ""))
        image, probs, labels = sample
        q = dense_crf(image, probs, iterations=iterations, w1=w1, sigma_alpha=sigma_alpha,
                      sigma_beta=sigma_beta, w2=w2, sigma_gamma=sigma_gamma, method=method,
                      **crf_options)
        counts = metrics.confusion_matrix(map_labels(q), labels, probs.shape[0], ignore_index)
        conf = counts if conf is None else conf + counts
    if conf is None:
        raise ValueError("samples must hold at least one (image, probs, labels) triple, got none")
    return metrics.mean_iou(conf)


def grid_search(samples, grid, *, progress=True, desc="grid", table=None, **options):
    """Score every combination of ``grid`` (a dict ``name -> values`` over w1, σα, σβ).

    Each value is kept to 12 significant digits (:func:`_tidy`), so that a value and the
    same value reached by other arithmetic (0.1·3 and 0.3) are one setting. Settings already
    in ``table`` (a list of rows from an earlier call) or repeated in ``grid`` are not scored
    again. Returns the list of rows, ``table`` extended: one dict per setting with the
    three parameters, ``"miou"`` and ``"stage"`` (``desc``). ``options`` go to :func:`score`.
    ``samples`` may be any iterable (a generator too): it is read into a list once, then scored
    at every setting.
    """
    samples = list(_check_samples(samples))
    grid = _check_grid("grid", grid)
    table = [] if table is None else table
    done = {tuple(row[n] for n in NAMES) for row in table}
    tidy = itertools.product(*([_tidy(v) for v in grid[n]] for n in NAMES))
    settings = [s for s in dict.fromkeys(tidy) if s not in done]
    for setting in tqdm(settings, desc=desc, unit="setting", disable=not progress):
        params = dict(zip(NAMES, setting))
        table.append(dict(params, miou=score(samples, **params, **options), stage=desc))
    return table


def _check_samples(samples):
    """Check that ``samples`` is iterable; returns it. :func:`score` checks each item is a
    triple, and that there is at least one, as it reads them (a generator is read once)."""
    if not isinstance(samples, collections.abc.Iterable):
        raise TypeError(f"samples must be a sequence of (image, probs, labels) triples, got {type(samples).__name__}")
    return samples


def _tidy(value):
    """A grid value to 12 significant digits, the key it is scored and remembered under:
    far finer than any CRF parameter matters, far coarser than float64's rounding noise."""
    return float(f"{value:.12g}")


def _check_grid(name, grid):
    """A grid names only w1, σα, σβ, and gives each an iterable of at least one real number
    (a tuple, a list, an array, a range); returns it with each as a tuple of floats."""
    _check_names(name, grid)
    checked = {}
    for key in NAMES:
        if isinstance(grid[key], (str, bytes)) or not isinstance(grid[key], collections.abc.Iterable):
            raise TypeError(f"{name}[{key!r}] must be a sequence of values, got {grid[key]!r}")
        checked[key] = tuple(validate.real(f"{name}[{key!r}] values", value) for value in grid[key])
        if not checked[key]:
            raise ValueError(f"{name} must give at least one value for each of {NAMES}, missing {key!r}")
    return checked


def _check_names(name, mapping):
    """``mapping`` has exactly the keys w1, σα, σβ."""
    for key in mapping:
        validate.choice(f"{name} key", key, NAMES)
    for key in NAMES:
        if key not in mapping:
            raise ValueError(f"{name} must give a value for each of {NAMES}, missing {key!r}")


def best_row(table):
    """The row with the highest mean IoU (the first one on a tie)."""
    return max(table, key=lambda row: row["miou"])


def cross_validate(samples, *, coarse=COARSE_GRID, fine_steps=FINE_STEPS, rounds=1,
                   w2=3.0, sigma_gamma=3.0, iterations=10, method="lattice", progress=True,
                   **crf_options):
    """The paper's coarse-to-fine search for w1, σα, σβ (§4.1), w2 and σγ held fixed.

    Round 0 scores every point of ``coarse``. Each of the next ``rounds`` rounds scores the
    3×3×3 neighbourhood ``best ± step`` of the best point so far (values ≤ 0 dropped), then
    halves the steps. Settings are never scored twice.

    Parameters
    ----------
    samples : sequence of (image H×W×3 uint8, probs C×H×W float, labels H×W int)
    coarse : dict name -> sequence of values
        The first-round grid; default :data:`COARSE_GRID` (the paper's).
    fine_steps : dict name -> float
        First refinement steps; default :data:`FINE_STEPS`.
    rounds : int >= 0
        Number of refinement rounds (0: the coarse grid alone).
    w2, sigma_gamma, iterations, method, **crf_options
        Fixed arguments of :func:`minilab.crf.dense_crf` (the paper: 3, 3, 10).
    progress : bool
        Show a tqdm progress bar per round.

    Returns
    -------
    best : dict
        ``w1, sigma_alpha, sigma_beta, w2, sigma_gamma`` of the best setting, ready for
        ``dense_crf(image, probs, **best)``.
    table : list of dict
        Every setting scored, in order: the three parameters, ``"miou"`` and ``"stage"``
        (``"coarse"``, ``"fine 1"``, …).
    """
    rounds = validate.integer("rounds", rounds, minimum=0)
    samples = list(_check_samples(samples))  # scored at every setting (score refuses none)
    coarse = _check_grid("coarse", coarse)
    _check_names("fine_steps", fine_steps)
    for name in NAMES:
        validate.positive(f"fine_steps[{name!r}]", fine_steps[name])
    options = dict(w2=w2, sigma_gamma=sigma_gamma, iterations=iterations, method=method,
                   progress=progress, **crf_options)
    table = grid_search(samples, coarse, desc="coarse", **options)
    steps = dict(fine_steps)
    for r in range(1, rounds + 1):
        best = best_row(table)
        grid = {n: [best[n] + d * steps[n] for d in (-1, 0, 1) if best[n] + d * steps[n] > 0] for n in NAMES}
        grid_search(samples, grid, desc=f"fine {r}", table=table, **options)
        steps = {n: s / 2 for n, s in steps.items()}
    best = best_row(table)
    return dict({n: best[n] for n in NAMES}, w2=w2, sigma_gamma=sigma_gamma), table

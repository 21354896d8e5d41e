"""The training loop of §4: per-pixel cross-entropy at stride 8, SGD, a learning-rate policy.

One iteration draws a batch (random scale 0.5-1.5, crop, flip, mean subtraction:
:mod:`minilab.data.transforms`), runs the model forward to its stride-8 score map, takes the
softmax cross-entropy against the labels subsampled to that grid by nearest neighbour (255
ignored), runs the model backward, and updates with :class:`~minilab.train.optim.SGD` at the
policy's learning rate (classifier at 10×).

Determinism: the model is built from its own seed; the trainer draws every batch from one
generator seeded by ``config.seed``; dropout layers keep their own generators. A checkpoint
stores all of these states with the weights and momentum buffers, so training resumed from
it produces, on the CPU, bit-for-bit the weights an uninterrupted run would.
"""
import contextlib
import dataclasses
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from .. import backend, validate
from ..data.transforms import INPUT_MEAN, INPUT_SCALE, check_mean, check_scale_range, make_batch
from ..nn.module import Module
from ..ops.interp import downsample_labels
from ..ops.loss import softmax_cross_entropy_backward, softmax_cross_entropy_forward
from .checkpoint import jsonable, load_checkpoint, save_checkpoint, writable
from .evaluate import evaluate
from .optim import SGD
from .policies import POLICIES, learning_rate


@dataclass
class TrainConfig:
    """Training settings (the paper's values where it gives them, §4).

    Attributes
    ----------
    iterations : int
        Number of SGD updates (T in the poly policy).
    batch_size : int
        Images per update (the paper: 20 for VGG, 10 for ResNet).
    crop_size : int
        Side of the square training crops; ``8k + 1`` (321 in the paper) puts every label
        sample exactly under a stride-8 score pixel.
    base_lr, policy, power, step_size, gamma
        Learning rate and its policy: ``"poly"`` (power 0.9) or ``"step"`` (× gamma every
        step_size iterations, gamma in (0, 1]).
    momentum, weight_decay, classifier_lr_mult
        SGD settings: 0.9, 5e-4 and 10× on the classifier.
    scale_range : (float, float) or None
        Random scaling of each training image (0.5-1.5); None turns it off.
    flip : bool
        Random horizontal flips.
    mean, input_scale
        The network sees ``(image - mean) * input_scale``; the default ``(image - 128) / 64``
        keeps inputs O(1) for models trained from scratch (:mod:`minilab.data.transforms`).
        ``mean`` is an (R, G, B) colour in 0..255: it also pads the crops.
        Checkpoints store both, so evaluation and inference normalise as training did.
    val_every : int
        Validate every this many iterations (0: only when asked).
    checkpoint_every : int
        Write the checkpoint every this many iterations (0: only at the end).
    seed : int
        Seeds the batch sampling and augmentation.
    device : str
        ``"cpu"``, ``"gpu"`` or ``"auto"``.
    """

    iterations: int = 1000
    batch_size: int = 10
    crop_size: int = 321
    base_lr: float = 1e-3
    policy: str = "poly"
    power: float = 0.9
    step_size: int = 2000
    gamma: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    classifier_lr_mult: float = 10.0
    scale_range: tuple = (0.5, 1.5)
    flip: bool = True
    mean: tuple = INPUT_MEAN
    input_scale: float = INPUT_SCALE
    val_every: int = 0
    checkpoint_every: int = 0
    seed: int = 0
    device: str = "cpu"

    def __post_init__(self):
        # The checked values replace the given ones: a NumPy number (from np.arange) becomes
        # a Python one, which the checkpoint's JSON can hold.
        for name in ("iterations", "batch_size", "crop_size", "step_size"):
            setattr(self, name, validate.integer(name, getattr(self, name), 1))
        for name in ("val_every", "checkpoint_every", "seed"):
            setattr(self, name, validate.integer(name, getattr(self, name), 0))
        for name in ("base_lr", "input_scale"):
            setattr(self, name, validate.positive(name, getattr(self, name)))
        self.gamma = validate.real("gamma", self.gamma, positive=True, maximum=1)  # a decay (step_lr)
        # 0: a constant poly rate, plain SGD, no decay, a frozen classifier (SGD checks momentum < 1)
        for name in ("power", "momentum", "weight_decay", "classifier_lr_mult"):
            setattr(self, name, validate.real(name, getattr(self, name), minimum=0))
        self.flip = validate.boolean("flip", self.flip)
        validate.choice("policy", self.policy, POLICIES)
        validate.choice("device", self.device, backend.DEVICES)
        self.scale_range = check_scale_range(self.scale_range)
        self.mean = check_mean(self.mean)  # also the padding colour of the crops: 0..255


# Settings that may differ between a run and its resumption without changing the result.
# ``iterations`` joins them under the step policy only: under poly it is T, the length of the
# learning-rate schedule, and another T changes every learning rate still to come.
_RESUMABLE = {"val_every", "checkpoint_every", "device"}


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; the weights were not updated with it."""


def param_groups(model, classifier_lr_mult=10.0):
    """Split ``model``'s parameters into the backbone (1×) and the classifier (``classifier_lr_mult``×).

    The classifier is every module's ``classifier`` layer, the one that outputs the class
    scores: in each ASPP branch fc8, or fc6 when the branch is that one convolution
    (``hidden=None``), and the 1×1 classifier of :class:`~minilab.nn.ASPPv3`; the layers
    §4 trains at 10× the base rate. Frozen parameters (``trainable = False``) stay in
    their group; :class:`~minilab.train.optim.SGD` leaves them alone.
    """
    head = {id(p) for m in model.modules() if isinstance(getattr(m, "classifier", None), Module)
            for p in m.classifier.parameters()}
    params = model.parameters()
    groups = [{"name": "backbone", "params": [p for p in params if id(p) not in head], "lr_mult": 1.0},
              {"name": "classifier", "params": [p for p in params if id(p) in head],
               "lr_mult": float(classifier_lr_mult)}]
    return [g for g in groups if g["params"]]


def module_generators(model):
    """``{module path: Generator}`` for every module keeping a ``numpy.random.Generator`` as ``rng`` (dropout)."""
    return {path: m.rng for path, m in model.named_modules()
            if isinstance(getattr(m, "rng", None), np.random.Generator)}


class Trainer:
    """Train ``model`` on ``train_set`` with ``config``; optionally validate on ``val_set``.

    Parameters
    ----------
    model : minilab.nn.Module
        Maps N×3×H×W float32 to stride-8 logits N×C×h×w; has ``backward``,
        ``named_parameters``, ``state_dict``/``load_state_dict``, ``train``/``eval``, ``to``.
    train_set, val_set : data sets with ``dataset[i] -> (image, labels)`` (:mod:`minilab.data`).
    config : TrainConfig
    num_classes : int
        C (the model's output channels).
    checkpoint : path, optional
        Where checkpoints are written (``.npz``); its folder is created and checked to take
        files now, before training.
    model_spec : dict, optional
        JSON-able description of the model, stored in checkpoints so that
        ``minilab eval``/``segment`` can rebuild it.
    data_spec : dict, optional
        JSON-able description of the data, stored in checkpoints so that ``minilab eval``
        scores the held-out data of the training run by default.
        Both specs are checked here: NumPy numbers become Python ones, and a value JSON
        cannot hold is a ``TypeError`` before training, not at the first checkpoint.
    crf : dict, optional
        Dense-CRF settings for validation (keyword arguments of :func:`minilab.crf.dense_crf`).
    progress : bool
        Show a tqdm bar with the loss and the learning rate.
    """

    def __init__(self, model, train_set, config, num_classes, *, val_set=None, checkpoint=None,
                 model_spec=None, data_spec=None, crf=None, progress=True):
        self.model, self.train_set, self.val_set = model, train_set, val_set
        self.config, self.num_classes = config, validate.integer("num_classes", num_classes, 2)
        if len(train_set) == 0:
            raise ValueError("train_set is empty: there is nothing to train on")
        self.checkpoint = writable("checkpoint", checkpoint) if checkpoint is not None else None
        # checked now, not at the first save after training: both are written as JSON into checkpoints
        self.model_spec = jsonable("model_spec", model_spec or {})
        self.data_spec = jsonable("data_spec", data_spec or {})
        self.crf, self.progress = crf, progress
        self.device = backend.resolve_device(config.device)
        if self.device == "gpu":
            model.to("gpu")
        self.optimizer = SGD(param_groups(model, config.classifier_lr_mult),
                             momentum=config.momentum, weight_decay=config.weight_decay)
        self.rng = np.random.default_rng(config.seed)
        self.iteration = 0
        self.saved_iteration = None  # the iteration in ``checkpoint`` when this run wrote or resumed from it
        self.train_seconds = 0.0  # wall-clock time spent in train_step, validation excluded
        self.history = {"iteration": [], "loss": [], "lr": [], "val": []}

    def lr(self):
        """The base learning rate at the current iteration."""
        c = self.config
        return learning_rate(c.policy, c.base_lr, self.iteration, c.iterations,
                             power=c.power, step_size=c.step_size, gamma=c.gamma)

    def next_batch(self):
        """The next augmented batch ``(x N×3×S×S float32, labels N×S×S uint8)`` on the model's device."""
        c = self.config
        idx = self.rng.integers(0, len(self.train_set), c.batch_size)
        x, labels = make_batch(self.train_set, idx, self.rng, c.crop_size, c.scale_range, c.flip,
                               c.mean, c.input_scale)
        return backend.to_device(x, self.device), backend.to_device(labels, self.device)

    def train_step(self):
        """One SGD iteration; returns the loss.

        Raises :class:`TrainingDiverged` when the loss (or an activation on the way to it) is
        not finite, before any weight is updated with it, or when an update leaves a weight
        non-finite. Either way the checkpoint on disk is the last good state.
        """
        x, labels = self.next_batch()
        self.model.train()
        self.optimizer.zero_grad()
        lr = self.lr()
        try:
            logits = self.model.forward(x)
            if logits.shape[1] != self.num_classes:
                raise ValueError(f"the model scores {logits.shape[1]} classes but num_classes is {self.num_classes}")
            target = downsample_labels(labels, size=logits.shape[-2:])
            loss, cache = softmax_cross_entropy_forward(logits, target, ignore_index=255)
            loss = float(loss)
        except ValueError as error:
            if not _overflowed(error):
                raise
            loss = float("nan")
        if not math.isfinite(loss):
            raise self._diverged(f"the loss became {loss}", lr)
        self.model.backward(softmax_cross_entropy_backward(1.0, cache))
        self.optimizer.step(lr)
        if not all(bool(backend.array_module(p.data).isfinite(p.data).all()) for p in self.optimizer.parameters()):
            raise self._diverged("an update made the weights non-finite", lr)
        self.iteration += 1
        self.history["iteration"].append(self.iteration)
        self.history["loss"].append(loss)
        self.history["lr"].append(lr)
        return loss

    def _diverged(self, what, lr):
        kept = (f"the last good checkpoint is {self.checkpoint} (iteration {self.saved_iteration})"
                if self.saved_iteration is not None else "this run wrote no checkpoint yet")
        return TrainingDiverged(
            f"training stopped: {what} at iteration {self.iteration} (learning rate {lr:.3g}); {kept}. "
            f"Lower base_lr (now {self.config.base_lr}) or check the data (labels 0..C-1 and 255, "
            "finite images).")

    def validate(self):
        """Evaluate on ``val_set`` (before and, with ``crf``, after the CRF); appended to the history.

        The history entry holds ``iteration``, ``seconds`` (training time so far) and the
        ``miou*`` and ``class_iou*`` scores.
        """
        c = self.config
        try:
            result = evaluate(self.model, self.val_set, self.num_classes, crf=self.crf,
                              mean=c.mean, input_scale=c.input_scale)
        except ValueError as error:
            if not _overflowed(error):
                raise
            raise self._diverged("the validation scores became non-finite", self.lr()) from error
        self.history["val"].append({"iteration": self.iteration, "seconds": self.train_seconds,
                                    **{k: result[k] for k in result if k.startswith(("miou", "class_iou"))}})
        return result

    def fit(self, until=None):
        """Train up to iteration ``until`` (default ``config.iterations``); returns the history.

        Validates every ``val_every`` and writes the checkpoint every ``checkpoint_every``
        iterations and at the end. Stopping early (``until`` < iterations) and resuming
        later gives the same weights as one run.
        """
        c = self.config
        until = c.iterations if until is None else min(validate.integer("until", until, 0), c.iterations)
        bar = tqdm(total=until, initial=self.iteration, disable=not self.progress, desc="train",
                   dynamic_ncols=True, leave=False)
        try:
            while self.iteration < until:
                start = time.perf_counter()
                loss = self.train_step()
                self.train_seconds += time.perf_counter() - start
                bar.update(1)
                bar.set_postfix(loss=f"{loss:.4f}", lr=f"{self.history['lr'][-1]:.2e}")
                if c.val_every and self.val_set is not None and self.iteration % c.val_every == 0:
                    self.validate()
                if self.checkpoint and c.checkpoint_every and self.iteration % c.checkpoint_every == 0:
                    self.save(self.checkpoint)
        finally:
            bar.close()
        if self.checkpoint:
            self.save(self.checkpoint)
        return self.history

    def save(self, path):
        """Write a checkpoint (atomically) to ``path``."""
        meta = {"iteration": self.iteration, "train_seconds": self.train_seconds,
                "config": dataclasses.asdict(self.config),
                "num_classes": self.num_classes, "model_spec": self.model_spec, "data_spec": self.data_spec,
                "rng": self.rng.bit_generator.state, "history": self.history,
                "module_rngs": {k: g.bit_generator.state for k, g in module_generators(self.model).items()}}
        path = save_checkpoint(path, self.model.state_dict(), self.optimizer.state_dict(), meta)
        if self.checkpoint is not None and path == self.checkpoint:
            self.saved_iteration = self.iteration
        return path

    def load(self, path):
        """Restore weights, momentum, iteration, generators and history from a checkpoint.

        The checkpoint's model must be this trainer's (same ``model_spec`` up to the
        initialisation seed, when both have one; same parameter names in any case), and its
        training settings must equal this trainer's except ``val_every``,
        ``checkpoint_every``, ``device`` and, under the step policy, ``iterations``: so the
        resumed run gives the weights of one uninterrupted run. Under the poly policy
        ``iterations`` is the schedule's length T and may not change; under the step policy
        a larger value extends training exactly as if it had been asked for at the start.

        Raises
        ------
        ValueError
            The checkpoint holds another model, or was trained with other settings.
        """
        model_state, optim_state, meta = load_checkpoint(path)
        saved_spec = meta.get("model_spec") or {}
        if saved_spec and self.model_spec and _architecture(saved_spec) != _architecture(self.model_spec):
            raise ValueError(f"checkpoint {path} holds another model: {_describe(saved_spec)} "
                             f"(now {_describe(self.model_spec)})")
        saved, mine = meta["config"], dataclasses.asdict(self.config)
        resumable = _RESUMABLE | ({"iterations"} if self.config.policy == "step" else set())
        differ = sorted(k for k in mine if k not in resumable and jsonable(k, mine[k]) != saved.get(k))
        if differ:
            hint = ("; under the poly policy iterations is the length of the learning-rate schedule, so it "
                    "cannot change on resuming (the step policy's can)" if "iterations" in differ else "")
            raise ValueError(f"checkpoint {path} was trained with other settings: "
                             + ", ".join(f"{k}={saved.get(k)!r} (now {mine[k]!r})" for k in differ) + hint)
        try:
            self.model.load_state_dict(model_state)
        except KeyError as error:  # other parameter names: another architecture
            raise ValueError(f"checkpoint {path} holds another model: {error.args[0]}") from error
        if self.device == "gpu":
            self.model.to("gpu")
        self.optimizer.load_state_dict(optim_state)
        self.iteration = int(meta["iteration"])
        self.train_seconds = float(meta.get("train_seconds", 0.0))
        self.rng.bit_generator.state = meta["rng"]
        generators = module_generators(self.model)
        for name, state in meta.get("module_rngs", {}).items():
            if name in generators:
                generators[name].bit_generator.state = state
        self.history = meta["history"]
        if self.checkpoint is not None and Path(path) == self.checkpoint:
            self.saved_iteration = self.iteration
        return meta


@contextlib.contextmanager
def limit_threads(n):
    """Run the enclosed code with at most ``n`` Numba threads (and ``n`` BLAS threads when
    ``threadpoolctl`` is installed); the previous settings come back afterwards.

    Tiny models train fastest on one thread: their kernels are too small to share, and on
    a busy machine threads that wait for each other cost several-fold.
    """
    import numba
    before = numba.get_num_threads()
    numba.set_num_threads(max(1, min(validate.integer("n", n, 1), numba.config.NUMBA_NUM_THREADS)))
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        blas = contextlib.nullcontext()
    else:
        blas = threadpool_limits(n, user_api="blas")
    try:
        with blas:
            yield
    finally:
        numba.set_num_threads(before)


def _overflowed(error):
    """Whether ``error`` is a layer refusing a non-finite input: activations overflowed."""
    return "NaN or infinity" in str(error)


def _architecture(spec):
    """A :func:`~minilab.train.checkpoint.model_spec` without its ``seed`` (loading replaces the initial weights)."""
    return {**spec, "kwargs": {k: v for k, v in spec.get("kwargs", {}).items() if k != "seed"}}


def _describe(spec):
    """A model spec in one line: ``deeplab_vgg16, 5 classes, width=0.125, ...``."""
    kwargs = ", ".join(f"{k}={v}" for k, v in _architecture(spec)["kwargs"].items())
    return f"{spec.get('builder')}, {spec.get('num_classes')} classes" + (f", {kwargs}" if kwargs else "")

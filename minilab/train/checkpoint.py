"""Checkpoints: one ``.npz`` file holding everything needed to continue training exactly.

Layout (all plain arrays, readable with ``numpy.load(path)`` and no pickle):

* ``model/<name>``: every entry of the model's ``state_dict()`` (weights, batch-norm statistics);
* ``optimizer/<name>``: every entry of the optimiser's ``state_dict()`` (momentum buffers);
* ``meta``: a JSON string with ``format``, ``version``, ``iteration`` (updates done),
  ``config`` (the training settings), ``model_spec`` (how to rebuild the model),
  ``data_spec`` (what it was trained on, for ``minilab eval``'s defaults), ``rng``
  (the state of the data-sampling generator, so the next batch is the one an uninterrupted
  run would draw), ``history`` (loss, learning rate and validation scores so far) and
  ``train_seconds`` (time spent in training steps).

Files are written atomically: to a temporary file in the same folder, flushed to disk, then
renamed over the target, so a crash mid-write leaves the previous checkpoint intact.
"""
import json
import os
import tempfile
import zipfile
from pathlib import Path

import numpy as np

from .. import backend, validate

FORMAT, VERSION = "minilab-checkpoint", 1


def save_checkpoint(path, model_state, optimizer_state, meta):
    """Write ``model_state`` and ``optimizer_state`` (dicts of arrays) and ``meta`` (JSON-able) to ``path``."""
    path = Path(path)
    arrays = {f"model/{k}": backend.to_numpy(v) for k, v in model_state.items()}
    arrays.update({f"optimizer/{k}": backend.to_numpy(v) for k, v in optimizer_state.items()})
    arrays["meta"] = np.array(json.dumps({"format": FORMAT, "version": VERSION, **meta}))
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def writable(name, path):
    """``path`` as a ``Path``, once a checkpoint can be written there: it is not a folder, and
    its folder (created if missing) takes new files. Checked before training starts, so a bad
    path is not found at the first save, hours later; ``name`` names it in the error."""
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"{name} must be a file to write, got the folder {path}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tempfile.TemporaryFile(dir=path.parent).close()
    except OSError as error:
        raise ValueError(f"{name} {path} cannot be written: {error}") from error
    return path


def load_checkpoint(path):
    """Read a checkpoint: returns ``(model_state, optimizer_state, meta)``.

    ``meta`` is checked to be a JSON object of this format holding a ``config`` object; a
    damaged one is a ``ValueError`` naming the file.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    if not zipfile.is_zipfile(path):
        raise ValueError(f"{path} is not a minilab checkpoint (a checkpoint is an .npz archive written by training)")
    with np.load(path, allow_pickle=False) as f:
        if "meta" not in f.files:
            raise ValueError(f"{path} is not a minilab checkpoint (no 'meta' entry)")
        try:
            meta = json.loads(str(f["meta"]))
        except ValueError as error:  # JSONDecodeError, or NumPy refusing a pickled entry
            raise ValueError(f"checkpoint {path} is damaged: its 'meta' entry is not JSON ({error})") from error
        if not isinstance(meta, dict):
            raise ValueError(f"checkpoint {path} is damaged: its 'meta' entry is not a JSON object, "
                             f"got a {type(meta).__name__}")
        if meta.get("format") != FORMAT:
            raise ValueError(f"{path} is not a minilab checkpoint (format {meta.get('format')!r})")
        if not isinstance(meta.get("config"), dict):
            raise ValueError(f"checkpoint {path} is damaged: its meta holds no 'config' object (the training settings)")
        model = {k[6:]: f[k] for k in f.files if k.startswith("model/")}
        optimizer = {k[10:]: f[k] for k in f.files if k.startswith("optimizer/")}
    return model, optimizer, meta


#: Model builders a checkpoint may name in its ``model_spec`` (functions of :mod:`minilab.nn`).
BUILDERS = ("deeplab_vgg16", "deeplab_resnet")


def model_spec(builder, num_classes, **kwargs):
    """A JSON-able description of a model: ``{"builder": name, "num_classes": C, "kwargs": {...}}``.

    Raises ``TypeError`` for a keyword argument JSON cannot hold (``dtype=np.float32``), so a
    training run learns it before it starts, not at its first checkpoint.
    """
    if builder not in BUILDERS:
        raise ValueError(f"builder must be one of {BUILDERS}, got {builder!r}")
    return {"builder": builder, "num_classes": validate.integer("num_classes", num_classes, 1),
            "kwargs": {k: jsonable(k, v) for k, v in kwargs.items()}}


def jsonable(name, value):
    """``value`` as it reads back from a checkpoint's JSON: NumPy numbers become Python
    numbers, tuples lists, in dicts and lists too. Anything else JSON cannot hold (an object,
    a type) is a ``TypeError`` naming ``name``."""
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, (tuple, list)):
        return [jsonable(name, v) for v in value]
    if isinstance(value, dict):
        if not all(isinstance(k, str) for k in value):
            raise TypeError(f"{name} must have str keys to be written as JSON, got {list(value)!r}")
        return {k: jsonable(f"{name}[{k!r}]", v) for k, v in value.items()}
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise TypeError(f"{name} must be a number, a string, None, or a list or dict of them (it is written as "
                    f"JSON into checkpoints), got {value!r} of type {type(value).__name__}")


def build_model(spec):
    """The (freshly initialised) model a :func:`model_spec` describes."""
    from .. import nn
    if (not isinstance(spec, dict) or spec.get("builder") not in BUILDERS or "num_classes" not in spec
            or not isinstance(spec.get("kwargs", {}), dict)):
        raise ValueError(f"model spec must name a builder in {BUILDERS}, num_classes and a dict of kwargs, "
                         f"got {spec!r}")
    kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in spec.get("kwargs", {}).items()}
    return getattr(nn, spec["builder"])(spec["num_classes"], **kwargs)


def load_model(path, device="cpu"):
    """Rebuild the model saved in a checkpoint, with its weights, in eval mode.

    Returns ``(model, meta)``; ``meta["config"]`` holds the ``mean`` and ``input_scale``
    the model expects (see :func:`minilab.train.evaluate.predict_probs`).
    """
    model_state, _, meta = load_checkpoint(path)
    if not meta.get("model_spec"):
        raise ValueError(f"checkpoint {path} does not say how to build its model (no model_spec)")
    missing = [k for k in ("mean", "input_scale") if k not in meta["config"]]
    if missing:
        raise ValueError(f"checkpoint {path} is damaged: its config lacks {', '.join(missing)}")
    model = build_model(meta["model_spec"])
    try:
        model.load_state_dict(model_state)
    except KeyError as error:  # weights missing or named otherwise
        raise ValueError(f"checkpoint {path} does not hold its model's weights: {error.args[0]}") from error
    if device != "cpu":
        model.to(device)
    return model.eval(), meta

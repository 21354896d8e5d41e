"""Checkpoints: one ``.npz`` file holding everything needed to continue training exactly.

Layout (all plain arrays, readable with ``numpy.load(path)`` and no pickle):

* ``model/<name>``: every entry of the model's ``state_dict()`` (weights, batch-norm statistics);
* ``optimizer/<name>``: every entry of the optimiser's ``state_dict()`` (momentum buffers);
* ``meta``: a JSON string with ``format``, ``version``, ``iteration`` (updates done),
  ``config`` (the training settings), ``model_spec`` (how to rebuild the model), ``rng``
  (the state of the data-sampling generator, so the next batch is the one an uninterrupted
  run would draw) and ``history`` (loss, learning rate and validation scores so far).

Files are written atomically: to a temporary file in the same folder, flushed to disk, then
renamed over the target, so a crash mid-write leaves the previous checkpoint intact.
"""
import json
import os
import tempfile
from pathlib import Path

import numpy as np

from .. import backend

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


def load_checkpoint(path):
    """Read a checkpoint: returns ``(model_state, optimizer_state, meta)``."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    with np.load(path, allow_pickle=False) as f:
        if "meta" not in f.files:
            raise ValueError(f"{path} is not a minilab checkpoint (no 'meta' entry)")
        meta = json.loads(str(f["meta"]))
        if meta.get("format") != FORMAT:
            raise ValueError(f"{path} is not a minilab checkpoint (format {meta.get('format')!r})")
        model = {k[6:]: f[k] for k in f.files if k.startswith("model/")}
        optimizer = {k[10:]: f[k] for k in f.files if k.startswith("optimizer/")}
    return model, optimizer, meta

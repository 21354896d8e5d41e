"""Parameters, modules and containers: the bookkeeping under every layer.

A :class:`Module` computes ``forward(x)`` and, from what that call kept, ``backward(dout)``
returning the gradient with respect to ``x`` and *adding* the gradients of its parameters
into their ``.grad`` (so a parameter used twice, as in the multi-scale branches of §3.2,
collects the sum of both uses). There is no autograd: each layer's backward is written by
hand and checked against finite differences in the tests.

Names of parameters and buffers follow PyTorch/torchvision (``conv1.weight``,
``layer1.0.bn1.running_mean``, ``features.0.weight``), so weights saved from torchvision
load with :meth:`Module.load_state_dict`. Child modules are found from the attributes of a
module in the order they were set; attributes whose names start with ``_`` are private and
never searched (caches, shared copies).
"""
import copy
import pickle
import zipfile
from collections import OrderedDict, namedtuple
from pathlib import Path

import numpy as np

from .. import backend, validate

LoadResult = namedtuple("LoadResult", ["missing", "unexpected"])


class Parameter:
    """A trainable array and the gradient accumulated into it.

    Attributes
    ----------
    data : ndarray
        The value (float32 or float64, NumPy or CuPy).
    grad : ndarray
        Same shape and dtype as ``data``; backward passes *add* into it and
        :meth:`Module.zero_grad` resets it.
    trainable : bool
        ``False`` for parameters an optimiser must leave alone (frozen batch norm).
    """

    def __init__(self, data):
        self.data = data
        self.grad = backend.array_module(data).zeros_like(data)
        self.trainable = True

    @property
    def shape(self):
        return self.data.shape

    def __repr__(self):
        return f"Parameter(shape={tuple(self.data.shape)}, dtype={self.data.dtype})"


class Module:
    """Base class of every layer and model.

    Subclasses set their :class:`Parameter` s, child modules and buffers as attributes in
    ``__init__`` and implement ``forward(x)`` and ``backward(dout)``. Buffers are arrays that
    belong to the state but are not trained (batch-norm running statistics); a subclass
    lists their attribute names in ``buffers``.
    """

    buffers = ()

    def __init__(self):
        self.training = True

    def __call__(self, x):
        return self.forward(x)

    def forward(self, x):
        raise NotImplementedError(f"{type(self).__name__} does not define forward")

    def backward(self, dout):
        raise NotImplementedError(f"{type(self).__name__} does not define backward")

    def _saved(self, name="_cache"):
        """What the last ``forward`` kept for ``backward`` (the attribute ``name``), or a clear
        error when ``backward`` comes before any ``forward``."""
        value = getattr(self, name, None)
        if value is None:
            raise RuntimeError(f"{type(self).__name__}.backward() needs a forward() first: "
                               "it differentiates the last forward pass")
        return value

    # -- the module tree ------------------------------------------------------------------
    def children(self):
        """``(name, module)`` for each direct child, in the order they were set.

        A list or tuple attribute holding modules counts as children ``name.0``, ``name.1``...
        """
        for name, value in vars(self).items():
            if name.startswith("_"):
                continue
            if isinstance(value, Module):
                yield name, value
            elif isinstance(value, (list, tuple)) and value and all(isinstance(v, Module) for v in value):
                for i, v in enumerate(value):
                    yield f"{name}.{i}", v

    def named_modules(self, prefix=""):
        """``(path, module)`` for this module (path ``prefix``) and every module below it,
        depth first; paths join the children's names with dots (``layer1.0.conv1``)."""
        yield prefix, self
        for name, child in self.children():
            yield from child.named_modules(f"{prefix}.{name}" if prefix else name)

    def modules(self):
        """This module and every module below it, depth first."""
        return (m for _, m in self.named_modules())

    def named_parameters(self, prefix=""):
        """``(name, Parameter)`` pairs in state-dict order; a shared parameter appears once."""
        seen = set()
        for name, value in self._named_state(prefix):
            if isinstance(value, Parameter) and id(value) not in seen:
                seen.add(id(value))
                yield name, value

    def parameters(self):
        """Every :class:`Parameter`, each once, frozen ones (``trainable = False``) included:
        they are part of the state, and :class:`~minilab.train.SGD` skips them."""
        return [p for _, p in self.named_parameters()]

    def _named_state(self, prefix=""):
        for name, value in vars(self).items():
            if isinstance(value, Parameter) or (name in self.buffers and value is not None):
                yield prefix + name, value
        for name, child in self.children():
            yield from child._named_state(f"{prefix}{name}.")

    # -- modes and housekeeping -----------------------------------------------------------
    def train(self, mode=True):
        """Training mode (batch statistics, dropout on) for this module and all below it."""
        mode = validate.boolean("mode", mode)
        for m in self.modules():
            m.training = mode
        return self

    def eval(self):
        """Evaluation mode (running statistics, dropout off)."""
        return self.train(False)

    def zero_grad(self):
        """Set every parameter's ``.grad`` to zero."""
        for p in self.parameters():
            p.grad[...] = 0

    def to(self, device=None, dtype=None):
        """Move parameters and buffers to ``device`` (``"cpu"``/``"gpu"``/``"auto"``) and/or
        cast floating ones to ``dtype`` (float32 or float64, what the ops compute in), in place;
        returns ``self``."""
        if dtype is not None:
            dtype = validate.float_dtype("dtype", dtype)

        def convert(a):
            if device is not None:
                a = backend.to_device(a, device)
            if dtype is not None and a.dtype.kind == "f":
                a = a.astype(dtype)
            return a
        for m in self.modules():
            for name, value in vars(m).items():
                if isinstance(value, Parameter):
                    value.data = convert(value.data)
                    value.grad = backend.array_module(value.data).zeros_like(value.data)
                elif name in m.buffers and value is not None:
                    setattr(m, name, convert(value))
        return self

    def shared_copy(self):
        """A structural copy whose parameters and buffers are *the same objects* as these.

        Each copy keeps its own forward cache, so several copies can run forward on
        different inputs and then backward, all accumulating into the shared ``.grad``:
        the shared-weight branches of multi-scale inputs (§3.2).
        """
        clone = copy.copy(self)
        for name, value in vars(self).items():
            if isinstance(value, Module):
                setattr(clone, name, value.shared_copy())
            elif isinstance(value, (list, tuple)) and value and all(isinstance(v, Module) for v in value):
                setattr(clone, name, type(value)(v.shared_copy() for v in value))
        return clone

    # -- state ----------------------------------------------------------------------------
    def state_dict(self):
        """Ordered ``name -> array`` of every parameter and buffer: the arrays themselves, not
        copies, so they change as the model trains or loads."""
        return OrderedDict((name, value.data if isinstance(value, Parameter) else value)
                           for name, value in self._named_state())

    def load_state_dict(self, state, strict=True):
        """Copy arrays from ``state`` (a mapping ``name -> array``) into this module.

        Values are cast to the dtype of the array they replace, put on its device and
        copied into it (the arrays ``state_dict()`` returned now hold the new values).

        Parameters
        ----------
        state : mapping of str to array-like
            For example from :func:`load_weights`, or a torchvision ``state_dict()``
            converted to NumPy.
        strict : bool
            ``True``: any missing or unexpected key is an error. ``False``: they are
            skipped and returned (loading an ImageNet backbone without its ``fc``).

        Returns
        -------
        LoadResult
            ``(missing, unexpected)`` lists of keys.

        Raises
        ------
        KeyError
            ``strict`` and a key is missing or unexpected; the message lists them.
        ValueError
            A key whose array has the wrong shape, or holds NaN or infinity once cast, or a
            ``running_var`` with a negative entry, or an integer buffer given non-integers
            (always an error); nothing is loaded then.
        TypeError
            A key whose array does not hold real numbers (complex, strings), or a value that
            is not a NumPy or CuPy array, list or number (a torch tensor: pass ``.numpy()``).
        """
        own = OrderedDict(self._named_state())
        missing = [k for k in own if k not in state]
        unexpected = [k for k in state if k not in own]
        if strict and (missing or unexpected):
            raise KeyError(f"state_dict does not match {type(self).__name__}: "
                           f"missing keys {missing}, unexpected keys {unexpected}")
        wrong = [f"{k}: expected {tuple(own[k].shape)}, got {tuple(np.shape(state[k]))}"
                 for k in own if k in state and tuple(np.shape(state[k])) != tuple(own[k].shape)]
        if wrong:
            raise ValueError("state_dict has arrays of the wrong shape: " + "; ".join(wrong))
        # Everything is converted and checked before anything is written: a bad key loads nothing.
        loaded = {}
        for key, value in own.items():
            if key not in state:
                continue
            old = value.data if isinstance(value, Parameter) else value
            xp = backend.array_module(old)
            given = state[key]  # its dtype checked before CuPy sees it: CuPy refuses strings itself
            dtype = given.dtype if hasattr(given, "dtype") else np.asarray(given).dtype
            if not isinstance(dtype, np.dtype):  # a torch tensor's torch.dtype, say
                raise TypeError(f"state_dict[{key!r}] must be a NumPy or CuPy array, got {type(given).__name__} "
                                "(convert a torch tensor with .numpy())")
            if dtype.kind not in "biuf":
                raise TypeError(f"state_dict[{key!r}] must hold real numbers, got dtype {dtype}")
            given = xp.asarray(backend.to_numpy(given) if xp is np else given)
            # checked after the cast, which may overflow (1e39 in float32) or truncate (3.7 in an int)
            with np.errstate(over="ignore", invalid="ignore"):
                new = given.astype(old.dtype)
            if not bool(xp.isfinite(new).all()):
                raise ValueError(f"state_dict[{key!r}] has NaN or infinity (as {old.dtype})")
            if old.dtype.kind in "iu" and not bool((new == given).all()):
                raise ValueError(f"state_dict[{key!r}] must hold integers, got {given.dtype} values that are not")
            # checked here once, not at each forward (validate.finite_scans_off): variances are >= 0
            if key.endswith("running_var") and bool((new < 0).any()):
                raise ValueError(f"state_dict[{key!r}] has negative variances")
            loaded[key] = new
        # In place, parameters and buffers alike (as torch does): a shared copy of the model
        # sees the new values, and an earlier state_dict(), which holds these same arrays,
        # does too; keep a snapshot with {k: v.copy() for k, v in model.state_dict().items()}.
        for key, new in loaded.items():
            value = own[key]
            if isinstance(value, Parameter):
                value.data[...] = new
                value.grad[...] = 0
            else:
                value[...] = new
        return LoadResult(missing, unexpected)

    def extra_repr(self):
        """The layer's settings, shown inside its ``repr`` (none by default)."""
        return ""

    def __repr__(self):
        lines = [f"{type(self).__name__}({self.extra_repr()}"]
        for name, child in self.children():
            lines += [f"  ({name}): " + line if i == 0 else "  " + line
                      for i, line in enumerate(repr(child).splitlines())]
        return "\n".join(lines) + ")"

    # -- geometry -------------------------------------------------------------------------
    def receptive_field(self, rf=1, jump=1):
        """Compose this module's field of view onto ``(rf, jump)`` (input pixels).

        ``rf`` is the side of the input window one unit sees, ``jump`` the distance in
        input pixels between neighbouring units. A layer of (effective) kernel ``k`` and
        stride ``s`` maps them to ``(rf + (k - 1) * jump, jump * s)``. The default composes
        the children in order; layers with a kernel, and modules with parallel paths,
        override it.
        """
        for _, child in self.children():
            rf, jump = child.receptive_field(rf, jump)
        return rf, jump


class Sequential(Module):
    """Modules applied one after another; children are named ``0``, ``1``, ...

    ``backward`` runs the children's backward in reverse order. A subclass may instead
    name its layers as attributes (``children = Module.children``) and keep this chaining.
    """

    def __init__(self, *layers):
        super().__init__()
        self.layers = list(layers)

    def children(self):
        for i, layer in enumerate(self.layers):
            yield str(i), layer

    def __getitem__(self, i):
        return self.layers[i]

    def __len__(self):
        return len(self.layers)

    def __iter__(self):
        return iter(self.layers)

    def forward(self, x):
        for _, layer in self.children():
            x = layer.forward(x)
        return x

    def backward(self, dout):
        for _, layer in reversed(list(self.children())):
            dout = layer.backward(dout)
        return dout


# -- weight files -------------------------------------------------------------------------
FORMATS = (".npz", ".safetensors", ".pth", ".pt")


def save_weights(state, path):
    """Save a state dict (``name -> array``) to ``.npz``, ``.safetensors`` or ``.pth``.

    The format follows the file's suffix; ``.safetensors`` needs the ``safetensors``
    package and ``.pth``/``.pt`` needs torch.
    """
    path = Path(path)
    arrays = OrderedDict((k, np.array(backend.to_numpy(v), order="C")) for k, v in state.items())
    suffix = _suffix(path)
    if suffix == ".npz":  # np.savez's zip of .npy files, written here: np.savez(path, **arrays) would add
        # ".npz" to "w.NPZ" and take a key "file" or "allow_pickle" for its own argument
        with zipfile.ZipFile(path, "w") as archive:
            for key, value in arrays.items():
                with archive.open(key + ".npy", "w", force_zip64=True) as f:
                    np.lib.format.write_array(f, value, allow_pickle=False)
    elif suffix == ".safetensors":
        from safetensors.numpy import save_file
        save_file(dict(arrays), str(path))
    else:
        import torch
        torch.save(OrderedDict((k, torch.from_numpy(v)) for k, v in arrays.items()), path)


def load_weights(path):
    """Read a state dict (``name -> NumPy array``) from ``.npz``, ``.safetensors`` or ``.pth``.

    ``.pth``/``.pt`` files (torchvision's ImageNet weights) are read with
    ``torch.load(..., weights_only=True)`` and need torch; the file must hold a flat
    mapping of names to tensors (a ``state_dict()``). bfloat16 tensors, which NumPy has no
    type for, are read as float32. A file that cannot be read is a ``ValueError`` naming it
    and the reason.
    """
    path = Path(path)
    suffix = _suffix(path)
    if not path.is_file():
        raise FileNotFoundError(f"path: no such weight file {str(path)!r}")
    if suffix in (".pth", ".pt"):
        try:
            import torch
        except ImportError as e:
            raise ImportError(f"reading {path.name} needs torch; save the weights as .npz or "
                              ".safetensors instead") from e
    try:
        if suffix == ".npz":
            if not zipfile.is_zipfile(path):  # else NumPy would try it as a pickle and say so
                raise ValueError("an .npz file is a zip archive of .npy arrays; this is not a zip archive")
            with np.load(path, allow_pickle=False) as f:
                return OrderedDict((k, f[k]) for k in f.files)
        if suffix == ".safetensors":
            from safetensors.numpy import load_file
            return OrderedDict(load_file(str(path)))
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:  # weights_only met something else: a whole model, or damage
        raise ValueError(f"path: {path.name} is not a weights-only {suffix} state_dict ({e}); if it holds a "
                         "whole model, save the model's state_dict() instead") from e
    except Exception as e:  # a damaged or foreign file: name it, keep the parser's reason
        raise ValueError(f"path: {path.name} is not a readable {suffix} weight file ({type(e).__name__}: {e})") from e
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"path: {path.name} does not hold a flat state_dict of tensors")
    return OrderedDict((k, (v.float() if v.dtype == torch.bfloat16 else v).detach().cpu().numpy())
                       for k, v in state.items())


def _suffix(path):
    suffix = path.suffix.lower()
    if suffix not in FORMATS:
        raise ValueError(f"path must end in one of {FORMATS}, got {str(path)!r}")
    return suffix

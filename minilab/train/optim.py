"""Stochastic gradient descent with momentum and weight decay, in Caffe's form (§4).

DeepLab trains with SGD, momentum 0.9, weight decay 5e-4, and a learning rate ten times
larger on the last (classifier) layer. Caffe's update, the one the paper used, keeps the
learning rate *inside* the momentum buffer ("history"):

.. math::

    v_{t+1} = \\mu\\, v_t + \\eta\\, m_{lr} \\big(g_t + \\lambda\\, m_{wd}\\, w_t\\big), \\qquad
    w_{t+1} = w_t - v_{t+1}

with :math:`\\mu` the momentum, :math:`\\eta` the current base learning rate (from a
policy, :mod:`minilab.train.policies`), :math:`\\lambda` the weight decay and
:math:`m_{lr}, m_{wd}` the group's multipliers. (PyTorch's SGD keeps :math:`\\eta` outside
the buffer; the two coincide while :math:`\\eta` is constant and differ when it changes.)

A parameter whose ``trainable`` is False (frozen batch norm) is left alone: no gradient
step, no weight decay, no momentum; its velocity stays zero until it is made trainable again.

The optimiser's whole state is one velocity array per parameter (frozen ones included), in
the order of the groups and of the parameters within them; :meth:`SGD.state_dict` returns exactly that, so
a checkpoint can restore it and training continues bitwise as if never stopped.
"""
import numpy as np

from .. import backend, validate


class SGD:
    """SGD with momentum and L2 weight decay over parameter groups (Caffe's update).

    Parameters
    ----------
    groups : iterable of dict
        Each ``{"params": [Parameter, ...], "lr_mult": float, "decay_mult": float, "name": str}``;
        ``lr_mult`` and ``decay_mult`` (finite, >= 0) default to 1 and ``name`` to
        ``"group<i>"``. A plain iterable of parameters is one group. Each parameter may appear
        only once, in one group. A ``Parameter`` has ``.data`` and ``.grad``
        (arrays of one shape; ``.grad`` may be None, meaning zero) and may have
        ``.trainable``: when False, :meth:`step` skips it.
    momentum : float
        :math:`\\mu` in [0, 1) (0.9 in the paper); 0 gives plain SGD.
    weight_decay : float
        :math:`\\lambda`, finite and >= 0 (5e-4 in the paper).
    """

    def __init__(self, groups, momentum=0.9, weight_decay=5e-4):
        groups = list(groups)  # any iterable, a generator included
        if groups and not isinstance(groups[0], dict):
            groups = [{"params": groups}]
        if not groups:
            raise ValueError("groups must hold at least one parameter group, got none")
        self.momentum = validate.real("momentum", momentum, minimum=0)
        if self.momentum >= 1:
            raise ValueError(f"momentum must be in [0, 1), got {momentum}")
        self.weight_decay = validate.real("weight_decay", weight_decay, minimum=0)
        self.groups = []
        seen = set()
        for i, g in enumerate(groups):
            if not isinstance(g, dict):
                raise TypeError(f"groups[{i}] must be a dict, as groups[0] is, got {type(g).__name__}")
            if "params" not in g:
                raise ValueError(f"groups[{i}] must have a 'params' list, got keys {list(g)}")
            params = list(g["params"])
            if not params:
                raise ValueError(f"groups[{i}] has no parameters")
            for p in params:  # a parameter listed twice would move twice per step (torch refuses it too)
                if id(p) in seen:
                    raise ValueError(f"groups[{i}]['params'] holds a parameter already listed: "
                                     "each parameter must appear once, in one group")
                seen.add(id(p))
            # 0 is allowed: a frozen classifier (TrainConfig's classifier_lr_mult=0), no decay
            lr_mult, decay_mult = (validate.real(f"groups[{i}]['{m}']", g.get(m, 1.0), minimum=0)
                                   for m in ("lr_mult", "decay_mult"))
            self.groups.append({"name": g.get("name", f"group{i}"), "params": params,
                                "lr_mult": lr_mult, "decay_mult": decay_mult})
        self.velocity = [backend.array_module(p.data).zeros_like(p.data)
                         for g in self.groups for p in g["params"]]

    def parameters(self):
        """All parameters, in the order of the velocity buffers."""
        return [p for g in self.groups for p in g["params"]]

    def zero_grad(self):
        """Set every parameter's gradient to zero (in place when it exists)."""
        for p in self.parameters():
            if p.grad is None:
                p.grad = backend.array_module(p.data).zeros_like(p.data)
            else:
                p.grad[...] = 0

    def step(self, lr):
        """One update with base learning rate ``lr`` (the policy's value at this iteration) of
        every trainable parameter."""
        lr = validate.real("lr", lr, minimum=0)
        k = 0
        for g in self.groups:
            rate, decay = lr * g["lr_mult"], self.weight_decay * g["decay_mult"]
            for p in g["params"]:
                v = self.velocity[k]
                k += 1
                if not getattr(p, "trainable", True):  # frozen: not even weight decay moves it
                    continue
                grad = p.grad if p.grad is not None else 0.0
                # v <- mu v + rate (g + decay w);  w <- w - v   (all in place)
                v *= self.momentum
                v += rate * (grad + decay * p.data)
                p.data -= v

    def state_dict(self):
        """``{"velocity.<k>": array}`` for every parameter ``k`` (NumPy copies)."""
        return {f"velocity.{k}": backend.to_numpy(v).copy() for k, v in enumerate(self.velocity)}

    def load_state_dict(self, state):
        """Restore the velocities saved by :meth:`state_dict` (shapes must match)."""
        for k, v in enumerate(self.velocity):
            key = f"velocity.{k}"
            if key not in state:
                raise ValueError(f"state has no {key!r}: it was saved for another model")
            arr = np.asarray(state[key])
            if arr.shape != v.shape:
                raise ValueError(f"state[{key!r}] has shape {arr.shape}, expected {v.shape}")
            v[...] = backend.array_module(v).asarray(arr, dtype=v.dtype)
        extra = set(state) - {f"velocity.{k}" for k in range(len(self.velocity))}
        if extra:
            raise ValueError(f"state has unexpected keys {sorted(extra)[:5]}: it was saved for another model")

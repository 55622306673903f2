"""One guarded optimiser step, shared by every learner.

:class:`GuardedStep` owns what surrounds an update of one optimiser's parameters: the
forward pass in ``train.precision`` (``torch.autocast``), the float16 gradient scaler, the
loss share of one rank under DDP, the gradients' global-norm clipping and the cancelled
update when something is not finite. A learner only says what its loss is (a ``forward``
closure); :class:`~pyrogen.inference.variational.VariationalLearner` makes one such step per
call, :class:`~pyrogen.inference.adversarial.AdversarialLearner` one per player.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from pyrogen.inference.base import autocast, grad_scaler, poisoned, precision_dtype

#: what a ``forward`` closure returns: ``(loss, value)`` or ``(loss, value, extras)``
Forward = Callable[[], tuple[torch.Tensor, ...]]


@dataclass
class StepOutcome:
    """What a :class:`GuardedStep` did.

    ``value``: the forward's value (the loss to report); ``grad_norm``: the gradients' global
    norm before clipping (``None`` when the step was cancelled before it was computed);
    ``extras``: the forward's extra scalars, read with the value; ``stepped``: whether the
    optimiser was called (``False``: the update was cancelled and the gradients cleared)."""

    value: float
    grad_norm: float | None
    stepped: bool
    extras: list[float] = field(default_factory=list)


class GuardedStep:
    """One update of ``optimizer``'s parameters θ from a loss L computed by a closure.

    ``step(forward, share)`` runs, in this order:

    1. clears θ's gradients (``set_to_none``);
    2. ``loss, value[, extras] = forward()`` under ``torch.autocast`` in ``precision``'s dtype
       (``32``: none; ``"bf16"``; ``"16-mixed"``: float16); under autocast ``loss`` and
       ``value`` are cast to float32. ``loss`` is what is differentiated, ``value`` what is
       reported (often ``loss.detach()``; ``extras`` are more scalars to report, brought to
       the host in the same transfer);
    3. under DDP (``distributed``): ``loss ← poisoned(loss, value) · share``. The learner
       picks ``share`` so that DDP's average of the W ranks' gradients is the gradient of
       the loss of the union batch (a sum over this rank's examples: share = W; a mean over
       its n of the B examples: share = n W / B). A rank whose value is not finite makes
       its gradients NaN (:func:`~pyrogen.inference.base.poisoned`), so every rank sees
       non-finite averaged gradients and all cancel together;
    4. ``loss.backward(inputs=θ)`` (scaled by the float16 gradient scaler), when ``loss``
       requires a gradient (a closure may fill θ's gradients itself and return a constant);
    5. **cancels** the update (gradients cleared, optimiser not called) when ``value`` is not
       finite or, without a scaler, the gradients' global norm ‖∇θ‖₂ is not finite. The norm
       is computed where it is needed anyway (clipping, DDP: a poisoned rank's NaN reaches
       every rank through the gradients) or asked for (``check_gradients``); a plain float32
       step of one process checks the loss alone, which saves a pass over every gradient (a
       non-finite parameter is caught when the run loop checkpoints). With a scaler,
       overflowing gradients are the scaler's business: it skips the update and lowers its
       scale, and the step counts as made;
    6. clips: g ← g · min(1, clip_norm / (‖∇θ‖₂ + 1e-6)) when ``clip_norm`` is set;
    7. ``optimizer.step()`` (through the scaler with float16, then ``scaler.update()``).

    The scaler is created on the first float16 step, on θ's device; its state is
    :meth:`scaler_state` / :meth:`load_scaler_state` (checkpointed by the learner).
    """

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        precision: int | str = 32,
        clip_norm: float | None = None,
        check_gradients: bool = False,
    ) -> None:
        self.optimizer = optimizer
        self.dtype = precision_dtype(precision)
        self.clip_norm = clip_norm
        self.check_gradients = check_gradients
        #: under DDP (set by the learner's ``data_parallel``): poison and share the loss
        self.distributed = False
        self._scaler: torch.amp.GradScaler | None = None
        self._scaler_state: dict[str, Any] | None = None

    @property
    def params(self) -> list[torch.Tensor]:
        """θ: the optimiser's parameters, in its order."""
        return [p for group in self.optimizer.param_groups for p in group["params"]]

    @property
    def device(self) -> torch.device:
        return self.params[0].device if self.params else torch.device("cpu")

    @contextmanager
    def autocast(self) -> Iterator[None]:
        """``torch.autocast`` in this step's precision on θ's device (float32: a no-op)."""
        with autocast(self.dtype, self.device):
            yield

    @property
    def scaler(self) -> torch.amp.GradScaler | None:
        """The float16 gradient scaler once created (``None`` before and in other precisions)."""
        return self._scaler

    def _ensure_scaler(self) -> torch.amp.GradScaler | None:
        if self.dtype != torch.float16:
            return None
        if self._scaler is None:
            self._scaler = grad_scaler(self.device)
            if self._scaler_state:
                self._scaler.load_state_dict(self._scaler_state)
        return self._scaler

    def scaler_state(self) -> dict[str, Any] | None:
        """The gradient scaler's state (scale, growth tracker), or the one loaded and not yet
        used, or ``None``."""
        return self._scaler.state_dict() if self._scaler is not None else self._scaler_state

    def load_scaler_state(self, state: dict[str, Any]) -> None:
        self._scaler_state = state
        if self._scaler is not None:
            self._scaler.load_state_dict(state)

    def grad_norm(self) -> torch.Tensor:
        """‖∇θ‖₂ over the parameters that have a gradient."""
        return nn.utils.get_total_norm([p.grad for p in self.params if p.grad is not None])

    def step(self, forward: Forward, share: float = 1.0) -> StepOutcome:
        """One guarded update (see the class docstring for the rules)."""
        opt, params = self.optimizer, self.params
        opt.zero_grad(set_to_none=True)
        scaler = self._ensure_scaler()
        with self.autocast():
            out = forward()
        loss, value = out[0], out[1]
        extras: Sequence[torch.Tensor] = out[2] if len(out) > 2 else ()
        if self.dtype is not None:
            loss, value = loss.float(), value.float()
        if self.distributed:  # every rank joins the all-reduce, finite or not
            loss = poisoned(loss, value) * share
        if loss.requires_grad:
            (loss if scaler is None else scaler.scale(loss)).backward(inputs=params)
        norm: torch.Tensor | None = None
        needs_norm = self.check_gradients or self.distributed or self.clip_norm is not None
        if scaler is None and needs_norm:
            norm = self.grad_norm()
            value_f, norm_f, *extras_f = _to_host([value, norm, *extras])
            finite = math.isfinite(value_f) and math.isfinite(norm_f)
        elif scaler is None:
            value_f, *extras_f = _to_host([value, *extras])
            norm_f, finite = None, math.isfinite(value_f)
        else:
            value_f, *extras_f = _to_host([value, *extras])
            finite = math.isfinite(value_f)
            if finite:
                scaler.unscale_(opt)
                norm = self.grad_norm()
            norm_f = None
        if not finite:
            opt.zero_grad(set_to_none=True)
            return StepOutcome(value_f, norm_f, False, extras_f)
        if self.clip_norm is not None:
            nn.utils.clip_grads_with_norm_(params, self.clip_norm, norm)
        if scaler is None:
            opt.step()
        else:  # skips the update when the gradients overflowed
            if self.clip_norm is not None:
                norm_f = float(norm)
            scaler.step(opt)
            scaler.update()
        return StepOutcome(value_f, norm_f, True, extras_f)


def _to_host(tensors: list[torch.Tensor]) -> list[float]:
    """The scalars' values as Python floats, in one device-to-host transfer (float64, so
    each float32 value is read exactly)."""
    if len(tensors) == 1:  # the common case: the loss alone
        return [float(tensors[0].detach().reshape(()).item())]
    device = next((t.device for t in tensors if t.device.type != "cpu"), torch.device("cpu"))
    dtype = torch.float32 if device.type == "mps" else torch.float64
    return torch.stack([t.detach().reshape(()).to(device, dtype) for t in tensors]).tolist()

"""The interface every learning method offers to the run loop.

A *learner* owns one generative model, whatever else it needs to learn it (a guide, a
discriminator) and its optimisers. The run loop in :mod:`pyrogen.training` only calls the
methods below, so VAEs, flows and GANs share one loop, one checkpoint format and one resume.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Protocol, runtime_checkable

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel


@runtime_checkable
class Learner(Protocol):
    #: the trained generative process (a VAE, Flow or GAN module)
    model: nn.Module
    #: every trainable module (model, guide, discriminator, ...), one tree
    module: nn.Module

    def step(self, x: torch.Tensor, y: torch.Tensor | None = None) -> dict[str, float]:
        """One optimisation step on a mini-batch. The result holds at least ``loss``
        (per example); a non-finite loss leaves the parameters untouched."""
        ...

    @torch.no_grad()
    def evaluate(self, x: torch.Tensor, y: torch.Tensor | None = None) -> dict[str, float]:
        """Per-example validation metrics on a batch (summable: means over the batch)."""
        ...

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to resume: parameters, optimiser states, counters."""
        ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...

    @property
    def optimizers(self) -> list[torch.optim.Optimizer]:
        """Every optimiser (for learning-rate schedules)."""
        ...

    # Data parallelism (pyrogen's learners; the run loop calls them under torchrun):
    # ``data_parallel()`` wraps what the learner differentiates in DDP, ``rank_state()`` /
    # ``load_rank_state(state)`` hold what differs between ranks beyond the random states,
    # and ``global_batch_size`` is set to the examples of each step over all ranks.


def lr_factor(
    schedule: str, step: int, total_steps: int, steps_per_epoch: int, decay: float, floor: float
) -> float:
    """The factor f of ``optim.schedule`` at ``step`` (see :class:`~pyrogen.config.OptimConfig`):
    a function of the step alone, so a resumed run follows the same schedule."""
    if schedule == "constant":
        return 1.0
    if schedule == "cosine":
        t = min(1.0, step / max(1, total_steps))
        return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * t))
    if schedule == "exponential":
        return max(floor, decay ** (step / max(1, steps_per_epoch)))
    raise ValueError(f"unknown schedule {schedule!r} (allowed: constant, cosine, exponential)")


def set_lr_factor(optimizers: list[torch.optim.Optimizer], factor: float) -> None:
    """Set every parameter group's lr to ``factor`` times its initial lr (kept in the group
    as ``initial_lr``, as torch's schedulers do)."""
    for opt in optimizers:
        for group in opt.param_groups:
            group.setdefault("initial_lr", group["lr"])
            group["lr"] = group["initial_lr"] * factor


def make_optimizer(
    params: Any,
    name: str,
    lr: float,
    betas: tuple[float, float] | list[float] = (0.9, 0.999),
    momentum: float = 0.0,
    weight_decay: float = 0.0,
) -> torch.optim.Optimizer:
    """A plain ``torch.optim`` optimiser from config values (Adam is fused where it can be)."""
    params = [p for p in params if p.requires_grad]
    if name in ("adam", "adamw"):
        cls = torch.optim.Adam if name == "adam" else torch.optim.AdamW
        fused = all(p.device.type in ("cpu", "cuda") for p in params) and bool(params)
        return cls(params, lr=lr, betas=tuple(betas), weight_decay=weight_decay, fused=fused)
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)
    if name == "rmsprop":
        return torch.optim.RMSprop(params, lr=lr, momentum=momentum, weight_decay=weight_decay)
    raise ValueError(f"unknown optimiser {name!r} (allowed: adam, adamw, sgd, rmsprop)")


# ---------------------------------------------------------------------- precision and DDP
#: ``train.precision`` values and the autocast dtype of each (``None``: float32, no autocast)
PRECISIONS: dict[int | str, torch.dtype | None] = {
    32: None,
    "32": None,
    "bf16": torch.bfloat16,
    "16-mixed": torch.float16,
}


def precision_dtype(precision: int | str) -> torch.dtype | None:
    """The ``torch.autocast`` dtype of a ``train.precision`` value (``None`` for 32)."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be 32, bf16 or 16-mixed, got {precision!r}")
    return PRECISIONS[precision]


@contextmanager
def autocast(dtype: torch.dtype | None, device: torch.device) -> Iterator[None]:
    """``torch.autocast`` in ``dtype`` on ``device``'s type; a no-op for float32."""
    if dtype is None:
        yield
        return
    with torch.autocast(device.type, dtype=dtype):
        yield


def grad_scaler(device: torch.device) -> torch.amp.GradScaler:
    """The gradient scaler of float16 training (losses scaled up so that small float16
    gradients do not flush to zero; steps with overflowing gradients are skipped)."""
    return torch.amp.GradScaler(device.type)


def device_of(module: nn.Module) -> torch.device:
    for t in (*module.parameters(), *module.buffers()):
        return t.device
    return torch.device("cpu")


def poisoned(loss: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    """``loss`` whose gradient is NaN everywhere when ``value`` is not finite. Under DDP a rank
    whose loss is not finite must still join the gradient all-reduce (or the others would
    wait for it forever); its NaN gradients then reach every rank, so every rank sees
    non-finite averaged gradients and all skip the update together."""
    ok = torch.isfinite(value.detach()).to(loss.device)
    return loss * torch.where(ok, 1.0, float("nan")).to(loss.dtype)


def data_parallel(wrapper: nn.Module, broadcast_buffers: bool = True) -> nn.Module:
    """``DistributedDataParallel(wrapper)`` over the default process group, on the device of
    ``wrapper``'s parameters (``device_ids`` for a GPU). Constructing it broadcasts rank 0's
    parameters and buffers, so every rank starts from the same state."""
    device = device_of(wrapper)
    # torch >= 2.13 renamed broadcast_buffers (which also skipped the initial sync when off)
    options = inspect.signature(DistributedDataParallel).parameters
    key = "forward_sync_buffers" if "forward_sync_buffers" in options else "broadcast_buffers"
    return DistributedDataParallel(
        wrapper, device_ids=[device] if device.type == "cuda" else None, **{key: broadcast_buffers}
    )


class ZeroValue(torch.autograd.Function):
    """0 in the forward pass, the identity in the backward pass: carries the gradient of a
    surrogate whose value is meaningless (Pyro's tail-adaptive loss is +inf by design)."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:  # noqa: ARG004
        return torch.zeros_like(x)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:  # noqa: ARG004
        return grad

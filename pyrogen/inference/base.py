"""The interface every learning method offers to the run loop.

A *learner* owns one generative model, whatever else it needs to learn it (a guide, a
discriminator) and its optimisers. The run loop in :mod:`pyrogen.training` only calls the
methods below, so VAEs, flows and GANs share one loop, one checkpoint format and one resume.
"""

from __future__ import annotations

import math
from typing import Any, Protocol, runtime_checkable

import torch
from torch import nn


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

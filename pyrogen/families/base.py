"""What every family tells the rest of pyrogen: how to build its model and learner from a
config, what it evaluates and which figures it draws.

The run loop, evaluation, ``compare`` and the CLI ask :data:`pyrogen.families.FAMILIES`
(``FAMILIES[cfg.family]``) and never test a family's name themselves.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from pyrogen.config import Config
from pyrogen.data import Dataset
from pyrogen.inference.base import Learner


class Family:
    """One family of deep generative models (subclasses: VAE, flow, GAN)."""

    #: ``model.family`` value
    name: str = ""
    #: what the family's ``log-likelihood`` columns mean, for tables
    description: str = ""
    #: whether ``evaluate`` computes extra bounds of Pyro's estimators (``evaluation.bounds``)
    has_bounds: bool = False

    # ------------------------------------------------------------------ config -> objects
    def validate(self, cfg: Config) -> None:
        """Checks that need the modelling code (registry names, compatible pairs), before
        any data is read. Raises :class:`ConfigError` naming the keys."""

    def check_data(self, cfg: Config, data: Dataset) -> None:
        """Checks between the config and the data (shape vs architecture, binary data under
        a Bernoulli likelihood). Raises :class:`ConfigError` naming the keys."""

    def build_model(self, cfg: Config, data: Dataset) -> nn.Module:  # pragma: no cover
        """The generative process for examples shaped like ``data``'s, from plain arguments."""
        raise NotImplementedError

    def build_learner(self, cfg: Config, model: nn.Module) -> Learner:  # pragma: no cover
        """The family's learning method with its optimiser(s)."""
        raise NotImplementedError

    def estimate_parameters(self, cfg: Config, data: Dataset) -> int:
        """About how many parameters :meth:`build_model` would allocate (the sum of the weight
        matrices of its networks), computed from the config before allocating anything."""
        return 0

    def networks(self, model: nn.Module) -> list[nn.Module]:
        """The networks ``train.compile`` compiles (the rest is Pyro's own code)."""
        return []

    def uses_labels(self, cfg: Config) -> bool:
        """Whether the model takes the class labels ``y`` (a class-conditional flow)."""
        return False

    # ------------------------------------------------------------------ evaluation
    def evaluate(self, run: Any, x: torch.Tensor, y: torch.Tensor | None, options: Any) -> dict:
        """The family's own log-likelihood estimates of the stored examples ``x`` (a dict of
        ``{name: {"mean", "stderr", "n", ...}}``); Parzen windows are common to all."""
        return {}

    def figures(self, run: Any, out_dir: Path) -> list[Path]:
        """Figures beyond the common samples figure."""
        return []


def set_options(optim: Any) -> dict[str, Any]:
    """The optimiser settings a config leaves null to the learner (``optim.lr``,
    ``optim.betas``) that it does set: the learner's constructor keeps its own defaults for
    the others, so a config and ``Learner(model)`` build the same optimiser."""
    return {k: getattr(optim, k) for k in ("lr", "betas") if getattr(optim, k) is not None}


def mlp_size(widths: list[int]) -> int:
    """Weights and biases of an MLP through ``widths`` (input, hidden..., output)."""
    return sum(a * b + b for a, b in zip(widths[:-1], widths[1:], strict=True))

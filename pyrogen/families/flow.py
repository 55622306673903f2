"""The flow family: config -> a list of Pyro transform modules -> :class:`Flow`; maximum
likelihood through the variational path with an empty guide; exact log-likelihood and
bits/dim."""

from __future__ import annotations

from typing import Any

from torch import nn

from pyrogen.config import Config, ConfigError
from pyrogen.data import Dataset
from pyrogen.families.base import Family, check_class_labels, conditioning, learner_options
from pyrogen.inference.variational import VariationalLearner
from pyrogen.models.context import context_size
from pyrogen.models.flow import Flow, conditioner_networks, make_flow
from pyrogen.registry import FLOWS, check_name


def architectures(fact: str) -> list[str]:
    """The registered flow architectures whose ``fact`` (e.g. ``"conditional"``) is true, in
    the order they were registered."""
    return [name for name, arch in FLOWS.items() if getattr(arch, fact)]


#: the ``model`` keys a flow architecture may take as options (by the same names)
MODEL_OPTIONS = ("num_layers", "hidden_sizes", "count_bins", "bound", "normalization",
                 "permutation", "levels", "steps_per_level")  # fmt: skip


class FlowFamily(Family):
    name = "flow"
    description = "normalizing flow: exact log p(x) (and bits/dim for images)"
    no_latent_kl = "a flow has no latent variables: it is fitted by exact maximum likelihood"
    validation_metrics = {"log_prob": "max"}
    monitor = "log_prob"

    def validate(self, cfg: Config) -> None:
        m = cfg.model
        check_name(FLOWS, m.flow, "model.flow")
        arch = FLOWS.get(m.flow)
        if not arch.invertible:
            raise ConfigError(
                f"model.flow={m.flow} has no inverse, so it cannot score (or be fitted to) data "
                f"it did not sample; use one of {', '.join(architectures('invertible'))}"
            )
        if cfg.train.precision != 32:
            raise ConfigError(
                f"train.precision={cfg.train.precision}: a flow is trained on its exact "
                "log-likelihood, a sum of log-determinants over every layer and dimension, "
                "which bfloat16/float16 round to 2-3 significant digits (a MAF on digits "
                "scored examples 0.06 nats off on average in bf16, more in higher dimension): "
                "flows train in float32 (train.precision=32)"
            )
        multiscale = [name for name, a in FLOWS.items() if "levels" in a.options]
        if m.levels > 1 and "levels" not in arch.options:
            raise ConfigError(
                f"model.levels={m.levels}: model.flow={m.flow} is single-scale; multi-scale "
                f"flows are {', '.join(multiscale)}"
            )
        if m.steps_per_level is not None and "steps_per_level" not in arch.options:
            raise ConfigError(
                f"model.steps_per_level={m.steps_per_level} applies to {', '.join(multiscale)}; "
                f"model.flow={m.flow} takes model.num_layers"
            )
        if m.levels > 1 and m.conditional:
            raise ConfigError(
                f"model.levels={m.levels}: multi-scale flows have no conditional form "
                "yet; set model.conditional=false or model.levels=1"
            )
        if m.conditional_base and not m.conditional:
            raise ConfigError(
                "model.conditional_base=true makes the base p(z | c) of a conditional flow; set "
                "model.conditional=true too"
            )
        if m.conditional and not arch.conditional:
            raise ConfigError(
                f"model.conditional=true: model.flow={m.flow} has no conditional form "
                f"here; use one of {', '.join(architectures('conditional'))}"
            )

    def check_data(self, cfg: Config, data: Dataset) -> None:
        m = cfg.model
        if len(data.event_shape) != 1:
            raise ConfigError(
                f"flows act on vectors; data.flatten=false keeps examples of shape "
                f"{tuple(data.event_shape)}: set data.flatten=true"
            )
        problem = FLOWS.get(m.flow).problem(data.num_dims, **self.options(cfg, data))
        if problem:
            raise ConfigError(problem)
        check_class_labels(cfg, data)

    def options(self, cfg: Config, data: Dataset) -> dict[str, Any]:
        """The ``model`` keys (and the data's ``image_shape``) that the configured
        architecture takes: those named like its options."""
        m = cfg.model
        values = {k: getattr(m, k) for k in MODEL_OPTIONS}
        values["hidden_sizes"] = list(m.hidden_sizes)
        values["image_shape"] = data.image_shape
        accepted = FLOWS.get(m.flow).options
        return {k: v for k, v in values.items() if k in accepted}

    def estimate_parameters(self, cfg: Config, data: Dataset) -> int:
        m = cfg.model
        context = context_size(**conditioning(cfg, data))
        options = {k: getattr(m, k) for k in MODEL_OPTIONS}
        options["image_shape"] = data.image_shape
        base = 2 * data.num_dims * (context + 1) if m.conditional_base else 0  # [μ, log σ] = Wc + b
        return base + FLOWS.get(m.flow).num_parameters(data.num_dims, context=context, **options)

    def uses_labels(self, cfg: Config) -> bool:
        return bool(cfg.model.conditional)

    def build_model(self, cfg: Config, data: Dataset) -> Flow:
        m = cfg.model
        options = self.options(cfg, data)
        c = conditioning(cfg, data)
        return make_flow(m.flow, data.num_dims, **c, conditional_base=m.conditional_base, **options)

    def networks(self, model: nn.Module) -> list[nn.Module]:
        """The conditioner networks of the layers (coupling and MADE networks)."""
        return [net for layer in model.layers for net in conditioner_networks(layer)]

    def build_learner(self, cfg: Config, model: nn.Module) -> VariationalLearner:
        return VariationalLearner(model, **learner_options(cfg))

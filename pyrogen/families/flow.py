"""The flow family: config -> a list of Pyro transform modules -> :class:`Flow`; maximum
likelihood through the variational path with an empty guide; exact log-likelihood and
bits/dim."""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any

import torch
from torch import nn

from pyrogen.config import Config, ConfigError
from pyrogen.data import Dataset
from pyrogen.families.base import Family, mlp_size, set_options
from pyrogen.inference.variational import VariationalLearner
from pyrogen.models.flow import Flow, make_flow
from pyrogen.registry import FLOWS, check_name

#: architectures without a closed-form inverse: they cannot score data, so cannot be fitted
NOT_INVERTIBLE = ("planar", "radial")
#: architectures with a class-conditional form in Pyro
CONDITIONAL = ("realnvp", "maf", "iaf", "nsf_autoregressive")
#: architectures whose layers are MADE networks (hidden layers at least as wide as the data)
MADE = ("maf", "iaf", "nsf_autoregressive")


class FlowFamily(Family):
    name = "flow"
    description = "normalizing flow: exact log p(x) (and bits/dim for images)"
    validation_metrics = {"log_prob": "max"}
    monitor = "log_prob"

    def validate(self, cfg: Config) -> None:
        m = cfg.model
        check_name(FLOWS, m.flow, "model.flow")
        if m.flow in NOT_INVERTIBLE:
            raise ConfigError(
                f"model.flow={m.flow} has no inverse, so it cannot score (or be fitted to) data "
                "it did not sample; use realnvp, maf, nsf_coupling, nsf_autoregressive or glow"
            )
        if cfg.train.precision != 32:
            raise ConfigError(
                f"train.precision={cfg.train.precision}: a flow is trained on its exact "
                "log-likelihood, a sum of log-determinants over every layer and dimension, "
                "which bfloat16/float16 round to 2-3 significant digits (a MAF on digits "
                "scored examples 0.06 nats off on average in bf16, more in higher dimension): "
                "flows train in float32 (train.precision=32)"
            )
        if m.conditional and m.flow not in CONDITIONAL:
            raise ConfigError(
                f"model.conditional=true: model.flow={m.flow} has no class-conditional form "
                f"here; use one of {', '.join(CONDITIONAL)}"
            )

    def check_data(self, cfg: Config, data: Dataset) -> None:
        m = cfg.model
        if len(data.event_shape) != 1:
            raise ConfigError(
                f"flows act on vectors; data.flatten=false keeps examples of shape "
                f"{tuple(data.event_shape)}: set data.flatten=true"
            )
        d = data.num_dims
        if m.flow in MADE and min(m.hidden_sizes) < d:
            raise ConfigError(
                f"model.hidden_sizes={list(m.hidden_sizes)}: model.flow={m.flow} uses MADE "
                f"networks, whose hidden layers must be at least as wide as the data ({d} "
                f"dimensions); use e.g. model.hidden_sizes=[{max(2 * d, 64)}]"
            )
        if m.flow == "glow":
            shape = data.image_shape
            if shape is None:
                raise ConfigError("model.flow=glow needs image data; these data are points")
            if shape[1] % 2 or shape[2] % 2:
                raise ConfigError(
                    f"model.flow=glow squeezes 2x2 pixels: height and width must be even, got "
                    f"{shape[1]}x{shape[2]}"
                )
        if m.conditional:
            if data.num_classes is None:
                raise ConfigError(
                    f"model.conditional=true needs class labels; data.name={data.name} has none"
                )
            if data.num_classes > m.num_classes:
                raise ConfigError(
                    f"model.num_classes={m.num_classes} but data.name={data.name} has "
                    f"{data.num_classes} classes"
                )

    def estimate_parameters(self, cfg: Config, data: Dataset) -> int:
        m = cfg.model
        d = data.num_dims
        per_dim = 4 * m.count_bins if m.flow.startswith("nsf") else 2
        context = m.num_classes if m.conditional else 0
        one = mlp_size([d + context, *m.hidden_sizes, per_dim * d])
        if m.flow == "glow":  # 3x3 convolutions over channels
            c = 4 * (data.image_shape[0] if data.image_shape else 1)
            w = m.hidden_sizes[0]
            one = 9 * c * w + w * w + 9 * w * 2 * c
        return m.num_layers * one

    def uses_labels(self, cfg: Config) -> bool:
        return bool(cfg.model.conditional)

    def build_model(self, cfg: Config, data: Dataset) -> Flow:
        m = cfg.model
        num_classes = m.num_classes if m.conditional else None
        options = {
            "num_layers": m.num_layers,
            "hidden_sizes": list(m.hidden_sizes),
            "count_bins": m.count_bins,
            "bound": m.bound,
            "normalization": m.normalization,
            "permutation": m.permutation,
            "image_shape": data.image_shape,
        }
        accepted = inspect.signature(FLOWS.get(m.flow)).parameters
        options = {k: v for k, v in options.items() if k in accepted}
        return make_flow(m.flow, data.num_dims, num_classes=num_classes, **options)

    def networks(self, model: nn.Module) -> list[nn.Module]:
        """The hyper-networks of the layers (coupling and MADE networks)."""
        out = []
        for layer in model.layers:
            inner = getattr(layer, "layer", layer)
            for name in ("nn", "arn", "hypernet"):
                net = getattr(inner, name, None)
                if isinstance(net, nn.Module):
                    out.append(net)
        return out

    def build_learner(self, cfg: Config, model: nn.Module) -> VariationalLearner:
        o = cfg.optim
        return VariationalLearner(
            model,
            optim=o.name,
            momentum=o.momentum,
            weight_decay=o.weight_decay,
            clip_norm=o.clip_norm,
            precision=cfg.train.precision,
            **set_options(o),
        )

    def evaluate(self, run: Any, x: torch.Tensor, y: torch.Tensor | None, options: Any) -> dict:
        from pyrogen.evaluation.flow_metrics import flow_log_likelihood

        return flow_log_likelihood(run.model, x, run.dataset, y=y, seed=options.seed)

    def figures(self, run: Any, out_dir: Path) -> list[Path]:
        ds = run.dataset
        if ds.kind != "points" or ds.num_dims != 2:
            return []
        from pyrogen.evaluation import plots

        path = out_dir / "density.png"
        lim = float(ds.test.abs().max()) * 1.1
        plots.save_density(run.model.log_prob, path, data=ds.test, lim=lim, device=ds.device)
        return [path]

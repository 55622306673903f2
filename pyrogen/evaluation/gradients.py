"""Gradient estimators of the ELBO, measured.

For a guide q_φ(z | x) the ELBO's gradient can be estimated two ways:

* reparameterisation: z = g_φ(ε), ε ~ p(ε), and
  ∇_φ ELBO = E_ε[∇_φ (log p(x, g_φ(ε)) − log q_φ(g_φ(ε) | x))];
* score function (REINFORCE): ∇_φ ELBO = E_q[(log p(x, z) − log q_φ(z | x) − b) ∇_φ log q_φ(z | x)]
  (+ the direct term E_q[∇_φ(−log q_φ)], zero in expectation), unbiased for any baseline b
  that does not depend on z: none, a decaying average of past costs, or a neural network
  b(x) fitted to the cost by least squares.

:func:`gradient_estimates` draws N independent estimates of ∇_φ ELBO from one estimator, so
that their mean, variance and signal-to-noise ratio |mean| / std can be compared; it turns
any guide of Normal sites into its score-function twin (:class:`ScoreFunctionSites`) and
uses Pyro's own baselines (``infer={"baseline": ...}``) through ``TraceGraph_ELBO``.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pyro
import pyro.distributions as dist
import torch
from pyro.infer import Trace_ELBO, TraceGraph_ELBO
from pyro.poutine.messenger import Messenger
from pyro.poutine.subsample_messenger import _Subsample
from torch import nn

from pyrogen.inference.guides import NonReparameterizedNormal
from pyrogen.inference.variational import ParamStoreView

ESTIMATORS = {
    "reparam": "reparameterised Trace_ELBO",
    "score_function": "score function, no baseline",
    "score_function_avg": "score function, decaying-average baseline",
    "score_function_nn": "score function, neural baseline",
}


def _non_reparameterised(fn: dist.Distribution) -> dist.Distribution:
    """The same Normal (or Independent Normal) without reparameterised samples."""
    if isinstance(fn, dist.Independent):
        return _non_reparameterised(fn.base_dist).to_event(fn.reinterpreted_batch_ndims)
    if isinstance(fn, dist.Normal):
        return NonReparameterizedNormal(fn.loc, fn.scale)
    raise ValueError(
        f"the score-function twin is defined for Normal guide sites, not {type(fn).__name__}"
    )


class ScoreFunctionSites(Messenger):
    """Make every latent sample site of a guide non-reparameterisable and attach a baseline
    (``None``, ``{"use_decaying_avg_baseline": True, ...}`` or ``{"nn_baseline": ...}``)."""

    def __init__(self, baseline: dict[str, Any] | None = None) -> None:
        super().__init__()
        self.baseline = baseline

    def _pyro_sample(self, msg: dict[str, Any]) -> None:
        if msg["is_observed"] or isinstance(msg["fn"], _Subsample):  # a plate's own site
            return
        msg["fn"] = _non_reparameterised(msg["fn"])
        if self.baseline is not None:
            msg["infer"] = {**msg.get("infer", {}), "baseline": dict(self.baseline)}


class NeuralBaseline(nn.Module):
    """b(x): a small MLP predicting the downstream cost of each example."""

    def __init__(self, in_dim: int, hidden: int = 64) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(in_dim, hidden), nn.Tanh(), nn.Linear(hidden, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x.reshape(x.shape[0], -1)).squeeze(-1)


def _estimator_guide(guide: Callable, estimator: str, x: torch.Tensor, nn_baseline=None):
    if estimator == "reparam":
        return guide
    if estimator == "score_function":
        baseline = None
    elif estimator == "score_function_avg":
        baseline = {"use_decaying_avg_baseline": True, "baseline_beta": 0.9}
    elif estimator == "score_function_nn":
        baseline = {"nn_baseline": nn_baseline, "nn_baseline_input": x}
    else:
        raise ValueError(f"unknown estimator {estimator!r} (allowed: {', '.join(ESTIMATORS)})")

    def sf_guide(*args: Any, **kwargs: Any) -> Any:
        with ScoreFunctionSites(baseline):
            return guide(*args, **kwargs)

    return sf_guide


def default_groups(guide: nn.Module) -> dict[str, list[torch.Tensor]]:
    """One group per named parameter tensor of the guide."""
    return {name: [p] for name, p in guide.named_parameters() if p.requires_grad}


def gradient_estimates(
    model: Callable,
    guide: nn.Module,
    x: torch.Tensor,
    estimator: str = "reparam",
    num_particles: int = 1,
    num_samples: int = 100,
    groups: dict[str, list[torch.Tensor]] | None = None,
    seed: int = 0,
    warmup: int = 200,
) -> dict[str, torch.Tensor]:
    """``num_samples`` independent estimates of ∇_φ ELBO (the ascent direction), per group:
    a dict ``{group: Tensor(num_samples, group size)}``.

    Baselines are warmed up first on the same batch (``warmup`` steps: the decaying average
    converges, the neural baseline is fitted by least squares), as they would be after some
    training; the guide's parameters are never changed.
    """
    groups = groups or default_groups(guide)
    params = [p for ps in groups.values() for p in ps]
    pyro.clear_param_store()
    pyro.set_rng_seed(seed)
    nn_baseline = None
    name = f"gradients_{id(guide)}"
    view_model = ParamStoreView(model, name + "_model") if isinstance(model, nn.Module) else model
    if estimator == "reparam":
        elbo = Trace_ELBO(
            num_particles=num_particles, vectorize_particles=True, max_plate_nesting=1
        )
    else:
        # Pyro's baselines predict one cost per example: particles run sequentially
        elbo = TraceGraph_ELBO(num_particles=num_particles, max_plate_nesting=1)
    if estimator == "score_function_nn":
        nn_baseline = NeuralBaseline(x[0].numel()).to(x.device)
    sf_guide = _estimator_guide(guide, estimator, x, nn_baseline)

    def run_guide(*args: Any) -> Any:
        pyro.module(name + "_guide", guide)
        if nn_baseline is not None:
            pyro.module(name + "_baseline", nn_baseline)
        return sf_guide(*args)

    if estimator in ("score_function_avg", "score_function_nn"):
        opt = torch.optim.Adam(nn_baseline.parameters(), lr=1e-2) if nn_baseline else None
        for _ in range(warmup):
            elbo.loss_and_grads(view_model, run_guide, x)
            if opt is not None:
                opt.step()
                opt.zero_grad()
    out: dict[str, list[torch.Tensor]] = {g: [] for g in groups}
    for _ in range(num_samples):
        for p in params:
            p.grad = None
        elbo.loss_and_grads(view_model, run_guide, x)
        for g, ps in groups.items():
            grads = [
                torch.zeros_like(p).flatten() if p.grad is None else -p.grad.flatten() for p in ps
            ]
            out[g].append(torch.cat(grads))
    for p in params:
        p.grad = None
    pyro.clear_param_store()
    return {g: torch.stack(v) for g, v in out.items()}


def summarise(estimates: torch.Tensor) -> dict[str, float]:
    """Mean (its norm), variance (mean over coordinates) and SNR = mean over coordinates of
    |mean| / std of N gradient estimates of shape (N, size)."""
    mean, std = estimates.mean(0), estimates.std(0)
    live = std > 0
    snr = (mean[live].abs() / std[live]).mean().item() if live.any() else float("nan")
    return {
        "mean_norm": mean.norm().item(),
        "variance": estimates.var(0).mean().item(),
        "snr": snr,
    }


def gradient_variance_table(
    model: Callable,
    guide: nn.Module,
    x: torch.Tensor,
    estimators: Sequence[str] = tuple(ESTIMATORS),
    particles: Sequence[int] = (1, 4, 16),
    num_samples: int = 200,
    groups: dict[str, list[torch.Tensor]] | None = None,
    seed: int = 0,
    warmup: int = 200,
) -> list[dict[str, Any]]:
    """One row per (estimator, particles, group) with mean_norm, variance and snr."""
    rows = []
    for est in estimators:
        for k in particles:
            draws = gradient_estimates(model, guide, x, est, k, num_samples, groups, seed, warmup)
            for group, g in draws.items():
                rows.append({"estimator": est, "particles": k, "group": group, **summarise(g)})
    return rows


def format_table(rows: list[dict[str, Any]]) -> str:
    """The rows as a Markdown table."""
    lines = [
        "| estimator | particles | group | ‖mean‖ | variance | SNR |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['estimator']} | {r['particles']} | {r['group']} | {r['mean_norm']:.4g} "
            f"| {r['variance']:.4g} | {r['snr']:.3g} |"
        )
    return "\n".join(lines)


def save_variance_plot(rows: list[dict[str, Any]], path: str | os.PathLike) -> None:
    """Variance (summed over groups) against the number of particles, log-log."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 4))
    for est in dict.fromkeys(r["estimator"] for r in rows):
        ks = sorted({r["particles"] for r in rows if r["estimator"] == est})
        var = [
            sum(r["variance"] for r in rows if r["estimator"] == est and r["particles"] == k)
            for k in ks
        ]
        ax.plot(ks, var, marker="o", label=ESTIMATORS.get(est, est))
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("particles")
    ax.set_ylabel("gradient variance (mean over coordinates, summed over groups)")
    ax.legend(fontsize=7)
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)


def run_gradient_diagnostic(
    model: Callable,
    guide: nn.Module,
    x: torch.Tensor,
    estimators: Sequence[str] = tuple(ESTIMATORS),
    particles: Sequence[int] = (1, 4, 16),
    num_samples: int = 200,
    out_dir: str | os.PathLike | None = None,
    groups: dict[str, list[torch.Tensor]] | None = None,
) -> list[dict[str, Any]]:
    """Compute the table; with ``out_dir`` also write ``gradient_variance.{md,csv,png}``."""
    rows = gradient_variance_table(model, guide, x, estimators, particles, num_samples, groups)
    if out_dir is not None:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        (out / "gradient_variance.md").write_text(format_table(rows) + "\n")
        with (out / "gradient_variance.csv").open("w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(rows[0]))
            w.writeheader()
            w.writerows(rows)
        save_variance_plot(rows, out / "gradient_variance.png")
    return rows


def encoder_output_groups(guide: nn.Module) -> dict[str, list[torch.Tensor]]:
    """For an amortised guide: the encoder's last layer (the parameters of q) and the rest."""
    params = [p for p in guide.encoder.parameters() if p.requires_grad]
    return {"encoder (last layer)": params[-2:], "encoder (hidden layers)": params[:-2]}

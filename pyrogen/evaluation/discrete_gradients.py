"""Gradient estimators of the ELBO for a discrete latent, measured against the exact gradient.

For a guide q_φ(c | x) over a categorical c (a one-hot site, K values) the ELBO

    L(φ) = Σ_n Σ_c q_φ(c | x_n) [log p(x_n, c) − log q_φ(c | x_n)]

has an exact gradient, by summing c out: **enumeration** (Pyro's ``TraceEnum_ELBO`` with the
guide's site marked ``infer={"enumerate": "parallel"}``): zero variance, the reference. The
other estimators draw c:

* **score function** (REINFORCE, ``TraceGraph_ELBO``): E_q[(f(c) − b) ∇_φ log q_φ(c | x)] with
  f = log p(x, c) − log q_φ(c | x), without a baseline b, with a decaying average, or with a
  neural baseline b(x) (:mod:`pyrogen.evaluation.gradients`); unbiased;
* **Gumbel-softmax** (the Concrete / relaxed one-hot, Jang et al. 2017, Maddison et al.
  2017): c̃ = softmax((log q_φ + g) / τ), g ~ Gumbel(0, 1)^K, reparameterised, and the
  objective is evaluated at the relaxed point, f(c̃) = Σ_k c̃_k log π_k + log p(x | c̃) −
  Σ_k c̃_k log q_φ,k (each log-mass extended linearly off the vertices of the simplex, the
  likelihood taking c̃ as a vector). ∇_φ E[f(c̃)] is *not* ∇_φ L: its bias
  ‖E[ĝ_τ] − ∇L‖ shrinks as τ → 0 while its variance grows.

The model's discrete site must be ``OneHotCategorical`` and the model must use its value as a
vector (e.g. x | c ~ N(cᵀM, σ²)), so that it is defined at relaxed points; :class:`
MixtureModel` and :class:`CategoricalGuide` are such a pair: a Bernoulli or Gaussian mixture
with an amortised (linear) q(c | x).

:func:`discrete_gradient_table` reports for each estimator the variance (mean over the
coordinates), the bias against the enumerated gradient with its Monte Carlo standard error
and the SNR; :func:`run_discrete_gradient_diagnostic` also writes a table, a CSV and a figure.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pyro
import pyro.distributions as dist
import torch
from matplotlib.figure import Figure
from pyro.infer import Trace_ELBO, TraceEnum_ELBO
from pyro.poutine.messenger import Messenger
from torch import nn
from torch.distributions import constraints

from pyrogen.evaluation.gradients import (
    Groups,
    _Estimator,
    default_groups_of,
    measuring,
    write_rows,
)
from pyrogen.progress import steps

#: the estimators of a discrete latent's gradient, with what they are
DISCRETE_ESTIMATORS: dict[str, str] = {
    "enum": "enumeration (TraceEnum_ELBO): exact",
    "score_function": "score function, no baseline",
    "score_function_avg": "score function, decaying-average baseline",
    "score_function_nn": "score function, neural baseline",
    "gumbel_softmax": "Gumbel-softmax (relaxed one-hot), temperature τ",
}


def _is_one_hot(msg: dict[str, Any]) -> bool:
    fn = msg["fn"]
    while isinstance(fn, dist.Independent | dist.MaskedDistribution):
        fn = fn.base_dist
    return not msg["is_observed"] and isinstance(fn, torch.distributions.OneHotCategorical)


def _logits(fn: dist.Distribution) -> torch.Tensor:
    if isinstance(fn, dist.Independent | dist.MaskedDistribution):
        raise ValueError("a one-hot site inside .to_event or a mask is not supported")
    return fn.logits


class LinearOneHot(dist.TorchDistribution):
    """Cat(softmax(logits)) on one-hot vectors with log p(c) = Σ_k c_k log p_k, the log-mass
    extended linearly over the simplex (exact at its vertices), so that it scores a relaxed
    point. It has no sampler of its own: it only scores values replayed from the guide."""

    arg_constraints: dict = {}
    support = constraints.simplex

    def __init__(self, logits: torch.Tensor) -> None:
        self.logits = logits - logits.logsumexp(-1, keepdim=True)
        super().__init__(self.logits.shape[:-1], self.logits.shape[-1:], validate_args=False)

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        return (value * self.logits).sum(-1)

    def expand(self, batch_shape, _instance=None) -> LinearOneHot:
        return LinearOneHot(self.logits.expand(*batch_shape, self.logits.shape[-1]))


class RelaxedOneHot(LinearOneHot):
    """The Gumbel-softmax sample c̃ = softmax((log p + g) / τ) of Cat(softmax(logits))
    (``RelaxedOneHotCategorical``'s reparameterised sampler), scored by the linear
    log-mass of :class:`LinearOneHot`."""

    has_rsample = True

    def __init__(self, temperature: float, logits: torch.Tensor) -> None:
        super().__init__(logits)
        self.temperature = float(temperature)

    def rsample(self, sample_shape: tuple[int, ...] = ()) -> torch.Tensor:
        t = torch.tensor(self.temperature, dtype=self.logits.dtype, device=self.logits.device)
        return dist.RelaxedOneHotCategorical(t, logits=self.logits).rsample(
            torch.Size(sample_shape)
        )

    def sample(self, sample_shape: tuple[int, ...] = ()) -> torch.Tensor:
        with torch.no_grad():
            return self.rsample(sample_shape)

    def expand(self, batch_shape, _instance=None) -> RelaxedOneHot:
        logits = self.logits.expand(*batch_shape, self.logits.shape[-1])
        return RelaxedOneHot(self.temperature, logits)


class _Relax(Messenger):
    """Every latent one-hot site becomes :class:`RelaxedOneHot` (``temperature`` given, in
    the guide) or :class:`LinearOneHot` (``None``, in the model)."""

    def __init__(self, temperature: float | None) -> None:
        super().__init__()
        self.temperature = temperature

    def _pyro_sample(self, msg: dict[str, Any]) -> None:
        if not _is_one_hot(msg):
            return
        logits = _logits(msg["fn"])
        if self.temperature is None:
            msg["fn"] = LinearOneHot(logits)
        else:
            msg["fn"] = RelaxedOneHot(self.temperature, logits)


class _Enumerate(Messenger):
    """Mark every latent one-hot site for parallel enumeration."""

    def _pyro_sample(self, msg: dict[str, Any]) -> None:
        if _is_one_hot(msg):
            msg["infer"] = {**(msg.get("infer") or {}), "enumerate": "parallel"}


class MixtureModel(nn.Module):
    """c ~ Cat(π) (one-hot), x | c ~ Bernoulli(cᵀP) per pixel, or N(cᵀM, σ² I): a mixture of
    K components whose likelihood takes c as a vector (defined on the whole simplex)."""

    def __init__(
        self,
        means: torch.Tensor,
        likelihood: str = "bernoulli",
        scale: float = 1.0,
        logits: torch.Tensor | None = None,
    ) -> None:
        super().__init__()
        if likelihood not in ("bernoulli", "gaussian"):
            raise ValueError(f"likelihood must be bernoulli or gaussian, got {likelihood!r}")
        self.register_buffer("means", means)
        k = means.shape[0]
        self.register_buffer("logits", means.new_zeros(k) if logits is None else logits)
        self.likelihood, self.scale = likelihood, float(scale)

    def forward(self, x: torch.Tensor) -> None:
        with pyro.plate("data", x.shape[0]):
            c = pyro.sample("c", dist.OneHotCategorical(logits=self.logits))
            mean = c @ self.means
            if self.likelihood == "bernoulli":
                px = dist.Bernoulli(probs=mean, validate_args=False)
            else:
                px = dist.Normal(mean, self.scale)
            pyro.sample("x", px.to_event(1), obs=x)


class CategoricalGuide(nn.Module):
    """q_φ(c | x) = Cat(softmax(W x + b)), one-hot (φ = W, b: the ``linear`` group)."""

    def __init__(self, in_dim: int, num_components: int) -> None:
        super().__init__()
        self.linear = nn.Linear(in_dim, num_components)

    def forward(self, x: torch.Tensor) -> None:
        with pyro.plate("data", x.shape[0]):
            pyro.sample("c", dist.OneHotCategorical(logits=self.linear(x)))


def mixture_for(x: torch.Tensor, num_components: int, seed: int = 0) -> MixtureModel:
    """A mixture fitted crudely to the batch ``x`` (N, D): the examples split at random into
    ``num_components`` groups, each component the mean of its group (Bernoulli for binary
    x, probabilities kept in [0.05, 0.95]; else Gaussian with σ = 1), π uniform."""
    if x.shape[0] < num_components:
        raise ValueError(f"{num_components} components need at least as many examples")
    gen = torch.Generator().manual_seed(seed)
    order = torch.randperm(x.shape[0], generator=gen).to(x.device)
    groups = [order[k::num_components] for k in range(num_components)]
    means = torch.stack([x[g].mean(0) for g in groups])
    binary = bool(((x == 0) | (x == 1)).all())
    if binary:
        return MixtureModel(means.clamp(0.05, 0.95), "bernoulli")
    return MixtureModel(means, "gaussian", 1.0)


def _ascent(loss: torch.Tensor, params: list[torch.Tensor]) -> torch.Tensor:
    """−∇ loss w.r.t. ``params`` (zeros for those it does not reach), flattened."""
    g = torch.autograd.grad(loss, params, allow_unused=True)
    parts = [torch.zeros_like(p) if gi is None else -gi for p, gi in zip(params, g, strict=True)]
    return torch.cat([part.flatten() for part in parts])


def enumerated_gradient(
    model: Callable, guide: Callable, x: torch.Tensor, params: list[torch.Tensor]
) -> torch.Tensor:
    """∇_φ L exactly: TraceEnum_ELBO with the guide's one-hot sites enumerated, flattened."""

    def enum_guide(*args: Any) -> Any:
        with _Enumerate():
            return guide(*args)

    loss = TraceEnum_ELBO(max_plate_nesting=1).differentiable_loss(model, enum_guide, x)
    return _ascent(loss, params)


def _relaxed_gradient(
    model: Callable,
    guide: Callable,
    x: torch.Tensor,
    params: list[torch.Tensor],
    temperature: float,
    num_particles: int,
) -> torch.Tensor:
    def relaxed_model(*args: Any) -> Any:
        with _Relax(None):
            return model(*args)

    def relaxed_guide(*args: Any) -> Any:
        with _Relax(temperature):
            return guide(*args)

    elbo = Trace_ELBO(num_particles=num_particles, vectorize_particles=True, max_plate_nesting=1)
    loss = elbo.differentiable_loss(relaxed_model, relaxed_guide, x)
    return _ascent(loss, params)


def discrete_gradient_estimates(
    model: Callable,
    guide: Callable,
    x: torch.Tensor,
    estimator: str = "score_function",
    num_samples: int = 100,
    groups: Groups | None = None,
    seed: int = 0,
    temperature: float = 1.0,
    num_particles: int = 1,
    warmup: int = 200,
) -> torch.Tensor:
    """``num_samples`` independent estimates of ∇_φ ELBO (the ascent direction) by
    ``estimator`` (a name in :data:`DISCRETE_ESTIMATORS`; ``temperature`` τ for
    ``gumbel_softmax``), each the average of ``num_particles`` draws, as one tensor
    ``(num_samples, size)`` of the ``groups``' parameters flattened and concatenated
    (``groups`` defaults to the guide's, by top-level submodule). ``enum`` is exact: one row.

    The score-function baselines are first brought where training would have them
    (``warmup`` updates on the batch, see :func:`pyrogen.evaluation.gradients.
    gradient_estimates`). No parameter, ``.grad``, global RNG state or Pyro param store entry
    is changed."""
    if estimator not in DISCRETE_ESTIMATORS:
        allowed = ", ".join(DISCRETE_ESTIMATORS)
        raise ValueError(f"unknown discrete estimator {estimator!r} (allowed: {allowed})")
    if estimator == "gumbel_softmax" and not temperature > 0:
        raise ValueError(f"the Gumbel-softmax temperature must be > 0, got {temperature}")
    groups = groups if groups is not None else default_groups_of(guide)
    params = [p for ps in groups.values() for p in ps]
    with measuring(x, seed):
        if estimator == "enum":
            return enumerated_gradient(model, guide, x, params).detach()[None]
        if estimator == "gumbel_softmax":
            draws = [
                _relaxed_gradient(model, guide, x, params, temperature, num_particles)
                for _ in range(num_samples)
            ]
        else:
            est = _Estimator(model, guide, x, estimator, num_particles, params, 1)
            est.warm_up(warmup)
            draws = [torch.cat([g.flatten() for g in est.grads()]) for _ in range(num_samples)]
    return torch.stack(draws).detach()


def bias_summary(estimates: torch.Tensor, exact: torch.Tensor) -> dict[str, float]:
    """Of N estimates (N, size) against the exact gradient: ``bias`` = ‖mean − exact‖,
    ``bias_se`` = √(Σ_j Var_j / N), the norm the mean's Monte Carlo error alone would have
    (an unbiased estimator's ``bias`` is of this size), ``variance`` = mean over coordinates
    of the variance, ``snr`` = mean over coordinates of |mean| / std."""
    n = estimates.shape[0]
    mean = estimates.mean(0)
    if n < 2:
        var = torch.zeros_like(mean)
    else:
        var = estimates.var(0)
    std = var.sqrt()
    live = std > 0
    snr = (mean[live].abs() / std[live]).mean().item() if live.any() else float("inf")
    return {
        "mean_norm": mean.norm().item(),
        "variance": var.mean().item(),
        "snr": snr,
        "bias": (mean - exact).norm().item(),
        "bias_se": math.sqrt(var.sum().item() / n),
    }


def discrete_gradient_table(
    model: Callable,
    guide: Callable,
    x: torch.Tensor,
    estimators: Sequence[str] = tuple(DISCRETE_ESTIMATORS),
    temperatures: Sequence[float] = (1.0, 0.5, 0.1),
    num_samples: int = 200,
    groups: Groups | None = None,
    seed: int = 0,
    warmup: int = 200,
    progress: bool = False,
) -> list[dict[str, Any]]:
    """One row per estimator (``gumbel_softmax``: one per temperature τ) with
    :func:`bias_summary` against the enumerated gradient (``temperature`` empty elsewhere)."""
    exact = discrete_gradient_estimates(model, guide, x, "enum", groups=groups, seed=seed)[0]
    combos: list[tuple[str, float | None]] = []
    for est in estimators:
        combos += [(est, t) for t in temperatures] if est == "gumbel_softmax" else [(est, None)]
    rows = []
    for est, t in steps(combos, "gradient draws", quiet=not progress):
        draws = discrete_gradient_estimates(
            model, guide, x, est, num_samples, groups, seed, t or 1.0, warmup=warmup
        )
        rows.append({"estimator": est, "temperature": t, **bias_summary(draws, exact)})
    return rows


def format_discrete_table(rows: list[dict[str, Any]]) -> str:
    """The rows as a Markdown table."""
    lines = [
        "| estimator | τ | ‖mean‖ | variance | SNR | bias ‖mean − exact‖ | its MC s.e. |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        t = "" if r["temperature"] is None else f"{r['temperature']:g}"
        lines.append(
            f"| {r['estimator']} | {t} | {r['mean_norm']:.4g} | {r['variance']:.4g} "
            f"| {r['snr']:.3g} | {r['bias']:.4g} | {r['bias_se']:.3g} |"
        )
    return "\n".join(lines)


def _label(row: dict[str, Any]) -> str:
    if row["temperature"] is None:
        return row["estimator"]
    return f"gumbel τ={row['temperature']:g}"


def save_discrete_plot(rows: list[dict[str, Any]], path: str | os.PathLike) -> None:
    """Two panels, one bar per estimator: the variance (log scale; the exact enumerated
    gradient has none) and the bias ‖mean − exact‖ with its Monte Carlo standard error as a
    dotted mark (a bias above it is measured, not noise)."""
    fig = Figure(figsize=(9, 4.2), layout="constrained")
    ax_var, ax_bias = fig.subplots(1, 2)
    labels = [_label(r) for r in rows]
    pos = list(range(len(rows)))
    var = [r["variance"] if r["variance"] > 0 else float("nan") for r in rows]
    ax_var.bar(pos, var, color="tab:blue")
    ax_var.set_yscale("log")
    for i, r in enumerate(rows):
        if r["variance"] == 0:  # the exact gradient has nothing to draw on a log scale
            ax_var.annotate("0 (exact)", (i, 0.02), xycoords=("data", "axes fraction"),
                            ha="center", fontsize=8)  # fmt: skip
    ax_var.set_title("variance (mean over coordinates)", fontsize=10)
    ax_bias.bar(pos, [r["bias"] for r in rows], color="tab:orange", label="‖mean − exact‖")
    ax_bias.scatter(pos, [r["bias_se"] for r in rows], marker="_", s=300, color="k", zorder=3,
                    label="Monte Carlo s.e. of the mean")  # fmt: skip
    ax_bias.set_title("bias against the enumerated gradient", fontsize=10)
    ax_bias.legend(fontsize=8, frameon=False)
    for ax in (ax_var, ax_bias):
        ax.set_xticks(pos)
        ax.set_xticklabels(labels, rotation=35, ha="right", fontsize=8)
    fig.suptitle("ELBO gradient estimators of a discrete latent c", fontsize=11)
    fig.savefig(path, dpi=100, bbox_inches="tight")


def run_discrete_gradient_diagnostic(
    model: Callable,
    guide: Callable,
    x: torch.Tensor,
    out_dir: str | os.PathLike | None = None,
    **table_options: Any,
) -> list[dict[str, Any]]:
    """:func:`discrete_gradient_table` (``table_options`` are its options); with ``out_dir``
    also write ``discrete_gradients.{md,csv,png}``."""
    rows = discrete_gradient_table(model, guide, x, **table_options)
    if out_dir is not None:
        stem = Path(out_dir) / "discrete_gradients"
        write_rows(rows, stem, format_discrete_table, save_discrete_plot)
    return rows

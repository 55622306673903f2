"""Gradient estimators of the ELBO, measured.

For a guide q_φ(z | x) the ELBO's gradient can be estimated two ways:

* reparameterisation: z = g_φ(ε), ε ~ p(ε), and
  ∇_φ ELBO = E_ε[∇_φ (log p(x, g_φ(ε)) − log q_φ(g_φ(ε) | x))];
* score function (REINFORCE): ∇_φ ELBO = E_q[(log p(x, z) − log q_φ(z | x) − b) ∇_φ log q_φ(z | x)]
  (+ the direct term E_q[∇_φ(−log q_φ)], zero in expectation), unbiased for any baseline b
  that does not depend on z: none, a decaying average of past costs, or a neural network
  b(x) fitted to the cost by least squares.

:func:`gradient_estimates` draws N independent estimates of ∇_φ ELBO (the ascent direction,
i.e. minus the gradient of Pyro's loss) from one estimator, so that their mean, variance and
signal-to-noise ratio |mean| / std can be compared. Any guide becomes its score-function twin
under :class:`ScoreFunctionSites`, and Pyro's own baselines (``infer={"baseline": ...}``) are
used through ``TraceGraph_ELBO``; K particles are vectorised (one trace with a particle plate).
"""

from __future__ import annotations

import csv
import os
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyro
import pyro.distributions as dist
import torch
from matplotlib.figure import Figure
from matplotlib.ticker import NullFormatter, ScalarFormatter
from pyro.infer import Trace_ELBO, TraceGraph_ELBO
from pyro.poutine.messenger import Messenger
from pyro.poutine.subsample_messenger import _Subsample
from torch import nn

from pyrogen.models.guides import NonReparameterizedNormal
from pyrogen.progress import steps

Groups = dict[str, list[torch.Tensor]]


@dataclass(frozen=True)
class EstimatorSpec:
    """How an estimator treats the guide's latent sites: as they are (``reparameterised``),
    or non-reparameterised with a ``baseline`` (None, "decaying_average" or "neural")."""

    description: str
    reparameterised: bool
    baseline: str | None = None


ESTIMATORS: dict[str, EstimatorSpec] = {
    "reparam": EstimatorSpec("reparameterised Trace_ELBO", True),
    "score_function": EstimatorSpec("score function, no baseline", False),
    "score_function_avg": EstimatorSpec(
        "score function, decaying-average baseline", False, "decaying_average"
    ),
    "score_function_nn": EstimatorSpec("score function, neural baseline", False, "neural"),
}

#: decay of the running average b ← β b + (1 − β) cost
BASELINE_BETA = 0.9


class NonReparameterized(dist.TorchDistribution):
    """Any distribution with its samples cut off from its parameters (``has_rsample =
    False``): same support and ``log_prob``, so Pyro scores the site instead of
    differentiating through it. Samples are detached copies, so no transform cache (IAF &
    co.) hands ``log_prob`` a log-determinant computed without gradients."""

    has_rsample = False
    arg_constraints: dict = {}

    def __init__(self, base: dist.Distribution) -> None:
        self.base = base
        super().__init__(base.batch_shape, base.event_shape, validate_args=False)

    @property
    def support(self):
        return self.base.support

    def sample(self, sample_shape: tuple[int, ...] = ()) -> torch.Tensor:
        with torch.no_grad():
            return self.base.sample(sample_shape).detach().clone()

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        return self.base.log_prob(value)

    def expand(self, batch_shape, _instance=None) -> NonReparameterized:
        return NonReparameterized(self.base.expand(batch_shape))


def non_reparameterised(fn: dist.Distribution) -> dist.Distribution:
    """The same distribution without reparameterised samples: a Normal (possibly under
    ``Independent``) is rebuilt as :class:`NonReparameterizedNormal` (``has_rsample_(False)``
    breaks under ``.to_event`` in a plate with pyro-ppl 1.9.2 / torch 2.13), anything else is
    wrapped in :class:`NonReparameterized`."""
    if not fn.has_rsample:
        return fn
    if isinstance(fn, dist.Independent) and isinstance(fn.base_dist, dist.Normal):
        return non_reparameterised(fn.base_dist).to_event(fn.reinterpreted_batch_ndims)
    if type(fn) is dist.Normal:
        return NonReparameterizedNormal(fn.loc, fn.scale)
    return NonReparameterized(fn)


class ScoreFunctionSites(Messenger):
    """Make every latent sample site of a guide non-reparameterisable and attach Pyro's
    baseline options (``None``, ``{"use_decaying_avg_baseline": True, ...}`` or
    ``{"nn_baseline": ..., "nn_baseline_input": ...}``) as ``infer["baseline"]``."""

    def __init__(self, baseline: dict[str, Any] | None = None) -> None:
        super().__init__()
        self.baseline = baseline

    def _pyro_sample(self, msg: dict[str, Any]) -> None:
        if msg["is_observed"] or isinstance(msg["fn"], _Subsample):  # a plate's own site
            return
        msg["fn"] = non_reparameterised(msg["fn"])
        infer = dict(msg.get("infer") or {})
        infer.pop("baseline", None)
        if self.baseline is not None:
            infer["baseline"] = dict(self.baseline)
        msg["infer"] = infer


class BaselineMLP(nn.Module):
    """b(x): a small MLP predicting the downstream cost of each example from its flattened
    x (last dimension), fitted by Pyro's baseline loss Σ (cost − b(x))²."""

    def __init__(self, in_dim: int, hidden: int = 64) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(in_dim, hidden), nn.Tanh(), nn.Linear(hidden, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).squeeze(-1)


def default_groups(guide: nn.Module) -> Groups:
    """The guide's parameters grouped by top-level submodule (``encoder``) or, for a
    parameter held by the guide itself, by its name (``m``, ``rho``)."""
    groups: Groups = {}
    for name, p in guide.named_parameters():
        if p.requires_grad:
            groups.setdefault(name.split(".")[0], []).append(p)
    return groups


def encoder_output_groups(guide: nn.Module) -> Groups:
    """For an amortised guide: the encoder's last layer (the parameters of q) and the rest."""
    params = [p for p in guide.encoder.parameters() if p.requires_grad]
    return {"encoder (last layer)": params[-2:], "encoder (hidden layers)": params[:-2]}


class _Estimator:
    """One estimator with K vectorised particles: ``grads()`` returns one estimate of
    ∇ ELBO w.r.t. ``params`` and leaves every ``.grad`` untouched."""

    def __init__(
        self,
        model: Callable,
        guide: Callable,
        x: torch.Tensor,
        name: str,
        num_particles: int,
        params: list[torch.Tensor],
        max_plate_nesting: int | None,
    ) -> None:
        if name not in ESTIMATORS:
            raise ValueError(f"unknown estimator {name!r} (allowed: {', '.join(ESTIMATORS)})")
        self.spec, self.model, self.x, self.params = ESTIMATORS[name], model, x, params
        nesting = float("inf") if max_plate_nesting is None else max_plate_nesting
        kw = dict(num_particles=num_particles, vectorize_particles=True, max_plate_nesting=nesting)
        self.elbo = Trace_ELBO(**kw) if self.spec.reparameterised else TraceGraph_ELBO(**kw)
        self.baseline_net: BaselineMLP | None = None
        if self.spec.reparameterised:
            self.guide = guide
            return
        baseline: dict[str, Any] | None = None
        if self.spec.baseline == "decaying_average":
            baseline = {"use_decaying_avg_baseline": True, "baseline_beta": BASELINE_BETA}
        elif self.spec.baseline == "neural":
            flat = x.reshape(x.shape[0], -1)
            self.baseline_net = BaselineMLP(flat.shape[-1]).to(x.device)
            if num_particles > 1:  # one prediction per (particle, example), like the cost
                flat = flat.expand(num_particles, *flat.shape)
            baseline = {"nn_baseline": self.baseline_net, "nn_baseline_input": flat}

        def sf_guide(*args: Any, **kwargs: Any) -> Any:
            with ScoreFunctionSites(baseline):
                return guide(*args, **kwargs)

        self.guide = sf_guide

    def surrogate_loss(self) -> torch.Tensor:
        """A loss whose gradient is the estimate of −∇ ELBO (plus, with a neural baseline,
        the gradient of its least-squares loss w.r.t. the baseline's own parameters)."""
        if self.spec.reparameterised:
            return self.elbo.differentiable_loss(self.model, self.guide, self.x)
        # TraceGraph_ELBO only exposes loss_and_grads, which back-propagates into every
        # leaf (the model's too); its surrogate lets us differentiate w.r.t. params alone
        _, surrogate = self.elbo._loss_and_surrogate_loss(self.model, self.guide, (self.x,), {})
        return surrogate

    def grads(self) -> list[torch.Tensor]:
        g = torch.autograd.grad(self.surrogate_loss(), self.params, allow_unused=True)
        return [
            torch.zeros_like(p) if gi is None else -gi for p, gi in zip(self.params, g, strict=True)
        ]

    def warm_up(self, steps: int, lr: float = 1e-2) -> None:
        """Bring the baseline to where training would have it: ``steps`` updates of the
        decaying average, or of the neural baseline by Adam on its least-squares loss, its
        output bias first set to the mean per-example cost (the ELBO / batch size)."""
        if self.spec.baseline is None or steps <= 0:
            return
        if self.baseline_net is None:
            with torch.no_grad():
                for _ in range(steps):
                    self.surrogate_loss()
            return
        net = self.baseline_net
        with torch.no_grad():
            elbo = -Trace_ELBO(max_plate_nesting=self.elbo.max_plate_nesting).loss(
                self.model, self.guide, self.x
            )
            net.net[-1].bias.fill_(elbo / self.x.shape[0])
        opt = torch.optim.Adam(net.parameters(), lr=lr)
        for _ in range(steps):
            opt.zero_grad()
            loss = self.surrogate_loss()
            net_grads = torch.autograd.grad(loss, list(net.parameters()))
            for p, g in zip(net.parameters(), net_grads, strict=True):
                p.grad = g
            opt.step()


def gradient_estimates(
    model: Callable,
    guide: Callable,
    x: torch.Tensor,
    estimator: str = "reparam",
    num_particles: int = 1,
    num_samples: int = 100,
    groups: Groups | None = None,
    seed: int = 0,
    warmup: int = 200,
    max_plate_nesting: int | None = 1,
) -> dict[str, torch.Tensor]:
    """``num_samples`` independent estimates of ∇_φ ELBO (the ascent direction), each the
    average of ``num_particles`` particles, per group: ``{group: Tensor(num_samples, size)}``
    with the group's parameters flattened and concatenated.

    ``model`` and ``guide`` are Pyro programs called as ``f(x)``: pyrogen's ``nn.Module`` pairs
    (``groups`` defaults to :func:`default_groups` of the guide) or plain callables, then with
    ``groups`` naming the leaf tensors (``requires_grad``) to differentiate.

    For a fair comparison the baselines start where training would have brought them: first
    ``warmup`` steps on the same batch (see ``_Estimator.warm_up``). The neural baseline is then
    held fixed; the decaying average goes on averaging, as in training (each draw uses the
    average of the costs before it, so its b is still independent of its own z). No
    parameter, ``.grad``, global RNG state or Pyro param store entry is changed.
    """
    groups = groups if groups is not None else default_groups_of(guide)
    params = [p for ps in groups.values() for p in ps]
    with measuring(x, seed):
        est = _Estimator(model, guide, x, estimator, num_particles, params, max_plate_nesting)
        est.warm_up(warmup)
        draws = [torch.cat([g.flatten() for g in est.grads()]) for _ in range(num_samples)]
    stacked = torch.stack(draws).detach()
    sizes = [sum(p.numel() for p in ps) for ps in groups.values()]
    return dict(zip(groups, stacked.split(sizes, dim=1), strict=True))


def default_groups_of(guide: Any) -> Groups:
    """:func:`default_groups` of a guide that is an ``nn.Module`` (a plain callable must be
    given its parameter groups)."""
    if not isinstance(guide, nn.Module):
        raise ValueError("a guide that is not an nn.Module needs explicit parameter groups")
    return default_groups(guide)


@contextmanager
def measuring(x: torch.Tensor, seed: int) -> Iterator[None]:
    """Where gradient estimates are drawn: a forked random stream seeded with ``seed`` (on
    ``x``'s CUDA device too) and a scoped Pyro param store, so that measuring changes no
    global RNG state and no param store entry."""
    devices = []
    if x.device.type == "cuda":
        devices = [x.device.index if x.device.index is not None else torch.cuda.current_device()]
    with torch.random.fork_rng(devices=devices), pyro.get_param_store().scope():
        torch.manual_seed(seed)
        yield


def summarise(estimates: torch.Tensor) -> dict[str, float]:
    """Of N estimates (N, size): ``mean_norm`` = ‖mean‖, ``variance`` = mean over coordinates
    of the variance, ``snr`` = mean over coordinates of |mean| / std (coordinates with std > 0)."""
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
    guide: Callable,
    x: torch.Tensor,
    estimators: Sequence[str] = tuple(ESTIMATORS),
    particles: Sequence[int] = (1, 4, 16),
    num_samples: int = 200,
    groups: Groups | None = None,
    seed: int = 0,
    warmup: int = 200,
    max_plate_nesting: int | None = 1,
    progress: bool = False,
) -> list[dict[str, Any]]:
    """One row per (estimator, particles, group) with mean_norm, variance and snr.

    The decaying-average baseline keeps its running value in a Pyro param store: each
    estimator gets a fresh store of its own (the process-wide store is left untouched)."""
    rows = []
    combos = [(est, k) for est in estimators for k in particles]
    for est, k in steps(combos, "gradient draws", quiet=not progress):
        with pyro.get_param_store().scope():
            draws = gradient_estimates(
                model, guide, x, est, k, num_samples, groups, seed, warmup, max_plate_nesting
            )
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
    """Variance (summed over groups) against the number of particles, log-log, one line per
    estimator, with the 1/K slope through each line's first point for reference."""
    fig = Figure(figsize=(6.5, 5), layout="constrained")
    ax = fig.subplots()
    for est in dict.fromkeys(r["estimator"] for r in rows):
        ks = sorted({r["particles"] for r in rows if r["estimator"] == est})
        var = [
            sum(r["variance"] for r in rows if r["estimator"] == est and r["particles"] == k)
            for k in ks
        ]
        spec = ESTIMATORS.get(est)
        (line,) = ax.plot(ks, var, marker="o", label=spec.description if spec else est)
        ax.plot(ks, [var[0] * ks[0] / k for k in ks], ls=":", lw=0.8, color=line.get_color())
    ax.set_xscale("log")
    ax.set_yscale("log")
    ks = sorted({r["particles"] for r in rows})
    ax.set_xticks(ks)
    ax.xaxis.set_major_formatter(ScalarFormatter())
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel("particles K")
    ax.set_ylabel("gradient variance\n(mean over coordinates, summed over groups)")
    ax.set_title("ELBO gradient variance against particles K (dotted: ∝ 1/K)", fontsize=10)
    fig.legend(loc="outside lower center", ncol=2, fontsize=8, frameon=False)
    fig.savefig(path, dpi=100, bbox_inches="tight")


def run_gradient_diagnostic(
    model: Callable,
    guide: Callable,
    x: torch.Tensor,
    *table_args: Any,
    out_dir: str | os.PathLike | None = None,
    **table_options: Any,
) -> list[dict[str, Any]]:
    """:func:`gradient_variance_table` (``table_args`` and ``table_options`` are its
    ``estimators``, ``particles``, ``num_samples``, ...); with ``out_dir`` also write
    ``gradient_variance.{md,csv,png}``."""
    rows = gradient_variance_table(model, guide, x, *table_args, **table_options)
    if out_dir is not None:
        write_rows(rows, Path(out_dir) / "gradient_variance", format_table, save_variance_plot)
    return rows


def write_rows(
    rows: list[dict[str, Any]],
    stem: Path,
    markdown: Callable[[list[dict[str, Any]]], str],
    plot: Callable[[list[dict[str, Any]], Path], None],
) -> None:
    """``stem.md`` (``markdown(rows)``), ``stem.csv`` (one line per row) and ``stem.png``
    (``plot``), in ``stem``'s folder (made if missing)."""
    stem.parent.mkdir(parents=True, exist_ok=True)
    stem.with_suffix(".md").write_text(markdown(rows) + "\n")
    with stem.with_suffix(".csv").open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    plot(rows, stem.with_suffix(".png"))

"""What a VAE learned: active units, KL per latent dimension, the mutual information I(x; z)
and the amortisation gap (``pyrogen diagnose``).

========================  ==============================================================
diagnostic                what is computed
========================  ==============================================================
active units              A_u = Cov_x(E_q[z_u | x]) over the examples; unit u is active when
                          A_u > 0.01 (Burda et al., 2016)
KL per dimension          E_x KL(q(z_u | x) ‖ p(z_u)), u = 1..D, and the total E_x KL(q ‖ p)
mutual information        I(x; z) = E_x E_q(z|x)[log q(z | x) − log q(z)] with the aggregate
                          posterior q(z) = (1/N) Σ_n q(z | x_n) over the N examples (Hoffman
                          & Johnson, 2016; He et al., 2019)
amortisation gap          on a subset: log p(x) (importance sampled), the ELBO of the
                          amortised q(z | x) and the ELBO of a local diagonal Gaussian refined
                          per example by SVI from the encoder's output (Cremer et al., 2018)
========================  ==============================================================

Every diagnostic reads p(z) from the model itself (its ``"z"`` site, by tracing), so a prior
other than N(0, I) is used as it is. All values are in nats per example.
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyro
import pyro.distributions as dist
import torch
from matplotlib.figure import Figure
from pyro import poutine
from torch.distributions import Independent, Normal, kl_divergence

from pyrogen.evaluation.stats import mean_stderr
from pyrogen.evaluation.streams import own_stream
from pyrogen.models.guides import AmortisedGuide
from pyrogen.models.hierarchical import HierarchicalVAE
from pyrogen.models.vae import VAE

#: Cov_x(E_q[z_u | x]) above which unit u counts as active (Burda et al., 2016)
ACTIVE_THRESHOLD = 0.01
#: draws of z ~ q(z | x) for a posterior mean without a closed form (a flow guide)
MEAN_SAMPLES = 64
#: draws of z ~ q(z | x) for a KL without a closed form
KL_SAMPLES = 64
#: values per chunk of the Monte Carlo estimators (bounds memory whatever the sizes)
MAX_ELEMENTS = 20_000_000


class PosteriorCollapseWarning(UserWarning):
    """Fewer than half of the latent units are active: the decoder ignores most of z."""


# ------------------------------------------------------------------ p(z) and log p(x, z)
def model_prior(model: Callable, x: torch.Tensor) -> dist.Distribution:
    """p(z) as the model's ``"z"`` site draws it for the batch ``x`` (batch shape ``(N,)``),
    read by tracing the model: whatever prior the model has."""
    with torch.no_grad(), poutine.block():
        trace = poutine.trace(model).get_trace(x)
    return trace.nodes["z"]["fn"]


def log_joint(model: Callable, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """log p(x_n, z_kn) = Σ over the model's sample sites of their log-densities, with the
    site ``"z"`` set to ``z`` of shape ``(K, N, D)`` (K draws for each of the N examples);
    shape ``(K, N)``, differentiable in ``z``."""
    with poutine.block(), pyro.plate("particles", z.shape[0], dim=-2):
        trace = poutine.trace(poutine.condition(model, data={"z": z})).get_trace(x)
    trace.compute_log_prob()
    total = torch.zeros(z.shape[:2], dtype=z.dtype, device=z.device)
    for site in trace.nodes.values():
        if site["type"] == "sample":
            total = total + site["log_prob"]
    return total


def _factorised_normal(d: dist.Distribution) -> tuple[torch.Tensor, torch.Tensor] | None:
    """(loc, scale) of N(loc, diag scale²) written as ``Independent(Normal, 1)``, else None."""
    if (
        isinstance(d, Independent)
        and isinstance(d.base_dist, Normal)
        and d.reinterpreted_batch_ndims == 1
    ):
        return d.base_dist.loc, d.base_dist.scale
    return None


def _moments(q: dist.Distribution, num_samples: int) -> tuple[torch.Tensor, torch.Tensor, bool]:
    """(E_q[z], sd of each z_u, closed form?) of q(z | x): Monte Carlo with ``num_samples``
    draws where q has no closed-form mean (a flow guide)."""
    try:
        return q.mean, q.variance.sqrt(), True
    except NotImplementedError:
        z = q.sample((num_samples,))
        return z.mean(0), z.std(0), False


# ------------------------------------------------------------------ the diagnostics
@torch.no_grad()
def active_units(
    guide: AmortisedGuide,
    x: torch.Tensor,
    threshold: float = ACTIVE_THRESHOLD,
    num_samples: int = MEAN_SAMPLES,
) -> dict[str, Any]:
    """Active units (Burda et al., 2016): A_u = Cov_x(E_q[z_u | x]), the variance over the N
    examples (divisor N − 1) of each coordinate of the posterior mean; unit u is active when
    A_u > ``threshold``. E_q[z | x] is q's closed-form mean, or for a guide without one (IAF)
    the average of ``num_samples`` draws (then ``mean_samples`` says how many).

    Returns ``{"active", "dimension", "threshold", "variance": [A_1..A_D], "mean_samples"}``.
    """
    if x.shape[0] < 2:
        raise ValueError("active units need at least 2 examples (a variance over x)")
    mean, _, exact = _moments(guide.posterior(x), num_samples)
    variance = mean.double().var(0, unbiased=True)
    return {
        "active": int((variance > threshold).sum()),
        "dimension": int(variance.numel()),
        "threshold": threshold,
        "variance": variance.tolist(),
        "mean_samples": None if exact else num_samples,
    }


@torch.no_grad()
def kl_per_dimension(
    model: Callable, guide: AmortisedGuide, x: torch.Tensor, num_samples: int = KL_SAMPLES
) -> dict[str, Any]:
    """E_x KL(q(z | x) ‖ p(z)) in total and per latent dimension u, averaged over ``x``.

    Per dimension, for p(z) = Π_u N(m_u, s_u²) (``"kind": "exact"`` for a diagonal Gaussian
    q = Π_u N(μ_u, σ_u²), whose per-dimension terms sum to the total)::

        KL_u = log(s_u / σ_u) + (σ_u² + (μ_u − m_u)²) / (2 s_u²) − 1/2.

    For a correlated Gaussian q (full or low-rank covariance) the same formula on its marginals
    q(z_u | x) = N(μ_u, Σ_uu) (``"kind": "marginal"``): their sum is the total minus q's total
    correlation KL(q ‖ Π_u q_u) ≤ the total. Per-dimension KL is not defined for a q that is
    not Gaussian (IAF) or a p(z) that is not factorised (a mixture prior): ``per_dim`` is then
    ``None`` with the ``reason``. The total is closed-form where torch has it, else the Monte
    Carlo average of log q(z | x) − log p(z) over ``num_samples`` draws (``"samples"``).
    """
    q = guide.posterior(x)
    p = model_prior(model, x)
    out: dict[str, Any] = {"per_dim": None, "kind": None, "samples": None}
    try:
        total = kl_divergence(q, p)
    except NotImplementedError:
        z = q.sample((num_samples,))
        total = (q.log_prob(z) - p.log_prob(z)).mean(0)
        out["samples"] = num_samples
    out["total"] = mean_stderr(total)
    prior = _factorised_normal(p)
    if prior is None:
        out["reason"] = "p(z) is not a factorised Gaussian: KL per dimension is not defined"
        return out
    m, s = prior
    if isinstance(q, dist.MultivariateNormal | dist.LowRankMultivariateNormal):
        mu, sigma, kind = q.loc, q.variance.sqrt(), "marginal"
    elif _factorised_normal(q) is not None:
        (mu, sigma), kind = _factorised_normal(q), "exact"
    else:
        out["reason"] = (
            f"q(z | x) is a {type(q).__name__}, not a Gaussian: its marginals have no closed "
            "form, so KL per dimension is not defined"
        )
        return out
    kl = (s / sigma).log() + (sigma**2 + (mu - m) ** 2) / (2 * s**2) - 0.5
    out["per_dim"] = kl.double().mean(0).tolist()
    out["kind"] = kind
    return out


@torch.no_grad()
def mutual_information(guide: AmortisedGuide, x: torch.Tensor, num_samples: int = 1) -> float:
    """The minibatch estimate of I(x; z) under q (Hoffman & Johnson, 2016; the estimator of He
    et al., 2019)::

        I ≈ (1/(N S)) Σ_n Σ_s [log q(z_ns | x_n) − log q̂(z_ns)],   z_ns ~ q(z | x_n),
        q̂(z) = (1/N) Σ_m q(z | x_m)       (the aggregate posterior on the N examples).

    It is 0 when q(z | x) does not depend on x, and at most log N (q̂ is an average of N
    densities one of which is q(z | x_n)): use enough examples for the information present.
    Costs N² S evaluations of q's density."""
    q = guide.posterior(x)
    n = x.shape[0]
    z = q.sample((num_samples,))  # (S, N, D)
    own = q.log_prob(z)  # (S, N)
    flat = z.reshape(-1, z.shape[-1])  # (S N, D)
    chunk = max(1, MAX_ELEMENTS // (n * z.shape[-1]))
    parts = []
    for zc in flat.split(chunk):
        grid = zc[:, None, :].expand(zc.shape[0], n, zc.shape[-1])  # every z against every x_m
        parts.append(torch.logsumexp(q.log_prob(grid), dim=1) - math.log(n))
    aggregate = torch.cat(parts).reshape(own.shape)
    return float((own - aggregate).double().mean())


def _local_start(guide: AmortisedGuide, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(μ, σ) of the local diagonal Gaussian at the encoder's output: the guide's own (μ, σ)
    for a diagonal guide, else q's mean and marginal standard deviations (Monte Carlo with
    :data:`MEAN_SAMPLES` draws for a flow guide)."""
    q = guide.posterior(x)
    diagonal = _factorised_normal(q)
    if diagonal is not None:
        return diagonal
    mean, sd, _ = _moments(q, MEAN_SAMPLES)
    return mean, sd.clamp_min(1e-3)


@dataclass(frozen=True)
class Refinement:
    """How each example's local q_n is refined: ``steps`` steps of Adam (``lr``) on its ELBO
    estimated with ``particles`` reparameterised draws."""

    steps: int = 100
    lr: float = 0.01
    particles: int = 8


def refine_local_posterior(
    model: Callable, guide: AmortisedGuide, x: torch.Tensor, refine: Refinement = Refinement()
) -> tuple[torch.Tensor, torch.Tensor]:
    """(μ_n, σ_n) of a diagonal Gaussian q_n(z) = N(μ_n, diag σ_n²) per example, initialised
    at the encoder's output and refined (:class:`Refinement`) on the reparameterised
    ELBO_n = E_q_n[log p(x_n, z) − log q_n(z)] (the model's parameters stay fixed; the
    examples' problems are independent and run together)."""
    steps, lr, particles = refine.steps, refine.lr, refine.particles
    with torch.no_grad():
        loc0, scale0 = _local_start(guide, x)
    loc = loc0.detach().clone().requires_grad_(True)
    log_scale = scale0.detach().log().clone().requires_grad_(True)
    optim = torch.optim.Adam([loc, log_scale], lr=lr)
    with torch.enable_grad():
        for _ in range(steps):
            eps = torch.randn((particles, *loc.shape), dtype=loc.dtype, device=loc.device)
            z = loc + log_scale.exp() * eps
            log_q = Normal(loc, log_scale.exp()).log_prob(z).sum(-1)
            elbo = (log_joint(model, x, z) - log_q).mean(0)
            grads = torch.autograd.grad(-elbo.sum(), [loc, log_scale])
            for param, grad in zip((loc, log_scale), grads, strict=True):
                param.grad = grad
            optim.step()
    return loc.detach(), log_scale.detach().exp()


@torch.no_grad()
def _gap_values(
    model: Callable,
    guide: AmortisedGuide,
    x: torch.Tensor,
    loc: torch.Tensor,
    scale: torch.Tensor,
    num_samples: int,
) -> dict[str, torch.Tensor]:
    """Per example: the amortised ELBO, the refined ELBO (each a mean over ``num_samples``
    draws of its own q) and log p(x) by importance sampling from the defensive mixture
    r = (q + q_n) / 2 of both (the K draws of each; the balance heuristic):
    log p̂ = log (1/2K) Σ_j p(x, z_j) / r(z_j)."""
    q = guide.posterior(x)
    local = Normal(loc, scale)
    dims = max(1, math.prod(x.shape[1:]))
    chunk = max(1, min(num_samples, MAX_ELEMENTS // (x.shape[0] * dims)))
    sums = {"amortised": 0.0, "refined": 0.0}
    lse = []
    done = 0
    while done < num_samples:
        k = min(chunk, num_samples - done)
        for name, z in (("amortised", q.sample((k,))), ("refined", local.sample((k,)))):
            lj = log_joint(model, x, z)
            lq, ll = q.log_prob(z), local.log_prob(z).sum(-1)
            sums[name] = sums[name] + (lj - (lq if name == "amortised" else ll)).sum(0)
            mixture = torch.logaddexp(lq, ll) - math.log(2)
            lse.append(torch.logsumexp(lj - mixture, dim=0))
        done += k
    logp = torch.logsumexp(torch.stack(lse), dim=0) - math.log(2 * num_samples)
    return {
        "log_p": logp,
        "elbo_amortised": sums["amortised"] / num_samples,
        "elbo_refined": sums["refined"] / num_samples,
    }


def amortisation_gap(
    model: Callable,
    guide: AmortisedGuide,
    x: torch.Tensor,
    num_samples: int = 1000,
    refine: Refinement = Refinement(),
    log_det: torch.Tensor | None = None,
) -> dict[str, Any]:
    """Inference suboptimality (Cremer et al., 2018) of the examples ``x``::

        log p(x) − ELBO_amortised = [log p(x) − ELBO_refined] + [ELBO_refined − ELBO_amortised]
                                  =   approximation gap       +   amortisation gap

    ELBO_refined is the ELBO of a local diagonal Gaussian per example refined by SVI from the
    encoder's output (:func:`refine_local_posterior` with ``refine``); each
    ELBO is averaged over ``num_samples`` = K draws and log p(x) is importance sampled from the
    mixture of both q's (2K draws). For a diagonal Gaussian guide the refined q starts at the
    amortised one, so the amortisation gap is ≥ 0 up to Monte Carlo error; for another guide
    the two q's are different families and the difference mixes both effects.

    Returns each of ``log_p, elbo_amortised, elbo_refined, approximation_gap,
    amortisation_gap`` as ``{mean, stderr, n}`` (stderr over examples: the gaps are paired
    differences), and the settings. ``log_det`` (per example) is added to log p(x) and the
    ELBOs: the log-determinant of a preprocessing, so they are in the stored data's space.
    """
    loc, scale = refine_local_posterior(model, guide, x, refine)
    v = _gap_values(model, guide, x, loc, scale, num_samples)
    if log_det is not None:
        v = {k: t + log_det.to(t.dtype) for k, t in v.items()}
    v["approximation_gap"] = v["log_p"] - v["elbo_refined"]
    v["amortisation_gap"] = v["elbo_refined"] - v["elbo_amortised"]
    out: dict[str, Any] = {k: mean_stderr(t) for k, t in v.items()}
    out.update(K=num_samples, refine_steps=refine.steps, lr=refine.lr, particles=refine.particles)
    return out


def collapse_message(active: int, dimension: int) -> str | None:
    """``"posterior collapse: 3 of 50 units active ..."`` when fewer than half are active."""
    if 2 * active >= dimension:
        return None
    return (
        f"posterior collapse: {active} of {dimension} units active (Cov_x E_q[z_u | x] > "
        f"{ACTIVE_THRESHOLD}): the other dimensions of z carry no information about x"
    )


def diagnose_vae(
    vae: VAE,
    x: torch.Tensor,
    *,
    seed: int = 0,
    mi_examples: int = 1000,
    gap_examples: int | None = 100,
    num_samples: int = 1000,
    refine_steps: int = 100,
    log_det: torch.Tensor | None = None,
) -> dict[str, Any]:
    """Every diagnostic of the VAE on the examples ``x`` (in the model's space): active units
    and KL per dimension on all of them, I(x; z) on the first ``mi_examples`` (its cost is
    quadratic), the amortisation gap on the first ``gap_examples`` (``None``: skipped), each
    drawing from its own stream of ``seed``. Warns :class:`PosteriorCollapseWarning` when fewer
    than half of the units are active."""
    vae.eval()
    device = x.device
    with own_stream(seed, "diagnostics:active_units", device):
        units = active_units(vae.guide, x)
    with own_stream(seed, "diagnostics:kl", device):
        kl = kl_per_dimension(vae.model, vae.guide, x)
    xm = x[:mi_examples]
    info: dict[str, Any] = {"mean": None, "n": int(xm.shape[0]), "max": math.log(xm.shape[0])}
    own_only = "the guide scores only its own samples (a flow without a closed-form inverse)"
    if vae.guide.scores_any_z:
        with own_stream(seed, "diagnostics:mutual_information", device):
            info["mean"] = mutual_information(vae.guide, xm)
    else:  # q̂(z) needs q(z | x_m) at the z drawn for every other x_n
        info["reason"] = own_only
    out: dict[str, Any] = {
        "num_examples": int(x.shape[0]),
        "active_units": units,
        "kl": kl,
        "mutual_information": info,
    }
    if gap_examples is not None and not vae.guide.scores_any_z:  # r = (q + q_n)/2 needs q(z_n)
        out["amortisation_gap_reason"] = own_only
    elif gap_examples is not None:
        xg = x[:gap_examples]
        ld = None if log_det is None else log_det[:gap_examples]
        with own_stream(seed, "diagnostics:amortisation_gap", device):
            out["amortisation_gap"] = amortisation_gap(
                vae.model, vae.guide, xg, num_samples, Refinement(refine_steps), log_det=ld
            )
    message = collapse_message(units["active"], units["dimension"])
    if message is not None:
        warnings.warn(message, PosteriorCollapseWarning, stacklevel=2)
    return out


# ------------------------------------------------------------------ runs, Python models, output
def refusal(model: torch.nn.Module) -> str | None:
    """Why the diagnostics do not apply to ``model`` (they need a latent z and a guide), or
    ``None`` for a VAE."""
    if isinstance(model, HierarchicalVAE):  # p(z1) and q(z1 | x) are continuous mixtures
        return (
            "diagnostics read one latent z with closed-form q(z | x) and p(z); a two-level VAE "
            "(model.levels=2) has neither for z1 (use pyrogen evaluate for its log p(x))"
        )
    if isinstance(model, VAE) and model.conditional:
        return (
            "diagnostics read q(z | x) and p(z) without a context; a conditional VAE "
            "(model.conditional=true) is not diagnosed yet (use pyrogen evaluate for log p(x | c))"
        )
    if isinstance(model, VAE):
        return None
    return (
        f"diagnostics are about a latent z and its guide q(z | x): a VAE, not a "
        f"{type(model).__name__}"
    )


def _shuffled(n: int, seed: int, limit: int | None) -> torch.Tensor:
    """A seeded random order of ``range(n)``, cut to ``limit`` (stored splits can be sorted by
    class, so the first examples are no sample)."""
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed))[:limit]


@torch.no_grad()
def diagnose_run(
    run: Any,
    split: str = "test",
    *,
    max_examples: int | None = None,
    gap_examples: int | None = 100,
    num_samples: int = 1000,
    refine_steps: int = 100,
    seed: int = 0,
) -> dict[str, Any]:
    """:func:`diagnose_vae` on a trained run's ``split`` (at most ``max_examples`` of it, a
    seeded random subset, preprocessed as in training with a generator of ``seed``), with the
    preprocessing's log-determinant added to log p(x) and the ELBOs. ``{"family", "split",
    "num_examples", ...}``."""
    reason = refusal(run.model)
    if reason is not None:
        raise TypeError(reason)
    stored = run.dataset.split(split)
    x = stored[_shuffled(stored.shape[0], seed, max_examples).to(stored.device)]
    xp = run.dataset.process(x, torch.Generator().manual_seed(seed))
    log_det = run.dataset.log_det_jacobian(xp)
    run.learner.module.eval()
    result = diagnose_vae(
        run.model,
        xp,
        seed=seed,
        gap_examples=gap_examples,
        num_samples=num_samples,
        refine_steps=refine_steps,
        log_det=log_det,
    )
    return {"family": "vae", "split": split, **result}


@torch.no_grad()
def diagnose_model(
    obj: Any,
    data: torch.Tensor,
    *,
    gap_examples: int | None = 100,
    num_samples: int = 1000,
    refine_steps: int = 100,
    seed: int = 0,
) -> dict[str, Any]:
    """:func:`diagnose_vae` for a VAE, or the learner that trains one, built in Python, on the
    examples ``data`` (in the model's space, shape ``(N, *event_shape)``, in a seeded random
    order)."""
    model = obj if isinstance(obj, torch.nn.Module) else getattr(obj, "model", None)
    reason = refusal(model) if isinstance(model, torch.nn.Module) else None
    if reason is not None or not isinstance(model, torch.nn.Module):
        raise TypeError(reason or f"pyrogen.diagnose takes a VAE or its learner, not {obj!r}")
    if not torch.is_tensor(data):
        raise TypeError("pyrogen.diagnose: data= must be a torch tensor of examples")
    device = model.prior_loc.device
    x = data.to(device=device, dtype=torch.float32)
    x = x[_shuffled(x.shape[0], seed, None).to(device)]
    result = diagnose_vae(
        model,
        x,
        seed=seed,
        gap_examples=gap_examples,
        num_samples=num_samples,
        refine_steps=refine_steps,
    )
    return {"family": "vae", "split": "data", **result}


def kl_figure(result: dict[str, Any]) -> Figure | None:
    """Bars of E_x KL(q(z_u | x) ‖ p(z_u)) per latent dimension u, sorted from the largest,
    the active units (:func:`active_units`) in blue and the inactive in grey; ``None`` where
    the KL per dimension is not defined (``result["kl"]["reason"]``)."""
    kl, units = result["kl"], result["active_units"]
    if kl["per_dim"] is None:
        return None
    values = torch.tensor(kl["per_dim"])
    order = values.argsort(descending=True)
    active = torch.tensor(units["variance"]) > units["threshold"]
    colours = ["tab:blue" if active[u] else "tab:gray" for u in order.tolist()]
    d = values.numel()
    fig = Figure(figsize=(min(14.0, max(4.5, 0.25 * d + 2)), 3.6))
    ax = fig.subplots()
    ax.bar(range(d), values[order].numpy(), color=colours)
    if d <= 64:
        ax.set_xticks(range(d), [str(int(u)) for u in order], fontsize=7)
    ax.set_xlabel("latent dimension u (sorted)")
    what = "" if kl["kind"] == "exact" else " (of q's marginals)"
    ax.set_ylabel("KL per dimension (nats)")
    ax.set_title(
        f"E_x KL(q(z_u | x) ‖ p(z_u)){what}: total {kl['total']['mean']:.3g} nats; "
        f"{units['active']} of {d} units active (blue)",
        fontsize=9,
    )
    return fig


def save_kl_figure(result: dict[str, Any], path: str | os.PathLike) -> Path | None:
    """:func:`kl_figure` saved as a PNG at ``path`` (nothing is written where it is None)."""
    fig = kl_figure(result)
    if fig is None:
        return None
    fig.savefig(path, dpi=100, bbox_inches="tight")
    return Path(path)


def _value(est: dict[str, Any]) -> str:
    se = "" if est.get("stderr") is None else f" ± {est['stderr']:.3g}"
    return f"{est['mean']:.4g}{se}"


def format_diagnostics(result: dict[str, Any]) -> str:
    """A plain-text table of :func:`diagnose_run`'s result (nats per example)."""
    units, kl, mi = result["active_units"], result["kl"], result["mutual_information"]
    lines = [
        f"VAE diagnostics   split: {result['split']} ({result['num_examples']} examples)",
        f"{'active units':<22}{units['active']} of {units['dimension']} (Cov_x E_q[z_u | x] > "
        f"{units['threshold']})",
        f"{'KL(q ‖ p)':<22}{_value(kl['total'])} nats (E_x KL(q(z | x) ‖ p(z)))",
    ]
    if kl["per_dim"] is None:
        lines.append(f"{'KL per dimension':<22}none: {kl['reason']}")
    else:
        top = sorted(enumerate(kl["per_dim"]), key=lambda p: -p[1])[:5]
        listed = ", ".join(f"z{u} {v:.3g}" for u, v in top)
        lines.append(f"{'KL per dimension':<22}{kl['kind']}; largest: {listed}")
    if mi["mean"] is None:
        lines.append(f"{'I(x; z)':<22}none: {mi['reason']}")
    else:
        lines.append(
            f"{'I(x; z)':<22}{mi['mean']:.4g} nats (minibatch estimate on {mi['n']} examples; "
            f"at most log N = {mi['max']:.3g})"
        )
    gap = result.get("amortisation_gap")
    if "amortisation_gap_reason" in result:
        lines.append(f"{'inference gaps':<22}none: {result['amortisation_gap_reason']}")
    if gap is not None:
        lines.append(
            f"inference gaps on {gap['log_p']['n']} examples (K={gap['K']}, "
            f"{gap['refine_steps']} SVI steps per example):"
        )
        names = {
            "log_p": "log p(x) (IS)",
            "elbo_amortised": "ELBO, amortised q",
            "elbo_refined": "ELBO, refined q",
            "approximation_gap": "approximation gap",
            "amortisation_gap": "amortisation gap",
        }
        lines += [f"  {label:<20}{_value(gap[key])} nats" for key, label in names.items()]
    return "\n".join(lines)

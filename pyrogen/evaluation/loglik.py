"""Importance-sampled marginal log-likelihood and the ELBO, per example, for any Pyro
model/guide pair whose batch plate is named ``"data"``.

With z_k ~ q(z | x), k = 1..K, the importance weights w_k = p(x, z_k) / q(z_k | x) give

    log p(x) ≈ log (1/K) Σ_k w_k              (consistent as K → ∞; a lower bound on average:
                                              the IWAE bound of Burda et al. 2016)
    ELBO(x)  ≈ (1/K) Σ_k log w_k              (unbiased for the ELBO)

so ELBO ≤ IS estimate ≤ log p(x) in expectation, with equality when q(z | x) = p(z | x).
Particles run vectorised (a ``pyro.plate("particles")`` left of the data plate) in chunks,
so K = 5000 as in the IWAE paper fits in memory.

:func:`evaluate_elbo` gives instead the bound of any of Pyro's estimators on a split (e.g. the
K-particle IWAE bound of ``RenyiELBO(alpha=0)``), by the estimator's own ``loss``.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import pyro
import torch
from pyro import poutine
from pyro.infer import ELBO, ReweightedWakeSleep, TraceTailAdaptive_ELBO

from pyrogen.progress import steps


def log_importance_weights(
    model: Callable, guide: Callable, x: torch.Tensor, num_particles: int
) -> torch.Tensor:
    """log w_k(x_n) = log p(x_n, z_kn) − log q(z_kn | x_n), shape ``(num_particles, N)``."""
    with pyro.plate("particles", num_particles, dim=-2):
        guide_trace = poutine.trace(guide).get_trace(x)
        model_trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(x)
    log_w = torch.zeros(num_particles, x.shape[0], dtype=x.dtype, device=x.device)
    for trace, sign in ((model_trace, 1.0), (guide_trace, -1.0)):
        trace.compute_log_prob()
        for site in trace.nodes.values():
            if site["type"] == "sample":
                log_w = log_w + sign * site["log_prob"]
    return log_w


@torch.no_grad()
def elbo_and_importance_log_likelihood(
    model: Callable,
    guide: Callable,
    x: torch.Tensor,
    num_samples: int = 5000,
    batch_size: int = 100,
    max_elements: int = 20_000_000,
    quiet: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-example (ELBO estimate, importance-sampled log p(x)) in nats, each of shape (N,).

    ``batch_size`` examples at a time; particles in chunks of at most ``max_elements``
    values of x's size, so memory stays bounded whatever K.
    """
    elbos, logps = [], []
    dims = max(1, math.prod(x.shape[1:]))

    starts = range(0, x.shape[0], batch_size)
    for start in steps(starts, f"importance sampling (K={num_samples})", quiet=quiet):
        xb = x[start : start + batch_size]
        chunk = max(1, min(num_samples, max_elements // (xb.shape[0] * dims)))
        lse_parts, sums, done = [], torch.zeros(xb.shape[0], dtype=x.dtype, device=x.device), 0
        while done < num_samples:
            k = min(chunk, num_samples - done)
            log_w = log_importance_weights(model, guide, xb, k)
            lse_parts.append(torch.logsumexp(log_w, dim=0))
            sums += log_w.sum(0)
            done += k
        logps.append(torch.logsumexp(torch.stack(lse_parts), dim=0) - math.log(num_samples))
        elbos.append(sums / num_samples)
    return torch.cat(elbos), torch.cat(logps)


def importance_log_likelihood(
    model: Callable,
    guide: Callable,
    x: torch.Tensor,
    num_samples: int = 5000,
    batch_size: int = 100,
) -> torch.Tensor:
    """log p(x) ≈ log (1/K) Σ_k p(x, z_k) / q(z_k | x), z_k ~ q(z | x), per example (nats).

    Example::

        >>> logp = importance_log_likelihood(vae.model, guide, x_test, num_samples=5000)
        ... # doctest: +SKIP
    """
    return elbo_and_importance_log_likelihood(model, guide, x, num_samples, batch_size)[1]


@torch.no_grad()
def evaluate_elbo(
    model: Callable, guide: Callable, x: torch.Tensor, elbo: ELBO, batch_size: int = 1000
) -> float:
    """The mean per-example bound −``elbo.loss`` / N of any Pyro estimator on ``x`` (nats),
    in batches of ``batch_size``.

    For ``ReweightedWakeSleep`` it is the wake-θ bound (the IWAE bound with its K particles);
    ``TraceTailAdaptive_ELBO`` has no value to report (Pyro leaves its ``loss`` unimplemented:
    only its gradient is defined), so it is refused.

    Example::

        >>> iwae = evaluate_elbo(vae.model, guide, x_test, RenyiELBO(alpha=0, num_particles=50))
        ... # doctest: +SKIP
    """
    if isinstance(elbo, TraceTailAdaptive_ELBO):
        raise ValueError(
            "TraceTailAdaptive_ELBO estimates a gradient, not a bound: evaluate with Trace_ELBO"
        )
    total = 0.0
    for xb in x.split(batch_size):
        loss = elbo.loss(model, guide, xb)
        if isinstance(elbo, ReweightedWakeSleep):
            loss = loss[0]  # (wake-θ loss, wake-φ loss)
        total += float(loss)
    return -total / x.shape[0]

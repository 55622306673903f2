"""Every log-likelihood a trained run supports, whatever its family.

=======================  ======  =====  =====
estimator                 flow    VAE    GAN
=======================  ======  =====  =====
exact log p(x)            yes
bits / dim (images)       yes
ELBO (lower bound)                yes
importance-sampled                yes
Parzen window             yes     yes    yes
=======================  ======  =====  =====

Each value is a mean over the split's examples with its standard error, in nats per example,
in the data set's stored space ([0, 1] images or 2-D points) unless marked otherwise.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from pyrogen.compare_config import EvaluationConfig


def mean_stderr(values: torch.Tensor) -> dict[str, float]:
    """Mean and standard error ``std / sqrt(n)`` of per-example values."""
    values = values.detach().double().flatten()
    n = values.numel()
    se = float(values.std(unbiased=True) / math.sqrt(n)) if n > 1 else float("nan")
    return {"mean": float(values.mean()), "stderr": se, "n": n}


def _test_data(run: Any, ev: EvaluationConfig) -> tuple[torch.Tensor, torch.Tensor | None]:
    x = run.dataset.split(ev.split)
    y = run.dataset.labels(ev.split)
    if ev.max_test is not None:
        x = x[: ev.max_test]
        y = None if y is None else y[: ev.max_test]
    return x, y


@torch.no_grad()
def evaluate_run(run: Any, evaluation: EvaluationConfig | None = None) -> dict[str, Any]:
    """A dict ``{"family", "split", "parameters", "estimates": {name: {mean, stderr, ...}}}``."""
    ev = evaluation or EvaluationConfig()
    if ev.bounds and run.family != "vae":
        from pyrogen.config import ConfigError

        raise ConfigError(
            f"bounds ({', '.join(ev.bounds)}) apply to VAE runs, not to a {run.family}"
        )
    run.learner.module.eval()
    x, y = _test_data(run, ev)
    estimates: dict[str, dict[str, Any]] = {}
    family = run.family
    if family == "flow":
        from pyrogen.evaluation.flow_metrics import flow_log_likelihood

        estimates.update(flow_log_likelihood(run.model, x, run.dataset, y=y))
    elif family == "vae":
        from pyrogen.evaluation.loglik import elbo_and_importance_log_likelihood

        gen = torch.Generator().manual_seed(0)
        xp = run.dataset.process(x, gen)
        elbo, logp = elbo_and_importance_log_likelihood(
            run.model, run.learner.guide, xp, num_samples=ev.is_samples
        )
        estimates["elbo"] = mean_stderr(elbo)
        estimates["importance_sampled"] = {**mean_stderr(logp), "K": ev.is_samples}
        for spec in ev.bounds:
            estimates.update(_bound(run, xp, spec))
    from pyrogen.evaluation.parzen import parzen_evaluate

    valid = run.dataset.split("valid")[: ev.parzen_valid]
    if ev.parzen_sigmas is not None:
        sigmas = torch.tensor(ev.parzen_sigmas)
    elif run.dataset.kind == "points":  # 2-D toys have finer structure than [0.1, 1]
        sigmas = torch.logspace(-2, 0, 13)
    else:  # the GAN paper's grid for images in [0, 1]
        sigmas = torch.logspace(-1, 0, 10)
    parzen = parzen_evaluate(
        run.sample,
        valid.reshape(valid.shape[0], -1),
        x.reshape(x.shape[0], -1),
        num_samples=ev.parzen_samples,
        sigmas=sigmas,
    )
    estimates["parzen"] = parzen
    return {
        "family": family,
        "split": ev.split,
        "num_examples": int(x.shape[0]),
        "parameters": count_parameters(run.learner.module),
        "estimates": estimates,
    }


def parse_bound(spec: str) -> tuple[str, int]:
    """``"renyi:50"`` -> ("renyi", 50); ``"trace"`` -> ("trace", 1)."""
    from pyrogen.config import ConfigError

    name, _, k = spec.partition(":")
    try:
        particles = int(k) if k else 1
    except ValueError:
        particles = 0
    if particles < 1:
        raise ConfigError(f"a bound is NAME or NAME:K with K a positive integer, got {spec!r}")
    return name, particles


def _bound(run: Any, x: torch.Tensor, spec: str) -> dict[str, dict[str, Any]]:
    """The mean bound of one of Pyro's estimators (``elbo.name`` values) on ``x``, with K
    vectorised particles: ``renyi:K`` is the IWAE bound, ``rws:K`` its wake-θ value."""
    from dataclasses import replace

    from pyrogen.config import ConfigError
    from pyrogen.evaluation.loglik import evaluate_elbo
    from pyrogen.inference.elbo import check_compatible
    from pyrogen.registry import ELBOS

    name, k = parse_bound(spec)
    if name not in ELBOS:
        raise ConfigError(f"unknown bound {name!r} (allowed: {', '.join(ELBOS.names())})")
    cfg = replace(
        run.cfg.elbo, name=name, num_particles=k, vectorize_particles=k > 1, kl_warmup_steps=0
    )
    reason = check_compatible(run.cfg.guide, cfg)
    if name == "tail_adaptive":  # Pyro leaves its loss unimplemented: no value to report
        reason = "TraceTailAdaptive_ELBO estimates a gradient, not a bound: evaluate with trace"
    if reason is not None:
        raise ConfigError(f"bound {spec!r}: {reason}")
    elbo = ELBOS.get(name)(cfg)
    batch = max(1, 20_000 // k)  # examples per call: K particles of each in one trace
    value = evaluate_elbo(run.model, run.learner.guide, x, elbo, batch_size=batch)
    return {spec: {"mean": value, "stderr": float("nan"), "n": int(x.shape[0]), "K": k}}


def count_parameters(module: torch.nn.Module) -> int:
    """Trainable parameters of what the learner trains: decoder and encoder (VAE), the flow,
    generator and discriminator (GAN)."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


def format_report(result: dict[str, Any]) -> str:
    """A plain-text table of :func:`evaluate_run`'s result."""
    lines = [
        f"family: {result['family']}   split: {result['split']} "
        f"({result['num_examples']} examples)   parameters: {result['parameters']:,}",
        f"{'estimator':<24}{'mean':>14}{'± s.e.':>12}  notes",
    ]
    for name, est in result["estimates"].items():
        notes = ", ".join(
            f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
            for k, v in est.items()
            if k not in ("mean", "stderr", "n")
        )
        lines.append(f"{name:<24}{est['mean']:>14.4f}{est['stderr']:>12.4f}  {notes}")
    return "\n".join(lines)

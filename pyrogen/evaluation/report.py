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

The family table (:mod:`pyrogen.families`) says which estimators a family has; Parzen
windows score any sampler. Each value is a mean over the split's examples with its standard
error, in nats per example. Each estimator draws from its own random stream (seeded from
``evaluation.seed`` and the estimator's name), so asking for one more estimator never changes
another's number.

Under ``torchrun`` (``WORLD_SIZE > 1``) the examples are shared among the processes in chunks
that draw from their own streams (:mod:`pyrogen.evaluation.streams`); the per-example values
are gathered, so the numbers are those of one process.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import torch

from pyrogen.config import ConfigError, EvaluationConfig
from pyrogen.evaluation.stats import mean_stderr
from pyrogen.evaluation.streams import own_stream, per_example
from pyrogen.families import family_of
from pyrogen.progress import line
from pyrogen.runtime import cpu_settings
from pyrogen.training import distributed

__all__ = ["evaluate_run", "format_report", "own_stream", "parse_bound", "parzen"]


def _split(run: Any, ev: EvaluationConfig) -> tuple[torch.Tensor, torch.Tensor | None]:
    x = run.dataset.split(ev.split)
    y = run.dataset.labels(ev.split)
    if ev.max_test is not None and ev.max_test < x.shape[0]:
        # a seeded random subset: file splits can be ordered (binarized MNIST by class)
        pick = torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(ev.seed))
        pick = pick[: ev.max_test].to(x.device)
        x = x[pick]
        y = None if y is None else y[pick]
    return x, y


@torch.no_grad()
def evaluate_run(run: Any, evaluation: EvaluationConfig | None = None) -> dict[str, Any]:
    """A dict ``{"family", "split", "num_examples", "parameters", "estimates": {name: {mean,
    stderr, n, ...}}}`` (``stderr`` is ``None`` where it cannot be estimated)."""
    ev = evaluation or EvaluationConfig()
    family = family_of(run.cfg)
    if ev.bounds and not family.has_bounds:
        raise ConfigError(
            f"bounds ({', '.join(ev.bounds)}) apply to VAE runs, not to a {family.name}"
        )
    run.learner.module.eval()
    x, y = _split(run, ev)
    device = x.device
    with (
        distributed.session(device),
        cpu_settings(ev.num_threads, count_parameters(run.learner.module)),
    ):
        estimates = dict(family.evaluate(run, x, y, ev))
        estimates["parzen"] = parzen(run, x, ev)
    discrete = run.dataset.is_binary()
    for name, est in estimates.items():
        est.setdefault("unit", "bits/dim" if name == "bits_per_dim" else "nats")
        probability = discrete and name not in ("parzen", "exact", "exact_model_space")
        est.setdefault("kind", "discrete" if probability else "density")
    return {
        "family": family.name,
        "split": ev.split,
        "num_examples": int(x.shape[0]),
        "parameters": count_parameters(run.learner.module),
        "estimates": estimates,
    }


def parzen(run: Any, x: torch.Tensor, ev: EvaluationConfig) -> dict[str, Any]:
    """The GAN paper's Parzen-window protocol on the run's samples (σ chosen on the first
    ``parzen_valid`` validation examples), in the stored data space: what
    :func:`~pyrogen.evaluation.parzen.parzen_evaluate` computes, with the test examples shared
    among the processes of a data-parallel run (every process draws the same samples)."""
    from pyrogen.evaluation.parzen import parzen_log_likelihood, select_sigma

    valid = run.dataset.split("valid")[: ev.parzen_valid]
    if ev.parzen_sigmas is not None:
        sigmas = torch.tensor(ev.parzen_sigmas)
    elif run.dataset.kind == "points":  # 2-D toys have finer structure than [0.1, 1]
        sigmas = torch.logspace(-2, 0, 13)
    else:  # the GAN paper's grid for images in [0, 1]
        sigmas = torch.logspace(-1, 0, 10)
    line(f"Parzen window: drawing {ev.parzen_samples:,} samples", ev.quiet)
    with own_stream(ev.seed, "parzen", x.device):
        samples = run.sample(ev.parzen_samples)
    line(f"Parzen window: choosing sigma on {len(valid):,} examples", ev.quiet)
    sigma = select_sigma(samples, valid.reshape(valid.shape[0], -1), sigmas)
    flat = x.reshape(x.shape[0], -1)
    values = per_example(
        x.shape[0],
        lambda start, stop, _: {"ll": parzen_log_likelihood(samples, flat[start:stop], sigma)},
        ev.seed,
        "parzen",
        x.device,
        quiet=ev.quiet,
    )
    return {**mean_stderr(values["ll"]), "sigma": sigma, "num_samples": ev.parzen_samples}


def parse_bound(spec: str) -> tuple[str, int]:
    """``"renyi:50"`` -> ("renyi", 50); ``"trace"`` -> ("trace", 1)."""
    name, _, k = spec.partition(":")
    try:
        particles = int(k) if k else 1
    except ValueError:
        particles = 0
    if particles < 1 or particles > 1 << 20:
        raise ConfigError(
            f"a bound is NAME or NAME:K with K an integer in [1, {1 << 20}], got {spec!r}"
        )
    from pyrogen.registry import ELBOS, check_name, populate

    populate()
    check_name(ELBOS, name, "--bound")  # names the nearest estimator and the allowed ones
    return name, particles


def estimator_bound(
    run: Any, x: torch.Tensor, spec: str, seed: int = 0
) -> dict[str, dict[str, Any]]:
    """The mean bound of one of Pyro's estimators (``elbo.name`` values) on the stored
    examples ``x`` (preprocessed chunk by chunk), with K vectorised particles: ``renyi:K`` is
    the IWAE bound, ``rws:K`` its wake-θ value."""
    from pyrogen.evaluation.loglik import evaluate_elbo
    from pyrogen.inference.elbo import check_compatible, make_elbo

    name, k = parse_bound(spec)
    e = replace(run.cfg.elbo, name=name, num_particles=k, vectorize_particles=k > 1)
    reason = check_compatible(
        run.cfg.guide.name,
        name,
        num_particles=k,
        vectorize_particles=k > 1,
        alpha=e.alpha,
        baseline=run.cfg.guide.baseline,
    )
    if name == "tail_adaptive":  # Pyro leaves its loss unimplemented: no value to report
        reason = "TraceTailAdaptive_ELBO estimates a gradient, not a bound: evaluate with trace"
    if reason is not None:
        raise ConfigError(f"bound {spec!r}: {reason}")
    elbo = make_elbo(name, num_particles=k, vectorize_particles=k > 1, alpha=e.alpha)
    batch = max(1, 20_000 // k)  # examples per call: K particles of each in one trace
    vae = run.model

    def chunk(start: int, stop: int, gen: torch.Generator) -> dict[str, torch.Tensor]:
        xp = run.dataset.process(x[start:stop], gen)
        mean = evaluate_elbo(vae.model, vae.guide, xp, elbo, batch_size=batch)
        return {"sum": torch.tensor([mean * (stop - start)], dtype=torch.float64)}

    total = per_example(x.shape[0], chunk, seed, f"bound {spec}", x.device)["sum"].sum()
    value = float(total) / x.shape[0]
    return {spec: {"mean": value, "stderr": None, "n": int(x.shape[0]), "K": k}}


def count_parameters(module: torch.nn.Module) -> int:
    """Trainable parameters of what the learner trains: decoder and encoder (VAE), the flow,
    generator and discriminator (GAN)."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


def _number(value: Any, width: int) -> str:
    return f"{'—':>{width}}" if value is None else f"{value:>{width}.4f}"


KINDS = {
    "discrete": "log-probability of the discrete (binary) data",
    "density": "log-density of continuous values: compare only with densities in the same space",
}


def format_report(result: dict[str, Any]) -> str:
    """A plain-text table of :func:`evaluate_run`'s result, with units and, for each number,
    whether it is a probability of discrete data or a density."""
    lines = [
        f"family: {result['family']}   split: {result['split']} "
        f"({result['num_examples']} examples)   parameters: {result['parameters']:,}",
        f"{'estimator':<22}{'mean':>13}{'± s.e.':>10}  {'unit':<9}{'kind':<9}  notes",
    ]
    kinds = set()
    for name, est in result["estimates"].items():
        notes = ", ".join(
            f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
            for k, v in est.items()
            if k not in ("mean", "stderr", "n", "unit", "kind")
        )
        kind = est.get("kind", "")
        kinds.add(kind)
        lines.append(
            f"{name:<22}{_number(est['mean'], 13)}{_number(est['stderr'], 10)}  "
            f"{est.get('unit', ''):<9}{kind:<9}  {notes}"
        )
    lines += [f"  {k}: {KINDS[k]}" for k in ("discrete", "density") if k in kinds]
    return "\n".join(lines)

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

The estimators follow from what the model is (:func:`model_kind`): a latent-variable Pyro
program with a guide gets the ELBO and importance sampling, a flow its exact density, and
Parzen windows score any sampler. Each value is a mean over the split's examples with its standard
error, in nats per example. Each estimator draws from its own random stream (seeded from
``evaluation.seed`` and the estimator's name), so asking for one more estimator never changes
another's number.

:func:`evaluate_run` scores a trained run (anything with ``cfg``, ``dataset``, ``learner``,
``model`` and ``sample``: :class:`~pyrogen.training.run.TrainedRun`), :func:`evaluate_model` a
model or learner built in Python (``pyrogen.evaluate(learner, data=x_test, valid=x_valid)``);
both pick the estimators by the model's class, so they give the same numbers on the same
examples and seed.

Under ``torchrun`` (``WORLD_SIZE > 1``) the examples are shared among the processes in chunks
that draw from their own streams (:mod:`pyrogen.evaluation.streams`); the per-example values
are gathered, so the numbers are those of one process.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import replace
from types import SimpleNamespace
from typing import Any

import torch

from pyrogen.config import ConfigError, EvaluationConfig
from pyrogen.data import Dataset
from pyrogen.evaluation.clusters import cluster_accuracy, clusters
from pyrogen.evaluation.conditional import conditional_accuracy, is_class_conditional
from pyrogen.evaluation.flow_metrics import flow_log_likelihood
from pyrogen.evaluation.loglik import (
    KHAT_THRESHOLD,
    PsisWarning,
    evaluate_elbo,
    importance_sampling,
    psis_min_samples,
    summed_out_log_weights,
)
from pyrogen.evaluation.parzen import parzen_log_likelihood, select_sigma
from pyrogen.evaluation.stats import mean_stderr
from pyrogen.evaluation.streams import EXAMPLES_PER_CHUNK, own_stream, per_example
from pyrogen.inference.base import device_of
from pyrogen.inference.elbo import ENUMERATING_ELBOS, check_compatible, make_elbo
from pyrogen.models.flow import Flow
from pyrogen.models.gan import GAN
from pyrogen.models.program import PyroProgram
from pyrogen.models.ssvae import SSVAE
from pyrogen.models.vae import VAE
from pyrogen.parallel import distributed
from pyrogen.progress import line
from pyrogen.registry import ELBOS, check_name
from pyrogen.runtime import cpu_settings

__all__ = [
    "evaluate_model",
    "evaluate_run",
    "format_report",
    "model_kind",
    "own_stream",
    "parse_bound",
    "parzen",
]


def model_kind(model: torch.nn.Module) -> str:
    """``"vae"`` (a latent-variable model with an amortised guide), ``"flow"`` (an exact
    density), ``"gan"`` (a sampler without a likelihood) or ``"program"`` (a Pyro program
    given from Python) or ``"ssvae"`` (M2, a class label y beside z), by the model's class; a
    ``TypeError`` for anything else."""
    kinds = ((VAE, "vae"), (Flow, "flow"), (GAN, "gan"), (PyroProgram, "program"), (SSVAE, "ssvae"))
    for cls, kind in kinds:
        if isinstance(model, cls):
            return kind
    raise TypeError(f"pyrogen.evaluate takes {ACCEPTED}; got {type(model).__name__}")


def has_bounds(model: torch.nn.Module) -> bool:
    """Whether ``evaluation.bounds`` (Pyro's estimators of a bound on log p(x)) apply: the
    model is a latent-variable program with a guide."""
    return isinstance(model, VAE)


def likelihood_estimates(
    run: Any,
    x: torch.Tensor,
    y: torch.Tensor | None,
    ev: EvaluationConfig,
    index: torch.Tensor | None = None,
) -> dict[str, dict[str, Any]]:
    """The model's own log-likelihood estimates of the stored examples ``x``: for a VAE the
    ELBO and IS log p(x) with K = ``ev.is_samples`` (nats per example, in the data set's
    stored space: the model's log-density plus the log-determinant of the preprocessing;
    each chunk of examples with its own noise), with the PSIS k̂ of its weights summarised
    (:func:`psis_summary`; a warning names the examples above 0.7 by their ``index`` in the
    split, their position in ``x`` by default), and any bounds ``ev.bounds``; for a flow the
    exact log-likelihood (and bits/dim for images); for a GAN nothing."""
    if isinstance(run.model, Flow):
        return flow_log_likelihood(run.model, x, run.dataset, y=y, seed=ev.seed)
    if not isinstance(run.model, VAE | PyroProgram | SSVAE):
        return {}
    accuracy = {}
    if isinstance(run.model, SSVAE) and y is not None:
        accuracy = {"accuracy": classification_accuracy(run.model, x, y)}

    vae = run.model
    labels = None  # a conditional VAE's log p(x | c): each example's own context
    if getattr(vae, "conditional", False) and isinstance(vae, VAE):
        if y is None:
            raise ConfigError(
                "a conditional VAE scores log p(x | c): the evaluated split has no labels "
                "or context"
            )
        labels = y
    weights: dict[str, Any] = {}
    if isinstance(vae, PyroProgram):  # sites the model sums out are summed out here too
        nesting = vae.facts.max_plate_nesting

        def program_weights(model: Any, guide: Any, xb: torch.Tensor, k: int) -> torch.Tensor:
            try:
                return summed_out_log_weights(model, guide, xb, k, max_plate_nesting=nesting)
            except ValueError as e:
                raise ConfigError(f"pyrogen.evaluate: {e}") from None

        weights = {"log_weights": program_weights}
    model = vae.forward if isinstance(vae, PyroProgram) else vae.model

    def chunk(start: int, stop: int, gen: torch.Generator) -> dict[str, torch.Tensor]:
        xp = run.dataset.process(x[start:stop], gen)
        given = {} if labels is None else {"y": labels[start:stop].to(xp.device)}
        elbo, logp, khat = importance_sampling(
            model,
            vae.guide,
            xp,
            num_samples=ev.is_samples,
            batch_size=EXAMPLES_PER_CHUNK,
            quiet=True,
            **weights,
            **given,
        )
        log_det = run.dataset.log_det_jacobian(xp).to(elbo.dtype)
        khats = {} if khat is None else {"khat": khat}
        return {"elbo": elbo + log_det, "logp": logp + log_det, **khats}

    values = per_example(x.shape[0], chunk, ev.seed, "vae", x.device, quiet=ev.quiet)
    out = {
        "elbo": mean_stderr(values["elbo"]),
        "importance_sampled": {
            **mean_stderr(values["logp"]),
            "K": ev.is_samples,
            "psis_khat": psis_summary(values.get("khat"), ev.is_samples, index),
        },
    }
    for spec in ev.bounds:
        out.update(estimator_bound(run, x, spec, ev.seed, y=labels))
    if isinstance(vae, VAE) and vae.enumerates_component and y is not None:  # GMVAE clusters
        assigned = clusters(run, x, seed=ev.seed)
        acc = cluster_accuracy(assigned, y, vae.num_components)
        del acc["mapping"]
        out["cluster_accuracy"] = {**acc, "unit": "fraction", "kind": "clustering"}
    return {**out, **accuracy}


def classification_accuracy(model: SSVAE, x: torch.Tensor, y: torch.Tensor) -> dict[str, Any]:
    """The share of examples whose argmax_y q(y | x) is their label, with its binomial
    standard error √(p(1 − p)/n)."""
    hits = torch.cat(
        [model.classify(xb) == yb for xb, yb in zip(x.split(1000), y.split(1000), strict=True)]
    )
    p = hits.double().mean().item()
    n = hits.numel()
    stderr = math.sqrt(p * (1 - p) / n) if n > 1 else None
    return {"mean": p, "stderr": stderr, "n": n, "unit": "fraction", "kind": "classification"}


def psis_summary(
    khat: torch.Tensor | None, num_samples: int, index: torch.Tensor | None = None
) -> dict[str, Any]:
    """``{"max", "share_above_0.7", "n", "infinite"}`` of the per-example PSIS k̂ (``infinite``:
    examples whose weights have too few values in the tail for a fit, as Pyro's
    ``psis_diagnostic``; ``max`` is then ``inf``), or ``None`` values with a ``reason`` when K
    is too small for a tail fit. Warns (:class:`~pyrogen.evaluation.loglik.PsisWarning`) with
    the examples whose k̂ > 0.7, by their ``index`` (their position by default)."""
    share = f"share_above_{KHAT_THRESHOLD}"
    if khat is None:
        reason = f"K={num_samples} < {psis_min_samples()}: too few weights for a Pareto tail fit"
        return {"max": None, share: None, "n": 0, "infinite": 0, "reason": reason}
    bad = (khat > KHAT_THRESHOLD).nonzero().flatten()
    if bad.numel() and distributed.is_main():
        names = (bad if index is None else index.cpu()[bad]).tolist()
        listed = ", ".join(map(str, names[:10]))
        more = f" and {len(names) - 10} more" if len(names) > 10 else ""
        warnings.warn(
            f"PSIS k̂ > {KHAT_THRESHOLD} for {len(names)} of {khat.numel()} examples (split "
            f"indices {listed}{more}): their importance-sampled log p(x) is unreliable; use "
            f"more samples K (--is-samples, now {num_samples}) or a better guide",
            PsisWarning,
            stacklevel=2,
        )
    return {
        "max": float(khat.max()),
        share: float((khat > KHAT_THRESHOLD).double().mean()),
        "n": int(khat.numel()),
        "infinite": int(torch.isinf(khat).sum()),
    }


def _split(run: Any, ev: EvaluationConfig) -> tuple[torch.Tensor, torch.Tensor | None]:
    return _at_most(run.dataset.split(ev.split), run.dataset.labels(ev.split), ev)


def _at_most(
    x: torch.Tensor, y: torch.Tensor | None, ev: EvaluationConfig
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``x`` (and its labels), or a seeded random subset of ``ev.max_test`` of them."""
    pick = _subset(x.shape[0], ev)
    if pick is not None:
        pick = pick.to(x.device)
        x = x[pick]
        y = None if y is None else y[pick]
    return x, y


def _subset(n: int, ev: EvaluationConfig) -> torch.Tensor | None:
    """The indices of :func:`_at_most`'s subset of ``n`` examples (``None``: all of them)."""
    if ev.max_test is None or ev.max_test >= n:
        return None
    # a seeded random subset: file splits can be ordered (binarized MNIST by class)
    pick = torch.randperm(n, generator=torch.Generator().manual_seed(ev.seed))
    return pick[: ev.max_test]


@torch.no_grad()
def evaluate_run(run: Any, evaluation: EvaluationConfig | None = None) -> dict[str, Any]:
    """A dict ``{"family", "split", "num_examples", "parameters", "estimates": {name: {mean,
    stderr, n, ...}}}`` (``stderr`` is ``None`` where it cannot be estimated)."""
    ev = evaluation or EvaluationConfig()
    if ev.bounds and not has_bounds(run.model):
        raise ConfigError(
            f"bounds ({', '.join(ev.bounds)}) apply to VAE runs, not to a {model_kind(run.model)}"
        )
    for spec in ev.bounds:  # refused before any estimate is computed
        reason = _summed_out(run.model, parse_bound(spec)[0])
        if reason:
            raise ConfigError(f"bound {spec!r}: {reason}")
    x, y = _split(run, ev)
    index = _subset(run.dataset.split(ev.split).shape[0], ev)
    return _report(run, x, y, ev, ev.split, index=index)


def _report(
    run: Any, x: torch.Tensor, y: torch.Tensor | None, ev: EvaluationConfig, split: str,
    with_parzen: bool = True, index: torch.Tensor | None = None,
) -> dict[str, Any]:  # fmt: skip
    """The model's estimates and Parzen's on the stored examples ``x``, with units."""
    run.learner.module.eval()
    device = x.device
    with (
        distributed.session(device),
        cpu_settings(ev.num_threads, count_trainable_parameters(run.learner.module)),
    ):
        estimates = dict(likelihood_estimates(run, x, y, ev, index))
        if with_parzen:
            estimates["parzen"] = parzen(run, x, ev)
        if with_parzen and y is not None and is_class_conditional(run.model):
            estimates.update(conditional_accuracy(run, x, y, seed=ev.seed))
    discrete = run.dataset.is_binary()
    for name, est in estimates.items():
        est.setdefault("unit", "bits/dim" if name == "bits_per_dim" else "nats")
        probability = discrete and name not in ("parzen", "exact", "exact_model_space")
        est.setdefault("kind", "discrete" if probability else "density")
    return {
        "family": model_kind(run.model),
        "split": split,
        "num_examples": int(x.shape[0]),
        "parameters": count_trainable_parameters(run.learner.module),
        "estimates": estimates,
    }


class _PythonRun:
    """What the estimators read from a run, for a model built in Python: the model, the
    module holding every trained network, and the given examples as a data set without
    preprocessing (the model's space is the data's)."""

    cfg = None

    def __init__(self, model: torch.nn.Module, module: torch.nn.Module, dataset: Any) -> None:
        self.model = model
        self.learner = SimpleNamespace(model=model, module=module)
        self.dataset = dataset

    @torch.no_grad()
    def sample(self, n: int) -> torch.Tensor:
        self.learner.module.eval()
        return self.dataset.to_data_space(self.model.sample(n))


ACCEPTED = "a TrainedRun (pyrogen.train / pyrogen.load), a VAE, Flow or GAN, or their learner"


def _model_and_module(obj: Any) -> tuple[torch.nn.Module, torch.nn.Module]:
    """The generative model and the module of every trained network (a learner is anything
    holding such a ``model`` and a ``module``)."""
    model, module = obj, obj
    if not isinstance(obj, torch.nn.Module) or not hasattr(obj, "sample"):
        model, module = getattr(obj, "model", None), getattr(obj, "module", None)
    if not isinstance(module, torch.nn.Module) or not isinstance(model, torch.nn.Module):
        raise TypeError(f"pyrogen.evaluate takes {ACCEPTED}; got {type(obj).__name__}")
    try:
        model_kind(model)  # a VAE, Flow or GAN
    except TypeError:
        raise TypeError(f"pyrogen.evaluate takes {ACCEPTED}; got {type(obj).__name__}") from None
    return model, module


def _as_tensor(value: Any, name: str, device: torch.device) -> torch.Tensor:
    if not torch.is_tensor(value):
        raise TypeError(f"pyrogen.evaluate: {name}= must be a torch tensor of examples")
    return value.to(device=device, dtype=torch.float32)


@torch.no_grad()
def evaluate_model(
    obj: Any,
    evaluation: EvaluationConfig | None = None,
    *,
    data: torch.Tensor | None = None,
    valid: torch.Tensor | None = None,
    labels: torch.Tensor | None = None,
) -> dict[str, Any]:
    """Every log-likelihood estimate the model has, as :func:`evaluate_run` returns, for a
    model or learner built in Python: a :class:`~pyrogen.models.vae.VAE` (ELBO and
    importance-sampled log p(x)), a
    :class:`~pyrogen.models.flow.Flow` (exact log p(x)) or a :class:`~pyrogen.models.gan.GAN`
    (no likelihood of its own), or the learner that trains one. Then ``data`` holds the
    examples to score, in the model's space (shape ``(N, *event_shape)``), ``labels`` their
    classes for a class-conditional flow, and ``valid`` the validation examples on which the
    Parzen window's sigma is chosen (the GAN paper's protocol: required for a GAN, and
    without it a VAE or flow gets no Parzen estimate). The Parzen grid of sigmas is the one
    for points (10^-2 .. 1) unless ``evaluation.parzen_sigmas`` is set. The same examples
    and ``evaluation.seed`` give the numbers a run of the same model gets.

    Example::

        >>> learner = pyrogen.VariationalLearner(flow)  # doctest: +SKIP
        >>> pyrogen.evaluate(learner, data=x_test)["estimates"]["exact"]  # doctest: +SKIP
    """
    model, module = _model_and_module(obj)
    ev = evaluation or EvaluationConfig()
    if data is None:
        raise TypeError(
            f"pyrogen.evaluate({type(obj).__name__}) needs data=: the examples to score"
        )
    if ev.bounds:
        raise ConfigError(
            "evaluation.bounds need the run's config (its guide and estimator): evaluate a run "
            "from pyrogen.train or pyrogen.load"
        )

    device = device_of(module)
    x = _as_tensor(data, "data", device)
    continuous = getattr(model, "context_dim", None) is not None  # c ∈ ℝ^C, not classes
    kind = torch.float32 if continuous else torch.int64
    y = None if labels is None else labels.to(device=device, dtype=kind)

    if isinstance(model, GAN) and valid is None:
        raise TypeError(
            "pyrogen.evaluate(GAN): a GAN has no likelihood of its own; its Parzen-window "
            "estimate chooses sigma on validation examples: pass valid=x_valid"
        )
    v = x[:0] if valid is None else _as_tensor(valid, "valid", device)
    dataset = Dataset(
        name="array",
        train=x,
        valid=v,
        test=x,
        event_shape=tuple(x.shape[1:]),
        kind="points",
        source="the examples passed to pyrogen.evaluate",
    )
    index = _subset(x.shape[0], ev)
    x, y = _at_most(x, y, ev)
    run = _PythonRun(model, module, dataset)
    return _report(run, x, y, ev, "data", with_parzen=valid is not None, index=index)


def parzen(run: Any, x: torch.Tensor, ev: EvaluationConfig) -> dict[str, Any]:
    """The GAN paper's Parzen-window protocol on the run's samples (σ chosen on the first
    ``parzen_valid`` validation examples), in the stored data space: what
    :func:`~pyrogen.evaluation.parzen.parzen_evaluate` computes, with the test examples shared
    among the processes of a data-parallel run (every process draws the same samples)."""
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
    samples = samples.reshape(samples.shape[0], -1).to(torch.float64)  # once, not per chunk
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

    check_name(ELBOS, name, "--bound")  # names the nearest estimator and the allowed ones
    return name, particles


def _summed_out(vae: VAE, name: str) -> str | None:
    """Why the estimator ``name`` cannot bound a mixture-prior VAE's log p(x), or ``None``."""
    if vae.prior_kind == "mixture" and name not in ENUMERATING_ELBOS:
        return (
            f"{name} would sample the mixture prior's component c instead of summing it out "
            f"(model.prior=mixture): use {' or '.join(ENUMERATING_ELBOS)}"
        )
    return None


def estimator_bound(
    run: Any, x: torch.Tensor, spec: str, seed: int = 0, y: torch.Tensor | None = None
) -> dict[str, dict[str, Any]]:
    """The mean bound of one of Pyro's estimators (``elbo.name`` values) on the stored
    examples ``x`` (preprocessed chunk by chunk), with K vectorised particles: ``renyi:K`` is
    the IWAE bound, ``rws:K`` its wake-θ value (a conditional VAE's on log p(x | c), given
    the examples' context ``y``)."""
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
    reason = reason or _summed_out(run.model, name)
    if reason is not None:
        raise ConfigError(f"bound {spec!r}: {reason}")
    elbo = make_elbo(name, num_particles=k, vectorize_particles=k > 1, alpha=e.alpha)
    batch = max(1, 20_000 // k)  # examples per call: K particles of each in one trace
    vae = run.model

    def chunk(start: int, stop: int, gen: torch.Generator) -> dict[str, torch.Tensor]:
        xp = run.dataset.process(x[start:stop], gen)
        yb = None if y is None else y[start:stop].to(xp.device)
        mean = evaluate_elbo(vae.model, vae.guide, xp, elbo, batch_size=batch, y=yb)
        return {"sum": torch.tensor([mean * (stop - start)], dtype=torch.float64)}

    total = per_example(x.shape[0], chunk, seed, f"bound {spec}", x.device)["sum"].sum()
    value = float(total) / x.shape[0]
    return {spec: {"mean": value, "stderr": None, "n": int(x.shape[0]), "K": k}}


def count_trainable_parameters(module: torch.nn.Module) -> int:
    """Trainable parameters of what the learner trains: decoder and encoder (VAE), the flow,
    generator and discriminator (GAN)."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


def _number(value: Any, width: int) -> str:
    return f"{'—':>{width}}" if value is None else f"{value:>{width}.4f}"


def _note(key: str, value: Any) -> str:
    """``key=value`` for the notes column; the PSIS k̂ summary as ``k̂ max=0.41 (0.0% > 0.7)``
    or why there is none."""
    if key == "psis_khat":
        share = next(v for k, v in value.items() if k.startswith("share_above_"))
        if value["max"] is None:
            return f"k̂ none ({value['reason']})"
        return f"k̂ max={value['max']:.3g} ({share:.1%} > 0.7)"
    return f"{key}={value:.4g}" if isinstance(value, float) else f"{key}={value}"


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
            _note(k, v) for k, v in est.items() if k not in ("mean", "stderr", "n", "unit", "kind")
        )
        kind = est.get("kind", "")
        kinds.add(kind)
        lines.append(
            f"{name:<22}{_number(est['mean'], 13)}{_number(est['stderr'], 10)}  "
            f"{est.get('unit', ''):<9}{kind:<9}  {notes}"
        )
    lines += [f"  {k}: {KINDS[k]}" for k in ("discrete", "density") if k in kinds]
    return "\n".join(lines)

"""ELBO estimators: Pyro's own classes, chosen and configured by name (``elbo.name``).

=============  ==============================  ==================================================
name           Pyro class                      what it estimates
=============  ==============================  ==================================================
trace          ``Trace_ELBO``                  E_q[log p(x,z) − log q(z|x)], Monte Carlo
jit_trace      ``JitTrace_ELBO``               the same, compiled with the PyTorch JIT
mean_field     ``TraceMeanField_ELBO``         E_q[log p(x|z)] − KL(q‖p), the KL in closed form
jit_mean_field ``JitTraceMeanField_ELBO``      the same, compiled
trace_graph    ``TraceGraph_ELBO``             Trace_ELBO with Rao-Blackwellised score-function
                                               terms and baselines (needed by guide baselines)
jit_trace_graph ``JitTraceGraph_ELBO``         the same, compiled
renyi          ``RenyiELBO``                   the Rényi α bound; α = 0 is the IWAE bound
                                               log (1/K) Σ_k p(x,z_k)/q(z_k|x) with K particles
tail_adaptive  ``TraceTailAdaptive_ELBO``      the tail-adaptive f-divergence (Wang et al. 2018)
rws            ``ReweightedWakeSleep``         reweighted wake-sleep (Bornschein & Bengio 2015)
=============  ==============================  ==================================================

:func:`check_compatible` refuses, when the config is read, the pairs that cannot work.
"""

from __future__ import annotations

from pyro import infer

from pyrogen.config import ELBOConfig, GuideConfig
from pyrogen.registry import ELBOS

MAX_PLATE_NESTING = 1  # the data plate; vectorised particles add one dimension to its left


def _common(cfg: ELBOConfig) -> dict:
    return {
        "num_particles": cfg.num_particles,
        "vectorize_particles": cfg.vectorize_particles,
        "max_plate_nesting": MAX_PLATE_NESTING,
    }


@ELBOS.register("trace")
def trace(cfg: ELBOConfig) -> infer.ELBO:
    """Trace_ELBO: the Monte Carlo ELBO (reparameterised or score-function gradients)."""
    return infer.Trace_ELBO(**_common(cfg))


@ELBOS.register("jit_trace")
def jit_trace(cfg: ELBOConfig) -> infer.ELBO:
    """JitTrace_ELBO: Trace_ELBO compiled with the PyTorch JIT."""
    return infer.JitTrace_ELBO(**_common(cfg), ignore_jit_warnings=True)


@ELBOS.register("mean_field")
def mean_field(cfg: ELBOConfig) -> infer.ELBO:
    """TraceMeanField_ELBO: the KL term in closed form where torch knows it."""
    return infer.TraceMeanField_ELBO(**_common(cfg))


@ELBOS.register("jit_mean_field")
def jit_mean_field(cfg: ELBOConfig) -> infer.ELBO:
    """JitTraceMeanField_ELBO: TraceMeanField_ELBO compiled with the PyTorch JIT."""
    return infer.JitTraceMeanField_ELBO(**_common(cfg), ignore_jit_warnings=True)


@ELBOS.register("trace_graph")
def trace_graph(cfg: ELBOConfig) -> infer.ELBO:
    """TraceGraph_ELBO: score-function terms with baselines and Rao-Blackwellisation."""
    return infer.TraceGraph_ELBO(**_common(cfg))


@ELBOS.register("jit_trace_graph")
def jit_trace_graph(cfg: ELBOConfig) -> infer.ELBO:
    """JitTraceGraph_ELBO: TraceGraph_ELBO compiled with the PyTorch JIT."""
    return infer.JitTraceGraph_ELBO(**_common(cfg), ignore_jit_warnings=True)


@ELBOS.register("renyi")
def renyi(cfg: ELBOConfig) -> infer.ELBO:
    """RenyiELBO with ``elbo.alpha`` (0: the IWAE bound) over ``elbo.num_particles``."""
    return infer.RenyiELBO(alpha=cfg.alpha, **_common(cfg))


@ELBOS.register("tail_adaptive")
def tail_adaptive(cfg: ELBOConfig) -> infer.ELBO:
    """TraceTailAdaptive_ELBO (needs vectorised particles, num_particles > 1)."""
    return infer.TraceTailAdaptive_ELBO(**_common(cfg))


@ELBOS.register("rws")
def rws(cfg: ELBOConfig) -> infer.ELBO:
    """ReweightedWakeSleep: wake-θ on the IWAE bound, wake-φ on reweighted samples."""
    return infer.ReweightedWakeSleep(
        num_particles=cfg.num_particles,
        vectorize_particles=cfg.vectorize_particles,
        max_plate_nesting=MAX_PLATE_NESTING,
    )


def check_compatible(guide: GuideConfig, elbo: ELBOConfig) -> str | None:
    """Why ``guide`` cannot be trained with ``elbo``, or ``None`` when the pair works."""
    from pyrogen.inference.guides import ANALYTIC_KL

    g, e = guide.name, elbo.name
    if e in ("mean_field", "jit_mean_field") and g == "score_function":
        return (
            f"elbo.name={e} needs a fully reparameterised guide; the score_function guide is "
            f"not (use elbo.name=trace or trace_graph)"
        )
    if e in ("mean_field", "jit_mean_field") and g not in ANALYTIC_KL:
        return (
            f"elbo.name={e} computes KL(q(z|x) ‖ p(z)) in closed form, which the {g!r} guide "
            f"does not have (its density is a flow's); use elbo.name=trace or trace_graph"
        )
    if (
        g == "score_function"
        and guide.baseline != "none"
        and e
        not in (
            "trace_graph",
            "jit_trace_graph",
        )
    ):
        return (
            f"guide.baseline={guide.baseline} is used only by TraceGraph_ELBO; with "
            f"elbo.name={e} it would be ignored: use elbo.name=trace_graph"
        )
    if g == "score_function" and guide.baseline == "decaying_average" and e == "jit_trace_graph":
        return (
            "guide.baseline=decaying_average keeps its running average in Pyro's param store, "
            "which the JIT-compiled estimator cannot update: use elbo.name=trace_graph"
        )
    if g == "score_function" and e in ("renyi", "tail_adaptive"):
        return (
            f"elbo.name={e} needs a reparameterised guide; the score_function guide is not "
            f"(use elbo.name=trace or trace_graph)"
        )
    if e == "tail_adaptive" and not (elbo.vectorize_particles and elbo.num_particles > 1):
        return (
            "elbo.name=tail_adaptive weighs several particles against each other: it needs "
            "elbo.vectorize_particles=true and elbo.num_particles > 1"
        )
    if e in ("rws", "renyi") and elbo.num_particles < 2:
        return (
            f"elbo.name={e} is a multi-sample bound and needs elbo.num_particles > 1 "
            f"(with 1 particle it is the plain ELBO: use elbo.name=trace)"
        )
    return None
    return None

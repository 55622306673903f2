"""ELBO estimators: Pyro's own classes, chosen and configured by name (``elbo.name``).

===============  ==============================  ================================================
name             Pyro class                      what it estimates (per example x)
===============  ==============================  ================================================
trace            ``Trace_ELBO``                  E_q[log p(x,z) − log q(z|x)], Monte Carlo
jit_trace        ``JitTrace_ELBO``               the same, compiled with the PyTorch JIT (its
                                                 doubled gradient fixed: :class:`JitTraceELBO`)
mean_field       ``TraceMeanField_ELBO``         E_q[log p(x|z)] − KL(q‖p), the KL in closed form
jit_mean_field   ``JitTraceMeanField_ELBO``      the same, compiled
trace_graph      ``TraceGraph_ELBO``             Trace_ELBO with Rao-Blackwellised score-function
                                                 terms and baselines (needed by guide baselines)
jit_trace_graph  ``JitTraceGraph_ELBO``          the same, compiled
renyi            ``RenyiELBO``                   the Rényi α bound; α = 0 is the IWAE bound
                                                 log (1/K) Σ_k p(x,z_k)/q(z_k|x) with K particles
tail_adaptive    ``TraceTailAdaptive_ELBO``      the tail-adaptive f-divergence (Wang et al. 2018)
trace_enum       ``TraceEnum_ELBO``              Trace_ELBO with the discrete sites marked
                                                 ``infer={"enumerate": "parallel"}`` summed out
                                                 exactly (Σ_y over their supports), the rest by
                                                 Monte Carlo
jit_trace_enum   ``JitTraceEnum_ELBO``           the same, compiled
rws              ``ReweightedWakeSleep``         reweighted wake-sleep (Bornschein & Bengio 2015):
                                                 wake-θ on the IWAE bound, wake-φ on
                                                 self-normalised weights w_k ∝ p(x,z_k)/q(z_k|x)
===============  ==============================  ================================================

Pyro's ``ReweightedWakeSleep`` and ``TraceTailAdaptive_ELBO`` weigh particles of the *whole
mini-batch*: they sum log p − log q over every dimension but the particles' before weighting
("mini-batch training is not supported yet", Pyro's docstring), so with a batch of N their K
particles are K joint draws of (z_1..z_N) and the weights of a batch degenerate as N grows
(for RWS the bound tends to the best of K joint ELBOs, not the per-example IWAE bound). The
papers weigh each example's particles. :class:`PerExampleRWS` and
:class:`PerExampleTailAdaptive` are the documented adapters: Pyro's estimator, unchanged, run
on one example at a time (N calls per step) with losses and gradients summed over the batch.

:func:`check_compatible` refuses, when the config is read, the pairs that cannot work; each
refusal was found by running the pair (see its messages).
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from pyro import infer

from pyrogen.registry import ELBOS, GUIDES

MAX_PLATE_NESTING = 1
#: the estimators that sum a model's sites marked for enumeration out exactly
ENUMERATING_ELBOS = (
    "trace_enum",
    "jit_trace_enum",
)  # the data plate; vectorised particles add one dimension to its left


def _common(num_particles: int, vectorize_particles: bool) -> dict:
    return {
        "num_particles": num_particles,
        "vectorize_particles": vectorize_particles,
        "max_plate_nesting": MAX_PLATE_NESTING,
    }


def _examples(args: tuple) -> Iterator[tuple]:
    """The model's arguments one example at a time: every tensor whose leading dimension is
    the batch's (x, and y when given) is sliced to ``[n : n + 1]``."""
    n = args[0].shape[0]
    for i in range(n):
        yield tuple(
            a[i : i + 1] if torch.is_tensor(a) and a.dim() > 0 and a.shape[0] == n else a
            for a in args
        )


class PerExampleRWS(infer.ReweightedWakeSleep):
    """Pyro's ``ReweightedWakeSleep`` with each example's K particles weighted separately:

        wake-θ loss = −Σ_n log (1/K) Σ_k w_nk,   wake-φ loss = −Σ_n Σ_k w̄_nk log q(z_nk | x_n)

    with w_nk = p(x_n, z_nk) / q(z_nk | x_n) and w̄_nk = w_nk / Σ_j w_nj. Pyro's class runs once
    per example; ``loss``/``loss_and_grads`` return the summed (wake-θ, wake-φ) losses.
    """

    def loss(self, model, guide, *args, **kwargs) -> tuple[float, float]:
        theta = phi = 0.0
        for one in _examples(args):
            t, p = super().loss(model, guide, *one, **kwargs)
            theta, phi = theta + float(t), phi + float(p)
        return theta, phi

    def loss_and_grads(self, model, guide, *args, **kwargs) -> tuple[float, float]:
        theta = phi = 0.0
        for one in _examples(args):
            t, p = super().loss_and_grads(model, guide, *one, **kwargs)
            theta, phi = theta + t, phi + p
        return theta, phi


class PerExampleTailAdaptive(infer.TraceTailAdaptive_ELBO):
    """Pyro's ``TraceTailAdaptive_ELBO`` with each example's K particles ranked separately:
    the surrogate −Σ_n Σ_k γ_nk (log p(x_n, z_nk) − log q(z_nk | x_n)) / Σ_k γ_nk with
    γ_nk = rank_n(k)^β. Like Pyro's, its value is not an ELBO (Pyro reports +inf); only its
    gradient is meaningful."""

    def differentiable_loss(self, model, guide, *args, **kwargs) -> torch.Tensor:
        loss = 0.0
        for one in _examples(args):
            loss = loss + super().differentiable_loss(model, guide, *one, **kwargs)
        return loss


class JitTraceELBO(infer.JitTrace_ELBO):
    """Pyro's ``JitTrace_ELBO`` with the gradient of ``differentiable_loss`` fixed.

    Pyro 1.9.2 returns ``loss + (surrogate − surrogate.detach())`` from its compiled function,
    where ``loss`` = −ELBO is *not* detached there (it is in ``Trace_ELBO``): for
    reparameterised sites ∇loss = ∇surrogate, so every gradient came out exactly twice
    ``Trace_ELBO``'s on the same draws (SGD took double steps). Here the value is the loss and
    the gradient the surrogate's alone, as in ``Trace_ELBO`` and Pyro's own ``loss_and_grads``.
    """

    def differentiable_loss(self, model, guide, *args, **kwargs) -> torch.Tensor:
        loss, surrogate = self.loss_and_surrogate_loss(model, guide, *args, **kwargs)
        return loss.detach() + (surrogate - surrogate.detach())


def trace(num_particles: int = 1, vectorize_particles: bool = False, **_: object) -> infer.ELBO:
    """Trace_ELBO: the Monte Carlo ELBO (reparameterised or score-function gradients)."""
    return infer.Trace_ELBO(**_common(num_particles, vectorize_particles))


def jit_trace(num_particles: int = 1, vectorize_particles: bool = False, **_: object):
    """JitTrace_ELBO: Trace_ELBO compiled with the PyTorch JIT."""
    return JitTraceELBO(**_common(num_particles, vectorize_particles), ignore_jit_warnings=True)


def mean_field(num_particles: int = 1, vectorize_particles: bool = False, **_: object):
    """TraceMeanField_ELBO: E_q[log p(x|z)] − KL(q(z|x) ‖ p(z)) with the KL in closed form."""
    return infer.TraceMeanField_ELBO(**_common(num_particles, vectorize_particles))


def jit_mean_field(num_particles: int = 1, vectorize_particles: bool = False, **_: object):
    """JitTraceMeanField_ELBO: TraceMeanField_ELBO compiled with the PyTorch JIT."""
    return infer.JitTraceMeanField_ELBO(
        **_common(num_particles, vectorize_particles), ignore_jit_warnings=True
    )


def trace_graph(num_particles: int = 1, vectorize_particles: bool = False, **_: object):
    """TraceGraph_ELBO: score-function terms with baselines and Rao-Blackwellisation."""
    return infer.TraceGraph_ELBO(**_common(num_particles, vectorize_particles))


def jit_trace_graph(num_particles: int = 1, vectorize_particles: bool = False, **_: object):
    """JitTraceGraph_ELBO: TraceGraph_ELBO compiled with the PyTorch JIT."""
    return infer.JitTraceGraph_ELBO(
        **_common(num_particles, vectorize_particles), ignore_jit_warnings=True
    )


def trace_enum(num_particles: int = 1, vectorize_particles: bool = False, **_: object):
    """TraceEnum_ELBO: the discrete sites marked for parallel enumeration are summed out
    exactly (their values broadcast in dimensions left of the plates), the others sampled."""
    return infer.TraceEnum_ELBO(**_common(num_particles, vectorize_particles))


def jit_trace_enum(num_particles: int = 1, vectorize_particles: bool = False, **_: object):
    """JitTraceEnum_ELBO: TraceEnum_ELBO compiled with the PyTorch JIT."""
    return infer.JitTraceEnum_ELBO(
        **_common(num_particles, vectorize_particles), ignore_jit_warnings=True
    )


def renyi(
    num_particles: int = 2, vectorize_particles: bool = False, alpha: float = 0.0, **_: object
) -> infer.ELBO:
    """RenyiELBO: (1/(1−α)) log (1/K) Σ_k w_k^(1−α) per example, w_k = p(x,z_k)/q(z_k|x);
    α = 0 is the IWAE bound (Burda et al. 2016), α → 1 the ELBO."""
    return infer.RenyiELBO(alpha=alpha, **_common(num_particles, vectorize_particles))


def tail_adaptive(
    num_particles: int = 2,
    vectorize_particles: bool = True,
    tail_adaptive_beta: float = -1.0,
    **_: object,
) -> infer.ELBO:
    """TraceTailAdaptive_ELBO, each example's particles ranked separately (needs vectorised
    particles, num_particles > 1; ``tail_adaptive_beta`` is the rank exponent β < 0)."""
    return PerExampleTailAdaptive(
        **_common(num_particles, vectorize_particles), tail_adaptive_beta=tail_adaptive_beta
    )


def rws(num_particles: int = 2, vectorize_particles: bool = False, **_: object) -> infer.ELBO:
    """ReweightedWakeSleep (wake-θ + wake-φ, no sleep phase), per example."""
    return PerExampleRWS(insomnia=1.0, **_common(num_particles, vectorize_particles))


for _name, _fn in [
    ("trace", trace),
    ("jit_trace", jit_trace),
    ("mean_field", mean_field),
    ("jit_mean_field", jit_mean_field),
    ("trace_graph", trace_graph),
    ("jit_trace_graph", jit_trace_graph),
    ("trace_enum", trace_enum),
    ("jit_trace_enum", jit_trace_enum),
    ("renyi", renyi),
    ("tail_adaptive", tail_adaptive),
    ("rws", rws),
]:
    ELBOS.add(_name, _fn)


def make_elbo(
    name: str,
    num_particles: int = 1,
    vectorize_particles: bool = False,
    alpha: float = 0.0,
    tail_adaptive_beta: float = -1.0,
) -> infer.ELBO:
    """The estimator called ``name`` (a name in ``ELBOS``), configured with these options."""
    return ELBOS.get(name)(
        num_particles=num_particles,
        vectorize_particles=vectorize_particles,
        alpha=alpha,
        tail_adaptive_beta=tail_adaptive_beta,
    )


_MEAN_FIELD = ("mean_field", "jit_mean_field")
_TRACE_GRAPH = ("trace_graph", "jit_trace_graph")


def check_compatible(
    guide: str,
    elbo: str,
    num_particles: int = 1,
    vectorize_particles: bool = False,
    alpha: float = 0.0,
    kl_warmup_steps: int = 0,
    baseline: str = "none",
    beta: float = 1.0,
    free_bits: float = 0.0,
    prior: str = "standard",
) -> str | None:
    """Why the guide called ``guide`` (a name in ``GUIDES``) cannot be trained with the
    estimator ``elbo`` (with these options), or ``None`` when the pair works. Messages use the
    config's keys. The guide is judged by its facts (``reparameterised``, ``analytic_kl``,
    ``scores_any_z``, whether its options include ``baseline``), never by its name.

    Every refusal below was found by running the pair (digits, a few steps):

    * ``mean_field`` with a guide that is not reparameterised (``score_function``): Pyro raises
      "All distributions in the guide must be fully reparameterized"; without an analytic KL
      (``iaf``): no closed-form KL exists, and Pyro would silently fall back to the Monte Carlo
      term of ``trace``;
    * ``tail_adaptive`` without vectorised particles: Pyro raises NotImplementedError; with one
      particle it is ``trace``; with ``score_function``: Pyro raises (needs reparameterisation);
    * ``renyi`` with ``score_function``: the encoder receives no gradient at all (RenyiELBO
      differentiates only through reparameterised samples); α = 1: Pyro refuses (it is the ELBO);
      one particle: the bound is the ELBO of ``trace``;
    * ``rws`` with one particle: Pyro's assertion;
    * a guide baseline with anything but ``trace_graph``: silently ignored (its network gets no
      gradient); ``decaying_average`` with ``jit_trace_graph``: the JIT cannot update the running
      average, which lives in Pyro's param store;
    * ``jit_trace``/``jit_trace_graph`` with KL warm-up: the compiled function keeps the β of its
      first call, so the warm-up would silently stop;
    * ``elbo.beta`` ≠ 1 (the β-VAE, applied by scaling every latent site's log-density by β)
      with ``renyi``, ``rws`` or ``tail_adaptive``: these weigh particles by
      w_k = p(x, z_k)/q(z_k|x) inside a log-mean-exp (or ranks of w_k), so scaling log p(z)
      and log q(z|x) gives the bound of a tempered joint, not E_q[log p(x|z)] − β KL. (A
      guide that is not reparameterised is fine: Pyro scales a site's log-density and entropy
      term but not its score-function term, so REINFORCE stays the gradient of the β-loss.)
    * ``rws`` with a guide that scores only its own samples (``scores_any_z``): Pyro's
      ReweightedWakeSleep scores detached copies of the guide's draws and the model's own
      draws (sleep phase) under q, and the planar step raises a KeyError;
    * ``model.prior=vamp`` with a guide that scores only its own samples (``scores_any_z``:
      not ``planar``, ``sylvester``): p(z) = (1/K) Σ_k q(z | u_k) needs q's density at z drawn
      for another x, and Pyro's planar step raises a KeyError there;
    * ``model.prior`` ``vamp`` or ``mog`` (a mixture) with ``mean_field``: no closed-form
      KL(q ‖ mixture) exists and Pyro would silently fall back to the Monte Carlo term;
    * ``elbo.free_bits`` > 0 (:class:`~pyrogen.inference.variational.FreeBits`: each
      dimension's KL floored) needs a per-dimension KL, so a guide that factorises
      (``factorised``: not ``low_rank_normal``, ``full_normal``, flows) and a prior that does
      (not ``vamp``, ``mog``: log Σ_k π_k p_k(z) is not a sum over dimensions, and flooring
      per-dimension Monte Carlo terms of it would floor nothing the objective contains); a
      reparameterised guide (Pyro's score-function term would use the floored log q, not
      the score of the distribution z was drawn from); and not with ``renyi``, ``rws``,
      ``tail_adaptive`` (their particle weights contain no KL term to floor).
    """
    g, e = guide, elbo
    k, vec = num_particles, vectorize_particles
    q = GUIDES.get(g)  # its facts: reparameterised, analytic_kl, options
    if e in _MEAN_FIELD and not q.reparameterised:
        return (
            f"elbo.name={e} needs a fully reparameterised guide; guide.name={g} is not "
            f"(use elbo.name=trace or trace_graph)"
        )
    if e in _MEAN_FIELD and not q.analytic_kl:
        return (
            f"elbo.name={e} computes KL(q(z|x) ‖ p(z)) in closed form, which the {g} guide "
            f"does not have: Pyro would silently estimate it by Monte Carlo, which is "
            f"what elbo.name=trace does (use elbo.name=trace)"
        )
    if not q.reparameterised and e in ("renyi", "tail_adaptive"):
        return (
            f"elbo.name={e} needs a reparameterised guide: with guide.name={g} the "
            f"encoder would get no gradient (use elbo.name=trace, trace_graph or rws)"
        )
    uses_baseline = "baseline" in q.options()
    if uses_baseline and baseline != "none" and e not in _TRACE_GRAPH:
        return (
            f"guide.baseline={baseline} is used only by TraceGraph_ELBO; with elbo.name={e} "
            f"it would be silently ignored (use elbo.name=trace_graph)"
        )
    if uses_baseline and baseline == "decaying_average" and e == "jit_trace_graph":
        return (
            "guide.baseline=decaying_average keeps its running average in Pyro's param store, "
            "which the JIT-compiled estimator cannot update (use elbo.name=trace_graph)"
        )
    if e == "tail_adaptive" and not (vec and k > 1):
        return (
            "elbo.name=tail_adaptive ranks several particles of each example against each other: "
            "it needs elbo.vectorize_particles=true and elbo.num_particles > 1"
        )
    if e == "renyi" and alpha == 1.0:
        return "elbo.alpha=1 makes the Rényi bound the ELBO: use elbo.name=trace"
    if e in ("rws", "renyi") and k < 2:
        return (
            f"elbo.name={e} is a multi-sample bound and needs elbo.num_particles > 1 "
            f"(with 1 particle it is the plain ELBO: use elbo.name=trace)"
        )
    if beta != 1.0 and e in ("renyi", "rws", "tail_adaptive"):
        return (
            f"elbo.beta={beta} weighs KL(q ‖ p) in the ELBO; elbo.name={e} is a multi-sample "
            f"bound in which scaling log p(z) and log q(z|x) is not a β-weighted KL (use "
            f"elbo.name=trace, mean_field or trace_graph, or elbo.beta=1)"
        )
    if e == "rws" and not q.scores_any_z:
        return (
            f"elbo.name=rws scores under q(z|x) detached copies of its draws and, in its sleep "
            f"phase, z drawn from the model, which guide.name={g} cannot: its flow has no "
            f"closed-form inverse and scores only its own samples (use elbo.name=renyi or "
            f"guide.name=iaf)"
        )
    if prior == "vamp" and not q.scores_any_z:
        return (
            f"guide.name={g} scores only its own samples (its flow has no closed-form inverse), "
            f"but model.prior=vamp scores each z under q(z|u_k) of every pseudo-input (use "
            f"guide.name=iaf or diagonal_normal, or model.prior=mog)"
        )
    mixture = prior in ("vamp", "mog", "mixture")
    if mixture and e in _MEAN_FIELD:
        return (
            f"elbo.name={e} computes KL(q(z|x) ‖ p(z)) in closed form, which model.prior={prior} "
            f"(a mixture) does not have: Pyro would silently estimate it by Monte Carlo, which "
            f"is what elbo.name=trace does (use elbo.name=trace)"
        )
    if free_bits > 0:
        floor = f"elbo.free_bits={free_bits} floors each latent dimension's KL(q ‖ p)"
        if e in ("renyi", "rws", "tail_adaptive"):
            return (
                f"{floor}; elbo.name={e} weighs particles by p(x,z)/q(z|x) and has no KL term "
                f"to floor (use elbo.name=trace, mean_field or trace_graph, or elbo.free_bits=0)"
            )
        if mixture:
            return (
                f"{floor}, which needs a prior that factorises per dimension; model.prior="
                f"{prior} is a mixture whose log p(z) is no sum over dimensions (use "
                f"model.prior=standard or elbo.free_bits=0)"
            )
        if not q.factorised:
            return (
                f"{floor}, which needs a guide q(z|x) = Π_j q(z_j|x); guide.name={g} does not "
                f"factorise per dimension (use guide.name=diagonal_normal or elbo.free_bits=0)"
            )
        if not q.reparameterised:
            return (
                f"{floor}, which needs a reparameterised guide: with guide.name={g} Pyro's "
                f"score-function term would use the floored log q(z|x) (use guide.name="
                f"diagonal_normal or elbo.free_bits=0)"
            )
    if e in ("jit_trace", "jit_trace_graph", "jit_trace_enum") and kl_warmup_steps > 0:
        return (
            f"elbo.kl_warmup_steps needs a KL weight that changes every step, but elbo.name={e} "
            f"compiles the first step's weight into its graph (use elbo.name={e[4:]} or "
            f"jit_mean_field)"
        )
    return None

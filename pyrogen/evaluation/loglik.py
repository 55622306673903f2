"""Importance-sampled marginal log-likelihood and the ELBO, per example, for any Pyro
model/guide pair whose batch plate is named ``"data"``.

With z_k ~ q(z | x), k = 1..K, the importance weights w_k = p(x, z_k) / q(z_k | x) give

    log p(x) ≈ log (1/K) Σ_k w_k              (consistent as K → ∞; a lower bound on average:
                                              the IWAE bound of Burda et al. 2016)
    ELBO(x)  ≈ (1/K) Σ_k log w_k              (unbiased for the ELBO)

so ELBO ≤ IS estimate ≤ log p(x) in expectation, with equality when q(z | x) = p(z | x).
Particles run vectorised (a ``pyro.plate("particles")`` left of the data plate) in chunks,
so K = 5000 as in the IWAE paper fits in memory. A plain VAE's weights (one level, or the
two-level VAE's) skip Pyro's traces (:func:`vae_log_importance_weights`: the same draws, the
same weights to float rounding), its decoder run on cache-sized blocks of rows with a fused
Bernoulli log-density, so evaluation runs near the machine's matrix-multiply rate
(``bench/bench_loglik.py``).

A conditional model p(x | c) (the CVAE) is scored given each example's context: ``y`` (the
batch's label slot) goes to the model and the guide, and the same formulas give log p(x | c)
with z_k ~ q(z | x, c) and w_k = p(x, z_k | c) / q(z_k | x, c), through the traced path.

How far to trust the IS number is told by the Pareto-smoothed k̂ of each example's weights
(:func:`psis_khat`, Vehtari et al., "Pareto smoothed importance sampling"): the shape of a
generalized Pareto fitted to the largest weights; k̂ > 0.7 means the weights' tail is so heavy
that the estimate is unreliable at any practical K.

:func:`evaluate_elbo` gives instead the bound of any of Pyro's estimators on a split (e.g. the
K-particle IWAE bound of ``RenyiELBO(alpha=0)``), by the estimator's own ``loss``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import pyro
import torch
from pyro import poutine
from pyro.infer import ELBO, ReweightedWakeSleep, TraceTailAdaptive_ELBO
from pyro.ops.stats import fit_generalized_pareto
from pyro.poutine.runtime import am_i_wrapped
from pyro.poutine.util import site_is_subsample
from torch import nn
from torch.distributions import constraints
from torch.nn import functional as F

from pyrogen.models.guides import AmortisedGuide
from pyrogen.models.hierarchical import HierarchicalGuide, HierarchicalVAE
from pyrogen.models.likelihoods import BernoulliLikelihood
from pyrogen.models.process import GenerativeProcess
from pyrogen.models.vae import VAE
from pyrogen.progress import steps

#: k̂ above which an importance-sampled estimate is unreliable (Vehtari et al.)
KHAT_THRESHOLD = 0.7


class PsisWarning(UserWarning):
    """Examples whose importance weights have PSIS k̂ > :data:`KHAT_THRESHOLD`."""


#: the fewest tail weights Pyro's ``psis_diagnostic`` fits a generalized Pareto to
MIN_TAIL = 10


#: decoder rows (particles × examples) per block of :func:`vae_log_importance_weights`: the
#: block's activations (rows × hidden units, float32: 1 MB at 500 units) stay in cache
BLOCK_ROWS = 512


def log_importance_weights(
    model: Callable,
    guide: Callable,
    x: torch.Tensor,
    num_particles: int,
    y: torch.Tensor | None = None,
) -> torch.Tensor:
    """log w_k(x_n) = log p(x_n, z_kn) − log q(z_kn | x_n), shape ``(num_particles, N)``
    (given the context ``y``: log p(x_n, z_kn | c_n) − log q(z_kn | x_n, c_n)).

    For a plain VAE's ``vae.model`` and ``vae.guide`` (:func:`plain_vae`) it is
    :func:`vae_log_importance_weights`, from the model's distributions directly; for any other
    Pyro program, and for a conditional VAE, :func:`traced_log_importance_weights`. Both take
    the same draws from torch's generator and give the same weights up to float rounding."""
    vae = plain_vae(model, guide) if y is None else None
    if vae is not None:
        return vae_log_importance_weights(vae, x, num_particles)
    return traced_log_importance_weights(model, guide, x, num_particles, y=y)


def plain_vae(model: Callable, guide: Callable) -> VAE | None:
    """The :class:`~pyrogen.models.vae.VAE` whose Pyro program ``model`` is, where its log
    weights need no Pyro trace: ``model`` is ``vae.model`` and ``guide`` is ``vae.guide`` as
    pyrogen defines them (the process z ~ p(z), x ~ p_θ(x | z) and an amortised guide's one
    site z ~ q(z | x), none of them overridden), the prior's component is not an enumerated
    site, and no Pyro handler is active around the call. ``None`` otherwise."""
    vae = getattr(model, "__self__", None)
    if not isinstance(vae, VAE) or guide is not vae.guide or am_i_wrapped():
        return None
    cls = type(vae)
    # the class whose process, prior and guide the direct path computes: the one-level VAE's
    # z ~ p(z) with an amortised guide, or the two-level VAE's z2 -> z1 with its top-down guide
    owner, guide_cls = (
        (HierarchicalVAE, HierarchicalGuide)
        if isinstance(vae, HierarchicalVAE)
        else (VAE, AmortisedGuide)
    )
    plain = (
        getattr(model, "__func__", None) is GenerativeProcess.forward
        and cls.process is owner.process
        and cls.decode is VAE.decode
        and cls.prior is owner.prior
        and getattr(cls, "conditional_prior", None) is getattr(owner, "conditional_prior", None)
        and isinstance(guide, guide_cls)
        and type(guide).forward is guide_cls.forward
    )
    return vae if plain and not vae.enumerates_component and not vae.conditional else None


def latent_log_weights(
    vae: VAE, x: torch.Tensor, num_particles: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """(z, log p(z) − log q(z | x)) of K draws from the guide of a plain VAE
    (:func:`plain_vae`), z of shape ``(K, N, latent_dim)``: the latent the decoder reads, and
    the latent part of the log weights, shape ``(K, N)``.

    One level: z ~ q(z | x) expanded to batch shape (K, N) and sampled once, as the traced
    guide draws it. Two levels (:class:`~pyrogen.models.hierarchical.HierarchicalVAE`), in the
    guide's order: z₂ ~ q(z₂ | x), then z₁ ~ q(z₁ | x, z₂), and the latent part is
    log p(z₂) + log p(z₁ | z₂) − log q(z₂ | x) − log q(z₁ | x, z₂); z is z₁. The priors score
    z unexpanded, so a mixture prior (VampPrior, MoG) does so by matrix products."""
    shape = torch.Size([num_particles, x.shape[0]])  # what pyro.plate makes of the guide's sites
    if not isinstance(vae, HierarchicalVAE):
        q = vae.guide.posterior(x).expand(shape)
        z = q()  # rsample (or sample, for a non-reparameterised q), as pyro.sample calls it
        return z, vae.prior().log_prob(z) - q.log_prob(z)
    guide = vae.guide
    h = guide.encoder(x)
    q2 = guide.top_posterior(x, h).expand(shape)
    z2 = q2()
    q1 = guide.bottom_posterior(h, z2)
    z1 = q1()
    log_p = vae.prior().log_prob(z2) + vae.conditional_prior(z2).log_prob(z1)
    return z1, log_p - q2.log_prob(z2) - q1.log_prob(z1)


def bernoulli_log_prob(logits: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """log p(x | h) = Σ_i x_i h_i − softplus(h_i) of independent Bernoulli(σ(h_i)) pixels,
    summed over the last dimension, with softplus(h) = max(h, 0) + log1p(e^{−|h|}) (exact in
    floating point for any h; e^{−|h|} is floored at the smallest normal float, which changes
    nothing at the float's precision but keeps ``exp`` off its slow subnormal path):
    ``logits`` ``(..., D)``, ``x`` broadcastable to it. The value of
    ``dist.Bernoulli(logits=h).to_event(1).log_prob(x)`` in a few passes over the logits
    instead of the dozen of ``binary_cross_entropy_with_logits`` and an expanded x."""
    floor = math.log(torch.finfo(logits.dtype).tiny) + 1.0  # below: e^t is subnormal, and slow
    t = logits.abs().neg_().clamp_min_(floor).exp_().log1p_()
    t.add_(torch.addcmul(logits.clamp_min(0), logits, x, value=-1))
    return t.sum(-1).neg_()


def mlp_forward(net: nn.Module, h: torch.Tensor) -> torch.Tensor:
    """``net(h)`` for a plain ``nn.Sequential`` (an :class:`~pyrogen.nets.MLP`), its
    activations computed in place on the layers' outputs, tanh as tanh(a) = 2 σ(2a) − 1 (the
    same function to float rounding: torch's sigmoid is several times faster than its tanh on
    CPUs); any other network is called as it is."""
    if not isinstance(net, nn.Sequential) or type(net).forward is not nn.Sequential.forward:
        return net(h)
    fresh = False  # whether h is an output of ours, free to overwrite
    for layer in net:
        kind = type(layer)
        if kind is nn.Linear:
            h, fresh = F.linear(h, layer.weight, layer.bias), True
        elif kind is nn.Tanh and fresh:
            h = h.mul_(2.0).sigmoid_().mul_(2.0).sub_(1.0)
        elif kind is nn.ReLU and fresh:
            h = h.relu_()
        else:
            h, fresh = layer(h), False
    return h


def _check_binary(x: torch.Tensor) -> None:
    """The support check ``dist.Bernoulli.log_prob`` makes when validation is on."""
    if torch.distributions.Distribution._validate_args and not constraints.boolean.check(x).all():
        raise ValueError(
            "Expected value argument to be within the support (Boolean()) of the Bernoulli "
            "likelihood: the data must be 0/1"
        )


def vae_log_importance_weights(
    vae: VAE, x: torch.Tensor, num_particles: int, block_rows: int = BLOCK_ROWS
) -> torch.Tensor:
    """log w_k(x_n) = log p_θ(x_n | z_kn) + log p(z_kn) − log q_φ(z_kn | x_n), shape
    ``(num_particles, N)``, of a plain VAE (:func:`plain_vae`, one or two levels) without
    Pyro traces.

    z is drawn as the traced guide draws it (:func:`latent_log_weights`), so the same
    generator state gives the same z; log p(z) and log q(z | x) are the same calls on the
    same values. The decoder runs on blocks of about ``block_rows``
    rows (whole particles of the N examples), so its activations stay in cache, an MLP
    decoder through :func:`mlp_forward`; a Bernoulli likelihood's log p(x | z) is
    :func:`bernoulli_log_prob`. The weights equal
    :func:`traced_log_importance_weights`'s up to float rounding (the matrix products of a
    block, the fused log-density and tanh round differently)."""
    vae.check_observed(x)
    n = x.shape[0]
    z, log_latent = latent_log_weights(vae, x, num_particles)
    log_px = torch.empty_like(log_latent)
    per_block = max(1, block_rows // n)
    bernoulli = type(vae.likelihood) is BernoulliLikelihood
    if bernoulli:
        _check_binary(x)
    flat = x.reshape(n, -1)
    outputs = vae.likelihood.outputs_per_dim * vae.num_dims
    for k in range(0, num_particles, per_block):
        zb = z[k : k + per_block]
        h = mlp_forward(vae.decoder, zb.reshape(-1, vae.latent_dim))
        if h[0].numel() != outputs:
            vae.decode(zb[:1, :1])  # raises the decoder's shape error
        h = h.reshape(*zb.shape[:2], outputs)  # what vae.decode hands its likelihood
        if bernoulli:
            log_px[k : k + per_block] = bernoulli_log_prob(h, flat)
        else:
            log_px[k : k + per_block] = vae.likelihood(h).log_prob(x)
    return log_latent + log_px


def traced_log_importance_weights(
    model: Callable,
    guide: Callable,
    x: torch.Tensor,
    num_particles: int,
    y: torch.Tensor | None = None,
) -> torch.Tensor:
    """log w_k(x_n) = log p(x_n, z_kn) − log q(z_kn | x_n), shape ``(num_particles, N)``, of
    any Pyro program, from traces of the guide and of the model replayed on its draws (both
    called with ``(x, y)`` when the context ``y`` is given: log p(x, z | c) − log q(z | x, c)).

    The model's sites marked ``infer={"enumerate": "parallel"}`` that the guide does not
    sample (a mixture prior's component c) are summed out exactly: log p(x, z) =
    log Σ_c p(x, z, c), their values enumerated in the dimensions left of the particles."""
    args = (x,) if y is None else (x, y)
    with pyro.plate("particles", num_particles, dim=-2):
        guide_trace = poutine.trace(guide).get_trace(*args)
        enumerated = poutine.enum(poutine.replay(model, trace=guide_trace), first_available_dim=-3)
        model_trace = poutine.trace(enumerated).get_trace(*args)
    log_w = torch.zeros(num_particles, x.shape[0], dtype=x.dtype, device=x.device)
    for trace, sign in ((model_trace, 1.0), (guide_trace, -1.0)):
        trace.compute_log_prob()
        for site in trace.nodes.values():
            if site["type"] == "sample":
                log_w = log_w + sign * site["log_prob"]
    while log_w.dim() > 2:  # the enumerated values: log Σ over each of their dimensions
        log_w = log_w.logsumexp(0)
    return log_w


def summed_out_log_weights(
    model: Callable,
    guide: Callable,
    x: torch.Tensor,
    num_particles: int,
    max_plate_nesting: int = 1,
    data_plate: str = "data",
) -> torch.Tensor:
    """log w_k(x_n) = log Σ_y p(x_n, y, z_kn) − log q(z_kn | x_n), shape ``(num_particles,
    N)``, for a Pyro program whose model sums out the discrete sites it marks
    ``infer={"enumerate": "parallel"}`` (and that have no guide site): the guide's sites,
    discrete ones included, are drawn from the guide; the model is run under
    ``poutine.enum``, each summed-out site taking all its values in a dimension left of the
    particles, and the sum over them is a log-sum-exp of the joint log-density over those
    dimensions. The particles' plate sits left of the program's ``max_plate_nesting`` plates;
    the log-densities of plates other than the data plate are summed per example. A site
    summed out inside such a nested plate is refused (its sum would be per element of that
    plate, not per example)."""
    particle_dim = -(max_plate_nesting + 1)
    with pyro.plate("particles", num_particles, dim=particle_dim):
        guide_trace = poutine.trace(guide).get_trace(x)
        replayed = poutine.replay(model, trace=guide_trace)
        enumerated = poutine.enum(replayed, first_available_dim=particle_dim - 1)
        model_trace = poutine.trace(enumerated).get_trace(x)
    out = []
    for trace in (model_trace, guide_trace):
        trace.compute_log_prob()
        total = torch.zeros((), dtype=x.dtype, device=x.device)
        for name, site in trace.nodes.items():
            if site["type"] != "sample" or site_is_subsample(site):
                continue
            frames = [f for f in site["cond_indep_stack"] if f.vectorized and f.dim is not None]
            data_dims = [f.dim for f in frames if f.name == data_plate]
            if not data_dims:
                raise ValueError(
                    f"site {name!r} is outside pyro.plate({data_plate!r}): importance weights "
                    "per example need every sample site inside the data plate"
                )
            nested = [f for f in frames if f.name not in (data_plate, "particles")]
            if nested and site["infer"].get("_enumerate_dim") is not None:
                raise ValueError(
                    f"site {name!r} is summed out inside plate(s) "
                    f"{[f.name for f in nested]}: importance weights "
                    "sum out sites that sit directly in the data plate"
                )
            lp = site["log_prob"]
            lp = lp.reshape((1,) * max(0, max_plate_nesting + 1 - lp.dim()) + lp.shape)
            inner = [f.dim for f in nested]  # plates other than the data plate: per example
            total = total + (lp.sum(inner, keepdim=True) if inner else lp)
        keep = total.dim() + particle_dim  # the dimensions left of the particles: summed out
        total = total.logsumexp(list(range(keep))) if keep > 0 else total
        out.append(total.reshape(num_particles, -1))
    log_p, log_q = out
    n = x.shape[0]
    return log_p.expand(num_particles, n) - log_q.expand(num_particles, n)


def psis_tail_size(num_samples: int) -> int:
    """M = ⌈min(K / 5, 3 √K)⌉, the number of largest weights PSIS fits its tail to."""
    return int(math.ceil(min(0.2 * num_samples, 3.0 * math.sqrt(num_samples))))


def psis_min_samples() -> int:
    """The smallest K whose tail (:func:`psis_tail_size`) holds :data:`MIN_TAIL` weights."""
    k = 1
    while psis_tail_size(k) < MIN_TAIL:
        k += 1
    return k


def psis_khat(log_w: torch.Tensor, num_samples: int | None = None) -> torch.Tensor:
    """Pareto-smoothed k̂ of each example's importance weights, shape ``(N,)``, by the recipe of
    Pyro's :func:`~pyro.infer.importance.psis_diagnostic`: with the log weights shifted so the
    largest is 0, the cutoff u = max(log 10⁻¹⁵, the (M+1)-th largest), M =
    :func:`psis_tail_size` (K), and the tail the weights above it, k̂ is the shape of
    :func:`~pyro.ops.stats.fit_generalized_pareto` fitted to exp(tail) − exp(u); ``inf`` where
    fewer than :data:`MIN_TAIL` weights are above 10⁻¹⁵ of the largest (a few weights
    dominate). Where the tail is short because the largest weights are equal to rounding
    (q(z | x) = p(z | x)), Pyro's ``inf`` would call a perfect guide useless: k̂ is ``-inf``
    there (bounded weights, no tail).

    ``log_w`` has shape ``(S, N)``: all K log weights of each example, or only the largest
    M + 1 of them (then ``num_samples`` is K). A ``ValueError`` when K < :func:`psis_min_samples`.
    """
    k = log_w.shape[0] if num_samples is None else num_samples
    m = psis_tail_size(k)
    if m < MIN_TAIL:
        raise ValueError(
            f"a Pareto tail fit needs K >= {psis_min_samples()} importance samples, got K={k}"
        )
    top = log_w.topk(m + 1, dim=0).values  # descending: the same values Pyro sorts
    khat = torch.full((log_w.shape[1],), math.inf, dtype=torch.float64)
    for n in range(log_w.shape[1]):
        lw = top[:, n] - top[0, n]  # log_weights -= log_weights.max()
        lw_cutoff = max(math.log(1.0e-15), lw[m])
        tail = lw[lw > lw_cutoff]
        if tail.numel() >= MIN_TAIL:
            try:
                khat[n] = fit_generalized_pareto(tail.exp() - math.exp(lw_cutoff))[0]
            except ZeroDivisionError:  # the tail is flat to rounding: no shape to fit
                khat[n] = math.nan
        flat = tail.numel() < MIN_TAIL and lw_cutoff == lw[m]  # short by ties, not by 10⁻¹⁵
        if flat or math.isnan(khat[n]):  # the largest weights are equal: bounded
            khat[n] = -math.inf
    return khat


@torch.no_grad()
def elbo_and_importance_log_likelihood(
    model: Callable, guide: Callable, x: torch.Tensor, num_samples: int = 5000, **options: Any
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-example (ELBO estimate, importance-sampled log p(x)) in nats, each of shape (N,):
    :func:`importance_sampling` without k̂ (``options``: its ``batch_size`` examples at a
    time, particles in chunks of at most ``max_elements`` values of x's size so memory stays
    bounded whatever K, ``quiet``, a conditional model's context ``y``)."""
    elbo, logp, _ = importance_sampling(model, guide, x, num_samples, khat=False, **options)
    return elbo, logp


@torch.no_grad()
def importance_sampling(
    model: Callable,
    guide: Callable,
    x: torch.Tensor,
    num_samples: int = 5000,
    batch_size: int = 100,
    max_elements: int = 20_000_000,
    quiet: bool = False,
    khat: bool = True,
    log_weights: Callable[..., torch.Tensor] = log_importance_weights,
    y: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Per-example (ELBO, IS log p(x), PSIS k̂) as :func:`elbo_and_importance_log_likelihood`
    computes them (the same draws, the same numbers), with each example's k̂ of its K weights
    (:func:`psis_khat`, from the largest M + 1 kept across particle chunks); k̂ is ``None``
    unless ``khat`` and K >= :func:`psis_min_samples`. ``log_weights(model, guide, x, K)``:
    :func:`log_importance_weights`, or :func:`summed_out_log_weights` for a program that sums
    out discrete sites. ``y``: the examples' context c of a conditional model, scored as
    log p(x | c) (passed on as ``log_weights(..., y=y_batch)``)."""
    elbos, logps, khats = [], [], []
    dims = max(1, math.prod(x.shape[1:]))
    keep = psis_tail_size(num_samples) + 1
    khat = khat and psis_tail_size(num_samples) >= MIN_TAIL

    starts = range(0, x.shape[0], batch_size)
    for start in steps(starts, f"importance sampling (K={num_samples})", quiet=quiet):
        xb = x[start : start + batch_size]
        given = {} if y is None else {"y": y[start : start + batch_size]}
        chunk = max(1, min(num_samples, max_elements // (xb.shape[0] * dims)))
        lse_parts, sums, done = [], torch.zeros(xb.shape[0], dtype=x.dtype, device=x.device), 0
        top = None
        while done < num_samples:
            k = min(chunk, num_samples - done)
            log_w = log_weights(model, guide, xb, k, **given)
            lse_parts.append(torch.logsumexp(log_w, dim=0))
            sums += log_w.sum(0)
            done += k
            if khat:  # the largest M + 1 weights so far: all the tail fit reads
                both = log_w if top is None else torch.cat([top, log_w])
                top = both.topk(min(keep, both.shape[0]), dim=0).values
        logps.append(torch.logsumexp(torch.stack(lse_parts), dim=0) - math.log(num_samples))
        elbos.append(sums / num_samples)
        if khat:
            khats.append(psis_khat(top.cpu(), num_samples))
    return torch.cat(elbos), torch.cat(logps), torch.cat(khats) if khat else None


def importance_log_likelihood(
    model: Callable, guide: Callable, x: torch.Tensor, num_samples: int = 5000, **options: Any
) -> torch.Tensor:
    """log p(x) ≈ log (1/K) Σ_k p(x, z_k) / q(z_k | x), z_k ~ q(z | x), per example (nats)
    (``options``: those of :func:`importance_sampling`).

    Example::

        >>> logp = importance_log_likelihood(vae.model, guide, x_test, num_samples=5000)
        ... # doctest: +SKIP
    """
    return importance_sampling(model, guide, x, num_samples, khat=False, **options)[1]


@torch.no_grad()
def evaluate_elbo(
    model: Callable,
    guide: Callable,
    x: torch.Tensor,
    elbo: ELBO,
    batch_size: int = 1000,
    y: torch.Tensor | None = None,
) -> float:
    """The mean per-example bound −``elbo.loss`` / N of any Pyro estimator on ``x`` (nats),
    in batches of ``batch_size`` (given the context ``y`` of a conditional model: a bound
    on log p(x | c)).

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
    ys = [None] * math.ceil(x.shape[0] / batch_size) if y is None else y.split(batch_size)
    for xb, yb in zip(x.split(batch_size), ys, strict=True):
        loss = elbo.loss(model, guide, xb) if yb is None else elbo.loss(model, guide, xb, yb)
        if isinstance(elbo, ReweightedWakeSleep):
            loss = loss[0]  # (wake-θ loss, wake-φ loss)
        total += float(loss)
    return -total / x.shape[0]

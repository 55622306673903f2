"""Amortised guides q_φ(z | x): an encoder network maps each x to the parameters of its
approximate posterior. Every guide is an ``nn.Module`` whose ``forward(x)`` is the Pyro guide
(site ``"z"`` inside ``pyro.plate("data")``) and whose ``posterior(x)`` returns q(z | x).

=================  ==========================================================  ===========
name               q_φ(z | x)                                                  gradients
=================  ==========================================================  ===========
diagonal_normal    N(μ(x), diag σ²(x)), the amortised mean-field guide         reparam.
low_rank_normal    N(μ(x), F(x)F(x)ᵀ + diag d(x)), F of rank ``guide.rank``     reparam.
full_normal        N(μ(x), L(x)L(x)ᵀ), L lower triangular                      reparam.
iaf                z₀ ~ N(μ(x), diag σ²(x)), then K inverse autoregressive     reparam.
                   steps z_k = μ_k(z_{k-1}, h) + σ_k(z_{k-1}, h) ⊙ z_{k-1}
                   conditioned on h = h(x) (Kingma et al., 2016)
score_function     N(μ(x), diag σ²(x)) marked non-reparameterisable: Pyro's     score
                   ELBOs use ∇_φ E_q[f] = E_q[f ∇_φ log q] with an optional     function
                   baseline (decaying average or a neural network)
=================  ==========================================================  ===========
"""

from __future__ import annotations

import math
from typing import Any

import pyro
import pyro.distributions as dist
import torch
import torch.nn.functional as F
from pyro.distributions.transforms import conditional_affine_autoregressive
from torch import nn
from torch.distributions import (
    Independent,
    LowRankMultivariateNormal,
    MultivariateNormal,
    Normal,
    register_kl,
)

from pyrogen.config import GuideConfig
from pyrogen.nets import MLP, ConvEncoder
from pyrogen.registry import GUIDES

MIN_SCALE = 1e-4


class NonReparameterizedNormal(dist.Normal):
    """A Normal whose samples carry no reparameterised gradient (``has_rsample = False``),
    so Pyro's ELBOs fall back to the score-function estimator for it.

    (``dist.Normal(...).has_rsample_(False)`` would do the same, but with pyro-ppl 1.9.2 and
    torch 2.13 it breaks once wrapped by ``.to_event`` inside a plate: "has no setter".)
    """

    has_rsample = False

    def expand(self, batch_shape, _instance=None):
        new = self._get_checked_instance(NonReparameterizedNormal, _instance)
        return super().expand(batch_shape, _instance=new)


def _encoder(guide_cfg: GuideConfig, vae: nn.Module, out_dim: int) -> nn.Module:
    """x -> ``out_dim`` features: an MLP, or a conv net when the VAE's decoder is conv."""
    if vae.cfg.architecture == "conv":
        return ConvEncoder(vae.image_shape, out_dim)
    hidden = guide_cfg.hidden_sizes
    if hidden is None:
        hidden = list(reversed(vae.cfg.hidden_sizes))
    return MLP(vae.num_dims, hidden, out_dim, vae.cfg.activation)


class AmortisedGuide(nn.Module):
    """Common plumbing: flatten x, run the encoder, sample ``z`` in the data plate."""

    infer: dict[str, Any] = {}

    def __init__(self, vae: nn.Module) -> None:
        super().__init__()
        self.latent_dim = vae.latent_dim
        self.event_dims = len(vae.event_shape)
        self.conv = vae.cfg.architecture == "conv"

    def features(self, x: torch.Tensor) -> torch.Tensor:
        if not self.conv:
            x = x.reshape(x.shape[0], -1)
        return self.encoder(x)

    def posterior(self, x: torch.Tensor) -> dist.Distribution:  # pragma: no cover - abstract
        raise NotImplementedError

    def site_infer(self, x: torch.Tensor) -> dict[str, Any]:
        return {}

    def forward(
        self, x: torch.Tensor, y: torch.Tensor | None = None, num_samples: int | None = None
    ) -> torch.Tensor:
        """The Pyro guide: z ~ q_φ(z | x) for every x in the batch."""
        with pyro.plate("data", x.shape[0]):
            return pyro.sample("z", self.posterior(x), infer=self.site_infer(x))


class DiagonalNormalGuide(AmortisedGuide):
    """q_φ(z | x) = N(μ(x), diag σ²(x)), σ = softplus(·) + 1e-4."""

    def __init__(self, cfg: GuideConfig, vae: nn.Module) -> None:
        super().__init__(vae)
        self.encoder = _encoder(cfg, vae, 2 * vae.latent_dim)

    def loc_scale(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        loc, raw = self.features(x).chunk(2, dim=-1)
        return loc, F.softplus(raw) + MIN_SCALE

    def posterior(self, x: torch.Tensor) -> dist.Distribution:
        loc, scale = self.loc_scale(x)
        return dist.Normal(loc, scale).to_event(1)


class LowRankNormalGuide(AmortisedGuide):
    """q_φ(z | x) = N(μ(x), F(x) F(x)ᵀ + diag d(x)) with F of shape latent_dim × rank."""

    def __init__(self, cfg: GuideConfig, vae: nn.Module) -> None:
        super().__init__(vae)
        self.rank = cfg.rank
        self.encoder = _encoder(cfg, vae, vae.latent_dim * (2 + cfg.rank))

    def posterior(self, x: torch.Tensor) -> dist.Distribution:
        h = self.features(x)
        d = self.latent_dim
        loc, raw_diag = h[..., :d], h[..., d : 2 * d]
        factor = h[..., 2 * d :].reshape(*h.shape[:-1], d, self.rank) / math.sqrt(self.rank)
        return dist.LowRankMultivariateNormal(loc, factor, F.softplus(raw_diag) + MIN_SCALE)


class FullNormalGuide(AmortisedGuide):
    """q_φ(z | x) = N(μ(x), L(x) L(x)ᵀ), L lower triangular with a positive diagonal."""

    def __init__(self, cfg: GuideConfig, vae: nn.Module) -> None:
        super().__init__(vae)
        d = vae.latent_dim
        self.register_buffer("tril_rows", torch.tril_indices(d, d, offset=-1)[0])
        self.register_buffer("tril_cols", torch.tril_indices(d, d, offset=-1)[1])
        self.encoder = _encoder(cfg, vae, 2 * d + d * (d - 1) // 2)

    def posterior(self, x: torch.Tensor) -> dist.Distribution:
        h = self.features(x)
        d = self.latent_dim
        loc, raw_diag, off = h[..., :d], h[..., d : 2 * d], h[..., 2 * d :]
        tril = torch.diag_embed(F.softplus(raw_diag) + MIN_SCALE)
        lower = torch.zeros_like(tril)
        lower[..., self.tril_rows, self.tril_cols] = off
        tril = tril + lower
        return dist.MultivariateNormal(loc, scale_tril=tril)


class IAFGuide(AmortisedGuide):
    """z₀ ~ N(μ(x), diag σ²(x)) followed by ``guide.num_flows`` conditional inverse
    autoregressive steps (Pyro's ``ConditionalAffineAutoregressive``) given h(x).

    Samples are cheap (one pass per step) and the log-density of the guide's own samples is
    exact through Pyro's transform cache; it has no analytic KL, so ``mean_field`` refuses it.
    """

    def __init__(self, cfg: GuideConfig, vae: nn.Module) -> None:
        super().__init__(vae)
        d = vae.latent_dim
        self.context_dim = max(2 * d, 16)
        self.encoder = _encoder(cfg, vae, 2 * d + self.context_dim)
        hidden = [max(4 * d, 32)] * 2
        self.flows = nn.ModuleList(
            conditional_affine_autoregressive(d, self.context_dim, hidden_dims=hidden)
            for _ in range(cfg.num_flows)
        )
        if d == 1:
            raise ValueError("the iaf guide needs model.latent_dim >= 2")

    def posterior(self, x: torch.Tensor) -> dist.Distribution:
        h = self.features(x)
        d = self.latent_dim
        loc, raw, context = h[..., :d], h[..., d : 2 * d], h[..., 2 * d :]
        base = dist.Normal(loc, F.softplus(raw) + MIN_SCALE).to_event(1)
        return dist.TransformedDistribution(base, [f.condition(context) for f in self.flows])


class ScoreFunctionGuide(DiagonalNormalGuide):
    """The diagonal Gaussian guide made non-reparameterisable: gradients by the
    score-function (REINFORCE) estimator ∇_φ ELBO = E_q[(log p(x,z) − log q(z|x) − b) ∇_φ log
    q(z|x)] + E_q[∇_φ(log p − log q)], with baseline b from ``guide.baseline``.

    Baselines are Pyro's own (``infer={"baseline": ...}``), used by ``TraceGraph_ELBO``:
    ``decaying_average`` (b = running mean of the downstream cost, kept in Pyro's param
    store) or ``neural`` (b = a small MLP of x, fitted by Pyro to the downstream cost).
    """

    def __init__(self, cfg: GuideConfig, vae: nn.Module) -> None:
        super().__init__(cfg, vae)
        self.baseline = cfg.baseline
        self.baseline_beta = cfg.baseline_beta
        if cfg.baseline == "neural":
            self.baseline_net = MLP(vae.num_dims, [64], 1, "relu")

    def posterior(self, x: torch.Tensor) -> dist.Distribution:
        loc, scale = self.loc_scale(x)
        return NonReparameterizedNormal(loc, scale).to_event(1)

    def site_infer(self, x: torch.Tensor) -> dict[str, Any]:
        if self.baseline == "decaying_average":
            return {
                "baseline": {"use_decaying_avg_baseline": True, "baseline_beta": self.baseline_beta}
            }
        if self.baseline == "neural":
            baseline = NeuralBaseline(self.baseline_net, plate_batch_shape(x.shape[0]))
            return {"baseline": {"nn_baseline": baseline, "nn_baseline_input": x}}
        return {}


class NeuralBaseline:
    """b(x): the baseline net's (N, 1) output as the batch of downstream costs it predicts,
    broadcast to the site's batch shape ``shape`` (e.g. (K, N) under vectorised particles:
    every particle of x_n gets the same b(x_n), which keeps the estimator unbiased)."""

    def __init__(self, net: nn.Module, shape: tuple[int, ...]) -> None:
        self.net, self.shape = net, shape

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x.reshape(x.shape[0], -1)).squeeze(-1).expand(self.shape)


def plate_batch_shape(size: int) -> tuple[int, ...]:
    """The batch shape that the enclosing vectorised ``pyro.plate``s give a sample site
    (the data plate of ``size`` and, e.g., an ELBO's vectorised particles plate)."""
    frames = [f for f in pyro.poutine.runtime.get_plates() if f.dim is not None]
    if not frames:
        return (size,)
    shape = [1] * max(-f.dim for f in frames)
    for f in frames:
        shape[f.dim] = f.size
    return tuple(shape)


# KL(q ‖ p) for correlated Gaussian posteriors against the diagonal Gaussian prior, so that
# TraceMeanField_ELBO computes it in closed form (torch only knows it for MVN against MVN and
# would silently fall back to a Monte Carlo estimate).
@register_kl(MultivariateNormal, Independent)
@register_kl(LowRankMultivariateNormal, Independent)
def _kl_correlated_normal_diagonal_normal(q, p):
    """KL(N(μ, Σ) ‖ N(m, diag s²)) = Σ_i [log s_i + ½ log 2π + (Σ_ii + (μ_i − m_i)²) / (2 s_i²)]
    − H(q): the cross-entropy of q under p minus q's entropy."""
    if not (isinstance(p.base_dist, Normal) and p.reinterpreted_batch_ndims == 1):
        raise NotImplementedError
    m, s = p.base_dist.loc, p.base_dist.scale
    cross = s.log() + 0.5 * math.log(2 * math.pi) + (q.variance + (q.loc - m) ** 2) / (2 * s**2)
    return cross.sum(-1) - q.entropy()


GUIDES.add("diagonal_normal", DiagonalNormalGuide, "amortised mean-field Gaussian")
GUIDES.add("low_rank_normal", LowRankNormalGuide, "Gaussian with low-rank + diagonal covariance")
GUIDES.add("full_normal", FullNormalGuide, "Gaussian with full covariance")
GUIDES.add("iaf", IAFGuide, "diagonal Gaussian + inverse autoregressive flow steps")
GUIDES.add("score_function", ScoreFunctionGuide, "non-reparameterised diagonal Gaussian")

#: guides whose samples carry reparameterised gradients
REPARAMETERISED = ("diagonal_normal", "low_rank_normal", "full_normal", "iaf")
#: guides for which KL(q ‖ N(0, I)) has a closed form (torch's, or the one registered above)
ANALYTIC_KL = ("diagonal_normal", "low_rank_normal", "full_normal")

"""A two-level hierarchical VAE (``model.levels: 2``), in Pyro::

    z₂ ~ p(z₂)                                    (top_latent_dim; N(0, I), or a VampPrior /
                                                   mixture-of-Gaussians prior on z₂)
    z₁ | z₂ ~ N(μ(z₂), diag σ²(z₂))               (latent_dim; an MLP, the top-down net)
    x | z₁ ~ p_θ(x | z₁) = likelihood(decoder(z₁))

and its top-down guide, which samples in the generative order::

    h = encoder(x)
    q_φ(z₂ | x)     = N(μ₂(h), diag σ₂²(h))        (an affine head on h)
    q_φ(z₁ | x, z₂) = N(μ₁(h, z₂), diag σ₁²(h, z₂)) (an MLP on [h, z₂])

so q_φ(z₁, z₂ | x) = q_φ(z₂ | x) q_φ(z₁ | x, z₂), and the ELBO is

    E_q[log p(x | z₁) + log p(z₁ | z₂) + log p(z₂) − log q(z₁ | x, z₂) − log q(z₂ | x)].

Sites ``"z2"``, ``"z1"`` (both diagonal Gaussians, ``Independent`` over one dimension) and
``"x"``, all inside ``pyro.plate("data")``. Every estimator that scores the model's sites works
unchanged: ``TraceMeanField_ELBO`` computes KL(q(z₂|x) ‖ p(z₂)) and, given the z₂ it drew,
KL(q(z₁|x,z₂) ‖ p(z₁|z₂)) in closed form (both Gaussians), an unbiased estimate of the ELBO's KL
terms; the importance-sampled log p(x) weighs w = p(x, z₁, z₂) / q(z₁, z₂ | x).

Scale σ = softplus(raw) + 1e-4 everywhere, as the one-level guide's.

Example::

    >>> import torch
    >>> from torch import nn
    >>> enc = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.Tanh())
    >>> dec = nn.Sequential(nn.Linear(4, 32), nn.Tanh(), nn.Linear(32, 64))
    >>> hvae = HierarchicalVAE(enc, dec, latent_dim=4, top_latent_dim=2, event_shape=(64,),
    ...                        feature_dim=32, hidden_sizes=[16])
    >>> hvae.sample(5).shape
    torch.Size([5, 64])
"""

from __future__ import annotations

from collections.abc import Sequence

import pyro
import pyro.distributions as dist
import torch
import torch.nn.functional as F
from torch import nn

from pyrogen.models.likelihoods import Likelihood
from pyrogen.models.priors import MixtureOfGaussiansPrior
from pyrogen.models.vae import VAE
from pyrogen.nets import MLP
from pyrogen.params import declare_params

#: the smallest standard deviation of p(z₁ | z₂), q(z₂ | x) and q(z₁ | x, z₂)
MIN_SCALE = 1e-4


def diagonal_normal(h: torch.Tensor) -> dist.Distribution:
    """N(μ, diag σ²) from ``h = (μ, raw σ)`` (last dimension 2 d), σ = softplus(raw) + 1e-4."""
    loc, raw = h.chunk(2, dim=-1)
    return dist.Normal(loc, F.softplus(raw) + MIN_SCALE).to_event(1)


class HierarchicalGuide(nn.Module):
    """q_φ(z₁, z₂ | x) = q_φ(z₂ | x) q_φ(z₁ | x, z₂), top-down, both diagonal Gaussians.

    Args:
        encoder: x ``(N, *event_shape)`` -> h ``(N, feature_dim)``.
        feature_dim: the width of h.
        latent_dim, top_latent_dim: the dimensions of z₁ and z₂.
        hidden_sizes: the hidden widths of the MLP [h, z₂] -> (μ₁, raw σ₁); ``[]``: affine.
        activation: its nonlinearity.

    ``top`` (h -> (μ₂, raw σ₂)) is affine. ``forward(x)`` is the Pyro guide (sites ``"z2"``,
    then ``"z1"``); its parameters are param sites ``guide.<path>``.
    """

    def __init__(
        self,
        encoder: nn.Module,
        feature_dim: int,
        latent_dim: int,
        top_latent_dim: int,
        hidden_sizes: Sequence[int] = (256,),
        activation: str = "relu",
        name: str = "guide",
    ) -> None:
        super().__init__()
        if min(feature_dim, latent_dim, top_latent_dim) < 1:
            raise ValueError(
                f"feature_dim, latent_dim and top_latent_dim must be >= 1, got "
                f"{feature_dim}, {latent_dim}, {top_latent_dim}"
            )
        self.encoder = encoder
        self.latent_dim, self.top_latent_dim = int(latent_dim), int(top_latent_dim)
        self.top = nn.Linear(feature_dim, 2 * self.top_latent_dim)
        self.bottom = MLP(
            feature_dim + self.top_latent_dim, list(hidden_sizes), 2 * self.latent_dim, activation
        )
        self.name = name

    def top_posterior(self, x: torch.Tensor, h: torch.Tensor | None = None) -> dist.Distribution:
        """q_φ(z₂ | x) (``h``: the encoder's features of x, when already computed)."""
        return diagonal_normal(self.top(self.encoder(x) if h is None else h))

    def bottom_posterior(self, h: torch.Tensor, z2: torch.Tensor) -> dist.Distribution:
        """q_φ(z₁ | x, z₂) from the features h = encoder(x) ``(N, F)`` and z₂ ``(..., N, d₂)``
        (leading particle dimensions broadcast over h)."""
        h = h.expand(*z2.shape[:-1], h.shape[-1])
        return diagonal_normal(self.bottom(torch.cat([h, z2], dim=-1)))

    def posterior(self, x: torch.Tensor) -> dist.Distribution:
        """q_φ(z₁ | x, z₂ = E_q[z₂ | x]): z₁'s posterior at z₂'s posterior mean (a plug-in,
        not the marginal q(z₁ | x), which is a continuous mixture); what reconstructions and
        interpolations decode."""
        h = self.encoder(x)
        return self.bottom_posterior(h, self.top_posterior(x, h).mean)

    def forward(
        self, x: torch.Tensor, y: torch.Tensor | None = None, num_samples: int | None = None
    ) -> torch.Tensor:
        """The Pyro guide: z₂ ~ q(z₂ | x), then z₁ ~ q(z₁ | x, z₂), for every x in the batch."""
        declare_params(self, self.name)
        with pyro.plate("data", x.shape[0]):
            h = self.encoder(x)
            z2 = pyro.sample("z2", self.top_posterior(x, h))
            return pyro.sample("z1", self.bottom_posterior(h, z2))


class _TopPosterior:
    """q(z₂ | x) under the name ``posterior``: what a VampPrior on z₂ mixes at its
    pseudo-inputs."""

    def __init__(self, guide: HierarchicalGuide) -> None:
        self.guide = guide

    def posterior(self, x: torch.Tensor) -> dist.Distribution:
        return self.guide.top_posterior(x)


class HierarchicalVAE(VAE):
    """p_θ(x, z₁, z₂) = p(z₂) N(z₁; μ(z₂), diag σ²(z₂)) p_θ(x | z₁) and its top-down guide
    (see the module).

    Args:
        encoder: x ``(N, *event_shape)`` -> h ``(N, feature_dim)``, the guide's features.
        decoder: z₁ ``(N, latent_dim)`` -> ``(N, likelihood.outputs_per_dim × D)`` numbers.
        latent_dim: dimension of z₁ (the level the decoder reads).
        top_latent_dim: dimension of z₂.
        event_shape: the shape of one example.
        likelihood: ``"bernoulli"``, ``"gaussian"`` or a
            :class:`~pyrogen.models.likelihoods.Likelihood`.
        feature_dim: the width of the encoder's output h.
        hidden_sizes: hidden widths of the two MLPs z₂ -> (μ, raw σ) of p(z₁ | z₂) and
            [h, z₂] -> (μ₁, raw σ₁) of q(z₁ | x, z₂); ``[]``: both affine.
        activation: their nonlinearity.
        prior: a learned prior on z₂ (``VampPrior``, or a non-enumerated
            ``MixtureOfGaussiansPrior`` of ``top_latent_dim``); default N(0, I).

    ``prior()`` is p(z₂) and ``conditional_prior(z2)`` is p(z₁ | z₂); ``sample(n)`` draws the
    whole chain z₂ -> z₁ -> x.
    """

    def __init__(
        self,
        encoder: nn.Module,
        decoder: nn.Module,
        latent_dim: int,
        top_latent_dim: int,
        event_shape: int | Sequence[int],
        likelihood: str | Likelihood = "bernoulli",
        feature_dim: int = 256,
        hidden_sizes: Sequence[int] = (256,),
        activation: str = "relu",
        prior: nn.Module | None = None,
    ) -> None:
        if isinstance(prior, MixtureOfGaussiansPrior) and prior.enumerated:
            raise ValueError(
                "the hierarchical VAE takes a mixture prior on z2 scored as a density "
                "(enumerated=False); the GMVAE's enumerated component is not supported"
            )
        guide = HierarchicalGuide(
            encoder, feature_dim, latent_dim, top_latent_dim, hidden_sizes, activation
        )
        super().__init__(None, decoder, latent_dim, event_shape, likelihood, guide, prior)
        self.top_latent_dim = int(top_latent_dim)
        # p(z₂) = N(0, I) of z₂'s size (the one-level VAE's buffers are z's)
        self.prior_loc = torch.zeros(self.top_latent_dim)
        self.prior_scale = torch.ones(self.top_latent_dim)
        self.top_down = MLP(
            self.top_latent_dim, list(hidden_sizes), 2 * self.latent_dim, activation
        )

    def prior(self) -> dist.Distribution:
        """p(z₂): N(0, I) or the learned prior (a VampPrior mixes q(z₂ | u_k))."""
        if self.prior_module is not None:
            return self.prior_module(_TopPosterior(self.guide))
        return dist.Normal(self.prior_loc, self.prior_scale).to_event(1)

    def conditional_prior(self, z2: torch.Tensor) -> dist.Distribution:
        """p(z₁ | z₂) = N(μ(z₂), diag σ²(z₂)), batch shape ``z2.shape[:-1]``."""
        return diagonal_normal(self.top_down(z2))

    def networks(self) -> list[nn.Module]:
        """The networks ``train.compile`` compiles."""
        g = self.guide
        return [self.decoder, self.top_down, g.encoder, g.top, g.bottom]

    def process(self, x: torch.Tensor | None, y: torch.Tensor | None) -> torch.Tensor:
        """z₂ ~ p(z₂), z₁ ~ p(z₁ | z₂), x ~ p_θ(x | z₁); the site ``x`` observed when given."""
        z2 = pyro.sample("z2", self.prior())
        z1 = pyro.sample("z1", self.conditional_prior(z2))
        return pyro.sample("x", self.decode(z1), obs=x)

    def _decoded(self, n: int) -> dist.Distribution:
        z2 = self.prior().sample((n,))
        return self.decode(self.conditional_prior(z2).sample())

    @torch.no_grad()
    def sample(self, n: int) -> torch.Tensor:
        """``n`` draws x ~ p_θ(x) = ∫∫ p(z₂) p(z₁ | z₂) p_θ(x | z₁) dz₁ dz₂."""
        return self._decoded(n).sample()

    @torch.no_grad()
    def sample_mean(self, n: int) -> torch.Tensor:
        """E[x | z₁] for ``n`` draws z₂ ~ p(z₂), z₁ ~ p(z₁ | z₂): the decoder's means."""
        return self._decoded(n).mean

    @torch.no_grad()
    def sample_with_mean(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """For ``n`` draws of (z₂, z₁): the draws x ~ p_θ(x | z₁) and the decoder means of the
        same z₁."""
        p = self._decoded(n)
        return p.sample(), p.mean


__all__ = ["HierarchicalGuide", "HierarchicalVAE"]

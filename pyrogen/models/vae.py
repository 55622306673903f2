"""The VAE's generative process (Kingma & Welling, 2014) and its amortised guide, in Pyro::

    z ~ N(0, I)                                   (latent_dim)
    x | z ~ p_θ(x | z) = likelihood(decoder(z))   (Bernoulli for binary data, or
                                                   x_i ~ N(μ_i(z), σ_i²(z)) for real data)
    q_φ(z | x) = guide(encoder(x))                (amortised variational posterior)

With ``prior="mixture"`` (the GMVAE) the prior is a learned Gaussian mixture whose component
is a latent site of the model, marked for enumeration::

    c ~ Cat(π)                                    (num_components K, site "c")
    z | c ~ N(μ_c, diag σ_c²)
    x | z ~ p_θ(x | z)

``TraceEnum_ELBO`` sums c out exactly (the guide has no site for c), so the bound is
E_q[log Σ_c π_c N(z; μ_c, σ_c²) + log p_θ(x | z) − log q_φ(z | x)], and
``pyro.infer.infer_discrete`` reads each example's most probable component
(:func:`pyrogen.evaluation.clusters.clusters`).

A VAE is built from plain arguments: an encoder and a decoder (any ``nn.Module``s), the
latent dimension, the shape of one example and a likelihood. The encoder becomes the guide
(``vae.guide``; by default the diagonal Gaussian :class:`~pyrogen.models.guides.
DiagonalNormalGuide`, or pass any guide built on the encoder). ``vae.model`` and ``vae.guide``
are Pyro programs whose parameters are announced as param sites (:mod:`pyrogen.params`), so
Pyro's own tools work on them unchanged::

    svi = SVI(vae.model, vae.guide, pyro.optim.Adam({"lr": 1e-3}), Trace_ELBO())

Example::

    >>> import torch
    >>> from torch import nn
    >>> enc = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 2 * 4))
    >>> dec = nn.Sequential(nn.Linear(4, 32), nn.ReLU(), nn.Linear(32, 64))
    >>> vae = VAE(enc, dec, latent_dim=4, event_shape=(64,), likelihood="bernoulli")
    >>> vae.sample(5).shape, vae.sample(5).unique().tolist()
    (torch.Size([5, 64]), [0.0, 1.0])
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import pyro
import pyro.distributions as dist
import torch
from torch import nn

from pyrogen.models.guides import AmortisedGuide, DiagonalNormalGuide
from pyrogen.models.likelihoods import Likelihood, as_shape, make_likelihood
from pyrogen.params import declare_params

#: ``prior`` values of :class:`VAE`
PRIORS = ("normal", "mixture")


class VAE(nn.Module):
    """p_θ(x, z) = N(z; 0, I) p_θ(x | z) and its guide q_φ(z | x).

    Args:
        encoder: x ``(N, *event_shape)`` -> ``(N, guide.encoder_outputs(latent_dim))``; a plain
            module is wrapped in a :class:`DiagonalNormalGuide` (2 × latent_dim outputs: μ and
            the raw σ). Pass ``guide=`` instead for another variational family.
        decoder: z ``(N, latent_dim)`` -> ``(N, likelihood.outputs_per_dim × D)`` numbers
            (any shape with N leading), D = prod(event_shape).
        latent_dim: dimension of z.
        event_shape: the shape of one example (``(D,)`` for vectors, ``(C, H, W)`` images).
        likelihood: ``"bernoulli"``, ``"gaussian"`` (σ from the decoder) or a
            :class:`~pyrogen.models.likelihoods.Likelihood`.
        guide: an amortised guide (e.g. ``IAFGuide(encoder, latent_dim)``) instead of
            ``encoder``.
        prior: ``"normal"`` (N(0, I)) or ``"mixture"`` (the GMVAE: c ~ Cat(π), z | c ~
            N(μ_c, diag σ_c²), π, μ and σ learned; train with ``TraceEnum_ELBO``).
        num_components: K, the mixture's number of components (``prior="mixture"``).

    ``forward`` (alias ``model``) is the Pyro model; ``guide`` the Pyro guide.
    """

    def __init__(
        self,
        encoder: nn.Module | None,
        decoder: nn.Module,
        latent_dim: int,
        event_shape: int | Sequence[int],
        likelihood: str | Likelihood = "bernoulli",
        guide: AmortisedGuide | None = None,
        prior: str = "normal",
        num_components: int = 10,
    ) -> None:
        super().__init__()
        if prior not in PRIORS:
            raise ValueError(f"unknown prior {prior!r} (allowed: {', '.join(PRIORS)})")
        if prior == "mixture" and num_components < 2:
            raise ValueError(f"a mixture prior needs num_components >= 2, got {num_components}")
        if (encoder is None) == (guide is None):
            raise ValueError("give the VAE an encoder or a guide (built on an encoder), not both")
        if latent_dim < 1:
            raise ValueError(f"latent_dim must be >= 1, got {latent_dim}")
        self.latent_dim = int(latent_dim)
        self.event_shape = as_shape(event_shape)
        self.num_dims = math.prod(self.event_shape)
        self.decoder = decoder
        if isinstance(likelihood, str):
            likelihood = make_likelihood(likelihood, self.event_shape)
        if tuple(likelihood.event_shape) != self.event_shape:
            raise ValueError(
                f"the likelihood's event_shape {likelihood.event_shape} is not the VAE's "
                f"{self.event_shape}"
            )
        self.likelihood = likelihood
        self.guide = guide if guide is not None else DiagonalNormalGuide(encoder, self.latent_dim)
        if self.guide.latent_dim != self.latent_dim:
            raise ValueError(
                f"the guide's latent_dim {self.guide.latent_dim} is not the VAE's {self.latent_dim}"
            )
        self.register_buffer("prior_loc", torch.zeros(self.latent_dim))
        self.register_buffer("prior_scale", torch.ones(self.latent_dim))
        self.prior_kind = prior
        self.num_components = int(num_components) if prior == "mixture" else 0
        if prior == "mixture":  # means spread apart, so that the components start distinct
            k, d = self.num_components, self.latent_dim
            self.mixture_logits = nn.Parameter(torch.zeros(k))
            self.mixture_loc = nn.Parameter(torch.randn(k, d))
            self.mixture_log_scale = nn.Parameter(torch.zeros(k, d))

    # ------------------------------------------------------------------ p(z), p(x | z)
    def prior(self) -> dist.Distribution:
        """p(z): N(0, I), built from buffers so it follows the module's device; for the
        mixture prior the marginal Σ_c π_c N(z; μ_c, diag σ_c²) (a ``MixtureSameFamily``)."""
        if self.prior_kind == "mixture":
            return dist.MixtureSameFamily(self.component_prior(), self.component(None))
        return dist.Normal(self.prior_loc, self.prior_scale).to_event(1)

    def component_prior(self) -> dist.Categorical:
        """p(c) = Cat(softmax(logits)) of the mixture prior."""
        return dist.Categorical(logits=self.mixture_logits)

    def component(self, c: torch.Tensor | None) -> dist.Distribution:
        """p(z | c) = N(μ_c, diag σ_c²) (σ_c = exp of a learned log-scale); ``c=None``: all K
        components, batch shape ``(K,)``."""
        loc, log_scale = self.mixture_loc, self.mixture_log_scale
        if c is not None:
            loc, log_scale = loc[c], log_scale[c]
        return dist.Normal(loc, log_scale.exp()).to_event(1)

    def component_log_posterior(self, z: torch.Tensor) -> torch.Tensor:
        """log p(c | z) = log π_c + log N(z; μ_c, σ_c²) − log Σ_k π_k N(z; μ_k, σ_k²), shape
        ``(*z.shape[:-1], K)``."""
        joint = self.component_prior().logits + self.component(None).log_prob(z.unsqueeze(-2))
        return joint - joint.logsumexp(-1, keepdim=True)

    def decode(self, z: torch.Tensor) -> dist.Distribution:
        """p_θ(x | z) with batch shape ``z.shape[:-1]`` and event shape ``event_shape``."""
        batch = z.shape[:-1]
        h = self.decoder(z.reshape(-1, self.latent_dim))
        expected = self.likelihood.outputs_per_dim * self.num_dims
        if h[0].numel() != expected:
            raise ValueError(
                f"the decoder gives {h[0].numel()} numbers per example; the "
                f"{type(self.likelihood).__name__} of event_shape {self.event_shape} needs "
                f"{expected}"
            )
        return self.likelihood(h.reshape(*batch, expected))

    # ------------------------------------------------------------------ the Pyro model
    def forward(
        self,
        x: torch.Tensor | None = None,
        y: torch.Tensor | None = None,
        num_samples: int | None = None,
    ) -> torch.Tensor:
        """The generative process: z ~ p(z), x ~ p_θ(x | z) in ``pyro.plate("data")``.

        With ``x`` given the site ``x`` is observed; otherwise ``num_samples`` are drawn.
        The decoder's and likelihood's parameters are param sites (the guide's are the
        guide's)."""
        if x is None and num_samples is None:
            raise ValueError("give the data x or a number of samples")
        declare_params(self, "", exclude=("guide",))
        n = x.shape[0] if x is not None else num_samples
        with pyro.plate("data", n):
            if self.prior_kind == "mixture":
                c = pyro.sample("c", self.component_prior(), infer={"enumerate": "parallel"})
                z = pyro.sample("z", self.component(c))
            else:
                z = pyro.sample("z", self.prior())
            return pyro.sample("x", self.decode(z), obs=x)

    model = forward

    @torch.no_grad()
    def sample(self, n: int) -> torch.Tensor:
        """``n`` draws x ~ p_θ(x) = ∫ p(z) p_θ(x | z) dz (binary under a Bernoulli likelihood)."""
        return self.decode(self.prior().sample((n,))).sample()

    @torch.no_grad()
    def sample_mean(self, n: int) -> torch.Tensor:
        """E[x | z] for ``n`` draws z ~ p(z): the decoder's means (probabilities for a Bernoulli
        likelihood), which are *not* samples of the model; figures of VAEs often show them."""
        return self.decode(self.prior().sample((n,))).mean

    @torch.no_grad()
    def sample_with_mean(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """For ``n`` draws z ~ p(z): the draws x ~ p_θ(x | z) and the decoder means E[x | z]
        of the *same* z (a Bernoulli VAE's draws are binary speckle beside its smooth means)."""
        p = self.decode(self.prior().sample((n,)))
        return p.sample(), p.mean

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        """E[x | z] at z = the posterior mean of q(z | x) (a sample average for flow guides)."""
        return self.decode(posterior_mean(self.guide, x)).mean


def posterior_mean(guide: AmortisedGuide, x: torch.Tensor, num_samples: int = 64) -> torch.Tensor:
    """E_q[z | x]: in closed form where q has one, else a Monte Carlo average."""
    q = guide.posterior(x)
    try:
        return q.mean
    except NotImplementedError:  # a flow posterior (IAF) has no closed-form mean
        return q.sample((num_samples,)).mean(0)


__all__ = ["PRIORS", "VAE", "posterior_mean"]

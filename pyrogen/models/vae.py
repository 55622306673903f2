"""The VAE's generative process (Kingma & Welling, 2014) and its amortised guide, in Pyro::

    z ~ N(0, I)                                   (latent_dim)
    x | z ~ p_θ(x | z) = likelihood(decoder(z))   (Bernoulli for binary data, or
                                                   x_i ~ N(μ_i(z), σ_i²(z)) for real data)
    q_φ(z | x) = guide(encoder(x))                (amortised variational posterior)

With ``prior=MixtureOfGaussiansPrior(latent_dim, K, enumerated=True)`` (the GMVAE,
``model.prior=mixture``) the prior is a learned Gaussian mixture whose component is a latent
site of the model, marked for enumeration::

    c ~ Cat(π)                                    (num_components K, site "c")
    z | c ~ N(μ_c, diag σ_c²)
    x | z ~ p_θ(x | z)

``TraceEnum_ELBO`` sums c out exactly (the guide has no site for c), so the bound is
E_q[log Σ_c π_c N(z; μ_c, σ_c²) + log p_θ(x | z) − log q_φ(z | x)], and
``pyro.infer.infer_discrete`` reads each example's most probable component
(:func:`pyrogen.evaluation.clusters.clusters`).

With ``num_classes`` K (class labels y, c = one-hot(y)) or ``context_dim`` C (a continuous
context c ∈ ℝ^C) it is the conditional VAE of Sohn et al. (2015), the CVAE::

    z | c ~ p(z) = N(0, I), or p_λ(z | c) = N(μ(c), diag σ²(c))   (``conditional_prior``)
    x | z, c ~ p_θ(x | z, c) = likelihood(decoder([z, c]))
    q_φ(z | x, c) = guide(encoder(x, c))          (the guide's encoder is given c too)

trained on the ELBO of log p(x | c); c travels in the batch's label slot ``y``
(:mod:`pyrogen.models.context`), so ``vae.model(x, y)`` and ``vae.guide(x, y)`` are the Pyro
programs and ``sample(n, y)`` draws x ~ p(x | c).

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

from pyrogen.models.context import check_context, context_size, context_vector
from pyrogen.models.guides import AmortisedGuide, DiagonalNormalGuide
from pyrogen.models.likelihoods import Likelihood, as_shape, make_likelihood
from pyrogen.models.priors import ConditionalNormalPrior, MixtureOfGaussiansPrior, VampPrior
from pyrogen.models.process import GenerativeProcess


class VAE(GenerativeProcess):
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
        prior: a learned prior module (:mod:`pyrogen.models.priors`: ``VampPrior``,
            ``MixtureOfGaussiansPrior``, with ``enumerated=True`` the GMVAE's) whose
            ``forward(guide)`` is p(z); default N(0, I).
        num_classes: K: the CVAE of class labels y, c = one-hot(y); the decoder takes
            latent_dim + K inputs, the guide's encoder x and c (see
            :meth:`~pyrogen.models.guides.AmortisedGuide.condition_on`).
        context_dim: C: the CVAE of a continuous context c ∈ ℝ^C (not with ``num_classes``).
        conditional_prior: p(z | c) = N(μ(c), diag σ²(c)) instead of N(0, I): ``True`` for a
            :class:`~pyrogen.models.priors.ConditionalNormalPrior` with one hidden layer of
            64 units, or such a module (conditional VAE only; not with ``prior``).

    ``forward`` (alias ``model``) is the Pyro model; ``guide`` the Pyro guide.
    """

    not_param_sites = ("guide",)

    def __init__(
        self,
        encoder: nn.Module | None,
        decoder: nn.Module,
        latent_dim: int,
        event_shape: int | Sequence[int],
        likelihood: str | Likelihood = "bernoulli",
        guide: AmortisedGuide | None = None,
        prior: nn.Module | None = None,
        num_classes: int | None = None,
        context_dim: int | None = None,
        conditional_prior: bool | nn.Module = False,
    ) -> None:
        super().__init__()
        width = context_size(num_classes, context_dim)  # refuses both
        if num_classes is not None and num_classes < 2:
            raise ValueError(f"num_classes must be >= 2 (or None), got {num_classes}")
        if context_dim is not None and context_dim < 1:
            raise ValueError(f"context_dim must be >= 1 (or None), got {context_dim}")
        self.num_classes = None if num_classes is None else int(num_classes)
        self.context_dim = None if context_dim is None else int(context_dim)
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
        self.prior_module = prior
        if self.conditional:
            if prior is not None:
                raise ValueError(
                    "a conditional VAE's prior is N(0, I) or p(z | c) (conditional_prior=True), "
                    f"not a learned p(z) ({type(prior).__name__})"
                )
            if not isinstance(self.guide, AmortisedGuide):
                raise ValueError("a conditional VAE needs an amortised guide (q(z | x, c))")
            self.guide.condition_on(self.num_classes, self.context_dim)
        if conditional_prior is not False and conditional_prior is not None:
            if not self.conditional:
                raise ValueError(
                    "conditional_prior is p(z | c): give num_classes or context_dim (a CVAE)"
                )
            if conditional_prior is True:
                conditional_prior = ConditionalNormalPrior(width, self.latent_dim)
            self.context_prior: nn.Module | None = conditional_prior
        else:
            self.context_prior = None

    @property
    def conditional(self) -> bool:
        """Whether the VAE is p(x | c) (the CVAE), taking the context ``y``."""
        return self.num_classes is not None or self.context_dim is not None

    def context(self, y: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """c of the labels ``y`` as the networks take it (one-hot or the context itself), in
        ``like``'s dtype and device."""
        return context_vector(y, self.num_classes, self.context_dim, like.dtype).to(like.device)

    def labels(self, y: torch.Tensor | object | None, n: int) -> torch.Tensor | None:
        """The context of ``n`` draws of a conditional VAE, checked
        (:func:`~pyrogen.models.context.check_context`): ``y`` (one, or n), or for class
        labels 0..K−1 in turn when not given; a ``ValueError`` for a continuous context not
        given, and for ``y`` given to an unconditional VAE (``None`` then)."""
        if not self.conditional:
            if y is not None:
                raise ValueError("this VAE is not conditional: it takes no labels or context y")
            return None
        return check_context(y, n, self.num_classes, self.context_dim, self.prior_loc.device)

    # ------------------------------------------------------------------ p(z), p(x | z)
    def prior(self, y: torch.Tensor | None = None) -> dist.Distribution:
        """p(z): N(0, I), built from buffers so it follows the module's device, or the learned
        prior's mixture (its parameters are the module's, so they move and checkpoint too); a
        CVAE's conditional prior p(z | c) = N(μ(c), diag σ²(c)) for the labels ``y``, batch
        shape ``(N,)`` (its p(z) = N(0, I) does not depend on c)."""
        if self.context_prior is not None:
            if y is None:
                raise ValueError("the conditional prior p(z | c) needs the context y")
            return self.context_prior(self.context(y, self.prior_loc))
        if self.prior_module is not None:
            return self.prior_module(self.guide)
        return dist.Normal(self.prior_loc, self.prior_scale).to_event(1)

    @property
    def prior_kind(self) -> str:
        """``"standard"``, ``"vamp"``, ``"mog"``, ``"mixture"`` (the GMVAE's enumerated
        mixture) or ``"conditional"`` (a CVAE's p(z | c)): the ``model.prior`` this VAE's p(z)
        is."""
        if self.context_prior is not None:
            return "conditional"
        if self.prior_module is None:
            return "standard"
        if isinstance(self.prior_module, MixtureOfGaussiansPrior):
            return "mixture" if self.prior_module.enumerated else "mog"
        return "vamp" if isinstance(self.prior_module, VampPrior) else "custom"

    @property
    def enumerates_component(self) -> bool:
        """Whether the mixture's component c is a site of the model summed out by enumeration
        (the GMVAE), rather than z scored under the mixture's log-density."""
        return self.prior_kind == "mixture"

    @property
    def num_components(self) -> int:
        """K of a Gaussian-mixture prior (0 for the others)."""
        return getattr(self.prior_module, "num_components", 0) if self.prior_kind != "vamp" else 0

    def _mixture(self) -> MixtureOfGaussiansPrior:
        if not isinstance(self.prior_module, MixtureOfGaussiansPrior):
            raise ValueError(f"this VAE's prior ({self.prior_kind}) has no components")
        return self.prior_module

    def component_prior(self) -> dist.Categorical:
        """p(c) = Cat(π) of a Gaussian-mixture prior."""
        return self._mixture().component_prior()

    def component(self, c: torch.Tensor | None) -> dist.Distribution:
        """p(z | c) = N(μ_c, diag σ_c²); ``c=None``: all K components, batch shape ``(K,)``."""
        return self._mixture().component(c)

    def component_log_posterior(self, z: torch.Tensor) -> torch.Tensor:
        """log p(c | z), shape ``(*z.shape[:-1], K)``."""
        return self._mixture().component_log_posterior(z)

    def decode(self, z: torch.Tensor, y: torch.Tensor | None = None) -> dist.Distribution:
        """p_θ(x | z) with batch shape ``z.shape[:-1]`` and event shape ``event_shape``; a
        CVAE's p_θ(x | z, c) = likelihood(decoder([z, c])) for the labels ``y`` of the last
        batch dimension (c broadcast over the dimensions left of it: particles)."""
        batch = z.shape[:-1]
        if self.conditional:
            if y is None:
                raise ValueError("a conditional VAE's decoder p(x | z, c) needs the context y")
            c = self.context(y, z)
            c = c.expand(*batch, c.shape[-1])
            zc = torch.cat([z, c], dim=-1)
            h = self.decoder(zc.reshape(-1, zc.shape[-1]))
        else:
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
    def process(self, x: torch.Tensor | None, y: torch.Tensor | None) -> torch.Tensor:
        """z ~ p(z), x ~ p_θ(x | z); the site ``x`` is observed when given. Under the GMVAE's
        prior the component c ~ Cat(π) is a site of its own, marked for enumeration (summed
        out by ``TraceEnum_ELBO``), and z ~ p(z | c). The decoder's and likelihood's parameters
        are param sites (the guide's are the guide's). A CVAE: z ~ p(z) or p(z | c),
        x ~ p_θ(x | z, c), with c from ``y`` (required when x is observed; when sampling, the
        classes in turn if not given)."""
        if self.conditional:
            if y is None:
                if x is not None:
                    raise ValueError("a conditional VAE scores x given its context: give y")
                (plate,) = [f for f in pyro.poutine.runtime.get_plates() if f.name == "data"]
                y = self.labels(None, plate.size)
            z = pyro.sample("z", self.prior(y))
            return pyro.sample("x", self.decode(z, y), obs=x)
        if y is not None:
            raise ValueError("this VAE is not conditional: it takes no labels or context y")
        if self.enumerates_component:
            c = pyro.sample("c", self.component_prior(), infer={"enumerate": "parallel"})
            z = pyro.sample("z", self.component(c))
        else:
            z = pyro.sample("z", self.prior())
        return pyro.sample("x", self.decode(z), obs=x)

    def _draw_z(self, n: int, y: torch.Tensor | None) -> torch.Tensor:
        """n draws z ~ p(z) (a CVAE's conditional prior: z ~ p(z | c) for the context y)."""
        if self.context_prior is not None:
            return self.prior(y).sample()
        return self.prior().sample((n,))

    @torch.no_grad()
    def sample(self, n: int, y: torch.Tensor | None = None) -> torch.Tensor:
        """``n`` draws x ~ p_θ(x) = ∫ p(z) p_θ(x | z) dz (binary under a Bernoulli likelihood);
        a CVAE's x ~ p_θ(x | c) = ∫ p(z | c) p_θ(x | z, c) dz for the context ``y`` (one, or
        n; class labels default to 0..K−1 in turn, a continuous context must be given)."""
        y = self.labels(y, n)
        return self.decode(self._draw_z(n, y), y).sample()

    @torch.no_grad()
    def sample_mean(self, n: int, y: torch.Tensor | None = None) -> torch.Tensor:
        """E[x | z] for ``n`` draws z ~ p(z): the decoder's means (probabilities for a Bernoulli
        likelihood), which are *not* samples of the model; figures of VAEs often show them. A
        CVAE's E[x | z, c] for z ~ p(z | c), c from ``y`` as in :meth:`sample`."""
        y = self.labels(y, n)
        return self.decode(self._draw_z(n, y), y).mean

    @torch.no_grad()
    def sample_with_mean(
        self, n: int, y: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """For ``n`` draws z ~ p(z): the draws x ~ p_θ(x | z) and the decoder means E[x | z]
        of the *same* z (a Bernoulli VAE's draws are binary speckle beside its smooth means);
        a CVAE's for the context ``y`` as in :meth:`sample`."""
        y = self.labels(y, n)
        p = self.decode(self._draw_z(n, y), y)
        return p.sample(), p.mean

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """E[x | z] at z = the posterior mean of q(z | x) (a sample average for flow guides); a
        CVAE's E[x | z, c] at the mean of q(z | x, c), c the context ``y`` of x."""
        if self.conditional and y is None:
            raise ValueError("a conditional VAE reconstructs x given its context: give y")
        y = self.labels(y, x.shape[0])
        return self.decode(posterior_mean(self.guide, x, y=y), y).mean


def posterior_mean(
    guide: AmortisedGuide,
    x: torch.Tensor,
    num_samples: int = 64,
    y: torch.Tensor | None = None,
) -> torch.Tensor:
    """E_q[z | x] (a conditional guide's E_q[z | x, c], c from ``y``): in closed form where q
    has one, else a Monte Carlo average."""
    q = guide.posterior(x) if y is None else guide.posterior(x, y)
    try:
        return q.mean
    except NotImplementedError:  # a flow posterior (IAF) has no closed-form mean
        return q.sample((num_samples,)).mean(0)


__all__ = ["VAE", "posterior_mean"]

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
planar,            z₀ ~ N(μ(x), diag σ²(x)), then K planar or Sylvester steps      reparam.
sylvester          amortised by the encoder (:mod:`pyrogen.models.flow_guides`)
score_function     N(μ(x), diag σ²(x)) marked non-reparameterisable: Pyro's     score
                   ELBOs use ∇_φ E_q[f] = E_q[f ∇_φ log q] with an optional     function
                   baseline (decaying average or a neural network)
=================  ==========================================================  ===========

A conditional VAE's guide is q_φ(z | x, c) (Sohn et al. 2015): :meth:`AmortisedGuide.
condition_on` makes every guide above feed its encoder the context c beside x (the flattened
x concatenated with c for an MLP; the encoder's own ``forward(x, c)`` where it
``takes_context``, e.g. the conv encoder), and ``posterior(x, y)`` / ``forward(x, y)`` take
the batch's label slot ``y`` (:mod:`pyrogen.models.context`).
"""

from __future__ import annotations

import inspect
import math
from typing import Any, ClassVar

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

from pyrogen.models.context import context_size, context_vector
from pyrogen.params import declare_params
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


class AmortisedGuide(nn.Module):
    """Common plumbing: run the encoder on x, sample ``z`` in the data plate.

    The encoder is any ``nn.Module`` mapping a batch x of shape ``(N, *event_shape)`` to
    ``(N, encoder_outputs(latent_dim))`` numbers (see each guide); it receives x as stored (an
    MLP encoder flattens it first). ``forward(x)`` is the Pyro guide; its parameters are
    announced to Pyro as param sites ``<name>.<path>`` (:mod:`pyrogen.params`), so plain
    ``SVI`` optimises them.

    **Facts** the rest of pyrogen reads instead of testing a guide's name (a new guide sets
    those that differ from these defaults; CONTRIBUTING.md): ``reparameterised``,
    ``analytic_kl``, ``factorised``, ``scores_any_z``, :meth:`options` (from the constructor's
    signature: a config passes the ``guide`` section's keys of the same names),
    :meth:`problem` and :meth:`num_parameters`.
    """

    infer: dict[str, Any] = {}
    #: samples carry a reparameterised gradient (z = g_φ(ε, x)); ``False``: Pyro's ELBOs use
    #: the score-function estimator for the site
    reparameterised: ClassVar[bool] = True
    #: torch knows KL(q(z|x) ‖ N(0, I)) in closed form, so ``TraceMeanField_ELBO`` computes it
    #: exactly (without, Pyro silently falls back to a Monte Carlo estimate)
    analytic_kl: ClassVar[bool] = True
    #: q(z | x) = Π_j q(z_j | x): ``posterior`` is an ``Independent`` over per-dimension
    #: densities, so each dimension's KL(q(z_j|x) ‖ p(z_j)) exists (``elbo.free_bits`` needs it)
    factorised: ClassVar[bool] = False
    #: ``posterior(x).log_prob`` scores any z, not only the guide's own samples (``False`` for
    #: flows without a closed-form inverse: planar, sylvester); the VampPrior needs it
    scores_any_z: ClassVar[bool] = True
    #: constructor parameters a config never sets (they are the family's or built by it)
    not_options: ClassVar[tuple[str, ...]] = ("encoder", "latent_dim", "name")
    #: the context c of a conditional VAE's q(z | x, c): K classes or C numbers (one set), or
    #: neither (q(z | x)); :meth:`condition_on` sets them
    context_classes: int | None = None
    context_numbers: int | None = None

    def __init__(self, encoder: nn.Module, latent_dim: int, name: str = "guide") -> None:
        super().__init__()
        if latent_dim < 1:
            raise ValueError(f"latent_dim must be >= 1, got {latent_dim}")
        self.encoder = encoder
        self.latent_dim = int(latent_dim)
        self.name = name

    @classmethod
    def encoder_outputs(cls, latent_dim: int, **options: Any) -> int:
        """How many numbers the encoder must output per example."""
        return 2 * latent_dim

    @classmethod
    def options(cls) -> dict[str, Any]:
        """The guide's options with their defaults: its constructor's keyword parameters but
        ``not_options``. A config passes each ``guide`` key of the same name."""
        params = inspect.signature(cls.__init__).parameters
        return {
            k: p.default
            for k, p in params.items()
            if k != "self" and k not in cls.not_options and p.kind is p.POSITIONAL_OR_KEYWORD
        }

    @classmethod
    def problem(cls, latent_dim: int, **options: Any) -> str | None:
        """Why this guide cannot take ``latent_dim`` and ``options`` (a config's refusal, in
        the config's keys), or ``None``."""
        return None

    @classmethod
    def num_parameters(cls, latent_dim: int, **options: Any) -> int:
        """About how many parameters the guide holds besides its encoder (for the memory
        check before anything is allocated)."""
        return 0

    def condition_on(self, num_classes: int | None = None, context_dim: int | None = None) -> None:
        """Make this q(z | x) the q(z | x, c) of a conditional VAE: the encoder is given c
        (one-hot of K = ``num_classes`` classes, or ``context_dim`` numbers) beside x, so it
        must take ``D + K`` (or ``D + C``) inputs, or take ``forward(x, c)`` itself."""
        context_size(num_classes, context_dim)  # refuses both
        self.context_classes, self.context_numbers = num_classes, context_dim

    @property
    def conditional(self) -> bool:
        """Whether the guide is q(z | x, c), taking the context ``y`` beside x."""
        return self.context_classes is not None or self.context_numbers is not None

    def features(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """The encoder's output for x: encoder(x), or for a conditional guide
        encoder([flatten(x), c]) with c = :func:`~pyrogen.models.context.context_vector` (y)
        (``encoder(x, c)`` for an encoder that ``takes_context``)."""
        if not self.conditional:
            if y is not None:
                raise ValueError("this guide is q(z | x), not conditional: it takes no labels y")
            return self.encoder(x)
        if y is None:
            raise ValueError("a conditional VAE's guide q(z | x, c) needs the context y of x")
        c = context_vector(y, self.context_classes, self.context_numbers, x.dtype)
        if getattr(self.encoder, "takes_context", False):
            return self.encoder(x, c)
        return self.encoder(torch.cat([x.reshape(x.shape[0], -1), c], dim=-1))

    def posterior(
        self, x: torch.Tensor, y: torch.Tensor | None = None
    ) -> dist.Distribution:  # pragma: no cover - abstract
        raise NotImplementedError

    def site_infer(self, x: torch.Tensor) -> dict[str, Any]:
        return {}

    def forward(
        self, x: torch.Tensor, y: torch.Tensor | None = None, num_samples: int | None = None
    ) -> torch.Tensor:
        """The Pyro guide: z ~ q_φ(z | x) (conditional: q_φ(z | x, c), c from the labels
        ``y``) for every x in the batch."""
        declare_params(self, self.name)
        with pyro.plate("data", x.shape[0]):
            q = self.posterior(x) if y is None else self.posterior(x, y)
            return pyro.sample("z", q, infer=self.site_infer(x))


@GUIDES.register("diagonal_normal", "amortised mean-field Gaussian")
class DiagonalNormalGuide(AmortisedGuide):
    """q_φ(z | x) = N(μ(x), diag σ²(x)), σ = softplus(·) + 1e-4; the encoder outputs
    (μ, raw σ): 2 × latent_dim numbers."""

    factorised = True

    def loc_scale(
        self, x: torch.Tensor, y: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        loc, raw = self.features(x, y).chunk(2, dim=-1)
        return loc, F.softplus(raw) + MIN_SCALE

    def posterior(self, x: torch.Tensor, y: torch.Tensor | None = None) -> dist.Distribution:
        loc, scale = self.loc_scale(x, y)
        return dist.Normal(loc, scale).to_event(1)


@GUIDES.register("low_rank_normal", "Gaussian with low-rank + diagonal covariance")
class LowRankNormalGuide(AmortisedGuide):
    """q_φ(z | x) = N(μ(x), F(x) F(x)ᵀ + diag d(x)) with F of shape latent_dim × ``rank``; the
    encoder outputs latent_dim × (2 + rank) numbers."""

    def __init__(self, encoder: nn.Module, latent_dim: int, rank: int = 2, name: str = "guide"):
        super().__init__(encoder, latent_dim, name)
        if rank < 1:
            raise ValueError(f"rank must be >= 1, got {rank}")
        self.rank = int(rank)

    @classmethod
    def encoder_outputs(cls, latent_dim: int, rank: int = 2, **options: Any) -> int:
        return latent_dim * (2 + rank)

    def posterior(self, x: torch.Tensor, y: torch.Tensor | None = None) -> dist.Distribution:
        h = self.features(x, y)
        d = self.latent_dim
        loc, raw_diag = h[..., :d], h[..., d : 2 * d]
        factor = h[..., 2 * d :].reshape(*h.shape[:-1], d, self.rank) / math.sqrt(self.rank)
        return dist.LowRankMultivariateNormal(loc, factor, F.softplus(raw_diag) + MIN_SCALE)


@GUIDES.register("full_normal", "Gaussian with full covariance")
class FullNormalGuide(AmortisedGuide):
    """q_φ(z | x) = N(μ(x), L(x) L(x)ᵀ), L lower triangular with a positive diagonal; the
    encoder outputs 2 d + d (d − 1) / 2 numbers for d = latent_dim."""

    def __init__(self, encoder: nn.Module, latent_dim: int, name: str = "guide") -> None:
        super().__init__(encoder, latent_dim, name)
        d = self.latent_dim
        self.register_buffer("tril_rows", torch.tril_indices(d, d, offset=-1)[0])
        self.register_buffer("tril_cols", torch.tril_indices(d, d, offset=-1)[1])

    @classmethod
    def encoder_outputs(cls, latent_dim: int, **options: Any) -> int:
        return 2 * latent_dim + latent_dim * (latent_dim - 1) // 2

    def posterior(self, x: torch.Tensor, y: torch.Tensor | None = None) -> dist.Distribution:
        h = self.features(x, y)
        d = self.latent_dim
        loc, raw_diag, off = h[..., :d], h[..., d : 2 * d], h[..., 2 * d :]
        tril = torch.diag_embed(F.softplus(raw_diag) + MIN_SCALE)
        lower = torch.zeros_like(tril)
        lower[..., self.tril_rows, self.tril_cols] = off
        return dist.MultivariateNormal(loc, scale_tril=tril + lower)


@GUIDES.register("iaf", "diagonal Gaussian + inverse autoregressive flow steps")
class IAFGuide(AmortisedGuide):
    """z₀ ~ N(μ(x), diag σ²(x)) followed by ``num_flows`` conditional inverse autoregressive
    steps (Pyro's ``ConditionalAffineAutoregressive``) given a context h(x); the encoder outputs
    2 × latent_dim + ``context_dim`` numbers (default context_dim = max(2 latent_dim, 16)).

    Samples are cheap (one pass per step) and the log-density of the guide's own samples is
    exact through Pyro's transform cache; it has no analytic KL, so ``mean_field`` refuses it.
    """

    analytic_kl = False
    not_options = ("encoder", "latent_dim", "name", "context_dim", "hidden_sizes")

    def __init__(
        self,
        encoder: nn.Module,
        latent_dim: int,
        num_flows: int = 2,
        context_dim: int | None = None,
        hidden_sizes: list[int] | None = None,
        name: str = "guide",
    ) -> None:
        super().__init__(encoder, latent_dim, name)
        d = self.latent_dim
        if d < 2:
            raise ValueError(
                "the iaf guide needs latent_dim >= 2 (an autoregressive step on "
                "one variable is an affine map)"
            )
        self.context_dim = self.default_context_dim(d) if context_dim is None else context_dim
        hidden = hidden_sizes or [max(4 * d, 32)] * 2
        self.flows = nn.ModuleList(
            conditional_affine_autoregressive(d, self.context_dim, hidden_dims=hidden)
            for _ in range(num_flows)
        )

    @staticmethod
    def default_context_dim(latent_dim: int) -> int:
        return max(2 * latent_dim, 16)

    @classmethod
    def problem(cls, latent_dim: int, **options: Any) -> str | None:
        if latent_dim < 2:
            return (
                f"guide.name=iaf needs model.latent_dim >= 2 (got {latent_dim}): an "
                "autoregressive step on one variable is an affine map (use diagonal_normal)"
            )
        return None

    @classmethod
    def num_parameters(cls, latent_dim: int, num_flows: int = 2, **options: Any) -> int:
        """The flow steps' MADE networks: from z and the context to (μ, σ) of z."""
        z = latent_dim
        widths = [z + cls.default_context_dim(z), *[max(4 * z, 32)] * 2, 2 * z]
        return num_flows * sum(a * b + b for a, b in zip(widths[:-1], widths[1:], strict=True))

    @classmethod
    def encoder_outputs(
        cls, latent_dim: int, context_dim: int | None = None, **options: Any
    ) -> int:
        c = cls.default_context_dim(latent_dim) if context_dim is None else context_dim
        return 2 * latent_dim + c

    def posterior(self, x: torch.Tensor, y: torch.Tensor | None = None) -> dist.Distribution:
        h = self.features(x, y)
        d = self.latent_dim
        loc, raw, context = h[..., :d], h[..., d : 2 * d], h[..., 2 * d :]
        base = dist.Normal(loc, F.softplus(raw) + MIN_SCALE).to_event(1)
        return dist.TransformedDistribution(base, [f.condition(context) for f in self.flows])


@GUIDES.register("score_function", "non-reparameterised diagonal Gaussian")
class ScoreFunctionGuide(DiagonalNormalGuide):
    """The diagonal Gaussian guide made non-reparameterisable: gradients by the
    score-function (REINFORCE) estimator ∇_φ ELBO = E_q[(log p(x,z) − log q(z|x) − b) ∇_φ log
    q(z|x)] + E_q[∇_φ(log p − log q)], with baseline b:

    * ``baseline="none"``;
    * ``"decaying_average"``: b = running mean of the downstream cost with decay
      ``baseline_beta`` (Pyro keeps it as a param-store entry; pyrogen's learner runs each step
      in a param store of its own, so two models never share it);
    * ``"neural"``: b = ``baseline_net(x)``, a network of x fitted by Pyro to the downstream
      cost (required for this baseline; e.g. an MLP from the flattened x to 1 output).

    Baselines are Pyro's own (``infer={"baseline": ...}``), used by ``TraceGraph_ELBO``.
    """

    reparameterised = False
    not_options = ("encoder", "latent_dim", "name", "baseline_net")

    def __init__(
        self,
        encoder: nn.Module,
        latent_dim: int,
        baseline: str = "none",
        baseline_beta: float = 0.9,
        baseline_net: nn.Module | None = None,
        name: str = "guide",
    ) -> None:
        super().__init__(encoder, latent_dim, name)
        if baseline not in ("none", "decaying_average", "neural"):
            raise ValueError(f"baseline must be none, decaying_average or neural, not {baseline!r}")
        if (baseline == "neural") != (baseline_net is not None):
            raise ValueError("baseline='neural' needs a baseline_net (and only it uses one)")
        self.baseline = baseline
        self.baseline_beta = float(baseline_beta)
        self.baseline_net = baseline_net

    def posterior(self, x: torch.Tensor, y: torch.Tensor | None = None) -> dist.Distribution:
        loc, scale = self.loc_scale(x, y)
        return NonReparameterizedNormal(loc, scale).to_event(1)

    def site_infer(self, x: torch.Tensor) -> dict[str, Any]:
        if self.baseline == "decaying_average":
            return {
                "baseline": {"use_decaying_avg_baseline": True, "baseline_beta": self.baseline_beta}
            }
        if self.baseline == "neural":
            baseline = BroadcastBaseline(self.baseline_net, plate_batch_shape(x.shape[0]))
            return {"baseline": {"nn_baseline": baseline, "nn_baseline_input": x}}
        return {}


class BroadcastBaseline:
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

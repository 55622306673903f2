"""Learned priors p_λ(z) for the VAE (``model.prior``), each an exact mixture density::

    standard   p(z) = N(z; 0, I)                                     (the VAE's own buffers)
    vamp       p(z) = (1/K) Σ_k q_φ(z | u_k)                         (Tomczak & Welling, 2018)
    mog        p(z) = Σ_k π_k N(z; μ_k, diag σ_k²),  π = softmax(a)  (a learned Gaussian mixture)
    conditional p(z | c) = N(z; μ(c), diag σ²(c))                     (the CVAE's, Sohn et al. 2015)

The VampPrior's K pseudo-inputs u_k live in the data's space and go through the VAE's own
encoder (the guide's ``posterior``), so prior and posterior share φ. Both learned priors are a
:class:`Mixture` (Pyro's ``MixtureSameFamily``) whose ``log_prob`` is the exact

    log p(z) = logsumexp_k (log π_k + log p_k(z))

so every estimator that scores the model's ``z`` site (``Trace_ELBO`` and friends) and the
importance-sampled log p(x) use the mixture density with no loss code of their own; ``sample``
picks a component k ~ π, then draws from p_k. A mixture has no closed-form KL(q ‖ p): the
``mean_field`` estimators refuse these priors.

A prior module's ``forward(guide)`` returns p(z) (batch shape ``()``, event shape
``(latent_dim,)``); the MoG ignores the guide.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import pyro.distributions as dist
import torch
from torch import nn

from pyrogen.nets import MLP

#: ``model.prior`` values: the standard normal and the learned priors below
PRIORS = ("standard", "vamp", "mog", "mixture", "conditional")
#: the smallest component scale of the MoG prior
MIN_SCALE = 1e-4


class Mixture(dist.MixtureSameFamily):
    """Pyro's ``MixtureSameFamily``, log p(z) = logsumexp_k (log π_k + log p_k(z)), with each z
    expanded over the K components before the components score it (instead of broadcast
    from a size-1 dimension): a flow posterior (the ``iaf`` guide) conditioned on K contexts
    scores only inputs whose batch already holds the K."""

    def _pad(self, x: torch.Tensor) -> torch.Tensor:
        x = x.unsqueeze(-1 - self._event_ndims)
        shape = list(x.shape)
        shape[-1 - self._event_ndims] = self._num_component
        return x.expand(shape)

    def expand(
        self, batch_shape: Sequence[int], _instance: Mixture | None = None
    ) -> dist.Distribution:
        """The mixture over ``batch_shape``: for a mixture of K diagonal Gaussians, lazily
        (Pyro's ``ExpandedDistribution``, the K components kept unexpanded), so that under
        ``pyro.plate`` (training, the traced IS path) ``log_prob`` still scores z by matrix
        products; any other mixture expands its components as ``MixtureSameFamily`` does."""
        if _instance is None and self._diagonal():
            return dist.ExpandedDistribution(self, batch_shape)
        new = self._get_checked_instance(Mixture, _instance)
        return super().expand(batch_shape, _instance=new)

    def _diagonal(self) -> bool:
        """Whether this is an unexpanded mixture of K diagonal Gaussians (batch shape ``()``):
        the VampPrior's and the mixture-of-Gaussians prior's."""
        comp = self.component_distribution
        base = getattr(comp, "base_dist", None)
        return (
            isinstance(comp, dist.Independent)
            and isinstance(base, dist.Normal)
            and comp.reinterpreted_batch_ndims == 1
            and base.loc.dim() == 2
            and base.scale.shape == base.loc.shape
            and self.mixture_distribution.logits.dim() == 1
        )

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        """log p(z); for an unexpanded mixture of K diagonal Gaussians (the VampPrior's and
        the mixture-of-Gaussians prior's) scored at z of any batch shape, by a matrix
        product instead of a (…, K, D) tensor: with a = 1/σ², log N_k(z) =
        −½ (z² · a_k − 2 z · (μ a)_k + μ_k² · a_k) − Σ_d log σ_kd − (D/2) log 2π, all K of
        them (with log π_k) the product of [z², z, 1] with a (2D + 1, K) matrix."""
        base = getattr(self.component_distribution, "base_dist", None)
        if not self._diagonal() or value.dim() < 1 or value.shape[-1] != base.loc.shape[-1]:
            return super().log_prob(value)
        if self._validate_args:
            self._validate_sample(value)
        loc, scale = base.loc, base.scale
        a = scale.pow(-2)  # (K, D)
        d = loc.shape[-1]
        const = (loc.pow(2) * a).sum(-1) + 2 * scale.log().sum(-1) + d * math.log(2 * math.pi)
        log_mix = torch.log_softmax(self.mixture_distribution.logits, -1)
        # log π_k + log N_k(z) = [z², z, 1] · [−a_k / 2, (μ a)_k, log π_k − const_k / 2]: one
        # matrix product, then a logsumexp in a few passes over the (M, K) values
        weights = torch.cat([-0.5 * a, loc * a, (log_mix - 0.5 * const).unsqueeze(-1)], -1)
        flat = value.reshape(-1, d)
        features = torch.cat([flat.pow(2), flat, flat.new_ones(flat.shape[0], 1)], -1)
        log_joint = features @ weights.T  # (M, K)
        top = log_joint.detach().amax(-1, keepdim=True)  # log Σ e^t is the same for any shift
        # below the floor e^t is subnormal or 0, and exp's slow path (2-3x the time on CPUs);
        # the largest term is e^0 = 1, so K terms of e^floor (< 1e-37 in float32) change
        # nothing at the float's precision
        floor = math.log(torch.finfo(log_joint.dtype).tiny) + 1.0
        shifted = log_joint.sub_(top).clamp_min_(floor)
        total = shifted.exp_().sum(-1).log() + top.squeeze(-1)
        return total.reshape(value.shape[:-1])


class VampPrior(nn.Module):
    """p(z) = (1/K) Σ_k q_φ(z | u_k), the "variational mixture of posteriors" prior, with K
    learned pseudo-inputs u_k of the data's shape.

    Args:
        num_pseudo_inputs: K (500 in Tomczak & Welling's experiments).
        event_shape: the shape of one example (the encoder's input).
        init: the pseudo-inputs' initial values, shape ``(K, *event_shape)``; default
            N(0.5, 0.01²) per coordinate (the middle of [0, 1], for image data).
    """

    def __init__(
        self,
        num_pseudo_inputs: int,
        event_shape: int | Sequence[int],
        init: torch.Tensor | None = None,
    ) -> None:
        super().__init__()
        if num_pseudo_inputs < 1:
            raise ValueError(f"num_pseudo_inputs must be >= 1, got {num_pseudo_inputs}")
        shape = (event_shape,) if isinstance(event_shape, int) else tuple(event_shape)
        k = int(num_pseudo_inputs)
        if init is None:
            init = 0.5 + 0.01 * torch.randn(k, *shape)
        if tuple(init.shape) != (k, *shape):
            raise ValueError(f"init has shape {tuple(init.shape)}, the pseudo-inputs {(k, *shape)}")
        self.num_pseudo_inputs = k
        self.pseudo_inputs = nn.Parameter(init.detach().clone().float())

    def forward(self, guide: nn.Module) -> Mixture:
        """p(z): the guide's posteriors at the pseudo-inputs, mixed with equal weights."""
        components = guide.posterior(self.pseudo_inputs)  # batch (K,), event (latent_dim,)
        logits = self.pseudo_inputs.new_zeros(self.num_pseudo_inputs)
        return Mixture(dist.Categorical(logits=logits), components)


class MixtureOfGaussiansPrior(nn.Module):
    """p(z) = Σ_k π_k N(z; μ_k, diag σ_k²) with learned means μ_k, scales σ_k = exp(s_k) + 1e-4
    and weights π = softmax(a).

    Args:
        latent_dim: dimension of z.
        num_components: K.
        enumerated: the GMVAE's form: the model samples the component c ~ Cat(π) as a site
            of its own, marked for enumeration (``TraceEnum_ELBO`` sums it out; its
            ``infer_discrete`` reads it), then z ~ p(z | c); otherwise z is scored under the
            mixture's log-density log Σ_k π_k N(z; μ_k, σ_k²) directly (same p(z)).

    The means start as draws from N(0, I) (spread over the standard prior's mass), the scales
    at about 1 and the weights equal.
    """

    def __init__(self, latent_dim: int, num_components: int, enumerated: bool = False) -> None:
        super().__init__()
        if latent_dim < 1 or num_components < 1:
            raise ValueError(
                f"latent_dim and num_components must be >= 1, got {latent_dim}, {num_components}"
            )
        self.num_components = int(num_components)
        self.means = nn.Parameter(torch.randn(num_components, latent_dim))
        self.log_scales = nn.Parameter(torch.zeros(num_components, latent_dim))
        self.logits = nn.Parameter(torch.zeros(num_components))
        self.enumerated = bool(enumerated)

    def component_prior(self) -> dist.Categorical:
        """p(c) = Cat(softmax(logits))."""
        return dist.Categorical(logits=self.logits)

    def component(self, c: torch.Tensor | None = None) -> dist.Distribution:
        """p(z | c) = N(μ_c, diag σ_c²); ``c=None``: all K components, batch shape ``(K,)``."""
        loc, scale = self.means, self.log_scales.exp() + MIN_SCALE
        if c is not None:
            loc, scale = loc[c], scale[c]
        return dist.Normal(loc, scale).to_event(1)

    def component_log_posterior(self, z: torch.Tensor) -> torch.Tensor:
        """log p(c | z) = log π_c + log N(z; μ_c, σ_c²) − log Σ_k π_k N(z; μ_k, σ_k²), shape
        ``(*z.shape[:-1], K)``."""
        joint = self.component_prior().logits + self.component().log_prob(z.unsqueeze(-2))
        return joint - joint.logsumexp(-1, keepdim=True)

    def forward(self, guide: nn.Module | None = None) -> Mixture:
        """p(z) (the guide is not used)."""
        return Mixture(self.component_prior(), self.component())


class ConditionalNormalPrior(nn.Module):
    """The conditional prior of a CVAE (Sohn et al. 2015, the "prior network")::

        p_λ(z | c) = N(z; μ(c), diag σ²(c)),   (μ, raw σ) = MLP(c),  σ = softplus(raw σ) + 1e-4

    ``forward(c)`` takes the context vector c of shape ``(N, context_size)``
    (:func:`~pyrogen.models.context.context_vector`) and returns p(z | c) with batch shape
    ``(N,)`` and event shape ``(latent_dim,)``: a diagonal Gaussian, so the closed-form KL
    (``mean_field``) and free bits apply. The output layer starts at zero, so the prior starts
    as N(0, softplus(0)² I) ≈ N(0, 0.48 I) for every c and learns how c moves it.

    Example::

        >>> prior = ConditionalNormalPrior(3, latent_dim=2)
        >>> prior(torch.eye(3)).batch_shape, prior(torch.eye(3)).event_shape
        (torch.Size([3]), torch.Size([2]))
    """

    def __init__(
        self,
        context_size: int,
        latent_dim: int,
        hidden_sizes: Sequence[int] = (64,),
        activation_name: str = "relu",
    ) -> None:
        super().__init__()
        if context_size < 1 or latent_dim < 1:
            raise ValueError(
                f"context_size and latent_dim must be >= 1, got {context_size}, {latent_dim}"
            )
        self.context_size, self.latent_dim = int(context_size), int(latent_dim)
        self.net = MLP(context_size, list(hidden_sizes), 2 * latent_dim, activation_name)
        nn.init.zeros_(self.net[-1].weight)
        nn.init.zeros_(self.net[-1].bias)

    @staticmethod
    def num_parameters(
        context_size: int, latent_dim: int, hidden_sizes: Sequence[int] = (64,)
    ) -> int:
        """The weights and biases of the MLP c -> (μ, raw σ)."""
        widths = [context_size, *hidden_sizes, 2 * latent_dim]
        return sum(a * b + b for a, b in zip(widths[:-1], widths[1:], strict=True))

    def forward(self, c: torch.Tensor) -> dist.Distribution:
        loc, raw = self.net(c).chunk(2, dim=-1)
        return dist.Normal(loc, torch.nn.functional.softplus(raw) + MIN_SCALE).to_event(1)


def num_prior_parameters(
    prior: str, latent_dim: int, num_dims: int, num_pseudo_inputs: int, num_components: int
) -> int:
    """How many numbers the prior learns: K·D pseudo-inputs (vamp), K(2·latent_dim + 1) (mog)."""
    if prior == "vamp":
        return num_pseudo_inputs * num_dims
    if prior in ("mog", "mixture"):
        return num_components * (2 * latent_dim + 1)
    return 0


__all__ = [
    "PRIORS",
    "ConditionalNormalPrior",
    "Mixture",
    "MixtureOfGaussiansPrior",
    "VampPrior",
    "num_prior_parameters",
]

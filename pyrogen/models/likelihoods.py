"""Observation models p_θ(x | z) of a VAE, from the decoder's outputs.

A likelihood turns the decoder's output h (``outputs_per_dim`` numbers per data dimension) into
a distribution over one example of shape ``event_shape``:

=======================  ==================================================================
likelihood               p_θ(x | z)
=======================  ==================================================================
``BernoulliLikelihood``  x_i ~ Bernoulli(σ(h_i)) (binary data; h are logits)
``GaussianLikelihood``   x_i ~ N(μ_i, σ_i²) with μ = h₀ (or σ(h₀) for data in [0, 1]) and
                         σ_i = softplus(h₁) + min_scale (``scale="decoder"``, 2 outputs per
                         dimension), one learned σ_i per dimension (``"learned"``), or a fixed
                         σ (``"fixed"``)
=======================  ==================================================================

Likelihoods are ``nn.Module``s: a learned σ is a parameter of the VAE that owns it.

Example::

    >>> import torch
    >>> lik = GaussianLikelihood(4, scale="learned")
    >>> lik.outputs_per_dim, lik(torch.zeros(3, 4)).event_shape
    (1, torch.Size([4]))
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import pyro.distributions as dist
import torch
import torch.nn.functional as F
from torch import nn


def as_shape(shape: int | Sequence[int]) -> tuple[int, ...]:
    """``5`` -> ``(5,)``; a sequence -> a tuple of ints."""
    return (int(shape),) if isinstance(shape, int) else tuple(int(s) for s in shape)


class Likelihood(nn.Module):
    """p(x | z) from decoder outputs ``h`` of shape ``(*batch, outputs_per_dim * D)``."""

    outputs_per_dim: int = 1
    #: x is binary (the data must be 0/1)
    binary: bool = False

    def __init__(self, event_shape: int | Sequence[int]) -> None:
        super().__init__()
        self.event_shape = as_shape(event_shape)
        self.num_dims = math.prod(self.event_shape)

    def _output(self, h: torch.Tensor, k: int) -> torch.Tensor:
        """The ``k``-th output per dimension of h, shaped ``(*batch, *event_shape)``."""
        p = h.reshape(*h.shape[:-1], self.outputs_per_dim, *self.event_shape)
        return p.select(-1 - len(self.event_shape), k)

    def mean(self, h: torch.Tensor) -> torch.Tensor:
        """E[x | z]."""
        return self(h).mean

    def forward(self, h: torch.Tensor) -> dist.Distribution:  # pragma: no cover - abstract
        raise NotImplementedError


class BernoulliLikelihood(Likelihood):
    """x_i ~ Bernoulli(σ(h_i)): the decoder outputs one logit per dimension."""

    binary = True

    def forward(self, h: torch.Tensor) -> dist.Distribution:
        logits = self._output(h, 0)
        return dist.Bernoulli(logits=logits).to_event(len(self.event_shape))

    def extra_repr(self) -> str:
        return f"event_shape={self.event_shape}"


class GaussianLikelihood(Likelihood):
    """x_i ~ N(μ_i(z), σ_i²(z)): the seed's formulation of a real-valued VAE decoder.

    ``mean="sigmoid"`` maps μ into (0, 1) (images in [0, 1]); ``"identity"`` leaves it free.
    ``scale``: ``"decoder"`` (σ_i = softplus(h₁ᵢ) + ``min_scale``, the decoder outputs 2 numbers
    per dimension), ``"learned"`` (σ_i = softplus(s_i) + ``min_scale``, one parameter per
    dimension) or ``"fixed"`` (σ_i = ``fixed_scale``).
    """

    def __init__(
        self,
        event_shape: int | Sequence[int],
        scale: Literal["decoder", "learned", "fixed"] = "decoder",
        mean: Literal["identity", "sigmoid"] = "identity",
        fixed_scale: float = 0.1,
        min_scale: float = 1e-3,
    ) -> None:
        super().__init__(event_shape)
        if scale not in ("decoder", "learned", "fixed"):
            raise ValueError(f"scale must be decoder, learned or fixed, got {scale!r}")
        if mean not in ("identity", "sigmoid"):
            raise ValueError(f"mean must be identity or sigmoid, got {mean!r}")
        if not fixed_scale > 0 or not min_scale >= 0:
            raise ValueError("fixed_scale must be > 0 and min_scale >= 0")
        self.scale_mode, self.mean_mode = scale, mean
        self.outputs_per_dim = 2 if scale == "decoder" else 1
        self.min_scale = float(min_scale)
        if scale == "learned":
            self.raw_scale = nn.Parameter(torch.zeros(self.event_shape))
        if scale == "fixed":
            self.register_buffer("fixed_scale", torch.full(self.event_shape, float(fixed_scale)))

    def forward(self, h: torch.Tensor) -> dist.Distribution:
        loc = self._output(h, 0)
        if self.mean_mode == "sigmoid":
            loc = torch.sigmoid(loc)
        if self.scale_mode == "decoder":
            scale = F.softplus(self._output(h, 1)) + self.min_scale
        elif self.scale_mode == "learned":
            scale = (F.softplus(self.raw_scale) + self.min_scale).expand_as(loc)
        else:
            scale = self.fixed_scale.expand_as(loc)
        return dist.Normal(loc, scale).to_event(len(self.event_shape))

    def extra_repr(self) -> str:
        return f"event_shape={self.event_shape}, scale={self.scale_mode}, mean={self.mean_mode}"


LIKELIHOODS = {"bernoulli": BernoulliLikelihood, "gaussian": GaussianLikelihood}


def make_likelihood(name: str, event_shape: int | Sequence[int], **options) -> Likelihood:
    """``"bernoulli"`` or ``"gaussian"`` (with :class:`GaussianLikelihood`'s options)."""
    if name not in LIKELIHOODS:
        raise ValueError(f"unknown likelihood {name!r} (allowed: {', '.join(LIKELIHOODS)})")
    return LIKELIHOODS[name](event_shape, **options)


__all__ = ["BernoulliLikelihood", "GaussianLikelihood", "Likelihood", "make_likelihood"]

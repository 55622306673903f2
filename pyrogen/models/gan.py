"""The GAN's generative process (Goodfellow et al., 2014) as a Pyro model::

    z ~ p_z            (N(0, I), or uniform on [−1, 1]^latent_dim)
    x = G(z; θ_g)      (a deterministic site: a GAN has no likelihood)

with a discriminator D(x) = σ(d(x)) = P(label 1 = data | x), returned as the logit d(x).

With ``num_classes`` K the GAN is class-conditional (Mirza & Osindero 2014): x = G([z, e_y])
with e_y the one-hot label, and the discriminator is given the label too, d(x, y) — the
configs use the projection discriminator of Miyato & Koyama (2018),
d(x, y) = ψ(φ(x)) + embed(y)ᵀ φ(x) (:class:`pyrogen.nets.ProjectionDiscriminator`). With
``context_dim`` C it is conditional on a continuous context c ∈ ℝ^C instead: x = G([z, c]),
d(x, c) = ψ(φ(x)) + (W c)ᵀ φ(x) (:mod:`pyrogen.models.context`).

A GAN is built from plain arguments: a generator and a discriminator (any ``nn.Module``s),
the latent dimension, the shape of one example and the prior. The generator maps z of shape
``(N, latent_dim)`` to N examples (any shape with N·D numbers, D = prod(event_shape)); its
last layer decides the range of x (a sigmoid for data in [0, 1]). The discriminator maps a
batch ``(N, *event_shape)`` to N logits (shape ``(N,)`` or ``(N, 1)``).
:mod:`pyrogen.nets` has the MLP and DCGAN-style blocks the configs use.

Example::

    >>> from torch import nn
    >>> G = nn.Sequential(nn.Linear(2, 16), nn.ReLU(), nn.Linear(16, 2))
    >>> D = nn.Sequential(nn.Linear(2, 16), nn.LeakyReLU(0.2), nn.Linear(16, 1))
    >>> gan = GAN(G, D, latent_dim=2, event_shape=(2,))
    >>> gan.sample(5).shape
    torch.Size([5, 2])
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import pyro
import pyro.distributions as dist
import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from pyrogen.models.context import check_context, context_size, context_vector
from pyrogen.models.likelihoods import as_shape
from pyrogen.models.process import GenerativeProcess


class GAN(GenerativeProcess):
    """The generator's process as a Pyro model (``forward``, alias ``model``) plus the
    discriminator it is trained against.

    The prior's tensors are buffers (``.to(device)`` moves them). With
    :meth:`enable_ema`, ``ema_generator`` holds an exponential moving average of G's weights
    and the process (``forward``, ``sample``) uses it: the averaged weights are the ones a GAN
    is evaluated with; training updates ``generator``.

    Example::

        >>> from pyro import poutine
        >>> G, D = nn.Linear(2, 2), nn.Linear(2, 1)
        >>> gan = GAN(G, D, latent_dim=2, event_shape=(2,))
        >>> trace = poutine.trace(gan.model).get_trace(num_samples=3)
        >>> trace.nodes["z"]["value"].shape, trace.nodes["x"]["value"].shape
        (torch.Size([3, 2]), torch.Size([3, 2]))
    """

    not_param_sites = ("discriminator", "ema_generator")

    def __init__(
        self,
        generator: nn.Module,
        discriminator: nn.Module,
        latent_dim: int,
        event_shape: int | Sequence[int],
        prior: Literal["normal", "uniform"] = "normal",
        num_classes: int | None = None,
        context_dim: int | None = None,
    ) -> None:
        super().__init__()
        if num_classes is not None and num_classes < 2:
            raise ValueError(f"num_classes must be >= 2 (or None), got {num_classes}")
        if context_dim is not None and context_dim < 1:
            raise ValueError(f"context_dim must be >= 1 (or None), got {context_dim}")
        context_size(num_classes, context_dim)  # refuses both
        self.num_classes = num_classes
        self.context_dim = context_dim
        if latent_dim < 1:
            raise ValueError(f"latent_dim must be >= 1, got {latent_dim}")
        if prior not in ("normal", "uniform"):
            raise ValueError(f"prior must be normal or uniform, got {prior!r}")
        self.event_shape = as_shape(event_shape)
        self.num_dims = math.prod(self.event_shape)
        self.latent_dim = int(latent_dim)
        self.prior_name = prior
        self.generator = generator
        self.discriminator = discriminator
        self.ema_generator: AveragedModel | None = None
        low = 0.0 if prior == "normal" else -1.0  # normal: (loc, scale); uniform: (low, high)
        self.register_buffer("prior_a", torch.full((self.latent_dim,), low))
        self.register_buffer("prior_b", torch.ones(self.latent_dim))

    @property
    def conditional(self) -> bool:
        """Whether the GAN is p(x | c): G and D are given the class label or the context c."""
        return self.num_classes is not None or self.context_dim is not None

    def labels(self, y: torch.Tensor | None, n: int) -> torch.Tensor | None:
        """The context of n examples of a conditional GAN: class labels (``y``, or 0..K−1
        cycled when not given) or a continuous context (required), checked as every family
        checks it (:func:`~pyrogen.models.context.check_context`: one or ``n`` of them);
        ``None`` for an unconditional GAN, which refuses labels."""
        if not self.conditional:
            if y is not None:
                raise ValueError("this GAN is not class-conditional: it takes no labels y")
            return None
        y = check_context(y, n, self.num_classes, self.context_dim, self.prior_a.device)
        return y if self.num_classes is not None else y.to(self.prior_a.dtype)

    def prior(self) -> dist.Distribution:
        """p_z, built from buffers so that it follows the module to its device."""
        if self.prior_name == "normal":
            return dist.Normal(self.prior_a, self.prior_b).to_event(1)
        return dist.Uniform(self.prior_a, self.prior_b).to_event(1)

    def enable_ema(self, decay: float) -> None:
        """Keep θ_ema ← β θ_ema + (1 − β) θ_g (β = ``decay``) in ``ema_generator`` (a
        :class:`torch.optim.swa_utils.AveragedModel`; its first update copies θ_g, its
        buffers follow G's); the learner calls ``update_ema`` after each G step."""
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"adversarial.ema_decay must be in [0, 1), got {decay}")
        if self.ema_generator is None:
            self.ema_generator = AveragedModel(
                self.generator, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=False
            ).requires_grad_(False)

    @torch.no_grad()
    def update_ema(self) -> None:
        """One EMA update from the current generator (no-op without :meth:`enable_ema`)."""
        if self.ema_generator is not None:
            self.ema_generator.update_parameters(self.generator)

    @property
    def sampling_generator(self) -> nn.Module:
        """The generator of the process: the EMA one when enabled, else ``generator``."""
        return self.ema_generator if self.ema_generator is not None else self.generator

    def process(self, x: torch.Tensor | None, y: torch.Tensor | None) -> torch.Tensor:
        """``z ~ p_z`` (sample site ``"z"``) and ``x = G(z)`` (``pyro.deterministic`` site
        ``"x"``; conditional: x = G(z, y), with the classes cycled when ``y`` is not given).
        Given ``x`` only its batch size is used: a GAN has no likelihood to condition on."""
        z = pyro.sample("z", self.prior())
        y = self.labels(y, z.shape[0]) if self.conditional else None
        out = self.generate(z, self.sampling_generator, y)
        return pyro.deterministic("x", out, event_dim=len(self.event_shape))

    def generate(
        self,
        z: torch.Tensor,
        generator: nn.Module | None = None,
        y: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """x = G(z) shaped ``(*z.shape[:-1], *event_shape)`` (``generator`` defaults to the
        trained one; the process itself uses :attr:`sampling_generator`); a conditional GAN
        gives G the concatenation [z, e_y] of z and the one-hot label."""
        g = self.generator if generator is None else generator
        batch = z.shape[:-1]
        z = z.reshape(-1, self.latent_dim)
        if self.conditional:
            y = self.labels(y, z.shape[0])
            c = context_vector(y, self.num_classes, self.context_dim, z.dtype)
            z = torch.cat([z, c], dim=-1)
        out = g(z)
        if out[0].numel() != self.num_dims:
            raise ValueError(
                f"the generator gives {out[0].numel()} numbers per example; event_shape "
                f"{self.event_shape} needs {self.num_dims}"
            )
        return out.reshape(*batch, *self.event_shape)

    def discriminate(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """The discriminator's logit d(x) (conditional: d(x, y)), shape ``(batch,)``;
        D(x) = sigmoid(d(x))."""
        x = x.reshape(x.shape[0], *self.event_shape)
        if self.conditional:
            if y is None:
                raise ValueError("a conditional GAN's discriminator needs the context y")
            logits = self.discriminator(x, y.long() if self.context_dim is None else y)
        else:
            logits = self.discriminator(x)
        return logits.reshape(x.shape[0])

    @torch.no_grad()
    def sample(self, n: int, y: torch.Tensor | None = None) -> torch.Tensor:
        """``n`` draws x = G(z), shape ``(n, *event_shape)`` (EMA weights when enabled); a
        conditional GAN draws them for the labels ``y`` (default: the classes cycled)."""
        y = self.labels(y, n)
        return self.generate(self.prior().sample((n,)), self.sampling_generator, y)

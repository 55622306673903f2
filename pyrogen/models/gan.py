"""The GAN's generative process (Goodfellow et al., 2014) as a Pyro model::

    z ~ p_z            (N(0, I), or uniform on [−1, 1]^latent_dim)
    x = G(z; θ_g)      (a deterministic site: a GAN has no likelihood)

with a discriminator D(x) = σ(d(x)) = P(label 1 = data | x), returned as the logit d(x).
Generators and discriminators are MLPs (the GAN paper's MNIST scale by config) or, for
images, DCGAN-style convolution stacks.
"""

from __future__ import annotations

import copy
import math

import pyro
import pyro.distributions as dist
import torch
from torch import nn

from pyrogen.config import GANModelConfig
from pyrogen.nets import MLP, ConvDecoder, ConvEncoder

OUTPUTS = {"sigmoid": torch.sigmoid, "tanh": torch.tanh, "identity": lambda h: h}


class Generator(nn.Module):
    """G: z -> x, ending in ``cfg.output`` (sigmoid for data in [0, 1])."""

    def __init__(self, cfg: GANModelConfig, num_dims: int, image_shape=None) -> None:
        super().__init__()
        self.output = cfg.output
        if cfg.architecture == "conv":
            if image_shape is None:
                raise ValueError("model.architecture=conv needs image data")
            self.net: nn.Module = nn.Sequential(
                ConvDecoder(cfg.latent_dim, image_shape, batch_norm=True), nn.Flatten()
            )
        else:
            self.net = MLP(cfg.latent_dim, cfg.hidden_sizes, num_dims, "relu")

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        batch = z.shape[:-1]
        h = self.net(z.reshape(-1, z.shape[-1]))
        return OUTPUTS[self.output](h).reshape(*batch, -1)


class Discriminator(nn.Module):
    """d: x -> logit of P(data | x); MLP with leaky ReLU (and dropout), or a DCGAN-style
    conv net; optional spectral normalisation of every layer."""

    def __init__(self, cfg: GANModelConfig, num_dims: int, image_shape=None) -> None:
        super().__init__()
        if cfg.architecture == "conv":
            self.net: nn.Module = ConvEncoder(image_shape, 1, spectral_norm=cfg.spectral_norm)
        else:
            self.net = MLP(
                num_dims,
                cfg.discriminator_hidden_sizes,
                1,
                "leaky_relu",
                dropout=cfg.discriminator_dropout,
                spectral_norm=cfg.spectral_norm,
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x.reshape(x.shape[0], -1)).squeeze(-1)


class GAN(nn.Module):
    """The generator's process as a Pyro model (``forward``, alias ``model``) plus the
    discriminator it is trained against.

    Example::

        >>> from pyrogen.config import GANModelConfig
        >>> gan = GAN(GANModelConfig(latent_dim=2, hidden_sizes=[16], output="identity"), (2,))
        >>> gan.sample(5).shape
        torch.Size([5, 2])
    """

    def __init__(
        self,
        cfg: GANModelConfig,
        event_shape: tuple[int, ...],
        image_shape: tuple[int, int, int] | None = None,
    ) -> None:
        super().__init__()
        self.cfg = cfg
        self.event_shape = tuple(event_shape)
        self.num_dims = math.prod(self.event_shape)
        self.latent_dim = cfg.latent_dim
        self.generator = Generator(cfg, self.num_dims, image_shape)
        self.discriminator = Discriminator(cfg, self.num_dims, image_shape)
        self.ema_generator: Generator | None = None
        if cfg.prior == "normal":
            self.register_buffer("prior_a", torch.zeros(cfg.latent_dim))
            self.register_buffer("prior_b", torch.ones(cfg.latent_dim))
        else:
            self.register_buffer("prior_a", -torch.ones(cfg.latent_dim))
            self.register_buffer("prior_b", torch.ones(cfg.latent_dim))

    def prior(self) -> dist.Distribution:
        """p_z, from buffers so it follows the module to its device."""
        if self.cfg.prior == "normal":
            return dist.Normal(self.prior_a, self.prior_b).to_event(1)
        return dist.Uniform(self.prior_a, self.prior_b).to_event(1)

    def enable_ema(self) -> None:
        """Keep an exponential moving average of the generator's weights (``ema_generator``)."""
        if self.ema_generator is None:
            self.ema_generator = copy.deepcopy(self.generator).requires_grad_(False)

    def forward(
        self,
        x: torch.Tensor | None = None,
        y: torch.Tensor | None = None,
        num_samples: int | None = None,
    ) -> torch.Tensor:
        """The generative process: z ~ p_z, x = G(z) as ``pyro.deterministic`` sites in
        ``pyro.plate("data")``. Given ``x``, only its batch size is used (no likelihood)."""
        if x is None and num_samples is None:
            raise ValueError("give a number of samples")
        n = num_samples if num_samples is not None else x.shape[0]
        with pyro.plate("data", n):
            z = pyro.sample("z", self.prior())
            out = self.generator(z).reshape(*z.shape[:-1], *self.event_shape)
            return pyro.deterministic("x", out, event_dim=len(self.event_shape))

    model = forward

    def discriminate(self, x: torch.Tensor) -> torch.Tensor:
        """The discriminator's logit d(x); D(x) = sigmoid(d(x))."""
        return self.discriminator(x)

    @torch.no_grad()
    def sample(self, n: int) -> torch.Tensor:
        """``n`` draws G(z) (with the averaged weights when the EMA is on)."""
        g = self.ema_generator if self.ema_generator is not None else self.generator
        z = self.prior().sample((n,))
        return g(z).reshape(n, *self.event_shape)

"""The GAN's generative process (Goodfellow et al., 2014) as a Pyro model::

    z ~ p_z            (N(0, I), or uniform on [−1, 1]^latent_dim)
    x = G(z; θ_g)      (a deterministic site: a GAN has no likelihood)

with a discriminator D(x) = σ(d(x)) = P(label 1 = data | x), returned as the logit d(x).

Networks, sizes from :class:`~pyrogen.config.GANModelConfig`:

* ``architecture: mlp``: G is ``latent_dim -> hidden_sizes -> D`` with ReLU, D is
  ``D -> discriminator_hidden_sizes -> 1`` with leaky ReLU and dropout. The GAN paper's MNIST
  scale is G 100-1200-1200-784, D 784-240-240-1 (``configs/gan_mnist.yaml``).
* ``architecture: conv`` (DCGAN-style, Radford et al. 2016): G is a linear layer to a
  ``hidden_sizes[0] x H/4 x W/4`` map and two stride-2 transposed convolutions
  (``hidden_sizes[0] -> hidden_sizes[1] -> C``, batch norm between); D is two stride-2
  convolutions with ``discriminator_hidden_sizes`` channels and a linear head.

``spectral_norm`` normalises every layer of D (Miyato et al. 2018); ``output`` is G's last
non-linearity: ``sigmoid`` for data in [0, 1], ``identity`` for 2-D toys.
"""

from __future__ import annotations

import math

import pyro
import pyro.distributions as dist
import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from pyrogen.config import GANModelConfig
from pyrogen.nets import MLP, ConvDecoder, ConvEncoder

OUTPUTS = {"sigmoid": torch.sigmoid, "tanh": torch.tanh, "identity": lambda h: h}


def _conv_sizes(sizes: list[int], key: str, image_shape) -> tuple[int, int]:
    """The channels of the two stride-2 stages of ``architecture: conv``, checked."""
    if image_shape is None:
        raise ValueError("model.architecture=conv needs image data")
    if len(sizes) != 2:
        raise ValueError(
            f"model.architecture=conv uses {key} as the channels of its two stride-2 stages; "
            f"give two sizes (e.g. [128, 64]), not {sizes}"
        )
    return int(sizes[0]), int(sizes[1])


class Generator(nn.Module):
    """G: z -> x as a flat ``(batch, D)`` tensor, ending in ``cfg.output``."""

    def __init__(
        self,
        cfg: GANModelConfig,
        num_dims: int,
        image_shape: tuple[int, int, int] | None = None,
    ) -> None:
        super().__init__()
        self.output = cfg.output
        if cfg.architecture == "conv":
            channels = _conv_sizes(cfg.hidden_sizes, "model.hidden_sizes", image_shape)
            body = ConvDecoder(cfg.latent_dim, image_shape, channels=channels, batch_norm=True)
            self.net: nn.Module = nn.Sequential(body, nn.Flatten())
        else:
            self.net = MLP(cfg.latent_dim, cfg.hidden_sizes, num_dims, "relu")

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        batch = z.shape[:-1]
        h = self.net(z.reshape(-1, z.shape[-1]))
        return OUTPUTS[self.output](h).reshape(*batch, -1)


class Discriminator(nn.Module):
    """d: x -> the logit of D(x) = P(data | x), shape ``(batch,)``."""

    def __init__(
        self,
        cfg: GANModelConfig,
        num_dims: int,
        image_shape: tuple[int, int, int] | None = None,
    ) -> None:
        super().__init__()
        if cfg.architecture == "conv":
            key = "model.discriminator_hidden_sizes"
            channels = _conv_sizes(cfg.discriminator_hidden_sizes, key, image_shape)
            self.net: nn.Module = ConvEncoder(
                image_shape, 1, channels=channels, spectral_norm=cfg.spectral_norm
            )
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

    The prior's tensors are buffers (``.to(device)`` moves them). With
    :meth:`enable_ema`, ``ema_generator`` holds an exponential moving average of G's weights
    and the process (``forward``, ``sample``) uses it: the averaged weights are the ones a GAN
    is evaluated with; training updates ``generator``.

    Example::

        >>> from pyro import poutine
        >>> from pyrogen.config import GANModelConfig
        >>> gan = GAN(GANModelConfig(latent_dim=2, hidden_sizes=[16], output="identity"), (2,))
        >>> gan.sample(5).shape
        torch.Size([5, 2])
        >>> trace = poutine.trace(gan.model).get_trace(num_samples=3)
        >>> trace.nodes["z"]["value"].shape, trace.nodes["x"]["value"].shape
        (torch.Size([3, 2]), torch.Size([3, 2]))
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
        self.ema_generator: AveragedModel | None = None
        low = 0.0 if cfg.prior == "normal" else -1.0  # normal: (loc, scale); uniform: (low, high)
        self.register_buffer("prior_a", torch.full((cfg.latent_dim,), low))
        self.register_buffer("prior_b", torch.ones(cfg.latent_dim))

    def prior(self) -> dist.Distribution:
        """p_z, built from buffers so that it follows the module to its device."""
        if self.cfg.prior == "normal":
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

    def forward(
        self,
        x: torch.Tensor | None = None,
        y: torch.Tensor | None = None,
        num_samples: int | None = None,
    ) -> torch.Tensor:
        """The generative process: ``z ~ p_z`` (sample site ``"z"``) and ``x = G(z)``
        (``pyro.deterministic`` site ``"x"``) in ``pyro.plate("data", n)``, ``n =
        num_samples`` or ``x.shape[0]``. Given ``x`` only its batch size is used: a GAN has no
        likelihood to condition on. ``y`` is accepted for a uniform signature and ignored."""
        if x is None and num_samples is None:
            raise ValueError("give x (for its batch size) or num_samples")
        n = num_samples if num_samples is not None else x.shape[0]
        with pyro.plate("data", n):
            z = pyro.sample("z", self.prior())
            out = self.sampling_generator(z).reshape(*z.shape[:-1], *self.event_shape)
            return pyro.deterministic("x", out, event_dim=len(self.event_shape))

    model = forward

    def discriminate(self, x: torch.Tensor) -> torch.Tensor:
        """The discriminator's logit d(x), shape ``(batch,)``; D(x) = sigmoid(d(x))."""
        return self.discriminator(x)

    @torch.no_grad()
    def sample(self, n: int) -> torch.Tensor:
        """``n`` draws x = G(z), shape ``(n, *event_shape)`` (EMA weights when enabled)."""
        z = self.prior().sample((n,))
        return self.sampling_generator(z).reshape(n, *self.event_shape)

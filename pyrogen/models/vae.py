"""The VAE's generative process (Kingma & Welling, 2014), as a plain Pyro model::

    z ~ N(0, I)                                  (latent_dim)
    x_i | z ~ Bernoulli(sigmoid(f_i(z)))          (binary data), or
    x_i | z ~ N(μ_i(z), σ_i²(z))                  (real data; σ from the decoder, one learned
                                                   global σ_i, or a fixed σ)

with f, μ, σ the outputs of a decoder network (an MLP, or a small transposed-convolution
net for 28×28 images). The model is ``VAE.forward``, so ``pyro.infer.SVI(vae.model, guide,
...)``, ``Predictive(vae.model, ...)`` and ``poutine.trace(vae.model)`` work on it directly;
its parameters live in the module (never in Pyro's global param store).

Example::

    >>> from pyrogen.config import VAEModelConfig
    >>> vae = VAE(VAEModelConfig(latent_dim=2, hidden_sizes=[32]), event_shape=(64,))
    >>> vae.sample(5).shape
    torch.Size([5, 64])
"""

from __future__ import annotations

import math

import pyro
import pyro.distributions as dist
import torch
import torch.nn.functional as F
from torch import nn

from pyrogen.config import VAEModelConfig
from pyrogen.nets import MLP, ConvDecoder


class VAE(nn.Module):
    """p_θ(x, z) = N(z; 0, I) p_θ(x | z). ``forward`` (alias ``model``) is the Pyro model."""

    def __init__(
        self,
        cfg: VAEModelConfig,
        event_shape: tuple[int, ...],
        image_shape: tuple[int, int, int] | None = None,
    ) -> None:
        super().__init__()
        self.cfg = cfg
        self.latent_dim = cfg.latent_dim
        self.event_shape = tuple(event_shape)
        self.image_shape = tuple(image_shape) if image_shape is not None else None
        self.num_dims = math.prod(self.event_shape)
        self.likelihood = cfg.likelihood
        per_pixel = 2 if cfg.likelihood == "gaussian" and cfg.scale == "decoder" else 1
        self.outputs_per_pixel = per_pixel
        if cfg.architecture == "conv":
            if self.image_shape is None:
                raise ValueError("model.architecture=conv needs image data (data.name of images)")
            c = self.image_shape[0]
            self.decoder: nn.Module = ConvDecoder(
                cfg.latent_dim, self.image_shape, out_channels=c * per_pixel
            )
        else:
            self.decoder = MLP(
                cfg.latent_dim, cfg.hidden_sizes, self.num_dims * per_pixel, cfg.activation
            )
        self.register_buffer("prior_loc", torch.zeros(cfg.latent_dim))
        self.register_buffer("prior_scale", torch.ones(cfg.latent_dim))
        if cfg.likelihood == "gaussian" and cfg.scale == "learned":
            self.log_scale = nn.Parameter(torch.zeros(self.num_dims))
        if cfg.likelihood == "gaussian" and cfg.scale == "fixed":
            self.register_buffer("fixed_scale", torch.full((self.num_dims,), cfg.fixed_scale))

    # ------------------------------------------------------------------ p(z), p(x | z)
    def prior(self) -> dist.Distribution:
        """p(z) = N(0, I), built from buffers so it follows the module's device."""
        return dist.Normal(self.prior_loc, self.prior_scale).to_event(1)

    def _decoder_outputs(self, z: torch.Tensor) -> torch.Tensor:
        batch = z.shape[:-1]
        h = self.decoder(z.reshape(-1, self.latent_dim))
        return h.reshape(*batch, self.outputs_per_pixel, self.num_dims)

    def decode(self, z: torch.Tensor) -> dist.Distribution:
        """p_θ(x | z) with batch shape ``z.shape[:-1]`` and event shape ``event_shape``."""
        h = self._decoder_outputs(z)
        shape = (*z.shape[:-1], *self.event_shape)
        event_dims = len(self.event_shape)
        if self.likelihood == "bernoulli":
            return dist.Bernoulli(logits=h[..., 0, :].reshape(shape)).to_event(event_dims)
        loc = h[..., 0, :]
        if self.image_shape is not None:
            loc = torch.sigmoid(loc)  # image intensities live in [0, 1]
        if self.cfg.scale == "decoder":
            scale = F.softplus(h[..., 1, :]) + self.cfg.min_scale
        elif self.cfg.scale == "learned":
            scale = (F.softplus(self.log_scale) + self.cfg.min_scale).expand_as(loc)
        else:
            scale = self.fixed_scale.expand_as(loc)
        return dist.Normal(loc.reshape(shape), scale.reshape(shape)).to_event(event_dims)

    # ------------------------------------------------------------------ the Pyro model
    def forward(
        self,
        x: torch.Tensor | None = None,
        y: torch.Tensor | None = None,
        num_samples: int | None = None,
    ) -> torch.Tensor:
        """The generative process: z ~ p(z), x ~ p_θ(x | z) in ``pyro.plate("data")``.

        With ``x`` given the site ``x`` is observed; otherwise ``num_samples`` are drawn.
        """
        if x is None and num_samples is None:
            raise ValueError("give the data x or a number of samples")
        n = x.shape[0] if x is not None else num_samples
        with pyro.plate("data", n):
            z = pyro.sample("z", self.prior())
            return pyro.sample("x", self.decode(z), obs=x)

    model = forward

    @torch.no_grad()
    def sample(self, n: int, mean: bool = True) -> torch.Tensor:
        """``n`` draws of x: the mean of p(x | z) (probabilities for Bernoulli) with z from
        the prior when ``mean``, else samples of x itself."""
        z = self.prior().sample((n,))
        px = self.decode(z)
        return px.mean if mean else px.sample()

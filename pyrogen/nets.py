"""Network blocks shared by encoders, decoders, generators and discriminators.

All blocks are plain ``torch.nn.Module`` so they live in one module tree with the model that
owns them (never in Pyro's global parameter store).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

ACTIVATIONS = {
    "relu": nn.ReLU,
    "tanh": nn.Tanh,
    "softplus": nn.Softplus,
    "elu": nn.ELU,
    "leaky_relu": lambda: nn.LeakyReLU(0.2),
}


def activation(name: str) -> nn.Module:
    """The activation called ``name`` (one of :data:`ACTIVATIONS`)."""
    try:
        return ACTIVATIONS[name]()
    except KeyError:
        raise ValueError(
            f"unknown activation {name!r} (allowed: {', '.join(ACTIVATIONS)})"
        ) from None


class MLP(nn.Sequential):
    """``in_dim -> hidden_sizes... -> out_dim``, an activation after every hidden layer.

    Example::

        >>> net = MLP(4, [8, 8], 2)
        >>> net(torch.zeros(3, 4)).shape
        torch.Size([3, 2])
    """

    def __init__(
        self,
        in_dim: int,
        hidden_sizes: Sequence[int],
        out_dim: int,
        activation_name: str = "relu",
        dropout: float = 0.0,
        spectral_norm: bool = False,
    ) -> None:
        layers: list[nn.Module] = []
        sizes = [in_dim, *hidden_sizes]
        for a, b in zip(sizes[:-1], sizes[1:], strict=True):
            layers.append(_maybe_sn(nn.Linear(a, b), spectral_norm))
            layers.append(activation(activation_name))
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
        layers.append(_maybe_sn(nn.Linear(sizes[-1], out_dim), spectral_norm))
        super().__init__(*layers)
        self.in_dim, self.out_dim = in_dim, out_dim


def _maybe_sn(layer: nn.Module, spectral_norm: bool) -> nn.Module:
    return nn.utils.parametrizations.spectral_norm(layer) if spectral_norm else layer


class ConvEncoder(nn.Module):
    """A small conv net for 1 x 28 x 28 (or C x H x W) images: two stride-2 convolutions
    (28 -> 14 -> 7) then a linear layer to ``out_dim``. Used by VAE encoders and GAN
    discriminators (DCGAN-style: leaky ReLU, no pooling; ``dropout`` after each activation).

    With ``context_dim`` C > 0 it is the encoder of a conditional VAE, q(z | x, c): the head
    reads the conv features of x concatenated with the context vector c, h = W [φ(x), c] + b,
    and ``forward(x, c)`` takes both (:attr:`takes_context`)."""

    def __init__(
        self,
        image_shape: Sequence[int],
        out_dim: int,
        channels: Sequence[int] = (32, 64),
        activation_name: str = "leaky_relu",
        spectral_norm: bool = False,
        dropout: float = 0.0,
        context_dim: int = 0,
    ) -> None:
        super().__init__()
        c, h, w = image_shape
        layers: list[nn.Module] = []
        for c_out in channels:
            layers += [
                _maybe_sn(nn.Conv2d(c, c_out, 4, 2, 1), spectral_norm),
                activation(activation_name),
            ]
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
            c, h, w = c_out, h // 2, w // 2
        self.features = nn.Sequential(*layers, nn.Flatten())
        self.head = _maybe_sn(nn.Linear(c * h * w + context_dim, out_dim), spectral_norm)
        self.image_shape = tuple(image_shape)
        self.context_dim = int(context_dim)

    @property
    def takes_context(self) -> bool:
        """Whether ``forward`` takes the context c beside x (``context_dim`` > 0)."""
        return self.context_dim > 0

    def forward(self, x: torch.Tensor, c: torch.Tensor | None = None) -> torch.Tensor:
        x = x.reshape(-1, *self.image_shape) if x.dim() == 2 else x
        if (c is None) == self.takes_context:
            raise ValueError(
                f"this encoder takes {'x and a context c' if self.takes_context else 'x only'}"
            )
        h = self.features(x)
        return self.head(h if c is None else torch.cat([h, c.to(h.dtype)], dim=-1))


class ConvDecoder(nn.Module):
    """The mirror of :class:`ConvEncoder`: linear layer to C x H/4 x W/4, then two stride-2
    transposed convolutions up to ``out_channels`` x H x W (DCGAN-style generator body).
    Returns un-activated outputs of shape ``(batch, out_channels, H, W)``."""

    def __init__(
        self,
        in_dim: int,
        image_shape: Sequence[int],
        out_channels: int | None = None,
        channels: Sequence[int] = (64, 32),
        activation_name: str = "relu",
        batch_norm: bool = False,
    ) -> None:
        super().__init__()
        c, h, w = image_shape
        self.start = (channels[0], h // 4, w // 4)
        self.fc = nn.Sequential(
            nn.Linear(in_dim, channels[0] * (h // 4) * (w // 4)), activation(activation_name)
        )
        layers: list[nn.Module] = []
        chans = [*channels, out_channels or c]
        for i, (a, b) in enumerate(zip(chans[:-1], chans[1:], strict=True)):
            layers.append(nn.ConvTranspose2d(a, b, 4, 2, 1))
            if i < len(chans) - 2:
                if batch_norm:
                    layers.append(nn.BatchNorm2d(b))
                layers.append(activation(activation_name))
        self.deconv = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.fc(z).reshape(-1, *self.start)
        return self.deconv(h)


# ------------------------------------------------------------------ GAN networks
OUTPUT_LAYERS = {"sigmoid": nn.Sigmoid, "tanh": nn.Tanh, "identity": nn.Identity}


def mlp_generator(
    latent_dim: int, hidden_sizes: Sequence[int], out_dim: int, output: str = "sigmoid"
) -> nn.Sequential:
    """G: ``latent_dim -> hidden_sizes -> out_dim`` with ReLU, then ``output`` (``sigmoid``
    for data in [0, 1], ``tanh`` for [-1, 1], ``identity`` for unbounded data).

    Example::

        >>> mlp_generator(2, [16], 5)(torch.zeros(3, 2)).shape
        torch.Size([3, 5])
    """
    return nn.Sequential(MLP(latent_dim, hidden_sizes, out_dim, "relu"), OUTPUT_LAYERS[output]())


class ProjectionDiscriminator(nn.Module):
    """The projection discriminator of Miyato & Koyama (2018) for a class-conditional GAN:

        d(x, y) = ψ(φ(x)) + embed(y)ᵀ φ(x)

    with φ = ``features`` (x -> F numbers), ψ = ``head`` (a linear layer F -> 1) and a learned
    embedding of the K classes in R^F (with ``context_dim`` C instead, of a continuous context
    c: embed(c) = W c, W ∈ R^{F×C}) (spectrally normalised with the rest when
    ``spectral_norm``). It is the discriminator of an unconditional GAN, ψ(φ(x)), plus an inner
    product of its features with the class's embedding: the log-ratio of the class-conditional
    densities, log p(y | x) − log q(y | x), is linear in φ(x).

    Example::

        >>> d = ProjectionDiscriminator(nn.Linear(4, 8), nn.Linear(8, 1), num_classes=3)
        >>> d(torch.zeros(5, 4), torch.tensor([0, 1, 2, 0, 1])).shape
        torch.Size([5])
    """

    def __init__(
        self,
        features: nn.Module,
        head: nn.Linear,
        num_classes: int | None = None,
        spectral_norm: bool = False,
        context_dim: int | None = None,
    ) -> None:
        super().__init__()
        if (num_classes is None) == (context_dim is None):
            raise ValueError("give num_classes (class labels) or context_dim (a vector c)")
        self.features, self.head = features, head
        if num_classes is not None:
            embed: nn.Module = nn.Embedding(num_classes, head.in_features)
        else:  # a continuous c: the projection Wc, linear in c as embed(y) is in e_y
            embed = nn.Linear(context_dim, head.in_features, bias=False)
        nn.init.xavier_uniform_(embed.weight)
        self.embed = _maybe_sn(embed, spectral_norm)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        h = self.features(x)
        return self.head(h).squeeze(-1) + (self.embed(y) * h).sum(-1)


def mlp_discriminator(
    in_dim: int,
    hidden_sizes: Sequence[int],
    dropout: float = 0.0,
    spectral_norm: bool = False,
    num_classes: int | None = None,
    context_dim: int | None = None,
) -> nn.Module:
    """d: x (any shape with ``in_dim`` numbers per example) -> one logit, leaky ReLU (0.2)
    and optional dropout after each hidden layer, optional spectral normalisation; with
    ``num_classes`` (or ``context_dim``), d(x, c): the same network as a
    :class:`ProjectionDiscriminator` whose features are its last hidden layer."""
    mlp = MLP(in_dim, hidden_sizes, 1, "leaky_relu", dropout=dropout, spectral_norm=spectral_norm)
    if num_classes is None and context_dim is None:
        return nn.Sequential(nn.Flatten(), mlp)
    features = nn.Sequential(nn.Flatten(), *list(mlp)[:-1])
    return ProjectionDiscriminator(features, mlp[-1], num_classes, spectral_norm, context_dim)


def conv_generator(
    latent_dim: int, image_shape: Sequence[int], channels: Sequence[int], output: str = "sigmoid"
) -> nn.Sequential:
    """DCGAN-style G (Radford et al. 2016): a linear layer to ``channels[0] x H/4 x W/4`` and
    two stride-2 transposed convolutions with batch norm between, then ``output``."""
    if len(channels) != 2:
        raise ValueError(f"give the two stages' channels, e.g. [128, 64], not {list(channels)}")
    body = ConvDecoder(latent_dim, image_shape, channels=channels, batch_norm=True)
    return nn.Sequential(body, OUTPUT_LAYERS[output]())


def conv_discriminator(
    image_shape: Sequence[int],
    channels: Sequence[int],
    spectral_norm: bool = False,
    dropout: float = 0.0,
    num_classes: int | None = None,
    context_dim: int | None = None,
) -> nn.Module:
    """DCGAN-style d: two stride-2 convolutions (leaky ReLU, then optional dropout) and a
    linear head to one logit; with ``num_classes`` (or ``context_dim``), d(x, c): a
    :class:`ProjectionDiscriminator` on the flattened convolution features."""
    if len(channels) != 2:
        raise ValueError(f"give the two stages' channels, e.g. [64, 128], not {list(channels)}")
    encoder = ConvEncoder(
        image_shape, 1, channels=channels, spectral_norm=spectral_norm, dropout=dropout
    )
    if num_classes is None and context_dim is None:
        return encoder
    return ProjectionDiscriminator(
        encoder.features, encoder.head, num_classes, spectral_norm, context_dim
    )

"""The GAN family's sections: ``model`` (``model.family=gan``) and ``adversarial`` (the
training algorithm: loss, discriminator steps, penalties, a moving average of G)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from pyrogen.config.schema import MAX_COUNT, MAX_STEPS, MAX_WIDTH, num, sizes


@dataclass
class GANModelConfig:
    """z ~ p_z; x = G(z); a discriminator D(x) = P(data | x)."""

    family: Literal["gan"] = field(
        default="gan", metadata={"doc": "the model family: vae, flow or gan"}
    )
    latent_dim: int = num(100, ge=1, le=MAX_WIDTH, doc="dimension of z")
    prior: Literal["normal", "uniform"] = field(
        default="normal", metadata={"doc": "p_z: standard normal or uniform on [-1, 1]"}
    )
    architecture: Literal["mlp", "conv"] = field(
        default="mlp", metadata={"doc": "generator and discriminator networks: MLP or conv (DCGAN)"}
    )
    hidden_sizes: list[int] = sizes(
        256, 256, min_len=0, doc="generator layer widths (conv: channels); []: affine"
    )
    discriminator_hidden_sizes: list[int] = sizes(
        256, 256, min_len=0, doc="discriminator layer widths (conv: channels); []: affine"
    )
    discriminator_dropout: float = num(0.0, ge=0.0, lt=1.0, doc="dropout rate in the discriminator")
    spectral_norm: bool = field(
        default=False, metadata={"doc": "spectral normalisation of the discriminator's layers"}
    )
    output: Literal["sigmoid", "tanh", "identity"] = field(
        default="sigmoid", metadata={"doc": "the generator's last layer"}
    )
    conditional: bool = field(
        default=False,
        metadata={"doc": "class-conditional: G(z, y) and a projection discriminator d(x, y)"},
    )
    num_classes: int = num(10, ge=2, le=MAX_COUNT, doc="conditional: number of classes y")


@dataclass
class AdversarialConfig:
    """Goodfellow et al.'s Algorithm 1 and its common variants (GAN only)."""

    loss: str = field(
        default="non_saturating",
        metadata={"doc": "the GAN loss (a name in pyrogen.registry.GAN_LOSSES)"},
    )
    discriminator_steps: int = num(1, ge=1, le=MAX_STEPS, doc="k D updates per G update")
    gradient_penalty: float = num(
        10.0, ge=0.0, le=1e6, doc="wasserstein: weight λ of the gradient penalty"
    )
    r1_penalty: float = num(0.0, ge=0.0, le=1e6, doc="weight γ of the R1 penalty (0: off)")
    ema_decay: float | None = num(
        None, ge=0.0, lt=1.0, doc="decay of a moving average of G's weights (null: off)"
    )

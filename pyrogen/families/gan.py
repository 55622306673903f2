"""The GAN family: config -> generator and discriminator networks -> :class:`GAN`; the
adversarial loop of Goodfellow et al.'s Algorithm 1; no likelihood of its own (Parzen only)."""

from __future__ import annotations

from torch import nn

from pyrogen.config import Config, ConfigError
from pyrogen.data import Dataset
from pyrogen.families.base import (
    Family,
    check_class_labels,
    check_conv_shape,
    conditioning,
    learner_options,
    mlp_size,
)
from pyrogen.inference.adversarial import AdversarialLearner, GANLoss, make_gan_loss
from pyrogen.models.context import context_size
from pyrogen.models.gan import GAN
from pyrogen.nets import conv_discriminator, conv_generator, mlp_discriminator, mlp_generator
from pyrogen.registry import GAN_LOSSES, check_name


class GANFamily(Family):
    name = "gan"
    description = "generative adversarial network: no likelihood (Parzen window only)"
    no_latent_kl = "a GAN has no ELBO: it is fitted by its adversarial loss"
    #: a GAN's losses measure the game, not the generator's quality: no default monitor
    validation_metrics = {"d_loss": None, "g_loss": None, "d_real": None, "d_fake": None}

    def validate(self, cfg: Config) -> None:
        check_name(GAN_LOSSES, cfg.adversarial.loss, "adversarial.loss")
        a = cfg.adversarial
        penalty = "adversarial.r1_penalty" if a.r1_penalty else None
        if self.make_loss(cfg).gradient_penalty:
            penalty = "adversarial.gradient_penalty"
        if cfg.train.precision == "16-mixed" and penalty:
            raise ConfigError(
                f"train.precision=16-mixed with {penalty}: the penalty differentiates D's "
                "output w.r.t. its input inside the loss, where the gradient scaler's scale "
                "does not reach, so small float16 gradients would flush to zero: use "
                "train.precision=bf16 (or 32)"
            )
        m = cfg.model
        if m.architecture == "conv":
            for key in ("hidden_sizes", "discriminator_hidden_sizes"):
                sizes = getattr(m, key)
                if len(sizes) != 2:
                    raise ConfigError(
                        f"model.architecture=conv uses model.{key} as the channels of its two "
                        f"stride-2 stages; give two sizes (e.g. [128, 64]), not {list(sizes)}"
                    )

    def check_data(self, cfg: Config, data: Dataset) -> None:
        m = cfg.model
        check_conv_shape(cfg, data)
        check_class_labels(cfg, data)
        if m.output == "sigmoid" and data.kind == "points":
            low, high = float(data.train.min()), float(data.train.max())
            if low < 0 or high > 1:
                raise ConfigError(
                    f"model.output=sigmoid keeps samples in (0, 1), but the data lie in "
                    f"[{low:.3g}, {high:.3g}]: use model.output=identity"
                )

    def estimate_parameters(self, cfg: Config, data: Dataset) -> int:
        m = cfg.model
        d = data.num_dims
        k = context_size(**conditioning(cfg, data))  # G takes [z, c]; D projects c
        widths = [d, *m.discriminator_hidden_sizes]
        generator = mlp_size([m.latent_dim + k, *m.hidden_sizes, d])
        discriminator = mlp_size([*widths, 1]) + k * widths[-1]
        if m.architecture == "conv":  # the linear layers dominate; convolutions are 4x4
            c0, c1 = m.hidden_sizes
            d0, d1 = m.discriminator_hidden_sizes
            generator = (m.latent_dim + k) * c0 * d // 16 + 16 * c0 * c1 + 16 * c1
            discriminator = 16 * d0 + 16 * d0 * d1 + (1 + k) * d1 * d // 16
        return generator + discriminator

    def build_model(self, cfg: Config, data: Dataset) -> GAN:
        m = cfg.model
        c = conditioning(cfg, data)  # num_classes (one-hot e_y) or context_dim (c itself)
        g_in = m.latent_dim + context_size(**c)  # a conditional G takes [z, c]
        if m.architecture == "conv":
            shape = data.image_shape
            generator = conv_generator(g_in, shape, m.hidden_sizes, m.output)
            discriminator = conv_discriminator(
                shape,
                m.discriminator_hidden_sizes,
                spectral_norm=m.spectral_norm,
                dropout=m.discriminator_dropout,
                **c,
            )
        else:
            generator = mlp_generator(g_in, m.hidden_sizes, data.num_dims, m.output)
            discriminator = mlp_discriminator(
                data.num_dims,
                m.discriminator_hidden_sizes,
                dropout=m.discriminator_dropout,
                spectral_norm=m.spectral_norm,
                **c,
            )
        return GAN(generator, discriminator, m.latent_dim, data.event_shape, prior=m.prior, **c)

    def uses_labels(self, cfg: Config) -> bool:
        return bool(cfg.model.conditional)

    def networks(self, model: nn.Module) -> list[nn.Module]:
        return [model.generator, model.discriminator]

    def make_loss(self, cfg: Config) -> GANLoss:
        """The configured loss, given the ``adversarial`` keys named like its options."""
        a = cfg.adversarial
        return make_gan_loss(a.loss, **{k: getattr(a, k) for k in vars(a) if k != "loss"})

    def build_learner(self, cfg: Config, model: nn.Module) -> AdversarialLearner:
        a, o = cfg.adversarial, cfg.optim
        return AdversarialLearner(
            model,
            self.make_loss(cfg),
            discriminator_steps=a.discriminator_steps,
            lr_discriminator=o.lr_discriminator,
            r1_penalty=a.r1_penalty,
            ema_decay=a.ema_decay,
            **learner_options(cfg),
        )

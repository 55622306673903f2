"""The VAE family: config -> encoder, decoder, likelihood, guide -> :class:`VAE`; variational
inference with one of Pyro's estimators; ELBO and importance-sampled log p(x).
``model.conditional=true`` builds the CVAE (Sohn et al. 2015): the decoder takes [z, c], the
guide's encoder x and c, and ``model.prior=conditional`` makes p(z | c) a learned Gaussian."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from pyrogen.config import Config, ConfigError
from pyrogen.data import Dataset
from pyrogen.families.base import (
    Family,
    check_class_labels,
    check_conv_shape,
    check_estimator,
    conditioning,
    estimator,
    learner_options,
    mlp_size,
)
from pyrogen.inference.elbo import ENUMERATING_ELBOS
from pyrogen.inference.variational import VariationalLearner
from pyrogen.models.context import context_size
from pyrogen.models.hierarchical import HierarchicalVAE
from pyrogen.models.likelihoods import make_likelihood
from pyrogen.models.priors import (
    ConditionalNormalPrior,
    MixtureOfGaussiansPrior,
    VampPrior,
    num_prior_parameters,
)
from pyrogen.models.vae import VAE
from pyrogen.nets import MLP, ConvDecoder, ConvEncoder, activation
from pyrogen.registry import ELBOS, GUIDES, check_name


def guide_options(cfg: Config) -> dict[str, Any]:
    """The ``guide`` section's values that the configured guide's constructor takes: every
    key named like one of its :meth:`~pyrogen.models.guides.AmortisedGuide.options`
    (``name`` and ``hidden_sizes`` describe the encoder and are never passed; a key left at
    ``None`` leaves the guide's own default)."""
    g = cfg.guide
    accepted = GUIDES.get(g.name).options()
    return {
        k: getattr(g, k)
        for k in accepted
        if k not in ("name", "hidden_sizes") and getattr(g, k, None) is not None
    }


def build_prior(cfg: Config, data: Dataset) -> nn.Module | None:
    """The learned prior of ``model.prior`` (``None`` for the standard normal). The VampPrior's
    K pseudo-inputs start as K training examples drawn without replacement (with replacement
    when K exceeds the training set) and mapped to the model's space as a batch is, all from a
    generator seeded by ``train.seed``: the run's random stream is not touched."""
    m = cfg.model
    if m.prior == "mog":  # on z2 when model.levels=2
        return MixtureOfGaussiansPrior(top_latent_dim(cfg), m.num_components)
    if m.prior == "mixture":  # the GMVAE: its component c a site summed out by enumeration
        return MixtureOfGaussiansPrior(m.latent_dim, m.num_components, enumerated=True)
    if m.prior != "vamp":
        return None
    gen = torch.Generator().manual_seed(cfg.train.seed)
    n, k = data.train.shape[0], m.num_pseudo_inputs
    index = (
        torch.randperm(n, generator=gen)[:k] if k <= n else torch.randint(n, (k,), generator=gen)
    )
    init = data.process(data.train[index.to(data.device)], gen)
    return VampPrior(k, data.event_shape, init=init.reshape(k, *data.event_shape).cpu())


def check_conditional(cfg: Config) -> None:
    """Refuse what the conditional VAE (``model.conditional=true``) does not take, and
    ``model.prior=conditional`` without it."""
    m = cfg.model
    if not m.conditional:
        if m.prior == "conditional":
            raise ConfigError(
                "model.prior=conditional is p(z | c) of a conditional VAE: set "
                "model.conditional=true, or model.prior=standard"
            )
        return
    if m.prior not in ("standard", "conditional"):
        raise ConfigError(
            f"model.conditional=true takes model.prior=standard or conditional (p(z | c)); "
            f"model.prior={m.prior} is a learned p(z) not conditioned on c (not supported)"
        )
    if m.levels != 1:
        raise ConfigError(
            f"model.conditional=true builds a one-level CVAE; model.levels={m.levels} has no "
            "conditional form (set model.levels=1 or model.conditional=false)"
        )


def top_latent_dim(cfg: Config) -> int:
    """z2's dimension under ``model.levels=2``: ``model.top_latent_dim``, by default
    max(1, latent_dim // 2); for one level, z's (``model.latent_dim``)."""
    m = cfg.model
    if m.levels == 1:
        return m.latent_dim
    return m.top_latent_dim if m.top_latent_dim is not None else max(1, m.latent_dim // 2)


def check_levels(cfg: Config) -> None:
    """Refuse what the two-level model does not take, and its keys under one level."""
    m, g = cfg.model, cfg.guide
    if m.levels == 1:
        if m.top_latent_dim is not None:
            raise ConfigError(
                f"model.top_latent_dim={m.top_latent_dim} sizes z2 of a two-level VAE: set "
                "model.levels=2 or remove model.top_latent_dim"
            )
        if list(m.top_hidden_sizes) != [256]:
            raise ConfigError(
                f"model.top_hidden_sizes={list(m.top_hidden_sizes)} sizes the z2 -> z1 networks "
                "of a two-level VAE: set model.levels=2 or remove model.top_hidden_sizes"
            )
        return
    if g.name != "diagonal_normal":
        raise ConfigError(
            f"model.levels=2 has its own top-down guide q(z2|x) q(z1|x,z2) of diagonal "
            f"Gaussians; guide.name={g.name} is a one-level guide (use guide.name=diagonal_normal)"
        )
    if m.prior == "mixture":
        raise ConfigError(
            "model.levels=2 takes model.prior=standard, vamp or mog on z2; mixture (the GMVAE's "
            "enumerated component) is not supported with two levels"
        )
    if m.architecture == "conv":
        raise ConfigError(
            "model.levels=2 builds MLP networks only: use model.architecture=mlp (or levels=1)"
        )


def build_hierarchical(cfg: Config, data: Dataset) -> HierarchicalVAE:
    """The two-level VAE of ``model.levels=2``: the encoder is the guide's MLP without its
    output layer (h = the last hidden layer, activated; ``[]``: h = x), the decoder reads z1."""
    m, g = cfg.model, cfg.guide
    likelihood = make_likelihood(m.likelihood, data.event_shape, **gaussian_options(cfg, data))
    hidden = g.hidden_sizes if g.hidden_sizes is not None else m.hidden_sizes[::-1]
    layers: list[nn.Module] = [nn.Flatten()]
    if hidden:
        layers += [
            MLP(data.num_dims, hidden[:-1], hidden[-1], m.activation),
            activation(m.activation),
        ]
    decoder = MLP(
        m.latent_dim, m.hidden_sizes, data.num_dims * likelihood.outputs_per_dim, m.activation
    )
    return HierarchicalVAE(
        nn.Sequential(*layers),
        decoder,
        m.latent_dim,
        top_latent_dim(cfg),
        data.event_shape,
        likelihood,
        feature_dim=hidden[-1] if hidden else data.num_dims,
        hidden_sizes=m.top_hidden_sizes,
        activation=m.activation,
        prior=build_prior(cfg, data),
    )


def gaussian_options(cfg: Config, data: Dataset) -> dict[str, Any]:
    """The Gaussian likelihood's options from the ``model`` section (none for Bernoulli)."""
    m = cfg.model
    if m.likelihood != "gaussian":
        return {}
    return {
        "scale": m.scale,
        "mean": "sigmoid" if data.kind == "image" else "identity",
        "fixed_scale": m.fixed_scale,
        "min_scale": m.min_scale,
    }


class VAEFamily(Family):
    name = "vae"
    description = "variational autoencoder: ELBO and importance-sampled log p(x)"
    validation_metrics = {"elbo": "max"}
    monitor = "elbo"

    def validate(self, cfg: Config) -> None:
        g, e, m = cfg.guide, cfg.elbo, cfg.model
        check_name(GUIDES, g.name, "guide.name")
        check_name(ELBOS, e.name, "elbo.name")
        check_estimator(g.name, cfg, baseline=g.baseline, prior=m.prior)
        guide_cls = GUIDES.get(g.name)
        if g.baseline != "none" and "baseline" not in guide_cls.options():
            takers = [n for n, c in GUIDES.items() if "baseline" in c.options()]
            raise ConfigError(
                f"guide.baseline={g.baseline} applies to guide.name={' or '.join(takers)} only "
                f"(the {g.name} guide takes no baseline: it has no score-function term to reduce)"
            )
        if m.architecture == "conv":
            for key, sizes in [("model", m.hidden_sizes), ("guide", g.hidden_sizes)]:
                if sizes == []:
                    raise ConfigError(
                        f"{key}.hidden_sizes=[] (an affine network) applies to "
                        "model.architecture=mlp; the conv encoder and decoder have fixed layers"
                    )
        problem = guide_cls.problem(m.latent_dim, **guide_options(cfg))
        if problem:
            raise ConfigError(problem)
        check_conditional(cfg)
        check_levels(cfg)
        if m.prior == "mixture":
            if e.name not in ENUMERATING_ELBOS:
                raise ConfigError(
                    f"model.prior=mixture sums its component c out by enumeration, which "
                    f"elbo.name={e.name} does not do (it would sample c from the prior): use "
                    f"elbo.name={' or '.join(ENUMERATING_ELBOS)}"
                )
            if e.beta != 1.0 or e.kl_warmup_steps:
                raise ConfigError(
                    "elbo.beta and elbo.kl_warmup_steps scale each latent site's log-density, "
                    "which under model.prior=mixture tempers p(c) and p(z | c) inside "
                    "log Σ_c p(c) p(z | c) rather than weighting a KL: use elbo.beta=1 and "
                    "elbo.kl_warmup_steps=0"
                )

    def check_data(self, cfg: Config, data: Dataset) -> None:
        m = cfg.model
        check_conv_shape(cfg, data)
        check_class_labels(cfg, data)
        if m.likelihood == "bernoulli" and data.model_levels != 2:
            if not data.is_binary():
                raise ConfigError(
                    f"model.likelihood=bernoulli needs binary data, but data.name={data.name} "
                    f"has values other than 0 and 1 (data.binarize={cfg.data.binarize}): set "
                    "data.binarize=dynamic or static, or model.likelihood=gaussian"
                )
        if cfg.data.dequantize and m.likelihood == "bernoulli":
            raise ConfigError(
                "data.dequantize=true makes the data continuous, which a Bernoulli likelihood "
                "cannot score: use model.likelihood=gaussian"
            )

    def estimate_parameters(self, cfg: Config, data: Dataset) -> int:
        m, g = cfg.model, cfg.guide
        d, z = data.num_dims, m.latent_dim
        c = context_size(**conditioning(cfg, data))  # the CVAE's extra inputs: c beside z, x
        enc_hidden = g.hidden_sizes if g.hidden_sizes is not None else m.hidden_sizes[::-1]
        outputs = z * (2 + g.rank) + z * z  # at least any guide's encoder output
        outputs = max(outputs, GUIDES.get(g.name).encoder_outputs(z, **guide_options(cfg)))
        total = mlp_size([z + c, *m.hidden_sizes, 2 * d]) + mlp_size([d + c, *enc_hidden, outputs])
        if m.prior == "conditional":
            total += ConditionalNormalPrior.num_parameters(c, z)
        if m.levels == 2:  # z2 is the prior's; the top-down net, q(z2 | x) and q(z1 | x, z2)
            z2, h, th = top_latent_dim(cfg), (enc_hidden or [d])[-1], m.top_hidden_sizes
            total += mlp_size([z2, *th, 2 * z]) + mlp_size([h + z2, *th, 2 * z])
            total += mlp_size([h, 2 * z2])
            z = z2
        total += num_prior_parameters(m.prior, z, d, m.num_pseudo_inputs, m.num_components)
        return total + GUIDES.get(g.name).num_parameters(z, **guide_options(cfg))

    def build_model(self, cfg: Config, data: Dataset) -> VAE:
        m, g = cfg.model, cfg.guide
        if m.levels == 2:
            return build_hierarchical(cfg, data)
        likelihood = make_likelihood(m.likelihood, data.event_shape, **gaussian_options(cfg, data))
        guide_cls = GUIDES.get(g.name)
        options = guide_options(cfg)
        outputs = guide_cls.encoder_outputs(m.latent_dim, **options)
        per_dim = likelihood.outputs_per_dim
        cond = conditioning(cfg, data)
        width = context_size(**cond)  # a CVAE's c: beside z in the decoder, x in the encoder
        if m.architecture == "conv":  # c joins the conv features before the encoder's head
            channels = data.image_shape[0]
            encoder: nn.Module = ConvEncoder(data.image_shape, outputs, context_dim=width)
            decoder: nn.Module = ConvDecoder(
                m.latent_dim + width, data.image_shape, channels * per_dim
            )
        else:  # c is concatenated to the flattened x by the guide
            hidden = g.hidden_sizes if g.hidden_sizes is not None else m.hidden_sizes[::-1]
            encoder = nn.Sequential(
                nn.Flatten(), MLP(data.num_dims + width, hidden, outputs, m.activation)
            )
            decoder = MLP(
                m.latent_dim + width, m.hidden_sizes, data.num_dims * per_dim, m.activation
            )
        if options.get("baseline") == "neural":
            options["baseline_net"] = MLP(data.num_dims, [64], 1, "relu")
        guide = guide_cls(encoder, m.latent_dim, **options)
        prior = build_prior(cfg, data)
        return VAE(
            None,
            decoder,
            m.latent_dim,
            data.event_shape,
            likelihood,
            guide=guide,
            prior=prior,
            conditional_prior=m.prior == "conditional",
            **cond,
        )

    def uses_labels(self, cfg: Config) -> bool:
        return bool(cfg.model.conditional)

    def networks(self, model: nn.Module) -> list[nn.Module]:
        if isinstance(model, HierarchicalVAE):
            return model.networks()
        return [model.decoder, model.guide.encoder]

    def build_learner(self, cfg: Config, model: nn.Module) -> VariationalLearner:
        e = cfg.elbo
        elbo = estimator(cfg)
        return VariationalLearner(
            model,
            elbo,
            kl_warmup_steps=e.kl_warmup_steps,
            beta=e.beta,
            free_bits=e.free_bits,
            **learner_options(cfg),
        )

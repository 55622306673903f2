"""The VAE family's sections: ``model`` (``model.family=vae``), ``guide`` (the amortised
q(z | x)) and ``elbo`` (which of Pyro's ELBO estimators trains it)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from pyrogen.config.schema import MAX_COUNT, MAX_STEPS, MAX_WIDTH, num, sizes


@dataclass
class VAEModelConfig:
    """z ~ p(z) (N(0, I) or a learned prior; the GMVAE's: c ~ Cat(π), z | c ~ N(μ_c, σ_c²));
    x ~ likelihood(decoder(z)). Conditional (the CVAE): z ~ p(z) or p(z | c), x ~ p(x | z, c)."""

    family: Literal["vae"] = field(
        default="vae", metadata={"doc": "the model family: vae, flow or gan"}
    )
    latent_dim: int = num(2, ge=1, le=MAX_WIDTH, doc="dimension of z")
    likelihood: Literal["bernoulli", "gaussian"] = field(
        default="bernoulli", metadata={"doc": "p(x | z): bernoulli (binary data) or gaussian"}
    )
    scale: Literal["decoder", "learned", "fixed"] = field(
        default="decoder",
        metadata={"doc": "gaussian: sigma from the decoder, one learned per dimension, or fixed"},
    )
    fixed_scale: float = num(0.1, gt=0.0, le=1e6, doc="gaussian, scale=fixed: sigma")
    min_scale: float = num(1e-3, ge=0.0, le=1e3, doc="gaussian: floor added to sigma")
    architecture: Literal["mlp", "conv"] = field(
        default="mlp", metadata={"doc": "decoder (and encoder) networks: MLP or conv"}
    )
    hidden_sizes: list[int] = sizes(
        256, 256, min_len=0, doc="decoder layer widths (conv: channels); []: an affine decoder"
    )
    activation: Literal["relu", "tanh", "softplus", "elu", "leaky_relu"] = field(
        default="relu", metadata={"doc": "nonlinearity of the networks"}
    )
    conditional: bool = field(
        default=False,
        metadata={"doc": "conditional p(x | c) (CVAE): c the class y or data.context"},
    )
    num_classes: int = num(10, ge=2, le=MAX_COUNT, doc="conditional: number of classes y")
    prior: Literal["standard", "vamp", "mog", "mixture", "conditional"] = field(
        default="standard",
        metadata={
            "doc": "p(z): standard N(0,I), vamp, mog, mixture (GMVAE), conditional "
            "N(μ(c), σ(c)²) (CVAE)"
        },
    )
    num_pseudo_inputs: int = num(
        500, ge=1, le=MAX_COUNT, doc="vamp: K, the pseudo-inputs (from K random training examples)"
    )
    num_components: int = num(10, ge=1, le=MAX_COUNT, doc="mog, mixture: K, the components")
    levels: int = num(
        1, ge=1, le=2, doc="stochastic layers: 1 (z -> x) or 2 (z2 -> z1 -> x, z1 of latent_dim)"
    )
    top_latent_dim: int | None = num(
        None,
        ge=1,
        le=MAX_WIDTH,
        doc="levels=2: dimension of z2; null: latent_dim // 2 (at least 1)",
    )
    top_hidden_sizes: list[int] = sizes(
        256, min_len=0, doc="levels=2: hidden widths of the MLPs of p(z1|z2) and q(z1|x,z2)"
    )


@dataclass
class GuideConfig:
    """The amortised variational family q(z | x) (VAE only)."""

    name: str = field(
        default="diagonal_normal",
        metadata={"doc": "the guide q(z | x) (a name in pyrogen.registry.GUIDES)"},
    )
    hidden_sizes: list[int] | None = field(
        default=None,
        metadata={
            "ge": 1,
            "le": MAX_WIDTH,
            "max_len": 64,
            "min_len": 0,
            "doc": "encoder layer widths; default: the decoder's, reversed; []: affine",
        },
    )
    rank: int = num(2, ge=1, le=MAX_WIDTH, doc="low_rank_normal: rank of the covariance factor")
    num_flows: int | None = num(
        None,
        ge=1,
        le=256,
        doc="flow guides' steps K; default: the guide's (iaf 2, planar 10, sylvester 4)",
    )
    num_householder: int = num(8, ge=1, le=256, doc="sylvester: Householder reflections per step")
    baseline: Literal["none", "decaying_average", "neural"] = field(
        default="none", metadata={"doc": "score-function estimators: variance-reducing baseline"}
    )
    baseline_beta: float = num(0.9, ge=0.0, lt=1.0, doc="decay of the decaying-average baseline")


@dataclass
class ELBOConfig:
    """Which of Pyro's ELBO estimators trains the model, and its options."""

    name: str = field(
        default="trace", metadata={"doc": "the ELBO estimator (a name in pyrogen.registry.ELBOS)"}
    )
    num_particles: int = num(1, ge=1, le=MAX_COUNT, doc="samples of z per example in each estimate")
    vectorize_particles: bool = field(
        default=False, metadata={"doc": "draw the particles in one vectorised pass"}
    )
    alpha: float = num(0.0, ge=-1e3, le=1e3, doc="renyi: alpha = 0 is the IWAE bound")
    tail_adaptive_beta: float = num(
        -1.0, ge=-1.0, lt=0.0, doc="tail_adaptive: rank exponent β of the weights"
    )
    kl_warmup_steps: int = num(
        0, ge=0, le=MAX_STEPS, doc="KL weight β from 0 to elbo.beta over these steps"
    )
    beta: float = num(1.0, gt=0.0, le=1e3, doc="β-VAE: E_q[log p(x|z)] − β KL(q ‖ p); 1: the ELBO")
    free_bits: float = num(
        0.0,
        ge=0.0,
        le=1e3,
        doc="free bits λ: each latent dimension's KL floored, max(λ, KL_j) nats; 0: the ELBO",
    )

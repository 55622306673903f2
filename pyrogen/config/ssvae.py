"""The semi-supervised VAE family's ``model`` section (``model.family=ssvae``: M2 of Kingma
et al. 2014); it is trained with ``elbo.name=trace_enum``."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from pyrogen.config.schema import MAX_WIDTH, num, sizes


@dataclass
class SSVAEModelConfig:
    """y ~ Cat(1/K); z ~ N(0, I); x ~ Bernoulli(decoder(z, y)); guide q(y|x) q(z|x,y)."""

    family: Literal["ssvae"] = field(
        default="ssvae", metadata={"doc": "the model family: vae, flow, gan or ssvae"}
    )
    latent_dim: int = num(50, ge=1, le=MAX_WIDTH, doc="dimension of the style z")
    hidden_sizes: list[int] = sizes(
        500, min_len=0, doc="layer widths of the classifier, encoder and decoder"
    )
    activation: Literal["relu", "tanh", "softplus", "elu", "leaky_relu"] = field(
        default="softplus", metadata={"doc": "nonlinearity of the networks"}
    )
    alpha: float | None = num(
        None,
        ge=0.0,
        le=1e9,
        doc="weight α of log q(y|x) per labelled row; null: 0.1 N (Kingma et al.: 0.1 N / N_l)",
    )
    labelled_batch_size: int | None = num(
        None,
        ge=1,
        le=1 << 20,
        doc="labelled rows added to each step, cycled; null: min(train.batch_size, labelled)",
    )

"""Typed run configuration: the schema, YAML loading, ``key=value`` overrides, clear errors.

A run is one YAML file with the sections ``data``, ``model``, ``guide``, ``elbo``,
``adversarial``, ``optim``, ``train`` and ``output``. The ``model.family`` key (``vae``,
``flow`` or ``gan``) selects which fields the ``model`` section accepts.

This module is the schema and nothing else: types, ranges and YAML. Every key has a type and,
where it is a number, a range (``field(metadata=...)`` below), checked before anything is
built:

* an unknown key is an error naming the key and the nearest valid one;
* a bad value is an error naming the key, the value and the allowed values, type or range
  (NaN and infinities are refused for every number);
* names looked up in registries (data sets, guides, estimators, flows, losses) and checks
  that need the modelling code (a guide × estimator pair, data shape × architecture) are made
  by :func:`pyrogen.build.validate`, which the CLI and :func:`pyrogen.load_config` call.

Nothing in a config is ever imported or evaluated: YAML is read by the safe loader, with
aliases refused and a size limit, so reading a config is bounded in time and memory.

Example::

    >>> from pyrogen.config import load_config
    >>> cfg = load_config("configs/vae_digits.yaml", ["train.epochs=3", "guide.name=iaf"])
    >>> cfg.train.epochs
    3
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import os
import types
import typing
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Union

import yaml


class ConfigError(ValueError):
    """A user's mistake in a config file or override; the message says what and where."""


# --------------------------------------------------------------------------------------
# ranges
# --------------------------------------------------------------------------------------

MAX_WIDTH = 1 << 16  # hidden units, latent dimensions, channels
MAX_COUNT = 1 << 20  # particles, samples
MAX_STEPS = 1 << 40  # epochs, steps, cadences
MAX_SEED = (1 << 32) - 1  # numpy's seeds are 32-bit; torch's are 64-bit


def num(default: Any, *, ge: float | None = None, gt: float | None = None,
        le: float | None = None, lt: float | None = None, doc: str = "") -> Any:  # fmt: skip
    """A numeric field with its allowed range (every bound is inclusive unless ``gt``/``lt``)
    and its one-line ``doc`` (what ``pyrogen config --defaults`` prints)."""
    return field(default=default, metadata={"ge": ge, "gt": gt, "le": le, "lt": lt, "doc": doc})


def sizes(
    *default: int, max_len: int = 64, le: int = MAX_WIDTH, min_len: int = 1, doc: str = ""
) -> Any:
    """A list of layer widths, each in ``[1, le]``, ``min_len`` to ``max_len`` of them
    (``min_len=0``: ``[]`` is allowed and means no hidden layer, an affine map)."""
    return field(
        default_factory=lambda: list(default),
        metadata={"ge": 1, "le": le, "max_len": max_len, "min_len": min_len, "doc": doc},
    )


# --------------------------------------------------------------------------------------
# schema
# --------------------------------------------------------------------------------------


@dataclass
class DataConfig:
    """Which data, where its files live, and how it is preprocessed.

    ``name`` is a registered data set (``digits``, ``moons``, ``mnist``, ...), ``array`` (a
    ``.npy``/``.npz``/``.csv``/``.pt`` file at ``path``, or an array passed to
    :func:`pyrogen.train`), or ``image_folder`` (PNG/JPEG files under ``path``).
    """

    name: str = field(
        default="digits", metadata={"doc": "a registered data set, array or image_folder"}
    )
    path: str | None = field(
        default=None, metadata={"doc": "data.name=array: the file; image_folder: the folder"}
    )
    checksum: str | None = field(
        default=None,
        metadata={"doc": "sha256 of the user's data, recorded by the run that used it"},
    )
    root: str | None = field(
        default=None,
        metadata={"doc": "folder of data files; default $PYROGEN_DATA or a cache folder"},
    )
    download: bool = field(
        default=True, metadata={"doc": "download missing files (checked against known checksums)"}
    )
    binarize: Literal["none", "static", "dynamic"] = field(
        default="none",
        metadata={"doc": "binarise: static (one draw b ~ Bernoulli(x)) or dynamic (per batch)"},
    )
    dequantize: bool = field(
        default=False, metadata={"doc": "uniform dequantisation x -> (x * (L - 1) + u) / L"}
    )
    logit_lambda: float | None = num(
        None, ge=0.0, lt=0.5, doc="logit transform of lambda + (1 - 2 lambda) x (1e-6 for MNIST)"
    )
    standardize: bool | None = field(
        default=None,
        metadata={
            "doc": "points: (x - mean) / std per column; null: on for the user's points only"
        },
    )
    levels: int | None = num(None, ge=2, le=1 << 16, doc="intensity levels of a user's images")
    image_size: list[int] | None = field(
        default=None,
        metadata={"ge": 1, "le": 4096, "len": 2, "doc": "image_folder: resize images to [H, W]"},
    )
    valid_fraction: float = num(
        0.1, ge=0.0, lt=1.0, doc="validation share of user data without its own splits"
    )
    test_fraction: float = num(
        0.1, ge=0.0, lt=1.0, doc="test share of user data without its own splits"
    )
    num_train: int | None = num(
        None, ge=1, le=1 << 31, doc="training examples (toy sizes / a subset of files)"
    )
    num_valid: int | None = num(
        None, ge=1, le=1 << 31, doc="validation examples (toy sizes / a subset of files)"
    )
    num_test: int | None = num(
        None, ge=1, le=1 << 31, doc="test examples (toy sizes / a subset of files)"
    )
    noise: float | None = num(None, ge=0.0, le=1e3, doc="noise level of 2-D toy densities")
    flatten: bool = field(
        default=True, metadata={"doc": "images as vectors (MLPs) or C x H x W (conv nets)"}
    )


@dataclass
class VAEModelConfig:
    """z ~ N(0, I); x ~ likelihood(decoder(z))."""

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


@dataclass
class FlowModelConfig:
    """z ~ N(0, I); x = G(z) through a stack of Pyro TransformModules."""

    family: Literal["flow"] = field(
        default="flow", metadata={"doc": "the model family: vae, flow or gan"}
    )
    flow: str = field(
        default="realnvp",
        metadata={"doc": "the flow architecture (a name in pyrogen.registry.FLOWS)"},
    )
    num_layers: int = num(5, ge=1, le=1024, doc="transforms in the stack")
    hidden_sizes: list[int] = sizes(64, 64, doc="layer widths of each transform's network")
    count_bins: int = num(8, ge=2, le=1024, doc="neural spline flows: bins of each spline")
    bound: float = num(5.0, gt=0.0, le=1e6, doc="neural spline flows: the spline acts on [-B, B]")
    normalization: Literal["none", "batchnorm", "actnorm"] = field(
        default="none", metadata={"doc": "normalisation layer between transforms"}
    )
    permutation: Literal["reverse", "random"] = field(
        default="reverse", metadata={"doc": "permutation of dimensions between transforms"}
    )
    conditional: bool = field(default=False, metadata={"doc": "class-conditional p(x | y)"})
    num_classes: int = num(10, ge=2, le=MAX_COUNT, doc="conditional: number of classes y")


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


ModelConfig = VAEModelConfig | FlowModelConfig | GANModelConfig
MODEL_CONFIGS: dict[str, type] = {
    "vae": VAEModelConfig,
    "flow": FlowModelConfig,
    "gan": GANModelConfig,
}


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
    num_flows: int = num(2, ge=1, le=256, doc="iaf: number of inverse autoregressive steps")
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
        0, ge=0, le=MAX_STEPS, doc="KL weight β from 0 to 1 over these steps"
    )


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


@dataclass
class OptimConfig:
    """torch optimiser settings; ``lr_discriminator`` and ``betas`` also serve GANs.

    ``lr`` and ``betas`` left null take the learner's own default, the one its constructor
    has: 1e-3 and (0.9, 0.999) for VAEs and flows (``VariationalLearner``), 2e-4 and
    (0.5, 0.999) for GANs (``AdversarialLearner``; Radford et al. 2016)."""

    name: Literal["adam", "adamw", "sgd", "rmsprop"] = field(
        default="adam", metadata={"doc": "the torch optimiser"}
    )
    lr: float | None = num(None, gt=0.0, le=1e3, doc="learning rate; null: the learner's default")
    lr_discriminator: float | None = num(
        None, gt=0.0, le=1e3, doc="GAN: D's learning rate (default: lr)"
    )
    betas: list[float] | None = field(
        default=None,
        metadata={
            "ge": 0.0,
            "lt": 1.0,
            "len": 2,
            "doc": "adam, adamw: decay rates of the moment estimates; null: the learner's",
        },
    )
    momentum: float = num(0.0, ge=0.0, lt=1.0, doc="sgd, rmsprop: momentum")
    weight_decay: float = num(0.0, ge=0.0, le=1e3, doc="L2 penalty (adamw: decoupled weight decay)")
    clip_norm: float | None = num(
        None, gt=0.0, le=1e12, doc="gradient clipping by global norm (null: off)"
    )
    # learning-rate schedule over the run's steps: lr(t) = lr * f(t), t = step / total steps
    # constant: f = 1; cosine: f = m + (1 - m)(1 + cos(pi t)) / 2; exponential: f = decay ** epoch
    # (per epoch, smoothly), never below m = min_lr_ratio
    schedule: Literal["constant", "cosine", "exponential"] = field(
        default="constant",
        metadata={"doc": "learning-rate schedule lr(t) = lr * f(t) over the run's steps"},
    )
    decay: float = num(0.99, gt=0.0, le=1.0, doc="exponential: factor per epoch")
    min_lr_ratio: float = num(0.0, ge=0.0, le=1.0, doc="floor m of the schedule's factor f")


@dataclass
class TrainConfig:
    """The run loop."""

    epochs: int = num(10, ge=0, le=MAX_STEPS, doc="passes over the training split")
    max_steps: int | None = num(None, ge=1, le=MAX_STEPS, doc="stop after this many steps")
    batch_size: int = num(
        128, ge=1, le=1 << 24, doc="examples per step, over all torchrun processes"
    )
    seed: int = num(0, ge=0, le=MAX_SEED, doc="seed of every random stream of the run")
    device: str = field(default="auto", metadata={"doc": "auto, cpu, cuda or cuda:N"})
    eval_every: int = num(1, ge=0, le=MAX_STEPS, doc="validate every N epochs (0: never)")
    eval_batch_size: int = num(1000, ge=1, le=1 << 24, doc="examples per validation batch")
    checkpoint_every: int = num(
        1, ge=0, le=MAX_STEPS, doc="epochs between checkpoints (0: at the end)"
    )
    log_every: int = num(50, ge=1, le=MAX_STEPS, doc="steps between metric lines")
    monitor: str | None = field(
        default=None,
        metadata={
            "doc": "validation metric that picks best.pt (null: the family's; none: last only)"
        },
    )
    monitor_mode: Literal["auto", "max", "min"] = field(
        default="auto", metadata={"doc": "whether higher or lower is better; auto: the family's"}
    )
    early_stopping: int | None = num(
        None, ge=1, le=MAX_STEPS, doc="stop after N evaluations without a better monitor"
    )
    num_threads: int | Literal["auto"] = num(
        "auto",
        ge=1,
        le=1024,
        doc="torch CPU threads; auto: 1 for small models, else the free cores",
    )
    compile: bool = field(
        default=False,
        metadata={"doc": "torch.compile the family's networks (measured: bench/bench_cpu.py)"},
    )
    # float32, or the forward pass under torch.autocast in bfloat16 / float16 (with a gradient
    # scaler; CUDA only); flows train in float32 only
    precision: Literal[32, "bf16", "16-mixed"] = field(
        default=32,
        metadata={"doc": "float32, or autocast bfloat16 / float16 (CUDA only; not flows)"},
    )


@dataclass
class OutputConfig:
    """Where a run writes its files."""

    dir: str = field(default="runs", metadata={"doc": "parent folder of run folders"})
    name: str | None = field(
        default=None, metadata={"doc": "run folder name; default <config stem>-<timestamp>"}
    )
    metrics_format: Literal["jsonl", "csv"] = field(
        default="jsonl", metadata={"doc": "format of the metrics file"}
    )
    num_samples: int = num(64, ge=1, le=10_000, doc="samples in the PNG grid")
    tensorboard: bool | None = field(
        default=None, metadata={"doc": "TensorBoard event files; null: when it is installed"}
    )
    figures: bool = field(
        default=True, metadata={"doc": "samples.png, curves.png and the family's figures"}
    )
    overwrite: bool = field(
        default=False, metadata={"doc": "replace a run already in the folder (stored as false)"}
    )


@dataclass
class EvaluationConfig:
    """What ``pyrogen evaluate`` and ``pyrogen compare`` compute."""

    split: Literal["train", "valid", "test"] = "test"
    is_samples: int = num(1000, ge=1, le=MAX_COUNT)  # K of the importance-sampled log p(x)
    parzen_samples: int = num(10_000, ge=1, le=MAX_COUNT)  # samples in the Parzen window
    parzen_valid: int = num(1000, ge=1, le=1 << 31)  # validation examples that choose sigma
    parzen_sigmas: list[float] | None = field(  # default: 10 log-spaced values
        default=None, metadata={"gt": 0.0, "le": 1e6, "max_len": 1000}
    )
    quality_samples: int = num(1000, ge=2, le=MAX_COUNT)  # samples for MMD / Frechet distance
    max_test: int | None = num(None, ge=1, le=1 << 31)  # at most this many test examples
    bounds: list[str] = field(default_factory=list)  # VAE: extra bounds, "NAME" or "NAME:K"
    seed: int = num(0, ge=0, le=MAX_SEED)  # every metric draws from its own stream of this seed
    quiet: bool = True  # no progress bars or lines
    # what compare's sample metrics score: draws x ~ p(x), or (VAE) the decoder's means E[x|z]
    samples: Literal["draws", "means"] = "draws"
    num_threads: int | Literal["auto"] = num("auto", ge=1, le=1024)  # torch CPU threads


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: Any = field(default_factory=VAEModelConfig)  # one of MODEL_CONFIGS
    guide: GuideConfig = field(default_factory=GuideConfig)
    elbo: ELBOConfig = field(default_factory=ELBOConfig)
    adversarial: AdversarialConfig = field(default_factory=AdversarialConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    output: OutputConfig = field(default_factory=OutputConfig)
    #: the file it was read from (not part of the config itself: it names runs)
    source: str | None = field(default=None, compare=False, repr=False)

    @property
    def family(self) -> str:
        return self.model.family

    @property
    def name(self) -> str:
        """A name for runs of this config: the file's stem (a run folder's config.yaml gives
        the folder's name), else the family."""
        if self.source is None:
            return self.model.family
        path = Path(self.source)
        return path.parent.name if path.name == "config.yaml" and path.parent.name else path.stem

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out.pop("source")
        return out

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)


SECTIONS: dict[str, type] = {
    "data": DataConfig,
    "guide": GuideConfig,
    "elbo": ELBOConfig,
    "adversarial": AdversarialConfig,
    "optim": OptimConfig,
    "train": TrainConfig,
    "output": OutputConfig,
}


def schema_table(
    family: str | None = None, names: dict[str, list[str]] | None = None
) -> list[tuple[str, list[tuple[str, str, str, str, str]]]]:
    """Every key of the schema, section by section, as ``(heading, rows)``; a row is
    ``(section.key, type, default, allowed values, doc)`` read from the fields' types and
    metadata. ``family`` picks one model section (default: the model section of every family);
    ``names`` gives the allowed values of keys looked up in registries (e.g. ``data.name``)."""
    families = list(MODEL_CONFIGS) if family is None else [family]
    out = []
    for f in dataclasses.fields(Config):
        if f.name == "source":
            continue
        if f.name == "model":
            classes = [(f"model (model.family={fam})", MODEL_CONFIGS[fam]) for fam in families]
        else:
            classes = [(f.name, SECTIONS[f.name])]
        for heading, cls in classes:
            hints = typing.get_type_hints(cls)
            rows = []
            for item in dataclasses.fields(cls):
                key = f"{f.name}.{item.name}"
                meta = dict(item.metadata)
                allowed = ", ".join((names or {}).get(key, [])) or _allowed_text(
                    hints[item.name], meta
                )
                default = (
                    item.default_factory() if item.default is dataclasses.MISSING else item.default
                )  # type: ignore[misc]
                rows.append(
                    (
                        key,
                        _short_type(hints[item.name]),
                        _yaml_text(default),
                        allowed or "-",
                        meta.get("doc", ""),
                    )
                )
            summary = (cls.__doc__ or "").strip().split("\n")[0]
            out.append((f"{heading}: {summary}", rows))
    return out


def _short_type(tp: Any) -> str:
    """``int``, ``float|null``, ``list[int]``; a ``Literal`` by the types of its values."""
    origin = typing.get_origin(tp)
    if origin is Literal:
        return "|".join(dict.fromkeys(type(a).__name__ for a in typing.get_args(tp)))
    if origin in (Union, types.UnionType):
        return "|".join(dict.fromkeys(_short_type(a) for a in typing.get_args(tp)))
    if origin is list:
        return f"list[{_short_type(typing.get_args(tp)[0])}]"
    return "null" if tp is type(None) else getattr(tp, "__name__", str(tp))


def _yaml_text(value: Any) -> str:
    """A value as it is written in a config: ``null``, ``true``, ``[256, 256]``."""
    if value is None or isinstance(value, bool):
        return {None: "null", True: "true", False: "false"}[value]
    if isinstance(value, list):
        return "[" + ", ".join(_yaml_text(v) for v in value) + "]"
    return str(value)


def _allowed_text(tp: Any, meta: dict[str, Any]) -> str:
    """The range (``>= 0 and <= 10``), list lengths and ``Literal`` choices of a field."""
    leaves = _leaf_types(tp)
    choices = [
        str(a) for t in leaves if typing.get_origin(t) is Literal for a in typing.get_args(t)
    ]
    parts = []
    args = typing.get_args(tp) if typing.get_origin(tp) in (Union, types.UnionType) else (tp,)
    if any(typing.get_origin(a) is list for a in args):
        length = meta.get("len")
        count = (
            f"{length} items"
            if length
            else f"1..{meta['max_len']} items"
            if meta.get("max_len")
            else ""
        )
        each = f"each {_range_text(meta)}" if _range_text(meta) else ""
        parts.append(", ".join(p for p in (count, each) if p))
    else:
        parts.append(_range_text(meta))
    parts.append(", ".join(choices))
    return ", or ".join(p for p in parts if p)


# --------------------------------------------------------------------------------------
# validation of one value
# --------------------------------------------------------------------------------------


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if origin in (Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if origin is list:
        (inner,) = typing.get_args(tp)
        return f"a list of {_type_name(inner)}"
    if tp is type(None):
        return "null"
    return {int: "an integer", float: "a number", str: "a string", bool: "true or false"}.get(
        tp, getattr(tp, "__name__", str(tp))
    )


_FAIL = object()


def _coerce(value: Any, tp: Any) -> Any:
    """Return ``value`` as type ``tp``, or ``_FAIL``."""
    origin = typing.get_origin(tp)
    if origin is Literal:
        return value if value in typing.get_args(tp) else _FAIL
    if origin in (Union, types.UnionType):
        for arg in typing.get_args(tp):
            out = _coerce(value, arg)
            if out is not _FAIL:
                return out
        return _FAIL
    if origin is list:
        if not isinstance(value, list | tuple):
            return _FAIL
        (inner,) = typing.get_args(tp)
        items = [_coerce(v, inner) for v in value]
        return _FAIL if any(i is _FAIL for i in items) else items
    if tp is type(None):
        return None if value is None else _FAIL
    if tp is bool:
        return value if isinstance(value, bool) else _FAIL
    if tp is int:
        return value if isinstance(value, int) and not isinstance(value, bool) else _FAIL
    if tp is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            try:
                return float(value)
            except OverflowError:  # an integer beyond float's range
                return _FAIL
        if isinstance(value, str):  # YAML 1.1 reads "1e-3" as a string
            try:
                return float(value)
            except ValueError:
                return _FAIL
        return _FAIL
    if tp is str:  # a number where text is expected (output.name=1) is meant as text
        if isinstance(value, int | float) and not isinstance(value, bool):
            return str(value)
        return value if isinstance(value, str) else _FAIL
    return value


def _shown(value: Any, limit: int = 60) -> str:
    """``repr(value)``, shortened: error messages stay one short line."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 5] + " ..."


def _key(key: Any) -> str:
    """A key as written, shortened (keys come from the user's file)."""
    text = str(key).replace("\n", " ")
    return text if len(text) <= 40 else text[:35] + " ..."


def _range_text(meta: dict[str, Any]) -> str:
    parts = []
    for key, symbol in (("ge", ">="), ("gt", ">"), ("le", "<="), ("lt", "<")):
        if meta.get(key) is not None:
            bound = meta[key]
            parts.append(f"{symbol} {bound:g}" if isinstance(bound, float) else f"{symbol} {bound}")
    return " and ".join(parts)


def _check_number(value: Any, meta: dict[str, Any]) -> bool:
    if isinstance(value, float) and not math.isfinite(value):
        return False
    checks = (
        ("ge", lambda b: value >= b),
        ("gt", lambda b: value > b),
        ("le", lambda b: value <= b),
        ("lt", lambda b: value < b),
    )
    return all(meta.get(k) is None or ok(meta[k]) for k, ok in checks)


def _check_range(key: str, value: Any, tp: Any, meta: dict[str, Any]) -> None:
    """Raise :class:`ConfigError` unless ``value`` is finite and within the field's range."""
    if value is None or not meta:
        return
    kind = "a number" if float in _leaf_types(tp) else "an integer"
    if isinstance(value, list):
        length = meta.get("len")
        if length is not None and len(value) != length:
            raise ConfigError(
                f"bad value for '{key}': {_shown(value)}; expected a list of {length} numbers"
                + (f", each {_range_text(meta)}" if _range_text(meta) else "")
            )
        if meta.get("max_len") is not None and len(value) > meta["max_len"]:
            raise ConfigError(
                f"bad value for '{key}': a list of {len(value)} items; at most "
                f"{meta['max_len']} allowed"
            )
        if len(value) < meta.get("min_len", 1) and meta.get("max_len") is not None:
            raise ConfigError(f"bad value for '{key}': []; expected at least one size")
        for item in value:
            if not _check_number(item, meta):
                raise ConfigError(
                    f"bad value for '{key}': {_shown(value)}; each item must be finite and "
                    f"{_range_text(meta)}"
                )
        return
    if isinstance(value, int | float) and not isinstance(value, bool):
        if not _check_number(value, meta):
            finite = "a finite number" if kind == "a number" else kind
            raise ConfigError(
                f"bad value for '{key}': {_shown(value)}; expected {finite} {_range_text(meta)}"
            )


def _leaf_types(tp: Any) -> set[Any]:
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType, list):
        return set().union(*(_leaf_types(a) for a in typing.get_args(tp)))
    return {tp}


def build_section(cls: type, values: Any, path: str) -> Any:
    """Check ``values`` (a mapping) against dataclass ``cls``: known keys, types, ranges."""
    if values is None:
        values = {}
    if not isinstance(values, dict):
        raise ConfigError(f"{path}: expected a section of key: value pairs, got {_shown(values)}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in values.items():
        if key not in fields:
            close = difflib.get_close_matches(str(key), list(fields), n=1, cutoff=0.5)
            hint = f"; did you mean '{path}.{close[0]}'?" if close else ""
            raise ConfigError(
                f"unknown key '{path}.{_key(key)}'{hint} (valid keys in '{path}': "
                f"{', '.join(fields)})"
            )
        out = _coerce(value, hints[key])
        if out is _FAIL:
            raise ConfigError(
                f"bad value for '{path}.{key}': {_shown(value)}; expected {_type_name(hints[key])}"
            )
        _check_range(f"{path}.{key}", out, hints[key], dict(fields[key].metadata))
        kwargs[key] = out
    return cls(**kwargs)


def check_argument(section: type, key: str, value: Any, name: str | None = None) -> None:
    """Refuse a constructor argument outside the range of the config field ``section.key``
    (one source of ranges for Python and YAML); raises :class:`ConfigError` (a
    ``ValueError``) naming ``name`` (default ``key``), the value and the allowed range."""
    meta = dict(next(f for f in dataclasses.fields(section) if f.name == key).metadata)
    if isinstance(value, tuple):
        value = list(value)
    _check_range(name or key, value, typing.get_type_hints(section)[key], meta)


# --------------------------------------------------------------------------------------
# the whole config
# --------------------------------------------------------------------------------------


#: keys that were renamed: ``(section, old key) -> new key``. The old key is still read
#: (configs and run folders written before keep loading), with a FutureWarning naming both.
RENAMED_KEYS: dict[tuple[str, str], str] = {("adversarial", "generator_loss"): "loss"}


def _apply_renamed(raw: dict[str, Any]) -> dict[str, Any]:
    """``raw`` with every old key of :data:`RENAMED_KEYS` moved to its new name (a warning
    each); a section giving both the old and the new key is refused."""
    for (section, old), new in RENAMED_KEYS.items():
        values = raw.get(section)
        if not isinstance(values, dict) or old not in values:
            continue
        if new in values:
            raise ConfigError(
                f"'{section}.{old}' is the old name of '{section}.{new}': give only "
                f"{section}.{new}, not both"
            )
        warnings.warn(
            f"'{section}.{old}' is renamed '{section}.{new}'; read as {section}.{new}="
            f"{values[old]}",
            FutureWarning,
            stacklevel=4,
        )
        raw = {**raw, section: {(new if k == old else k): v for k, v in values.items()}}
    return raw


def from_dict(raw: dict[str, Any]) -> Config:
    """Validate a plain nested dict against the schema and return a :class:`Config`."""
    if not isinstance(raw, dict):
        raise ConfigError(f"a config must be a mapping of sections, got {type(raw).__name__}")
    raw = _apply_renamed(raw)
    allowed = ["model", *SECTIONS]
    for key in raw:
        if key not in allowed:
            close = difflib.get_close_matches(str(key), allowed, n=1, cutoff=0.5)
            hint = f"; did you mean '{close[0]}'?" if close else ""
            raise ConfigError(f"unknown section '{_key(key)}'{hint} (valid: {', '.join(allowed)})")
    sections = {name: build_section(cls, raw.get(name), name) for name, cls in SECTIONS.items()}
    model_raw = raw.get("model") or {}
    if not isinstance(model_raw, dict):
        raise ConfigError(f"model: expected a section of key: value pairs, got {_shown(model_raw)}")
    family = model_raw.get("family", "vae")
    if not isinstance(family, str) or family not in MODEL_CONFIGS:
        raise ConfigError(
            f"bad value for 'model.family': {_shown(family)}; expected one of "
            + ", ".join(repr(k) for k in MODEL_CONFIGS)
        )
    model = build_section(MODEL_CONFIGS[family], model_raw, "model")
    cfg = Config(model=model, **sections)
    check_schema(cfg)
    return cfg


def check_schema(cfg: Config) -> None:
    """Checks between keys that need nothing but the config itself."""
    d = cfg.data
    if d.logit_lambda == 0.0 and not d.dequantize:
        raise ConfigError(
            "data.logit_lambda=0 needs data.dequantize=true: pixels equal to 0 or 1 would map to "
            "-inf or +inf; use a small lambda (e.g. 1e-6) or dequantise"
        )
    if d.valid_fraction + d.test_fraction >= 1.0:
        raise ConfigError(
            f"data.valid_fraction + data.test_fraction = {d.valid_fraction + d.test_fraction:g}; "
            "expected < 1, so that some data remain for training"
        )
    if d.name in ("array", "image_folder") and d.num_train is not None:
        raise ConfigError(
            f"data.num_train applies to the built-in data sets, not to data.name={d.name}: "
            "use data.valid_fraction / data.test_fraction"
        )
    dev = cfg.train.device
    if not (dev in ("auto", "cpu", "cuda") or (dev.startswith("cuda:") and dev[5:].isdigit())):
        raise ConfigError(
            f"bad value for 'train.device': {_shown(dev)}; expected auto, cpu, cuda or cuda:N"
        )


# --------------------------------------------------------------------------------------
# loading
# --------------------------------------------------------------------------------------

MAX_CONFIG_BYTES = 1 << 20  # a config file is a few hundred bytes; refuse anything huge


class _SafeLoader(yaml.SafeLoader):
    """PyYAML's safe loader without aliases: ``*name`` references can expand a few bytes
    into gigabytes (the 'billion laughs'), and a config never needs them."""

    def compose_node(self, parent, index):  # type: ignore[no-untyped-def]
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise ConfigError(
                f"YAML aliases (*{event.anchor}) are not allowed in a config (line "
                f"{event.start_mark.line + 1}): write the value out"
            )
        return super().compose_node(parent, index)


def parse_yaml(text: str, where: str) -> Any:
    """``yaml.safe_load`` without aliases; a syntax error is one line naming ``where``."""
    try:
        return yaml.load(text, Loader=_SafeLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark
        at = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        raise ConfigError(f"{where}: not valid YAML: {e.problem or e.context}{at}") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{where}: not valid YAML: {str(e).splitlines()[0][:120]}") from None
    except RecursionError:
        raise ConfigError(f"{where}: not valid YAML: nested too deeply") from None


def parse_overrides(overrides: list[str]) -> dict[str, Any]:
    """``["train.epochs=3", "model.hidden_sizes=[64,64]"]`` -> nested dict.

    The value is read as YAML (so ``[64,64]`` is a list and ``1e-3`` a number); the key is a
    dotted path of plain names."""
    out: dict[str, Any] = {}
    for item in overrides:
        key, sep, text = item.partition("=")
        parts = key.split(".")
        if not sep or not key or not all(p.isidentifier() for p in parts):
            raise ConfigError(
                f"bad override {_shown(item)}; expected section.key=value, e.g. train.epochs=3"
            )
        if len(text) > 10_000:
            raise ConfigError(f"bad override for '{key}': value longer than 10,000 characters")
        value = parse_yaml(text, f"override {key}") if text.strip() else None
        if isinstance(value, str) and "${" in value:
            raise ConfigError(f"bad override for '{key}': interpolations (${{...}}) not supported")
        node = out
        for p in parts[:-1]:
            child = node.setdefault(p, {})
            if not isinstance(child, dict):
                raise ConfigError(f"bad override {_shown(item)}: '{p}' is set twice")
            node = child
        node[parts[-1]] = value
    return out


def merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    """``base`` with ``extra`` merged in, section by section (``extra`` wins)."""
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


def read_yaml_file(path: str | os.PathLike) -> dict[str, Any]:
    """A config file's mapping of sections; every problem is a one-line :class:`ConfigError`."""
    p = Path(path)
    if p.is_dir():
        raise ConfigError(f"{p} is a folder; expected a YAML config file")
    if not p.is_file():
        raise ConfigError(f"config file not found: {p}")
    try:
        size = p.stat().st_size
        if size > MAX_CONFIG_BYTES:
            raise ConfigError(f"{p}: {size:,} bytes; a config is at most {MAX_CONFIG_BYTES:,}")
        data = p.read_bytes()
    except OSError as e:
        raise ConfigError(f"{p}: cannot read ({e.strerror or e})") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(f"{p}: not UTF-8 text (byte {e.start}); save it as UTF-8") from None
    raw = parse_yaml(text, str(p))
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{p}: a config must be a mapping of sections")
    return raw


def load_config(
    path: str | os.PathLike | None = None, overrides: list[str] | None = None
) -> Config:
    """Read a YAML config, apply ``key=value`` overrides, check the schema, return a
    :class:`Config`. (:func:`pyrogen.load_config` also checks names and combinations.)"""
    raw = read_yaml_file(path) if path is not None else {}
    if overrides:
        raw = merge(raw, parse_overrides(overrides))
    cfg = from_dict(raw)
    cfg.source = None if path is None else str(path)
    return cfg


def save_config(cfg: Config, path: str | os.PathLike) -> None:
    """Write the resolved config; ``load_config(path)`` gives it back."""
    Path(path).write_text(cfg.to_yaml())

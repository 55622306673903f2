"""Typed run configuration: YAML files, ``key=value`` overrides and clear errors.

A run is one YAML file with the sections ``data``, ``model``, ``guide``, ``elbo``,
``adversarial``, ``optim``, ``train`` and ``output``. The ``model.family`` key (``vae``,
``flow`` or ``gan``) selects which fields the ``model`` section accepts.

Every key is checked against the dataclasses below before anything trains:

* an unknown key is an error naming the key and the nearest valid one;
* a bad value is an error naming the key, the value and the allowed values or type;
* names (data sets, guides, estimators, flows, losses) are checked against the registries in
  :mod:`pyrogen.registry`; nothing in a config is ever imported or evaluated.

Example::

    >>> from pyrogen.config import load_config
    >>> cfg = load_config("configs/vae_digits.yaml", ["train.epochs=3", "guide.name=iaf"])
    >>> cfg.train.epochs
    3
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Union

import yaml
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException


class ConfigError(ValueError):
    """A user's mistake in a config file or override; the message says what and where."""


# --------------------------------------------------------------------------------------
# schema
# --------------------------------------------------------------------------------------


@dataclass
class DataConfig:
    """Which data set, where its files live, and how it is preprocessed."""

    name: str = "digits"  # checked against pyrogen.registry.DATASETS
    root: str | None = None  # folder of data files; default $PYROGEN_DATA or a cache folder
    download: bool = True  # download missing files (checked against known checksums)
    binarize: Literal["none", "static", "dynamic"] = "none"
    dequantize: bool = False  # uniform dequantisation x -> (x * 255 + u) / 256
    logit_lambda: float | None = None  # logit transform with lambda (e.g. 1e-6 for MNIST)
    num_train: int | None = None  # size of generated toy splits / subset of file data
    num_valid: int | None = None
    num_test: int | None = None
    noise: float | None = None  # noise level of 2-D toy densities
    flatten: bool = True  # images as vectors (MLPs) or C x H x W (conv nets)


@dataclass
class VAEModelConfig:
    """z ~ N(0, I); x ~ likelihood(decoder(z))."""

    family: Literal["vae"] = "vae"
    latent_dim: int = 2
    likelihood: Literal["bernoulli", "gaussian"] = "bernoulli"
    # gaussian only: sigma from the decoder ("decoder"), one learned global sigma
    # per pixel ("learned"), or a fixed value ("fixed")
    scale: Literal["decoder", "learned", "fixed"] = "decoder"
    fixed_scale: float = 0.1
    min_scale: float = 1e-3
    architecture: Literal["mlp", "conv"] = "mlp"
    hidden_sizes: list[int] = field(default_factory=lambda: [256, 256])
    activation: Literal["relu", "tanh", "softplus", "elu", "leaky_relu"] = "relu"


@dataclass
class FlowModelConfig:
    """z ~ N(0, I); x = G(z) through a stack of Pyro TransformModules."""

    family: Literal["flow"] = "flow"
    flow: str = "realnvp"  # checked against pyrogen.registry.FLOWS
    num_layers: int = 5
    hidden_sizes: list[int] = field(default_factory=lambda: [64, 64])
    count_bins: int = 8  # neural spline flows
    bound: float = 5.0  # neural spline flows: the spline acts on [-bound, bound]
    normalization: Literal["none", "batchnorm", "actnorm"] = "none"
    permutation: Literal["reverse", "random"] = "reverse"
    conditional: bool = False  # class-conditional p(x | y)
    num_classes: int = 10


@dataclass
class GANModelConfig:
    """z ~ p_z; x = G(z); a discriminator D(x) = P(data | x)."""

    family: Literal["gan"] = "gan"
    latent_dim: int = 100
    prior: Literal["normal", "uniform"] = "normal"
    architecture: Literal["mlp", "conv"] = "mlp"
    hidden_sizes: list[int] = field(default_factory=lambda: [256, 256])
    discriminator_hidden_sizes: list[int] = field(default_factory=lambda: [256, 256])
    discriminator_dropout: float = 0.0
    spectral_norm: bool = False
    output: Literal["sigmoid", "tanh", "identity"] = "sigmoid"  # generator's last layer


ModelConfig = VAEModelConfig | FlowModelConfig | GANModelConfig
MODEL_CONFIGS: dict[str, type] = {
    "vae": VAEModelConfig,
    "flow": FlowModelConfig,
    "gan": GANModelConfig,
}


@dataclass
class GuideConfig:
    """The amortised variational family q(z | x) (VAE only)."""

    name: str = "diagonal_normal"  # checked against pyrogen.registry.GUIDES
    hidden_sizes: list[int] | None = None  # encoder; default: the decoder's, reversed
    rank: int = 2  # low_rank_normal
    num_flows: int = 2  # iaf: number of inverse autoregressive steps
    baseline: Literal["none", "decaying_average", "neural"] = "none"  # score_function
    baseline_beta: float = 0.9  # decay of the decaying-average baseline


@dataclass
class ELBOConfig:
    """Which of Pyro's ELBO estimators trains the model, and its options."""

    name: str = "trace"  # checked against pyrogen.registry.ELBOS
    num_particles: int = 1
    vectorize_particles: bool = False
    alpha: float = 0.0  # renyi: alpha = 0 is the IWAE bound
    tail_adaptive_beta: float = -1.0
    kl_warmup_steps: int = 0  # beta annealed linearly from 0 to 1 over these steps


@dataclass
class AdversarialConfig:
    """Goodfellow et al.'s Algorithm 1 and its common variants (GAN only)."""

    generator_loss: str = "non_saturating"  # checked against pyrogen.registry.GAN_LOSSES
    discriminator_steps: int = 1  # k D updates per G update
    gradient_penalty: float = 10.0  # wasserstein: weight of the gradient penalty
    r1_penalty: float = 0.0  # weight of the R1 penalty on data (0: off)
    ema_decay: float | None = None  # exponential moving average of G's weights


@dataclass
class OptimConfig:
    """torch optimiser settings; ``lr_discriminator`` and ``betas`` also serve GANs."""

    name: Literal["adam", "adamw", "sgd", "rmsprop"] = "adam"
    lr: float = 1e-3
    lr_discriminator: float | None = None  # GAN: D's learning rate (default: lr)
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    momentum: float = 0.0
    weight_decay: float = 0.0
    clip_norm: float | None = None  # gradient clipping by global norm


@dataclass
class TrainConfig:
    """The run loop."""

    epochs: int = 10
    max_steps: int | None = None  # stop after this many optimiser steps (overrides epochs)
    batch_size: int = 128
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    eval_every: int = 1  # evaluate on the validation split every N epochs (0: never)
    eval_batch_size: int = 1000
    checkpoint_every: int = 1  # epochs between checkpoints
    log_every: int = 50  # steps between metric lines


@dataclass
class OutputConfig:
    """Where a run writes its files."""

    dir: str = "runs"  # parent folder of run folders
    name: str | None = None  # run folder name; default <config stem>-<timestamp>
    metrics_format: Literal["jsonl", "csv"] = "jsonl"
    num_samples: int = 64  # samples in the PNG grid


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

    @property
    def family(self) -> str:
        return self.model.family

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)


# --------------------------------------------------------------------------------------
# validation
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
            return float(value)
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


def _build_section(cls: type, values: Any, path: str) -> Any:
    if values is None:
        values = {}
    if not isinstance(values, dict):
        raise ConfigError(f"{path}: expected a section of key: value pairs, got {values!r}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in values.items():
        if key not in names:
            close = difflib.get_close_matches(str(key), names, n=1, cutoff=0.5)
            hint = f"; did you mean '{path}.{close[0]}'?" if close else ""
            raise ConfigError(
                f"unknown key '{path}.{key}'{hint} (valid keys in '{path}': {', '.join(names)})"
            )
        out = _coerce(value, hints[key])
        if out is _FAIL:
            raise ConfigError(
                f"bad value for '{path}.{key}': {value!r}; expected {_type_name(hints[key])}"
            )
        kwargs[key] = out
    return cls(**kwargs)


_SECTIONS = {
    "data": DataConfig,
    "guide": GuideConfig,
    "elbo": ELBOConfig,
    "adversarial": AdversarialConfig,
    "optim": OptimConfig,
    "train": TrainConfig,
    "output": OutputConfig,
}


def from_dict(raw: dict[str, Any]) -> Config:
    """Validate a plain nested dict against the schema and return a :class:`Config`."""
    if not isinstance(raw, dict):
        raise ConfigError(f"a config must be a mapping of sections, got {type(raw).__name__}")
    allowed = ["model", *_SECTIONS]
    for key in raw:
        if key not in allowed:
            close = difflib.get_close_matches(str(key), allowed, n=1, cutoff=0.5)
            hint = f"; did you mean '{close[0]}'?" if close else ""
            raise ConfigError(f"unknown section '{key}'{hint} (valid: {', '.join(allowed)})")
    sections = {name: _build_section(cls, raw.get(name), name) for name, cls in _SECTIONS.items()}
    model_raw = raw.get("model") or {}
    if not isinstance(model_raw, dict):
        raise ConfigError(f"model: expected a section of key: value pairs, got {model_raw!r}")
    family = model_raw.get("family", "vae")
    if family not in MODEL_CONFIGS:
        raise ConfigError(
            f"bad value for 'model.family': {family!r}; expected one of "
            + ", ".join(repr(k) for k in MODEL_CONFIGS)
        )
    model = _build_section(MODEL_CONFIGS[family], model_raw, "model")
    cfg = Config(model=model, **sections)
    validate(cfg)
    return cfg


def validate(cfg: Config) -> None:
    """Checks that need more than one key: registry names and invalid combinations."""
    from pyrogen import registry

    registry.populate()
    _check_name(registry.DATASETS, cfg.data.name, "data.name")
    _positive(cfg.train.batch_size, "train.batch_size")
    _positive(cfg.train.epochs, "train.epochs", allow_zero=True)
    _positive(cfg.train.eval_batch_size, "train.eval_batch_size")
    _positive(cfg.elbo.num_particles, "elbo.num_particles")
    if cfg.optim.lr <= 0:
        raise ConfigError(f"bad value for 'optim.lr': {cfg.optim.lr!r}; expected a number > 0")
    if len(cfg.optim.betas) != 2 or not all(0 <= b < 1 for b in cfg.optim.betas):
        raise ConfigError(
            f"bad value for 'optim.betas': {cfg.optim.betas!r}; expected two numbers in [0, 1)"
        )
    dev = cfg.train.device
    if not (dev in ("auto", "cpu", "cuda") or (dev.startswith("cuda:") and dev[5:].isdigit())):
        raise ConfigError(
            f"bad value for 'train.device': {dev!r}; expected auto, cpu, cuda or cuda:N"
        )
    if cfg.data.logit_lambda is not None and not 0 <= cfg.data.logit_lambda < 0.5:
        raise ConfigError(
            f"bad value for 'data.logit_lambda': {cfg.data.logit_lambda!r}; expected 0 <= λ < 0.5"
        )
    if cfg.family == "vae":
        _check_name(registry.GUIDES, cfg.guide.name, "guide.name")
        _check_name(registry.ELBOS, cfg.elbo.name, "elbo.name")
        _positive(cfg.model.latent_dim, "model.latent_dim")
        from pyrogen.inference.elbo import check_compatible

        problem = check_compatible(cfg.guide, cfg.elbo)
        if problem:
            raise ConfigError(problem)
    elif cfg.family == "flow":
        _check_name(registry.FLOWS, cfg.model.flow, "model.flow")
        _positive(cfg.model.num_layers, "model.num_layers")
    elif cfg.family == "gan":
        _check_name(
            registry.GAN_LOSSES, cfg.adversarial.generator_loss, "adversarial.generator_loss"
        )
        _positive(cfg.adversarial.discriminator_steps, "adversarial.discriminator_steps")
        _positive(cfg.model.latent_dim, "model.latent_dim")


def _check_name(reg: Any, name: str, key: str) -> None:
    if name not in reg:
        close = difflib.get_close_matches(str(name), reg.names(), n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise ConfigError(
            f"bad value for '{key}': {name!r}{hint} (allowed: {', '.join(reg.names())})"
        )


def _positive(value: int, key: str, allow_zero: bool = False) -> None:
    if value < 0 or (value == 0 and not allow_zero):
        bound = ">= 0" if allow_zero else "> 0"
        raise ConfigError(f"bad value for '{key}': {value!r}; expected an integer {bound}")


# --------------------------------------------------------------------------------------
# loading
# --------------------------------------------------------------------------------------


def parse_overrides(overrides: list[str]) -> dict[str, Any]:
    """``["train.epochs=3", "model.hidden_sizes=[64,64]"]`` -> nested dict."""
    for item in overrides:
        if "=" not in item or item.startswith("="):
            raise ConfigError(f"bad override {item!r}; expected key=value, e.g. train.epochs=3")
    try:
        return OmegaConf.to_container(OmegaConf.from_dotlist(list(overrides)))  # type: ignore
    except OmegaConfBaseException as e:
        raise ConfigError(f"bad override: {e}") from None


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def load_config(
    path: str | os.PathLike | None = None, overrides: list[str] | None = None
) -> Config:
    """Read a YAML config, apply ``key=value`` overrides, validate, return a :class:`Config`."""
    raw: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config file not found: {p}")
        try:
            raw = yaml.safe_load(p.read_text()) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"{p}: not valid YAML: {e}") from None
        if not isinstance(raw, dict):
            raise ConfigError(f"{p}: a config must be a mapping of sections")
    if overrides:
        raw = _merge(raw, parse_overrides(overrides))
    return from_dict(raw)


def save_config(cfg: Config, path: str | os.PathLike) -> None:
    """Write the resolved config; ``load_config(path)`` gives it back."""
    Path(path).write_text(cfg.to_yaml())

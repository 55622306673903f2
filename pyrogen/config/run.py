"""The run's config: the sections every family shares (``data``, ``optim``, ``train``,
``output``; ``evaluation`` for ``pyrogen evaluate`` and ``compare``), the whole
:class:`Config`, the table of model sections :data:`MODEL_CONFIGS`, and reading a config
(:func:`read_config`: YAML file, overrides, the schema, keys that were renamed)."""

from __future__ import annotations

import dataclasses
import difflib
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from pyrogen.config.flow import FlowModelConfig
from pyrogen.config.gan import AdversarialConfig, GANModelConfig
from pyrogen.config.program import ProgramModelConfig
from pyrogen.config.schema import (
    MAX_COUNT,
    MAX_SEED,
    MAX_STEPS,
    ConfigError,
    _key,
    _shown,
    build_section,
    merge,
    num,
    parse_overrides,
    read_yaml_file,
    section_rows,
)
from pyrogen.config.ssvae import SSVAEModelConfig
from pyrogen.config.vae import ELBOConfig, GuideConfig, VAEModelConfig

# --------------------------------------------------------------------------------------
# the model section of each family
# --------------------------------------------------------------------------------------

ModelConfig = (
    VAEModelConfig | FlowModelConfig | GANModelConfig | ProgramModelConfig | SSVAEModelConfig
)
MODEL_CONFIGS: dict[str, type] = {
    "vae": VAEModelConfig,
    "flow": FlowModelConfig,
    "gan": GANModelConfig,
    "program": ProgramModelConfig,
    "ssvae": SSVAEModelConfig,
}

# --------------------------------------------------------------------------------------
# the sections every family shares
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
    context: list[str] | None = field(
        default=None,
        metadata={
            "max_len": 1000,
            "doc": "array: CSV columns / .npz arrays of a continuous context c",
        },
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
    labelled: int | None = num(
        None, ge=10, le=1 << 31, doc="semisupervised_mnist: labelled examples, balanced per class"
    )
    noise: float | None = num(None, ge=0.0, le=1e3, doc="noise level of 2-D toy densities")
    flatten: bool = field(
        default=True, metadata={"doc": "images as vectors (MLPs) or C x H x W (conv nets)"}
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
    metadata (:func:`~pyrogen.config.schema.section_rows`). ``family`` picks one model section
    (default: the model section of every family); ``names`` gives the allowed values of keys
    looked up in registries (e.g. ``data.name``)."""
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
            summary = (cls.__doc__ or "").strip().split("\n")[0]
            out.append((f"{heading}: {summary}", section_rows(cls, f.name, names)))
    return out


# --------------------------------------------------------------------------------------
# reading a config
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


def read_config(
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
    """Write the resolved config; ``read_config(path)`` gives it back."""
    Path(path).write_text(cfg.to_yaml())

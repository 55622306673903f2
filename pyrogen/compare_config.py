"""The config of ``pyrogen compare``: one data set and budget, one model per family.

A compare file shares ``data``, ``train`` and ``output`` between the families and gives each
family the sections only it needs::

    data: {name: moons, num_train: 4000}
    train: {epochs: 30, batch_size: 256, seed: 0}
    evaluation: {parzen_samples: 5000, quality_samples: 1000, is_samples: 500}
    vae:  {model: {latent_dim: 2}, guide: {name: diagonal_normal}}
    flow: {model: {flow: realnvp, num_layers: 6}}
    gan:  {model: {latent_dim: 2, output: identity}}

Each family's section is merged with the shared sections and validated exactly like a
training config (:func:`pyrogen.config.from_dict`), so error messages name the same keys.

The data, its splits and its preprocessing are shared, so that every family's likelihood is
a density in the same space (for images: dequantised pixels in [0, 1]). The one exception is
``data.logit_lambda``, which a family may set for itself (a flow usually does): the logit
transform is a bijection whose log-determinant is counted, so the likelihood is still
reported in the shared space.
"""

from __future__ import annotations

import difflib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from pyrogen.config import Config, ConfigError, _build_section, _merge, from_dict, parse_overrides

FAMILIES = ("vae", "flow", "gan")
SHARED = ("data", "train", "output")
#: the data keys a family may set for itself (see the module docstring)
FAMILY_DATA_KEYS = ("logit_lambda",)


@dataclass
class EvaluationConfig:
    """What ``pyrogen compare`` and ``pyrogen evaluate`` compute."""

    split: str = "test"
    is_samples: int = 1000  # K of the importance-sampled log p(x) (VAE)
    parzen_samples: int = 10_000  # generated samples in the Parzen window
    parzen_valid: int = 1000  # validation examples that choose sigma
    parzen_sigmas: list[float] | None = None  # default: 10 log-spaced values
    quality_samples: int = 1000  # samples for MMD / Frechet distance
    max_test: int | None = None  # evaluate on at most this many test examples
    bounds: list[str] = field(default_factory=list)  # VAE: extra bounds, "NAME" or "NAME:K"


@dataclass
class CompareConfig:
    evaluation: EvaluationConfig = field(default_factory=EvaluationConfig)
    runs: dict[str, Config] = field(default_factory=dict)


def compare_from_dict(raw: dict[str, Any]) -> CompareConfig:
    allowed = [*SHARED, "evaluation", *FAMILIES]
    for key in raw:
        if key not in allowed:
            close = difflib.get_close_matches(str(key), allowed, n=1, cutoff=0.5)
            hint = f"; did you mean '{close[0]}'?" if close else ""
            raise ConfigError(f"unknown section '{key}'{hint} (valid: {', '.join(allowed)})")
    evaluation = _build_section(EvaluationConfig, raw.get("evaluation"), "evaluation")
    if evaluation.split not in ("train", "valid", "test"):
        raise ConfigError(
            f"bad value for 'evaluation.split': {evaluation.split!r}; expected train, valid, test"
        )
    shared = {k: raw[k] for k in SHARED if k in raw}
    runs: dict[str, Config] = {}
    for family in FAMILIES:
        if family not in raw:
            continue
        section = raw[family] or {}
        if not isinstance(section, dict):
            raise ConfigError(f"{family}: expected a section of key: value pairs")
        for key in SHARED:
            if key == "data" and isinstance(section.get(key), dict):
                for data_key in section["data"]:
                    if data_key not in FAMILY_DATA_KEYS:
                        raise ConfigError(
                            f"'{family}.data.{data_key}' is shared by all families, so that "
                            f"their likelihoods are in one space: set it at the top level "
                            f"(a family may set only {', '.join(FAMILY_DATA_KEYS)})"
                        )
            elif key in section:
                raise ConfigError(
                    f"'{family}.{key}' is shared by all families: set it at the top level"
                )
        merged = _merge(shared, section)
        model = dict(merged.get("model") or {})
        if model.get("family", family) != family:
            raise ConfigError(f"'{family}.model.family' must be {family!r}")
        model["family"] = family
        merged["model"] = model
        try:
            runs[family] = from_dict(merged)
        except ConfigError as e:
            raise ConfigError(f"in section '{family}': {e}") from None
    if not runs:
        raise ConfigError(f"a compare config needs at least one of {', '.join(FAMILIES)}")
    return CompareConfig(evaluation=evaluation, runs=runs)


def load_compare_config(
    path: str | os.PathLike, overrides: list[str] | None = None
) -> CompareConfig:
    """Read and validate a compare YAML file with ``key=value`` overrides
    (``train.epochs=5``, ``flow.model.num_layers=4``)."""
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
    return compare_from_dict(raw)

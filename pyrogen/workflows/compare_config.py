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
from typing import Any

from pyrogen.build import validate
from pyrogen.config import (
    Config,
    ConfigError,
    EvaluationConfig,
    build_section,
    from_dict,
    merge,
    parse_overrides,
    read_yaml_file,
)
from pyrogen.families import FAMILIES

#: the families a compare config may name (sections), in the order compare trains them
COMPARED_FAMILIES = tuple(FAMILIES)
SHARED = ("data", "train", "output")
#: the data keys a family may set for itself (see the module docstring)
FAMILY_DATA_KEYS = ("logit_lambda",)


@dataclass
class CompareConfig:
    evaluation: EvaluationConfig = field(default_factory=EvaluationConfig)
    runs: dict[str, Config] = field(default_factory=dict)


def compare_from_dict(raw: dict[str, Any]) -> CompareConfig:
    allowed = [*SHARED, "evaluation", *COMPARED_FAMILIES]
    for key in raw:
        if key not in allowed:
            close = difflib.get_close_matches(str(key), allowed, n=1, cutoff=0.5)
            hint = f"; did you mean '{close[0]}'?" if close else ""
            raise ConfigError(f"unknown section '{key}'{hint} (valid: {', '.join(allowed)})")
    evaluation = build_section(EvaluationConfig, raw.get("evaluation"), "evaluation")
    shared = {k: raw[k] for k in SHARED if k in raw}
    runs: dict[str, Config] = {}
    for family in COMPARED_FAMILIES:
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
        merged = merge(shared, section)
        model = dict(merged.get("model") or {})
        if model.get("family", family) != family:
            raise ConfigError(f"'{family}.model.family' must be {family!r}")
        model["family"] = family
        merged["model"] = model
        try:
            runs[family] = validate(from_dict(merged))
        except ConfigError as e:
            raise ConfigError(f"in section '{family}': {e}") from None
    if not runs:
        raise ConfigError(f"a compare config needs at least one of {', '.join(COMPARED_FAMILIES)}")
    return CompareConfig(evaluation=evaluation, runs=runs)


def load_compare_config(
    path: str | os.PathLike, overrides: list[str] | None = None
) -> CompareConfig:
    """Read and validate a compare YAML file with ``key=value`` overrides
    (``train.epochs=5``, ``flow.model.num_layers=4``)."""
    raw = read_yaml_file(path)
    if overrides:
        raw = merge(raw, parse_overrides(overrides))
    return compare_from_dict(raw)

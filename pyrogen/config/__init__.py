"""Typed run configuration: the schema, YAML loading, ``key=value`` overrides, clear errors.

A run is one YAML file with the sections ``data``, ``model``, ``guide``, ``elbo``,
``adversarial``, ``optim``, ``train`` and ``output``. The ``model.family`` key (``vae``,
``flow`` or ``gan``) selects which fields the ``model`` section accepts.

This package is the schema and nothing else: types, ranges and YAML; it imports nothing else
of pyrogen. Every key has a type and, where it is a number, a range (``field(metadata=...)``),
checked before anything is built:

* an unknown key is an error naming the key and the nearest valid one;
* a bad value is an error naming the key, the value and the allowed values, type or range
  (NaN and infinities are refused for every number);
* names looked up in registries (data sets, guides, estimators, flows, losses) and checks
  that need the modelling code (a guide × estimator pair, data shape × architecture) are made
  by :func:`pyrogen.build.validate`, which the CLI and :func:`pyrogen.load_config` call.

Nothing in a config is ever imported or evaluated: YAML is read by the safe loader, with
aliases refused and a size limit, so reading a config is bounded in time and memory.

==========================  ===========================================================
module                      holds
==========================  ===========================================================
:mod:`~.schema`             the machinery: fields with ranges (``num``, ``sizes``),
                            coercion and range checks, ``build_section``,
                            ``check_argument``, YAML without aliases, overrides, ``merge``,
                            the rows of ``pyrogen config --defaults``
:mod:`~.vae`                ``VAEModelConfig``, ``GuideConfig``, ``ELBOConfig``
:mod:`~.flow`               ``FlowModelConfig``
:mod:`~.gan`                ``GANModelConfig``, ``AdversarialConfig``
:mod:`~.run`                the shared sections (data, optim, train, output, evaluation),
                            ``Config``, ``MODEL_CONFIGS``, ``SECTIONS``, ``from_dict``,
                            ``read_config``, renamed keys
==========================  ===========================================================

A new family's ``model`` section is one new module beside ``vae.py``, ``flow.py`` and
``gan.py`` (a dataclass whose ``family`` field is ``Literal["<name>"]``) plus its entry in
:data:`~pyrogen.config.run.MODEL_CONFIGS`; a section of its own besides ``model`` (as
``guide`` or ``adversarial``) is also a field of :class:`Config` and an entry in
:data:`~pyrogen.config.run.SECTIONS`.

:func:`read_config` checks the schema only; :func:`pyrogen.load_config` reads with it and then
makes the checks that need the modelling code.

Example::

    >>> from pyrogen.config import read_config
    >>> cfg = read_config("configs/vae_digits.yaml", ["train.epochs=3", "guide.name=iaf"])
    >>> cfg.train.epochs
    3
"""

from __future__ import annotations

import warnings
from typing import Any

from pyrogen.config.flow import FlowModelConfig
from pyrogen.config.gan import AdversarialConfig, GANModelConfig
from pyrogen.config.program import ProgramModelConfig
from pyrogen.config.run import (
    MODEL_CONFIGS,
    RENAMED_KEYS,
    SECTIONS,
    Config,
    DataConfig,
    EvaluationConfig,
    ModelConfig,
    OptimConfig,
    OutputConfig,
    TrainConfig,
    check_schema,
    from_dict,
    read_config,
    save_config,
    schema_table,
)
from pyrogen.config.schema import (
    MAX_CONFIG_BYTES,
    MAX_COUNT,
    MAX_SEED,
    MAX_STEPS,
    MAX_WIDTH,
    ConfigError,
    build_section,
    check_argument,
    merge,
    num,
    parse_overrides,
    parse_yaml,
    read_yaml_file,
    section_rows,
    sizes,
)
from pyrogen.config.vae import ELBOConfig, GuideConfig, VAEModelConfig

__all__ = [
    "MAX_CONFIG_BYTES",
    "MAX_COUNT",
    "MAX_SEED",
    "MAX_STEPS",
    "MAX_WIDTH",
    "MODEL_CONFIGS",
    "RENAMED_KEYS",
    "SECTIONS",
    "AdversarialConfig",
    "Config",
    "ConfigError",
    "DataConfig",
    "ELBOConfig",
    "EvaluationConfig",
    "FlowModelConfig",
    "GANModelConfig",
    "GuideConfig",
    "ModelConfig",
    "OptimConfig",
    "OutputConfig",
    "ProgramModelConfig",
    "TrainConfig",
    "VAEModelConfig",
    "build_section",
    "check_argument",
    "check_schema",
    "from_dict",
    "merge",
    "num",
    "parse_overrides",
    "parse_yaml",
    "read_config",
    "read_yaml_file",
    "save_config",
    "schema_table",
    "section_rows",
    "sizes",
]


def __getattr__(name: str) -> Any:
    """``pyrogen.config.load_config``, the old name of :func:`read_config`, still works with a
    DeprecationWarning (it reads the schema only; :func:`pyrogen.load_config` checks more)."""
    if name == "load_config":
        warnings.warn(
            "pyrogen.config.load_config is renamed pyrogen.config.read_config (the schema "
            "only); pyrogen.load_config also makes the checks that need the modelling code",
            DeprecationWarning,
            stacklevel=2,
        )
        return read_config
    raise AttributeError(f"module 'pyrogen.config' has no attribute {name!r}")

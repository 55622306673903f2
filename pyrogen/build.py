"""From a config to objects: the one place where config values become constructor arguments.

:func:`validate` makes the checks that need the modelling code (registry names, guide ×
estimator pairs); :func:`build` loads the data and asks the family table
(:mod:`pyrogen.families`) for the model and its learner. A user with their own ``nn.Module``s
calls the same constructors (``VAE``, ``Flow``, ``GAN``) directly.

=======  ============================================  ===============================
family   generative process (``pyrogen.models``)       learning method
=======  ============================================  ===============================
vae      :class:`~pyrogen.models.vae.VAE`              variational inference (ELBO)
flow     :class:`~pyrogen.models.flow.Flow`            maximum likelihood (ELBO, no z)
gan      :class:`~pyrogen.models.gan.GAN`              adversarial training
=======  ============================================  ===============================
"""

from __future__ import annotations

import os
from typing import Any

import pyro
import torch

from pyrogen.config import Config, ConfigError, read_config
from pyrogen.data import Dataset, load_dataset
from pyrogen.families import family_of
from pyrogen.inference.base import Learner
from pyrogen.registry import DATASETS, check_name
from pyrogen.runtime import available_memory, resolve_device, tensorboard_available


def validate(cfg: Config, has_data: bool = False) -> Config:
    """Every check that can be made before reading data: registry names, combinations, the
    device. ``has_data``: the data come from Python (``pyrogen.train(cfg, data=...)``)."""
    d = cfg.data
    if not has_data:
        check_name(DATASETS, d.name, "data.name")
        if d.name in ("array", "image_folder") and not d.path:
            what = "a .npy/.npz/.csv/.pt file" if d.name == "array" else "a folder of images"
            raise ConfigError(
                f"data.name={d.name} needs data.path ({what}), or pass the data from Python: "
                "pyrogen.train(cfg, data=x)"
            )
    if d.context is not None and has_data:
        raise ConfigError(
            "data.context names columns of a data.name=array file; with data from Python "
            "pass the context itself: pyrogen.train(cfg, data=x, context=c)"
        )
    if d.context is not None and d.name != "array":
        raise ConfigError(
            f"data.context names columns of a data.name=array file, not of data.name={d.name}"
        )
    family = family_of(cfg)
    family.check_kl_weights(cfg)
    family.validate(cfg)
    family.monitor_of(cfg)
    device = resolve_device(cfg.train.device)
    if cfg.train.precision == "16-mixed" and device.type != "cuda":
        raise ConfigError(
            "train.precision=16-mixed (float16 autocast with a gradient scaler) needs CUDA; on "
            f"{device.type} use train.precision=bf16 (or 32)"
        )
    if cfg.output.tensorboard:
        if not tensorboard_available():
            raise ConfigError(
                "output.tensorboard=true needs the tensorboard package: pip install tensorboard "
                "(or set output.tensorboard=false)"
            )
    return cfg


def load_config(
    path: str | os.PathLike | None = None, overrides: list[str] | None = None
) -> Config:
    """Read a YAML config with ``key=value`` overrides and check everything that can be
    checked before reading data (:func:`pyrogen.config.read_config` checks the schema only).

    Example::

        >>> cfg = load_config("configs/vae_digits.yaml", ["guide.name=iaf"])
        >>> cfg.guide.name
        'iaf'
    """
    return validate(read_config(path, overrides))


#: bytes per parameter while training: the value, its gradient and Adam's two moments
BYTES_PER_PARAMETER = 16


def check_size(cfg: Config, dataset: Dataset, device: torch.device) -> None:
    """Refuse, before allocating anything, a model whose parameters (with their gradients and
    optimiser state) would not fit in the memory available on ``device``."""
    n = family_of(cfg).estimate_parameters(cfg, dataset)
    need = n * BYTES_PER_PARAMETER
    free = available_memory(device)
    if free is not None and need > 0.8 * free:
        raise ConfigError(
            f"the model would have about {n:,} parameters ({need / 2**30:.1f} GiB with their "
            f"gradients and optimiser state), more than the {free / 2**30:.1f} GiB free on "
            f"{device.type}: reduce model.hidden_sizes (or model.latent_dim, model.num_layers)"
        )


def build_model(
    cfg: Config, dataset: Dataset, device: torch.device | str = "cpu"
) -> torch.nn.Module:
    """The generative process of ``cfg.model.family`` for data shaped like ``dataset``."""
    family = family_of(cfg)
    family.check_data(cfg, dataset)
    check_size(cfg, dataset, torch.device(device))
    return family.build_model(cfg, dataset)


def build_learner(cfg: Config, model: torch.nn.Module) -> Learner:
    """The learning method of the model's family, with its optimiser(s)."""
    return family_of(cfg).build_learner(cfg, model)


def build(
    cfg: Config,
    device: torch.device | str | None = None,
    data: Any = None,
    program: tuple[torch.nn.Module, torch.nn.Module | None] | None = None,
) -> tuple[Dataset, Learner]:
    """Load the data set (or the user's ``data``) onto ``device`` and build the model and its
    learner there. Parameters are initialised from ``train.seed``. ``program``: the user's
    Pyro ``(model, guide)`` of a ``model.family=program`` config (their parameters are theirs:
    the seed does not touch them)."""
    validate(cfg, has_data=data is not None)
    device = resolve_device(cfg.train.device) if device is None else torch.device(device)
    pyro.set_rng_seed(cfg.train.seed)
    dataset = load_dataset(cfg.data, device, seed=cfg.train.seed, data=data)
    family = family_of(cfg)
    if program is not None or family.from_python:
        if program is None:  # reached through build_model's one line
            family.build_model(cfg, dataset)
        model = family.from_program(cfg, dataset, *program)
    else:
        model = build_model(cfg, dataset, device).to(device)
    if cfg.train.compile:
        for net in family_of(cfg).networks(model):
            net.compile()  # in place: parameter names, and so checkpoints, are unchanged
    learner = build_learner(cfg, model)
    family_of(cfg).attach_data(learner, dataset)
    learner.module.to(device)
    return dataset, learner

"""From a validated :class:`~pyrogen.config.Config` to objects: data set, model, learner.

This is where the families meet the learning methods:

=======  ============================================  ===============================
family   generative process (``pyrogen.models``)       learning method
=======  ============================================  ===============================
vae      :class:`~pyrogen.models.vae.VAE`              variational inference (ELBO)
flow     :class:`~pyrogen.models.flow.Flow`            maximum likelihood (ELBO, no z)
gan      :class:`~pyrogen.models.gan.GAN`              adversarial training
=======  ============================================  ===============================
"""

from __future__ import annotations

import pyro
import torch

from pyrogen.config import Config
from pyrogen.data import Dataset, load_dataset
from pyrogen.inference.base import Learner
from pyrogen.inference.variational import EmptyGuide, VariationalLearner
from pyrogen.registry import ELBOS, GUIDES


def resolve_device(name: str) -> torch.device:
    """``auto`` is CUDA when available, else CPU; ``cuda:N`` must exist."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"train.device is {name!r} but CUDA is not available here")
    if device.type == "cuda" and device.index is not None:
        if device.index >= torch.cuda.device_count():
            raise RuntimeError(
                f"train.device is {name!r} but only {torch.cuda.device_count()} GPU(s) exist"
            )
    return device


def build_model(cfg: Config, dataset: Dataset) -> torch.nn.Module:
    """The generative process of ``cfg.model.family`` for data shaped like ``dataset``."""
    family = cfg.model.family
    if family == "vae":
        from pyrogen.models.vae import VAE

        return VAE(cfg.model, dataset.event_shape, image_shape=dataset.image_shape)
    if family == "flow":
        from pyrogen.models.flow import Flow

        return Flow(cfg.model, dataset.event_shape, image_shape=dataset.image_shape)
    if family == "gan":
        from pyrogen.models.gan import GAN

        return GAN(cfg.model, dataset.event_shape, image_shape=dataset.image_shape)
    raise ValueError(f"unknown model family {family!r}")


def build_learner(cfg: Config, model: torch.nn.Module) -> Learner:
    """The learning method of the model's family, with its optimiser(s)."""
    o = cfg.optim
    if cfg.model.family == "gan":
        from pyrogen.inference.adversarial import AdversarialLearner

        return AdversarialLearner.from_config(model, cfg)
    if cfg.model.family == "vae":
        guide = GUIDES.get(cfg.guide.name)(cfg.guide, model)
        elbo = ELBOS.get(cfg.elbo.name)(cfg.elbo)
        warmup = cfg.elbo.kl_warmup_steps
    else:  # flow: maximum likelihood = the ELBO of a model with no latent sites
        guide = EmptyGuide()
        elbo = pyro.infer.Trace_ELBO()
        warmup = 0
    return VariationalLearner(
        model,
        guide,
        elbo,
        optim=o.name,
        lr=o.lr,
        betas=o.betas,
        momentum=o.momentum,
        weight_decay=o.weight_decay,
        clip_norm=o.clip_norm,
        kl_warmup_steps=warmup,
    )


def build(cfg: Config, device: torch.device | str | None = None) -> tuple[Dataset, Learner]:
    """Load the data set onto ``device`` and build the model and its learner there."""
    device = resolve_device(cfg.train.device) if device is None else torch.device(device)
    pyro.set_rng_seed(cfg.train.seed)
    dataset = load_dataset(cfg.data, device)
    model = build_model(cfg, dataset).to(device)
    learner = build_learner(cfg, model)
    learner.module.to(device)
    return dataset, learner

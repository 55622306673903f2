"""What every family tells the rest of pyrogen: how to build its model and learner from a
config, what it evaluates and which figures it draws.

The run loop, evaluation, ``compare`` and the CLI ask :data:`pyrogen.families.FAMILIES`
(``FAMILIES[cfg.family]``) and never test a family's name themselves.
"""

from __future__ import annotations

from typing import Any

from pyro.infer import ELBO
from torch import nn

from pyrogen.config import Config, ConfigError
from pyrogen.data import Dataset
from pyrogen.inference.base import Learner
from pyrogen.inference.elbo import check_compatible, make_elbo


class Family:
    """One family of deep generative models (subclasses: VAE, flow, GAN)."""

    #: ``model.family`` value
    name: str = ""
    #: what the family's ``log-likelihood`` columns mean, for tables
    description: str = ""
    #: the validation metrics the learner reports, each with the direction that is better
    #: (``"max"``, ``"min"``, or ``None`` where neither is: a GAN's losses)
    validation_metrics: dict[str, str | None] = {}
    #: the metric ``train.monitor`` follows by default (``best.pt``), or ``None``
    monitor: str | None = None
    #: why ``elbo.beta`` and ``elbo.free_bits`` (weights on a VAE's KL(q(z|x) ‖ p(z))) do not
    #: apply to this family, or ``None`` where they do
    no_latent_kl: str | None = None

    def check_kl_weights(self, cfg: Config) -> None:
        """Refuse ``elbo.beta`` ≠ 1 and ``elbo.free_bits`` > 0 where :attr:`no_latent_kl`."""
        if self.no_latent_kl is None:
            return
        e = cfg.elbo
        for key, value, unset, what in (
            ("free_bits", e.free_bits, 0.0, "floors the KL of a VAE's latent dimensions"),
            ("beta", e.beta, 1.0, "weighs KL(q(z|x) ‖ p(z)) in a VAE's ELBO"),
        ):
            if value != unset:
                raise ConfigError(
                    f"elbo.{key}={value} {what}; {self.no_latent_kl} (remove elbo.{key})"
                )

    #: the model is given from Python (``pyrogen.train(cfg, model=..., guide=...)``), never
    #: built from the config
    from_python: bool = False

    # ------------------------------------------------------------------ config -> objects
    def validate(self, cfg: Config) -> None:
        """Checks that need the modelling code (registry names, compatible pairs), before
        any data is read. Raises :class:`ConfigError` naming the keys."""

    def check_data(self, cfg: Config, data: Dataset) -> None:
        """Checks between the config and the data (shape vs architecture, binary data under
        a Bernoulli likelihood). Raises :class:`ConfigError` naming the keys."""

    def build_model(self, cfg: Config, data: Dataset) -> nn.Module:  # pragma: no cover
        """The generative process for examples shaped like ``data``'s, from plain arguments."""
        raise NotImplementedError

    def build_learner(self, cfg: Config, model: nn.Module) -> Learner:  # pragma: no cover
        """The family's learning method with its optimiser(s)."""
        raise NotImplementedError

    def from_program(
        self, cfg: Config, data: Dataset, model: nn.Module, guide: nn.Module | None
    ) -> nn.Module:
        """The model of a Pyro program given from Python (the program family only)."""
        raise ConfigError(
            f"model= and guide= train a Pyro program of your own (model.family=program); a "
            f"{self.name} is built from its config"
        )

    def attach_data(self, learner: Learner, data: Dataset) -> None:
        """Give the learner what it draws from the data itself, beyond the loop's batches
        (the semi-supervised learner's labelled set); nothing for most families."""

    def estimate_parameters(self, cfg: Config, data: Dataset) -> int:
        """About how many parameters :meth:`build_model` would allocate (the sum of the weight
        matrices of its networks), computed from the config before allocating anything."""
        return 0

    def networks(self, model: nn.Module) -> list[nn.Module]:
        """The networks ``train.compile`` compiles (the rest is Pyro's own code)."""
        return []

    def monitor_of(self, cfg: Config) -> tuple[str, str] | None:
        """``(metric, "max" | "min")`` that picks ``best.pt`` (``train.monitor``,
        ``train.monitor_mode``), or ``None`` when only the last checkpoint is kept. Raises
        :class:`ConfigError` for a metric this family does not report, or one without a
        direction and no ``train.monitor_mode``."""
        t = cfg.train
        name = t.monitor
        if name is None:  # the family's metric, where the run validates at all
            name = self.monitor if t.eval_every else None
        if name == "none" or name is None:
            if t.early_stopping is not None:
                raise ConfigError(
                    f"train.early_stopping={t.early_stopping} needs a validation metric to "
                    f"follow: set train.monitor (one of {', '.join(self.validation_metrics)})"
                )
            return None
        if name not in self.validation_metrics:
            raise ConfigError(
                f"bad value for 'train.monitor': {name!r}; a {self.name} reports "
                f"{', '.join(self.validation_metrics) or 'no validation metric'} (or 'none')"
            )
        if t.eval_every == 0:
            raise ConfigError(
                f"train.monitor={name} follows a validation metric, but train.eval_every=0 "
                "never validates: set train.eval_every >= 1 or train.monitor=none"
            )
        mode = self.validation_metrics[name] if t.monitor_mode == "auto" else t.monitor_mode
        if mode is None:
            raise ConfigError(
                f"train.monitor={name} has no better direction of its own: set "
                "train.monitor_mode=max or min"
            )
        return name, mode

    def uses_labels(self, cfg: Config) -> bool:
        """Whether the model takes the class labels ``y`` (a class-conditional flow)."""
        return False


def conv_shape_problem(image_shape: tuple[int, ...] | None, key: str) -> str | None:
    """Why ``architecture: conv`` cannot take these examples, or ``None``."""
    if image_shape is None:
        return f"{key}=conv needs image data; these data are points (use {key}=mlp)"
    _, h, w = image_shape
    if h % 4 or w % 4:
        return (
            f"{key}=conv halves the image twice, so height and width must be multiples of 4; "
            f"these images are {h}x{w} (use {key}=mlp)"
        )
    return None


def check_conv_shape(cfg: Config, data: Dataset) -> None:
    """Refuse ``model.architecture=conv`` (VAE, GAN) for data it cannot take."""
    if cfg.model.architecture == "conv":
        problem = conv_shape_problem(data.image_shape, "model.architecture")
        if problem:
            raise ConfigError(problem)


def check_class_labels(cfg: Config, data: Dataset) -> None:
    """A conditional model (``model.conditional=true``) needs a context c in the data: class
    labels (at most ``model.num_classes`` classes) or a continuous context (``data.context``
    columns, ``context=`` from Python)."""
    m = cfg.model
    if not m.conditional:
        return
    if data.context_dim is not None:
        return
    if data.num_classes is None:
        raise ConfigError(
            f"model.conditional=true needs class labels or a context (data.context); "
            f"data.name={data.name} has neither"
        )
    if data.num_classes > m.num_classes:
        raise ConfigError(
            f"model.num_classes={m.num_classes} but data.name={data.name} has "
            f"{data.num_classes} classes"
        )


def conditioning(cfg: Config, data: Dataset) -> dict[str, int | None]:
    """The model's ``num_classes`` and ``context_dim`` (:mod:`pyrogen.models.context`): None
    for an unconditional model, ``model.num_classes`` for class labels, the data's width C for
    a continuous context."""
    if not cfg.model.conditional:
        return {"num_classes": None, "context_dim": None}
    if data.context_dim is not None:
        return {"num_classes": None, "context_dim": data.context_dim}
    return {"num_classes": cfg.model.num_classes, "context_dim": None}


def check_estimator(guide: str, cfg: Config, **facts: Any) -> None:
    """Refuse the pair of the guide called ``guide`` and the config's estimator (``elbo``
    section) where :func:`~pyrogen.inference.elbo.check_compatible` finds it cannot work;
    ``facts``: the model's (``baseline``, ``prior``)."""
    e = cfg.elbo
    problem = check_compatible(
        guide,
        e.name,
        num_particles=e.num_particles,
        vectorize_particles=e.vectorize_particles,
        alpha=e.alpha,
        kl_warmup_steps=e.kl_warmup_steps,
        beta=e.beta,
        free_bits=e.free_bits,
        **facts,
    )
    if problem:
        raise ConfigError(problem)


def estimator(cfg: Config) -> ELBO:
    """The Pyro estimator the config's ``elbo`` section names, with its options."""
    e = cfg.elbo
    return make_elbo(
        e.name,
        num_particles=e.num_particles,
        vectorize_particles=e.vectorize_particles,
        alpha=e.alpha,
        tail_adaptive_beta=e.tail_adaptive_beta,
    )


def set_options(optim: Any) -> dict[str, Any]:
    """The optimiser settings a config leaves null to the learner (``optim.lr``,
    ``optim.betas``) that it does set: the learner's constructor keeps its own defaults for
    the others, so a config and ``Learner(model)`` build the same optimiser."""
    return {k: getattr(optim, k) for k in ("lr", "betas") if getattr(optim, k) is not None}


def learner_options(cfg: Config) -> dict[str, Any]:
    """The learner's constructor options that every family takes from the ``optim`` and
    ``train`` sections: the optimiser, its momentum, weight decay and gradient clipping, the
    precision, and the settings of :func:`set_options`."""
    o = cfg.optim
    return {
        "optim": o.name,
        "momentum": o.momentum,
        "weight_decay": o.weight_decay,
        "clip_norm": o.clip_norm,
        "precision": cfg.train.precision,
        **set_options(o),
    }


def mlp_size(widths: list[int]) -> int:
    """Weights and biases of an MLP through ``widths`` (input, hidden..., output)."""
    return sum(a * b + b for a, b in zip(widths[:-1], widths[1:], strict=True))

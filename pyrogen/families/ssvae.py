"""The semi-supervised VAE family (``model.family=ssvae``, M2 of Kingma et al. 2014): config
-> classifier, encoder, decoder -> :class:`~pyrogen.models.ssvae.SSVAE`, trained with
``TraceEnum_ELBO`` (unlabelled y summed out) by a
:class:`~pyrogen.inference.semisupervised.SemiSupervisedLearner` that adds a cycled labelled
batch to every step; validated by the classification accuracy of q(y | x)."""

from __future__ import annotations

from torch import nn

from pyrogen.config import Config, ConfigError
from pyrogen.data import Dataset
from pyrogen.families.base import Family, learner_options, mlp_size
from pyrogen.inference.elbo import make_elbo
from pyrogen.inference.semisupervised import SemiSupervisedLearner
from pyrogen.models.ssvae import SSVAE
from pyrogen.nets import MLP

#: the estimators that sum the unlabelled y out
ENUMERATING_ELBOS = ("trace_enum",)


def labelled_rows(data: Dataset) -> int:
    """How many training rows carry a label (the others are -1: unlabelled)."""
    y = data.labels("train")
    return 0 if y is None else int((y >= 0).sum())


def alpha_of(cfg: Config, data: Dataset) -> float:
    """α, the weight of log q(y | x) per labelled example: ``model.alpha``, or 0.1 N with N
    the training rows. Kingma et al. 2014 (eq. 9) weigh the labelled *mean* by 0.1 N, i.e.
    0.1 N / N_l per labelled example (``model.alpha``: that value; Pyro's example uses 46);
    the default is N_l times that, so the classification term drives q(y | x) and the
    unlabelled U(x) hardly moves it: accuracy is that of a classifier of the labelled rows,
    which the paper's weight gives up in short runs (README, SSVAE)."""
    a = cfg.model.alpha
    return 0.1 * data.train.shape[0] if a is None else float(a)


def labelled_batch_size(cfg: Config, n_labelled: int) -> int:
    """B_l: ``model.labelled_batch_size`` or ``train.batch_size``, at most the labelled rows."""
    b = cfg.model.labelled_batch_size or cfg.train.batch_size
    return max(1, min(b, n_labelled))


class SSVAEFamily(Family):
    name = "ssvae"
    description = "semi-supervised VAE (M2): ELBO with y summed out, accuracy of q(y | x)"
    validation_metrics = {"accuracy": "max", "elbo": "max"}
    monitor = "accuracy"

    def validate(self, cfg: Config) -> None:
        if cfg.elbo.name not in ENUMERATING_ELBOS:
            raise ConfigError(
                f"model.family=ssvae sums the unlabelled y out: elbo.name must be "
                f"{' or '.join(ENUMERATING_ELBOS)}, not {cfg.elbo.name}"
            )
        if cfg.elbo.beta != 1.0 or cfg.elbo.kl_warmup_steps:
            raise ConfigError(
                "model.family=ssvae trains M2's objective: elbo.beta=1 and "
                "elbo.kl_warmup_steps=0 (a β would also weigh the enumerated y)"
            )

    def check_data(self, cfg: Config, data: Dataset) -> None:
        n = labelled_rows(data)
        if data.num_classes is None or n == 0:
            raise ConfigError(
                f"model.family=ssvae needs labelled training rows (data.name={cfg.data.name} "
                "has none): use data.name=semisupervised_mnist with data.labelled"
            )
        if data.labels("valid") is None:
            raise ConfigError(
                f"model.family=ssvae validates the accuracy of q(y|x): data.name={cfg.data.name}"
                " has no validation labels"
            )
        if not data.is_binary():
            raise ConfigError(
                f"model.family=ssvae has a Bernoulli likelihood and needs binary data: set "
                f"data.binarize=static (data.name={cfg.data.name}, data.binarize="
                f"{cfg.data.binarize})"
            )

    def estimate_parameters(self, cfg: Config, data: Dataset) -> int:
        m, d, k = cfg.model, data.num_dims, data.num_classes or 10
        h = m.hidden_sizes
        z = m.latent_dim
        return mlp_size([d, *h, k]) + mlp_size([d + k, *h, 2 * z]) + mlp_size([z + k, *h, d])

    def build_model(self, cfg: Config, data: Dataset) -> SSVAE:
        m, d, k = cfg.model, data.num_dims, data.num_classes
        n, n_l = data.train.shape[0], labelled_rows(data)
        b, b_l = cfg.train.batch_size, labelled_batch_size(cfg, n_l)
        # an epoch of N / B steps shows each labelled row 1 + (N / B)(B_l / N_l) times (once
        # in the shuffled rows, the rest cycled): weigh it so that it counts once, as in J^α
        weight = 1.0 / (1.0 + (n / b) * (b_l / n_l))
        return SSVAE(
            classifier=MLP(d, m.hidden_sizes, k, m.activation),
            encoder=MLP(d + k, m.hidden_sizes, 2 * m.latent_dim, m.activation),
            decoder=MLP(m.latent_dim + k, m.hidden_sizes, d, m.activation),
            latent_dim=m.latent_dim,
            num_classes=k,
            event_shape=data.event_shape,
            alpha=alpha_of(cfg, data),
            labelled_weight=weight,
        )

    def networks(self, model: nn.Module) -> list[nn.Module]:
        return [model.decoder, model.guide.classifier, model.guide.encoder]

    def build_learner(self, cfg: Config, model: nn.Module) -> SemiSupervisedLearner:
        e = cfg.elbo
        elbo = make_elbo(
            e.name, num_particles=e.num_particles, vectorize_particles=e.vectorize_particles
        )
        return SemiSupervisedLearner(
            model,
            elbo,
            labelled_batch_size=cfg.model.labelled_batch_size or cfg.train.batch_size,
            seed=cfg.train.seed,
            **learner_options(cfg),
        )

    def attach_data(self, learner: SemiSupervisedLearner, data: Dataset) -> None:
        y = data.labels("train")
        known = (y >= 0).nonzero().flatten()
        learner.set_labelled(data.train[known], y[known])

    def uses_labels(self, cfg: Config) -> bool:
        return True

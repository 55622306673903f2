"""pyrogen: deep generative models (VAEs, normalizing flows, GANs) as Pyro generative processes.

The public surface::

    import pyrogen

    cfg = pyrogen.load_config("configs/vae_digits.yaml", ["train.epochs=5"])
    run = pyrogen.train(cfg)              # or pyrogen.load("runs/<run>")
    run.sample(16)                        # draws in data space
    run.model                             # the Pyro model (poutine.trace, Predictive, SVI)
    pyrogen.evaluate(run)                 # every log-likelihood the family supports
    pyrogen.evaluate(learner, data=x)     # the same for a model or learner built in Python
    pyrogen.diagnose(run)                 # what a VAE learned: active units, KL, I(x; z)
"""

from pyrogen.build import build, load_config
from pyrogen.config import Config, ConfigError
from pyrogen.data import DataError, Dataset, load_dataset
from pyrogen.inference.adversarial import AdversarialLearner
from pyrogen.inference.variational import VariationalLearner
from pyrogen.models.flow import Flow
from pyrogen.models.flow_guides import PlanarGuide, SylvesterGuide
from pyrogen.models.gan import GAN
from pyrogen.models.guides import (
    DiagonalNormalGuide,
    FullNormalGuide,
    IAFGuide,
    LowRankNormalGuide,
    ScoreFunctionGuide,
)
from pyrogen.models.likelihoods import BernoulliLikelihood, GaussianLikelihood
from pyrogen.models.vae import VAE
from pyrogen.training import (
    Callback,
    CheckpointError,
    RunExistsError,
    RunOutputError,
    TrainedRun,
    TrainingDiverged,
    load,
    train,
)
from pyrogen.workflows.diagnose import diagnose
from pyrogen.workflows.evaluate import evaluate

__version__ = "0.1.0"

__all__ = [
    "VAE",
    "Flow",
    "GAN",
    "AdversarialLearner",
    "BernoulliLikelihood",
    "Callback",
    "CheckpointError",
    "DiagonalNormalGuide",
    "FullNormalGuide",
    "GaussianLikelihood",
    "IAFGuide",
    "LowRankNormalGuide",
    "PlanarGuide",
    "ScoreFunctionGuide",
    "SylvesterGuide",
    "VariationalLearner",
    "Config",
    "ConfigError",
    "DataError",
    "RunExistsError",
    "RunOutputError",
    "Dataset",
    "TrainedRun",
    "TrainingDiverged",
    "build",
    "diagnose",
    "evaluate",
    "load",
    "load_config",
    "load_dataset",
    "train",
]

"""Training: the run loop, checkpoints, metrics, and the trained run it returns.

* :mod:`~pyrogen.training.loop`: ``train(cfg)`` (epochs, progress, evaluation cadence,
  divergence, safe interruption, resume);
* :mod:`~pyrogen.training.checkpoint`: checksummed atomic checkpoints, loaded weights-only;
* :mod:`~pyrogen.training.metrics`: ``metrics.jsonl`` / ``metrics.csv``;
* :mod:`~pyrogen.training.run`: :class:`TrainedRun` and ``load(run_dir)``;
* :mod:`~pyrogen.training.folders`: run folders as append-only history (refused, overwritten
  or resumed; default names that never collide; paths stored relative to the folder);
* :mod:`~pyrogen.training.distributed`: data-parallel runs under ``torchrun`` (process group,
  sharding, reductions), with :mod:`~pyrogen.training.sync_layers` (batch statistics of the
  global batch).
"""

from pyrogen.training.checkpoint import CheckpointError
from pyrogen.training.folders import BEST, CHECKPOINT, CONFIG, RunExistsError
from pyrogen.training.loop import TrainingDiverged, TrainingInterrupted, evaluate_split, train
from pyrogen.training.metrics import read_metrics
from pyrogen.training.output import RunOutputError
from pyrogen.training.run import TrainedRun, load

__all__ = [
    "BEST",
    "CHECKPOINT",
    "CONFIG",
    "CheckpointError",
    "RunExistsError",
    "RunOutputError",
    "TrainedRun",
    "TrainingDiverged",
    "TrainingInterrupted",
    "evaluate_split",
    "load",
    "read_metrics",
    "train",
]

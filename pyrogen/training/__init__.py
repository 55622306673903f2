"""Training: the run loop, checkpoints, metrics, and the trained run it returns.

* :mod:`~pyrogen.training.loop`: ``train(cfg)`` (run folder, resume, build, then the
  Trainer);
* :mod:`~pyrogen.training.trainer`: the :class:`Trainer` (fit / epoch / validate /
  checkpoint: divergence, safe interruption);
* :mod:`~pyrogen.training.callbacks`: metrics, TensorBoard, progress, best/last checkpoints,
  early stopping and figures as :class:`Callback` objects, and the user's own;
* :mod:`~pyrogen.training.checkpoint`: checksummed atomic checkpoints, loaded weights-only;
* :mod:`~pyrogen.training.metrics`: ``metrics.jsonl`` / ``metrics.csv``;
* :mod:`~pyrogen.training.run`: :class:`TrainedRun` and ``load(run_dir)``;
* :mod:`~pyrogen.training.folders`: run folders as append-only history (refused, overwritten
  or resumed; default names that never collide; paths stored relative to the folder);
* :mod:`~pyrogen.parallel.distributed`: data-parallel runs under ``torchrun`` (process group,
  sharding, reductions), with :mod:`~pyrogen.parallel.sync_layers` (batch statistics of the
  global batch).
"""

from pyrogen.training.checkpoint import CheckpointError
from pyrogen.training.folders import BEST, CHECKPOINT, CONFIG, RunExistsError
from pyrogen.training.loop import train
from pyrogen.training.metrics import read_metrics
from pyrogen.training.output import RunOutputError
from pyrogen.training.run import TrainedRun, load
from pyrogen.training.trainer import (
    Callback,
    Trainer,
    TrainingDiverged,
    TrainingInterrupted,
    evaluate_split,
)

__all__ = [
    "BEST",
    "Callback",
    "CHECKPOINT",
    "CONFIG",
    "CheckpointError",
    "RunExistsError",
    "RunOutputError",
    "TrainedRun",
    "Trainer",
    "TrainingDiverged",
    "TrainingInterrupted",
    "evaluate_split",
    "load",
    "read_metrics",
    "train",
]

"""``pyrogen.diagnose``: what a VAE learned (active units, KL per dimension, I(x; z), the
amortisation gap), for a trained run or a model built in Python."""

from __future__ import annotations

from typing import Any

import torch

from pyrogen.evaluation.diagnostics import diagnose_model, diagnose_run
from pyrogen.training.run import TrainedRun


def diagnose(obj: Any, data: torch.Tensor | None = None, **options: Any) -> dict[str, Any]:
    """:func:`~pyrogen.evaluation.diagnostics.diagnose_run` for a trained run (``split``,
    ``max_examples`` and the options below), or :func:`~pyrogen.evaluation.diagnostics.
    diagnose_model` for a VAE or its learner built in Python and the examples ``data``.
    ``options``: ``gap_examples`` (the subset for the amortisation gap; ``None`` skips it),
    ``num_samples`` (K), ``refine_steps``, ``seed``. A ``TypeError`` for a flow or a GAN.

    Example::

        >>> pyrogen.diagnose(run)["active_units"]["active"]  # doctest: +SKIP
        >>> pyrogen.diagnose(learner, data=x_test)["mutual_information"]  # doctest: +SKIP
    """
    if isinstance(obj, TrainedRun):
        if data is not None:
            raise TypeError(
                "pyrogen.diagnose(run) reads the run's split; data= is for a model or learner "
                "built in Python"
            )
        return diagnose_run(obj, **options)
    if data is None:
        raise TypeError(f"pyrogen.diagnose({type(obj).__name__}) needs data=: the examples")
    return diagnose_model(obj, data, **options)

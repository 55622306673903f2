"""``pyrogen.evaluate``: every log-likelihood a trained run, or a model built in Python, has."""

from __future__ import annotations

from typing import Any

import torch

from pyrogen.config import EvaluationConfig
from pyrogen.evaluation.report import evaluate_model, evaluate_run
from pyrogen.training.run import TrainedRun


def evaluate(
    obj: Any, evaluation: EvaluationConfig | None = None, **examples: torch.Tensor | None
) -> dict[str, Any]:
    """``{"family", "split", "num_examples", "parameters", "estimates": {name: {mean, stderr,
    n, ...}}}``: a trained run's ``evaluation.split`` (:func:`~pyrogen.evaluation.report.
    evaluate_run`), or, for a model or learner built in Python, the ``examples``: ``data``,
    ``valid``, ``labels`` (:func:`~pyrogen.evaluation.report.evaluate_model` says what each
    is). The estimators follow from what the model is.

    Example::

        >>> pyrogen.evaluate(run)["estimates"]["elbo"]  # doctest: +SKIP
        >>> pyrogen.evaluate(learner, data=x_test)["estimates"]["exact"]  # doctest: +SKIP
    """
    if isinstance(obj, TrainedRun):
        if any(v is not None for v in examples.values()):
            raise TypeError(
                "pyrogen.evaluate(run) scores the run's evaluation.split; data=, valid= and "
                "labels= are for a model or learner built in Python"
            )
        return evaluate_run(obj, evaluation)
    return evaluate_model(obj, evaluation, **examples)

"""The quality of a class-conditional model's samples: does x ~ p(x | y = c) look like class c?

pyrogen's own :class:`~pyrogen.evaluation.sample_metrics.FeatureClassifier` (the one the
Fréchet classifier distance uses), trained on the run's training split, labels m samples drawn
for each class c; the **conditional accuracy** is the share it labels c,

    acc = (1 / (m K)) Σ_c Σ_{i ≤ m} 1[argmax f(x_ci) = c],   x_ci ~ p(x | y = c),

with its binomial standard error. The same classifier's accuracy on the real examples of the
evaluated split is the ceiling: samples cannot be more recognisable than real data are to it.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from pyrogen.evaluation.sample_metrics import train_feature_classifier


def _share(hits: torch.Tensor, kind: str) -> dict[str, Any]:
    p, n = hits.double().mean().item(), hits.numel()
    stderr = math.sqrt(p * (1 - p) / n) if n > 1 else None
    return {"mean": p, "stderr": stderr, "n": n, "unit": "fraction", "kind": kind}


def is_class_conditional(model: torch.nn.Module) -> bool:
    """Whether the model draws x ~ p(x | y) for class labels y (``run.sample(n, y)``)."""
    return bool(getattr(model, "conditional", False)) and bool(getattr(model, "num_classes", None))


def conditional_accuracy(
    run: Any, x: torch.Tensor, y: torch.Tensor, per_class: int = 500, seed: int = 0
) -> dict[str, dict[str, Any]]:
    """``{"conditional_accuracy", "classifier_accuracy"}`` of a class-conditional ``run``
    (see the module): ``per_class`` samples for each of the data's classes, judged by a
    classifier trained (seeded) on the run's training split; its accuracy on the labelled
    examples ``x``, ``y`` is the ceiling."""
    ds = run.dataset
    train_x = ds.train.reshape(ds.train.shape[0], -1)
    k = int(ds.num_classes)
    with torch.random.fork_rng(devices=[]), torch.enable_grad():  # evaluate runs without
        classifier = train_feature_classifier(
            train_x, ds.labels("train"), k, seed=seed, device=train_x.device
        )
        torch.manual_seed(seed)
        labels = torch.arange(k).repeat_interleave(per_class)
        with torch.no_grad():
            fake = torch.cat([run.sample(len(b), b) for b in labels.split(1000)])
    device = next(classifier.parameters()).device

    @torch.no_grad()
    def predict(v: torch.Tensor) -> torch.Tensor:
        v = v.reshape(v.shape[0], -1).float()
        return torch.cat([classifier(b.to(device)).argmax(-1).cpu() for b in v.split(1000)])

    out = {
        "conditional_accuracy": _share(predict(fake) == labels, "samples"),
        "classifier_accuracy": _share(predict(x) == y.cpu(), "real data"),
    }
    out["conditional_accuracy"]["per_class"] = per_class
    out["classifier_accuracy"]["note"] = "the ceiling: the judge on real examples"
    return out

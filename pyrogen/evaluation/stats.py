"""Small statistics shared by the metrics: a mean with its standard error."""

from __future__ import annotations

import math

import torch


def mean_stderr(values: torch.Tensor) -> dict[str, float | int | None]:
    """Mean and standard error ``std / sqrt(n)`` of per-example values (``stderr`` is
    ``None`` for a single value: no spread can be estimated from one example).

    Example::

        >>> mean_stderr(torch.tensor([1.0, 3.0]))
        {'mean': 2.0, 'stderr': 1.0, 'n': 2}
    """
    values = values.detach().double().flatten()
    n = values.numel()
    se = float(values.std(unbiased=True) / math.sqrt(n)) if n > 1 else None
    return {"mean": float(values.mean()), "stderr": se, "n": n}

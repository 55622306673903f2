"""What a data set builder returns before pyrogen's common options are applied."""

from __future__ import annotations

from dataclasses import KW_ONLY, dataclass
from typing import Literal

import torch


@dataclass(eq=False)
class Splits:
    """The three splits of a data set, each with its optional context: int64 class labels
    ``(N,)``, or (with ``context_dim`` C) a float32 continuous context ``(N, C)``."""

    train: torch.Tensor
    valid: torch.Tensor
    test: torch.Tensor
    train_labels: torch.Tensor | None = None
    valid_labels: torch.Tensor | None = None
    test_labels: torch.Tensor | None = None


@dataclass(eq=False)
class RawSplits(Splits):
    """What a registered data set builder returns: CPU tensors before the common options.

    ``train``/``valid``/``test`` are float32, ``(N, D)`` points or ``(N, C, H, W)`` images in
    ``[0, 1]`` (on the grid ``{0, 1/(L-1), ..., 1}`` of ``levels = L`` intensities when known).
    """

    _: KW_ONLY
    kind: Literal["points", "image"]
    num_classes: int | None = None
    context_dim: int | None = None  # the ``*_labels`` hold a continuous context (N, C)
    levels: int | None = None
    source: str | None = None  # where the data came from: a path, or an array's checksum
    checksum: str | None = None  # "sha256:..." of the user's file or array

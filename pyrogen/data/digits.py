"""scikit-learn's 8x8 handwritten digits: 1,797 images of 17 intensity levels, 10 classes.

The images ship inside scikit-learn (no download). Pixel values ``0..16`` are scaled to
``x = v / 16`` in ``[0, 1]`` (``levels = 17``, so dequantisation uses ``y = (16 x + u) / 17``).
A fixed permutation (seed 0) splits them into 1,257 / 270 / 270 train / valid / test images.
"""

from __future__ import annotations

import torch

from pyrogen.config import DataConfig
from pyrogen.data.raw import RawSplits
from pyrogen.registry import DATASETS

SPLIT_SIZES = (1257, 270, 270)
SPLIT_SEED = 0
LEVELS = 17


@DATASETS.register("digits")
def digits(cfg: DataConfig, seed: int = 0) -> RawSplits:
    """scikit-learn's 8x8 digits (1,797 images, 10 classes, 17 levels)."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = torch.as_tensor(bunch.data, dtype=torch.float32).reshape(-1, 1, 8, 8) / (LEVELS - 1)
    y = torch.as_tensor(bunch.target, dtype=torch.int64)
    perm = torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(SPLIT_SEED))
    a, b, _ = SPLIT_SIZES
    tr, va, te = perm[:a], perm[a : a + b], perm[a + b :]
    return RawSplits(
        kind="image",
        train=x[tr],
        valid=x[va],
        test=x[te],
        train_labels=y[tr],
        valid_labels=y[va],
        test_labels=y[te],
        num_classes=10,
        levels=LEVELS,
    )

"""``semisupervised_mnist``: the data protocol of the semi-supervised VAE (M2).

==========  ================================================================================
split       what
==========  ================================================================================
train       the unlabelled pool, Larochelle's statically binarized MNIST train file (50,000
            images, no labels: label -1), followed by ``data.labelled`` images of the MNIST
            train file (``data.labelled / 10`` per class, chosen with ``train.seed``) with
            their labels
valid       the MNIST train file's other labelled images
test        the MNIST test file (10,000 labelled images)
==========  ================================================================================

The grey MNIST images are binarised with ``data.binarize=static`` (one draw b ~ Bernoulli(x)
per image, fixed by pyrogen's static-binarisation seed), like the pool. ``data.num_train``
(tests) keeps that many training rows in all: the labelled ones and a fixed subset of the
pool. The pool's rows are grouped by class in the file; the training loop shuffles every
epoch.
"""

from __future__ import annotations

import torch

from pyrogen.config import DataConfig
from pyrogen.data.errors import DataError
from pyrogen.data.images import binarized_mnist, mnist
from pyrogen.data.raw import RawSplits
from pyrogen.registry import DATASETS

UNLABELLED = -1  # the label of the pool's rows
POOL_SUBSET_SEED = 1234


def balanced_subset(labels: torch.Tensor, n: int, num_classes: int, seed: int) -> torch.Tensor:
    """Indices of ``n / num_classes`` examples of each class, drawn without replacement with
    ``seed``, in increasing order."""
    if n % num_classes:
        raise DataError(
            f"data.labelled={n} cannot be balanced over {num_classes} classes: use a multiple "
            f"of {num_classes}"
        )
    per_class = n // num_classes
    g = torch.Generator().manual_seed(seed)
    chosen = []
    for c in range(num_classes):
        idx = (labels == c).nonzero().flatten()
        if idx.numel() < per_class:
            raise DataError(
                f"data.labelled={n} needs {per_class} images of class {c}; the MNIST train file "
                f"has {idx.numel()}"
            )
        chosen.append(idx[torch.randperm(idx.numel(), generator=g)[:per_class]])
    return torch.cat(chosen).sort().values


@DATASETS.register("semisupervised_mnist")
def semisupervised_mnist(cfg: DataConfig, seed: int = 0) -> RawSplits:
    """The unlabelled binarized-MNIST pool plus ``data.labelled`` labelled MNIST images."""
    if cfg.labelled is None:
        raise DataError("data.name=semisupervised_mnist needs data.labelled (e.g. 100)")
    labelled = mnist(cfg, seed)
    pool = binarized_mnist(cfg, seed).train
    x_all = torch.cat([labelled.train, labelled.valid])
    y_all = torch.cat([labelled.train_labels, labelled.valid_labels])
    if cfg.labelled >= x_all.shape[0]:
        raise DataError(
            f"data.labelled={cfg.labelled} leaves no validation images: the MNIST train file "
            f"has {x_all.shape[0]:,}"
        )
    chosen = balanced_subset(y_all, cfg.labelled, 10, seed)
    rest = torch.ones(x_all.shape[0], dtype=torch.bool)
    rest[chosen] = False
    if cfg.num_train is not None:
        keep = cfg.num_train - cfg.labelled
        if keep < 1:
            raise DataError(
                f"data.num_train={cfg.num_train} must exceed data.labelled={cfg.labelled} (it "
                "counts the labelled rows and the unlabelled pool's)"
            )
        g = torch.Generator().manual_seed(POOL_SUBSET_SEED)
        pool = pool[torch.randperm(pool.shape[0], generator=g)[:keep]]
    unlabelled = torch.full((pool.shape[0],), UNLABELLED, dtype=torch.int64)
    return RawSplits(
        kind="image",
        train=torch.cat([pool, x_all[chosen]]),
        valid=x_all[rest],
        test=labelled.test,
        train_labels=torch.cat([unlabelled, y_all[chosen]]),
        valid_labels=y_all[rest],
        test_labels=labelled.test_labels,
        num_classes=10,
        levels=256,
    )

"""The image data sets read from files: MNIST, statically binarized MNIST and Frey Face.

Files are found under the data root (``data.root``, else :func:`default_data_root`) or
downloaded with checksums (:mod:`pyrogen.data.download`); the readers of
:mod:`pyrogen.data.files` check their format. Images are scaled to ``[0, 1]`` as
``x = v / (L - 1)`` for ``L`` intensity levels and shaped ``(N, 1, H, W)``.

=================  ======================================  =================================
name               files                                   splits
=================  ======================================  =================================
mnist              IDX ``train-*`` and ``t10k-*``           train file split by a fixed
                   (60,000 + 10,000 images, 256 levels,    permutation (seed 0): 1/6 valid
                   labels 0-9)                             (50,000 / 10,000 for the full
                                                           file), t10k is test
binarized_mnist    ``binarized_mnist_{train,valid,test}``  the files' own 50,000 / 10,000 /
                   ``.amat`` (Larochelle's static           10,000 (rows grouped by digit:
                   binarisation, no labels)                always shuffled before batching)
frey               ``frey_rawface.mat`` (1,965 faces of     fixed permutation (seed 0):
                   28 x 20, 256 levels, no labels)          1,565 / 200 / 200
=================  ======================================  =================================

MNIST's training file is split by a permutation rather than "the last 10,000" because a
training file need not be in the canonical order (a class-sorted subset would otherwise give
a validation split of only 8s and 9s).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from pyrogen.config import DataConfig
from pyrogen.data import files
from pyrogen.data.dataset import data_root
from pyrogen.data.download import fetch
from pyrogen.data.errors import DataError
from pyrogen.data.raw import RawSplits
from pyrogen.registry import DATASETS

SPLIT_SEED = 0
FREY_HELD_OUT = 200  # valid and test faces each (1,565 / 200 / 200 of 1,965)


def _images(array: np.ndarray, levels: int = 256) -> torch.Tensor:
    """``(N, H, W)`` or ``(N, H*W)`` integers -> float32 ``(N, 1, H, W)`` in ``[0, 1]``."""
    return torch.from_numpy(np.ascontiguousarray(array)).to(torch.float32).div_(levels - 1)


def _permutation(n: int, seed: int = SPLIT_SEED) -> torch.Tensor:
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed))


def read_mnist_pair(images_path: Path, labels_path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Images ``(N, H, W)`` uint8 and labels ``(N,)`` from two IDX files that must agree."""
    images = files.read_idx(images_path, ndim=3)
    labels = files.read_idx(labels_path, ndim=1)
    if images.shape[0] != labels.shape[0]:
        raise DataError(
            f"{images_path} has {images.shape[0]:,} images but {labels_path} has "
            f"{labels.shape[0]:,} labels; expected the same number"
        )
    if images.dtype != np.uint8 or labels.dtype != np.uint8:
        raise DataError(f"{images_path}, {labels_path}: expected unsigned byte IDX files")
    if labels.size and labels.max() > 9:
        raise DataError(f"{labels_path}: label {int(labels.max())} out of range; expected 0-9")
    return images, labels


@DATASETS.register("mnist")
def mnist(cfg: DataConfig, seed: int = 0) -> RawSplits:
    """MNIST handwritten digits, 28x28 grayscale (IDX files; downloaded when missing)."""
    root = data_root(cfg)

    def get(key: str, ndim: int) -> Path:
        return fetch("mnist", key, root, cfg.download, lambda p: files.read_idx(p, ndim=ndim))

    x, y = read_mnist_pair(get("train_images", 3), get("train_labels", 1))
    x_test, y_test = read_mnist_pair(get("test_images", 3), get("test_labels", 1))
    images, labels = _images(x)[:, None], torch.from_numpy(y.astype(np.int64))
    perm = _permutation(images.shape[0])
    n_valid = images.shape[0] // 6
    valid, train = perm[:n_valid], perm[n_valid:]
    return RawSplits(
        kind="image",
        train=images[train],
        valid=images[valid],
        test=_images(x_test)[:, None],
        train_labels=labels[train],
        valid_labels=labels[valid],
        test_labels=torch.from_numpy(y_test.astype(np.int64)),
        num_classes=10,
        levels=256,
    )


@DATASETS.register("binarized_mnist")
def binarized_mnist(cfg: DataConfig, seed: int = 0) -> RawSplits:
    """Statically binarized MNIST (Larochelle & Murray 2011), 50k / 10k / 10k, 28x28."""
    root = data_root(cfg)
    out = {}
    for split in ("train", "valid", "test"):
        path = fetch("binarized_mnist", split, root, cfg.download, files.read_amat)
        out[split] = _images(files.read_amat(path), levels=2).reshape(-1, 1, 28, 28)
    return RawSplits(kind="image", levels=2, **out)


@DATASETS.register("frey")
def frey(cfg: DataConfig, seed: int = 0) -> RawSplits:
    """Frey Face: 1,965 grayscale 28x20 video frames of one face (Roweis)."""
    path = fetch("frey", "faces", data_root(cfg), cfg.download, files.read_frey)
    faces = _images(files.read_frey(path))[:, None]
    n = faces.shape[0]
    held = min(FREY_HELD_OUT, n // 5)
    if held < 1:
        raise DataError(f"{path}: only {n} faces; expected at least 5 to make three splits")
    perm = _permutation(n)
    return RawSplits(
        kind="image",
        train=faces[perm[2 * held :]],
        valid=faces[perm[:held]],
        test=faces[perm[held : 2 * held]],
        levels=256,
    )

"""The data sets ``data.name=array`` (a ``.npy``, ``.npz``, ``.csv`` or ``.pt`` file at
``data.path``) and ``data.name=image_folder`` (PNG/JPEG files under ``data.path``), registered
in ``DATASETS``. Reading, checking and splitting the arrays are in
:mod:`pyrogen.data.user_arrays`.

A run records the data's checksum in its config (``data.checksum``, a SHA-256 of the arrays'
values, shapes and dtypes); loading the run later checks that the file still holds the same
data.

Example::

    >>> import numpy as np, tempfile, os
    >>> from pyrogen.config import DataConfig
    >>> from pyrogen.data import load_dataset
    >>> path = os.path.join(tempfile.mkdtemp(), "x.npy")
    >>> np.save(path, np.random.default_rng(0).normal(size=(100, 5)))
    >>> ds = load_dataset(DataConfig(name="array", path=path), seed=0)
    >>> ds.train.shape, ds.kind
    (torch.Size([80, 5]), 'points')
"""

from __future__ import annotations

from pathlib import Path

from pyrogen.config import DataConfig
from pyrogen.data.errors import DataError
from pyrogen.data.raw import RawSplits
from pyrogen.data.user_arrays import array_checksum, read_array_file, read_image_folder, user_splits
from pyrogen.registry import DATASETS


def _verify(cfg: DataConfig, checksum: str) -> None:
    if cfg.checksum is not None and cfg.checksum != checksum:
        raise DataError(
            f"{cfg.path}: the data differ from those the run was trained on (data.checksum "
            f"{cfg.checksum[:23]}..., now {checksum[:23]}...)"
        )


def _splits(cfg: DataConfig, arrays, seed: int, source: str, checksum: str) -> RawSplits:
    raw = user_splits(
        arrays,
        valid_fraction=cfg.valid_fraction,
        test_fraction=cfg.test_fraction,
        seed=seed,
        levels=cfg.levels,
        source=source,
    )
    raw.source, raw.checksum = source, checksum
    return raw


@DATASETS.register("array")
def array(cfg: DataConfig, seed: int = 0) -> RawSplits:
    """The user's array file (data.path: .npy, .npz, .csv or .pt)."""
    path = Path(cfg.path or "")
    arrays = read_array_file(path, context=cfg.context or ())
    checksum = array_checksum(arrays)  # of the values: the same array saved anew still fits
    _verify(cfg, checksum)
    return _splits(cfg, arrays, seed, str(path), checksum)


@DATASETS.register("image_folder")
def image_folder(cfg: DataConfig, seed: int = 0) -> RawSplits:
    """The user's PNG/JPEG images under data.path (sub-folders as classes)."""
    path = Path(cfg.path or "")
    size = tuple(cfg.image_size) if cfg.image_size is not None else None
    found = read_image_folder(path, image_size=size)
    checksum = array_checksum(found)  # pixels, labels and class names
    _verify(cfg, checksum)
    return _splits(cfg, found, seed, str(path), checksum)

"""Data sets as in-memory tensors, their preprocessing, and checked file downloads.

* 2-D toy densities generated from a seeded generator (:mod:`~pyrogen.data.toy`): ``moons``,
  ``eight_gaussians``, ``checkerboard``, ``spirals``, ``rings``;
* scikit-learn's 8x8 ``digits`` (:mod:`~pyrogen.data.digits`), shipped with scikit-learn;
* file data sets (:mod:`~pyrogen.data.images`): ``mnist``, ``binarized_mnist``, ``frey``,
  read by :mod:`~pyrogen.data.files` and downloaded with checksums by
  :mod:`~pyrogen.data.download` when missing;
* the user's own data (:mod:`~pyrogen.data.user_datasets`, read by
  :mod:`~pyrogen.data.user_arrays`): ``array`` (``.npy``, ``.npz``,
  ``.csv``, ``.pt``), ``image_folder`` (PNG/JPEG), or an array passed from Python;
* per-batch preprocessing (:mod:`~pyrogen.data.preprocess`): dynamic binarisation, uniform
  dequantisation, the logit transform with its log-determinant, bits per dimension;
* :func:`iterate_minibatches`: shuffled index batches for in-memory tensors.

Example::

    >>> from pyrogen.config import DataConfig
    >>> from pyrogen.data import load_dataset
    >>> ds = load_dataset(DataConfig(name="moons", num_train=500))
    >>> ds.train.shape, ds.kind
    (torch.Size([500, 2]), 'points')
"""

from pyrogen.data.batching import iterate_minibatches
from pyrogen.data.dataset import Dataset, RawSplits, data_root, default_data_root, load_dataset
from pyrogen.data.errors import DataError
from pyrogen.data.preprocess import (
    binarize,
    bits_per_dim,
    dequantize,
    inverse_logit,
    logit_transform,
)

# importing these modules registers their data sets in pyrogen.registry.DATASETS
from pyrogen.data import digits, images, semisupervised, toy, user_datasets  # noqa: E402, F401  isort: skip

__all__ = [
    "DataError",
    "Dataset",
    "RawSplits",
    "binarize",
    "bits_per_dim",
    "data_root",
    "default_data_root",
    "dequantize",
    "inverse_logit",
    "iterate_minibatches",
    "load_dataset",
    "logit_transform",
]

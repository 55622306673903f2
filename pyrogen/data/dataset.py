"""The :class:`Dataset` that the training loop consumes, and :func:`load_dataset`.

A data set is three in-memory float32 tensors (``train``, ``valid``, ``test``) on the training
device, with optional int64 labels. Images are stored in ``[0, 1]``, flattened to ``(N, D)``
when ``data.flatten`` is set (MLPs) or kept as ``(N, C, H, W)`` (conv nets); 2-D toy densities
are ``(N, 2)`` points. :meth:`Dataset.process` is the stochastic per-batch preprocessing
(dynamic binarisation, dequantisation, logit transform) and :meth:`Dataset.log_det_jacobian`
its change of variables, so that ``log p_[0,1](y) = log p_model(z) + log_det_jacobian(z)``.

Example::

    >>> from pyrogen.config import DataConfig
    >>> ds = load_dataset(DataConfig(name="digits"))
    >>> ds.train.shape, ds.image_shape, ds.levels
    (torch.Size([1257, 64]), (1, 8, 8), 17)
"""

from __future__ import annotations

import math
import os
from dataclasses import KW_ONLY, dataclass
from pathlib import Path
from typing import Any, Literal

import torch

from pyrogen.config import DataConfig
from pyrogen.data import preprocess
from pyrogen.data.errors import DataError
from pyrogen.data.raw import RawSplits, Splits
from pyrogen.data.user_arrays import array_checksum, user_splits
from pyrogen.registry import DATASETS

SPLITS = ("train", "valid", "test")
STATIC_BINARIZE_SEED = 0  # data.binarize=static: b ~ Bernoulli(x) once, split i from seed + i
SUBSET_SEED = 1234  # data.num_train etc.: the first n of a fixed permutation (nested subsets)


@dataclass(eq=False, repr=False)
class Dataset(Splits):
    """An in-memory data set on one device, with its per-batch preprocessing.

    ``event_shape`` is the shape of one stored example (``(D,)`` or ``(C, H, W)``),
    ``image_shape`` the ``(C, H, W)`` of images (``None`` for points), ``levels`` the number of
    intensity levels of the stored images (256 for 8-bit, 17 for digits, 2 once binarised).
    """

    _: KW_ONLY
    name: str
    event_shape: tuple[int, ...] = ()
    image_shape: tuple[int, int, int] | None = None
    num_classes: int | None = None
    context_dim: int | None = None  # a continuous context c (N, C) in the ``*_labels`` slots
    kind: Literal["points", "image"] = "points"
    levels: int | None = None
    binarize: Literal["none", "static", "dynamic"] = "none"
    dequantize: bool = False
    logit_lambda: float | None = None
    shift: torch.Tensor | None = None  # standardisation: z = (x - shift) / scale
    context_shift: torch.Tensor | None = None  # a continuous c is stored (c - shift) / scale
    context_scale: torch.Tensor | None = None
    scale: torch.Tensor | None = None
    source: str | None = None
    checksum: str | None = None

    def __repr__(self) -> str:
        sizes = ", ".join(f"{s}={tuple(self.split(s).shape)}" for s in SPLITS)
        return (
            f"Dataset(name={self.name!r}, kind={self.kind!r}, {sizes}, levels={self.levels}, "
            f"binarize={self.binarize!r}, dequantize={self.dequantize}, "
            f"logit_lambda={self.logit_lambda}, device={self.train.device})"
        )

    # ---------------------------------------------------------------- access
    def split(self, name: str) -> torch.Tensor:
        """The ``"train"``, ``"valid"`` or ``"test"`` tensor."""
        return getattr(self, _check_split(name))

    def labels(self, name: str) -> torch.Tensor | None:
        """The context of a split: int64 class labels ``(N,)``, a float32 continuous context
        ``(N, C)`` (with ``context_dim``), or ``None`` for data without either."""
        return getattr(self, _check_split(name) + "_labels")

    @property
    def device(self) -> torch.device:
        return self.train.device

    def is_binary(self) -> bool:
        """Whether every batch :meth:`process` returns holds only 0s and 1s."""
        if self.binarize != "none":
            return not self.dequantize and self.logit_lambda is None and self.shift is None
        if self.dequantize or self.logit_lambda is not None or self.shift is not None:
            return False
        return all(bool(((t == 0) | (t == 1)).all()) for t in (self.train, self.valid, self.test))

    @property
    def num_dims(self) -> int:
        """``D``, the number of dimensions of one example."""
        return math.prod(self.event_shape)

    @property
    def model_levels(self) -> int | None:
        """Intensity levels of the batches :meth:`process` returns (2 if binarised dynamically)."""
        return 2 if self.binarize == "dynamic" else self.levels

    # ---------------------------------------------------------------- preprocessing
    def process(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Map a stored mini-batch to the model's space (applied to every batch).

        In order, each when configured: dynamic binarisation ``x ~ Bernoulli(x)``;
        dequantisation ``y = (x (L-1) + u) / L``, ``u ~ U[0, 1)``; the logit transform
        ``z = logit(lam + (1 - 2 lam) y)``; standardisation ``z = (x - m) / s`` (points). Every
        draw comes from ``generator`` (a CPU generator serves CUDA batches too); with none of
        the stochastic options the map is deterministic. The input is never modified.
        """
        if self.binarize == "dynamic":
            x = preprocess.binarize(x, generator)
        if self.dequantize:
            x = preprocess.dequantize(x, self.model_levels or 256, generator)
        if self.logit_lambda is not None:
            x, _ = preprocess.logit_transform(x, self.logit_lambda)
        if self.shift is not None:
            x = (x - self.shift) / self.scale
        return x

    def log_det_jacobian(self, z: torch.Tensor) -> torch.Tensor:
        """Per-example ``log |det d(model space)/d(data space)|`` at ``z = process(x)``.

        Zero unless ``logit_lambda`` is set, else ``sum_i [log(1 - 2 lam) - log s_i -
        log(1 - s_i)]`` with ``s = sigmoid(z)``. Hence ``log p_[0,1](y) = log p_model(z) +
        log_det_jacobian(z)``: the density on the unit cube that :meth:`bits_per_dim` needs.
        With standardisation the determinant adds ``-sum_i log s_i``.
        """
        out = torch.zeros(z.shape[0], dtype=z.dtype, device=z.device)
        if self.shift is not None:
            out = out - self.scale.log().sum()
            z = z * self.scale + self.shift
        if self.logit_lambda is not None:
            out = out + preprocess.logit_log_det(z, self.logit_lambda)
        return out

    def context_to_model(self, c: torch.Tensor) -> torch.Tensor:
        """A continuous context in the data's units as the model takes it (and as the
        ``*_labels`` hold it): standardised per column with the training split's mean and
        std, (c − mean) / std; class labels and data without a context pass unchanged."""
        if self.context_shift is None:
            return c
        return (c.to(self.context_shift) - self.context_shift) / self.context_scale

    def to_data_space(self, z: torch.Tensor) -> torch.Tensor:
        """Model-space samples back to the stored space: undo standardisation, inverse
        logit, then images clipped to ``[0, 1]`` (points are otherwise unchanged)."""
        if self.shift is not None:
            z = z * self.scale + self.shift
        if self.logit_lambda is not None:
            z = preprocess.inverse_logit(z, self.logit_lambda)
        return z.clamp(0.0, 1.0) if self.kind == "image" else z

    def bits_per_dim(self, log_p_unit_cube: torch.Tensor | float) -> torch.Tensor | float:
        """:func:`~pyrogen.data.preprocess.bits_per_dim` with this data set's ``D`` and levels."""
        if self.model_levels is None:
            raise ValueError(f"bits/dim needs discrete images; {self.name} is 2-D points")
        return preprocess.bits_per_dim(log_p_unit_cube, self.num_dims, self.model_levels)


def _check_split(name: str) -> str:
    if name not in SPLITS:
        raise ValueError(f"unknown split {name!r}; expected one of {', '.join(SPLITS)}")
    return name


# -------------------------------------------------------------------- loading
def default_data_root() -> Path:
    """Where data files live: ``$PYROGEN_DATA``, else ``$XDG_CACHE_HOME/pyrogen``, else
    ``~/.cache/pyrogen``. ``data.root`` in a config overrides it."""
    env = os.environ.get("PYROGEN_DATA")
    if env:
        return Path(env).expanduser()
    cache = os.environ.get("XDG_CACHE_HOME")
    base = Path(cache).expanduser() if cache else Path.home() / ".cache"
    return base / "pyrogen"


def data_root(cfg: DataConfig) -> Path:
    """``cfg.root`` if set, else :func:`default_data_root`."""
    return Path(cfg.root).expanduser() if cfg.root else default_data_root()


def load_dataset(
    cfg: DataConfig, device: torch.device | str = "cpu", seed: int = 0, data: Any = None
) -> Dataset:
    """Build the data set ``cfg.name`` (a name in :data:`pyrogen.registry.DATASETS`) on
    ``device``, with ``cfg``'s subset sizes, static binarisation and layout applied; or, with
    ``data`` (a tensor, a numpy array or a dict of splits), the user's own data. ``seed``
    makes the splits of user data that come without them.

    Raises :class:`~pyrogen.data.DataError` when a file is missing (and ``cfg.download`` is
    off), unreadable, or when an option does not fit the data set.

    Example::

        >>> ds = load_dataset(DataConfig(name="digits", binarize="dynamic", flatten=False))
        >>> x = ds.process(ds.train[:4], torch.Generator().manual_seed(0))
        >>> tuple(x.shape), sorted(x.unique().tolist())
        ((4, 1, 8, 8), [0.0, 1.0])
    """
    for split in SPLITS:
        n = getattr(cfg, f"num_{split}")
        if n is not None and n < 1:
            raise DataError(f"bad value for 'data.num_{split}': {n}; expected an integer > 0")
    if data is not None:
        raw: RawSplits = user_splits(
            data,
            valid_fraction=cfg.valid_fraction,
            test_fraction=cfg.test_fraction,
            seed=seed,
            levels=cfg.levels,
            source="the array passed to pyrogen.train",
        )
        raw.source, raw.checksum = "array passed from Python", array_checksum(data)
        if cfg.checksum is not None and cfg.checksum != raw.checksum:
            raise DataError(
                "the array passed: the data differ from those the run was trained on "
                f"(data.checksum {cfg.checksum[:23]}..., this array {raw.checksum[:23]}...)"
            )
    else:
        raw = DATASETS.get(cfg.name)(cfg, seed)
    _check_options(cfg, raw)
    standardize = resolve_standardize(cfg, raw.kind, from_python=data is not None)
    return _finish(cfg, raw, torch.device(device), standardize)


def resolve_standardize(cfg: DataConfig, kind: str, from_python: bool = False) -> bool:
    """``data.standardize``, with null (auto) resolved: on for the user's points (an array
    file, ``data.name=array``, or an array passed from Python), off for images and for the
    built-in data sets (whose toy densities are defined in their own coordinates).

    Standardising the user's points lets one learning rate and one initialisation suit every
    column scale; densities are still reported in the data's own units (the Jacobian
    ``-sum_i log s_i`` is added), so it changes the fit, not what is measured."""
    if cfg.standardize is not None:
        return cfg.standardize
    return kind == "points" and (from_python or cfg.name == "array")


def _check_options(cfg: DataConfig, raw: RawSplits) -> None:
    if cfg.standardize and raw.kind != "points":
        raise DataError("data.standardize applies to points; images are scaled to [0, 1]")
    if raw.kind == "points":
        for key, on in [
            ("binarize", cfg.binarize != "none"),
            ("dequantize", cfg.dequantize),
            ("logit_lambda", cfg.logit_lambda is not None),
        ]:
            if on:
                raise DataError(
                    f"data.{key} applies to images, but data.name={cfg.name} holds points"
                )
    if raw.kind == "image" and raw.levels is None and cfg.dequantize:
        raise DataError(
            "data.dequantize=true needs the number of intensity levels of these images: set "
            "data.levels (e.g. 256 for 8-bit images)"
        )
    if cfg.binarize != "none" and raw.kind == "image":
        low, high = float(raw.train.min()), float(raw.train.max())
        if low < 0 or high > 1:
            raise DataError(f"data.binarize needs intensities in [0, 1]; found [{low}, {high}]")
    if cfg.logit_lambda is not None and not 0.0 <= cfg.logit_lambda < 0.5:
        raise DataError(f"bad value for 'data.logit_lambda': {cfg.logit_lambda}; expected [0, 0.5)")
    if cfg.logit_lambda == 0.0 and not cfg.dequantize:
        raise DataError(
            "data.logit_lambda=0 needs data.dequantize=true: pixels equal to 0 or 1 would map to "
            "-inf or +inf; use a small lambda (e.g. 1e-6) or dequantise"
        )


def _subset(
    cfg: DataConfig, split: str, x: torch.Tensor, y: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The first ``n`` examples of a fixed permutation: nested, class-balanced on average."""
    n = getattr(cfg, f"num_{split}")
    if n is None or n == x.shape[0]:
        return x, y
    if n > x.shape[0]:
        raise DataError(
            f"data.num_{split}={n:,} but the {split} split of {cfg.name} has only "
            f"{x.shape[0]:,} examples"
        )
    g = torch.Generator().manual_seed(SUBSET_SEED + SPLITS.index(split))
    idx = torch.randperm(x.shape[0], generator=g)[:n]
    return x[idx], None if y is None else y[idx]


def _finish(
    cfg: DataConfig, raw: RawSplits, device: torch.device, standardize: bool = False
) -> Dataset:
    tensors: dict[str, torch.Tensor | None] = {}
    levels = raw.levels
    for i, split in enumerate(SPLITS):
        x = getattr(raw, split).to(torch.float32)
        if cfg.binarize == "static":  # the whole split, so a subset keeps the same draws
            x = preprocess.binarize(x, torch.Generator().manual_seed(STATIC_BINARIZE_SEED + i))
        x, y = _subset(cfg, split, x, getattr(raw, f"{split}_labels"))
        if raw.kind == "image" and cfg.flatten:
            x = x.reshape(x.shape[0], -1)
        tensors[split] = x.contiguous().to(device)
        if y is not None:
            y = y.to(torch.float32 if raw.context_dim is not None else torch.int64)
        tensors[f"{split}_labels"] = None if y is None else y.contiguous().to(device)
    if cfg.binarize == "static":
        levels = 2
    c_shift = c_scale = None
    if raw.context_dim is not None:  # every column of c on one scale for the networks
        c = tensors["train_labels"]
        c_shift = c.mean(0)
        c_scale = c.std(0).clamp_min(1e-8) if c.shape[0] > 1 else torch.ones_like(c_shift)
        for split in SPLITS:
            tensors[f"{split}_labels"] = (tensors[f"{split}_labels"] - c_shift) / c_scale
    shift = scale = None
    if standardize:
        train = tensors["train"]
        shift = train.mean(0)
        scale = train.std(0).clamp_min(1e-8) if train.shape[0] > 1 else torch.ones_like(shift)
    image_shape = tuple(raw.train.shape[1:]) if raw.kind == "image" else None
    return Dataset(
        name=cfg.name,
        event_shape=tuple(tensors["train"].shape[1:]),
        image_shape=image_shape,  # type: ignore[arg-type]
        num_classes=raw.num_classes,
        context_dim=raw.context_dim,
        kind=raw.kind,
        levels=levels,
        binarize=cfg.binarize,
        dequantize=cfg.dequantize,
        logit_lambda=cfg.logit_lambda,
        shift=shift,
        scale=scale,
        context_shift=c_shift,
        context_scale=c_scale,
        source=raw.source,
        checksum=raw.checksum,
        **tensors,  # type: ignore[arg-type]
    )

"""Two-dimensional toy densities, generated from a seeded ``numpy.random.Generator``.

Each sampler draws ``n`` i.i.d. points of a fixed density (so splits are independent samples,
not halves of a grid) and follows the conventions of the flow and GAN literature:

=================  ==========================================================  =============
name               density                                                     default noise
=================  ==========================================================  =============
moons              two interleaved half circles (scikit-learn's ``make_moons``
                   layout), scaled by 2 and shifted by ``(-1, -0.2)`` as in
                   FFJORD: ``x = 2 (m + noise * e) + (-1, -0.2)``              0.1
eight_gaussians    equal mixture of ``N(c_k, noise^2 I)`` with the 8 centres
                   ``c_k = 2 (cos(k pi/4), sin(k pi/4))`` on the circle of
                   radius 2 (Metz et al. 2017, unrolled GANs)                  0.02
checkerboard       uniform on the 8 dark squares of side 2 of a 4 x 4 board
                   on ``[-4, 4]^2`` (FFJORD); ``noise`` adds Gaussian jitter   0.0
spirals            two spiral arms ``+-(-t cos t, t sin t) / 3`` with
                   ``t = 3 pi sqrt(U)``, uniform jitter ``U[0, 0.5)/3`` per
                   coordinate as in FFJORD's ``2spirals``, plus
                   ``N(0, noise^2)``                                           0.1
rings              equal mixture of 4 concentric circles of radii 0.75, 1.5,
                   2.25 and 3 with uniform angle, plus ``N(0, noise^2)``       0.08
=================  ==========================================================  =============

Splits come from fixed seeds (train 0, valid 1, test 2) with default sizes 10,000 / 2,000 /
5,000; ``data.num_train`` etc. set the sizes and ``data.noise`` the noise level.

The samplers compute in float64 numpy from a ``numpy.random.Generator`` (PCG64) and return
float32 tensors: numpy's elementwise functions are single-threaded and give the same points in
every process. (torch's multi-threaded ``cos``/``sin``/``exp`` on CPU were seen to return
values off by up to 3e-4 in float32 on the first call in a fresh process, on the worker
thread's half of the tensor, which made "the same seed" give different data sets.)

Example::

    >>> x = sample_eight_gaussians(1000, np.random.default_rng(0))
    >>> bool((x.norm(dim=1) - 2).abs().max() < 0.2)
    True
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from pyrogen.config import DataConfig
from pyrogen.data.dataset import SPLITS
from pyrogen.data.raw import RawSplits
from pyrogen.registry import DATASETS

DEFAULT_SIZES = {"train": 10_000, "valid": 2_000, "test": 5_000}
SPLIT_SEEDS = {"train": 0, "valid": 1, "test": 2}

Sampler = Callable[[int, np.random.Generator, float], torch.Tensor]


def _points(xy: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(xy, dtype=np.float32))


def sample_moons(n: int, rng: np.random.Generator, noise: float = 0.1) -> torch.Tensor:
    """Two moons: ``m = (cos t, sin t)`` or ``(1 - cos t, 0.5 - sin t)`` (each with
    probability 1/2), ``t ~ U[0, pi]``; ``x = 2 (m + noise * e) + (-1, -0.2)``."""
    t = rng.uniform(0.0, np.pi, n)
    inner = rng.random(n) < 0.5
    m = np.stack([np.cos(t), np.sin(t)], 1)
    m[inner] = np.stack([1 - np.cos(t[inner]), 0.5 - np.sin(t[inner])], 1)
    return _points(2 * (m + noise * rng.standard_normal((n, 2))) + np.array([-1.0, -0.2]))


def eight_gaussian_centres(radius: float = 2.0) -> torch.Tensor:
    """The 8 centres ``radius * (cos(k pi/4), sin(k pi/4))``, ``k = 0..7``, shape (8, 2)."""
    angle = np.arange(8) * (np.pi / 4)
    return _points(radius * np.stack([np.cos(angle), np.sin(angle)], 1))


def sample_eight_gaussians(n: int, rng: np.random.Generator, noise: float = 0.02) -> torch.Tensor:
    """``x = c_k + noise * e``, ``k ~ U{0..7}``, ``e ~ N(0, I)``; centres on radius 2."""
    angle = rng.integers(0, 8, n) * (np.pi / 4)
    centres = 2.0 * np.stack([np.cos(angle), np.sin(angle)], 1)
    return _points(centres + noise * rng.standard_normal((n, 2)))


def sample_checkerboard(n: int, rng: np.random.Generator, noise: float = 0.0) -> torch.Tensor:
    """Uniform on the squares ``[2i, 2i+2) x [2j, 2j+2)`` of ``[-4, 4]^2`` with ``i + j`` even
    (FFJORD's layout); plus ``noise * e`` when ``noise > 0``."""
    x1 = rng.random(n) * 4 - 2
    x2 = rng.random(n) - rng.integers(0, 2, n) * 2 + np.floor(x1) % 2
    x = 2 * np.stack([x1, x2], 1)
    return _points(x + noise * rng.standard_normal((n, 2)) if noise > 0 else x)


def sample_spirals(n: int, rng: np.random.Generator, noise: float = 0.1) -> torch.Tensor:
    """Two spirals: ``t = 3 pi sqrt(U)``, ``p = (-t cos t, t sin t) + U[0, 0.5)^2``,
    ``x = +-p / 3 + noise * e`` (each arm with probability 1/2)."""
    t = np.sqrt(rng.random(n)) * 3 * np.pi
    p = np.stack([-np.cos(t) * t, np.sin(t) * t], 1) + rng.random((n, 2)) * 0.5
    sign = np.where(rng.random(n) < 0.5, -1.0, 1.0)
    return _points(sign[:, None] * p / 3 + noise * rng.standard_normal((n, 2)))


RING_RADII = (0.75, 1.5, 2.25, 3.0)


def sample_rings(n: int, rng: np.random.Generator, noise: float = 0.08) -> torch.Tensor:
    """``x = r_k (cos a, sin a) + noise * e``, ``k ~ U{0..3}``, ``a ~ U[0, 2 pi)``."""
    r = np.asarray(RING_RADII)[rng.integers(0, 4, n)]
    a = rng.uniform(0.0, 2 * np.pi, n)
    circle = r[:, None] * np.stack([np.cos(a), np.sin(a)], 1)
    return _points(circle + noise * rng.standard_normal((n, 2)))


SAMPLERS: dict[str, tuple[Sampler, float]] = {
    "moons": (sample_moons, 0.1),
    "eight_gaussians": (sample_eight_gaussians, 0.02),
    "checkerboard": (sample_checkerboard, 0.0),
    "spirals": (sample_spirals, 0.1),
    "rings": (sample_rings, 0.08),
}


def toy_splits(name: str, cfg: DataConfig) -> RawSplits:
    """Train/valid/test samples of the toy density ``name`` from the fixed split seeds."""
    sampler, default_noise = SAMPLERS[name]
    noise = default_noise if cfg.noise is None else cfg.noise
    out = {}
    for split in SPLITS:
        n = getattr(cfg, f"num_{split}") or DEFAULT_SIZES[split]
        out[split] = sampler(n, np.random.default_rng(SPLIT_SEEDS[split]), noise)
    return RawSplits(kind="points", **out)


#: the registered toy densities and the one-line description ``pyrogen data`` lists
TOY_DENSITIES = {
    "moons": "Two interleaved half circles (2-D).",
    "eight_gaussians": "Mixture of 8 Gaussians on the circle of radius 2 (2-D).",
    "checkerboard": "Uniform density on the dark squares of a 4x4 checkerboard (2-D).",
    "spirals": "Two spiral arms (2-D).",
    "rings": "Four concentric rings (2-D).",
}


def _toy_builder(name: str) -> Callable[..., RawSplits]:
    """The ``DATASETS`` builder of the toy density ``name``."""

    def build(cfg: DataConfig, seed: int = 0) -> RawSplits:
        return toy_splits(name, cfg)

    build.__name__ = build.__qualname__ = name
    return build


for _name, _doc in TOY_DENSITIES.items():
    DATASETS.add(_name, _toy_builder(_name), _doc)

"""Per-batch preprocessing of images in [0, 1] and the change of variables it implies.

Images are stored as intensities on the grid ``x in {0, 1/(L-1), ..., 1}`` of ``L`` levels
(``L = 256`` for 8-bit images, ``17`` for scikit-learn's digits, ``2`` for binary images).

* :func:`binarize`: dynamic binarisation ``b ~ Bernoulli(x)``.
* :func:`dequantize`: uniform dequantisation ``y = (x (L-1) + u) / L`` with ``u ~ U[0, 1)``,
  so the pixel of level ``k`` becomes a point of its bin ``[k/L, (k+1)/L)``. A density ``p`` on
  the unit cube ``[0, 1]^D`` then bounds the discrete model: ``P(x) >= L^-D p(y)`` on average
  over ``u`` (Theis et al., 2016).
* :func:`logit_transform`: ``s = lam + (1 - 2 lam) y``, ``z = log s - log(1 - s)`` maps the
  cube to ``R^D`` (Dinh et al., 2017), with ``log |dz/dy| = sum_i [log(1 - 2 lam) - log s_i
  - log(1 - s_i)]``, so ``log p_cube(y) = log p_model(z) + log |dz/dy|``.
* :func:`bits_per_dim`: ``(-log p_cube(y) + D log L) / (D log 2)``, the usual figure of merit.

Every random draw takes a ``torch.Generator``; a CPU generator serves CUDA tensors too (the
noise is drawn on the generator's device and moved), so runs are reproducible on both.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def uniform_like(x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """``u ~ U[0, 1)`` of the shape, dtype and device of ``x``, drawn from ``generator``.

    The draw happens on the generator's device (the CPU for ``torch.Generator()``) and is moved
    to ``x.device``, so a CPU generator gives the same numbers whether ``x`` is on CPU or CUDA.
    """
    if generator is None:
        return torch.rand(x.shape, dtype=x.dtype, device=x.device)
    u = torch.rand(x.shape, generator=generator, dtype=x.dtype, device=generator.device)
    return u.to(x.device)


def binarize(x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Dynamic binarisation: ``b_i ~ Bernoulli(x_i)`` independently, as ``x``'s dtype.

    Computed as ``b_i = [u_i < x_i]`` with ``u_i ~ U[0, 1)``, so ``E[b_i] = x_i`` exactly.

    Example::

        >>> g = torch.Generator().manual_seed(0)
        >>> binarize(torch.tensor([0.0, 1.0]), g)
        tensor([0., 1.])
    """
    return (uniform_like(x, generator) < x).to(x.dtype)


def dequantize(
    x: torch.Tensor, levels: int = 256, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Uniform dequantisation ``y = (k + u) / L`` of ``x = k / (L - 1)``, ``u ~ U[0, 1)``.

    ``k = round(x (L - 1))`` is the pixel's level, so ``y`` lies in the bin
    ``[k/L, (k+1)/L)``; for 8-bit images this is ``y = (255 x + u) / 256``. A float32 sum
    ``k + u`` can round up to ``k + 1``; such draws are moved to the largest float below the
    bin's upper edge, so the bins never overlap and ``y < 1`` always.

    Example::

        >>> y = dequantize(torch.tensor([0.0, 1.0]), 256, torch.Generator().manual_seed(0))
        >>> bool((y[0] < 1 / 256) and (y[1] >= 255 / 256) and (y[1] < 1))
        True
    """
    if levels < 2:
        raise ValueError(f"dequantize: levels must be >= 2, got {levels}")
    k = torch.round(x * (levels - 1))
    lo, hi = k / levels, (k + 1) / levels
    y = (k + uniform_like(x, generator)) / levels
    y = torch.maximum(y, lo)
    return torch.where(y >= hi, torch.nextafter(hi, lo), y)


def logit_transform(y: torch.Tensor, lam: float) -> tuple[torch.Tensor, torch.Tensor]:
    """``z = logit(lam + (1 - 2 lam) y)`` and its per-example ``log |det dz/dy|``.

    With ``s = lam + (1 - 2 lam) y``::

        log |det dz/dy| = sum_i [ log(1 - 2 lam) - log s_i - log(1 - s_i) ]

    summed over every dimension but the first (the batch). ``lam`` in ``[0, 0.5)`` keeps
    ``s`` away from 0 and 1 (``lam = 1e-6`` for MNIST, ``0.05`` for CIFAR-10 in RealNVP).

    Example::

        >>> z, ld = logit_transform(torch.full((1, 3), 0.5), 0.0)
        >>> z.tolist(), round(float(ld), 4)  # log 4 per dimension
        ([[0.0, 0.0, 0.0]], 4.1589)
    """
    if not 0.0 <= lam < 0.5:
        raise ValueError(f"logit_transform: lam must be in [0, 0.5), got {lam}")
    s = lam + (1.0 - 2.0 * lam) * y
    z = torch.log(s) - torch.log1p(-s)
    return z, logit_log_det(z, lam)


def logit_log_det(z: torch.Tensor, lam: float) -> torch.Tensor:
    """Per-example ``log |det dz/dy|`` of :func:`logit_transform`, written in terms of ``z``.

    ``-log s = softplus(-z)`` and ``-log(1 - s) = softplus(z)`` for ``s = sigmoid(z)``, so
    ``log |det dz/dy| = sum_i [log(1 - 2 lam) + softplus(z_i) + softplus(-z_i)]``, which is
    stable for large ``|z|``.
    """
    per_dim = math.log1p(-2.0 * lam) + F.softplus(z) + F.softplus(-z)
    return per_dim.reshape(z.shape[0], -1).sum(-1)


def inverse_logit(z: torch.Tensor, lam: float) -> torch.Tensor:
    """The inverse of :func:`logit_transform`: ``y = (sigmoid(z) - lam) / (1 - 2 lam)``."""
    return (torch.sigmoid(z) - lam) / (1.0 - 2.0 * lam)


def bits_per_dim(
    log_p_unit_cube: torch.Tensor | float, num_dims: int, levels: int = 256
) -> torch.Tensor | float:
    """Bits per dimension of a discrete image from the log-density of its dequantised twin.

    ``log_p_unit_cube`` is ``log p(y)`` in nats for the density on ``[0, 1]^D`` (add
    :func:`logit_log_det` to a model's ``log_prob`` when it works in logit space). Each pixel
    bin has width ``1/L``, so ``log P(x) ~ log p(y) - D log L`` and::

        bits/dim = -log P(x) / (D log 2) = (-log p(y) + D log L) / (D log 2)

    The uniform density on the cube (``log p = 0``) gives exactly ``log2 L`` (8 for ``L = 256``).

    Example::

        >>> bits_per_dim(0.0, 784)
        8.0
    """
    # written as -log p / (D log 2) + log2 L: the same number, and exactly log2 L when log p = 0
    return -log_p_unit_cube / (num_dims * math.log(2.0)) + math.log2(levels)

"""Figures saved as PNG: sample grids for images, scatter and density plots for 2-D data.

Figures are ``matplotlib.figure.Figure`` objects drawn straight to files, without pyplot: they
need no screen and leave the caller's backend alone (a notebook keeps its inline figures).
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence

import numpy as np
import torch
from matplotlib.figure import Figure


def image_grid(
    images: torch.Tensor, image_shape: Sequence[int], nrow: int | None = None
) -> np.ndarray:
    """Tile ``images`` (N x D or N x C x H x W, values in [0, 1]) into one H x W (x 3) array."""
    c, h, w = image_shape
    x = images.detach().float().cpu().reshape(-1, c, h, w).clamp(0, 1).numpy()
    n = x.shape[0]
    nrow = nrow or math.ceil(math.sqrt(n))
    ncol = math.ceil(n / nrow)
    grid = np.ones((c, ncol * (h + 1) + 1, nrow * (w + 1) + 1), dtype=np.float32)
    for i in range(n):
        r, col = divmod(i, nrow)
        grid[
            :, 1 + r * (h + 1) : 1 + r * (h + 1) + h, 1 + col * (w + 1) : 1 + col * (w + 1) + w
        ] = x[i]
    return grid[0] if c == 1 else grid.transpose(1, 2, 0)


def save_image_grid(
    images: torch.Tensor,
    image_shape: Sequence[int],
    path: str | os.PathLike,
    nrow: int | None = None,
    title: str | None = None,
) -> None:
    """Save images (values in [0, 1]) as one PNG grid."""
    grid = image_grid(images, image_shape, nrow)
    fig = Figure(figsize=(max(5, grid.shape[1] / 40), max(5, grid.shape[0] / 40) + 0.3))
    ax = fig.subplots()
    ax.imshow(grid, cmap="gray", vmin=0, vmax=1, interpolation="nearest")
    ax.axis("off")
    if title:
        ax.set_title(title)
    fig.savefig(path, dpi=100, bbox_inches="tight")


def save_points(
    samples: torch.Tensor,
    path: str | os.PathLike,
    data: torch.Tensor | None = None,
    title: str | None = None,
    lim: float | None = None,
) -> None:
    """Scatter 2-D ``samples`` (orange) over ``data`` (blue)."""
    fig = Figure(figsize=(4, 4))
    ax = fig.subplots()
    if data is not None:
        d = data.detach().cpu().numpy()
        ax.scatter(d[:, 0], d[:, 1], s=2, alpha=0.3, label="data", color="tab:blue")
    s = samples.detach().cpu().numpy()
    ax.scatter(s[:, 0], s[:, 1], s=2, alpha=0.5, label="samples", color="tab:orange")
    if lim is not None:
        ax.set_xlim(-lim, lim)
        ax.set_ylim(-lim, lim)
    ax.set_aspect("equal")
    ax.legend(loc="upper right", markerscale=4)
    if title:
        ax.set_title(title)
    fig.savefig(path, dpi=100, bbox_inches="tight")


def density_grid(
    log_prob: Callable[[torch.Tensor], torch.Tensor],
    lim: float,
    resolution: int = 200,
    device: torch.device | str = "cpu",
) -> tuple[np.ndarray, np.ndarray, float]:
    """Evaluate ``log_prob`` on a ``resolution``² grid over [-lim, lim]²: returns the grid
    of densities, the axis and the cell area (so ``density.sum() * area`` ≈ 1)."""
    axis = torch.linspace(-lim, lim, resolution, device=device)
    xx, yy = torch.meshgrid(axis, axis, indexing="xy")
    pts = torch.stack([xx.reshape(-1), yy.reshape(-1)], dim=-1)
    with torch.no_grad():
        lp = torch.cat([log_prob(chunk) for chunk in pts.split(10_000)])
    dens = lp.exp().reshape(resolution, resolution).cpu().numpy()
    step = float(axis[1] - axis[0])
    return dens, axis.cpu().numpy(), step * step


def save_density(
    log_prob: Callable[[torch.Tensor], torch.Tensor],
    path: str | os.PathLike,
    data: torch.Tensor | None = None,
    lim: float = 4.0,
    resolution: int = 200,
    title: str | None = None,
    device: torch.device | str = "cpu",
) -> None:
    """A density heat-map of a 2-D model, beside a histogram of the data, as flow papers show."""
    dens, axis, _ = density_grid(log_prob, lim, resolution, device)
    ncols = 2 if data is not None else 1
    fig = Figure(figsize=(4 * ncols, 4))
    axes = fig.subplots(1, ncols, squeeze=False)
    if data is not None:
        d = data.detach().cpu().numpy()
        axes[0, 0].hist2d(d[:, 0], d[:, 1], bins=resolution // 2, range=[[-lim, lim], [-lim, lim]])
        axes[0, 0].set_title("data")
    ax = axes[0, -1]
    ax.imshow(dens, origin="lower", extent=(-lim, lim, -lim, lim))
    ax.set_title(title or "model density")
    for a in axes[0]:
        a.set_aspect("equal")
        a.set_xticks([])
        a.set_yticks([])
    fig.savefig(path, dpi=100, bbox_inches="tight")

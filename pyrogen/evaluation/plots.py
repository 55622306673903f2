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


def image_grid_figure(
    images: torch.Tensor,
    image_shape: Sequence[int],
    nrow: int | None = None,
    title: str | None = None,
) -> Figure:
    """Images (values in [0, 1]) tiled into one figure with a title."""
    grid = image_grid(images, image_shape, nrow)
    fig = Figure(figsize=(max(5, grid.shape[1] / 40), max(5, grid.shape[0] / 40) + 0.3))
    ax = fig.subplots()
    ax.imshow(grid, cmap="gray", vmin=0, vmax=1, interpolation="nearest")
    ax.axis("off")
    if title:
        ax.set_title(title, fontsize=10)
    return fig


def save_image_grid(
    images: torch.Tensor,
    image_shape: Sequence[int],
    path: str | os.PathLike,
    nrow: int | None = None,
    title: str | None = None,
) -> None:
    """Save images (values in [0, 1]) as one PNG grid."""
    image_grid_figure(images, image_shape, nrow, title).savefig(path, dpi=100, bbox_inches="tight")


def points_figure(
    samples: torch.Tensor,
    data: torch.Tensor | None = None,
    title: str | None = None,
    lim: float | None = None,
) -> Figure:
    """Scatter 2-D ``samples`` (orange) over ``data`` (blue), with axes and a legend placed
    below the plot (a legend inside would cover part of the density)."""
    fig = Figure(figsize=(4.5, 5))
    ax = fig.subplots()
    if data is not None:
        d = data.detach().cpu().numpy()
        ax.scatter(d[:, 0], d[:, 1], s=2, alpha=0.3, label="data (test split)", color="tab:blue")
    s = samples.detach().cpu().numpy()
    ax.scatter(s[:, 0], s[:, 1], s=2, alpha=0.5, label="model samples", color="tab:orange")
    if lim is not None:
        ax.set_xlim(-lim, lim)
        ax.set_ylim(-lim, lim)
    ax.set_aspect("equal")
    ax.set_xlabel("$x_1$")
    ax.set_ylabel("$x_2$")
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=2, markerscale=5, frameon=False)
    if title:
        ax.set_title(title)
    return fig


def save_points(
    samples: torch.Tensor,
    path: str | os.PathLike,
    data: torch.Tensor | None = None,
    title: str | None = None,
    lim: float | None = None,
) -> None:
    """:func:`points_figure` saved as a PNG."""
    points_figure(samples, data, title, lim).savefig(path, dpi=100, bbox_inches="tight")


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
    """A density heat-map of a 2-D model beside a histogram of the data (normalised to a
    density, on the same colour scale), with axes and a colourbar, as flow papers show."""
    dens, axis, _ = density_grid(log_prob, lim, resolution, device)
    ncols = 2 if data is not None else 1
    fig = Figure(figsize=(4.6 * ncols, 4.2), layout="constrained")
    axes = fig.subplots(1, ncols, squeeze=False)
    extent = (-lim, lim, -lim, lim)
    vmax = float(dens.max())
    if data is not None:
        d = data.detach().cpu().numpy()
        hist, _, _ = np.histogram2d(
            d[:, 0], d[:, 1], bins=resolution // 2, range=[[-lim, lim], [-lim, lim]], density=True
        )
        vmax = max(vmax, float(hist.max()))
        axes[0, 0].imshow(hist.T, origin="lower", extent=extent, vmin=0, vmax=vmax)
        axes[0, 0].set_title(f"data (histogram of {len(d):,} test points)")
    ax = axes[0, -1]
    image = ax.imshow(dens, origin="lower", extent=extent, vmin=0, vmax=vmax)
    ax.set_title(title or "model density p(x)")
    for a in axes[0]:
        a.set_aspect("equal")
        a.set_xlabel("$x_1$")
        a.set_ylabel("$x_2$")
    fig.colorbar(image, ax=list(axes[0]), label="density", shrink=0.85)
    fig.savefig(path, dpi=100, bbox_inches="tight")


def save_curves(records: list[dict], path: str | os.PathLike, title: str | None = None) -> bool:
    """Training and validation metrics against the step, one panel per metric (the records of
    a run's metrics file); returns False when there is nothing to draw."""
    skip = {"step", "epoch", "split"}
    names = []
    for r in records:
        if r["split"] in ("train", "valid"):
            names += [k for k, v in r.items() if k not in skip and isinstance(v, int | float)]
    names = list(dict.fromkeys(names))
    if not names:
        return False
    cols = min(3, len(names))
    rows = math.ceil(len(names) / cols)
    fig = Figure(figsize=(4.2 * cols, 3.2 * rows), layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    for ax, name in zip(axes, names, strict=False):
        for split, style in (("train", "-"), ("valid", "o-")):
            pts = [(r["step"], r[name]) for r in records if r["split"] == split and name in r]
            pts = [(s, v) for s, v in pts if v is not None and math.isfinite(v)]
            if pts:
                ax.plot(*zip(*pts, strict=True), style, ms=3, label=split)
        ax.set_title(name)
        ax.set_xlabel("step")
        ax.legend(fontsize=8)
    for ax in axes[len(names) :]:
        ax.set_visible(False)
    if title:
        fig.suptitle(title)
    fig.savefig(path, dpi=100, bbox_inches="tight")
    return True

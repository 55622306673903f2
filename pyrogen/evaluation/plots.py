"""Figures saved as PNG: sample grids for images, scatter and density plots for 2-D data.

Figures are ``matplotlib.figure.Figure`` objects drawn straight to files, without pyplot: they
need no screen and leave the caller's backend alone (a notebook keeps its inline figures).
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from matplotlib.figure import Figure

from pyrogen.registry import GAN_LOSSES


def image_grid(
    images: torch.Tensor,
    image_shape: Sequence[int],
    nrow: int | None = None,
    pad_value: float = 1.0,
) -> np.ndarray:
    """Tile ``images`` (N x D or N x C x H x W, values in [0, 1]) into one H x W (x 3) array,
    separated by one-pixel lines of ``pad_value``."""
    c, h, w = image_shape
    x = images.detach().float().cpu().reshape(-1, c, h, w).clamp(0, 1).numpy()
    n = x.shape[0]
    nrow = nrow or math.ceil(math.sqrt(n))
    ncol = math.ceil(n / nrow)
    grid = np.full((c, ncol * (h + 1) + 1, nrow * (w + 1) + 1), pad_value, dtype=np.float32)
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


def image_grids_figure(
    panels: Sequence[tuple[torch.Tensor, str]],
    image_shape: Sequence[int],
    nrow: int | None = None,
    title: str | None = None,
    pad_value: float = 0.5,
) -> Figure:
    """Several image grids side by side, each ``(images, panel title)`` (values in [0, 1]),
    under one optional title; the images are separated by lines of ``pad_value`` (grey: it
    stands out against binary images' black and white)."""
    grids = [image_grid(images, image_shape, nrow, pad_value) for images, _ in panels]
    h, w = grids[0].shape[:2]
    side = max(3.5, w / 40)
    fig = Figure(figsize=(side * len(grids), max(3.5, h / 40) + 0.6), layout="constrained")
    axes = fig.subplots(1, len(grids), squeeze=False)[0]
    for ax, grid, (_, name) in zip(axes, grids, panels, strict=True):
        ax.imshow(grid, cmap="gray", vmin=0, vmax=1, interpolation="nearest")
        ax.axis("off")
        ax.set_title(name, fontsize=11)
    if title:
        fig.suptitle(title, fontsize=11)
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


#: the x axis of every curve: one call of the learner's ``step`` (one update of each optimiser)
STEP_LABEL = "optimiser step"
NATS = "nats per example"


def _in_nats(gan_loss: Any) -> bool:
    """Whether the GAN loss (a ``GANLoss`` object, or the name of a registered one) is a
    binary cross-entropy (nats; its ``in_nats`` fact); the others are in D's units."""
    if isinstance(gan_loss, str):
        gan_loss = GAN_LOSSES.get(gan_loss) if gan_loss in GAN_LOSSES else None
    return bool(getattr(gan_loss, "in_nats", False))


@dataclass(frozen=True)
class CurveLine:
    """One line of a panel: ``sign`` × the metric ``key`` of the ``split`` records (in
    ``color``, or the next colour of matplotlib's cycle)."""

    split: str
    key: str
    label: str
    sign: float = 1.0
    color: str | None = None


@dataclass(frozen=True)
class CurvePanel:
    """One panel of the curves figure: its title, its y axis label (quantity and unit) and
    its lines."""

    title: str
    ylabel: str
    lines: tuple[CurveLine, ...]
    ylim: tuple[float, float] | None = None


def _metric_keys(records: list[dict], split: str) -> list[str]:
    skip = {"step", "epoch", "split"}
    keys = [
        k
        for r in records
        if r["split"] == split
        for k, v in r.items()
        if k not in skip and isinstance(v, int | float)
    ]
    return list(dict.fromkeys(keys))


def curve_panels(
    records: list[dict],
    objective: str = "ELBO",
    gan_loss: Any = None,
) -> list[CurvePanel]:
    """The panels of :func:`curves_figure` for a run's metric records, one sign convention:
    log-likelihood-like quantities in nats per example, higher is better (a VAE's training
    ``loss`` is −ELBO, drawn as −loss beside the validation ELBO; a flow's is −log p(x));
    a GAN's losses are not likelihoods and are drawn as losses, lower is better for the
    player that minimises each.

    What is drawn follows from the metrics the learner wrote (``elbo``: a latent-variable
    model's bound; ``log_prob``: an exact log-likelihood; ``d_loss``/``g_loss``: an
    adversarial game), so any learner reporting them gets the same panels.
    ``objective`` the VAE's training bound (``ELBO``, or e.g. ``IWAE bound`` for an
    importance-weighted estimator), ``gan_loss`` the GAN loss's name (its unit: nats for the
    cross-entropy losses)."""
    train, valid = _metric_keys(records, "train"), _metric_keys(records, "valid")
    every = set(train) | set(valid)
    panels: list[CurvePanel] = []
    done: set[str] = set()
    adversarial = "d_loss" in every
    if not adversarial and ("elbo" in every or "log_prob" in every):
        lines = []
        if "elbo" in every:
            title = f"{objective} (higher is better)"
            ylabel = f"{'ELBO' if objective == 'ELBO' else 'bound on log p(x)'} ({NATS})"
            train_label = (
                "train: −loss (the β-weighted ELBO: E log p(x|z) − β KL)"
                if "kl_beta" in train
                else f"train: −loss = {objective}"
            )
            valid_key, valid_label = "elbo", "validation: ELBO (1-sample estimate)"
        else:
            title = "log-likelihood (higher is better)"
            ylabel = f"log p(x) ({NATS}, model space)"
            train_label = "train: −loss = log p(x)"
            valid_key, valid_label = "log_prob", "validation: log p(x)"
        if "loss" in train:
            lines.append(CurveLine("train", "loss", train_label, sign=-1.0))
        if valid_key in valid:
            lines.append(CurveLine("valid", valid_key, valid_label))
        if lines:
            panels.append(CurvePanel(title, ylabel, tuple(lines)))
        done |= {"loss", valid_key}
    elif adversarial:
        unit = NATS if _in_nats(gan_loss) else "D's output units"
        for key, player, name in (("d_loss", "D", "discriminator"), ("g_loss", "G", "generator")):
            lines = []
            if key in train:
                extra = " (with D's penalties)" if key == "d_loss" else ""
                lines.append(CurveLine("train", key, "train" + extra))
            if key in valid:
                extra = " (no penalties)" if key == "d_loss" else ""
                lines.append(CurveLine("valid", key, "validation" + extra))
            if lines:
                panels.append(
                    CurvePanel(
                        f"{name} loss (not a likelihood)",
                        f"{player}'s loss, lower is better for {player} ({unit})",
                        tuple(lines),
                    )
                )
        outputs = (
            ("d_real", "mean D(x), data", "tab:blue"),
            ("d_fake", "mean D(G(z)), samples", "tab:red"),
        )
        lines = [
            CurveLine(split, key, f"{tag}: {what}", color=color)
            for split, tag in (("train", "train"), ("valid", "validation"))
            for key, what, color in outputs
            if key in (train if split == "train" else valid)
        ]
        if lines:
            panels.append(
                CurvePanel(
                    "discriminator's outputs",
                    "D = P(data | x), probability",
                    tuple(lines),
                    ylim=(-0.02, 1.02),
                )
            )
        done |= {"d_loss", "g_loss", "d_real", "d_fake"}
        if "d_loss" in train:
            done.add("loss")  # the training loss of a GAN is D's loss, drawn above
    known = {
        "grad_norm": ("gradient norm, before clipping", "‖∇ of the batch's summed loss‖₂"),
        "kl_beta": ("weight β of the KL term", "β (warm-up from 0 to elbo.beta)"),
        "loss": ("training loss (lower is better)", "loss, as the learner reports it"),
    }
    for key in list(dict.fromkeys(train + valid)):
        if key in done:
            continue
        title, ylabel = known.get(key, (key, f"{key}, as logged"))
        lines = [
            CurveLine(split, key, "train" if split == "train" else "validation")
            for split in ("train", "valid")
            if key in (train if split == "train" else valid)
        ]
        panels.append(CurvePanel(title, ylabel, tuple(lines)))
    return panels


def curves_figure(
    records: list[dict],
    title: str | None = None,
    objective: str = "ELBO",
    gan_loss: Any = None,
) -> Figure | None:
    """The metric records of a run against the optimiser step, one panel per quantity
    (:func:`curve_panels`): every y axis says what it shows and in which unit; ``None``
    when there is nothing to draw."""
    panels = curve_panels(records, objective, gan_loss)
    if not panels:
        return None
    cols = min(3, len(panels))
    rows = math.ceil(len(panels) / cols)
    fig = Figure(figsize=(5.2 * cols, 3.9 * rows), layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    for ax, panel in zip(axes, panels, strict=False):
        for line in panel.lines:
            pts = [
                (r["step"], r[line.key])
                for r in records
                if r["split"] == line.split and r.get(line.key) is not None
            ]
            pts = [(s, line.sign * v) for s, v in pts if math.isfinite(v)]
            if pts:
                style = "-" if line.split == "train" else "o--"
                xs, ys = zip(*pts, strict=True)
                ax.plot(xs, ys, style, ms=4, lw=1.4, color=line.color, label=line.label)
        ax.set_title(panel.title, fontsize=11)
        ax.set_xlabel(STEP_LABEL)
        ax.set_ylabel(panel.ylabel)
        if panel.ylim is not None:
            ax.set_ylim(*panel.ylim)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=9)
    for ax in axes[len(panels) :]:
        ax.set_visible(False)
    if title:
        fig.suptitle(title, fontsize=12)
    return fig


def save_curves(
    records: list[dict],
    path: str | os.PathLike,
    title: str | None = None,
    objective: str = "ELBO",
    gan_loss: Any = None,
) -> bool:
    """:func:`curves_figure` saved as a PNG; returns False when there is nothing to draw."""
    fig = curves_figure(records, title, objective, gan_loss)
    if fig is None:
        return False
    fig.savefig(path, dpi=100, bbox_inches="tight")
    return True

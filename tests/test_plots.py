"""Figures: PNG files written without pyplot, so importing pyrogen leaves a user's matplotlib
backend (a notebook's inline one) alone."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from torch import nn

import pyrogen
from pyrogen import load_config
from pyrogen.evaluation import plots
from pyrogen.evaluation.plots import (
    curves_figure,
    density_grid,
    save_density,
    save_image_grid,
    save_points,
)
from pyrogen.training import read_metrics


def test_importing_pyrogen_keeps_the_callers_matplotlib_backend():
    code = (
        "import matplotlib; before = matplotlib.get_backend(); "
        "import pyrogen, pyrogen.evaluation.plots, pyrogen.workflows.compare; "
        "import pyrogen.evaluation.gradients; "
        "assert matplotlib.get_backend() == before == 'svg', matplotlib.get_backend()"
    )
    env = {**os.environ, "MPLBACKEND": "svg"}
    subprocess.run([sys.executable, "-c", code], check=True, env=env)


def test_figures_are_written_as_png(tmp_path):
    g = torch.Generator().manual_seed(0)
    save_image_grid(torch.rand(16, 64, generator=g), (1, 8, 8), tmp_path / "grid.png")
    points = torch.randn(200, 2, generator=g)
    save_points(points, tmp_path / "points.png", data=points, lim=3.0)
    standard_normal = torch.distributions.MultivariateNormal(torch.zeros(2), torch.eye(2))
    save_density(standard_normal.log_prob, tmp_path / "density.png", data=points, resolution=50)
    for name in ("grid.png", "points.png", "density.png"):
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # the heat-map's grid is a density: it integrates to about 1 over [-4, 4]^2
    dens, _, area = density_grid(standard_normal.log_prob, lim=4.0, resolution=200)
    assert abs(dens.sum() * area - 1) < 0.01


# ---------------------------------------------------------------------------- a run's figures
TINY = ["train.epochs=2", "train.eval_every=1", "train.log_every=2", "train.device=cpu"]
RUNS = {
    "vae": ("configs/vae_digits.yaml", ["model.hidden_sizes=[32]", "elbo.kl_warmup_steps=10"]),
    "flow": ("configs/flow_moons.yaml", ["model.num_layers=2", "model.hidden_sizes=[16]"]),
    "gan": ("configs/gan_toy.yaml", ["model.hidden_sizes=[16]"]),
}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A tiny real run of each family (two epochs, validated after each)."""
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("figures")
    out = {}
    for family, (path, extra) in RUNS.items():
        cfg = load_config(path, TINY + extra + ["optim.clip_norm=1000"] * (family == "vae"))
        out[family] = pyrogen.train(cfg, root / family, quiet=True)
    return out


def curves_of(run, monkeypatch) -> tuple[list[dict], Figure]:
    """The run's metric records and the curves figure its ``save_figures`` draws."""
    drawn = []

    def keep(*args, **kwargs):
        drawn.append(curves_figure(*args, **kwargs))
        return drawn[-1]

    monkeypatch.setattr(plots, "curves_figure", keep)
    assert run.run_dir / "curves.png" in run.save_figures(4)
    return read_metrics(run.run_dir), drawn[0]


def panels_of(figure: Figure) -> dict[str, Axes]:
    return {ax.get_title(): ax for ax in figure.axes if ax.get_visible()}


def line(ax: Axes, label_start: str) -> np.ndarray:
    (found,) = [ln for ln in ax.get_lines() if ln.get_label().startswith(label_start)]
    return np.asarray(found.get_ydata(), dtype=float)


def values(records: list[dict], split: str, key: str) -> np.ndarray:
    return np.array([r[key] for r in records if r["split"] == split and key in r], dtype=float)


@pytest.mark.parametrize("family", ["vae", "flow", "gan"])
def test_every_curve_panel_names_its_quantity_and_unit(runs, family, monkeypatch):
    _, figure = curves_of(runs[family], monkeypatch)
    panels = panels_of(figure)
    assert panels
    for title, ax in panels.items():
        assert ax.get_xlabel() == "optimiser step"
        # a y label from the table of the learners' metrics, never the fallback for unknowns
        assert ax.get_ylabel() and not ax.get_ylabel().endswith("as logged"), title
        assert ax.get_legend() is not None and ax.get_legend().get_texts()


def test_the_vae_elbo_panel_draws_minus_the_training_loss_beside_the_validation_elbo(
    runs, monkeypatch
):
    records, figure = curves_of(runs["vae"], monkeypatch)
    panels = panels_of(figure)
    assert set(panels) == {
        "ELBO (higher is better)",
        "weight β of the KL term",
        "gradient norm, before clipping",
    }
    elbo = panels["ELBO (higher is better)"]
    assert elbo.get_ylabel() == "ELBO (nats per example)"
    loss = values(records, "train", "loss")
    assert (loss > 0).all()  # −ELBO of binary digits: a positive loss ...
    np.testing.assert_array_equal(line(elbo, "train"), -loss)  # ... drawn as a negative ELBO
    np.testing.assert_array_equal(line(elbo, "validation"), values(records, "valid", "elbo"))


def test_the_flow_panel_draws_minus_the_training_loss_as_a_log_likelihood(runs, monkeypatch):
    records, figure = curves_of(runs["flow"], monkeypatch)
    (ax,) = panels_of(figure).values()
    assert ax.get_title() == "log-likelihood (higher is better)"
    np.testing.assert_array_equal(line(ax, "train"), -values(records, "train", "loss"))
    np.testing.assert_array_equal(line(ax, "validation"), values(records, "valid", "log_prob"))


def test_the_gan_losses_are_drawn_as_losses_not_likelihoods(runs, monkeypatch):
    records, figure = curves_of(runs["gan"], monkeypatch)
    panels = panels_of(figure)
    # the training "loss" of a GAN is D's loss: drawn once, in D's panel, with its own sign
    assert set(panels) == {
        "discriminator loss (not a likelihood)",
        "generator loss (not a likelihood)",
        "discriminator's outputs",
    }
    d = panels["discriminator loss (not a likelihood)"]
    assert "lower is better for D" in d.get_ylabel() and "nats" in d.get_ylabel()
    np.testing.assert_array_equal(line(d, "train"), values(records, "train", "d_loss"))
    g = panels["generator loss (not a likelihood)"]
    assert "lower is better for G" in g.get_ylabel()
    np.testing.assert_array_equal(line(g, "validation"), values(records, "valid", "g_loss"))


class SignDecoder(nn.Module):
    """Logits ±50 (the sign of a fixed projection of z): E[x | z] is 1 or 2e-22, so a draw
    x ~ p(x | z) equals its decoder mean to 1e-21 (certainly so, for the same z only)."""

    def __init__(self, latent_dim: int, num_dims: int) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.register_buffer("w", torch.randn(latent_dim, num_dims, generator=g))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return 50.0 * torch.sign(z @ self.w)


def test_a_bernoulli_vaes_samples_figure_shows_draws_beside_the_means_of_the_same_z(
    runs, monkeypatch
):
    run = runs["vae"]
    figure = run.samples_figure(16)
    panels = panels_of(figure)
    assert list(panels) == ["draws x ~ p(x | z)", "decoder means E[x | z] (the same z)"]
    draws, means = (np.asarray(ax.get_images()[0].get_array()) for ax in panels.values())
    pad = draws == 0.5  # the grey lines between the images, the same in both grids
    np.testing.assert_array_equal(pad, means == 0.5)
    assert set(np.unique(draws[~pad])) == {0.0, 1.0}  # binary draws ...
    assert ((means[~pad] > 0.01) & (means[~pad] < 0.99)).any()  # ... beside grey means

    vae = run.model
    monkeypatch.setattr(vae, "decoder", SignDecoder(vae.latent_dim, vae.num_dims))
    panels = panels_of(run.samples_figure(16))
    draws, means = (np.asarray(ax.get_images()[0].get_array()) for ax in panels.values())
    # every draw is the mean of its own z (independent z would differ in about half the pixels)
    np.testing.assert_allclose(draws, means, rtol=0, atol=1e-20)
    cells = means[1:9, 1:9], means[1:9, 10:18]  # two of the sixteen 8x8 images
    assert not np.array_equal(*cells)  # and the z differ from image to image

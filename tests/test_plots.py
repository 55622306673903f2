"""Figures: PNG files written without pyplot, so importing pyrogen leaves a user's matplotlib
backend (a notebook's inline one) alone."""

from __future__ import annotations

import os
import subprocess
import sys

import torch

from pyrogen.evaluation.plots import density_grid, save_density, save_image_grid, save_points


def test_importing_pyrogen_keeps_the_callers_matplotlib_backend():
    code = (
        "import matplotlib; before = matplotlib.get_backend(); "
        "import pyrogen, pyrogen.evaluation.plots, pyrogen.evaluation.compare; "
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

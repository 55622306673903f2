"""The VAE paper's figures: reconstructions, latent interpolations and, for a 2-D latent
space, the learned data manifold (decoder means over a grid of z whose coordinates are
Φ⁻¹ of evenly spaced quantiles, as in Kingma & Welling's Fig. 4). A conditional VAE's are
drawn given each test image's own context c (interpolations: c of the line's start; the
manifold: c of the first test image)."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from pyrogen.evaluation.plots import save_image_grid
from pyrogen.models.hierarchical import HierarchicalVAE
from pyrogen.models.vae import posterior_mean


@torch.no_grad()
def interpolations(
    vae,
    x_a: torch.Tensor,
    x_b: torch.Tensor,
    steps: int = 10,
    y_a: torch.Tensor | None = None,
    y_b: torch.Tensor | None = None,
):
    """Decoder means along straight lines between the posterior means of pairs (a, b); a
    CVAE's E[x | z, c_a] along the line between E_q[z | x_a, c_a] and E_q[z | x_b, c_b]."""
    za, zb = posterior_mean(vae.guide, x_a, y=y_a), posterior_mean(vae.guide, x_b, y=y_b)
    t = torch.linspace(0, 1, steps, device=za.device)[None, :, None]
    z = za[:, None] + t * (zb - za)[:, None]
    if y_a is None:
        return vae.decode(z).mean.reshape(-1, vae.num_dims)
    y = y_a.repeat_interleave(steps, dim=0)
    return vae.decode(z.reshape(-1, z.shape[-1]), y).mean.reshape(-1, vae.num_dims)


@torch.no_grad()
def manifold(vae, grid: int = 15, y: torch.Tensor | None = None) -> torch.Tensor:
    """Decoder means over the grid z = (Φ⁻¹(u), Φ⁻¹(v)), u, v evenly spaced in (0, 1) (a
    CVAE's E[x | z, c] for one context ``y``)."""
    if vae.latent_dim != 2:
        raise ValueError(f"the manifold figure needs a 2-D latent space, not {vae.latent_dim}-D")
    u = torch.linspace(0.5 / grid, 1 - 0.5 / grid, grid, device=vae.prior_loc.device)
    coords = torch.distributions.Normal(0.0, 1.0).icdf(u)
    zz = torch.stack(torch.meshgrid(coords.flip(0), coords, indexing="ij"), -1).reshape(-1, 2)
    if y is None:
        return vae.decode(zz).mean.reshape(-1, vae.num_dims)
    return vae.decode(zz, y[:1].expand(zz.shape[0], *y.shape[1:])).mean.reshape(-1, vae.num_dims)


def save_vae_figures(
    vae, x: torch.Tensor, image_shape, out_dir: str | os.PathLike, y: torch.Tensor | None = None
):
    """Write reconstructions.png, interpolations.png and (2-D latent) manifold.png (decoder
    means E[x | z], which the titles say: they are not samples); a CVAE's given the context
    ``y`` of the examples ``x``."""
    out = Path(out_dir)
    paths: list[Path] = []

    def save(name: str, grid: torch.Tensor, nrow: int, title: str) -> None:
        save_image_grid(grid, image_shape, out / name, nrow=nrow, title=title)
        paths.append(out / name)

    n = min(16, x.shape[0])
    recon = vae.reconstruct(x[:n], None if y is None else y[:n]).reshape(n, -1)
    pairs = torch.stack([x[:n].reshape(n, -1), recon], 1).reshape(2 * n, -1)
    save(
        "reconstructions.png",
        pairs,
        8,
        "data (odd columns) and reconstruction E[x | z = posterior mean] (even)",
    )
    if x.shape[0] >= 2 * 6:
        ya, yb = (None, None) if y is None else (y[:6], y[6:12])
        lines = interpolations(vae, x[:6], x[6:12], steps=10, y_a=ya, y_b=yb)
        save(
            "interpolations.png",
            lines,
            10,
            "E[x | z] along lines between posterior means of test images",
        )
    if vae.latent_dim == 2 and not isinstance(vae, HierarchicalVAE):  # p(z1) is not N(0, I)
        save(
            "manifold.png",
            manifold(vae, y=y),
            15,
            "learned manifold: E[x | z] on a grid of Φ⁻¹ quantiles of z",
        )
    return paths

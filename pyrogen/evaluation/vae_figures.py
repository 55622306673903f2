"""The VAE paper's figures: reconstructions, latent interpolations and, for a 2-D latent
space, the learned data manifold (decoder means over a grid of z whose coordinates are
Φ⁻¹ of evenly spaced quantiles, as in Kingma & Welling's Fig. 4)."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from pyrogen.evaluation.plots import save_image_grid
from pyrogen.models.vae import posterior_mean


@torch.no_grad()
def interpolations(vae, x_a: torch.Tensor, x_b: torch.Tensor, steps: int = 10):
    """Decoder means along straight lines between the posterior means of pairs (a, b)."""
    za, zb = posterior_mean(vae.guide, x_a), posterior_mean(vae.guide, x_b)
    t = torch.linspace(0, 1, steps, device=za.device)[None, :, None]
    z = za[:, None] + t * (zb - za)[:, None]
    return vae.decode(z).mean.reshape(-1, vae.num_dims)


@torch.no_grad()
def manifold(vae, grid: int = 15) -> torch.Tensor:
    """Decoder means over the grid z = (Φ⁻¹(u), Φ⁻¹(v)), u, v evenly spaced in (0, 1)."""
    if vae.latent_dim != 2:
        raise ValueError(f"the manifold figure needs a 2-D latent space, not {vae.latent_dim}-D")
    u = torch.linspace(0.5 / grid, 1 - 0.5 / grid, grid, device=vae.prior_loc.device)
    coords = torch.distributions.Normal(0.0, 1.0).icdf(u)
    zz = torch.stack(torch.meshgrid(coords.flip(0), coords, indexing="ij"), -1).reshape(-1, 2)
    return vae.decode(zz).mean.reshape(-1, vae.num_dims)


def save_vae_figures(vae, x: torch.Tensor, image_shape, out_dir: str | os.PathLike):
    """Write reconstructions.png, interpolations.png and (2-D latent) manifold.png (decoder
    means E[x | z], which the titles say: they are not samples)."""
    out = Path(out_dir)
    n = min(16, x.shape[0])
    paths = []
    recon = vae.reconstruct(x[:n]).reshape(n, -1)
    pairs = torch.stack([x[:n].reshape(n, -1), recon], 1).reshape(2 * n, -1)
    save_image_grid(
        pairs,
        image_shape,
        out / "reconstructions.png",
        nrow=8,
        title="data (odd columns) and reconstruction E[x | z = posterior mean] (even)",
    )
    paths.append(out / "reconstructions.png")
    if x.shape[0] >= 2 * 6:
        lines = interpolations(vae, x[:6], x[6:12], steps=10)
        save_image_grid(
            lines,
            image_shape,
            out / "interpolations.png",
            nrow=10,
            title="E[x | z] along lines between posterior means of test images",
        )
        paths.append(out / "interpolations.png")
    if vae.latent_dim == 2:
        save_image_grid(
            manifold(vae),
            image_shape,
            out / "manifold.png",
            nrow=15,
            title="learned manifold: E[x | z] on a grid of Φ⁻¹ quantiles of z",
        )
        paths.append(out / "manifold.png")
    return paths

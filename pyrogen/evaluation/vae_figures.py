"""The VAE paper's figures: reconstructions, latent interpolations and, for a 2-D latent
space, the learned data manifold (decoder means over a grid of z whose coordinates are
Φ⁻¹ of evenly spaced quantiles, as in Kingma & Welling's Fig. 4)."""

from __future__ import annotations

import os

import torch

from pyrogen.evaluation.plots import save_image_grid


@torch.no_grad()
def interpolations(vae, guide, x_a: torch.Tensor, x_b: torch.Tensor, steps: int = 10):
    """Decoder means along straight lines between the posterior means of pairs (a, b)."""
    za, zb = _posterior_mean(guide, x_a), _posterior_mean(guide, x_b)
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


def _posterior_mean(guide, x: torch.Tensor) -> torch.Tensor:
    q = guide.posterior(x)
    try:
        return q.mean
    except NotImplementedError:  # a flow posterior (IAF) has no closed-form mean
        return q.sample((64,)).mean(0)


def save_vae_figures(vae, guide, x: torch.Tensor, image_shape, out_dir: str | os.PathLike):
    """Write reconstructions.png, interpolations.png and (2-D latent) manifold.png."""
    from pathlib import Path

    out = Path(out_dir)
    n = min(16, x.shape[0])
    paths = []
    q_mean = _posterior_mean(guide, x[:n])
    recon = vae.decode(q_mean).mean.reshape(n, -1)
    pairs = torch.stack([x[:n].reshape(n, -1), recon], 1).reshape(2 * n, -1)
    save_image_grid(
        pairs,
        image_shape,
        out / "reconstructions.png",
        nrow=8,
        title="data (odd) and reconstruction (even)",
    )
    paths.append(out / "reconstructions.png")
    if x.shape[0] >= 2 * 6:
        lines = interpolations(vae, guide, x[:6], x[6:12], steps=10)
        save_image_grid(lines, image_shape, out / "interpolations.png", nrow=10)
        paths.append(out / "interpolations.png")
    if vae.latent_dim == 2:
        save_image_grid(
            manifold(vae), image_shape, out / "manifold.png", nrow=15, title="learned manifold"
        )
        paths.append(out / "manifold.png")
    return paths

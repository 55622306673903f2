"""Sample-quality scores that need no network downloaded from elsewhere.

* Kernel MMD² (Gretton et al. 2012, eq. 3) with the Gaussian kernel
  k(a, b) = exp(−‖a − b‖² / (2h²)): the unbiased U-statistic

      MMD²_u = Σ_{i≠j} k(x_i, x_j) / (n(n−1)) + Σ_{i≠j} k(y_i, y_j) / (m(m−1))
               − 2 Σ_{i,j} k(x_i, y_j) / (nm),

  whose expectation is exactly 0 when both samples come from one distribution (so single
  values can be negative). The bandwidth h defaults to the median heuristic on the pooled
  sample, h = sqrt(median_{a≠b} ‖a − b‖² / 2), so that the median pair has k = e^{−1/2}.
  With ``scales`` (e.g. ``(0.5, 1, 2)``) the kernel is the *mean* of the Gaussian kernels of
  bandwidths s·h: still characteristic, k(a, a) = 1, and MMD² is the mean of the
  per-bandwidth MMD²s (robust to a median h that is too wide or narrow for the feature scale).
* Fréchet distance between Gaussians fitted to two samples (Dowson & Landau 1982; the FID of
  Heusel et al. 2017):

      FD = ‖μ₁ − μ₂‖² + tr(C₁ + C₂ − 2 (C₁ C₂)^{1/2}),
      tr (C₁ C₂)^{1/2} = tr (C₁^{1/2} C₂ C₁^{1/2})^{1/2}   (a symmetric PSD matrix),

  in the penultimate-layer features of a :class:`FeatureClassifier` that pyrogen trains on the
  data set's own labelled train split (the "Fréchet classifier distance", no Inception net),
  or in the raw data space for unlabelled data (the 2-D toys). Fitted from N samples the
  FD is biased upwards (by roughly tr C / N per side for K-dim features with N ≫ K), so
  compare models only at equal sample sizes; MMD²_u has no such bias.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from pyrogen.nets import MLP


def _sq_dists(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """‖a_i − b_j‖² for all pairs, (N, M), via ‖a‖² + ‖b‖² − 2 a·b (clamped at 0)."""
    return (a.pow(2).sum(-1)[:, None] + b.pow(2).sum(-1)[None, :] - 2 * a @ b.T).clamp_min(0)


def _flat64(x: torch.Tensor) -> torch.Tensor:
    return x.reshape(x.shape[0], -1).double()


@torch.no_grad()
def median_bandwidth(
    x: torch.Tensor, y: torch.Tensor, max_points: int = 1000, seed: int = 0
) -> float:
    """Median heuristic h = sqrt(median_{a≠b} ‖a − b‖² / 2) over the pooled sample.

    Computed on a random subsample of at most ``max_points`` pooled points (a seeded
    permutation, so sorted inputs, e.g. by class, do not bias it); O(max_points²) memory.
    """
    pooled = torch.cat([_flat64(x), _flat64(y).to(x.device)])
    if pooled.shape[0] > max_points:
        gen = torch.Generator().manual_seed(seed)
        pooled = pooled[torch.randperm(pooled.shape[0], generator=gen)[:max_points].to(x.device)]
    n = pooled.shape[0]
    i, j = torch.triu_indices(n, n, offset=1, device=pooled.device)
    d = _sq_dists(pooled, pooled)[i, j]
    return math.sqrt(max(d.median().item(), 1e-12) / 2)


def _kernel_sum(
    a: torch.Tensor, b: torch.Tensor, bandwidths: Sequence[float], batch_size: int
) -> torch.Tensor:
    """Σ_{i,j} mean_h exp(−‖a_i − b_j‖² / (2h²)), in row blocks of ``batch_size``."""
    total = a.new_zeros(())
    for block in a.split(batch_size):
        d = _sq_dists(block, b)
        total += sum(torch.exp(d / (-2 * h * h)).sum() for h in bandwidths) / len(bandwidths)
    return total


@torch.no_grad()
def mmd2(
    x: torch.Tensor,
    y: torch.Tensor,
    bandwidth: float | None = None,
    unbiased: bool = True,
    batch_size: int = 1024,
    scales: Sequence[float] = (1.0,),
) -> float:
    """Squared MMD between samples ``x`` (N, ...) and ``y`` (M, ...) with a Gaussian kernel.

    Inputs are flattened to (N, D) and computed in float64 on ``x``'s device, in blocks of
    ``batch_size`` rows (memory O(batch_size · max(N, M))). ``bandwidth`` None uses
    :func:`median_bandwidth`; the kernel is the mean over bandwidths ``s · h`` for s in
    ``scales``. ``unbiased`` gives the U-statistic (diagonal terms k(x_i, x_i) = 1 left
    out); otherwise the biased V-statistic (all pairs, always ≥ 0).
    """
    x, y = _flat64(x), _flat64(y).to(x.device)
    n, m = x.shape[0], y.shape[0]
    if unbiased and min(n, m) < 2:
        raise ValueError("the unbiased MMD² needs at least two points in each sample")
    h = median_bandwidth(x, y) if bandwidth is None else float(bandwidth)
    if h <= 0:
        raise ValueError(f"bandwidth must be positive, got {h}")
    hs = [s * h for s in scales]
    kxx = _kernel_sum(x, x, hs, batch_size)
    kyy = _kernel_sum(y, y, hs, batch_size)
    kxy = _kernel_sum(x, y, hs, batch_size)
    if unbiased:  # every diagonal term is exactly k(a, a) = 1
        sxx, syy = (kxx - n) / (n * (n - 1)), (kyy - m) / (m * (m - 1))
    else:
        sxx, syy = kxx / n**2, kyy / m**2
    return float(sxx + syy - 2 * kxy / (n * m))


def gaussian_stats(features: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Mean μ = Σ f_i / N and unbiased covariance C = Σ (f_i − μ)(f_i − μ)ᵀ / (N − 1) of
    features (N, K), as float64 numpy arrays of shapes (K,) and (K, K)."""
    f = features.detach().reshape(features.shape[0], -1).double().cpu().numpy()
    return f.mean(0), np.atleast_2d(np.cov(f, rowvar=False))


def frechet_distance(mu1: np.ndarray, cov1: np.ndarray, mu2: np.ndarray, cov2: np.ndarray) -> float:
    """‖μ₁ − μ₂‖² + tr(C₁ + C₂ − 2 (C₁^{1/2} C₂ C₁^{1/2})^{1/2}) in float64.

    Both square roots come from symmetric eigen-decompositions (eigenvalues clipped at 0), so
    no complex parts appear, unlike a general ``sqrtm(C₁ C₂)`` of a non-symmetric product.
    """
    mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
    cov1, cov2 = np.atleast_2d(cov1).astype(np.float64), np.atleast_2d(cov2).astype(np.float64)
    w, v = np.linalg.eigh((cov1 + cov1.T) / 2)
    root1 = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    inner = root1 @ cov2 @ root1
    tr_sqrt = np.sqrt(np.clip(np.linalg.eigvalsh((inner + inner.T) / 2), 0, None)).sum()
    fd = ((mu1 - mu2) ** 2).sum() + np.trace(cov1) + np.trace(cov2) - 2 * tr_sqrt
    return float(max(fd, 0.0))


def frechet_distance_raw(real: torch.Tensor, fake: torch.Tensor) -> float:
    """The Fréchet distance between Gaussians fitted to the (flattened) samples themselves."""
    return frechet_distance(*gaussian_stats(real), *gaussian_stats(fake))


class FeatureClassifier(nn.Module):
    """An MLP classifier ``in_dim -> hidden... -> feature_dim -> ReLU -> num_classes`` for
    flattened images; the ``feature_dim`` pre-activations of its last hidden layer
    (:meth:`features`) define the Fréchet classifier distance."""

    def __init__(
        self,
        in_dim: int,
        num_classes: int,
        hidden_sizes: Sequence[int] = (256,),
        feature_dim: int = 64,
    ) -> None:
        super().__init__()
        self.body = MLP(in_dim, list(hidden_sizes), feature_dim, "relu")
        self.head = nn.Sequential(nn.ReLU(), nn.Linear(feature_dim, num_classes))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x.reshape(x.shape[0], -1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def train_feature_classifier(
    x: torch.Tensor,
    y: torch.Tensor,
    num_classes: int,
    epochs: int = 20,
    seed: int = 0,
    device: torch.device | str | None = None,
    batch_size: int = 128,
    lr: float = 5e-3,
) -> FeatureClassifier:
    """Train a :class:`FeatureClassifier` on labelled data ``x`` (N, ...), ``y`` (N,) by
    minibatch cross-entropy with Adam; seeded (initialisation and batch order) without
    touching the global RNG. Returns it in eval mode on ``device`` (default: ``x``'s)."""
    device = torch.device(device) if device is not None else x.device
    gen = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        clf = FeatureClassifier(x[0].numel(), num_classes).to(device)
    opt = torch.optim.Adam(clf.parameters(), lr=lr)
    x, y = x.reshape(x.shape[0], -1).float().to(device), y.long().to(device)
    clf.train()
    for _ in range(epochs):
        for idx in torch.randperm(x.shape[0], generator=gen).to(device).split(batch_size):
            loss = nn.functional.cross_entropy(clf(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    return clf.eval()


@torch.no_grad()
def _batched_features(clf: FeatureClassifier, x: torch.Tensor, batch_size: int) -> torch.Tensor:
    device = next(clf.parameters()).device
    x = x.reshape(x.shape[0], -1).float()
    return torch.cat([clf.features(b.to(device)) for b in x.split(batch_size)])


@torch.no_grad()
def accuracy(clf: FeatureClassifier, x: torch.Tensor, y: torch.Tensor) -> float:
    """Fraction of ``x`` whose arg-max class equals the label ``y``."""
    device = next(clf.parameters()).device
    logits = clf(x.reshape(x.shape[0], -1).float().to(device))
    return (logits.argmax(-1) == y.to(device)).float().mean().item()


@torch.no_grad()
def fcd(
    clf: FeatureClassifier, real: torch.Tensor, fake: torch.Tensor, batch_size: int = 4096
) -> float:
    """Fréchet classifier distance: :func:`frechet_distance` between Gaussians fitted to
    ``clf.features`` of the real and of the generated samples."""
    return frechet_distance(
        *gaussian_stats(_batched_features(clf, real, batch_size)),
        *gaussian_stats(_batched_features(clf, fake, batch_size)),
    )


def sample_quality(
    real: torch.Tensor, fake: torch.Tensor, classifier: FeatureClassifier | None = None
) -> dict[str, float | str]:
    """``{"mmd2", "frechet", "frechet_space"}`` between real and generated samples.

    ``mmd2`` is the unbiased MMD² (median-heuristic Gaussian kernel) in the data space;
    ``frechet`` is the FCD in ``classifier``'s features when one is given
    (``frechet_space = "classifier features"``), else the Fréchet distance in the data space
    (``frechet_space = "data"``).
    """
    real, fake = real.reshape(real.shape[0], -1), fake.reshape(fake.shape[0], -1)
    out: dict[str, float | str] = {"mmd2": mmd2(real, fake)}
    if classifier is not None:
        out["frechet"] = fcd(classifier, real, fake)
        out["frechet_space"] = "classifier features"
    else:
        out["frechet"] = frechet_distance_raw(real, fake)
        out["frechet_space"] = "data"
    return out

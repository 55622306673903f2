"""Sample-quality scores that need no network downloaded from elsewhere.

* Kernel MMD² (Gretton et al. 2012) with a Gaussian kernel k(a, b) = exp(−‖a − b‖² / (2h²)):
  the unbiased U-statistic
      MMD²_u = mean_{i≠j} k(x_i, x_j) + mean_{i≠j} k(y_i, y_j) − 2 mean_{i,j} k(x_i, y_j),
  zero in expectation when both samples come from one distribution; h by the median
  heuristic on the pooled sample unless given.
* Fréchet distance between Gaussians fitted to features (Heusel et al. 2017):
      FD = ‖μ₁ − μ₂‖² + tr(C₁ + C₂ − 2 (C₁^{1/2} C₂ C₁^{1/2})^{1/2}),
  in the penultimate-layer features of a classifier that pyrogen trains on the same data
  set's labelled training split (no Inception network needed), or in the data space for
  unlabelled 2-D data.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from pyrogen.nets import MLP


def _sq_dists(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (a.pow(2).sum(-1)[:, None] + b.pow(2).sum(-1)[None, :] - 2 * a @ b.T).clamp_min(0)


def median_bandwidth(x: torch.Tensor, y: torch.Tensor, max_points: int = 1000) -> float:
    """h = sqrt(median ‖a − b‖² / 2) over pairs of the pooled sample (a subsample of it)."""
    pooled = torch.cat([x[:max_points], y[:max_points]])
    d = _sq_dists(pooled, pooled)
    off = d[~torch.eye(len(pooled), dtype=torch.bool, device=d.device)]
    return math.sqrt(max(off.median().item(), 1e-12) / 2)


@torch.no_grad()
def mmd2(
    x: torch.Tensor, y: torch.Tensor, bandwidth: float | None = None, unbiased: bool = True
) -> float:
    """Squared MMD between samples ``x`` (N, D) and ``y`` (M, D), Gaussian kernel."""
    x, y = x.reshape(x.shape[0], -1).double(), y.reshape(y.shape[0], -1).double()
    h = bandwidth or median_bandwidth(x, y)
    kxx = torch.exp(-_sq_dists(x, x) / (2 * h * h))
    kyy = torch.exp(-_sq_dists(y, y) / (2 * h * h))
    kxy = torch.exp(-_sq_dists(x, y) / (2 * h * h))
    n, m = x.shape[0], y.shape[0]
    if unbiased:
        sxx = (kxx.sum() - kxx.diagonal().sum()) / (n * (n - 1))
        syy = (kyy.sum() - kyy.diagonal().sum()) / (m * (m - 1))
    else:
        sxx, syy = kxx.mean(), kyy.mean()
    return float(sxx + syy - 2 * kxy.mean())


def gaussian_stats(features: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Mean and covariance (float64 numpy) of features (N, K)."""
    f = features.detach().double().cpu().numpy()
    return f.mean(0), np.atleast_2d(np.cov(f, rowvar=False))


def frechet_distance(mu1, cov1, mu2, cov2) -> float:
    """‖μ₁ − μ₂‖² + tr(C₁ + C₂ − 2 (C₁^{1/2} C₂ C₁^{1/2})^{1/2}), by symmetric eigen-
    decompositions (stable, no complex parts)."""
    mu1, mu2 = np.asarray(mu1, float), np.asarray(mu2, float)
    cov1, cov2 = np.atleast_2d(cov1), np.atleast_2d(cov2)
    w, v = np.linalg.eigh(cov1)
    root1 = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    inner = root1 @ cov2 @ root1
    eig = np.linalg.eigvalsh((inner + inner.T) / 2)
    tr_sqrt = np.sqrt(np.clip(eig, 0, None)).sum()
    return float(((mu1 - mu2) ** 2).sum() + np.trace(cov1) + np.trace(cov2) - 2 * tr_sqrt)


def frechet_distance_raw(real: torch.Tensor, fake: torch.Tensor) -> float:
    """The Fréchet distance of Gaussians fitted to the samples themselves."""
    return frechet_distance(*gaussian_stats(real), *gaussian_stats(fake))


class FeatureClassifier(nn.Module):
    """An MLP classifier; its last hidden layer (``features``) defines the Fréchet
    classifier distance."""

    def __init__(self, in_dim: int, num_classes: int, hidden: int = 128) -> None:
        super().__init__()
        self.body = MLP(in_dim, [hidden], hidden, "relu")
        self.head = nn.Sequential(nn.ReLU(), nn.Linear(hidden, num_classes))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x.reshape(x.shape[0], -1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def train_feature_classifier(
    x: torch.Tensor,
    y: torch.Tensor,
    num_classes: int,
    epochs: int = 30,
    seed: int = 0,
    device: torch.device | str | None = None,
) -> FeatureClassifier:
    """Train a :class:`FeatureClassifier` on labelled data (cross-entropy, Adam)."""
    device = device or x.device
    gen = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        clf = FeatureClassifier(x[0].numel(), num_classes).to(device)
    opt = torch.optim.Adam(clf.parameters(), lr=1e-3)
    x, y = x.reshape(x.shape[0], -1).to(device), y.to(device)
    for _ in range(epochs):
        for idx in torch.randperm(x.shape[0], generator=gen).split(128):
            idx = idx.to(device)
            loss = nn.functional.cross_entropy(clf(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    return clf.eval()


@torch.no_grad()
def accuracy(clf: FeatureClassifier, x: torch.Tensor, y: torch.Tensor) -> float:
    return (clf(x).argmax(-1) == y).float().mean().item()


@torch.no_grad()
def fcd(clf: FeatureClassifier, real: torch.Tensor, fake: torch.Tensor) -> float:
    """Fréchet classifier distance: the Fréchet distance in ``clf``'s features."""
    return frechet_distance(
        *gaussian_stats(clf.features(real)), *gaussian_stats(clf.features(fake))
    )


def sample_quality(
    real: torch.Tensor, fake: torch.Tensor, classifier: FeatureClassifier | None = None
) -> dict[str, float | str]:
    """``{"mmd2", "frechet", "frechet_space"}`` between real and generated samples."""
    real, fake = real.reshape(real.shape[0], -1), fake.reshape(fake.shape[0], -1)
    out: dict[str, float | str] = {"mmd2": mmd2(real, fake)}
    if classifier is not None:
        out["frechet"] = fcd(classifier, real, fake)
        out["frechet_space"] = "classifier features"
    else:
        out["frechet"] = frechet_distance_raw(real, fake)
        out["frechet_space"] = "data"
    return out

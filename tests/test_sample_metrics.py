"""Sample-quality metrics against closed forms."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from pyrogen.config import DataConfig
from pyrogen.data import load_dataset
from pyrogen.evaluation.sample_metrics import (
    accuracy,
    fcd,
    frechet_distance,
    frechet_distance_raw,
    mmd2,
    train_feature_classifier,
)


def expected_kernel(mu1, s1, mu2, s2, h, d):
    """E exp(−‖x − y‖²/(2h²)) for x ~ N(μ₁, s₁² I), y ~ N(μ₂, s₂² I) independent in d dims:
    x − y ~ N(Δ, v I) with v = s₁² + s₂², and E exp(−‖u‖²/(2h²)) for u ~ N(Δ, v I) is
    (h² / (h² + v))^{d/2} exp(−‖Δ‖² / (2 (h² + v)))."""
    v = s1**2 + s2**2
    delta2 = float(((mu1 - mu2) ** 2).sum())
    return (h * h / (h * h + v)) ** (d / 2) * math.exp(-delta2 / (2 * (h * h + v)))


def test_unbiased_mmd_is_zero_on_average_for_one_distribution():
    g = torch.Generator().manual_seed(0)
    values = [
        mmd2(torch.randn(200, 3, generator=g), torch.randn(200, 3, generator=g), 1.0)
        for _ in range(40)
    ]
    v = torch.tensor(values)
    assert abs(v.mean().item()) < 3 * v.std().item() / math.sqrt(len(v))
    assert (v < 0).any()  # an unbiased estimate of 0 takes both signs


def test_mmd_matches_the_gaussian_closed_form_and_grows_with_the_shift():
    g = torch.Generator().manual_seed(1)
    d, h, s = 2, 1.0, 0.5
    previous = -1.0
    for shift in (0.5, 1.0, 2.0):
        mu2 = torch.tensor([shift, 0.0])
        x = s * torch.randn(2000, d, generator=g)
        y = mu2 + s * torch.randn(2000, d, generator=g)
        zero = torch.zeros(d)
        exact = expected_kernel(zero, s, zero, s, h, d) * 2 - 2 * expected_kernel(
            zero, s, mu2, s, h, d
        )
        estimate = mmd2(x, y, bandwidth=h)
        assert estimate == pytest.approx(exact, abs=0.01)
        assert estimate > previous
        previous = estimate


def test_frechet_distance_closed_form_for_diagonal_gaussians():
    mu1, mu2 = np.array([0.0, 1.0, 2.0]), np.array([1.0, 1.0, 0.0])
    s1, s2 = np.array([1.0, 2.0, 0.5]), np.array([0.5, 2.0, 1.5])
    exact = ((mu1 - mu2) ** 2).sum() + ((s1 - s2) ** 2).sum()
    fd = frechet_distance(mu1, np.diag(s1**2), mu2, np.diag(s2**2))
    assert fd == pytest.approx(exact, rel=1e-10)
    assert frechet_distance(mu1, np.diag(s1**2), mu1, np.diag(s1**2)) == pytest.approx(0, abs=1e-9)
    # from samples, the estimate converges to the exact value
    g = torch.Generator().manual_seed(2)
    a = torch.tensor(mu1) + torch.tensor(s1) * torch.randn(
        50_000, 3, generator=g, dtype=torch.float64
    )
    b = torch.tensor(mu2) + torch.tensor(s2) * torch.randn(
        50_000, 3, generator=g, dtype=torch.float64
    )
    assert frechet_distance_raw(a, b) == pytest.approx(exact, rel=0.02)


def test_classifier_features_separate_real_from_corrupted_digits():
    ds = load_dataset(DataConfig(name="digits"))
    clf = train_feature_classifier(ds.train, ds.train_labels, 10, epochs=15, seed=0)
    assert accuracy(clf, ds.test, ds.test_labels) > 0.9
    real_a, real_b = ds.train, ds.test  # two samples of real digits
    g = torch.Generator().manual_seed(3)
    noisy = (real_b + 0.3 * torch.randn(real_b.shape, generator=g)).clamp(0, 1)
    assert fcd(clf, real_a, noisy) > 2 * fcd(clf, real_a, real_b)
    assert mmd2(real_a, noisy) > mmd2(real_a, real_b)

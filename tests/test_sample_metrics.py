"""Sample-quality metrics against closed forms and known behaviour."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.linalg
import scipy.stats
import torch

from pyrogen.config import DataConfig
from pyrogen.data import load_dataset
from pyrogen.evaluation.sample_metrics import (
    accuracy,
    fcd,
    frechet_distance,
    frechet_distance_raw,
    median_bandwidth,
    mmd2,
    sample_quality,
    train_feature_classifier,
)


def expected_kernel(mu1, s1, mu2, s2, h, d):
    """E exp(−‖x − y‖²/(2h²)) for independent x ~ N(μ₁, s₁² I), y ~ N(μ₂, s₂² I) in d dims.

    u = x − y ~ N(Δ, v I) with Δ = μ₁ − μ₂, v = s₁² + s₂². Per coordinate,
    ∫ N(u; δ, v) exp(−u²/(2h²)) du = sqrt(h²/(h² + v)) exp(−δ²/(2(h² + v)))
    (a Gaussian convolution: N(0; δ, v + h²) · sqrt(2π h²)); the d coordinates multiply.
    For x and x' from one sample, use μ₂ = μ₁, s₂ = s₁ (independent draws).
    """
    v = s1**2 + s2**2
    delta2 = float(((mu1 - mu2) ** 2).sum())
    return (h * h / (h * h + v)) ** (d / 2) * math.exp(-delta2 / (2 * (h * h + v)))


def exact_mmd2(mu2, s, h, d):
    zero = torch.zeros(d)
    return 2 * expected_kernel(zero, s, zero, s, h, d) - 2 * expected_kernel(zero, s, mu2, s, h, d)


def test_unbiased_mmd_is_zero_on_average_for_one_distribution_and_biased_is_not():
    g = torch.Generator().manual_seed(0)
    pairs = [
        (torch.randn(100, 3, generator=g), torch.randn(100, 3, generator=g)) for _ in range(60)
    ]
    u = torch.tensor([mmd2(x, y, bandwidth=1.0) for x, y in pairs])
    v = torch.tensor([mmd2(x, y, bandwidth=1.0, unbiased=False) for x, y in pairs])
    se = u.std().item() / math.sqrt(len(u))
    assert abs(u.mean().item()) < 3 * se
    assert (u < 0).any() and (u > 0).any()  # an unbiased estimate of 0 takes both signs
    assert (v > 0).all() and v.mean().item() > u.mean().item() + 10 * se  # V-statistic bias


def test_mmd_matches_the_gaussian_closed_form_and_grows_with_the_shift():
    g = torch.Generator().manual_seed(1)
    d, h, s = 2, 1.0, 0.5
    previous = 0.0
    for shift in (0.5, 1.0, 2.0):
        mu2 = torch.tensor([shift, 0.0])
        x = s * torch.randn(2000, d, generator=g)
        y = mu2 + s * torch.randn(2000, d, generator=g)
        estimate = mmd2(x, y, bandwidth=h)
        assert estimate == pytest.approx(exact_mmd2(mu2, s, h, d), abs=0.01)
        assert estimate > previous + 0.05
        previous = estimate
    # a multi-bandwidth kernel is the mean of the kernels: MMD² is the mean of MMD²s
    multi = mmd2(x, y, bandwidth=h, scales=(0.5, 1.0, 2.0))
    exact_multi = np.mean([exact_mmd2(mu2, s, c * h, d) for c in (0.5, 1.0, 2.0)])
    assert multi == pytest.approx(exact_multi, abs=0.01)


def test_batched_mmd_equals_the_direct_pairwise_formula():
    g = torch.Generator().manual_seed(4)
    x, y = torch.randn(53, 2, 3, generator=g), 0.5 + torch.randn(37, 6, generator=g)
    xf, yf = x.reshape(53, -1).double(), y.double()
    h = 1.3

    def k(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return torch.exp(-(torch.cdist(a, b) ** 2) / (2 * h * h))

    kxx, kyy = k(xf, xf), k(yf, yf)
    direct = (
        (kxx.sum() - kxx.trace()) / (53 * 52)
        + (kyy.sum() - kyy.trace()) / (37 * 36)
        - 2 * k(xf, yf).mean()
    ).item()
    for batch_size in (1, 7, 1000):
        assert mmd2(x, y, bandwidth=h, batch_size=batch_size) == pytest.approx(direct, rel=1e-9)
    biased = (kxx.mean() + kyy.mean() - 2 * k(xf, yf).mean()).item()
    assert mmd2(x, y, bandwidth=h, unbiased=False, batch_size=5) == pytest.approx(biased)


def test_median_bandwidth_matches_the_chi_square_median():
    # for a, b ~ N(0, I_d), ‖a − b‖² ~ 2 χ²_d, so h = sqrt(median / 2) = sqrt(χ²_d median)
    d = 5
    g = torch.Generator().manual_seed(5)
    x, y = torch.randn(3000, d, generator=g), torch.randn(3000, d, generator=g)
    h = median_bandwidth(x, y, max_points=2000)
    assert h == pytest.approx(math.sqrt(scipy.stats.chi2.median(d)), rel=0.02)


def test_frechet_distance_closed_forms():
    mu1, mu2 = np.array([0.0, 1.0, 2.0]), np.array([1.0, 1.0, 0.0])
    s1, s2 = np.array([1.0, 2.0, 0.5]), np.array([0.5, 2.0, 1.5])
    # diagonal covariances: ‖Δμ‖² + Σ (σ₁ − σ₂)²
    exact = ((mu1 - mu2) ** 2).sum() + ((s1 - s2) ** 2).sum()
    fd = frechet_distance(mu1, np.diag(s1**2), mu2, np.diag(s2**2))
    assert fd == pytest.approx(exact, rel=1e-10)
    assert frechet_distance(mu1, np.diag(s1**2), mu1, np.diag(s1**2)) == pytest.approx(0, abs=1e-9)
    # full covariances: the textbook formula with scipy's sqrtm of the non-symmetric C₁C₂
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(6, 6)), rng.normal(size=(6, 6))
    c1, c2 = a @ a.T + 0.1 * np.eye(6), b @ b.T
    m1, m2 = rng.normal(size=6), rng.normal(size=6)
    reference = ((m1 - m2) ** 2).sum() + np.trace(c1 + c2 - 2 * scipy.linalg.sqrtm(c1 @ c2).real)
    assert frechet_distance(m1, c1, m2, c2) == pytest.approx(reference, rel=1e-8)
    assert frechet_distance(m2, c2, m1, c1) == pytest.approx(reference, rel=1e-8)
    # estimated from samples, it converges to the exact value
    g = torch.Generator().manual_seed(2)

    def draw(mu: np.ndarray, s: np.ndarray) -> torch.Tensor:
        noise = torch.randn(50_000, 3, generator=g, dtype=torch.float64)
        return torch.tensor(mu) + torch.tensor(s) * noise

    assert frechet_distance_raw(draw(mu1, s1), draw(mu2, s2)) == pytest.approx(exact, rel=0.02)


@pytest.fixture(scope="module")
def digits_and_classifier():
    ds = load_dataset(DataConfig(name="digits"), "cpu")
    clf = train_feature_classifier(ds.train, ds.train_labels, ds.num_classes, epochs=8, seed=0)
    return ds, clf


def test_feature_classifier_is_accurate_and_fcd_separates_real_from_corrupted(
    digits_and_classifier,
):
    ds, clf = digits_and_classifier
    assert accuracy(clf, ds.test, ds.test_labels) > 0.9
    half = ds.test.shape[0] // 2
    real_a, real_b = ds.test[:half], ds.test[half:]  # two halves of real test digits
    g = torch.Generator().manual_seed(3)
    noisy = (real_b + 0.3 * torch.randn(real_b.shape, generator=g)).clamp(0, 1)
    brighter = (real_b + 0.15).clamp(0, 1)
    baseline = fcd(clf, real_a, real_b)
    assert fcd(clf, real_a, noisy) > 1.5 * baseline
    assert fcd(clf, real_a, brighter) > 2 * baseline
    assert mmd2(real_a, noisy) > mmd2(real_a, real_b) + 0.01
    assert mmd2(real_a, brighter) > mmd2(real_a, real_b) + 0.01


def test_sample_quality_names_the_frechet_space(digits_and_classifier):
    ds, clf = digits_and_classifier
    images = ds.test.reshape(-1, 1, 8, 8)
    q = sample_quality(images, ds.valid, clf)
    assert q["frechet_space"] == "classifier features"
    assert q["frechet"] == pytest.approx(fcd(clf, ds.test, ds.valid))
    g = torch.Generator().manual_seed(6)
    points, shifted = torch.randn(500, 2, generator=g), torch.randn(500, 2, generator=g) + 1
    q = sample_quality(points, shifted)
    assert q["frechet_space"] == "data" and q["frechet"] == pytest.approx(2.0, abs=0.3)
    assert q["mmd2"] > 0.05


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_metrics_on_cuda_agree_with_cpu(digits_and_classifier):
    ds, clf = digits_and_classifier
    x, y = ds.test, ds.valid
    assert mmd2(x.cuda(), y.cuda(), batch_size=100) == pytest.approx(mmd2(x, y), rel=1e-6)
    clf_gpu = train_feature_classifier(x.cuda(), ds.test_labels.cuda(), 10, epochs=1)
    assert next(clf_gpu.parameters()).is_cuda
    assert fcd(clf.cuda(), x.cuda(), y) == pytest.approx(fcd(clf.cpu(), x, y), rel=1e-4)

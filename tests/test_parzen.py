"""The Parzen-window estimator against cases with a known answer."""

from __future__ import annotations

import math

import pytest
import torch

from pyrogen.evaluation.parzen import (
    parzen_evaluate,
    parzen_log_likelihood,
    parzen_log_likelihoods,
    select_sigma,
)

pytestmark = pytest.mark.usefixtures("one_thread")


def gaussian_log_prob(x: torch.Tensor, var: float) -> torch.Tensor:
    """log N(x; 0, var I), per row."""
    d = x.shape[1]
    return -0.5 * (x.double().pow(2).sum(1) / var + d * math.log(2 * math.pi * var))


def test_parzen_window_of_gaussian_samples_approaches_the_convolved_gaussian():
    """Samples s_i ~ N(0, s² I): E p̂(x) = N(x; 0, (s² + σ²) I), and p̂ → it as N grows."""
    g = torch.Generator().manual_seed(0)
    s, sigma, d = 1.0, 0.5, 2
    x = torch.randn(500, d, generator=g)
    exact = gaussian_log_prob(x, s**2 + sigma**2)
    errors = []
    for n in (100, 1000, 50_000):
        samples = s * torch.randn(n, d, generator=g)
        errors.append((parzen_log_likelihood(samples, x, sigma) - exact).abs().mean().item())
    assert errors[-1] < 0.02
    assert errors[-1] < errors[1] < errors[0]


def test_one_sample_window_is_the_gaussian_density_in_any_dimension():
    """N = 1: p̂(x) = N(x; s_1, σ² I) exactly, here in 784 dimensions as for MNIST (nats)."""
    g = torch.Generator().manual_seed(3)
    s1, x = torch.rand(1, 784, generator=g), torch.rand(20, 784, generator=g)
    for sigma in (0.1, 0.3):
        exact = gaussian_log_prob(x - s1, sigma**2)
        torch.testing.assert_close(parzen_log_likelihood(s1, x, sigma), exact)


def test_a_grid_of_sigmas_matches_one_sigma_at_a_time_and_batching_changes_nothing():
    g = torch.Generator().manual_seed(4)
    samples, x = torch.randn(300, 5, generator=g), torch.randn(70, 5, generator=g)
    sigmas = [0.2, 0.5, 1.3]
    grid = parzen_log_likelihoods(samples, x, sigmas, batch_size=16)
    assert grid.shape == (70, 3)
    for j, sigma in enumerate(sigmas):
        torch.testing.assert_close(grid[:, j], parzen_log_likelihood(samples, x, sigma, 1000))


def test_sigma_selection_takes_the_best_of_the_grid_and_widens_with_fewer_samples():
    g = torch.Generator().manual_seed(1)
    valid = torch.randn(300, 2, generator=g)
    sigmas = torch.logspace(-1, 0, 10).tolist()
    many = torch.randn(5000, 2, generator=g)
    few = torch.randn(50, 2, generator=g)
    best_many, best_few = select_sigma(many, valid, sigmas), select_sigma(few, valid, sigmas)
    scores = [parzen_log_likelihood(many, valid, s).mean().item() for s in sigmas]
    assert best_many == sigmas[max(range(10), key=scores.__getitem__)]
    assert sigmas[0] < best_many < best_few  # not at the grid's edge, and wider for fewer


def test_parzen_evaluate_scores_any_sampler_with_a_standard_error():
    g = torch.Generator().manual_seed(2)
    valid, test = torch.randn(200, 2, generator=g), torch.randn(400, 2, generator=g)
    result = parzen_evaluate(lambda n: torch.randn(n, 2, generator=g), valid, test, 5000)
    exact = gaussian_log_prob(test, 1 + result["sigma"] ** 2).mean().item()
    assert abs(result["mean"] - exact) < 3 * result["stderr"] + 0.05
    assert 0 < result["stderr"] < 0.2 and result["num_samples"] == 5000 and result["n"] == 400


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_parzen_on_cuda_matches_cpu():
    g = torch.Generator().manual_seed(5)
    samples, x = torch.rand(2000, 784, generator=g), torch.rand(300, 784, generator=g)
    cpu = parzen_log_likelihoods(samples, x, [0.1, 0.2, 0.5])
    gpu = parzen_log_likelihoods(samples.cuda(), x.cuda(), [0.1, 0.2, 0.5])
    assert gpu.device.type == "cuda"
    torch.testing.assert_close(gpu.cpu(), cpu, rtol=1e-9, atol=1e-7)


def test_the_window_is_the_log_sum_exp_of_its_kernel_terms_even_where_they_underflow():
    """log p̂_σ(x) = logsumexp_i(−‖x − s_i‖² / (2σ²)) − log N − (D/2) log(2πσ²) to float64
    rounding, for binary images 784-d at σ from 0.01 (nearly every term below the smallest
    float: only the nearest samples count) to 1."""
    g = torch.Generator().manual_seed(5)
    samples = (torch.rand(400, 784, generator=g) > 0.7).float()
    x = (torch.rand(30, 784, generator=g) > 0.7).float()
    sigmas = [0.01, 0.1, 0.3, 1.0]
    d2 = torch.cdist(x.double(), samples.double()).pow(2)
    for j, sigma in enumerate(sigmas):
        expected = (-d2 / (2 * sigma**2)).logsumexp(1) - math.log(400)
        expected = expected - 392 * math.log(2 * math.pi * sigma**2)
        got = parzen_log_likelihoods(samples, x, sigmas, batch_size=7)[:, j]
        torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-9)


def test_narrow_windows_sum_only_the_terms_that_matter_and_equal_the_dense_sum():
    """On a grid from σ = 3 (more than half of every row's terms matter: summed densely) to
    σ = 0.05 (a few nearest samples matter: only they are summed), every window equals the
    brute-force logsumexp of all N kernel terms to float64 rounding."""
    g = torch.Generator().manual_seed(6)
    samples, x = torch.randn(3000, 5, generator=g), torch.randn(50, 5, generator=g)
    sigmas = [3.0, 1.0, 0.3, 0.1, 0.05]
    d2 = torch.cdist(x.double(), samples.double()).pow(2)
    gaps = d2 - d2.amin(1, keepdim=True)
    cut = math.log(torch.finfo(torch.float64).eps / (2 * 3000))  # where a term stops mattering
    mattering = [(-gaps / (2 * s**2) >= cut).double().mean().item() for s in sigmas]
    assert mattering[0] > 0.5 and mattering[-1] < 0.05  # both ways of summing are taken
    got = parzen_log_likelihoods(samples, x, sigmas, batch_size=32)
    for j, sigma in enumerate(sigmas):
        expected = (-d2 / (2 * sigma**2)).logsumexp(1) - math.log(3000)
        expected = expected - 2.5 * math.log(2 * math.pi * sigma**2)
        torch.testing.assert_close(got[:, j], expected, rtol=1e-12, atol=1e-10)

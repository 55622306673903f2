"""The Parzen-window estimator against a case with a known answer."""

from __future__ import annotations

import math

import torch

from pyrogen.evaluation.parzen import parzen_evaluate, parzen_log_likelihood, select_sigma


def gaussian_log_prob(x: torch.Tensor, var: float) -> torch.Tensor:
    d = x.shape[1]
    return -0.5 * (x.pow(2).sum(1) / var + d * math.log(2 * math.pi * var))


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


def test_sigma_selection_takes_the_best_of_the_grid_and_widens_with_fewer_samples():
    g = torch.Generator().manual_seed(1)
    valid = torch.randn(300, 2, generator=g)
    sigmas = torch.logspace(-1, 0, 10).tolist()
    many = torch.randn(20_000, 2, generator=g)
    few = torch.randn(50, 2, generator=g)
    best_many, best_few = select_sigma(many, valid, sigmas), select_sigma(few, valid, sigmas)
    scores = [parzen_log_likelihood(many, valid, s).mean().item() for s in sigmas]
    assert best_many == sigmas[max(range(10), key=scores.__getitem__)]
    assert best_few > best_many


def test_parzen_evaluate_scores_any_sampler_with_a_standard_error():
    g = torch.Generator().manual_seed(2)
    valid, test = torch.randn(200, 2, generator=g), torch.randn(400, 2, generator=g)
    result = parzen_evaluate(lambda n: torch.randn(n, 2, generator=g), valid, test, 5000)
    exact = gaussian_log_prob(test, 1 + result["sigma"] ** 2).mean().item()
    assert abs(result["mean"] - exact) < 3 * result["stderr"] + 0.05
    assert 0 < result["stderr"] < 0.2 and result["num_samples"] == 5000

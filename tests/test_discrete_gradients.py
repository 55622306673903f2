"""Gradient estimators of a discrete latent's ELBO against the exact (enumerated) gradient.

Model: c_n ~ Cat(π) (one-hot), x_n | c_n ~ N(c_nᵀM, I); guide q_φ(c_n | x_n) =
Cat(softmax(W x_n + b)). The ELBO L(φ) = Σ_n Σ_c q(c | x_n)[log p(x_n, c) − log q(c | x_n)] is
a finite sum: its gradient by autograd in float64 is the truth the enumerated estimator must
equal, the score-function estimators must be unbiased for, and Gumbel-softmax is biased from.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from conftest import assert_measuring_leaves_no_trace
from pyrogen.cli import main
from pyrogen.evaluation.discrete_gradients import (
    DISCRETE_ESTIMATORS,
    CategoricalGuide,
    MixtureModel,
    discrete_gradient_estimates,
    format_discrete_table,
    mixture_for,
    run_discrete_gradient_diagnostic,
)

pytestmark = pytest.mark.usefixtures("one_thread")

N, D, K = 8, 3, 4
VAE_DIGITS = str(Path(__file__).resolve().parents[1] / "configs" / "vae_digits.yaml")


def problem(dtype=torch.float32):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(N, D, generator=gen, dtype=dtype)
    means = 1.5 * torch.randn(K, D, generator=gen, dtype=dtype)
    logits = torch.randn(K, generator=gen, dtype=dtype)
    torch.manual_seed(1)
    guide = CategoricalGuide(D, K).to(dtype)
    return x, MixtureModel(means, "gaussian", 1.0, logits), guide


def brute_force_gradient(x, model, guide) -> torch.Tensor:
    """∇_φ Σ_n Σ_c q(c | x_n)[log π_c + log N(x_n; M_c, I) − log q(c | x_n)] by autograd."""
    log_q = torch.log_softmax(guide.linear(x), -1)  # (N, K)
    log_pi = torch.log_softmax(model.logits, 0)
    log_lik = torch.distributions.Normal(model.means, 1.0).log_prob(x[:, None]).sum(-1)
    elbo = (log_q.exp() * (log_pi + log_lik - log_q)).sum()
    g = torch.autograd.grad(elbo, [guide.linear.weight, guide.linear.bias])
    return torch.cat([gi.flatten() for gi in g])


def test_enumerated_gradient_equals_brute_force_sum():
    x, model, guide = problem(torch.float64)
    exact = discrete_gradient_estimates(model, guide, x, "enum")
    assert exact.shape == (1, K * D + K) and exact.dtype == torch.float64
    truth = brute_force_gradient(x, model, guide)
    assert torch.allclose(exact[0], truth, rtol=1e-10, atol=1e-12), (exact, truth)
    assert truth.abs().max() > 0.1  # a gradient with something to get wrong


@pytest.fixture(scope="module")
def draws():
    x, model, guide = problem()
    truth = brute_force_gradient(x, model, guide)
    out = {
        est: discrete_gradient_estimates(model, guide, x, est, 400, seed=2, warmup=100)
        for est in ("score_function", "score_function_avg", "score_function_nn")
    }
    for tau in (1.0, 0.5):
        out[tau] = discrete_gradient_estimates(
            model, guide, x, "gumbel_softmax", 400, seed=3, temperature=tau
        )
    return truth, out


def z_scores(d: torch.Tensor, truth: torch.Tensor) -> torch.Tensor:
    return (d.mean(0) - truth) / (d.std(0) / len(d) ** 0.5)


@pytest.mark.parametrize("estimator", ["score_function", "score_function_avg", "score_function_nn"])
def test_score_function_estimators_are_unbiased(draws, estimator):
    truth, out = draws
    z = z_scores(out[estimator], truth)
    # each of the 16 coordinates' means within its standard errors: |z| ~ |N(0, 1)|
    assert z.abs().max() < 4.0 and z.abs().mean() < 1.5, z


def test_baselines_reduce_the_score_function_variance(draws):
    _, out = draws
    var = {est: out[est].var(0).mean().item() for est in out if isinstance(est, str)}
    # measured (seeds 2 and 5, 400 draws): no baseline ≈ 105, decaying average ≈ 11, neural ≈ 10
    assert var["score_function_avg"] < var["score_function"] / 3
    assert var["score_function_nn"] < var["score_function"] / 3


def test_gumbel_softmax_is_biased_and_its_bias_shrinks_with_temperature(draws):
    truth, out = draws
    bias = {t: (out[t].mean(0) - truth).norm().item() for t in (1.0, 0.5)}
    se = {t: (out[t].var(0).sum() / len(out[t])).sqrt().item() for t in (1.0, 0.5)}
    # measured (seeds 3, 6, 9; 400 draws): bias ≈ 4.2-4.4 at τ = 1 with a Monte Carlo s.e.
    # ≈ 0.39, ≈ 1.8-2.0 at τ = 0.5 (s.e. ≈ 0.71), ≈ 1.3-1.6 at τ = 0.25 (s.e. ≈ 1.1)
    assert bias[1.0] > 8 * se[1.0]  # a bias, not noise
    assert bias[0.5] < bias[1.0] - se[1.0] - se[0.5]
    # and the variance grows as τ falls (measured: 3.7 at τ = 1, 12.4 at τ = 0.5)
    assert out[0.5].var(0).mean() > 2 * out[1.0].var(0).mean()


def test_no_side_effects_and_refusals():
    x, model, guide = problem()

    def draw():
        for est in DISCRETE_ESTIMATORS:
            discrete_gradient_estimates(model, guide, x, est, 3, seed=0, warmup=3)

    assert_measuring_leaves_no_trace(draw, guide)
    with pytest.raises(ValueError, match="allowed: enum, score_function"):
        discrete_gradient_estimates(model, guide, x, "reparam")
    with pytest.raises(ValueError, match="temperature must be > 0"):
        discrete_gradient_estimates(model, guide, x, "gumbel_softmax", temperature=0.0)


def test_mixture_for_binary_and_real_batches():
    x = torch.bernoulli(torch.full((30, 5), 0.5), generator=torch.Generator().manual_seed(0))
    m = mixture_for(x, 7)
    assert m.likelihood == "bernoulli" and m.means.shape == (7, 5)
    assert m.means.min() >= 0.05 and m.means.max() <= 0.95
    assert mixture_for(x + 0.5, 7).likelihood == "gaussian"
    with pytest.raises(ValueError, match="at least as many examples"):
        mixture_for(x[:3], 7)


def test_diagnostic_writes_table_csv_and_plot(tmp_path):
    x, model, guide = problem()
    rows = run_discrete_gradient_diagnostic(
        model, guide, x, out_dir=tmp_path, num_samples=20, temperatures=(1.0, 0.5), warmup=5
    )
    assert [(r["estimator"], r["temperature"]) for r in rows] == [
        ("enum", None),
        ("score_function", None),
        ("score_function_avg", None),
        ("score_function_nn", None),
        ("gumbel_softmax", 1.0),
        ("gumbel_softmax", 0.5),
    ]
    assert rows[0]["variance"] == 0 and rows[0]["bias"] == 0
    assert (tmp_path / "discrete_gradients.png").stat().st_size > 0
    assert format_discrete_table(rows).count("\n") == len(rows) + 1
    assert len((tmp_path / "discrete_gradients.csv").read_text().splitlines()) == len(rows) + 1


def test_cli_discrete_on_digits_and_one_line_errors(tmp_path, capsys):
    out = tmp_path / "g"
    argv = ["gradients", "--discrete", VAE_DIGITS, "--samples", "5", "--warmup", "2"]
    argv += ["--batch-size", "16", "--components", "3", "--temperatures", "1", "0.2"]
    assert main([*argv, "--quiet", "--out", str(out)]) == 0
    assert "gumbel_softmax | 0.2" in capsys.readouterr().out
    assert (out / "discrete_gradients.csv").exists()
    bad = [
        (["--discrete", "--estimators", "reparam"], "unknown discrete estimator 'reparam'"),
        (["--discrete", "--temperatures", "0"], "0 < τ"),
        (["--components", "3"], "apply to --discrete"),
        (["--discrete", "--components", "20", "--batch-size", "8"], "--batch-size >= 20"),
    ]
    for extra, message in bad:
        target = tmp_path / "refused"
        assert main(["gradients", VAE_DIGITS, *extra, "--out", str(target)]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and message in err[0], err
        assert not target.exists()

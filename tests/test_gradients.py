"""Gradient estimators of the ELBO against the closed-form gradient.

Model, per data point n = 1..N:  z_n ~ N(0, I_D),  x_n | z_n ~ N(z_n, σ² I_D).
Guide (shared parameters):        q(z_n) = N(m, diag s²),  s = exp(ρ).

    ELBO = Σ_n Σ_d [−((x_nd − m_d)² + s_d²) / (2σ²) − (m_d² + s_d²) / 2 + log s_d] + const

so ∂ELBO/∂m_d = Σ_n [(x_nd − m_d)/σ² − m_d] and ∂ELBO/∂ρ_d = Σ_n [1 − s_d²/σ² − s_d²].

The estimators are checked against this truth (mean within standard errors), against each
other on a VAE whose guide is an inverse autoregressive flow (no closed form, but every
estimator estimates the same gradient), and for the diagnostic's lack of side effects.
"""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.distributions.transforms import AffineTransform
from torch import nn

from conftest import assert_measuring_leaves_no_trace
from pyrogen import load_config
from pyrogen.build import build
from pyrogen.evaluation.gradients import (
    ESTIMATORS,
    encoder_output_groups,
    format_table,
    gradient_estimates,
    run_gradient_diagnostic,
)

SIGMA = 0.7
D = 6
X = torch.randn(4, D, generator=torch.Generator().manual_seed(0))


class Model(nn.Module):
    def forward(self, x):
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(x.new_zeros(D), 1.0).to_event(1))
            pyro.sample("x", dist.Normal(z, SIGMA).to_event(1), obs=x)


class Guide(nn.Module):
    def __init__(self, m: float = 0.2, rho: float = -0.5) -> None:
        super().__init__()
        self.m = nn.Parameter(torch.full((D,), m))
        self.rho = nn.Parameter(torch.full((D,), rho))

    def forward(self, x):
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(self.m, self.rho.exp()).to_event(1))


def true_gradient(guide: Guide) -> dict[str, torch.Tensor]:
    m, s2 = guide.m.detach(), guide.rho.detach().exp() ** 2
    return {
        "m": ((X - m) / SIGMA**2 - m).sum(0),
        "rho": (1 - s2 / SIGMA**2 - s2) * len(X),
    }


@pytest.fixture(scope="module")
def draws():
    guide = Guide()
    out = {}
    for est in ESTIMATORS:
        out[est] = gradient_estimates(
            Model(), guide, X, est, num_particles=1, num_samples=600, seed=1
        )
    return guide, out


def z_scores(draws: torch.Tensor, truth: torch.Tensor) -> torch.Tensor:
    return (draws.mean(0) - truth) / (draws.std(0) / len(draws) ** 0.5)


@pytest.mark.parametrize("estimator", list(ESTIMATORS))
def test_each_estimator_is_unbiased(draws, estimator):
    guide, out = draws
    truth = true_gradient(guide)
    z = torch.cat([z_scores(out[estimator][k], truth[k]) for k in ("m", "rho")])
    # each coordinate's mean within its standard errors of the truth: |z| ~ |N(0, 1)|
    assert z.abs().max() < 4.0 and z.abs().mean() < 1.5, z


def test_score_function_variance_is_far_larger_than_reparameterised(draws):
    _, out = draws
    var = {est: {k: v.var(0).mean().item() for k, v in out[est].items()} for est in ESTIMATORS}
    # measured (seed 1, D = 6, N = 4, 600 draws): score function / reparameterised ≈ 167
    # for m and ≈ 106 for ρ; either baseline divides the score function's variance by ≈ 16
    # (m) and ≈ 11 (ρ), leaving it ≈ 10 times the reparameterised one
    assert var["score_function"]["m"] > 50 * var["reparam"]["m"]
    assert var["score_function"]["rho"] > 50 * var["reparam"]["rho"]
    for baseline in ("score_function_avg", "score_function_nn"):
        assert var[baseline]["m"] < var["score_function"]["m"]


def test_reparameterised_variance_falls_as_one_over_particles():
    guide = Guide()
    v1 = gradient_estimates(Model(), guide, X, "reparam", 1, 1000, seed=2)["m"].var(0).mean()
    v8 = gradient_estimates(Model(), guide, X, "reparam", 8, 1000, seed=3)["m"].var(0).mean()
    assert (v1 / v8).item() == pytest.approx(8, rel=0.25)


def test_diagnostic_writes_table_csv_and_plot(tmp_path):
    rows = run_gradient_diagnostic(
        Model(), Guide(), X, ["reparam", "score_function"], [1, 4], 50, out_dir=tmp_path
    )
    assert {r["estimator"] for r in rows} == {"reparam", "score_function"}
    assert len(rows) == 2 * 2 * 2  # estimators x particles x parameter groups
    assert (tmp_path / "gradient_variance.png").stat().st_size > 0
    assert format_table(rows).count("\n") == len(rows) + 1
    assert len((tmp_path / "gradient_variance.csv").read_text().splitlines()) == len(rows) + 1


@pytest.mark.parametrize("estimator", ["reparam", "score_function_avg"])
def test_plain_callables_with_explicit_parameters_and_a_transformed_guide(estimator):
    """A guide that is a plain function of leaf tensors, its q(z) = N(m, s²) written as an
    affine transform of N(0, I) (a site that is not a Normal): same closed-form truth."""
    m = torch.full((D,), 0.2, requires_grad=True)
    rho = torch.full((D,), -0.5, requires_grad=True)

    def guide(x):
        with pyro.plate("data", x.shape[0]):
            base = dist.Normal(torch.zeros(D), 1.0).to_event(1)
            q = dist.TransformedDistribution(base, [AffineTransform(m, rho.exp(), event_dim=1)])
            pyro.sample("z", q)

    draws = gradient_estimates(
        Model().forward, guide, X, estimator, 1, 400, {"m": [m], "rho": [rho]}, seed=4, warmup=50
    )
    truth = true_gradient(Guide())
    z = torch.cat([z_scores(draws[k], truth[k]) for k in ("m", "rho")])
    assert z.abs().max() < 4.0 and z.abs().mean() < 1.5, z
    assert m.grad is None and rho.grad is None


def test_iaf_vae_score_function_agrees_with_reparameterised():
    """On a VAE with an IAF guide (a transform with a cached log-determinant), the score
    function and the reparameterisation estimate the same gradient of the encoder's last
    layer: the difference of their means is within its standard error."""
    overrides = ["data.name=digits", "data.binarize=dynamic", "model.latent_dim=2"]
    cfg = load_config(None, overrides + ["model.hidden_sizes=[16]", "guide.name=iaf"])
    dataset, learner = build(cfg, "cpu")
    x = dataset.process(dataset.train[:16], torch.Generator().manual_seed(0))
    groups = {"last": encoder_output_groups(learner.guide)["encoder (last layer)"]}
    args = (learner.model, learner.guide, x)
    rep = gradient_estimates(*args, "reparam", 4, 150, groups, seed=5)["last"]
    sf = gradient_estimates(*args, "score_function_avg", 4, 150, groups, seed=6, warmup=20)
    sf = sf["last"]
    se = (rep.var(0) / len(rep) + sf.var(0) / len(sf)).sqrt()
    live = se > 0  # weights from a hidden unit that is off (ReLU) on the whole batch: none
    assert live.float().mean() > 0.8
    z = (rep.mean(0) - sf.mean(0))[live] / se[live]
    # measured: mean |z| ≈ 0.85 over 320 coordinates, max 2.9 (N(0, 1): mean 0.80);
    # the score function (decaying-average baseline) has ≈ 8.5 times the variance
    assert z.abs().mean() < 1.2 and (z.abs() > 4).float().mean() < 0.01, z
    assert sf.var(0).mean() > 3 * rep.var(0).mean()


def test_no_side_effects_on_parameters_grads_rng_or_param_store():
    guide = Guide()

    def draw():
        for est in ESTIMATORS:
            gradient_estimates(Model(), guide, X, est, 2, 5, seed=0, warmup=3)

    assert_measuring_leaves_no_trace(draw, guide)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_estimators_on_cuda_are_unbiased():
    guide = Guide().cuda()
    truth = true_gradient(Guide())
    for est in ESTIMATORS:
        draws = gradient_estimates(Model(), guide, X.cuda(), est, 2, 400, seed=7, warmup=50)
        assert all(g.is_cuda for g in draws.values())
        z = torch.cat([z_scores(draws[k].cpu(), truth[k]) for k in ("m", "rho")])
        assert z.abs().max() < 4.0, (est, z)

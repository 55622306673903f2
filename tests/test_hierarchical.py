"""The two-level VAE (``model.levels: 2``): importance sampling through both levels equals the
exact marginal of a linear-Gaussian model, ELBO ≤ IS ≤ log p(x) with the gap closing in K,
closed-form KLs per level under mean_field, training under every estimator it takes, one-line
refusals of what it does not, and its run evaluated (diagnostics refused)."""

from __future__ import annotations

import math

import pyro
import pytest
import torch
from pyro import poutine
from pyro.infer import TraceMeanField_ELBO
from torch import nn
from torch.distributions import MultivariateNormal, kl_divergence

from conftest import VAE_DIGITS, assert_trains_from_the_config, tiny
from pyrogen import ConfigError, load_config
from pyrogen.build import build
from pyrogen.cli import main
from pyrogen.config import EvaluationConfig
from pyrogen.evaluation.diagnostics import diagnose_run
from pyrogen.evaluation.loglik import (
    elbo_and_importance_log_likelihood,
    importance_log_likelihood,
    log_importance_weights,
)
from pyrogen.evaluation.report import evaluate_run
from pyrogen.models.hierarchical import MIN_SCALE, HierarchicalVAE
from pyrogen.models.likelihoods import GaussianLikelihood
from pyrogen.training import train

pytestmark = pytest.mark.usefixtures("one_thread")

D2, D1, D = 2, 3, 6  # z2, z1, x
SIGMA_X = 0.5


def _raw(scale: torch.Tensor) -> torch.Tensor:
    """softplus⁻¹(scale − MIN_SCALE): the raw σ that gives ``scale``."""
    s = scale - MIN_SCALE
    return s + torch.log(-torch.expm1(-s))


class LinearGaussian:
    """z2 ~ N(0, I), z1 = A z2 + a + ε1 (ε1 ~ N(0, diag s1²)), x = B z1 + b + ε2
    (ε2 ~ N(0, σ² I)), its exact marginal and posterior, in float64."""

    def __init__(self, seed: int = 0) -> None:
        g = torch.Generator().manual_seed(seed)
        r = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64)  # noqa: E731
        self.A, self.a, self.B, self.b = r(D1, D2), r(D1), r(D, D1), r(D)
        self.s1 = torch.tensor([0.6, 0.9, 1.3], dtype=torch.float64)
        c11 = self.A @ self.A.T + torch.diag(self.s1**2)
        self.mu_x = self.B @ self.a + self.b
        self.cov_x = self.B @ c11 @ self.B.T + SIGMA_X**2 * torch.eye(D, dtype=torch.float64)
        # the joint of u = (z2, z1) and x
        self.mu_u = torch.cat([torch.zeros(D2, dtype=torch.float64), self.a])
        c_uu = torch.block_diag(torch.eye(D2, dtype=torch.float64), c11)
        c_uu[D2:, :D2], c_uu[:D2, D2:] = self.A, self.A.T
        c_ux = torch.cat([(self.B @ self.A).T, c11 @ self.B.T])
        self.gain = c_ux @ torch.linalg.inv(self.cov_x)  # posterior mean: μ_u + K (x − μ_x)
        self.post_cov = c_uu - self.gain @ c_ux.T

    def marginal(self) -> MultivariateNormal:
        """p(x) = N(B a + b, B (A Aᵀ + S1) Bᵀ + σ² I)."""
        return MultivariateNormal(self.mu_x, self.cov_x)

    def model(self, inflate: float) -> HierarchicalVAE:
        """The HierarchicalVAE with linear nets that is exactly this model, and a diagonal
        top-down guide built from the exact posterior (its scales × ``inflate``)."""
        lik = GaussianLikelihood((D,), scale="fixed", fixed_scale=SIGMA_X)
        hvae = HierarchicalVAE(
            nn.Identity(), nn.Linear(D1, D), D1, D2, (D,), lik, feature_dim=D, hidden_sizes=[]
        ).double()
        K, P = self.gain, self.post_cov
        K2, K1 = K[:D2], K[D2:]
        G = P[D2:, :D2] @ torch.linalg.inv(P[:D2, :D2])  # E[z1 | x, z2] = ... + G (z2 − E[z2|x])
        s2 = P[:D2, :D2].diagonal().sqrt() * inflate
        s1 = (P[D2:, D2:] - G @ P[:D2, D2:]).diagonal().sqrt() * inflate
        m2, m1 = self.mu_u[:D2], self.mu_u[D2:]
        zeros = torch.zeros
        with torch.no_grad():
            top_down, top, bottom = hvae.top_down[0], hvae.guide.top, hvae.guide.bottom[0]
            top_down.weight.copy_(torch.cat([self.A, zeros(D1, D2)]))
            top_down.bias.copy_(torch.cat([self.a, _raw(self.s1)]))
            hvae.decoder.weight.copy_(self.B)
            hvae.decoder.bias.copy_(self.b)
            top.weight.copy_(torch.cat([K2, zeros(D2, D)]))
            top.bias.copy_(torch.cat([m2 - K2 @ self.mu_x, _raw(s2)]))
            bottom.weight.copy_(torch.cat([torch.cat([K1 - G @ K2, G], 1), zeros(D1, D + D2)]))
            bottom.bias.copy_(torch.cat([m1 - (K1 - G @ K2) @ self.mu_x - G @ m2, _raw(s1)]))
        return hvae


@pytest.fixture(scope="module")
def linear():
    lg = LinearGaussian()
    x = lg.marginal().sample((8,))
    return lg, x


def test_the_linear_nets_make_exactly_the_linear_gaussian_model(linear):
    lg, _ = linear
    hvae = lg.model(1.0)
    z2 = torch.randn(5, D2, dtype=torch.float64)
    p1 = hvae.conditional_prior(z2).base_dist
    torch.testing.assert_close(p1.loc, z2 @ lg.A.T + lg.a)
    torch.testing.assert_close(p1.scale, lg.s1.expand(5, D1))
    x = hvae.sample(200_000)
    torch.testing.assert_close(x.mean(0), lg.mu_x, atol=0.05, rtol=0)
    torch.testing.assert_close(x.T.cov(), lg.cov_x, atol=0.2, rtol=0.02)


def test_importance_sampling_through_two_levels_is_the_exact_marginal(linear):
    lg, x = linear
    hvae = lg.model(1.2)
    exact = lg.marginal().log_prob(x)
    k = 4000
    with torch.no_grad():
        log_w = log_importance_weights(hvae.model, hvae.guide, x, k)
    estimate = log_w.logsumexp(0) - math.log(k)
    w = (log_w - log_w.max(0).values).exp()  # delta-method s.e. of log of the mean weight
    stderr = w.std(0) / (w.mean(0) * math.sqrt(k))
    assert stderr.max() < 0.02  # the test can tell a wrong marginal apart
    assert ((estimate - exact).abs() < 4 * stderr + 1e-3).all(), (estimate - exact, stderr)
    # the public estimator, in chunks, gives the same answer
    torch.manual_seed(1)
    public = importance_log_likelihood(hvae.model, hvae.guide, x, k, quiet=True, max_elements=1000)
    assert ((public - exact).abs() < 4 * stderr + 1e-3).all()


def test_elbo_below_is_below_exact_and_the_gap_closes_with_more_samples(linear):
    lg, _ = linear
    hvae = lg.model(2.0)  # a loose guide: a visible gap
    x = lg.marginal().sample((300,))
    exact = lg.marginal().log_prob(x).mean()
    torch.manual_seed(0)
    gaps = {}
    for k in (1, 10, 100, 1000):
        elbo, logp = elbo_and_importance_log_likelihood(hvae.model, hvae.guide, x, k, quiet=True)
        gaps[k] = float(exact - logp.mean())
        if k == 1000:
            assert elbo.mean() < logp.mean() - 0.3
    assert gaps[1] > gaps[10] > gaps[100] > gaps[1000] > -0.02, gaps
    assert gaps[1000] < gaps[1] / 10, gaps


def test_mean_field_takes_each_levels_kl_in_closed_form_given_the_drawn_z2(linear):
    """−loss = log p(x | z1) − KL(q(z2|x) ‖ p(z2)) − KL(q(z1|x,z2) ‖ p(z1|z2)) on the same
    draws: Pyro's TraceMeanField_ELBO found a closed form at both sites (no Monte Carlo)."""
    lg, x = linear
    hvae = lg.model(1.5)
    pyro.set_rng_seed(3)
    loss = TraceMeanField_ELBO(max_plate_nesting=1).differentiable_loss(hvae.model, hvae.guide, x)
    pyro.set_rng_seed(3)
    guide = poutine.trace(hvae.guide).get_trace(x)
    z2, z1 = guide.nodes["z2"]["value"], guide.nodes["z1"]["value"]
    kl2 = kl_divergence(guide.nodes["z2"]["fn"], hvae.prior())
    kl1 = kl_divergence(guide.nodes["z1"]["fn"], hvae.conditional_prior(z2))
    expected = hvae.decode(z1).log_prob(x) - kl2 - kl1
    torch.testing.assert_close(-loss, expected.sum())


# ------------------------------------------------------------------ from a config
TINY = [
    "data.binarize=dynamic",
    *tiny("vae", latent=3),
    "train.device=cpu",
    "train.batch_size=32",
    "model.levels=2",
    "model.top_hidden_sizes=[8]",
]
VEC = ["elbo.num_particles=3", "elbo.vectorize_particles=true"]
TRAINS = [
    [],
    ["elbo.name=jit_trace"],
    ["elbo.name=mean_field"],
    ["elbo.name=jit_mean_field", "elbo.kl_warmup_steps=5"],
    ["elbo.name=trace_graph"],
    ["elbo.name=jit_trace_graph"],
    ["elbo.name=renyi", *VEC],
    ["elbo.name=rws", "elbo.num_particles=2"],
    ["elbo.name=tail_adaptive", *VEC],
    ["elbo.beta=2", "elbo.free_bits=0.1"],
    ["model.prior=vamp", "model.num_pseudo_inputs=5"],
    ["model.prior=mog", "model.num_components=3", "model.top_latent_dim=2"],
]


@pytest.mark.parametrize("extra", TRAINS, ids=["-".join(e) or "trace" for e in TRAINS])
def test_every_estimator_it_takes_trains_it_from_the_config(extra):
    assert_trains_from_the_config(TINY + extra)


def test_the_config_builds_the_sizes_it_names():
    _, learner = build(load_config(None, TINY + ["model.latent_dim=5"]), "cpu")
    hvae = learner.model
    assert isinstance(hvae, HierarchicalVAE)
    assert (hvae.latent_dim, hvae.top_latent_dim) == (5, 2)  # z2 by default: latent_dim // 2
    x = torch.zeros(4, 64)
    trace = poutine.trace(hvae.model).get_trace(x)
    assert trace.nodes["z2"]["value"].shape == (4, 2) and trace.nodes["z1"]["value"].shape == (4, 5)
    assert hvae.sample(3).shape == (3, 64) and hvae.reconstruct(x).shape == (4, 64)


REFUSED = [
    (["guide.name=iaf"], "guide.name=iaf is a one-level guide (use guide.name=diagonal_normal)"),
    (["model.prior=mixture", "elbo.name=trace_enum"], "mixture (the GMVAE's enumerated"),
    (["model.architecture=conv", "data.flatten=false"], "use model.architecture=mlp"),
    (["model.levels=1", "model.top_latent_dim=2"], "set model.levels=2 or remove"),
    (["model.levels=1", "model.top_hidden_sizes=[8]"], "or remove model.top_hidden_sizes"),
    (["model.prior=mog", "elbo.name=mean_field"], "model.prior=mog (a mixture) does not have"),
    (["elbo.name=renyi"], "elbo.name=renyi is a multi-sample bound"),
]


@pytest.mark.parametrize(("extra", "message"), REFUSED, ids=[r[0][-1] for r in REFUSED])
def test_what_it_does_not_take_is_refused_in_one_line(extra, message):
    with pytest.raises(ConfigError) as err:
        load_config(None, TINY + extra)
    assert message in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize("value", ["0", "3"])
def test_levels_other_than_1_or_2_exit_2_in_one_line_creating_nothing(
    value, tmp_path, monkeypatch, capsys
):
    monkeypatch.chdir(tmp_path)
    argv = ["train", VAE_DIGITS, f"model.levels={value}", "train.max_steps=1", "--quiet"]
    assert main(argv) == 2
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert len(err) == 1 and "model.levels" in err[0]
    assert list(tmp_path.iterdir()) == []


@pytest.mark.filterwarnings("ignore::pyrogen.evaluation.loglik.PsisWarning")  # 5 steps
def test_a_run_is_evaluated_and_diagnostics_refuse_it_in_one_line(tmp_path, capsys):
    cfg = load_config(None, TINY + ["train.epochs=1", "train.max_steps=5", "output.num_samples=4"])
    run = train(cfg, tmp_path / "run", quiet=True)
    ev = EvaluationConfig(is_samples=50, max_test=20, parzen_samples=100, quiet=True)
    est = evaluate_run(run, ev)["estimates"]
    assert est["elbo"]["mean"] <= est["importance_sampled"]["mean"] < 0
    with pytest.raises(TypeError, match="two-level VAE"):
        diagnose_run(run, max_examples=20)
    assert main(["diagnose", str(tmp_path / "run"), "--max-examples", "20"]) == 2
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert len(err) == 1 and "model.levels=2" in err[0]

"""The latent-space diagnostics (issue 22): active units, KL per dimension, I(x; z) and the
amortisation gap, checked against models whose answers are known in closed form (a VAE whose
decoder ignores z; probabilistic PCA with its exact posterior as guide), and
``pyrogen diagnose`` from the shell."""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch import nn

import pyrogen
from conftest import POINTS, VAE_DIGITS, tiny
from pyrogen.cli import main
from pyrogen.evaluation.diagnostics import (
    PosteriorCollapseWarning,
    Refinement,
    active_units,
    amortisation_gap,
    diagnose_vae,
    kl_per_dimension,
    mutual_information,
)
from pyrogen.models.guides import MIN_SCALE, DiagonalNormalGuide
from pyrogen.models.likelihoods import GaussianLikelihood

pytestmark = pytest.mark.usefixtures("one_thread")


def inverse_softplus(y: torch.Tensor) -> torch.Tensor:
    return y + torch.log(-torch.expm1(-y))


def affine(weight: torch.Tensor, bias: torch.Tensor) -> nn.Linear:
    layer = nn.Linear(weight.shape[1], weight.shape[0])
    with torch.no_grad():
        layer.weight.copy_(weight)
        layer.bias.copy_(bias)
    return layer


def diagonal_guide(gain: torch.Tensor, offset: torch.Tensor, scale: torch.Tensor):
    """q(z | x) = N(gain x + offset, diag scale²) as the house's diagonal Gaussian guide."""
    d, dx = gain.shape
    weight = torch.cat([gain, torch.zeros(d, dx)])
    bias = torch.cat([offset, inverse_softplus(scale - MIN_SCALE)])
    return DiagonalNormalGuide(affine(weight, bias), d)


def collapsed_vae(dx: int = 6, d: int = 4) -> pyrogen.VAE:
    """A Bernoulli VAE whose decoder ignores z (zero weights from z) and whose guide is the
    prior: q(z | x) = N(0, I) for every x."""
    decoder = affine(torch.zeros(dx, d), torch.linspace(-1, 1, dx))
    guide = diagonal_guide(torch.zeros(d, dx), torch.zeros(d), torch.ones(d))
    return pyrogen.VAE(None, decoder, d, (dx,), "bernoulli", guide=guide)


def ppca(dx: int = 5, sigma: float = 0.5):
    """Probabilistic PCA x = W z + μ + ε, ε ~ N(0, σ² I), with W = Q diag(s) (orthonormal Q),
    as a VAE whose guide is its exact posterior N(M⁻¹ Wᵀ (x − μ), σ² M⁻¹), M = WᵀW + σ² I =
    diag(s² + σ²): a diagonal Gaussian. Returns the VAE, W, μ and σ."""
    gen = torch.Generator().manual_seed(3)
    s = torch.tensor([1.0, 0.7, 0.5])
    q, _ = torch.linalg.qr(torch.randn(dx, 3, generator=gen))
    w, mu = q * s, torch.randn(dx, generator=gen)
    m = s**2 + sigma**2
    gain = w.T / m[:, None]
    guide = diagonal_guide(gain, -gain @ mu, sigma / m.sqrt())
    likelihood = GaussianLikelihood(dx, scale="fixed", fixed_scale=sigma)
    vae = pyrogen.VAE(None, affine(w, mu), 3, (dx,), likelihood, guide=guide)
    return vae, w, mu, sigma


def ppca_data(vae, n: int) -> torch.Tensor:
    torch.manual_seed(11)
    return vae.sample(n)


# ------------------------------------------------------------------ a decoder that ignores z
def test_a_decoder_that_ignores_z_has_no_active_unit_no_kl_and_no_information():
    vae = collapsed_vae()
    x = torch.bernoulli(torch.full((200, 6), 0.4, dtype=torch.float32))
    units = active_units(vae.guide, x)
    assert units["active"] == 0 and units["dimension"] == 4
    assert max(units["variance"]) == 0.0
    kl = kl_per_dimension(vae.model, vae.guide, x)
    assert kl["kind"] == "exact" and max(abs(v) for v in kl["per_dim"]) < 1e-6
    assert abs(mutual_information(vae.guide, x, num_samples=4)) < 1e-5


def test_posterior_collapse_is_one_warning_naming_the_active_units():
    vae = collapsed_vae()
    x = torch.bernoulli(torch.full((50, 6), 0.4, dtype=torch.float32))
    with pytest.warns(PosteriorCollapseWarning) as seen:
        diagnose_vae(vae, x, gap_examples=None)
    (warning,) = seen
    text = str(warning.message)
    assert text.startswith("posterior collapse: 0 of 4 units active") and "\n" not in text


# ------------------------------------------------------------------ probabilistic PCA
def test_ppca_with_its_exact_posterior_has_every_unit_active():
    vae, *_ = ppca()
    x = ppca_data(vae, 500)
    units = active_units(vae.guide, x)
    assert units["active"] == units["dimension"] == 3
    assert min(units["variance"]) > 0.1


def test_kl_per_dimension_is_the_closed_form_and_sums_to_the_total_kl():
    vae, w, mu, sigma = ppca()
    x = ppca_data(vae, 300)
    kl = kl_per_dimension(vae.model, vae.guide, x)
    loc, scale = vae.guide.loc_scale(x)
    by_hand = (-scale.log() + (scale**2 + loc**2) / 2 - 0.5).double().mean(0)
    assert kl["kind"] == "exact"
    assert torch.allclose(torch.tensor(kl["per_dim"], dtype=torch.float64), by_hand, atol=1e-6)
    assert sum(kl["per_dim"]) == pytest.approx(kl["total"]["mean"], abs=1e-6)


def test_mutual_information_matches_the_analytic_value_for_ppca():
    """I(x; z) = ½ log det(I + WᵀW / σ²) for pPCA, estimated on a large batch."""
    vae, w, mu, sigma = ppca()
    x = ppca_data(vae, 4000)
    exact = 0.5 * torch.logdet(torch.eye(3) + w.T @ w / sigma**2).item()
    torch.manual_seed(0)
    assert mutual_information(vae.guide, x, num_samples=2) == pytest.approx(exact, abs=0.08)


def test_with_the_exact_posterior_the_elbo_is_log_p_and_refining_cannot_beat_it():
    """q = p(z | x): log p(x, z) − log q(z | x) = log p(x) for every z, so the amortised ELBO
    is the Gaussian marginal N(x; μ, WWᵀ + σ² I) exactly, the importance-sampled log p(x) (its
    proposal mixes in the refined q) nearly so, and the refined ELBO is below it."""
    vae, w, mu, sigma = ppca()
    x = ppca_data(vae, 20)
    marginal = torch.distributions.MultivariateNormal(mu, w @ w.T + sigma**2 * torch.eye(5))
    exact = marginal.log_prob(x).double().mean().item()
    torch.manual_seed(0)
    gap = amortisation_gap(vae.model, vae.guide, x, num_samples=200, refine=Refinement(steps=30))
    assert gap["elbo_amortised"]["mean"] == pytest.approx(exact, abs=1e-4)
    assert gap["log_p"]["mean"] == pytest.approx(exact, abs=3e-3)
    approx = gap["approximation_gap"]
    assert approx["mean"] >= -3 * approx["stderr"]
    assert abs(gap["amortisation_gap"]["mean"]) < 0.05


# ------------------------------------------------------------------ a trained VAE
@pytest.fixture(scope="module")
def vae_run(tmp_path_factory):
    torch.set_num_threads(1)
    cfg = pyrogen.load_config(
        VAE_DIGITS,
        tiny("vae", "train.epochs=2", "train.device=cpu", latent=6, width=32),
    )
    return pyrogen.train(cfg, tmp_path_factory.mktemp("diag") / "vae", quiet=True)


def test_the_amortisation_gap_is_nonnegative_within_monte_carlo_error(vae_run):
    result = pyrogen.diagnose(vae_run, gap_examples=30, num_samples=100, refine_steps=60)
    gap = result["amortisation_gap"]
    for name in ("amortisation_gap", "approximation_gap"):
        assert gap[name]["mean"] >= -3 * gap[name]["stderr"], name
    # a barely trained encoder leaves a gap that 60 steps of refinement close in part
    assert gap["amortisation_gap"]["mean"] > 3 * gap["amortisation_gap"]["stderr"]
    total = gap["log_p"]["mean"] - gap["elbo_amortised"]["mean"]
    parts = gap["approximation_gap"]["mean"] + gap["amortisation_gap"]["mean"]
    assert parts == pytest.approx(total, abs=1e-9)


@pytest.mark.filterwarnings("ignore::pyrogen.evaluation.diagnostics.PosteriorCollapseWarning")
def test_the_diagnostics_of_a_learner_from_python_are_those_of_its_model(vae_run):
    x = vae_run.dataset.test[:80]
    a = pyrogen.diagnose(vae_run.learner, data=x, gap_examples=None, seed=4)
    b = pyrogen.diagnose(vae_run.model, data=x, gap_examples=None, seed=4)
    assert a == b and a["num_examples"] == 80 and "amortisation_gap" not in a


def test_a_flow_is_refused_in_python():
    flow = pyrogen.Flow(pyrogen.models.flow.maf(dim=2, num_layers=1, hidden_sizes=[8]), dim=2)
    with pytest.raises(TypeError, match="a VAE, not a Flow"):
        pyrogen.diagnose(flow, data=torch.randn(10, 2))


# ------------------------------------------------------------------ the command line
def test_diagnose_prints_the_table_and_writes_the_sorted_kl_figure(vae_run, tmp_path, capsys):
    out = tmp_path / "figs"
    args = ["diagnose", str(vae_run.run_dir), "--subset", "5", "--refine-steps", "5"]
    assert main([*args, "--is-samples", "20", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "active units" in text and "amortisation gap" in text and "I(x; z)" in text
    assert (out / "kl_per_dim.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert main([*args, "--is-samples", "20", "--out", str(out), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert len(result["kl"]["per_dim"]) == result["active_units"]["dimension"] == 6
    assert result["amortisation_gap"]["log_p"]["n"] == 5


def test_evaluate_json_carries_the_cheap_diagnostics(vae_run, capsys):
    args = ["evaluate", str(vae_run.run_dir), "--json", "--is-samples", "10"]
    assert main([*args, "--parzen-samples", "20", "--max-examples", "40"]) == 0
    result = json.loads(capsys.readouterr().out)
    diagnostics = result["diagnostics"]
    assert diagnostics["num_examples"] == 40 and "amortisation_gap" not in diagnostics
    assert 0 <= diagnostics["active_units"]["active"] <= 6
    assert diagnostics["mutual_information"]["max"] == pytest.approx(math.log(40))


def test_diagnose_refuses_a_flow_run_in_one_line_and_writes_nothing(tmp_path, capsys):
    cfg = pyrogen.load_config(
        "configs/flow_moons.yaml",
        tiny("flow", *POINTS, "train.epochs=1", "model.num_layers=1", "train.device=cpu"),
    )
    run = pyrogen.train(cfg, tmp_path / "flow", quiet=True)
    before = sorted(p.name for p in run.run_dir.iterdir())
    capsys.readouterr()
    assert main(["diagnose", str(run.run_dir), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "flow run" in err and "a VAE" in err
    assert sorted(p.name for p in run.run_dir.iterdir()) == before
    assert not (tmp_path / "out").exists()


# ------------------------------------------------------------------ the model's own prior
class ShiftedPrior(pyrogen.VAE):
    """p(z) = N(1, 2² I): the diagnostics must read it from the model."""

    def prior(self):
        return pyrogen.models.vae.dist.Normal(self.prior_loc + 1, 2 * self.prior_scale).to_event(1)


class MixturePrior(pyrogen.VAE):
    """p(z) = ½ N(−1, I) + ½ N(1, I): not factorised."""

    def prior(self):
        d = pyrogen.models.vae.dist
        locs = torch.stack([self.prior_loc - 1, self.prior_loc + 1])
        comps = d.Normal(locs, self.prior_scale).to_event(1)
        return d.MixtureSameFamily(d.Categorical(torch.ones(2)), comps)


def test_the_kl_is_against_the_models_own_prior():
    base = collapsed_vae()
    shifted = ShiftedPrior(None, base.decoder, 4, (6,), "bernoulli", guide=base.guide)
    x = torch.bernoulli(torch.full((20, 6), 0.4, dtype=torch.float32))
    kl = kl_per_dimension(shifted.model, shifted.guide, x)
    by_hand = math.log(2.0) + (1 + 1) / 8 - 0.5  # KL(N(0, 1) ‖ N(1, 2²)) per dimension
    assert kl["per_dim"] == pytest.approx([by_hand] * 4, abs=1e-5)
    mixed = MixturePrior(None, base.decoder, 4, (6,), "bernoulli", guide=base.guide)
    kl = kl_per_dimension(mixed.model, mixed.guide, x)
    assert kl["per_dim"] is None and "not a factorised Gaussian" in kl["reason"]
    assert kl["samples"] == 64 and kl["total"]["mean"] > 0

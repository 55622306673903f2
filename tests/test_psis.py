"""PSIS k̂ of the importance weights: Pyro's recipe, small where the guide is the posterior,
the tail shape where the weights are Pareto, and in ``pyrogen evaluate`` without moving the
IS number."""

from __future__ import annotations

import json

import pyro
import pyro.distributions as dist
import pyro.infer.importance as pyro_importance
import pytest
import torch
from test_loglik import PPCA, PosteriorGuide, ppca_and_data
from torch import nn

import pyrogen
from conftest import TINY_VAE, VAE_DIGITS
from pyrogen.cli import main
from pyrogen.config import EvaluationConfig
from pyrogen.evaluation.loglik import (
    PsisWarning,
    elbo_and_importance_log_likelihood,
    importance_sampling,
    psis_khat,
    psis_min_samples,
)
from pyrogen.evaluation.report import _at_most, psis_summary
from pyrogen.evaluation.stats import mean_stderr
from pyrogen.evaluation.streams import EXAMPLES_PER_CHUNK, chunk_generator, own_stream


@pytest.fixture
def ppca():
    return ppca_and_data(20)


class NarrowOn(nn.Module):
    """The exact posterior, with its scale shrunk ``narrow``-fold on the examples ``bad``: the
    weights p(x, z) / q(z | x) of those examples have a heavy tail."""

    def __init__(self, ppca: PPCA, bad: list[int], narrow: float) -> None:
        super().__init__()
        self.ppca, self.bad, self.narrow = ppca, bad, narrow

    def forward(self, x):
        p = self.ppca.posterior(x)
        scale = torch.ones(x.shape[0], 1, 1, dtype=x.dtype)
        scale[self.bad] = self.narrow
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.MultivariateNormal(p.loc, scale_tril=p.scale_tril * scale))


def pyro_psis(log_w: torch.Tensor) -> float:
    """Pyro's own ``psis_diagnostic`` on the given log weights (its weights function replaced)."""
    real = pyro_importance.vectorized_importance_weights
    pyro_importance.vectorized_importance_weights = lambda *a, **k: (log_w.clone(), None, None)
    try:
        return pyro_importance.psis_diagnostic(None, None, num_particles=log_w.shape[0])
    finally:
        pyro_importance.vectorized_importance_weights = real


def test_khat_is_pyros_psis_diagnostic_on_the_same_weights():
    g = torch.Generator().manual_seed(1)
    for K in (psis_min_samples(), 200, 3000):
        log_w = torch.randn(K, 4, generator=g) * torch.tensor([0.1, 1.0, 2.0, 4.0])
        khat = psis_khat(log_w)
        for n in range(4):
            assert khat[n].item() == pyro_psis(log_w[:, n]), (K, n)
        # only the largest M + 1 weights are read: handing over just those gives the same
        top = log_w.topk(200 if K > 200 else K, dim=0).values
        assert torch.equal(psis_khat(top, num_samples=K), khat)


def test_khat_recovers_the_pareto_tail_shape():
    """w = U^(−ξ), U uniform, has a Pareto tail of shape ξ."""
    g = torch.Generator().manual_seed(2)
    for xi in (0.3, 0.8, 1.2):
        log_w = -xi * torch.rand(5000, 40, generator=g, dtype=torch.float64).log()
        assert psis_khat(log_w).mean().item() == pytest.approx(xi, abs=0.1)


def test_exact_posterior_guide_gives_small_khat_and_narrow_guide_large(ppca):
    model, x = ppca
    pyro.set_rng_seed(0)
    _, _, khat = importance_sampling(model, PosteriorGuide(model), x, 1000, quiet=True)
    # equal weights (to rounding) have no tail: -inf where Pyro's recipe would give inf
    assert khat.shape == (20,) and (khat < 0.5).all()
    assert torch.equal(psis_khat(torch.zeros(100, 3)), torch.full((3,), -torch.inf).double())
    _, _, khat = importance_sampling(model, PosteriorGuide(model, inflate=1.5), x, 1000, quiet=True)
    assert khat.isfinite().all() and (khat < 0.5).all()  # a wider guide: bounded weights
    _, _, khat = importance_sampling(
        model, PosteriorGuide(model, inflate=0.05), x, 2000, quiet=True
    )
    assert khat.median() > 0.8  # a far too narrow guide: a heavy tail
    # where one weight dominates (the others below 10⁻¹⁵ of it), Pyro's inf
    one = torch.full((100, 1), -50.0)
    one[0] = 0.0
    with pytest.warns(UserWarning, match="Not enough tail samples"):
        assert psis_khat(one).item() == torch.inf == pyro_psis(one[:, 0])


def test_khat_leaves_the_is_estimate_bit_equal_and_is_chunk_free(ppca, monkeypatch):
    model, x = ppca
    guide = PosteriorGuide(model, inflate=0.7)
    pyro.set_rng_seed(5)
    elbo, logp = elbo_and_importance_log_likelihood(model, guide, x, 500, quiet=True)
    pyro.set_rng_seed(5)
    elbo2, logp2, khat = importance_sampling(model, guide, x, 500, quiet=True)
    assert torch.equal(elbo, elbo2) and torch.equal(logp, logp2)
    # the running top M + 1 across particle chunks is all the tail fit needs
    weights = torch.randn(500, 20, generator=torch.Generator().manual_seed(6), dtype=x.dtype)
    drawn = []

    def next_chunk(model, guide, xb, k):
        done = sum(drawn)
        drawn.append(k)
        return weights[done : done + k]

    *_, chunked = importance_sampling(
        model, guide, x, 500, max_elements=7 * 6 * 20, quiet=True, log_weights=next_chunk
    )
    assert len(drawn) == 72 and torch.equal(chunked, psis_khat(weights))


def test_too_few_samples_give_no_khat_with_a_reason(ppca):
    model, x = ppca
    K = psis_min_samples() - 1
    *_, khat = importance_sampling(model, PosteriorGuide(model), x, K, quiet=True)
    assert khat is None
    summary = psis_summary(None, K)
    assert summary["max"] is None and summary["n"] == 0
    assert f"K={K} < {K + 1}" in summary["reason"]
    with pytest.raises(ValueError, match=f"needs K >= {K + 1}"):
        psis_khat(torch.zeros(K, 2))


def test_warning_names_the_examples_with_large_khat(ppca):
    model, x = ppca
    bad = [3, 7, 12]
    pyro.set_rng_seed(0)
    *_, khat = importance_sampling(model, NarrowOn(model, bad, 0.05), x, 5000, quiet=True)
    with pytest.warns(PsisWarning) as record:
        summary = psis_summary(khat, 5000)
    (message,) = [str(w.message) for w in record]
    assert "for 3 of 20 examples (split indices 3, 7, 12)" in message
    assert "unreliable" in message and "more samples K" in message and "better guide" in message
    assert summary["share_above_0.7"] == pytest.approx(3 / 20) and summary["n"] == 20
    assert summary["max"] == khat.max().item() > 0.7
    # by their indices in the split when a subset is evaluated; at most 10, then a count
    many = torch.zeros(30, dtype=torch.float64)
    many[::2] = 0.9
    with pytest.warns(PsisWarning, match=r"for 15 of 30 .*indices 100, 102, .*, 118 and 5 more"):
        psis_summary(many, 1000, index=torch.arange(100, 130))


@pytest.mark.filterwarnings("ignore::pyrogen.evaluation.loglik.PsisWarning")
def test_evaluate_json_reports_khat_without_moving_the_is_number(tmp_path, capsys):
    overrides = [*TINY_VAE, "train.max_steps=10", "train.eval_every=0", "train.device=cpu"]
    run_dir = tmp_path / "run"
    pyrogen.train(pyrogen.load_config(VAE_DIGITS, overrides), run_dir=run_dir, quiet=True)
    capsys.readouterr()
    args = ["--is-samples", "100", "--parzen-samples", "10", "--max-examples", "30"]
    assert main(["evaluate", str(run_dir), "--json", *args]) == 0
    est = json.loads(capsys.readouterr().out)["estimates"]["importance_sampled"]
    khat = est["psis_khat"]
    assert set(khat) == {"max", "share_above_0.7", "n", "infinite"} and khat["n"] == 30
    assert 0.0 <= khat["share_above_0.7"] <= 1.0 and isinstance(khat["max"], float)
    # the IS number is the one elbo_and_importance_log_likelihood gives on the same stream
    run = pyrogen.load(run_dir)
    ev = EvaluationConfig(max_test=30)
    x, _ = _at_most(run.dataset.split("test"), None, ev)
    run.learner.module.eval()
    with own_stream(ev.seed, "vae:0", x.device), torch.no_grad():
        xp = run.dataset.process(x, chunk_generator(ev.seed, 0))
        _, logp = elbo_and_importance_log_likelihood(
            run.model.model, run.model.guide, xp, 100, batch_size=EXAMPLES_PER_CHUNK, quiet=True
        )
        logp = logp + run.dataset.log_det_jacobian(xp).to(logp.dtype)
    assert est["mean"] == mean_stderr(logp)["mean"]
    # the table shows it in the notes column
    assert main(["evaluate", str(run_dir), *args]) == 0
    table = capsys.readouterr().out
    row = next(r for r in table.splitlines() if r.startswith("importance_sampled"))
    assert "k̂ max=" in row and "> 0.7)" in row

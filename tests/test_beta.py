"""``elbo.beta``: the β-VAE (Higgins et al. 2017) as a Pyro effect. β = 1 is the ELBO bit for
bit; the β-loss is −E[log p(x|z)] + β KL computed by hand on the same draws; the warm-up ramps
to β; validation stays the plain ELBO; β ≠ 1 is refused where it means nothing; a run with
β ≠ 1 resumes bit-equal."""

from __future__ import annotations

import copy

import pyro
import pytest
import torch
from pyro import poutine
from torch.distributions import kl_divergence

from conftest import (
    CONFIGS,
    TINY_BINARY_VAE,
    assert_same,
    flat,
    frozen_learner,
    tiny,
    vae_and_batch,
)
from pyrogen import ConfigError, load_config
from pyrogen.build import build
from pyrogen.cli import main
from pyrogen.inference.elbo import make_elbo
from pyrogen.inference.variational import VariationalLearner

TINY = TINY_BINARY_VAE


@pytest.mark.parametrize(
    "name, options",
    [
        *[(n, {"beta": 1.0}) for n in ("trace", "mean_field", "trace_graph")],
        *[(n, {"free_bits": 0.0, "beta": 1.0}) for n in ("trace", "mean_field", "jit_trace")],
    ],
)
def test_beta_one_and_free_bits_zero_are_todays_loss_bit_for_bit(name, options):
    model, x = vae_and_batch()
    runs = []
    for kwargs in [{}, options]:
        learner = VariationalLearner(copy.deepcopy(model), make_elbo(name), **kwargs)
        pyro.set_rng_seed(7)
        metrics = [learner.step(x) for _ in range(3)]
        runs.append((metrics, flat(learner.module.state_dict())))
    (m0, s0), (m1, s1) = runs
    assert [m["loss"] for m in m0] == [m["loss"] for m in m1]
    assert all("kl_beta" not in m for m in m0 + m1)  # no warm-up, β = 1: nothing new logged
    assert_same(s0, s1)


def _by_hand(model: torch.nn.Module, x: torch.Tensor, seed: int, beta: float, analytic: bool):
    """−E[log p(x|z)] + β KL per example, on the z the guide draws from ``seed``: the KL in
    closed form (``analytic``) or its one-sample estimate log q(z|x) − log p(z)."""
    pyro.set_rng_seed(seed)
    z = poutine.trace(model.guide).get_trace(x).nodes["z"]["value"]
    loglik = model.decode(z).log_prob(x).sum()
    q, p = model.guide.posterior(x), model.prior().expand([x.shape[0]])
    kl = kl_divergence(q, p).sum() if analytic else (q.log_prob(z) - p.log_prob(z)).sum()
    return ((-loglik + beta * kl) / x.shape[0]).item()


@pytest.mark.parametrize("beta", [0.5, 4.0])
@pytest.mark.parametrize("name", ["mean_field", "trace", "jit_trace"])
def test_the_beta_loss_is_reconstruction_plus_beta_kl(name, beta):
    """β = 0.5 and 4: the step's loss is −log p(x|z) + β KL(q ‖ p) on the same draw (the KL in
    closed form for mean_field, log q − log p for trace and jit_trace: the compiled estimator
    keeps the configured β, not the 1 it would see if compiled outside the effect)."""
    model, x = vae_and_batch()
    learner = frozen_learner(model, name, beta=beta)
    for seed in (3, 4):  # jit_trace: the second step runs the compiled function
        pyro.set_rng_seed(seed)
        metrics = learner.step(x)
        assert metrics["kl_beta"] == beta
        expected = _by_hand(model, x, seed, beta, analytic=name == "mean_field")
        assert metrics["loss"] == pytest.approx(expected, rel=1e-5)
        assert metrics["loss"] != pytest.approx(_by_hand(model, x, seed, 1.0, name == "mean_field"))


def test_warmup_ramps_beta_to_its_target():
    """β at step k is min(1, k/N)·beta, logged as ``kl_beta``; with the draws fixed the loss
    grows by beta·KL/N per step and stops at the target."""
    model, x = vae_and_batch()
    learner = frozen_learner(model, "mean_field", beta=4.0, kl_warmup_steps=4)
    logged, losses = [], []
    for _ in range(6):
        pyro.set_rng_seed(1)
        metrics = learner.step(x)
        logged.append(metrics["kl_beta"])
        losses.append(metrics["loss"])
    assert logged == [0.0, 1.0, 2.0, 3.0, 4.0, 4.0]
    for k, loss in enumerate(losses):
        assert loss == pytest.approx(_by_hand(model, x, 1, logged[k], analytic=True), rel=1e-5)


@pytest.mark.parametrize("name", ["trace", "trace_graph"])
def test_a_score_function_guide_gets_the_gradient_of_the_beta_loss(name):
    """With a guide that cannot be reparameterised the encoder's gradient is REINFORCE's,
    E[∇ log q(z|x) · (log p(x|z) + β (log p(z) − log q(z|x)))]: Pyro scales the site's
    log-density by β but not its score-function term, so β ≠ 1 is allowed here."""
    model, x = vae_and_batch("guide.name=score_function")
    beta = 0.25
    learner = frozen_learner(model, name, beta=beta)
    encoder = next(model.guide.parameters())
    pyro.set_rng_seed(0)
    learner.step(x)
    pyro_grad = encoder.grad.clone()
    encoder.grad = None
    pyro.set_rng_seed(0)
    z = poutine.trace(model.guide).get_trace(x).nodes["z"]["value"].detach()
    q, p = model.guide.posterior(x), model.prior().expand([x.shape[0]])
    log_q = q.log_prob(z)
    cost = model.decode(z).log_prob(x) + beta * (p.log_prob(z) - log_q)
    (-(log_q * cost.detach()).sum()).backward()
    torch.testing.assert_close(pyro_grad, encoder.grad, rtol=1e-4, atol=1e-6)


def test_validation_is_the_plain_elbo_whatever_beta():
    """``evaluate`` is the β = 1 ELBO: learners with β = 4 and β = 1 on the same parameters
    report the same validation number, while their training losses differ."""
    model, x = vae_and_batch()
    plain, heavy = frozen_learner(model, "trace"), frozen_learner(model, "trace", beta=4.0)
    results = []
    for learner in (plain, heavy):
        pyro.set_rng_seed(2)
        loss = learner.step(x)["loss"]
        pyro.set_rng_seed(9)
        results.append((loss, learner.evaluate(x)["elbo"]))
    (loss1, elbo1), (loss4, elbo4) = results
    assert elbo1 == elbo4
    assert loss4 != pytest.approx(loss1)
    pyro.set_rng_seed(2)
    assert -plain.step(x)["loss"] == pytest.approx(_elbo_of(model, x, 2), rel=1e-5)


def _elbo_of(model: torch.nn.Module, x: torch.Tensor, seed: int) -> float:
    return -_by_hand(model, x, seed, 1.0, analytic=False)


REFUSED = [
    (TINY + ["elbo.name=renyi", "elbo.num_particles=2"], "elbo.name=renyi"),
    (TINY + ["elbo.name=rws", "elbo.num_particles=2"], "elbo.name=rws"),
    (
        TINY + ["elbo.name=tail_adaptive", "elbo.num_particles=2", "elbo.vectorize_particles=true"],
        "elbo.name=tail_adaptive",
    ),
    (tiny("flow"), "flow has no latent variables"),
    (tiny("gan"), "GAN has no ELBO"),
]


@pytest.mark.parametrize(("overrides", "culprit"), REFUSED)
def test_beta_is_refused_where_it_means_nothing(overrides, culprit):
    with pytest.raises(ConfigError) as err:
        load_config(None, [*overrides, "elbo.beta=2"])
    line = str(err.value)
    assert "\n" not in line and "elbo.beta=2" in line and culprit in line
    load_config(None, [*overrides, "elbo.beta=1"])  # β = 1 is accepted with each


@pytest.mark.parametrize("value", ["0", "-1", "1001", "nan"])
def test_beta_out_of_range_is_one_line_naming_the_key(value):
    with pytest.raises(ConfigError, match=r"elbo\.beta") as err:
        load_config(None, [*TINY, f"elbo.beta={value}"])
    assert "\n" not in str(err.value)


def test_the_cli_refuses_in_one_line_and_creates_nothing(tmp_path, capsys):
    run = tmp_path / "run"
    argv = ["train", str(CONFIGS / "flow_moons.yaml"), "elbo.beta=0.5", "--run-dir", str(run)]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "elbo.beta=0.5" in err
    assert not run.exists()


def test_the_constructor_checks_beta():
    model, _ = vae_and_batch()
    with pytest.raises(ConfigError, match="beta"):
        VariationalLearner(model, beta=0.0)
    flow_model = build(load_config(None, [*tiny("flow"), "train.device=cpu"]), "cpu")[1].model
    with pytest.raises(ValueError, match="no latent variables"):
        VariationalLearner(flow_model, beta=2.0)

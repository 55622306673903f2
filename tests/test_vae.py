"""The VAE family: a genuine Pyro model, KL warm-up, gradient clipping, the Gaussian
likelihoods and the conv architecture. Every guide x estimator pair and the score-function
estimator: tests/test_guides_elbos.py; bounds where log p(x) is known: tests/test_loglik.py."""

from __future__ import annotations

import math

import pyro
import pytest
import torch
from pyro import poutine
from pyro.infer import SVI, Predictive, Trace_ELBO
from test_guides_elbos import TINY

from pyrogen import load_config
from pyrogen.build import build
from pyrogen.inference.variational import ScaleLatents


def test_model_is_plain_pyro_trace_predictive_and_svi():
    """poutine.trace and Predictive see sites z and x in the data plate, and SVI with
    pyro.optim trains it with no pyrogen training code at all."""
    cfg = load_config(None, TINY + ["model.hidden_sizes=[64]", "model.latent_dim=4"])
    dataset, learner = build(cfg, "cpu")
    vae, guide = learner.model, learner.guide
    x = dataset.process(dataset.train[:50], torch.Generator().manual_seed(0))
    trace = poutine.trace(vae.model).get_trace(x)
    assert trace.nodes["z"]["value"].shape == (50, 4)
    assert trace.nodes["x"]["is_observed"] and trace.nodes["x"]["value"].shape == (50, 64)
    assert {f.name for f in trace.nodes["z"]["cond_indep_stack"]} == {"data"}
    draws = Predictive(vae.model, num_samples=3, return_sites=["z", "x"])(num_samples=7)
    assert draws["x"].shape == (3, 7, 64) and set(draws["x"].unique().tolist()) <= {0.0, 1.0}
    posterior = Predictive(vae.model, guide=guide, num_samples=2, return_sites=["z"])(x)
    assert posterior["z"].shape == (2, 50, 4)

    def model(x):  # the Pyro tutorial's way: register the module's parameters, run the model
        pyro.module("decoder", vae)
        return vae.model(x)

    def svi_guide(x):
        pyro.module("encoder", guide)
        return guide(x)

    svi = SVI(model, svi_guide, pyro.optim.Adam({"lr": 3e-3}), Trace_ELBO())
    data = dataset.train
    gen = torch.Generator().manual_seed(1)
    x_eval = dataset.process(dataset.valid, gen)
    elbo_before = -Trace_ELBO(num_particles=10).loss(vae.model, guide, x_eval) / len(x_eval)
    for _epoch in range(5):
        for idx in torch.randperm(len(data), generator=gen).split(64):
            svi.step(dataset.process(data[idx], gen))
    elbo_after = -Trace_ELBO(num_particles=10).loss(vae.model, guide, x_eval) / len(x_eval)
    assert elbo_after > elbo_before + 5.0  # nats per digit: SVI really learned


# ----------------------------------------------------------------------------------------


def test_kl_warmup_with_beta_zero_keeps_only_the_reconstruction_term():
    cfg = load_config(None, TINY + ["elbo.kl_warmup_steps=10"])
    dataset, learner = build(cfg, "cpu")
    x = dataset.process(dataset.train[:32], torch.Generator().manual_seed(0))
    assert learner.kl_beta == 0.0
    pyro.set_rng_seed(5)
    with ScaleLatents(0.0):
        loss = learner.loss_module(x).item()
    pyro.set_rng_seed(5)
    z = poutine.trace(learner.guide).get_trace(x).nodes["z"]["value"]
    expected = -learner.model.decode(z).log_prob(x).sum().item()
    assert loss == pytest.approx(expected, rel=1e-5)
    for _ in range(5):
        learner.step(x)
    assert learner.kl_beta == pytest.approx(0.5)


def test_gradient_clipping_bounds_the_update():
    cfg = load_config(None, TINY + ["optim.clip_norm=0.01", "optim.name=sgd", "optim.lr=1.0"])
    dataset, learner = build(cfg, "cpu")
    x = dataset.process(dataset.train[:32], torch.Generator().manual_seed(0))
    before = torch.cat([p.detach().flatten() for p in learner.module.parameters()])
    out = learner.step(x)
    after = torch.cat([p.detach().flatten() for p in learner.module.parameters()])
    assert out["grad_norm"] > 0.01  # the raw gradient was larger than the bound ...
    assert (after - before).norm().item() == pytest.approx(0.01, rel=1e-3)  # ... SGD moved 0.01


def test_gaussian_likelihood_scales_and_conv_architecture():
    for scale in ("decoder", "learned", "fixed"):
        cfg = load_config(
            None,
            [
                "data.name=digits",
                "model.likelihood=gaussian",
                f"model.scale={scale}",
                "model.hidden_sizes=[16]",
                "train.device=cpu",
            ],
        )
        dataset, learner = build(cfg, "cpu")
        x = dataset.train[:8]
        px = learner.model.decode(torch.zeros(8, cfg.model.latent_dim))
        assert px.event_shape == (64,) and px.batch_shape == (8,)
        if scale == "fixed":
            assert torch.allclose(px.base_dist.scale, torch.full_like(x, cfg.model.fixed_scale))
        assert math.isfinite(learner.step(x)["loss"])


def test_samples_are_draws_binary_under_a_bernoulli_likelihood_and_means_are_asked_for():
    cfg = load_config(None, TINY)
    _, learner = build(cfg, "cpu")
    vae = learner.model
    draws = vae.sample(500)
    assert set(draws.unique().tolist()) == {0.0, 1.0}  # samples x ~ p(x), not probabilities
    means = vae.sample_mean(500)
    assert ((means > 0) & (means < 1)).all() and len(means.unique()) > 100
    # draws average to the means: E[x] = E_z[E[x | z]]
    torch.manual_seed(0)
    many = vae.sample(20_000).mean(0)
    torch.manual_seed(0)
    expected = vae.sample_mean(20_000).mean(0)
    assert (many - expected).abs().max() < 0.03

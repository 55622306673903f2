"""The VAE family: a genuine Pyro model, every guide x estimator pair from the config, and
correctness where the answer is known (probabilistic PCA)."""

from __future__ import annotations

import itertools
import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro import poutine
from pyro.infer import SVI, Predictive, Trace_ELBO
from torch import nn

from pyrogen.build import build
from pyrogen.config import ConfigError, load_config
from pyrogen.evaluation.loglik import elbo_and_importance_log_likelihood
from pyrogen.inference.variational import ScaleLatents

TINY = [
    "data.name=digits",
    "data.binarize=dynamic",
    "model.latent_dim=3",
    "model.hidden_sizes=[16]",
    "train.device=cpu",
    "train.batch_size=32",
]

GUIDES = [
    ("diagonal_normal", []),
    ("low_rank_normal", []),
    ("full_normal", []),
    ("iaf", []),
    ("score_function", []),
    ("score_function", ["guide.baseline=decaying_average"]),
    ("score_function", ["guide.baseline=neural"]),
]
MULTI = ["elbo.num_particles=3"]
VEC = ["elbo.num_particles=3", "elbo.vectorize_particles=true"]
ESTIMATORS = [
    ("trace", []),
    ("trace", VEC),
    ("jit_trace", []),
    ("mean_field", []),
    ("jit_mean_field", []),
    ("trace_graph", []),
    ("jit_trace_graph", []),
    ("renyi", MULTI),
    ("renyi", VEC + ["elbo.alpha=0.5"]),
    ("tail_adaptive", VEC),
    ("rws", MULTI),
    ("rws", VEC),
]


def _pair_overrides(guide, estimator) -> list[str]:
    (g, go), (e, eo) = guide, estimator
    return [*TINY, f"guide.name={g}", f"elbo.name={e}", *go, *eo]


def _is_valid(guide, estimator) -> bool:
    try:
        load_config(None, _pair_overrides(guide, estimator))
        return True
    except ConfigError:
        return False


PAIRS = list(itertools.product(GUIDES, ESTIMATORS))
VALID = [p for p in PAIRS if _is_valid(*p)]
INVALID = [p for p in PAIRS if not _is_valid(*p)]


def _id(pair) -> str:
    (g, go), (e, eo) = pair
    return "-".join([g, *[o.split("=")[1] for o in go], e, *[o.split("=")[1] for o in eo]])


def test_the_split_of_pairs_is_as_documented():
    assert len(VALID) == 56 and len(INVALID) == 28


@pytest.mark.parametrize("pair", VALID, ids=[_id(p) for p in VALID])
def test_every_valid_guide_estimator_pair_trains_from_the_config(pair):
    cfg = load_config(None, _pair_overrides(*pair))
    dataset, learner = build(cfg, "cpu")
    before = [p.detach().clone() for p in learner.module.parameters()]
    gen = torch.Generator().manual_seed(0)
    for i in range(3):
        out = learner.step(dataset.process(dataset.train[32 * i : 32 * (i + 1)], gen))
        assert math.isfinite(out["loss"])
    after = list(learner.module.parameters())
    assert all(not torch.equal(a, b) for a, b in zip(before, after, strict=True))
    assert math.isfinite(learner.evaluate(dataset.process(dataset.valid[:64], gen))["elbo"])


@pytest.mark.parametrize("pair", INVALID, ids=[_id(p) for p in INVALID])
def test_every_invalid_pair_is_refused_when_the_config_is_read(pair):
    with pytest.raises(ConfigError) as err:
        load_config(None, _pair_overrides(*pair))
    message = str(err.value)
    assert "elbo" in message or "guide" in message
    assert any(w in message for w in ("needs", "use", "ignored", "cannot"))


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
# probabilistic PCA: z ~ N(0, I_L), x | z ~ N(W z + b, s² I_D); p(x) = N(b, W Wᵀ + s² I)
# ----------------------------------------------------------------------------------------


class PPCA(nn.Module):
    def __init__(self, W: torch.Tensor, b: torch.Tensor, s: float) -> None:
        super().__init__()
        self.W, self.b, self.s = W, b, s

    def forward(self, x):
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(0.0, 1.0).expand([self.W.shape[1]]).to_event(1))
            loc = z @ self.W.T + self.b
            pyro.sample("x", dist.Normal(loc, self.s).to_event(1), obs=x)

    def exact_log_prob(self, x):
        cov = self.W @ self.W.T + self.s**2 * torch.eye(self.W.shape[0], dtype=x.dtype)
        return dist.MultivariateNormal(self.b, cov).log_prob(x)

    def posterior(self, x):
        """p(z | x) = N(M⁻¹ Wᵀ (x − b), s² M⁻¹) with M = WᵀW + s² I."""
        L = self.W.shape[1]
        M = self.W.T @ self.W + self.s**2 * torch.eye(L, dtype=x.dtype)
        Minv = torch.linalg.inv(M)
        loc = (x - self.b) @ self.W @ Minv.T
        return dist.MultivariateNormal(loc, covariance_matrix=self.s**2 * Minv)


class PosteriorGuide(nn.Module):
    """q(z | x): the exact posterior, optionally with its mean shifted and scale inflated."""

    def __init__(self, ppca: PPCA, shift: float = 0.0, inflate: float = 1.0) -> None:
        super().__init__()
        self.ppca, self.shift, self.inflate = ppca, shift, inflate

    def forward(self, x):
        p = self.ppca.posterior(x)
        q = dist.MultivariateNormal(p.loc + self.shift, scale_tril=p.scale_tril * self.inflate)
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", q)


@pytest.fixture
def ppca():
    g = torch.Generator().manual_seed(0)
    D, L = 6, 2
    W = torch.randn(D, L, generator=g, dtype=torch.float64)
    b = torch.randn(D, generator=g, dtype=torch.float64)
    model = PPCA(W, b, 0.5)
    with torch.no_grad():
        z = torch.randn(40, L, generator=g, dtype=torch.float64)
        x = z @ W.T + b + 0.5 * torch.randn(40, D, generator=g, dtype=torch.float64)
    return model, x


def test_ppca_exact_posterior_guide_makes_the_elbo_equal_log_px(ppca):
    model, x = ppca
    elbo, logp_is = elbo_and_importance_log_likelihood(model, PosteriorGuide(model), x, 50)
    exact = model.exact_log_prob(x)
    torch.testing.assert_close(elbo, exact, rtol=0, atol=1e-8)
    torch.testing.assert_close(logp_is, exact, rtol=0, atol=1e-8)


def test_ppca_elbo_below_and_is_estimate_converging_to_log_px(ppca):
    model, x = ppca
    exact = model.exact_log_prob(x).mean().item()
    guide = PosteriorGuide(model, shift=0.3, inflate=1.5)  # a wrong but overlapping q
    pyro.set_rng_seed(1)
    errors = []
    for K in (1, 10, 100, 1000, 5000):
        elbo, logp = elbo_and_importance_log_likelihood(model, guide, x, K)
        assert elbo.mean().item() < exact  # the ELBO is a lower bound
        errors.append(abs(logp.mean().item() - exact))
    assert errors[-1] < 0.01  # nats: converged
    assert errors[-1] < errors[2] < errors[0]  # and the error shrinks with K
    assert elbo.mean().item() < exact - 0.1  # the gap of a wrong guide is visible


def test_importance_sampling_is_chunked_consistently(ppca):
    model, x = ppca
    guide = PosteriorGuide(model, shift=0.3, inflate=1.5)
    pyro.set_rng_seed(2)
    _, small_chunks = elbo_and_importance_log_likelihood(model, guide, x, 2000, max_elements=500)
    pyro.set_rng_seed(3)
    _, one_chunk = elbo_and_importance_log_likelihood(model, guide, x, 2000)
    exact = model.exact_log_prob(x)
    # many small chunks (max_elements=500: 12 particles at a time) estimate the same thing
    assert abs((small_chunks - exact).mean().item()) < 0.05
    assert abs((one_chunk - exact).mean().item()) < 0.05


# ----------------------------------------------------------------------------------------
# the score-function guide goes through the score-function estimator
# ----------------------------------------------------------------------------------------


def _guide_grads(learner, x, seed: int) -> torch.Tensor:
    learner.optimizer.zero_grad()
    pyro.set_rng_seed(seed)
    learner._loss_and_grads((x,))
    return torch.cat([p.grad.flatten() for p in learner.guide.encoder.parameters()]).clone()


def test_score_function_estimator_is_unbiased_but_differs_per_draw():
    base = TINY + ["model.latent_dim=2", "model.hidden_sizes=[8]"]
    _, sf = build(load_config(None, base + ["guide.name=score_function"]), "cpu")
    dataset, rep = build(load_config(None, base + ["guide.name=diagonal_normal"]), "cpu")
    rep.module.load_state_dict(sf.module.state_dict())  # identical parameters
    x = dataset.process(dataset.train[:16], torch.Generator().manual_seed(0))
    n = 600
    g_sf = torch.stack([_guide_grads(sf, x, s) for s in range(n)])
    g_rep = torch.stack([_guide_grads(rep, x, s) for s in range(n)])
    # on single draws (same random numbers) the two estimators differ
    assert not torch.allclose(g_sf[0], g_rep[0], atol=1e-3)
    # on average they agree: per coordinate z = Δmean / s.e.; |z| is ~ N(0, 1)-sized
    se = (g_sf.var(0) / n + g_rep.var(0) / n).sqrt()
    live = se > 0  # coordinates behind dead ReLUs have no gradient at all
    z = (g_sf.mean(0) - g_rep.mean(0))[live] / se[live]
    assert live.sum() > 50
    assert z.abs().mean() < 1.2 and z.abs().max() < 5.0
    # and the score-function estimator is far noisier
    assert (g_sf.var(0).sum() / g_rep.var(0).sum()) > 10.0


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

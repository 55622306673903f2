"""The conditional VAE (Sohn et al. 2015): p(x | z, c) with the decoder given [z, c], q(z | x, c)
with the encoder given x and c, p(z) = N(0, I) or p(z | c) = N(μ(c), diag σ²(c)); c the class
label y (one-hot) or a continuous context, in the batch's label slot."""

from __future__ import annotations

import math

import pyro
import pytest
import torch
from pyro.infer import SVI, Trace_ELBO
from torch import nn

import pyrogen
from conftest import SMALL_RUN, tiny
from pyrogen import load_config
from pyrogen.config import ConfigError, EvaluationConfig
from pyrogen.evaluation.loglik import importance_sampling, log_importance_weights
from pyrogen.evaluation.report import evaluate_model
from pyrogen.models.guides import DiagonalNormalGuide, IAFGuide
from pyrogen.models.likelihoods import GaussianLikelihood
from pyrogen.models.vae import VAE
from pyrogen.training import train

pytestmark = pytest.mark.usefixtures("one_thread")

#: a CVAE on the labelled 8x8 digits, its prior p(z | c) learned: 12 epochs of 10 steps
CVAE_RUN = SMALL_RUN + ["data.binarize=dynamic", *tiny("vae", width=64, latent=4)]
CVAE_RUN += ["model.conditional=true", "model.prior=conditional", "train.epochs=12"]
CVAE_RUN += ["optim.lr=3e-3", "output.num_samples=20"]


@pytest.fixture(scope="module")
def cvae_run(tmp_path_factory):
    torch.manual_seed(0)
    return train(load_config(None, CVAE_RUN), tmp_path_factory.mktemp("cvae") / "run", quiet=True)


def test_samples_of_a_class_look_like_that_class(cvae_run):
    """The mean of E[x | z, c] over z ~ p(z | c) is nearest the data's mean image of class c
    (for most classes) and far from another class's samples, beyond within-class noise."""
    model, ds = cvae_run.model, cvae_run.dataset
    x, y = ds.train.reshape(ds.train.shape[0], -1), ds.labels("train")
    data_means = torch.stack([x[y == k].mean(0) for k in range(10)])
    torch.manual_seed(1)
    m = 200
    means = [model.sample_mean(m, torch.full((m,), k)).reshape(m, -1) for k in range(10)]
    centre = torch.stack([s.mean(0) for s in means])
    nearest = torch.cdist(centre, data_means).argmin(1)
    assert (nearest == torch.arange(10)).sum() >= 8, nearest.tolist()
    # class 0 against class 1: the distance of their mean samples against its noise
    gap = (centre[0] - centre[1]).norm()
    noise = math.sqrt((means[0].var(0).sum() + means[1].var(0).sum()) / m)
    assert gap > 10 * noise, (float(gap), noise)
    # the run samples per class, and p(z | c) depends on c
    assert cvae_run.sample(5, 3).shape == (5, *ds.event_shape)
    assert model.prior_kind == "conditional"
    p0, p1 = model.prior(torch.tensor([0])), model.prior(torch.tensor([1]))
    assert not torch.allclose(p0.mean, p1.mean)


def test_a_cvae_run_evaluates_log_p_x_given_c_and_its_conditional_accuracy(cvae_run):
    ev = EvaluationConfig(is_samples=20, parzen_samples=100, max_test=60)
    result = pyrogen.evaluate(cvae_run, ev)["estimates"]
    assert math.isfinite(result["importance_sampled"]["mean"])
    assert result["importance_sampled"]["mean"] >= result["elbo"]["mean"] - 1.0
    assert result["conditional_accuracy"]["mean"] > 0.3  # chance is 0.1


def linear_gaussian_cvae(d: int = 3, latent: int = 2, c: int = 2, sigma: float = 0.5) -> VAE:
    """x = W_z z + W_c c + b + σ ε, z ~ N(0, I); q(z | x, c) an encoder of [x, c]."""
    torch.manual_seed(0)
    decoder = nn.Linear(latent + c, d)
    encoder = nn.Linear(d + c, 2 * latent)
    likelihood = GaussianLikelihood(d, scale="fixed", fixed_scale=sigma, min_scale=0.0)
    guide = DiagonalNormalGuide(encoder, latent)
    return VAE(None, decoder, latent, (d,), likelihood, guide=guide, context_dim=c)


def test_importance_sampled_log_p_x_given_c_of_a_linear_gaussian_cvae_is_exact():
    """log p(x | c) = log N(x; W_c c + b, W_z W_zᵀ + σ² I): the IS estimate matches it within
    its Monte Carlo error, through the loglik code and through pyrogen.evaluate. The encoder
    of [x, c] is set to the exact posterior's mean (linear in x and c) with a wider diagonal
    scale, so q(z | x, c) is a good proposal only if c reaches it."""
    vae = linear_gaussian_cvae()
    w, b = vae.decoder.weight.detach(), vae.decoder.bias.detach()
    w_z, w_c = w[:, :2], w[:, 2:]
    post_cov = torch.linalg.inv(torch.eye(2) + w_z.T @ w_z / 0.25)
    gain = post_cov @ w_z.T / 0.25  # E[z | x, c] = gain (x − W_c c − b)
    raw = torch.log(torch.expm1(1.3 * post_cov.diagonal().sqrt()))  # softplus⁻¹(1.3 σ_post)
    with torch.no_grad():
        enc = vae.guide.encoder
        enc.weight.zero_()
        enc.weight[:2] = torch.cat([gain, -gain @ w_c], dim=1)
        enc.bias.copy_(torch.cat([-gain @ b, raw - 1e-4]))
    torch.manual_seed(1)
    ctx = torch.randn(8, 2)
    x = torch.randn(8, 3) * 1.5
    cov = w_z @ w_z.T + 0.25 * torch.eye(3)
    exact = torch.distributions.MultivariateNormal(ctx @ w_c.T + b, cov).log_prob(x)
    k = 4000
    with torch.no_grad():
        log_w = log_importance_weights(vae.model, vae.guide, x, k, y=ctx)
        _, logp, _ = importance_sampling(vae.model, vae.guide, x, k, y=ctx, quiet=True)
    weights = (log_w - log_w.max(0).values).exp()
    stderr = weights.std(0) / weights.mean(0) / math.sqrt(k)  # delta method, per example
    assert ((logp - exact).abs() < 4 * stderr + 1e-4).all(), ((logp - exact) / stderr).tolist()
    ev = EvaluationConfig(is_samples=k)
    got = evaluate_model(vae, ev, data=x, labels=ctx)["estimates"]["importance_sampled"]
    assert got["mean"] == pytest.approx(float(exact.mean()), abs=4 * float(stderr.max()) + 1e-4)
    # the context reaches the guide: another c, another q(z | x, c)
    q1, q2 = vae.guide.posterior(x, ctx), vae.guide.posterior(x, ctx + 1)
    assert not torch.allclose(q1.mean, q2.mean)


def test_a_continuous_context_cvae_trains_with_plain_pyro_svi():
    """vae.model and vae.guide with (x, c) are Pyro programs: SVI moves the decoder, the
    encoder and the conditional prior's network."""
    torch.manual_seed(0)
    n, d, latent, c = 64, 6, 2, 3
    ctx = torch.randn(n, c)
    x = ctx @ torch.randn(c, d) + 0.1 * torch.randn(n, d)
    decoder = nn.Sequential(nn.Linear(latent + c, 16), nn.Tanh(), nn.Linear(16, 2 * d))
    guide = IAFGuide(
        nn.Sequential(nn.Linear(d + c, 16), nn.Tanh(), nn.Linear(16, 2 * latent + 16)), latent
    )
    vae = VAE(None, decoder, latent, (d,), "gaussian", guide=guide, context_dim=c,
              conditional_prior=True)  # fmt: skip
    before = {k: v.detach().clone() for k, v in vae.named_parameters()}
    pyro.clear_param_store()
    svi = SVI(vae.model, vae.guide, pyro.optim.Adam({"lr": 1e-2}), Trace_ELBO())
    losses = [svi.step(x, ctx) for _ in range(60)]
    assert all(math.isfinite(v) for v in losses)
    assert sum(losses[-10:]) < sum(losses[:10])
    for name in ("decoder.0.weight", "guide.encoder.0.weight", "context_prior.net.0.weight"):
        assert not torch.equal(before[name], dict(vae.named_parameters())[name]), name
    assert vae.sample(4, ctx[:4]).shape == (4, d)
    with pytest.raises(ValueError, match="context of 3 numbers") as e:
        vae.sample(4)
    assert "\n" not in str(e.value)


def test_labels_given_to_an_unconditional_vae_are_refused_in_one_line():
    torch.manual_seed(0)
    enc = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 4))
    vae = VAE(enc, nn.Linear(2, 4), 2, (4,), "bernoulli")
    x, y = torch.ones(3, 4), torch.tensor([0, 1, 2])
    for call in (
        lambda: vae.model(x, y),
        lambda: vae.guide(x, y),
        lambda: vae.sample(3, y),
        lambda: vae.reconstruct(x, y),
    ):
        with pytest.raises(ValueError, match="not (class-)?conditional") as e:
            call()
        assert "\n" not in str(e.value)
    # run by Pyro's estimators (which append the trace's shapes below the line) and the learner
    for call in (
        lambda: Trace_ELBO().loss(vae.model, vae.guide, x, y),
        lambda: pyrogen.VariationalLearner(vae).step(x, y),
    ):
        with pytest.raises(ValueError) as e:
            call()
        assert "not conditional" in str(e.value).splitlines()[0]


def test_a_class_conditional_vae_needs_its_labels_and_cycles_them_when_sampling():
    torch.manual_seed(0)
    enc = nn.Sequential(nn.Flatten(), nn.Linear(4 + 3, 4))
    vae = VAE(enc, nn.Linear(2 + 3, 4), 2, (4,), "bernoulli", num_classes=3)
    x = torch.ones(5, 4)
    with pytest.raises(ValueError, match="give y"):
        vae.model(x)
    with pytest.raises(ValueError, match="needs the context"):
        vae.guide(x)
    assert vae.labels(None, 5).tolist() == [0, 1, 2, 0, 1]
    trace = pyro.poutine.trace(vae.model).get_trace(num_samples=5)
    assert trace.nodes["x"]["value"].shape == (5, 4)
    with pytest.raises(ValueError, match=r"0\.\.2"):
        vae.sample(2, torch.tensor([0, 3]))


def test_the_conditional_prior_moves_with_c_and_scores_z():
    torch.manual_seed(0)
    enc = nn.Sequential(nn.Flatten(), nn.Linear(4 + 3, 4))
    vae = VAE(enc, nn.Linear(2 + 3, 4), 2, (4,), "bernoulli", num_classes=3,
              conditional_prior=True)  # fmt: skip
    y = torch.tensor([0, 1, 2])
    assert torch.equal(vae.prior(y).mean, torch.zeros(3, 2))  # starts the same for every c
    nn.init.normal_(vae.context_prior.net[-1].weight)
    p = vae.prior(y)
    assert p.batch_shape == (3,) and not torch.allclose(p.mean[0], p.mean[1])
    trace = pyro.poutine.trace(vae.model).get_trace(torch.ones(3, 4), y)
    assert torch.equal(trace.nodes["z"]["fn"].mean, p.mean)
    with pytest.raises(ValueError, match="conditional_prior is p"):
        VAE(enc, nn.Linear(2, 4), 2, (4,), "bernoulli", conditional_prior=True)


@pytest.mark.parametrize(
    ("overrides", "culprit"),
    [
        (["model.conditional=true", "model.prior=vamp"], "model.prior=vamp"),
        (["model.conditional=true", "model.prior=mixture", "elbo.name=trace_enum"],
         "model.prior=mixture"),
        (["model.conditional=true", "model.levels=2"], "model.levels=2"),
        (["model.prior=conditional"], "model.conditional=true"),
    ],
)  # fmt: skip
def test_combinations_a_cvae_does_not_take_are_refused_in_one_line(overrides, culprit):
    with pytest.raises(ConfigError) as e:  # when the config is read
        load_config(None, [*SMALL_RUN, *tiny("vae"), "data.binarize=dynamic", *overrides])
    message = str(e.value)
    assert culprit in message and "\n" not in message, message

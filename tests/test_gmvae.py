"""The mixture-prior VAE (GMVAE, ``model.prior=mixture``): c ~ Cat(π) enumerated in the model,
z | c ~ N(μ_c, σ_c²), x | z ~ Bernoulli(decoder(z)).

Checked against brute force in float64: the enumerated ELBO is
E_q[log Σ_c π_c N(z; μ_c, σ_c²) + log p(x | z) − log q(z | x)] with the same z; the importance
weights sum c out the same way; infer_discrete's MAP component is argmax_c p(c | z) by hand.
Then the clustering accuracy of a hand-made assignment, the config's refusals, and training
from a config with its resume bit for bit.
"""

from __future__ import annotations

from pathlib import Path

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro import poutine
from pyro.infer import TraceEnum_ELBO
from torch import nn

from conftest import SMALL_RUN, VAE_DIGITS
from pyrogen import VAE, load_config, train
from pyrogen.cli import main
from pyrogen.config import ConfigError, EvaluationConfig
from pyrogen.evaluation.clusters import cluster_accuracy, clusters, majority_labels
from pyrogen.evaluation.loglik import log_importance_weights
from pyrogen.evaluation.report import evaluate_run
from pyrogen.models.priors import MIN_SCALE, MixtureOfGaussiansPrior

pytestmark = pytest.mark.usefixtures("one_thread")

D, Z, K, N = 12, 3, 4, 7


def gmvae() -> VAE:
    """A tiny float64 GMVAE whose mixture parameters are far from their initial values."""
    torch.manual_seed(0)
    enc = nn.Sequential(nn.Linear(D, 16), nn.Tanh(), nn.Linear(16, 2 * Z))
    dec = nn.Sequential(nn.Linear(Z, 16), nn.Tanh(), nn.Linear(16, D))
    vae = VAE(
        enc, dec, Z, (D,), "bernoulli", prior=MixtureOfGaussiansPrior(Z, K, enumerated=True)
    ).double()
    with torch.no_grad():
        vae.prior_module.logits.copy_(torch.randn(K, dtype=torch.float64))
        vae.prior_module.means.mul_(0.5)
        vae.prior_module.log_scales.copy_(0.3 * torch.randn(K, Z, dtype=torch.float64))
    return vae


X = torch.bernoulli(torch.full((N, D), 0.4), generator=torch.Generator().manual_seed(1)).double()


def log_joint_by_hand(vae: VAE, z: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """log p(x, z) = log p(x | z) + log Σ_c π_c N(z; μ_c, σ_c²), per example."""
    log_pi = torch.log_softmax(vae.prior_module.logits, 0)
    terms = [
        log_pi[c]
        + dist.Normal(vae.prior_module.means[c], (vae.prior_module.log_scales[c].exp() + MIN_SCALE))
        .log_prob(z)
        .sum(-1)
        for c in range(K)
    ]
    log_pz = torch.logsumexp(torch.stack(terms), 0)
    logits = vae.decoder(z)
    return log_pz + dist.Bernoulli(logits=logits).log_prob(x).sum(-1)


def test_enumerated_elbo_equals_brute_force_sum_over_components():
    vae = gmvae()
    pyro.set_rng_seed(3)
    loss = TraceEnum_ELBO(max_plate_nesting=1).differentiable_loss(vae.model, vae.guide, X)
    pyro.set_rng_seed(3)  # the same draw z ~ q(z | x)
    q_trace = poutine.trace(vae.guide).get_trace(X)
    z = q_trace.nodes["z"]["value"]
    log_q = vae.guide.posterior(X).log_prob(z)
    brute = -(log_joint_by_hand(vae, z, X) - log_q).sum()
    assert loss.dtype == torch.float64
    assert torch.allclose(loss, brute, rtol=1e-12, atol=1e-10), (loss, brute)
    # and its gradient w.r.t. the mixture's parameters (π, μ, σ all learn)
    g = torch.autograd.grad(
        loss, [vae.prior_module.logits, vae.prior_module.means, vae.prior_module.log_scales]
    )
    assert all(gi.abs().sum() > 0 for gi in g)


def test_importance_weights_sum_the_component_out():
    vae = gmvae()
    pyro.set_rng_seed(4)
    log_w = log_importance_weights(vae.model, vae.guide, X, num_particles=5)
    pyro.set_rng_seed(4)
    with pyro.plate("particles", 5, dim=-2):
        z = poutine.trace(vae.guide).get_trace(X).nodes["z"]["value"]
    by_hand = log_joint_by_hand(vae, z, X) - vae.guide.posterior(X).log_prob(z)
    assert log_w.shape == (5, N)
    assert torch.allclose(log_w, by_hand, rtol=1e-12, atol=1e-10)


def test_infer_discrete_map_cluster_is_argmax_of_component_posterior():
    vae = gmvae()
    x = torch.bernoulli(torch.full((200, D), 0.5), generator=torch.Generator().manual_seed(2))
    x = x.double()
    with torch.no_grad():  # components centred on K examples' z: the data fall into several
        vae.prior_module.means.copy_(vae.guide.posterior(x[:K]).mean)
        vae.prior_module.log_scales.fill_(-3.0)
    got = clusters(vae, x, batch_size=64)
    with torch.no_grad():
        z = vae.guide.posterior(x).mean
        log_pi = torch.log_softmax(vae.prior_module.logits, 0)
        scale = vae.prior_module.log_scales.exp() + MIN_SCALE
        joint = log_pi + dist.Normal(vae.prior_module.means, scale).log_prob(z[:, None]).sum(-1)
    assert got.dtype == torch.int64 and got.shape == (200,)
    assert torch.equal(got, joint.argmax(-1))
    assert torch.equal(got, vae.component_log_posterior(z).argmax(-1))
    assert got.unique().numel() >= 2  # not a trivial one-cluster answer


def test_cluster_accuracy_of_a_hand_made_assignment():
    assigned = torch.tensor([0, 0, 0, 1, 1, 2, 2, 2])
    labels = torch.tensor([3, 3, 5, 1, 1, 1, 7, 7])
    # cluster 0 -> 3 (2 of 3), cluster 1 -> 1 (2 of 2), cluster 2 -> 7 (2 of 3), 3 empty
    assert majority_labels(assigned, labels, 4).tolist() == [3, 1, 7, -1]
    acc = cluster_accuracy(assigned, labels, 4)
    assert acc["mean"] == pytest.approx(6 / 8)
    assert acc["stderr"] == pytest.approx((0.75 * 0.25 / 8) ** 0.5)
    assert acc["n"] == 8 and acc["mapping"] == [3, 1, 7, -1]
    # a perfect clustering under a permutation of the labels scores 1
    assert cluster_accuracy(torch.tensor([2, 0, 1]), torch.tensor([5, 6, 9]), 3)["mean"] == 1.0
    with pytest.raises(ValueError, match="0..3"):
        cluster_accuracy(torch.tensor([4]), torch.tensor([0]), 4)


def test_clusters_refuse_a_normal_prior():
    enc = nn.Sequential(nn.Linear(D, 2 * Z))
    vae = VAE(enc, nn.Linear(Z, D), Z, (D,))
    with pytest.raises(ValueError, match="prior='mixture'"):
        clusters(vae, X.float())


GMVAE_RUN = SMALL_RUN + [
    "data.binarize=dynamic",
    "model.hidden_sizes=[16]",
    "model.latent_dim=2",
    "model.prior=mixture",
    "model.num_components=3",
    "elbo.name=trace_enum",
]


def test_mixture_prior_needs_an_enumerating_estimator(tmp_path: Path, capsys):
    with pytest.raises(ConfigError, match="elbo.name=trace_enum or jit_trace_enum"):
        load_config(None, GMVAE_RUN + ["elbo.name=trace"])
    with pytest.raises(ConfigError, match="elbo.beta"):
        load_config(None, GMVAE_RUN + ["elbo.beta=2"])
    out = tmp_path / "refused"
    argv = ["train", VAE_DIGITS, *GMVAE_RUN, "elbo.name=mean_field", "--run-dir", str(out)]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "model.prior=mixture" in err[0] and "Traceback" not in err[0]
    assert not out.exists()


def test_gmvae_trains_from_config_and_reports_cluster_accuracy(tmp_path):
    """(Its exact resume is tested with the other families' in test_training.)"""
    full = train(load_config(None, GMVAE_RUN + ["train.epochs=2"]), tmp_path / "full", quiet=True)
    assert full.model.prior_kind == "mixture" and full.model.num_components == 3
    # the mixture's parameters are trained
    assert not torch.equal(full.model.prior_module.logits, torch.zeros(3))
    ev = EvaluationConfig(is_samples=20, max_test=100)
    est = evaluate_run(full, ev)["estimates"]
    acc = est["cluster_accuracy"]
    assert acc["n"] == 100 and 0.0 < acc["mean"] <= 1.0 and acc["unit"] == "fraction"
    # the IS estimate sums c out: it is a valid bound above the ELBO (same draws)
    assert est["importance_sampled"]["mean"] >= est["elbo"]["mean"]
    # the accuracy is that of clusters() against the test labels
    x, y = full.dataset.split("test"), full.dataset.labels("test")
    pick = torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(ev.seed))[:100]
    expected = cluster_accuracy(clusters(full, x[pick], seed=ev.seed), y[pick], 3)
    assert acc["mean"] == expected["mean"]
    # a bound that would sample c is refused, the enumerating one is the ELBO again
    with pytest.raises(ConfigError, match="would sample the mixture prior's component c"):
        evaluate_run(full, EvaluationConfig(bounds=["renyi:5"], max_test=10))
    small = EvaluationConfig(bounds=["trace_enum"], max_test=100, is_samples=20)
    bound = evaluate_run(full, small)["estimates"]["trace_enum"]["mean"]
    assert abs(bound - est["elbo"]["mean"]) < 4 * est["elbo"]["stderr"], (bound, est["elbo"])

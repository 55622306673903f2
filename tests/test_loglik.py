"""Log-likelihood and bounds where the answer is known: probabilistic PCA.

z ~ N(0, I_L), x | z ~ N(W z + b, s² I_D) has p(x) = N(x; b, W Wᵀ + s² I) and the posterior
p(z | x) = N(M⁻¹ Wᵀ (x − b), s² M⁻¹) with M = WᵀW + s² I, both in closed form.
"""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer import RenyiELBO, ReweightedWakeSleep, Trace_ELBO, TraceTailAdaptive_ELBO
from torch import nn

from conftest import vae_and_batch
from pyrogen.evaluation.loglik import (
    bernoulli_log_prob,
    elbo_and_importance_log_likelihood,
    evaluate_elbo,
    importance_log_likelihood,
    importance_sampling,
    latent_log_weights,
    mlp_forward,
    plain_vae,
    traced_log_importance_weights,
    vae_log_importance_weights,
)
from pyrogen.inference.elbo import PerExampleRWS
from pyrogen.models.hierarchical import HierarchicalVAE
from pyrogen.nets import MLP


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


def ppca_and_data(n: int) -> tuple[PPCA, torch.Tensor]:
    """A 6-d pPCA with a 2-d latent (seed 0) and ``n`` examples drawn from it (float64)."""
    g = torch.Generator().manual_seed(0)
    D, L = 6, 2
    W = torch.randn(D, L, generator=g, dtype=torch.float64)
    b = torch.randn(D, generator=g, dtype=torch.float64)
    model = PPCA(W, b, 0.5)
    with torch.no_grad():
        z = torch.randn(n, L, generator=g, dtype=torch.float64)
        x = z @ W.T + b + 0.5 * torch.randn(n, D, generator=g, dtype=torch.float64)
    return model, x


@pytest.fixture
def ppca():
    return ppca_and_data(40)


def test_exact_posterior_guide_makes_the_elbo_equal_log_px(ppca):
    """With q(z|x) = p(z|x) every weight p(x,z)/q(z|x) equals p(x): ELBO = IS = log p(x)."""
    model, x = ppca
    elbo, logp_is = elbo_and_importance_log_likelihood(model, PosteriorGuide(model), x, 50)
    exact = model.exact_log_prob(x)
    torch.testing.assert_close(elbo, exact, rtol=0, atol=1e-8)
    torch.testing.assert_close(logp_is, exact, rtol=0, atol=1e-8)
    pyro_elbo = evaluate_elbo(model, PosteriorGuide(model), x, Trace_ELBO(max_plate_nesting=1))
    assert pyro_elbo == pytest.approx(exact.mean().item(), abs=1e-8)


def test_elbo_below_and_is_estimate_converging_to_log_px(ppca):
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


def test_importance_sampling_in_chunks_estimates_the_same_thing(ppca):
    model, x = ppca
    guide = PosteriorGuide(model, shift=0.3, inflate=1.5)
    pyro.set_rng_seed(2)
    one_chunk = importance_log_likelihood(model, guide, x, 2000, batch_size=40)
    pyro.set_rng_seed(3)
    # max_elements=10_000: 41 particles of the 40 x 6 batch at a time, so 49 chunks
    _, small_chunks = elbo_and_importance_log_likelihood(model, guide, x, 2000, max_elements=10_000)
    exact = model.exact_log_prob(x)
    assert abs((small_chunks - exact).mean().item()) < 0.05
    assert abs((one_chunk - exact).mean().item()) < 0.05


def test_estimators_bounds_are_ordered_below_log_px(ppca):
    """ELBO < IWAE_K (Rényi α = 0) ≤ log p(x), and RWS's wake-θ objective is the same IWAE
    bound, example by example."""
    model, x = ppca
    guide = PosteriorGuide(model, shift=0.3, inflate=1.5)
    exact = model.exact_log_prob(x).mean().item()
    pyro.set_rng_seed(4)
    elbo = evaluate_elbo(model, guide, x, Trace_ELBO(num_particles=200, max_plate_nesting=1))
    # K = 2,000: the Monte Carlo error of each mean bound is about 0.01 nats, so the two
    # estimates of the same bound agree to well within 0.05 (with K = 200 they do not)
    kwargs = {"num_particles": 2000, "vectorize_particles": True, "max_plate_nesting": 1}
    iwae = evaluate_elbo(model, guide, x, RenyiELBO(alpha=0, **kwargs))
    rws = evaluate_elbo(model, guide, x, PerExampleRWS(**kwargs), batch_size=8)
    assert elbo < iwae - 0.1 and iwae == pytest.approx(exact, abs=0.04)
    assert rws == pytest.approx(iwae, abs=0.05)
    with pytest.raises(ValueError, match="gradient, not a bound"):
        evaluate_elbo(model, guide, x, TraceTailAdaptive_ELBO(**kwargs))


def test_pyro_rws_weighs_whole_batches_and_the_adapter_each_example(ppca):
    """Pyro's ReweightedWakeSleep sums log-weights over the batch before weighting its K
    particles: on 40 examples its bound is that of K joint draws of (z_1..z_40), above the
    ELBO but far below the per-example IWAE bound that PerExampleRWS keeps (the reason it
    exists)."""
    model, x = ppca
    guide = PosteriorGuide(model, shift=0.3, inflate=1.5)
    kwargs = {"num_particles": 200, "vectorize_particles": True, "max_plate_nesting": 1}
    pyro.set_rng_seed(5)
    elbo = evaluate_elbo(model, guide, x, Trace_ELBO(num_particles=200, max_plate_nesting=1))
    joint = evaluate_elbo(model, guide, x, ReweightedWakeSleep(**kwargs))
    per_example = evaluate_elbo(model, guide, x, PerExampleRWS(**kwargs))
    exact = model.exact_log_prob(x).mean().item()
    assert per_example > exact - 0.05
    assert elbo < joint < per_example - 0.3


# ---------------------------------------------------------------- a plain VAE without traces

VAE_VARIANTS = {
    "diagonal": [],
    "iaf": ["guide.name=iaf"],
    "full": ["guide.name=full_normal"],
    "score function": ["guide.name=score_function"],
    "vamp": ["model.prior=vamp", "model.num_pseudo_inputs=5"],
    "mog": ["model.prior=mog"],
    "gaussian": ["data.binarize=none", "model.likelihood=gaussian"],
    "planar": ["guide.name=planar", "guide.num_flows=3"],
    "two levels": ["model.levels=2"],
    "two levels vamp": ["model.levels=2", "model.prior=vamp", "model.num_pseudo_inputs=5"],
}


@pytest.mark.parametrize("extra", VAE_VARIANTS.values(), ids=VAE_VARIANTS.keys())
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_direct_weights_of_a_plain_vae_are_the_traced_weights_of_the_same_draws(extra, dtype):
    """From the same generator state, the weights computed from the VAE's distributions are
    Pyro's traced weights of the same z: to float64 rounding in float64, and within float32
    rounding (relative 1e-6) in float32, in blocks smaller and larger than the batch."""
    vae, x = vae_and_batch(*extra)
    vae, x = vae.to(dtype), x.to(dtype)
    assert plain_vae(vae.model, vae.guide) is vae
    torch.manual_seed(0)
    traced = traced_log_importance_weights(vae.model, vae.guide, x, 37)
    tol = {"rtol": 1e-12, "atol": 1e-9} if dtype == torch.float64 else {"rtol": 1e-6, "atol": 1e-4}
    for block in (1, 100, 10_000):  # a block of one particle, of three, of them all
        torch.manual_seed(0)
        direct = vae_log_importance_weights(vae, x, 37, block_rows=block)
        assert direct.shape == (37, x.shape[0]) and direct.dtype == dtype
        torch.testing.assert_close(direct, traced, **tol)
    torch.manual_seed(0)
    z_traced = pyro.poutine.trace(vae.guide).get_trace(x).nodes[decoded_site(vae)]["value"]
    torch.manual_seed(0)
    z, _ = latent_log_weights(vae, x, 1)
    assert torch.equal(z[0], z_traced)  # the same draw, bit for bit


def decoded_site(vae: nn.Module) -> str:
    """The guide's site the decoder reads: z, or z1 of a two-level VAE."""
    return "z1" if isinstance(vae, HierarchicalVAE) else "z"


def test_importance_sampling_of_a_plain_vae_takes_the_direct_path_with_the_same_numbers():
    """``importance_sampling`` on ``vae.model`` (the direct path) gives the ELBO, IS log p(x)
    and PSIS k̂ of the traced path on the same seed (float64: to rounding)."""
    vae, x = vae_and_batch()
    vae, x = vae.double(), x.double()
    pyro.set_rng_seed(3)
    direct = importance_sampling(vae.model, vae.guide, x, 300, max_elements=20_000)
    pyro.set_rng_seed(3)
    traced = importance_sampling(
        vae.model, vae.guide, x, 300, max_elements=20_000, log_weights=traced_log_importance_weights
    )
    for a, b in zip(direct, traced, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


def test_only_a_plain_vae_outside_pyro_handlers_takes_the_direct_path(ppca):
    vae, x = vae_and_batch()
    assert plain_vae(vae.model, vae.guide) is vae
    assert plain_vae(vae.model, lambda x: vae.guide(x)) is None  # another guide
    with pyro.poutine.trace():  # a handler the direct path would bypass
        assert plain_vae(vae.model, vae.guide) is None
    model, _ = ppca
    assert plain_vae(model, PosteriorGuide(model)) is None  # any Pyro program
    gmvae, _ = vae_and_batch("model.prior=mixture", "elbo.name=trace_enum")
    assert plain_vae(gmvae.model, gmvae.guide) is None  # c is an enumerated site


def test_bernoulli_log_prob_is_pyros_for_any_logits():
    g = torch.Generator().manual_seed(0)
    logits = torch.cat(
        [
            torch.randn(4, 5, 30, generator=g, dtype=torch.float64) * 10,
            torch.tensor(
                [-200.0, -30.0, -1e-9, 0.0, 1e-9, 30.0, 200.0], dtype=torch.float64
            ).expand(4, 5, 7),
        ],
        -1,
    )
    x = (torch.rand(5, 37, generator=g) > 0.5).double()
    expected = dist.Bernoulli(logits=logits).to_event(1).log_prob(x)
    torch.testing.assert_close(bernoulli_log_prob(logits, x), expected, rtol=1e-14, atol=1e-12)
    wide = torch.tensor([[-300.0, -90.0, -87.0, -20.0, 0.0, 20.0, 87.0, 90.0, 300.0]])
    for xw in (torch.zeros(9), torch.ones(9)):  # float32, past exp's subnormal range
        expected = dist.Bernoulli(logits=wide).to_event(1).log_prob(xw)
        torch.testing.assert_close(bernoulli_log_prob(wide, xw), expected, rtol=1e-6, atol=0)
    vae, xb = vae_and_batch()
    with pytest.raises(ValueError, match="support"):  # as the traced path refuses it
        vae_log_importance_weights(vae, xb * 0.5, 3)


@pytest.mark.parametrize("activation", ["tanh", "relu", "elu"])
def test_mlp_forward_is_the_networks_forward_and_leaves_its_input_alone(activation):
    torch.manual_seed(0)
    net = MLP(5, [7, 6], 4, activation).double()
    h = torch.randn(11, 5, dtype=torch.float64) * 3
    before = h.clone()
    torch.testing.assert_close(mlp_forward(net, h), net(h), rtol=1e-13, atol=1e-13)
    assert torch.equal(h, before)
    head_first = nn.Sequential(nn.Tanh(), nn.Linear(5, 3)).double()  # input never overwritten
    torch.testing.assert_close(mlp_forward(head_first, h), head_first(h), rtol=1e-13, atol=0)
    assert torch.equal(h, before)

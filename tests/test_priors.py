"""``model.prior`` (vamp, mog) and ``elbo.free_bits``: the learned priors' log-densities are the
exact mixtures (a brute-force logsumexp in float64) and the model's ``z`` site scores with
them; free bits 0 and β = 1 are today's loss bit for bit; free bits floor each dimension's
batch KL (value and gradient by hand; floored dimensions get the reconstruction's gradient
only); every prior × estimator and free-bits × guide × estimator pair trains or is refused in
one line; a VampPrior run resumes bit-equal and samples."""

from __future__ import annotations

import itertools
import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro import poutine
from torch.distributions import Normal, kl_divergence

from conftest import (
    CONFIGS,
    SMALL_RUNS,
    TINY_BINARY_VAE,
    assert_same,
    assert_trains_from_the_config,
    frozen_learner,
    state_of,
    tiny,
    vae_and_batch,
)
from pyrogen import ConfigError, load_config
from pyrogen.build import build
from pyrogen.cli import main
from pyrogen.inference.elbo import check_compatible, make_elbo
from pyrogen.inference.variational import FreeBits, VariationalLearner
from pyrogen.models.priors import Mixture, MixtureOfGaussiansPrior, VampPrior
from pyrogen.training import load, train

TINY = TINY_BINARY_VAE
VAMP = ["model.prior=vamp", "model.num_pseudo_inputs=7"]
MOG = ["model.prior=mog", "model.num_components=4"]


# ------------------------------------------------------------------ exact mixture densities
def _site_log_prob(model: torch.nn.Module, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """log p(z) as the model's ``z`` site scores it (what every estimator and IS use)."""
    trace = poutine.trace(poutine.condition(model.model, {"z": z})).get_trace(x)
    trace.compute_log_prob()
    return trace.nodes["z"]["log_prob"]


def test_the_vamp_prior_is_the_exact_mixture_of_the_encoders_posteriors():
    """log p(z) = logsumexp_k log q(z | u_k) − log K, the Normal densities written out."""
    model, x = vae_and_batch(*VAMP)
    model = model.double()
    x = x.double()
    assert isinstance(model.prior_module, VampPrior)
    z = torch.randn(x.shape[0], 3, dtype=torch.float64) * 2
    loc, scale = model.guide.loc_scale(model.prior_module.pseudo_inputs)  # (K, 3) each
    k = loc.shape[0]
    per = [Normal(loc[i], scale[i]).log_prob(z).sum(-1) for i in range(k)]  # K of (N,)
    expected = torch.logsumexp(torch.stack(per), 0) - math.log(k)
    torch.testing.assert_close(model.prior().log_prob(z), expected, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(_site_log_prob(model, x, z), expected, rtol=1e-12, atol=1e-12)


def test_the_mog_prior_is_the_exact_learned_gaussian_mixture():
    """log p(z) = logsumexp_k (log softmax(a)_k + log N(z; μ_k, diag σ_k²))."""
    model, x = vae_and_batch(*MOG)
    model = model.double()
    prior = model.prior_module
    assert isinstance(prior, MixtureOfGaussiansPrior)
    with torch.no_grad():  # away from the initial equal weights and unit scales
        prior.logits.copy_(torch.tensor([0.3, -1.0, 2.0, 0.0]))
        prior.log_scales.add_(0.1 * torch.randn_like(prior.log_scales))
    z = torch.randn(x.shape[0], 3, dtype=torch.float64) * 2
    weights = torch.softmax(prior.logits, 0)
    scales = prior.log_scales.exp() + 1e-4
    per = [
        weights[i].log() + Normal(prior.means[i], scales[i]).log_prob(z).sum(-1) for i in range(4)
    ]
    expected = torch.logsumexp(torch.stack(per), 0)
    torch.testing.assert_close(_site_log_prob(model, x.double(), z), expected, rtol=1e-12, atol=0)


def test_the_pseudo_inputs_start_as_training_examples_and_are_parameters():
    cfg = load_config(None, TINY + VAMP)
    dataset, learner = build(cfg, "cpu")
    u = learner.model.prior_module.pseudo_inputs
    assert u.requires_grad and u.shape == (7, *dataset.event_shape)
    assert set(u.unique().tolist()) <= {0.0, 1.0}  # dynamically binarised examples
    names = [n for n, _ in learner.module.named_parameters()]
    assert "prior_module.pseudo_inputs" in names
    again = build(cfg, "cpu")[1].model.prior_module.pseudo_inputs
    assert torch.equal(u, again)  # chosen by train.seed


def test_the_standard_prior_adds_no_state():
    """prior=standard keeps the VAE's state as before (checkpoints of older runs still load)."""
    model, _ = vae_and_batch()
    assert model.prior_module is None
    assert not any(k.startswith("prior_module") for k in model.state_dict())
    assert {"prior_loc", "prior_scale"} <= set(model.state_dict())


# ------------------------------------------------------------------ free bits


def _per_dim_kl(model, x, z, analytic: bool) -> torch.Tensor:
    """KL(q(z_j|x_n) ‖ p(z_j)), shape (N, D): closed form, or log q(z_nj) − log p(z_nj)."""
    q = model.guide.posterior(x).base_dist
    p = model.prior().base_dist.expand(q.batch_shape)
    return kl_divergence(q, p) if analytic else q.log_prob(z) - p.log_prob(z)


def _floor_between_dims(model, x, seed: int, analytic: bool) -> float:
    """A λ with the dimension of the smallest batch-mean KL below it and the others above."""
    pyro.set_rng_seed(seed)
    z = poutine.trace(model.guide).get_trace(x).nodes["z"]["value"]
    means = _per_dim_kl(model, x, z, analytic).detach().mean(0).sort().values
    return float(means[0] + means[1]) / 2


@pytest.mark.parametrize("name", ["trace", "mean_field", "jit_trace"])
def test_free_bits_loss_and_gradient_are_the_floored_kl_by_hand(name):
    """loss = (−Σ_n log p(x_n|z_n) + Σ_j max(N λ, S_j)) / N on the same draws, S_j the
    estimator's own KL (closed form for mean_field), and the same gradient for every
    parameter (jit_trace: the loss only; its gradients are twice Trace_ELBO's on main too,
    without free bits)."""
    model, x = vae_and_batch()
    analytic = name == "mean_field"
    seed = 3
    lam = _floor_between_dims(model, x, seed, analytic)
    learner = frozen_learner(model, name, free_bits=lam)
    for step in range(2):  # jit_trace: the second step runs the compiled function
        learner.optimizer.zero_grad()
        pyro.set_rng_seed(seed)
        loss = learner.step(x)["loss"]
        pyro_grads = [p.grad.clone() for p in model.parameters()]
        model.zero_grad()
        pyro.set_rng_seed(seed)
        z = poutine.trace(model.guide).get_trace(x).nodes["z"]["value"]
        kl = _per_dim_kl(model, x, z, analytic).sum(0)
        n = x.shape[0]
        assert (kl < n * lam).sum() == 1  # one dimension under the floor
        expected = (-model.decode(z).log_prob(x).sum() + torch.clamp(kl, min=n * lam).sum()) / n
        expected.backward()
        assert loss == pytest.approx(expected.item(), rel=1e-5), step
        if name == "jit_trace":
            continue
        for got, want in zip(pyro_grads, [p.grad for p in model.parameters()], strict=True):
            torch.testing.assert_close(got, want * n, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", ["trace", "mean_field"])
def test_a_floored_dimension_gets_the_reconstruction_gradient_only(name):
    """The property that defines free bits: below λ the KL of a dimension exerts no pull. The
    gradient of the loss with respect to the encoder's outputs (μ_j, raw σ_j) equals that of
    −log p(x|z) alone for the floored dimension, and not for the others."""
    model, x = vae_and_batch()
    lam = _floor_between_dims(model, x, 5, analytic=name == "mean_field")
    outputs = {}

    def keep(_module, _inputs, out):
        out.retain_grad()
        outputs["h"] = out

    model.guide.encoder.register_forward_hook(keep)
    pyro.set_rng_seed(5)
    frozen_learner(model, name, free_bits=lam).step(x)
    floored_grad = outputs["h"].grad.clone()
    pyro.set_rng_seed(5)
    z = poutine.trace(model.guide).get_trace(x).nodes["z"]["value"]
    h = outputs["h"]  # the encoder's outputs behind this z
    (-model.decode(z).log_prob(x).sum()).backward()
    recon_grad = h.grad
    kl = _per_dim_kl(model, x, z, analytic=name == "mean_field").sum(0)
    below = int(kl.argmin())
    for j in range(3):
        cols = [j, 3 + j]  # μ_j and raw σ_j
        same = torch.allclose(floored_grad[:, cols], recon_grad[:, cols], rtol=1e-5, atol=1e-7)
        assert same == (j == below), j


def test_free_bits_refuses_a_site_that_does_not_factorise():
    model, x = vae_and_batch("guide.name=full_normal")
    learner = VariationalLearner(model, make_elbo("trace"), free_bits=0.5)
    with pytest.raises(ValueError, match="factorises per dimension"):
        learner.step(x)
    with pytest.raises(ValueError, match="> 0"):
        FreeBits(0.0)


# ------------------------------------------------------------------ every pair
MULTI = ["elbo.num_particles=3"]
VEC = ["elbo.num_particles=3", "elbo.vectorize_particles=true"]
ESTIMATORS = [
    ("trace", []),
    ("trace", VEC),
    ("jit_trace", []),
    ("mean_field", []),
    ("jit_mean_field", []),
    ("trace_graph", []),
    ("jit_trace_graph", MULTI),
    ("renyi", MULTI),
    ("tail_adaptive", VEC),
    ("rws", MULTI),
    ("trace_enum", []),
    ("jit_trace_enum", []),
]
VARIANTS = [
    ("vamp", "diagonal_normal", VAMP),
    ("vamp", "iaf", VAMP),
    ("vamp", "score_function", VAMP),
    ("vamp", "planar", VAMP),
    ("mog", "diagonal_normal", MOG),
    ("free_bits", "diagonal_normal", ["elbo.free_bits=0.3"]),
    ("free_bits", "low_rank_normal", ["elbo.free_bits=0.3"]),
    ("free_bits", "full_normal", ["elbo.free_bits=0.3"]),
    ("free_bits", "iaf", ["elbo.free_bits=0.3"]),
    ("free_bits", "score_function", ["elbo.free_bits=0.3"]),
    ("free_bits vamp", "diagonal_normal", ["elbo.free_bits=0.3", *VAMP]),
]
SMALL = ["train.batch_size=32"]


def _overrides(variant, estimator) -> list[str]:
    (_, g, vo), (e, eo) = variant, estimator
    return [*TINY, *SMALL, f"guide.name={g}", f"elbo.name={e}", *vo, *eo]


def _is_valid(pair) -> bool:
    try:
        load_config(None, _overrides(*pair))
        return True
    except ConfigError:
        return False


def _documented_refusal(pair) -> bool:
    """check_compatible's rules for priors and free bits, written out as a spec (the pairs
    refused for other reasons are test_guides_elbos's)."""
    (v, g, _), (e, eo) = pair
    score = g == "score_function"
    return (
        (score and e.endswith("mean_field"))
        or (score and e in ("renyi", "tail_adaptive"))
        or (g in ("iaf", "planar") and e.endswith("mean_field"))
        or (g == "planar" and (v == "vamp" or e == "rws"))
        or (v in ("vamp", "mog") and e.endswith("mean_field"))
        or (v.startswith("free_bits") and e in ("renyi", "rws", "tail_adaptive"))
        or (v == "free_bits vamp")
        or (v == "free_bits" and g != "diagonal_normal")
    )


def _id(pair) -> str:
    (v, g, _), (e, eo) = pair
    return "-".join([v.replace(" ", "_"), g, e, *[o.split("=")[0][5:] for o in eo[1:]]])


PAIRS = list(itertools.product(VARIANTS, ESTIMATORS))
VALID = [p for p in PAIRS if _is_valid(p)]
INVALID = [p for p in PAIRS if not _is_valid(p)]


def test_the_refused_pairs_are_exactly_the_documented_ones():
    assert [_id(p) for p in INVALID] == [_id(p) for p in PAIRS if _documented_refusal(p)]
    assert len(VALID) == 47 and len(INVALID) == 85


@pytest.mark.parametrize("pair", VALID, ids=[_id(p) for p in VALID])
def test_every_valid_variant_estimator_pair_trains_from_the_config(pair):
    assert_trains_from_the_config(_overrides(*pair))


@pytest.mark.parametrize("pair", INVALID, ids=[_id(p) for p in INVALID])
def test_every_invalid_pair_is_refused_in_one_line_with_the_reason(pair):
    with pytest.raises(ConfigError) as err:
        load_config(None, _overrides(*pair))
    line = str(err.value)
    assert "\n" not in line and line.startswith(("elbo.", "guide.")) and "use " in line
    (v, g, vo), (e, eo) = pair
    if _is_valid(((v, g, []), (e, eo))):  # refused for the prior or the free bits alone
        culprits = [o for o in vo if o.startswith(("elbo.free_bits", "model.prior"))]
        assert any(c in line for c in culprits), line


@pytest.mark.parametrize(
    ("overrides", "culprit"),
    [(tiny("flow"), "a flow has no latent variables"), (tiny("gan"), "a GAN has no ELBO")],
)
def test_free_bits_are_refused_for_flows_and_gans(overrides, culprit):
    with pytest.raises(ConfigError) as err:
        load_config(None, [*overrides, "elbo.free_bits=1"])
    assert "elbo.free_bits=1" in str(err.value) and culprit in str(err.value)


def test_the_cli_refuses_in_one_line_and_creates_nothing(tmp_path, capsys):
    run = tmp_path / "run"
    config = str(CONFIGS / "vae_vamp_binarized_mnist.yaml")
    argv = ["train", config, "elbo.name=mean_field", "--run-dir", str(run)]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert (
        len(err.splitlines()) == 1 and "model.prior=vamp" in err and "elbo.name=mean_field" in err
    )
    assert not run.exists()


def test_check_compatible_defaults_are_todays():
    assert check_compatible("diagonal_normal", "mean_field") is None
    assert check_compatible("iaf", "trace", prior="vamp") is None
    assert "model.prior=mog" in check_compatible("diagonal_normal", "jit_mean_field", prior="mog")


# ------------------------------------------------------------------ runs
VAMP_RUN = SMALL_RUNS["vae"] + ["model.prior=vamp", "model.num_pseudo_inputs=50"]


def test_a_vamp_run_loads_and_samples(tmp_path):
    """(Its exact resume is tested with the other families' in test_training.)"""
    full = train(load_config(None, VAMP_RUN + ["train.epochs=1"]), tmp_path / "full", quiet=True)
    assert "prior_module.pseudo_inputs" in state_of(full)
    loaded = load(tmp_path / "full", device="cpu", checkpoint="last")
    assert_same(state_of(full), state_of(loaded))
    samples = loaded.sample(9)
    assert samples.shape[0] == 9 and set(samples.unique().tolist()) <= {0.0, 1.0}


def test_the_shipped_vamp_config_is_the_binarized_mnist_one_with_the_prior():
    vamp = load_config(CONFIGS / "vae_vamp_binarized_mnist.yaml")
    plain = load_config(CONFIGS / "vae_binarized_mnist.yaml")
    assert vamp.model.prior == "vamp" and vamp.model.num_pseudo_inputs == 500
    assert vamp.data == plain.data and vamp.guide == plain.guide and vamp.train == plain.train


def test_a_diagonal_mixture_scores_z_by_matrix_products_with_the_brute_force_value() -> None:
    """Mixture.log_prob's matrix-product form for K diagonal Gaussians equals
    logsumexp_k (log π_k + Σ_d log N(z_d; μ_kd, σ_kd)) at z of any batch shape (float64), and
    so does the mixture pyro.plate expands: lazily, its K components kept unexpanded, so it
    takes the same form; its draws have the plate's shape."""
    torch.manual_seed(0)
    k, d = 7, 4
    loc, scale = torch.randn(k, d, dtype=torch.float64), torch.rand(k, d).double() + 0.1
    logits = torch.randn(k, dtype=torch.float64)
    mix = Mixture(dist.Categorical(logits=logits), dist.Normal(loc, scale).to_event(1))
    z = 2 * torch.randn(3, 5, d, dtype=torch.float64)
    per_comp = dist.Normal(loc, scale).log_prob(z[..., None, :]).sum(-1)
    brute = torch.logsumexp(per_comp + torch.log_softmax(logits, -1), -1)
    torch.testing.assert_close(mix.log_prob(z), brute, rtol=1e-12, atol=1e-10)
    with pyro.plate("rows", 3, dim=-2), pyro.plate("cols", 5):
        site = poutine.trace(lambda: pyro.sample("z", mix)).get_trace().nodes["z"]
    expanded = site["fn"]
    assert isinstance(expanded, dist.ExpandedDistribution) and expanded.base_dist is mix
    assert site["value"].shape == (3, 5, d)
    torch.testing.assert_close(expanded.log_prob(z), brute, rtol=1e-12, atol=1e-10)


def test_a_float32_mixture_with_far_components_keeps_its_value_and_gradient() -> None:
    """Terms of the logsumexp below the float's smallest normal number are floored there
    before exp (exp's slow path): with components 0 to 300 standard deviations from z, most
    of them far below the floor, the float32 log-density and its gradients in z, μ and σ
    equal the float64 brute-force logsumexp's to float32 rounding (z near the origin: the
    matrix-product form's float32 rounding grows with (z / σ)²)."""
    torch.manual_seed(1)
    k, d = 64, 5
    loc = (torch.linspace(0, 60, k)[:, None] * torch.ones(k, d)).requires_grad_()
    scale = torch.full((k, d), 0.5).requires_grad_()
    z = (0.5 * torch.randn(40, d)).requires_grad_()
    mix = Mixture(dist.Categorical(logits=torch.zeros(k)), dist.Normal(loc, scale).to_event(1))
    fast = mix.log_prob(z)
    leaves = [z.double(), loc.double(), scale.double()]
    per_comp = dist.Normal(leaves[1], leaves[2]).log_prob(leaves[0][:, None, :]).sum(-1)
    assert (per_comp - per_comp.amax(-1, keepdim=True) < -100).float().mean() > 0.5
    brute = torch.logsumexp(per_comp, -1) - math.log(k)
    torch.testing.assert_close(fast.double(), brute, rtol=1e-6, atol=1e-4)
    grads = torch.autograd.grad(fast.sum(), [z, loc, scale])
    exact = torch.autograd.grad(brute.sum(), leaves)
    for g, e in zip(grads, exact, strict=True):
        torch.testing.assert_close(g.double(), e, rtol=1e-4, atol=1e-3)

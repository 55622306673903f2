"""Every guide x estimator pair: the valid ones train from the config, the invalid ones are
refused when the config is read; the score-function guide really goes through the
score-function estimator; closed-form KLs; estimators that must follow the KL warm-up."""

from __future__ import annotations

import itertools

import pyro
import pyro.distributions as dist
import pytest
import torch
from torch.distributions import kl_divergence

from conftest import GAUSSIAN, POINTS, assert_trains_from_the_config, tiny
from pyrogen import ConfigError, load_config
from pyrogen.build import build
from pyrogen.inference.elbo import check_compatible

TINY = ["data.binarize=dynamic", *tiny("vae", latent=3), "train.device=cpu", "train.batch_size=32"]

GUIDES = [
    ("diagonal_normal", []),
    ("low_rank_normal", []),
    ("full_normal", []),
    ("iaf", []),
    ("planar", ["guide.num_flows=2"]),
    ("sylvester", ["guide.num_flows=2", "guide.num_householder=2"]),
    ("score_function", []),
    ("score_function", ["guide.baseline=decaying_average"]),
    ("score_function", ["guide.baseline=neural"]),
]
MULTI = ["elbo.num_particles=3"]
VEC = ["elbo.num_particles=3", "elbo.vectorize_particles=true"]
WARM = ["elbo.kl_warmup_steps=10"]
ESTIMATORS = [
    ("trace", []),
    ("trace", VEC),
    ("jit_trace", []),
    ("jit_trace", WARM),
    ("mean_field", []),
    ("jit_mean_field", WARM),
    ("trace_graph", []),
    ("trace_graph", VEC),
    ("jit_trace_graph", MULTI),
    ("renyi", MULTI),
    ("renyi", VEC + ["elbo.alpha=0.5"]),
    ("renyi", MULTI + ["elbo.alpha=1"]),
    ("tail_adaptive", MULTI),
    ("tail_adaptive", VEC + ["elbo.tail_adaptive_beta=-0.5"]),
    ("rws", []),
    ("rws", MULTI),
    ("trace_enum", []),
    ("jit_trace_enum", WARM),
]


def _overrides(guide, estimator) -> list[str]:
    (g, go), (e, eo) = guide, estimator
    return [*TINY, f"guide.name={g}", f"elbo.name={e}", *go, *eo]


def _is_valid(guide, estimator) -> bool:
    try:
        load_config(None, _overrides(guide, estimator))
        return True
    except ConfigError:
        return False


PAIRS = list(itertools.product(GUIDES, ESTIMATORS))
VALID = [p for p in PAIRS if _is_valid(*p)]
INVALID = [p for p in PAIRS if not _is_valid(*p)]


def _id(pair) -> str:
    (g, go), (e, eo) = pair
    return "-".join([g, *[o.split("=")[1] for o in go], e, *[o.replace("elbo.", "") for o in eo]])


def _documented_refusal(pair) -> bool:
    """The table of pyrogen.inference.elbo.check_compatible, written out as a spec."""
    (g, go), (e, eo) = pair
    opts = dict(o.removeprefix("elbo.").split("=") for o in eo)
    k, vec = int(opts.get("num_particles", 1)), opts.get("vectorize_particles") == "true"
    score, baseline = g == "score_function", any(o.startswith("guide.baseline") for o in go)
    return (
        (e.endswith("mean_field") and g in ("score_function", "iaf", "planar", "sylvester"))
        or (score and e in ("renyi", "tail_adaptive"))
        or (baseline and not e.endswith("trace_graph"))
        or (go == ["guide.baseline=decaying_average"] and e == "jit_trace_graph")
        or (e == "tail_adaptive" and not (vec and k > 1))
        or (e == "renyi" and opts.get("alpha") == "1")
        or (e in ("renyi", "rws") and k < 2)
        or (e == "rws" and g in ("planar", "sylvester"))
        or (e in ("jit_trace", "jit_trace_graph", "jit_trace_enum") and "kl_warmup_steps" in opts)
    )


def test_the_refused_pairs_are_exactly_the_documented_ones():
    assert [_id(p) for p in INVALID] == [_id(p) for p in PAIRS if _documented_refusal(p)]
    assert len(VALID) == 83 and len(INVALID) == 79


@pytest.mark.parametrize("pair", VALID, ids=[_id(p) for p in VALID])
def test_every_valid_guide_estimator_pair_trains_from_the_config(pair):
    assert_trains_from_the_config(_overrides(*pair))


@pytest.mark.parametrize("pair", INVALID, ids=[_id(p) for p in INVALID])
def test_every_invalid_pair_is_refused_with_the_reason(pair):
    (g, go), (e, eo) = pair
    cfg = load_config(None, TINY)
    cfg.guide.name, cfg.elbo.name = g, e
    for key, value in (o.split("=") for o in [*go, *eo]):
        section, field = key.split(".")
        old = getattr(getattr(cfg, section), field)
        new = (
            value == "true" if isinstance(old, bool) else (int if old is None else type(old))(value)
        )
        setattr(getattr(cfg, section), field, new)
    g_, e_ = cfg.guide, cfg.elbo
    message = check_compatible(
        g_.name,
        e_.name,
        num_particles=e_.num_particles,
        vectorize_particles=e_.vectorize_particles,
        alpha=e_.alpha,
        kl_warmup_steps=e_.kl_warmup_steps,
        baseline=g_.baseline,
    )
    assert message.startswith(("elbo.", "guide.")) and ("use " in message or "needs" in message)
    with pytest.raises(ConfigError) as err:  # and reading the config stops with it
        load_config(None, _overrides(*pair))
    assert str(err.value) == message


# ----------------------------------------------------------------------------------------
# the score-function guide goes through the score-function estimator
# ----------------------------------------------------------------------------------------


def _guide_grads(learner, x, seed: int) -> torch.Tensor:
    learner.optimizer.zero_grad()
    pyro.set_rng_seed(seed)
    learner._loss_value((x,))
    return torch.cat([p.grad.flatten() for p in learner.guide.encoder.parameters()]).clone()


def test_score_function_estimator_is_unbiased_but_differs_per_draw():
    base = TINY + ["model.latent_dim=2", "model.hidden_sizes=[8]"]
    _, sf = build(load_config(None, base + ["guide.name=score_function"]), "cpu")
    dataset, rep = build(load_config(None, base + ["guide.name=diagonal_normal"]), "cpu")
    rep.module.load_state_dict(sf.module.state_dict())  # identical parameters
    x = dataset.process(dataset.train[:16], torch.Generator().manual_seed(0))
    n = 500
    g_sf = torch.stack([_guide_grads(sf, x, s) for s in range(n)])
    g_rep = torch.stack([_guide_grads(rep, x, s) for s in range(n)])
    # on single draws (the same random numbers, so the same z) the two estimators differ
    assert not torch.allclose(g_sf[0], g_rep[0], atol=1e-3)
    # on average they agree: per coordinate z = Δmean / s.e. is N(0, 1)-sized
    se = (g_sf.var(0) / n + g_rep.var(0) / n).sqrt()
    live = se > 0  # coordinates behind dead ReLUs have no gradient at all
    z = (g_sf.mean(0) - g_rep.mean(0))[live] / se[live]
    assert live.sum() > 50
    assert z.abs().mean() < 1.2 and z.abs().max() < 5.0
    # and the score-function estimator is far noisier
    assert (g_sf.var(0).sum() / g_rep.var(0).sum()) > 10.0


def test_neural_baseline_is_fitted_and_shaped_like_vectorised_particles():
    """Under a vectorised particles plate the site's batch is (K, N); the baseline b(x_n) is
    shared by the K particles of x_n, and TraceGraph_ELBO fits it (its net gets gradients)."""
    cfg = load_config(
        None, TINY + ["guide.name=score_function", "guide.baseline=neural", "elbo.name=trace_graph"]
    )
    cfg.elbo.num_particles, cfg.elbo.vectorize_particles = 4, True
    dataset, learner = build(cfg, "cpu")
    x = dataset.process(dataset.train[:32], torch.Generator().manual_seed(0))
    with pyro.plate("particles", 4, dim=-2):
        trace = pyro.poutine.trace(learner.guide).get_trace(x)
    baseline = trace.nodes["z"]["infer"]["baseline"]["nn_baseline"](x)
    assert baseline.shape == (4, 32) and torch.equal(baseline[0], baseline[3])
    learner.step(x)
    assert all(p.grad.abs().sum() > 0 for p in learner.guide.baseline_net.parameters())


# ----------------------------------------------------------------------------------------
# closed-form KL for the correlated Gaussian guides; KL warm-up under the JIT
# ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["low_rank_normal", "full_normal"])
def test_mean_field_gets_the_closed_form_kl_of_correlated_guides(name):
    """TraceMeanField_ELBO asks torch for KL(q ‖ p); for a full or low-rank Gaussian q against
    the diagonal prior pyrogen registers the formula (torch would raise, and Pyro silently
    fall back to Monte Carlo). It equals torch's MVN-vs-MVN KL."""
    cfg = load_config(None, TINY + [f"guide.name={name}", "elbo.name=mean_field"])
    dataset, learner = build(cfg, "cpu")
    with torch.no_grad():
        for p in learner.guide.parameters():  # correlations well away from zero
            p.normal_(0, 0.3)
        q = learner.guide.posterior(dataset.train[:8])
    prior = learner.model.prior().expand([8])
    as_mvn = dist.MultivariateNormal(prior.base_dist.loc, scale_tril=torch.diag_embed(prior.stddev))
    full_q = dist.MultivariateNormal(q.loc, covariance_matrix=q.covariance_matrix)
    torch.testing.assert_close(kl_divergence(q, prior), kl_divergence(full_q, as_mvn))
    assert (kl_divergence(q, prior) > 0).all()


def _losses_with_frozen_parameters(name: str, steps: int = 6) -> list[float]:
    cfg = load_config(None, TINY + [f"elbo.name={name}", "elbo.kl_warmup_steps=4"])
    dataset, learner = build(cfg, "cpu")
    learner.optimizer = torch.optim.SGD(learner.module.parameters(), lr=0.0)
    x = dataset.process(dataset.train[:64], torch.Generator().manual_seed(0))
    out = []
    for _ in range(steps):
        pyro.set_rng_seed(1)  # the same z every step: only β changes
        out.append(learner.step(x)["loss"])
    return out


def test_kl_warmup_is_followed_by_jit_mean_field_and_refused_for_jit_trace():
    """β = 0, 1/4, ..., 1 over 4 steps: the analytic-KL loss grows by KL/4 per step, compiled
    or not. JitTrace_ELBO compiles the first step's β into its graph, so it is refused."""
    plain = torch.tensor(_losses_with_frozen_parameters("mean_field"))
    jit = torch.tensor(_losses_with_frozen_parameters("jit_mean_field"))
    steps_plain, steps_jit = plain.diff(), jit.diff()
    assert (steps_plain[:4] > 0.01).all() and steps_plain[4].abs() < 1e-5  # β stops at 1
    torch.testing.assert_close(steps_jit, steps_plain, atol=1e-4, rtol=1e-4)
    with pytest.raises(ConfigError, match="compiles the first step's weight"):
        load_config(None, TINY + ["elbo.name=jit_trace", "elbo.kl_warmup_steps=4"])


def _first_gradient(name: str) -> torch.Tensor:
    """The gradient of one learner step (lr ~ 0, so the step leaves the parameters) of a tiny
    Gaussian VAE on moons with the estimator ``name``, on the draws of seed 0."""
    cfg = load_config(
        None,
        ["model.family=vae", *POINTS, GAUSSIAN, "model.hidden_sizes=[8]", f"elbo.name={name}"]
        + ["optim.name=sgd", "optim.lr=1e-30"],
    )
    dataset, learner = build(cfg, "cpu")
    pyro.set_rng_seed(0)
    learner.step(dataset.train[:16])
    return torch.cat([p.grad.flatten() for p in learner.module.parameters()])


@pytest.mark.parametrize(
    "compiled, plain", [("jit_trace", "trace"), ("jit_trace_enum", "trace_enum")]
)
def test_a_compiled_estimator_has_the_gradient_of_the_plain_one_on_the_same_draws(compiled, plain):
    """Pyro 1.9.2's JitTrace_ELBO.differentiable_loss doubled every gradient (its loss is not
    detached inside the compiled function): SGD under jit_trace took twice the steps of
    trace. pyrogen's JitTraceELBO returns the surrogate's gradient alone."""
    a, b = _first_gradient(plain), _first_gradient(compiled)
    assert torch.allclose(a, b, rtol=1e-4, atol=1e-5), (b.norm() / a.norm()).item()

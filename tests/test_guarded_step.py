"""The one guarded optimiser step both learners share (:mod:`pyrogen.inference.step`).

Each learner's step is compared bit for bit with a hand-written reference step in plain
torch/Pyro (the estimator's ``differentiable_loss`` or ``loss_and_grads``, ``backward``,
clipping, ``optimizer.step``): for every ELBO estimator in the registry, in float32 and
(the deferred-backward path) bfloat16, and for the GAN's D and G steps. Non-finite losses
and gradients leave the parameters untouched; ``torch.Tensor.backward`` is never patched.
"""

from __future__ import annotations

import copy
import math

import pyro
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from pyrogen import load_config
from pyrogen.build import build
from pyrogen.inference.adversarial import AdversarialLearner
from pyrogen.inference.base import autocast
from pyrogen.inference.step import GuardedStep
from pyrogen.inference.variational import (
    VariationalLearner,
    deferred_backward,
    has_differentiable_loss,
)
from pyrogen.models.gan import GAN
from pyrogen.registry import ELBOS

pytestmark = pytest.mark.usefixtures("one_thread")

VAE = ["data.name=digits", "data.binarize=static", "model.latent_dim=3", "model.hidden_sizes=[16]"]
VAE += ["train.device=cpu", "train.seed=5"]
#: what each estimator needs to be valid (see pyrogen.inference.elbo.check_compatible)
NEEDS = {
    "renyi": ["elbo.num_particles=2"],
    "rws": ["elbo.num_particles=2"],
    "tail_adaptive": ["elbo.num_particles=3", "elbo.vectorize_particles=true"],
}
STEPS = 3


def _state(learner) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in learner.module.state_dict().items()}


def _assert_same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def _two_learners(overrides: list[str]):
    """Two identical learners (same config, same seed) and a batch."""
    cfg = load_config(None, VAE + overrides)
    dataset, learner = build(cfg, "cpu")
    pyro.clear_param_store()
    _, twin = build(cfg, "cpu")
    x = dataset.process(dataset.train[:24], torch.Generator().manual_seed(0))
    return learner, twin, x


def reference_step(learner, x: torch.Tensor, clip_norm: float | None = None) -> float:
    """One step in plain Pyro and torch: −ELBO's gradient by the estimator itself (its
    ``differentiable_loss`` and ``backward``, or its ``loss_and_grads``), clipping by global
    norm, the optimiser. The learner's context (its param store, KL weight) is borrowed."""
    opt, elbo, model, guide = learner.optimizer, learner.elbo, learner.model, learner.guide
    opt.zero_grad(set_to_none=True)
    with learner._step_context((x,), learner.kl_beta):
        if has_differentiable_loss(elbo):
            loss = elbo.differentiable_loss(model, guide, x)
            if not learner.reports_loss:  # tail-adaptive: the value reported is Trace_ELBO's
                with torch.no_grad():
                    value = learner.eval_elbo.loss(model, guide, x)
            loss.backward()
            value = loss.item() if learner.reports_loss else value
        else:
            value = elbo.loss_and_grads(model, guide, x)
            value = value[0] if isinstance(value, tuple) else value
    if clip_norm is not None:
        nn.utils.clip_grad_norm_(learner.module.parameters(), clip_norm)
    opt.step()
    learner.num_steps += 1
    return float(torch.as_tensor(float(value))) / x.shape[0]


def test_every_registered_estimator_is_covered():
    assert {"trace", "trace_graph", "renyi", "rws", "tail_adaptive"} <= set(ELBOS.names())
    assert set(NEEDS) <= set(ELBOS.names())


@pytest.mark.parametrize(
    ("name", "extra"),
    [(name, []) for name in ELBOS.names()]
    + [
        ("trace_graph", ["guide.name=score_function", "guide.baseline=neural"]),
        ("trace_graph", ["guide.name=score_function", "guide.baseline=decaying_average"]),
        ("trace", ["elbo.kl_warmup_steps=2", "optim.clip_norm=0.5"]),
        ("rws", ["optim.clip_norm=0.5"]),
    ],
)
def test_variational_step_is_the_estimators_own_step(name, extra):
    overrides = [f"elbo.name={name}", *NEEDS.get(name, []), *extra]
    learner, twin, x = _two_learners(overrides)
    clip = learner.clip_norm
    start = _state(learner)
    pyro.set_rng_seed(1)
    got = [learner.step(x) for _ in range(STEPS)]
    pyro.set_rng_seed(1)
    want = [reference_step(twin, x, clip) for _ in range(STEPS)]
    _assert_same(_state(learner), _state(twin))
    assert [m["loss"] for m in got] == want
    assert learner.num_steps == STEPS
    assert any(not torch.equal(start[k], v) for k, v in _state(learner).items())
    if clip is not None:  # the norm reported is the one before clipping, well above the bound
        assert all(m["grad_norm"] > clip for m in got)


def test_clipping_is_applied():
    """The same step without clipping ends elsewhere (so the test above sees clipping)."""
    learner, twin, x = _two_learners(["optim.clip_norm=0.5"])
    pyro.set_rng_seed(1)
    learner.step(x)
    pyro.set_rng_seed(1)
    reference_step(twin, x, clip_norm=None)
    assert not torch.equal(
        torch.cat([p.flatten() for p in learner.module.parameters()]),
        torch.cat([p.flatten() for p in twin.module.parameters()]),
    )


def _surrogate_reference_step(learner, x: torch.Tensor) -> None:
    """bf16 reference for estimators that differentiate inside Pyro: their surrogate built
    under autocast by Pyro's own internals (no backward), cast to float32 and
    differentiated after the forward pass (what DDP needs)."""
    opt, elbo, model, guide = learner.optimizer, learner.elbo, learner.model, learner.guide
    opt.zero_grad(set_to_none=True)
    with learner._step_context((x,), 1.0):
        with autocast(torch.bfloat16, x.device):
            if isinstance(elbo, pyro.infer.ReweightedWakeSleep):  # per example, summed
                parts = [elbo._loss(model, guide, (x[i : i + 1],), {}) for i in range(len(x))]
                surrogate = sum((t + p).float() for t, p in parts)
            else:
                _, surrogate = elbo._loss_and_surrogate_loss(model, guide, (x,), {})
                surrogate = 0 + surrogate.float()
        surrogate.backward()
    opt.step()
    learner.num_steps += 1


def _in_bf16(learner) -> VariationalLearner:
    return VariationalLearner(learner.model, learner.elbo, learner.guide, precision="bf16")


@pytest.mark.parametrize("name", ["trace_graph", "rws"])
def test_bf16_deferred_backward_is_the_surrogates_gradient(name):
    learner, twin, x = _two_learners([f"elbo.name={name}", *NEEDS.get(name, [])])
    learner, twin = (_in_bf16(one) for one in (learner, twin))
    pyro.set_rng_seed(1)
    for _ in range(STEPS):
        assert math.isfinite(learner.step(x)["loss"])
    pyro.set_rng_seed(1)
    for _ in range(STEPS):
        _surrogate_reference_step(twin, x)
    _assert_same(_state(learner), _state(twin))


def test_tensor_backward_is_never_patched():
    """Pyro's own ``backward`` calls are deferred (bf16, trace_graph) by a torch function
    mode, not by replacing ``torch.Tensor.backward``: the attribute is the same object
    before, during (seen from inside the model) and after a step."""
    learner, _, x = _two_learners(["elbo.name=trace_graph"])
    learner = _in_bf16(learner)
    before = torch.Tensor.backward
    seen = []
    forward = learner.model.forward

    def spy(*args, **kwargs):
        seen.append(torch.Tensor.backward)
        return forward(*args, **kwargs)

    learner.model.forward = spy
    start = _state(learner)
    assert math.isfinite(learner.step(x)["loss"])
    assert seen and all(b is before for b in seen)
    assert torch.Tensor.backward is before
    assert any(not torch.equal(start[k], v) for k, v in _state(learner).items())
    w = torch.ones(2, requires_grad=True)
    (w * 3).sum().backward()  # backward works again after the step
    assert torch.equal(w.grad, torch.full((2,), 3.0))


def test_deferred_backward_records_instead_of_differentiating():
    w = torch.ones(3, requires_grad=True)
    with deferred_backward() as recorded:
        (w * 2).sum().backward()
        (w * w).backward(gradient=torch.tensor([1.0, 2.0, 3.0]))
        assert w.grad is None
    assert len(recorded) == 2
    sum(recorded).backward()
    assert torch.equal(w.grad, torch.tensor([4.0, 6.0, 8.0]))


# ----------------------------------------------------------------------------- non-finite
def test_variational_nan_loss_leaves_parameters_and_optimiser_untouched():
    learner, _, x = _two_learners([])
    learner.step(x)  # Pyro's argument checks run on the first step only
    state, opt_state = _state(learner), copy.deepcopy(learner.optimizer.state_dict())
    bad = x.clone()
    bad[0, 0] = float("nan")
    out = learner.step(bad)
    assert not math.isfinite(out["loss"])
    _assert_same(_state(learner), state)
    assert learner.num_steps == 1
    assert all(p.grad is None for p in learner.module.parameters())
    after = learner.optimizer.state_dict()["state"]
    for key, value in opt_state["state"].items():
        for k, v in value.items():
            assert torch.equal(after[key][k], v), (key, k)


def _quadratic(p: torch.Tensor):
    return lambda: ((p**2).sum(), (p**2).sum().detach())


def test_guarded_step_equals_plain_step_with_clipping():
    p = torch.tensor([3.0, -4.0], requires_grad=True)
    q = p.detach().clone().requires_grad_(True)
    guard = GuardedStep(torch.optim.SGD([p], lr=1.0), clip_norm=1.0)
    done = guard.step(_quadratic(p))
    assert done.stepped and done.value == 25.0 and done.grad_norm == 10.0
    plain = torch.optim.SGD([q], lr=1.0)
    (q**2).sum().backward()
    nn.utils.clip_grad_norm_([q], 1.0)
    plain.step()
    assert torch.equal(p, q)
    # the update's length is the bound (gradient (6, −8) scaled to norm 1)
    torch.testing.assert_close((torch.tensor([3.0, -4.0]) - p).norm(), torch.tensor(1.0))


@pytest.mark.parametrize("what", ["value", "gradient"])
def test_guarded_step_cancels_on_non_finite_value_or_gradient(what):
    p = torch.zeros(2, requires_grad=True)
    opt = torch.optim.Adam([p], lr=0.1)
    guard = GuardedStep(opt, check_gradients=what == "gradient")  # (DDP, clipping, a GAN)
    if what == "value":
        forward = lambda: ((p + 1).sum() * float("nan"), torch.tensor(float("nan")))  # noqa: E731
    else:  # finite value, infinite gradient: d/dp sqrt(p) at 0
        forward = lambda: (p.sqrt().sum(), p.sqrt().sum().detach())  # noqa: E731
    done = guard.step(forward)
    assert not done.stepped
    assert torch.equal(p, torch.zeros(2)) and p.grad is None and not opt.state
    assert math.isfinite(done.value) == (what == "gradient")


def test_a_plain_step_checks_the_loss_alone():
    """One float32 process without clipping checks the loss, not the gradients' norm (a pass
    over every gradient each step; non-finite parameters are caught at the checkpoint)."""
    p = torch.zeros(2, requires_grad=True)
    done = GuardedStep(torch.optim.SGD([p], lr=0.1)).step(lambda: (p.sqrt().sum(), torch.zeros(())))
    assert done.stepped and done.grad_norm is None and not torch.isfinite(p).all()


# ----------------------------------------------------------------------------- GAN
def _gan() -> GAN:
    torch.manual_seed(0)
    g = nn.Sequential(nn.Linear(2, 16), nn.ReLU(), nn.Linear(16, 2))
    d = nn.Sequential(nn.Linear(2, 16), nn.LeakyReLU(0.2), nn.Linear(16, 1))
    return GAN(g, d, latent_dim=2, event_shape=(2,))


def _reference_gan_step(gan: GAN, opt_d, opt_g, x: torch.Tensor, loss: str) -> dict:
    """Algorithm 1 by hand: D descends E softplus(−d(x)) + E softplus(d(G(z))) on the batch
    and fresh samples; then G descends −E softplus(d(G(z))) (minimax) or E softplus(−d(G(z)))
    (non-saturating) on fresh z."""
    n = x.shape[0]
    with torch.no_grad():
        fake = gan.generate(gan.prior().sample((n,)))
    logits = gan.discriminate(torch.cat([x, fake]))
    l_real, l_fake = logits[:n], logits[n:]
    d_loss = F.softplus(-l_real).mean() + F.softplus(l_fake).mean()
    opt_d.zero_grad()
    d_loss.backward()
    opt_d.step()
    l_g = gan.discriminate(gan.generate(gan.prior().sample((n,))))
    g_loss = -F.softplus(l_g).mean() if loss == "minimax" else F.softplus(-l_g).mean()
    opt_g.zero_grad()
    opt_d.zero_grad()
    g_loss.backward()
    opt_g.step()
    return {
        "d_loss": d_loss.item(),
        "g_loss": g_loss.item(),
        "d_real": torch.sigmoid(l_real).mean().item(),
        "d_fake": torch.sigmoid(l_fake).mean().item(),
    }


@pytest.mark.parametrize("loss", ["minimax", "non_saturating"])
def test_gan_d_and_g_steps_are_the_hand_written_steps(loss):
    gan = _gan()
    twin = copy.deepcopy(gan)
    learner = AdversarialLearner(gan, loss, optim="sgd", lr=1e-2, momentum=0.9)
    opt_d = torch.optim.SGD(twin.discriminator.parameters(), lr=1e-2, momentum=0.9)
    opt_g = torch.optim.SGD(twin.generator.parameters(), lr=1e-2, momentum=0.9)
    data = torch.randn(STEPS, 32, 2)
    torch.manual_seed(1)
    got = [learner.step(x) for x in data]
    torch.manual_seed(1)
    want = [_reference_gan_step(twin, opt_d, opt_g, x, loss) for x in data]
    _assert_same(gan.state_dict(), twin.state_dict())
    for g, w in zip(got, want, strict=True):
        assert {k: g[k] for k in w} == w and g["loss"] == w["d_loss"]
    assert learner.num_steps == learner.num_g_steps == STEPS


def test_gan_nan_batch_cancels_the_whole_call():
    gan = _gan()
    learner = AdversarialLearner(gan, "non_saturating", lr=1e-2)
    learner.step(torch.randn(16, 2))
    state = copy.deepcopy(gan.state_dict())
    bad = torch.randn(16, 2)
    bad[3, 1] = float("nan")
    out = learner.step(bad)
    assert math.isnan(out["loss"])
    _assert_same(gan.state_dict(), state)
    assert learner.num_steps == learner.num_g_steps == 1
    assert all(p.grad is None for p in gan.parameters())

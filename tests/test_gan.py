"""GANs: a Pyro generative process; the theory of the game (Proposition 1, Theorem 1's −log 4);
the saturation of the minimax loss; mode coverage on eight Gaussians; Algorithm 1's cadence,
NaN safety, the EMA and resume."""

from __future__ import annotations

import io
import math

import pytest
import torch
from pyro import poutine
from pyro.infer import Predictive

from conftest import assert_same
from pyrogen import ConfigError, load_config
from pyrogen.build import build
from pyrogen.data.toy import eight_gaussian_centres
from pyrogen.inference.adversarial import GAN_LOSSES, AdversarialLearner
from pyrogen.models.gan import GAN
from pyrogen.nets import conv_discriminator, conv_generator, mlp_discriminator, mlp_generator

TOY = [
    "model.family=gan",
    "data.name=eight_gaussians",
    "model.latent_dim=2",
    "model.output=identity",
    "model.hidden_sizes=[64,64]",
    "model.discriminator_hidden_sizes=[64,64]",
    "optim.lr=1e-3",
    "optim.betas=[0.5,0.999]",
    "train.device=cpu",
]


pytestmark = pytest.mark.usefixtures("one_thread")


# ------------------------------------------------------------------ the generative process
def test_generator_is_a_pyro_model_with_sites_z_and_x():
    gan = GAN(mlp_generator(3, [8], 64), mlp_discriminator(64, [8]), 3, (64,), prior="uniform")
    trace = poutine.trace(gan.model).get_trace(num_samples=5)
    z, x = trace.nodes["z"], trace.nodes["x"]
    assert z["value"].shape == (5, 3) and ((z["value"] >= -1) & (z["value"] <= 1)).all()
    assert x["type"] == "sample" and x["value"].shape == (5, 64)
    for site in (z, x):  # both inside plate("data") over the batch
        (frame,) = site["cond_indep_stack"]
        assert frame.name == "data" and frame.size == 5
    # x = G(z) exactly: the site is deterministic
    torch.testing.assert_close(x["value"], gan.generator(z["value"]))
    # its parameters are param sites (the discriminator's are not: D is no part of p(x))
    params = poutine.trace(gan.model, param_only=True).get_trace(num_samples=2).nodes
    assert set(params) == {n for n, _ in gan.generator.named_parameters(prefix="generator")}
    # given data, only its batch size is used: no likelihood, the joint density is p(z)
    data = torch.rand(7, 64)
    trace = poutine.trace(gan.model).get_trace(data)
    assert trace.nodes["x"]["value"].shape == (7, 64)
    assert not torch.equal(trace.nodes["x"]["value"], data)
    torch.testing.assert_close(
        trace.log_prob_sum(), gan.prior().log_prob(trace.nodes["z"]["value"]).sum()
    )
    draws = Predictive(gan.model, num_samples=2, return_sites=["x"])(num_samples=4)
    assert draws["x"].shape == (2, 4, 64) and ((draws["x"] >= 0) & (draws["x"] <= 1)).all()


def test_dcgan_networks_for_28x28_images_and_spectral_norm():
    shape = (1, 28, 28)
    G = conv_generator(16, shape, [32, 16])
    D = conv_discriminator(shape, [16, 32], spectral_norm=True)
    gan = GAN(G, D, latent_dim=16, event_shape=shape)
    x = gan.sample(6)
    assert x.shape == (6, 1, 28, 28) and ((x >= 0) & (x <= 1)).all()
    assert gan.discriminate(x).shape == (6,)
    # spectral normalisation: after power iterations every layer's top singular value is 1
    for _ in range(30):
        gan.discriminate(x)
    for m in gan.discriminator.modules():
        if hasattr(m, "parametrizations"):
            w = m.weight.reshape(m.weight.shape[0], -1)
            assert torch.linalg.matrix_norm(w, ord=2).item() == pytest.approx(1.0, abs=0.02)
    with pytest.raises(ValueError, match="two stages"):
        conv_generator(16, shape, [8])
    with pytest.raises(ConfigError, match="give two sizes"):
        load_config(None, ["model.family=gan", "model.architecture=conv", "model.hidden_sizes=[8]"])


@pytest.mark.parametrize("dropout", [0.0, 0.5])
def test_discriminator_dropout_reaches_the_conv_discriminator(dropout):
    # model.discriminator_dropout used to be ignored with model.architecture=conv
    cfg = load_config(
        None,
        [
            "model.family=gan",
            "data.name=digits",
            "data.flatten=false",
            "model.architecture=conv",
            "model.hidden_sizes=[16,8]",
            "model.discriminator_hidden_sizes=[8,16]",
            f"model.discriminator_dropout={dropout}",
        ],
    )
    torch.manual_seed(0)
    dataset, learner = build(cfg, "cpu")
    D = learner.model.discriminator
    drops = [m for m in D.modules() if isinstance(m, torch.nn.Dropout)]
    assert len(drops) == (2 if dropout else 0)  # none at 0: state dicts keep their keys
    assert all(m.p == dropout for m in drops)
    x = dataset.train[:32]
    D.train()
    assert torch.equal(D(x), D(x)) == (dropout == 0)  # a random mask per pass in training
    D.eval()
    assert torch.equal(D(x), D(x))


# ------------------------------------------------------------------ the theory of the game
def _fixed_gaussian_gan(mean: float, std: float) -> GAN:
    """A GAN whose generator is x = mean + std z, z ~ N(0, 1): p_g = N(mean, std²) exactly."""
    G = mlp_generator(1, [], 1, output="identity")
    gan = GAN(G, mlp_discriminator(1, [32, 32]), latent_dim=1, event_shape=(1,))
    linear = G[0][0]
    with torch.no_grad():
        linear.weight.fill_(std)
        linear.bias.fill_(mean)
    return gan


def _train_discriminator_alone(gan: GAN, p_data, steps: int) -> AdversarialLearner:
    """Algorithm 1's D steps only (k larger than the number of steps): G is never updated."""
    learner = AdversarialLearner(
        gan, "non_saturating", discriminator_steps=10**9, lr_discriminator=3e-3, betas=(0.9, 0.99)
    )
    g_before = [p.clone() for p in gan.generator.parameters()]
    for i in range(steps):
        if i == int(0.8 * steps):  # a smaller step size to settle at the optimum
            for group in learner.opt_d.param_groups:
                group["lr"] = 5e-4
        learner.step(p_data.sample((512, 1)))
    assert all(torch.equal(a, b) for a, b in zip(g_before, gan.generator.parameters(), strict=True))
    gan.eval()
    return learner


def _value(learner: AdversarialLearner, gan: GAN, p_data, p_g, logit=None, n=40_000):
    """V(D, G) = E_data log D(x) + E_g log(1 − D(x)) = −d_loss, by Monte Carlo."""
    logit = logit or gan.discriminate
    real, fake = p_data.sample((n, 1)), p_g.sample((n, 1))
    with torch.no_grad():
        return -learner.loss.d_loss(logit(real), logit(fake)).item()


def test_discriminator_reaches_the_optimum_of_proposition_1():
    """For fixed G, training D alone gives D*(x) = p_data(x) / (p_data(x) + p_g(x)), and the
    value max_D V(D, G) = −log 4 + 2 JSD(p_data ‖ p_g) (the proof of Theorem 1)."""
    torch.manual_seed(0)
    p_data, p_g = torch.distributions.Normal(1.0, 0.5), torch.distributions.Normal(-0.5, 1.0)
    gan = _fixed_gaussian_gan(-0.5, 1.0)
    learner = _train_discriminator_alone(gan, p_data, steps=1000)

    x = torch.linspace(-2.0, 2.0, 200)[:, None]  # where p_data + p_g has its mass
    with torch.no_grad():
        learned = torch.sigmoid(gan.discriminate(x))
    pd, pg = p_data.log_prob(x[:, 0]).exp(), p_g.log_prob(x[:, 0]).exp()
    error = (learned - pd / (pd + pg)).abs()
    assert error.max() < 0.04
    assert (error * (pd + pg)).sum() / (pd + pg).sum() < 0.01  # mixture-weighted

    # JSD by quadrature; V at the exact D* (a check of the loss code's labels) and at the
    # trained D, whose value cannot exceed the maximum
    t = torch.linspace(-8, 8, 20001, dtype=torch.float64)
    a, b = p_data.log_prob(t).exp(), p_g.log_prob(t).exp()
    m = (a + b) / 2
    jsd = 0.5 * torch.trapezoid(a * (a / m).log() + b * (b / m).log(), t).item()
    optimum = -math.log(4) + 2 * jsd

    def d_star(x):
        return p_data.log_prob(x[:, 0]) - p_g.log_prob(x[:, 0])  # logit of D*

    torch.manual_seed(1)
    assert _value(learner, gan, p_data, p_g, d_star) == pytest.approx(optimum, abs=0.01)
    trained = _value(learner, gan, p_data, p_g)
    assert optimum - 0.01 < trained < optimum + 0.01


def test_value_of_the_game_at_the_global_optimum_is_minus_log_4():
    """With p_g = p_data no discriminator beats chance: D* = 1/2 and V(D*, G) = −log 4."""
    torch.manual_seed(0)
    p = torch.distributions.Normal(0.3, 0.8)
    gan = _fixed_gaussian_gan(0.3, 0.8)
    learner = _train_discriminator_alone(gan, p, steps=400)
    with torch.no_grad():
        d_x = torch.sigmoid(gan.discriminate(torch.linspace(-1.5, 2.0, 50)[:, None]))
    assert (d_x - 0.5).abs().max() < 0.05
    torch.manual_seed(1)
    assert _value(learner, gan, p, p) == pytest.approx(-math.log(4), abs=0.002)


def test_minimax_gradient_vanishes_when_d_rejects_samples_and_non_saturating_does_not():
    norms = {}
    for name in ("minimax", "non_saturating"):
        torch.manual_seed(0)
        G, D = mlp_generator(2, [16], 2, output="identity"), mlp_discriminator(2, [16])
        gan = GAN(G, D, latent_dim=2, event_shape=(2,))
        with torch.no_grad():  # a discriminator that confidently rejects every sample
            D[-1][-1].bias.fill_(-12.0)
        loss = GAN_LOSSES.get(name)()
        z = gan.prior().sample((256,))
        g = loss.g_loss(gan.discriminate(gan.generator(z)))
        grads = torch.autograd.grad(g, list(gan.generator.parameters()))
        norms[name] = torch.cat([v.flatten() for v in grads]).norm().item()
    assert norms["non_saturating"] > 1e-2
    assert norms["minimax"] < 1e-3 * norms["non_saturating"]


# ------------------------------------------------------------------ training
@pytest.mark.parametrize("loss", ["minimax", "non_saturating", "hinge", "wasserstein"])
def test_every_generator_loss_trains_from_the_config(loss):
    cfg = load_config(
        None,
        TOY
        + [
            f"adversarial.loss={loss}",
            "adversarial.r1_penalty=1.0",
            "model.spectral_norm=true",
            "optim.clip_norm=10.0",
        ],
    )
    dataset, learner = build(cfg, "cpu")
    before = {n: p.detach().clone() for n, p in learner.module.named_parameters()}
    for i in range(4):
        out = learner.step(dataset.train[64 * i : 64 * (i + 1)])
    assert set(out) == {"loss", "d_loss", "g_loss", "d_real", "d_fake"}
    assert all(math.isfinite(v) for v in out.values()) and out["loss"] == out["d_loss"]
    assert 0 < out["d_real"] < 1 and 0 < out["d_fake"] < 1
    unchanged = [n for n, p in learner.module.named_parameters() if torch.equal(before[n], p)]
    # the critic's output bias cancels out of E d(G(z)) − E d(x) (and of the hinge loss
    # while both margins are active): its gradient is exactly zero there
    allowed = {"discriminator.1.4.bias"} if loss in ("hinge", "wasserstein") else set()
    assert set(unchanged) <= allowed
    valid = learner.evaluate(dataset.valid[:256])
    assert set(valid) == {"d_loss", "g_loss", "d_real", "d_fake"}


def test_eight_gaussians_all_modes_covered():
    """A cheaper run of configs/gan_toy.yaml (64-unit nets, R1 γ = 0.1, 3,000 steps of batch
    256, about 12 s of CPU): every mode gets samples within 3σ of its centre, and so do many
    samples. Without the R1 penalty, 2 of seeds 0-3 miss a mode at this budget; with it all
    four cover all eight, 33-69% of samples on a mode."""
    cfg = load_config(None, TOY + ["adversarial.r1_penalty=0.1"])
    dataset, learner = build(cfg, "cpu")
    g = torch.Generator().manual_seed(0)
    for _ in range(3000):
        learner.step(dataset.train[torch.randint(0, dataset.train.shape[0], (256,), generator=g)])
    samples = learner.model.sample(2000)
    near = torch.cdist(samples, eight_gaussian_centres()).min(1)
    good = near.values < 3 * 0.02
    modes = torch.bincount(near.indices[good], minlength=8)
    assert (modes > 0).all(), modes  # every mode is covered
    assert good.float().mean() > 0.3  # and many samples are on a mode


def test_k_discriminator_steps_per_generator_step():
    cfg = load_config(None, TOY + ["adversarial.discriminator_steps=3"])
    dataset, learner = build(cfg, "cpu")
    g_params = list(learner.model.generator.parameters())
    changed = []
    for i in range(7):
        before = [p.clone() for p in g_params]
        learner.step(dataset.train[32 * i : 32 * (i + 1)])
        changed.append(not all(torch.equal(a, b) for a, b in zip(before, g_params, strict=True)))
    assert changed == [False, False, True, False, False, True, False]  # calls 3 and 6
    assert learner.num_steps == 7 and learner.num_g_steps == 2


def _snapshot(learner: AdversarialLearner) -> dict[str, torch.Tensor]:
    out = {f"module.{k}": v.clone() for k, v in learner.module.state_dict().items()}
    for name in ("opt_d", "opt_g"):
        for i, state in getattr(learner, name).state_dict()["state"].items():
            out.update({f"{name}.{i}.{k}": v.clone() for k, v in state.items()})
    return out


@pytest.mark.parametrize("warm", [False, True])
def test_nan_in_either_player_leaves_everything_untouched(warm, monkeypatch):
    """A NaN in D's loss stops before any update; a NaN in G's loss (after D's update)
    undoes D's update too, its optimiser state included."""
    cfg = load_config(None, TOY + ["model.spectral_norm=true", "adversarial.ema_decay=0.9"])
    dataset, learner = build(cfg, "cpu")
    if warm:  # optimiser states exist
        learner.step(dataset.train[:64])
    before, counters = _snapshot(learner), (learner.num_steps, learner.num_g_steps)

    out = learner.step(dataset.train[:64] * float("nan"))  # D's loss is NaN
    assert math.isnan(out["loss"])
    assert_same(before, _snapshot(learner))

    g_loss = learner.loss.g_loss
    monkeypatch.setattr(learner.loss, "g_loss", lambda fake: g_loss(fake) * math.nan)
    out = learner.step(dataset.train[:64])  # D updates, then G's loss is NaN
    assert math.isnan(out["loss"]) and math.isnan(out["g_loss"]) and math.isfinite(out["d_loss"])
    assert_same(before, _snapshot(learner))
    assert (learner.num_steps, learner.num_g_steps) == counters


def test_ema_follows_its_formula_and_is_what_the_process_samples():
    decay = 0.9
    cfg = load_config(None, TOY + [f"adversarial.ema_decay={decay}"])
    dataset, learner = build(cfg, "cpu")
    gan = learner.model
    learner.step(dataset.train[:64])  # the first update copies G's weights
    ema, raw = gan.ema_generator.parameters, gan.generator.parameters
    for e, p in zip(ema(), raw(), strict=True):
        assert torch.equal(e, p)
    for i in range(1, 4):
        ema_before = [e.clone() for e in ema()]
        learner.step(dataset.train[64 * i : 64 * (i + 1)])
        for e, old, p in zip(ema(), ema_before, raw(), strict=True):
            torch.testing.assert_close(e, decay * old + (1 - decay) * p)
    assert not any(torch.equal(e, p) for e, p in zip(ema(), raw(), strict=True))  # it lags
    # sample() and the Pyro model use the averaged generator
    torch.manual_seed(1)
    trace = poutine.trace(gan.model).get_trace(num_samples=5)
    x, z = trace.nodes["x"]["value"], trace.nodes["z"]["value"]
    torch.testing.assert_close(x, gan.ema_generator(z))
    torch.manual_seed(1)
    torch.testing.assert_close(gan.sample(5), x)


def test_resume_from_a_state_dict_equals_uninterrupted_training():
    """state_dict -> bytes -> a fresh learner -> more steps ends exactly where an
    uninterrupted run ends (CPU, same seed), with EMA, k = 2 and Adam's moments."""
    overrides = TOY + ["adversarial.discriminator_steps=2", "adversarial.ema_decay=0.95"]
    batches = [torch.randn(64, 2) for _ in range(12)]

    def fresh() -> AdversarialLearner:
        return build(load_config(None, overrides), "cpu")[1]

    full = fresh()
    torch.manual_seed(5)
    for x in batches:
        full.step(x)

    part = fresh()
    torch.manual_seed(5)
    for x in batches[:7]:  # stop between a D step and the G step that follows it
        part.step(x)
    buffer = io.BytesIO()
    torch.save({"learner": part.state_dict(), "rng": torch.get_rng_state()}, buffer)
    buffer.seek(0)
    state = torch.load(buffer, weights_only=True)

    resumed = fresh()
    resumed.load_state_dict(state["learner"])
    torch.set_rng_state(state["rng"])
    for x in batches[7:]:
        resumed.step(x)
    assert_same(_snapshot(full), _snapshot(resumed))
    assert (resumed.num_steps, resumed.num_g_steps) == (12, 6)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_gan_trains_and_samples_on_cuda():
    cfg = load_config(None, TOY + ["train.device=cuda", "adversarial.ema_decay=0.9"])
    dataset, learner = build(cfg, "cuda")
    for i in range(5):
        out = learner.step(dataset.train[64 * i : 64 * (i + 1)])
    assert all(math.isfinite(v) for v in out.values())
    samples = learner.model.sample(10)
    assert samples.device.type == "cuda"
    trace = poutine.trace(learner.model.model).get_trace(num_samples=3)
    assert trace.nodes["z"]["value"].device.type == "cuda"

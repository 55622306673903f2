"""Trust: a config and the Python constructors build the same learner; hidden_sizes=[] is an
affine network (pPCA); pyrogen.evaluate takes Python-built models; the user's points are
standardised by default and still reported in their own units."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import pyrogen
from conftest import GAUSSIAN, POINTS, tiny
from pyrogen import AdversarialLearner, ConfigError, VariationalLearner, load_config
from pyrogen.build import build
from pyrogen.config import EvaluationConfig

pytestmark = pytest.mark.usefixtures("one_thread")

TINY_DATA = POINTS
TINY = {
    "vae": [GAUSSIAN, *tiny("vae", width=8)],
    "flow": tiny("flow", "model.num_layers=1", width=8),
    "gan": tiny("gan", width=8),
}
CONSTRUCTORS = {"vae": VariationalLearner, "flow": VariationalLearner, "gan": AdversarialLearner}


def _settings(obj) -> dict:
    """An object's plain settings: every attribute holding a number, string, bool or None."""
    return {
        k: v
        for k, v in vars(obj).items()
        if v is None or isinstance(v, int | float | str | bool | torch.dtype)
    }


def _hyperparameters(learner) -> list[dict]:
    return [
        {k: v for k, v in group.items() if k != "params"}
        for opt in learner.optimizers
        for group in opt.param_groups
    ]


# ------------------------------------------------------------------ 1. one source of defaults
@pytest.mark.parametrize("family", list(TINY))
def test_a_default_config_builds_the_learner_the_constructor_builds(family):
    cfg = load_config(None, TINY[family] + TINY_DATA + ["train.device=cpu"])
    _, from_config = build(cfg, "cpu")
    by_hand = CONSTRUCTORS[family](from_config.model)
    groups = _hyperparameters(from_config)
    assert groups == _hyperparameters(by_hand)
    for group in groups:  # the values named in the schema's docstring
        lr, betas = (2e-4, (0.5, 0.999)) if family == "gan" else (1e-3, (0.9, 0.999))
        assert (group["lr"], group["betas"], group["eps"], group["weight_decay"]) == (
            lr, betas, 1e-8, 0.0
        )  # fmt: skip
    assert _settings(from_config) == _settings(by_hand)
    if family != "gan":  # the estimator: the same class and options
        assert type(from_config.elbo) is type(by_hand.elbo)
        assert _settings(from_config.elbo) == _settings(by_hand.elbo)
    else:
        assert type(from_config.loss) is type(by_hand.loss)
        assert from_config.model.ema_generator is None


def test_a_set_value_reaches_the_optimisers_and_momentum_reaches_a_gan():
    overrides = TINY["gan"] + TINY_DATA + ["train.device=cpu", "optim.betas=[0.9,0.999]"]
    cfg = load_config(None, overrides + ["optim.lr=1e-3", "optim.lr_discriminator=3e-3"])
    _, learner = build(cfg, "cpu")
    assert [g["betas"] for g in _hyperparameters(learner)] == [(0.9, 0.999)] * 2
    assert [g["lr"] for g in _hyperparameters(learner)] == [3e-3, 1e-3]  # D, then G
    cfg = load_config(None, overrides + ["optim.name=sgd", "optim.momentum=0.5"])
    _, learner = build(cfg, "cpu")
    assert [g["momentum"] for g in _hyperparameters(learner)] == [0.5, 0.5]


@pytest.mark.parametrize(
    ("argument", "value"),
    [
        ("discriminator_steps", 0),
        ("lr", -1.0),
        ("lr_discriminator", 0.0),
        ("betas", (0.5, 1.0)),
        ("weight_decay", -1.0),
        ("r1_penalty", math.nan),
        ("gradient_penalty", -0.1),
        ("ema_decay", 1.0),
        ("clip_norm", 0.0),
    ],
)
def test_the_gan_constructor_refuses_what_the_config_refuses(argument, value):
    _, learner = build(load_config(None, TINY["gan"] + TINY_DATA + ["train.device=cpu"]), "cpu")
    with pytest.raises(ValueError, match=rf"^bad value for '{argument}': .*; (expected|each item)"):
        AdversarialLearner(learner.model, **{argument: value})
    key = "optim" if argument in ("lr", "lr_discriminator", "betas", "weight_decay") else None
    key = key or ("optim" if argument == "clip_norm" else "adversarial")
    shown = list(value) if isinstance(value, tuple) else value
    with pytest.raises(ConfigError, match=rf"'{key}.{argument}'"):
        load_config(None, TINY["gan"] + [f"{key}.{argument}={shown}"])


def test_discriminator_steps_has_one_range_in_python_and_yaml():
    big = 10**9  # k beyond the run's steps trains D alone (tests/test_gan.py relies on it)
    assert load_config(None, ["model.family=gan", f"adversarial.discriminator_steps={big}"])
    _, learner = build(load_config(None, TINY["gan"] + TINY_DATA + ["train.device=cpu"]), "cpu")
    assert AdversarialLearner(learner.model, discriminator_steps=big).k == big


def test_shipped_gan_configs_set_their_betas():
    """Before optim.betas defaulted to null, a GAN config without it trained with
    (0.9, 0.999); every shipped GAN config states its betas, so none changed behaviour."""
    root = Path(__file__).resolve().parents[1] / "configs"
    for path in sorted(root.glob("gan_*.yaml")):
        assert load_config(path).optim.betas is not None, path.name


# ------------------------------------------------------------------ 2. hidden_sizes=[]
def _ppca_data(n: int = 600, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """x = W z + mu + eps, z ~ N(0, I_2), eps ~ N(0, 0.1^2 I_5): a linear-Gaussian model."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(5, 2, generator=g)
    x = torch.randn(n, 2, generator=g) @ w.T + 1.0 + 0.1 * torch.randn(n, 5, generator=g)
    return x, w


def test_empty_hidden_sizes_build_affine_encoder_and_decoder_and_ppca_learns():
    x, _ = _ppca_data()
    overrides = [
        "model.likelihood=gaussian",
        "model.scale=learned",
        "model.latent_dim=2",
        "model.hidden_sizes=[]",
        "guide.hidden_sizes=[]",
        "train.device=cpu",
        "optim.lr=1e-2",
    ]
    cfg = load_config(None, overrides)
    dataset, learner = build(cfg, "cpu", data=x)
    vae = learner.model
    assert not any(isinstance(m, nn.ReLU) for m in vae.modules())
    mean = lambda z: vae.decoder(z)[..., :5]  # noqa: E731 - the Gaussian's mean outputs
    jac = [torch.autograd.functional.jacobian(mean, torch.randn(2)) for _ in range(2)]
    torch.testing.assert_close(jac[0], jac[1])  # d mean / dz is constant: affine in z
    encoder = vae.guide.encoder
    jac = [torch.autograd.functional.jacobian(encoder, torch.randn(1, 5)) for _ in range(2)]
    torch.testing.assert_close(jac[0], jac[1])  # affine in x
    torch.manual_seed(0)
    test = dataset.valid
    before = learner.evaluate(test)["elbo"]
    for _ in range(300):
        learner.step(dataset.train[torch.randint(0, len(dataset.train), (128,))])
    after = learner.evaluate(test)["elbo"]
    assert after > before + 1.0, (before, after)


@pytest.mark.parametrize(
    ("overrides", "key"),
    [
        (["model.architecture=conv", "model.hidden_sizes=[]"], "model.hidden_sizes"),
        (["model.architecture=conv", "guide.hidden_sizes=[]"], "guide.hidden_sizes"),
        (["model.family=flow", "model.hidden_sizes=[]"], "model.hidden_sizes"),
        (["model.family=gan", "model.architecture=conv", "model.hidden_sizes=[]"], "hidden"),
    ],
)
def test_empty_hidden_sizes_are_refused_where_they_mean_nothing(overrides, key):
    with pytest.raises(ConfigError, match=key):
        pyrogen.load_config(None, overrides)


def test_an_affine_gan_builds():
    cfg = load_config(
        None,
        TINY["gan"][:-2]
        + TINY_DATA
        + ["train.device=cpu", "model.hidden_sizes=[]", "model.discriminator_hidden_sizes=[]"],
    )
    _, learner = build(cfg, "cpu")
    assert [type(m) for m in learner.model.generator.modules() if not list(m.children())] == [
        nn.Linear,
        nn.Identity,
    ]


# ------------------------------------------------------------------ 3. evaluate from Python
EVAL = {
    "vae": TINY["vae"] + ["data.name=moons"],
    "flow": TINY["flow"] + ["data.name=moons"],
    "gan": TINY["gan"] + ["data.name=eight_gaussians"],
}


@pytest.mark.parametrize("family", list(EVAL))
def test_evaluate_a_learner_or_model_equals_evaluate_its_run(family, tmp_path):
    settings = ["data.num_train=256", "data.num_valid=64", "data.num_test=64", "train.epochs=1"]
    cfg = load_config(None, EVAL[family] + settings + ["train.device=cpu"])
    run = pyrogen.train(cfg, tmp_path / "run", quiet=True)
    ev = EvaluationConfig(is_samples=20, parzen_samples=300, seed=3)
    expected = pyrogen.evaluate(run, ev)
    ds = run.dataset
    for obj in (run.learner, run.model):
        got = pyrogen.evaluate(obj, ev, data=ds.split("test"), valid=ds.split("valid"))
        assert got["estimates"] == expected["estimates"]
        assert (got["family"], got["num_examples"]) == (family, expected["num_examples"])
        assert got["parameters"] == expected["parameters"]
    names = {"vae": {"elbo", "importance_sampled"}, "flow": {"exact"}, "gan": set()}[family]
    assert set(expected["estimates"]) == names | {"parzen"}


def test_evaluate_refuses_what_it_cannot_score(tmp_path):
    with pytest.raises(TypeError, match=r"^pyrogen.evaluate takes a TrainedRun .*; got str$"):
        pyrogen.evaluate("runs/x")
    with pytest.raises(TypeError, match="got Linear"):
        pyrogen.evaluate(nn.Linear(2, 2), data=torch.zeros(3, 2))
    cfg = load_config(None, TINY["gan"] + TINY_DATA + ["train.device=cpu"])
    _, learner = build(cfg, "cpu")
    with pytest.raises(TypeError, match="pass valid="):
        pyrogen.evaluate(learner, data=torch.zeros(3, 2))
    with pytest.raises(TypeError, match="needs data="):
        pyrogen.evaluate(learner)


# ------------------------------------------------------------------ 4. standardise by default
def test_the_users_points_are_standardised_by_default_and_reported_in_their_units(tmp_path):
    """Three columns on scales 1, 100 and 0.01: the flow's test log-likelihood, in the data's
    units, lands near the Gaussian maximum likelihood; data.standardize=false still works."""
    rng = np.random.default_rng(0)
    n = 1500
    cov = np.array([[1.0, 0.5, 0.2], [0.5, 1.0, 0.3], [0.2, 0.3, 1.0]])
    x = rng.multivariate_normal(np.zeros(3), cov, size=n) * [1.0, 100.0, 0.01] + [5, -300, 2]
    csv = tmp_path / "points.csv"
    np.savetxt(csv, x, delimiter=",", header="a,b,c", comments="")
    base = [
        "model.family=flow",
        "model.flow=realnvp",
        "model.num_layers=2",
        "model.hidden_sizes=[16]",
        "data.name=array",
        f"data.path={csv}",
        "train.epochs=15",
        "train.batch_size=100",
        "train.device=cpu",
    ]
    run = pyrogen.train(load_config(None, base), tmp_path / "auto", quiet=True)
    assert run.dataset.scale is not None
    saved = load_config(tmp_path / "auto" / "config.yaml")
    assert saved.data.standardize is True  # the resolved value: resume and load see a bool
    ev = EvaluationConfig(parzen_samples=10)
    exact = pyrogen.evaluate(run, ev)["estimates"]["exact"]["mean"]
    train = run.dataset.train.double()  # the Gaussian fitted by maximum likelihood
    mu, sigma = train.mean(0), torch.cov(train.T, correction=0)
    test = run.dataset.test.double()
    gauss = torch.distributions.MultivariateNormal(mu, sigma).log_prob(test).mean().item()
    assert exact == pytest.approx(gauss, abs=0.3), (exact, gauss)
    again = pyrogen.load(tmp_path / "auto", device="cpu")
    torch.testing.assert_close(again.dataset.scale, run.dataset.scale)
    off = pyrogen.train(
        load_config(None, [*base, "data.standardize=false", "train.epochs=1"]),
        tmp_path / "off",
        quiet=True,
    )
    assert off.dataset.scale is None
    assert load_config(tmp_path / "off" / "config.yaml").data.standardize is False


def test_built_in_points_stay_unstandardised_and_auto_resumes_what_the_run_used(tmp_path):
    cfg = load_config(None, TINY["flow"] + TINY_DATA + ["train.device=cpu", "train.epochs=1"])
    run = pyrogen.train(cfg, tmp_path / "moons", quiet=True)
    assert run.dataset.scale is None
    assert load_config(tmp_path / "moons" / "config.yaml").data.standardize is False
    # a resume from a config that leaves data.standardize to auto keeps the run's value (an
    # old run folder says standardize: false; auto would standardise a fresh run of this file)
    x = np.random.default_rng(1).normal(size=(200, 3)) * [1, 10, 100]
    np.save(tmp_path / "x.npy", x.astype(np.float32))
    base = TINY["flow"] + ["train.device=cpu", "data.name=array", f"data.path={tmp_path}/x.npy"]
    first = pyrogen.train(
        load_config(None, [*base, "data.standardize=false", "train.epochs=1"]),
        tmp_path / "user",
        quiet=True,
    )
    assert first.dataset.scale is None
    resumed = pyrogen.train(
        load_config(None, [*base, "train.epochs=2"]), tmp_path / "user", resume=True, quiet=True
    )
    assert resumed.dataset.scale is None
    assert load_config(tmp_path / "user" / "config.yaml").data.standardize is False
    with pytest.raises(ConfigError, match=r"data.standardize \(False -> True\)"):
        pyrogen.train(
            load_config(None, [*base, "train.epochs=3", "data.standardize=true"]),
            tmp_path / "user",
            resume=True,
            quiet=True,
        )

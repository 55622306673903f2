"""Shared test set-up.

torch 2.13's CPU kernels for exp/sin/cos/sqrt were seen to return slightly different values
for large tensors on the *first* call in a fresh process when two threads split the work
(see the note in pyrogen/data/toy.py). Tests that compare runs bit for bit (resume equals an
uninterrupted run) would flake, so the thread pool is warmed up once here.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import matplotlib
import pyro
import pytest
import torch

matplotlib.use("Agg")
os.environ.setdefault("MPLBACKEND", "Agg")

_warm = torch.rand(1 << 16, dtype=torch.float64)
for _fn in (torch.exp, torch.sin, torch.cos, torch.sqrt, torch.log, torch.tanh):
    _fn(_warm)
    _fn(_warm.float())


@pytest.fixture(autouse=True)
def _fresh_pyro_state():
    """Every test starts from an empty param store and a known seed."""
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    yield
    pyro.clear_param_store()


@pytest.fixture
def one_thread():
    """One torch thread for tests of tiny networks: fastest, and immune to a busy machine (two
    threads spinning against other processes made the flow training tests ~50x slower).
    Modules opt in with ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# ------------------------------------------------------------------ shared per-family mini-configs
# Test files import these as ``from conftest import ...`` (pytest puts tests/ on sys.path, as it
# has no __init__.py). Overrides are merged as a dict, later keys winning, so a test narrows a
# family's mini-config by appending its own ``key=value`` items.
ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs"
VAE_DIGITS = str(CONFIGS / "vae_digits.yaml")


def tiny(family: str, *extra: str, width: int = 16, latent: int = 2) -> list[str]:
    """The smallest model of ``family`` ("vae", "flow" or "gan"): one hidden layer of
    ``width`` units (both players for a GAN), a ``latent``-d latent space, then ``extra``."""
    hidden = f"model.hidden_sizes=[{width}]"
    models = {
        "vae": [hidden, f"model.latent_dim={latent}"],
        "flow": ["model.family=flow", hidden],
        "gan": [
            "model.family=gan",
            f"model.latent_dim={latent}",
            "model.output=identity",
            hidden,
            f"model.discriminator_hidden_sizes=[{width}]",
        ],
    }
    return [*models[family], *extra]


TINY_VAE = tiny("vae")
# the 2-d toy data sets the flow and the GAN are tried on
MOONS = "data.name=moons"
EIGHT_GAUSSIANS = "data.name=eight_gaussians"
POINTS = [MOONS, "data.num_train=64", "data.num_valid=32", "data.num_test=32"]
# a table with a continuous context: 7 columns x given c = (age, sex, bmi, bp), 442 rows
TABLE = ["data.name=array", f"data.path={CONFIGS / 'data' / 'diabetes.csv'}"]
TABLE += ["data.context=[age,sex,bmi,bp]", "model.conditional=true"]
# a VAE on real-valued points needs a Gaussian likelihood
GAUSSIAN = "model.likelihood=gaussian"
# a small run on the digits (VAE) and the toy points (flow, GAN): 10 steps an epoch on the digits
# (1257 / 128), 4 on the points (512 / 128); the resume tests compare runs of these bit for bit
SMALL_RUN = ["train.batch_size=128", "train.log_every=5", "train.device=cpu", "train.seed=3"]
SMALL_RUNS = {
    "vae": SMALL_RUN + ["data.binarize=dynamic", *tiny("vae", width=32)],
    "flow": SMALL_RUN
    + tiny("flow", "model.flow=realnvp", "model.num_layers=2", MOONS, "data.num_train=512"),
    "gan": SMALL_RUN
    + tiny("gan", EIGHT_GAUSSIANS, "data.num_train=512")
    + ["adversarial.discriminator_steps=2", "adversarial.ema_decay=0.9"],
}
# a few epochs of the digits config, validated every epoch (20 steps an epoch)
DIGITS_RUN = TINY_VAE + ["train.eval_every=1", "train.log_every=5", "train.device=cpu"]


# ------------------------------------------------------------------ comparing states
def state_of(run) -> dict[str, torch.Tensor]:
    """A copy of a trained run's module parameters and buffers."""
    return {k: v.detach().clone() for k, v in run.learner.module.state_dict().items()}


def flat(state, prefix: str = "") -> dict[str, torch.Tensor]:
    """Every tensor and number in a nested state dict (optimiser states included)."""
    out: dict[str, torch.Tensor] = {}
    items = state.items() if isinstance(state, dict) else enumerate(state)
    for k, v in items:
        key = f"{prefix}/{k}"
        if isinstance(v, dict | list | tuple):
            out.update(flat(v, key))
        elif isinstance(v, torch.Tensor):
            out[key] = v
        elif isinstance(v, int | float | bool):
            out[key] = torch.tensor(v)
    return out


def assert_same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], what: str = "") -> None:
    """The same keys and, key by key, bit-identical tensors."""
    assert a.keys() == b.keys(), what
    for k in a:
        assert torch.equal(a[k], b[k]), f"{what}: {k}" if what else k


def same_tensors(a, b) -> bool:
    """Nested dicts, lists and tuples equal to the bit, tensors of the same dtype."""
    if torch.is_tensor(a):
        return torch.is_tensor(b) and a.dtype == b.dtype and torch.equal(a, b)
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(same_tensors(a[k], b[k]) for k in a)
    if isinstance(a, list | tuple):
        return len(a) == len(b) and all(same_tensors(x, y) for x, y in zip(a, b, strict=True))
    return a == b


# ------------------------------------------------------------------ interfering with a step
def build_with_step_hook(real_build: Callable, hook: Callable) -> Callable:
    """A stand-in for ``loop.build`` whose learner calls ``hook(n, learner, run_step)`` for its
    n-th step (n from 1); ``run_step()`` takes the real step and returns its output, which the
    hook returns."""

    def build(cfg, device, **options):
        dataset, learner = real_build(cfg, device, **options)
        real_step, calls = learner.step, {"n": 0}

        def step(x, y=None):
            calls["n"] += 1
            return hook(calls["n"], learner, lambda: real_step(x, y))

        learner.step = step
        return dataset, learner

    return build


def fill_first_parameter(learner, value: float) -> None:
    """Make the model's first parameter tensor ``value`` everywhere (inf or nan)."""
    with torch.no_grad():
        next(learner.model.parameters()).fill_(value)


# ------------------------------------------------------------------ a tiny binary VAE, stepped
#: a tiny VAE on dynamically binarised digits with a 3-d latent (β, free bits, priors)
TINY_BINARY_VAE = ["data.binarize=dynamic", *tiny("vae", latent=3), "train.device=cpu"]


def vae_and_batch(*extra: str) -> tuple[torch.nn.Module, torch.Tensor]:
    """The model of :data:`TINY_BINARY_VAE` (+ ``extra`` overrides) and 32 processed examples."""
    from pyrogen import load_config
    from pyrogen.build import build

    dataset, learner = build(load_config(None, TINY_BINARY_VAE + list(extra)), "cpu")
    x = dataset.process(dataset.train[:32], torch.Generator().manual_seed(0))
    return learner.model, x


def frozen_learner(model: torch.nn.Module, name: str, **kwargs):
    """A learner whose steps report the loss and leave the parameters alone (SGD, lr 0)."""
    from pyrogen.inference.elbo import make_elbo
    from pyrogen.inference.variational import VariationalLearner

    return VariationalLearner(model, make_elbo(name), optim="sgd", lr=0.0, **kwargs)


def assert_trains_from_the_config(overrides: list[str]) -> None:
    """Three steps of the config's learner: finite losses, every parameter moved (networks,
    baselines, pseudo-inputs, mixtures), and a finite validation ELBO."""
    import math

    from pyrogen import load_config
    from pyrogen.build import build

    dataset, learner = build(load_config(None, overrides), "cpu")
    before = [p.detach().clone() for p in learner.module.parameters()]
    gen = torch.Generator().manual_seed(0)
    for i in range(3):
        out = learner.step(dataset.process(dataset.train[32 * i : 32 * (i + 1)], gen))
        assert math.isfinite(out["loss"])
    after = list(learner.module.parameters())
    assert all(not torch.equal(a, b) for a, b in zip(before, after, strict=True))
    assert math.isfinite(learner.evaluate(dataset.process(dataset.valid[:64], gen))["elbo"])


def assert_measuring_leaves_no_trace(draw: Callable[[], object], module: torch.nn.Module) -> None:
    """``draw()`` (gradient estimates) changes no parameter of ``module``, leaves no ``.grad``,
    draws nothing from the global random stream and leaves the Pyro param store as it found
    it (one unrelated entry)."""
    before = [p.detach().clone() for p in module.parameters()]
    pyro.get_param_store().clear()
    pyro.param("unrelated", torch.ones(2))
    torch.manual_seed(123)
    expected_next = torch.rand(3)
    torch.manual_seed(123)
    draw()
    assert torch.equal(torch.rand(3), expected_next)
    assert all(torch.equal(p, b) for p, b in zip(module.parameters(), before, strict=True))
    assert all(p.grad is None for p in module.parameters())
    assert list(pyro.get_param_store().keys()) == ["unrelated"]
    pyro.get_param_store().clear()


@pytest.fixture
def float64():
    """Tensors made in the test default to float64 (restored after it)."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(old)

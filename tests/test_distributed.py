"""Data-parallel training and evaluation on 2 CPU processes (``gloo``), as ``torchrun`` runs
them: one step of 2 ranks on the halves of a batch equals one process's step on the whole
batch (every family, the estimators that differentiate inside Pyro, the layers with batch
statistics, the GAN's penalties); a short run leaves identical parameters on both ranks and
files from rank 0 only; a 2-rank run resumed with 2 ranks is the uninterrupted 2-rank run;
distributed evaluation gives one process's numbers.

The processes are started with ``torch.multiprocessing.spawn`` (each test starts 2 and runs
several cases in them: starting a process costs seconds on 2 cores); one test goes through
the real ``torchrun`` launcher."""

from __future__ import annotations

import math
import os
import socket
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import pyrogen.inference.adversarial as adversarial
from pyrogen import load_config
from pyrogen.build import build

pytestmark = pytest.mark.usefixtures("one_thread")
ROOT = Path(__file__).resolve().parents[1]
WORLD = 2


# ----------------------------------------------------------------------------- launching
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _entry(rank: int, world: int, port: int, fn, args: tuple) -> None:
    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        RANK=str(rank),
        WORLD_SIZE=str(world),
        LOCAL_RANK=str(rank),
        LOCAL_WORLD_SIZE=str(world),
    )
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        fn(rank, *args)
    finally:
        dist.destroy_process_group()


def launch(fn, *args) -> None:
    """Run ``fn(rank, *args)`` on WORLD processes joined in a gloo group."""
    mp.spawn(_entry, args=(WORLD, _free_port(), fn, args), nprocs=WORLD, join=True)


# ----------------------------------------------------------------------------- common noise
NOISE_MODULES = ("normal", "lowrank_multivariate_normal", "multivariate_normal")


@contextmanager
def common_noise(offset: int):
    """Common random numbers by example: every normal draw (the guide's z, the GAN's z) and
    the gradient penalty's mixing weights are read from one fixed table, indexed by the
    example's row in the *global* batch (this rank's rows start at ``offset``). One process
    and two ranks then draw the same noise for the same example, and their steps can be
    compared exactly. Draws of fewer rows than the piece (per-example estimators) advance
    a cursor through the piece."""
    table = torch.randn(8, 64, 16, generator=torch.Generator().manual_seed(123))
    cursor = {"at": 0, "rows": None}

    def rows(m: int) -> slice:
        start = offset + cursor["at"]
        if cursor["rows"] is not None and m < cursor["rows"]:
            cursor["at"] = (cursor["at"] + m) % cursor["rows"]
        return slice(start, start + m)

    def standard_normal(shape, dtype, device):
        lead, m, d = shape[:-2], shape[-2], shape[-1]
        k = math.prod(lead)
        return table[:k, rows(m), :d].reshape(*lead, m, d).to(dtype=dtype, device=device)

    def sample(self, sample_shape=()):
        with torch.no_grad():
            return self.rsample(sample_shape)

    modules = [getattr(torch.distributions, name) for name in NOISE_MODULES]
    normal = torch.distributions.Normal

    real_penalty = adversarial.gradient_penalty

    def penalty(d, real, fake):
        mix = table[0, rows(real.shape[0]), 0].abs().clamp(max=1.0)  # ε per example
        eps_shape = (real.shape[0], *([1] * (real.dim() - 1)))
        x = (mix.reshape(eps_shape) * real + (1 - mix.reshape(eps_shape)) * fake).requires_grad_()
        (grad,) = torch.autograd.grad(d(x).sum(), x, create_graph=True)
        return (grad.reshape(grad.shape[0], -1).norm(dim=1) - 1).pow(2).mean()

    saved = [m._standard_normal for m in modules], normal.sample
    for m in modules:
        m._standard_normal = standard_normal
    normal.sample = sample
    adversarial.gradient_penalty = penalty
    try:
        yield cursor
    finally:
        for m, original in zip(modules, saved[0], strict=True):
            m._standard_normal = original
        normal.sample = saved[1]
        adversarial.gradient_penalty = real_penalty


# ----------------------------------------------------------------------------- one step
SGD = ["optim.name=sgd", "optim.lr=1e-3", "optim.momentum=0.9", "train.device=cpu", "train.seed=5"]
VAE = SGD + ["data.binarize=static", "model.latent_dim=3", "model.hidden_sizes=[16]"]
STEP_CASES = {
    "vae trace": VAE,
    "vae jit_trace": VAE + ["elbo.name=jit_trace"],
    "vae mean_field low_rank": VAE + ["elbo.name=mean_field", "guide.name=low_rank_normal"],
    "vae full_normal": VAE + ["guide.name=full_normal"],
    "vae iaf kl_warmup clip": VAE
    + ["guide.name=iaf", "elbo.kl_warmup_steps=3", "optim.clip_norm=0.5"],
    "vae trace_graph neural": VAE
    + ["guide.name=score_function", "guide.baseline=neural", "elbo.name=trace_graph"],
    "vae trace_graph decaying_average": VAE
    + ["guide.name=score_function", "guide.baseline=decaying_average", "elbo.name=trace_graph"],
    "vae renyi": VAE + ["elbo.name=renyi", "elbo.num_particles=3", "elbo.vectorize_particles=true"],
    "vae rws": VAE + ["elbo.name=rws", "elbo.num_particles=2", "elbo.vectorize_particles=true"],
    "vae tail_adaptive": VAE
    + ["elbo.name=tail_adaptive", "elbo.num_particles=3", "elbo.vectorize_particles=true"],
    "vae conv gaussian": SGD
    + ["data.flatten=false", "model.architecture=conv", "model.likelihood=gaussian"]
    + ["model.latent_dim=3"],
    "flow realnvp batchnorm": SGD
    + ["model.family=flow", "data.name=moons", "data.num_train=64", "model.num_layers=2"]
    + ["model.hidden_sizes=[16]", "model.normalization=batchnorm"],
    "flow maf actnorm dequantized": SGD
    + ["model.family=flow", "model.flow=maf", "model.num_layers=2", "model.hidden_sizes=[64]"]
    + ["model.normalization=actnorm", "data.dequantize=true", "data.logit_lambda=1e-6"],
    "gan r1 ema": SGD
    + ["model.family=gan", "data.name=eight_gaussians", "data.num_train=64"]
    + ["model.latent_dim=2", "model.output=identity", "model.hidden_sizes=[16]"]
    + ["model.discriminator_hidden_sizes=[16]", "adversarial.r1_penalty=1.0"]
    + ["adversarial.ema_decay=0.9"],
    "gan wasserstein gp spectral": SGD
    + ["model.family=gan", "data.name=eight_gaussians", "data.num_train=64"]
    + ["model.latent_dim=2", "model.output=identity", "model.hidden_sizes=[16]"]
    + ["model.discriminator_hidden_sizes=[16]", "adversarial.generator_loss=wasserstein"]
    + ["model.spectral_norm=true"],
    "gan conv batchnorm k2": SGD
    + ["model.family=gan", "data.flatten=false", "model.architecture=conv"]
    + ["model.latent_dim=4", "model.hidden_sizes=[8,4]", "model.discriminator_hidden_sizes=[4,8]"]
    + ["adversarial.discriminator_steps=2"],
}
BATCH = {"vae trace_graph decaying_average": 24}  # its baseline needs equal pieces
STEPS = 2


def _batch(cfg, dataset):
    """The same processed global batch on every side (fixed preprocessing noise)."""
    b = BATCH.get(cfg, 25)  # 25: pieces of 13 and 12 examples
    return dataset.process(dataset.train[:b], torch.Generator().manual_seed(0))


def _state(learner) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in learner.module.state_dict().items()}


def _steps(name: str, distributed: bool, rank: int = 0) -> dict[str, torch.Tensor]:
    """The learner's state after STEPS steps on the batch, one process or this rank's piece
    (``"initial/..."``: the state before them)."""
    cfg = load_config(None, STEP_CASES[name])
    dataset, learner = build(cfg, "cpu")
    initial = _state(learner)
    x = _batch(name, dataset)
    offset = 0
    if distributed:
        learner.data_parallel()
        learner.global_batch_size = x.shape[0]
        pieces = x.tensor_split(WORLD)
        offset = sum(p.shape[0] for p in pieces[:rank])
        x = pieces[rank]
    with common_noise(offset) as cursor:
        cursor["rows"] = x.shape[0]
        for _ in range(STEPS):
            out = learner.step(x)
            assert math.isfinite(out["loss"]), (name, out)
    return {**_state(learner), **{f"initial/{k}": v for k, v in initial.items()}}


def _step_worker(rank: int, out_dir: str) -> None:
    results = {name: _steps(name, True, rank) for name in STEP_CASES}
    torch.save(results, Path(out_dir) / f"rank{rank}.pt")


def assert_same_update(got: dict, single: dict, what: str, rel: float = 1e-4) -> None:
    """The two runs made the same update of every tensor, to float tolerance relative to the
    size of the update (integer buffers exactly)."""
    assert got.keys() == single.keys(), what
    for key in single:
        if key.startswith("initial/"):
            continue
        a, b = got[key], single[key]
        if not b.is_floating_point():
            assert torch.equal(a, b), (what, key)
            continue
        size = (b - single.get(f"initial/{key}", b)).abs().max().item()
        err = (a - b).abs().max().item()
        assert err <= rel * size + 1e-7, f"{what}: {key} differs by {err:.3g} (update {size:.3g})"


def test_one_step_on_two_ranks_is_one_process_step_on_the_union_batch(tmp_path):
    launch(_step_worker, str(tmp_path))
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(WORLD)]
    for name in STEP_CASES:
        single = _steps(name, False)
        assert_same_update(ranks[0][name], single, name)
        for key, value in ranks[0][name].items():  # the ranks hold the same bits
            assert torch.equal(ranks[1][name][key], value), (name, key)

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

import json
import math
import os
import socket
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import pyrogen.inference.adversarial as adversarial
from conftest import (
    EIGHT_GAUSSIANS,
    MOONS,
    TABLE,
    assert_same,
    build_with_step_hook,
    fill_first_parameter,
    flat,
    tiny,
)
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


def _worker(rank: int, root: str) -> None:
    """Everything the 2 ranks do, in one launch (starting processes is the slow part):
    the step cases, the whole runs, the evaluations; each rank saves what it saw."""
    results = {
        "steps": {name: _steps(name, True, rank) for name in STEP_CASES},
        "evaluation": _evaluate_all(),
    }
    cwd = os.getcwd()
    try:
        results["runs"] = _runs(rank, Path(root))
    finally:
        os.chdir(cwd)
    torch.save(results, Path(root) / f"rank{rank}.pt")


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory) -> tuple[Path, list[dict]]:
    """The results of :func:`_worker` on each of the 2 ranks."""
    root = tmp_path_factory.mktemp("two-ranks")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        launch(_worker, str(root))
    finally:
        torch.set_num_threads(threads)
    return root, [torch.load(root / f"rank{r}.pt", weights_only=False) for r in range(WORLD)]


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
        mix = table[0, rows(real.shape[0]), 0].abs().clamp(max=1.0).to(real.device)  # ε
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
VAE = SGD + ["data.binarize=static", *tiny("vae", latent=3)]
GAN = SGD + tiny("gan", EIGHT_GAUSSIANS, "data.num_train=64")
STEP_CASES = {
    "vae trace": VAE,
    "vae jit_trace": VAE + ["elbo.name=jit_trace"],
    "vae mean_field low_rank": VAE + ["elbo.name=mean_field", "guide.name=low_rank_normal"],
    "vae full_normal": VAE + ["guide.name=full_normal"],
    "vae iaf kl_warmup clip": VAE
    + ["guide.name=iaf", "elbo.kl_warmup_steps=3", "optim.clip_norm=0.5"],
    "vae planar": VAE + ["guide.name=planar", "guide.num_flows=3"],
    "vae sylvester renyi": VAE
    + ["guide.name=sylvester", "guide.num_flows=2", "elbo.name=renyi", "elbo.num_particles=2"]
    + ["elbo.vectorize_particles=true"],
    "vae trace_graph neural": VAE
    + ["guide.name=score_function", "guide.baseline=neural", "elbo.name=trace_graph"],
    "vae trace_graph decaying_average": VAE
    + ["guide.name=score_function", "guide.baseline=decaying_average", "elbo.name=trace_graph"],
    "vae renyi": VAE + ["elbo.name=renyi", "elbo.num_particles=3", "elbo.vectorize_particles=true"],
    "vae rws": VAE + ["elbo.name=rws", "elbo.num_particles=2", "elbo.vectorize_particles=true"],
    "vae tail_adaptive": VAE
    + ["elbo.name=tail_adaptive", "elbo.num_particles=3", "elbo.vectorize_particles=true"],
    "vae trace bf16": VAE + ["train.precision=bf16"],
    "vae vamp": VAE + ["model.prior=vamp", "model.num_pseudo_inputs=5"],
    "vae mog trace_graph": VAE + ["model.prior=mog", "elbo.name=trace_graph"],
    # the floor applies to the union batch: dimension 0's mean KL is 0.093 on it, 0.095 on rank 0
    "vae free_bits mean_field": VAE + ["elbo.free_bits=0.094", "elbo.name=mean_field"],
    "vae levels2 mean_field": VAE
    + ["model.levels=2", "model.top_hidden_sizes=[8]", "elbo.name=mean_field"],
    # the CVAE: each rank's rows take their labels to the decoder, the encoder and p(z | c)
    "vae conditional": VAE + ["model.conditional=true", "model.prior=conditional"],
    "gan r1 bf16": GAN + ["adversarial.r1_penalty=1.0", "train.precision=bf16"],
    "vae conv gaussian": SGD
    + ["data.flatten=false", "model.architecture=conv", "model.likelihood=gaussian"]
    + ["model.latent_dim=3"],
    "flow realnvp batchnorm": SGD
    + tiny(
        "flow", MOONS, "data.num_train=64", "model.num_layers=2", "model.normalization=batchnorm"
    ),
    "flow maf actnorm dequantized": SGD
    + tiny("flow", "model.flow=maf", "model.num_layers=2", "model.normalization=actnorm", width=64)
    + ["data.dequantize=true", "data.logit_lambda=1e-6"],
    "flow glow multiscale": SGD
    + tiny("flow", "model.flow=glow", "model.levels=2", "model.steps_per_level=1", width=8)
    + ["data.dequantize=true", "data.logit_lambda=1e-6"],
    "gan r1 ema": GAN + ["adversarial.r1_penalty=1.0", "adversarial.ema_decay=0.9"],
    "gan wasserstein gp spectral": GAN
    + ["adversarial.loss=wasserstein", "model.spectral_norm=true"],
    # G(z, y) and d(x, y) on the labelled digits: each rank's samples take its rows' labels
    "gan conditional r1": SGD + tiny("gan", "model.conditional=true", "adversarial.r1_penalty=1.0"),
    # p(x | c) on the table's continuous context: each rank's rows carry their own c
    "flow maf context": SGD + tiny("flow", "model.flow=maf", "model.num_layers=2", *TABLE),
    "gan context r1": SGD + tiny("gan", *TABLE, "adversarial.r1_penalty=1.0"),
    "vae context conditional prior": SGD
    + tiny("vae", "model.likelihood=gaussian", *TABLE, "model.prior=conditional"),
    "gan conv batchnorm k2": SGD
    + ["model.family=gan", "data.flatten=false", "model.architecture=conv"]
    + ["model.latent_dim=4", "model.hidden_sizes=[8,4]", "model.discriminator_hidden_sizes=[4,8]"]
    + ["adversarial.discriminator_steps=2"],
}
BATCH = {"vae trace_graph decaying_average": 24}  # its baseline needs equal pieces
TOLERANCE = {"vae trace bf16": 1e-2, "gan r1 bf16": 1e-2}  # bfloat16 sums of other sizes
STEPS = 2


def _batch(cfg, dataset):
    """The same processed global batch on every side (fixed preprocessing noise)."""
    b = BATCH.get(cfg, 25)  # 25: pieces of 13 and 12 examples
    return dataset.process(dataset.train[:b], torch.Generator().manual_seed(0))


def _state(learner) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in learner.module.state_dict().items()}


def _steps(
    name: str, distributed: bool, rank: int = 0, device: str = "cpu"
) -> dict[str, torch.Tensor]:
    """The learner's state after STEPS steps on the batch, one process or this rank's piece
    (``"initial/..."``: the state before them)."""
    cfg = load_config(None, [o for o in STEP_CASES[name] if o != "train.device=cpu"])
    dataset, learner = build(cfg, device)
    initial = _state(learner)
    x = _batch(name, dataset)
    labels = getattr(learner.model, "conditional", False)
    y = dataset.labels("train")[: x.shape[0]] if labels else None
    offset = 0
    if distributed:
        learner.data_parallel()
        learner.global_batch_size = x.shape[0]
        pieces = x.tensor_split(WORLD)
        offset = sum(p.shape[0] for p in pieces[:rank])
        x = pieces[rank]
        y = None if y is None else y.tensor_split(WORLD)[rank]
    with common_noise(offset) as cursor:
        cursor["rows"] = x.shape[0]
        for _ in range(STEPS):
            out = learner.step(x) if y is None else learner.step(x, y)
            assert math.isfinite(out["loss"]), (name, out)
    return {**_state(learner), **{f"initial/{k}": v for k, v in initial.items()}}


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


def test_one_step_on_two_ranks_is_one_process_step_on_the_union_batch(two_ranks):
    _, ranks = two_ranks
    for name in STEP_CASES:
        single = _steps(name, False)
        assert_same_update(ranks[0]["steps"][name], single, name, TOLERANCE.get(name, 1e-4))
        for key, value in ranks[0]["steps"][name].items():  # the ranks hold the same bits
            assert torch.equal(ranks[1]["steps"][name][key], value), (name, key)


# ----------------------------------------------------------------------------- whole runs
RUN = ["train.device=cpu", "train.seed=3", "train.log_every=2", "train.epochs=3"]
RUN += [
    "data.num_train=301",
    "data.num_valid=100",
    "train.batch_size=75",
]  # 4 steps an epoch (38 + 37), 1 skipped
RUN_CASES = {
    "vae": RUN + ["data.binarize=dynamic", *tiny("vae", latent=3)],
    # each rank keeps the running averages of its positions in the batch (3 steps an epoch)
    "vae_baseline": RUN
    + ["data.binarize=dynamic", *tiny("vae", latent=3)]
    + ["guide.name=score_function", "guide.baseline=decaying_average", "elbo.name=trace_graph"]
    + ["train.batch_size=76"],
    "flow": RUN
    + tiny(
        "flow", "model.flow=realnvp", "model.num_layers=2", MOONS, "model.normalization=batchnorm"
    ),
    "gan": RUN
    + tiny("gan", EIGHT_GAUSSIANS, "adversarial.discriminator_steps=2", "adversarial.ema_decay=0.9")
    + ["adversarial.r1_penalty=0.1"],  # last: a test drops it
}
STOP_AT = 6  # rank 1 alone receives SIGTERM after step 6 (mid-epoch 2), twice (as torchrun
# forwards a Ctrl-C that the workers also received from the terminal)


def _runs(rank: int, root_path: Path) -> dict[str, object]:
    """Whole runs on this rank (see the test below for what each shows)."""
    import signal

    import pyrogen.training.loop as loop
    from pyrogen.training import TrainingDiverged, train
    from pyrogen.training.checkpoint import load_checkpoint
    from pyrogen.training.run import TrainedRun

    cwd = root_path / f"cwd{rank}"
    cwd.mkdir()
    os.chdir(cwd)
    results: dict[str, object] = {}
    for family, overrides in RUN_CASES.items():
        cfg = load_config(None, overrides)
        # an uninterrupted run into a *relative* folder: each rank resolves it in its own
        # working directory, so any file a rank wrote would show in its own cwd
        full = train(cfg, Path("runs") / family, quiet=True)
        real_figures = TrainedRun.save_figures
        TrainedRun.save_figures = lambda self, *a, **k: []  # the rest need no figures

        def signal_rank_1(step: int, _out: dict) -> None:
            if rank == 1 and step == STOP_AT:
                os.kill(os.getpid(), signal.SIGTERM)
                os.kill(os.getpid(), signal.SIGTERM)

        part = root_path / "part" / family
        try:
            train(cfg, part, quiet=True, on_step=signal_rank_1)
            stopped = False
        except KeyboardInterrupt:
            stopped = True
        saved = load_checkpoint(part / "checkpoint.pt")
        dist.barrier()  # both have read it before the resumed run overwrites it
        resumed = train(cfg, part, resume=True, quiet=True)
        TrainedRun.save_figures = real_figures
        results[family] = {
            "full": _state(full.learner),
            "full_learner": full.learner.state_dict(),
            "resumed": _state(resumed.learner),
            "resumed_learner": resumed.learner.state_dict(),
            "stopped": stopped,
            "stopped_at": saved["loop"]["step"],
            "world_size": saved["world_size"],
            "ranks": len(saved["ranks"]),
            "baselines": [r["learner"].get("param_store", {}) for r in saved["ranks"]],
        }

    # divergence on rank 1 alone: a parameter becomes infinite before its step 3
    real_build = loop.build

    def blow_up_on_rank_1(n, learner, run_step):
        if n == 3 and rank == 1:
            fill_first_parameter(learner, float("inf"))
        return run_step()

    loop.build = build_with_step_hook(real_build, blow_up_on_rank_1)
    try:
        train(load_config(None, RUN_CASES["vae"]), root_path / "diverged", quiet=True)
        results["diverged"] = None
    except TrainingDiverged as e:
        results["diverged"] = str(e)
    finally:
        loop.build = real_build
    results["files"] = sorted(str(p.relative_to(cwd)) for p in cwd.rglob("*"))
    return results


@pytest.mark.filterwarnings("ignore:Encountered NaN:UserWarning")
def test_runs_on_two_ranks_agree_write_once_stop_together_and_resume_exactly(two_ranks):
    root, results = two_ranks
    ranks = [r["runs"] for r in results]
    for family in RUN_CASES:
        r0, r1 = ranks[0][family], ranks[1][family]
        # every rank holds the same parameters and optimiser state
        assert_same(r0["full"], r1["full"], f"{family}: ranks")
        shared = {k: v for k, v in flat(r0["full_learner"]).items() if "param_store" not in k}
        other = {k: v for k, v in flat(r1["full_learner"]).items() if "param_store" not in k}
        assert_same(shared, other, f"{family}: ranks")  # (baselines are each rank's own)
        # a signal to one rank stops both at the same step boundary, one checkpoint for both
        assert r0["stopped"] and r1["stopped"], family
        assert r0["stopped_at"] == STOP_AT + 1, family  # seen by both after the next step
        assert r0["world_size"] == 2 and r0["ranks"] == 2
        if family == "vae_baseline":  # each rank's running averages, each restored
            (name,) = r0["baselines"][0]
            assert r0["baselines"][0][name].shape == (38,)  # 76 positions, 38 a rank
            assert not torch.equal(r0["baselines"][0][name], r0["baselines"][1][name])
        # the 2-rank run resumed with 2 ranks is the uninterrupted 2-rank run
        assert_same(r0["resumed"], r0["full"], f"{family}: resumed")
        assert_same(flat(r0["resumed_learner"]), flat(r0["full_learner"]), f"{family}: resumed")
    # non-finite loss on rank 1 alone stops both ranks, naming the step
    for r in range(WORLD):
        assert ranks[r]["diverged"] and "at step 3" in ranks[r]["diverged"], ranks[r]["diverged"]
    # rank 0 alone wrote the run folders
    assert ranks[1]["files"] == []
    written = set(ranks[0]["files"])
    for family in RUN_CASES:
        assert {f"runs/{family}/config.yaml", f"runs/{family}/checkpoint.pt"} <= written
        assert f"runs/{family}/metrics.jsonl" in written and f"runs/{family}/samples.png" in written
    records = [
        json.loads(line)
        for line in (root / "cwd0/runs/vae/metrics.jsonl").read_text().split("\n")
        if line
    ]
    valid = [r for r in records if r["split"] == "valid"]
    assert [r["epoch"] for r in valid] == [1, 2, 3] and all(math.isfinite(r["elbo"]) for r in valid)


# ----------------------------------------------------------------------------- evaluation
EVAL_RUNS = {
    "vae": ["data.binarize=dynamic", *tiny("vae", latent=3)],
    "flow": tiny("flow", "model.num_layers=2", "data.dequantize=true", "data.logit_lambda=1e-6"),
    "gan": tiny("gan", EIGHT_GAUSSIANS),
}


def _evaluate_all() -> dict[str, dict]:
    """``pyrogen.evaluate`` of an (untrained) run of each family: one process's numbers, or,
    in a process group, those of the ranks together."""
    from pyrogen.config import EvaluationConfig
    from pyrogen.evaluation.report import evaluate_run
    from pyrogen.training.run import TrainedRun

    results = {}
    for family, overrides in EVAL_RUNS.items():
        cfg = load_config(None, overrides + ["train.device=cpu"])
        dataset, learner = build(cfg, "cpu")
        bounds = ["renyi:4"] if family == "vae" else []
        ev = EvaluationConfig(is_samples=8, parzen_samples=300, max_test=250, seed=4, bounds=bounds)
        results[family] = evaluate_run(TrainedRun(cfg, Path("."), dataset, learner), ev)
    return results


def test_distributed_evaluation_gives_the_numbers_of_one_process(two_ranks):
    _, ranks = two_ranks
    single = _evaluate_all()
    for r in range(WORLD):
        got = ranks[r]["evaluation"]
        assert got == single, (r, got, single)  # every number, to the last bit
    assert {"elbo", "importance_sampled", "renyi:4"} <= set(single["vae"]["estimates"])
    assert {"exact", "bits_per_dim"} <= set(single["flow"]["estimates"])
    assert single["gan"]["num_examples"] == 250


# ----------------------------------------------------------------------------- torchrun
def _torchrun(*argv: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    env.pop("PYROGEN_QUICK", None)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    return subprocess.run(
        [*cmd, "-m", "pyrogen", *argv],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_torchrun_trains_and_one_process_may_not_resume_its_run(tmp_path, capsys, monkeypatch):
    from pyrogen.cli import main
    from pyrogen.training.checkpoint import load_checkpoint

    run = tmp_path / "run"
    small = ["model.hidden_sizes=[16]", "model.discriminator_hidden_sizes=[16]"]
    args = ["configs/gan_toy.yaml", "train.device=cpu", "train.max_steps=3", *small]
    done = _torchrun("train", *args, "--run-dir", str(run), "--quiet")
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("run folder:") == 1  # rank 0 alone prints
    state = load_checkpoint(run / "checkpoint.pt")
    assert state["world_size"] == 2 and len(state["ranks"]) == 2 and state["loop"]["step"] == 3
    assert state["ranks"][0]["rng"]["noise"].ne(state["ranks"][1]["rng"]["noise"]).any()

    # one process may not resume a 2-process run: one line, exit 2
    assert main(["train", "--resume", str(run), "train.max_steps=5", "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "2 process(es)" in err and "not 1" in err

    # under torchrun, commands other than train and evaluate are refused (rank 0 says why)
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert main(["sample", str(run), "-n", "4", "--out", str(tmp_path / "s.png")]) == 2
    assert "runs in one process" in capsys.readouterr().err


# ----------------------------------------------------------------------------- refusals
@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["train.batch_size=1", "data.binarize=static"], "must be at least 2"),
        (
            ["guide.name=score_function", "guide.baseline=decaying_average"]
            + ["elbo.name=trace_graph", "train.batch_size=25", "data.binarize=static"],
            "must be a multiple of 2",
        ),
    ],
)
def test_batches_that_cannot_be_shared_are_refused(monkeypatch, overrides, message):
    from pyrogen.config import ConfigError
    from pyrogen.parallel import distributed

    monkeypatch.setattr(distributed, "world_size", lambda: 2)
    cfg = load_config(None, overrides)
    _, learner = build(cfg, "cpu")
    with pytest.raises(ConfigError, match=message):
        distributed.check_batches(cfg.train.batch_size, learner.fixed_batch_size)


# ----------------------------------------------------------------------------- precision
@pytest.mark.parametrize("family", ["vae", "gan"])
def test_bf16_runs_train_and_resume_exactly(tmp_path, family, monkeypatch):
    """bfloat16 autocast on the CPU: finite losses, and a resumed run is the run."""
    from pyrogen.training import read_metrics, train
    from pyrogen.training.run import TrainedRun

    monkeypatch.setattr(TrainedRun, "save_figures", lambda self, *a, **k: [])
    base = RUN_CASES[family] + ["train.precision=bf16", "train.epochs=2", "train.eval_every=0"]
    full = train(load_config(None, base), tmp_path / "full", quiet=True)
    assert all(math.isfinite(r["loss"]) for r in read_metrics(tmp_path / "full") if "loss" in r)
    train(load_config(None, base + ["train.max_steps=5"]), tmp_path / "part", quiet=True)
    resumed = train(load_config(None, base), tmp_path / "part", resume=True, quiet=True)
    assert_same(_state(full.learner), _state(resumed.learner), family)


def test_float16_with_a_gradient_scaler_checkpoints_the_scaler():
    """The 16-mixed path (CUDA only from a config) through the learners on the CPU: the
    scalers' state is part of the learner's state, and a restored learner continues it."""
    from pyrogen.inference.adversarial import AdversarialLearner
    from pyrogen.inference.variational import VariationalLearner

    cfg = load_config(None, VAE)
    dataset, built = build(cfg, "cpu")
    x = dataset.process(dataset.train[:64], torch.Generator().manual_seed(0))
    vae = VariationalLearner(built.model, built.elbo, precision="16-mixed")
    for _ in range(3):
        assert math.isfinite(vae.step(x)["loss"])
    state = vae.state_dict()
    assert state["scaler"]["scale"] < 65536.0  # overflowing steps were skipped, scale lowered
    again = VariationalLearner(built.model, built.elbo, precision="16-mixed")
    again.load_state_dict(state)
    again.step(x)  # continues from the saved scale (halved if this step overflows too)
    assert again._scaler.get_scale() in (state["scaler"]["scale"], state["scaler"]["scale"] / 2)

    cfg = load_config(None, RUN_CASES["gan"][:-1])  # no R1 penalty
    dataset, built = build(cfg, "cpu")
    gan = AdversarialLearner(built.model, precision="16-mixed")
    for _ in range(3):
        assert math.isfinite(gan.step(dataset.train[:64])["loss"])
    assert set(gan.state_dict()["scalers"]) == {"d", "g"}


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["model.family=flow", "train.precision=bf16"], "flows train in float32"),
        (["train.precision=16-mixed", "train.device=cpu"], "needs CUDA"),
        (["model.family=gan", "adversarial.r1_penalty=1", "train.precision=16-mixed"], "bf16"),
    ],
)
def test_precisions_a_family_cannot_use_are_refused(overrides, message):
    from pyrogen.config import ConfigError

    with pytest.raises(ConfigError, match=message):
        load_config(None, overrides)


# ----------------------------------------------------------------------------- GPUs
def _cuda_worker(rank: int, root: str) -> None:
    torch.cuda.set_device(rank)
    names = ["vae trace", "flow realnvp batchnorm", "gan conv batchnorm k2", "gan r1 ema"]
    results = {name: _steps(name, True, rank, device=f"cuda:{rank}") for name in names}
    torch.save(results, Path(root) / f"cuda{rank}.pt")


def _nccl_entry(rank: int, world: int, port: int, root: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("nccl", rank=rank, world_size=world, device_id=torch.device(rank))
    try:
        _cuda_worker(rank, root)
    finally:
        dist.destroy_process_group()


@pytest.mark.gpu
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 GPUs")
def test_nccl_step_on_two_gpus_is_one_gpu_step_on_the_union_batch(tmp_path):
    """On 2 GPUs with nccl (torch's SyncBatchNorm in the conv GAN's generator)."""
    mp.spawn(_nccl_entry, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    got = torch.load(tmp_path / "cuda0.pt")
    for name, state in got.items():
        single = {k: v.cpu() for k, v in _steps(name, False, device="cuda:0").items()}
        assert_same_update({k: v.cpu() for k, v in state.items()}, single, name, rel=1e-3)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("family", ["vae", "gan"])
def test_float16_mixed_precision_trains_on_cuda(tmp_path, family):
    from pyrogen.training import train

    overrides = [o for o in RUN_CASES[family] if o not in ("train.device=cpu",)]
    overrides = [o for o in overrides if not o.startswith("adversarial.r1")]
    cfg = load_config(None, overrides + ["train.device=cuda", "train.precision=16-mixed"])
    run = train(cfg, tmp_path / "run", quiet=True)
    state = run.learner.state_dict()
    assert "scaler" in state or "scalers" in state
    assert all(torch.isfinite(v).all() for v in _state(run.learner).values())

"""The run loop: resume equals an uninterrupted run, NaN stops with the last good
checkpoint kept, checkpoints are atomic and weights-only, the run folder is complete."""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path

import pytest
import torch

import pyrogen.training.loop as training
from conftest import SMALL_RUN, SMALL_RUNS, TABLE, assert_same, flat, state_of, tiny
from pyrogen import load_config
from pyrogen.training import TrainingDiverged, load, read_metrics, train
from pyrogen.training.checkpoint import CheckpointError, load_checkpoint, save_checkpoint

SMALL_VAE = SMALL_RUNS["vae"]


BETA_RUN = SMALL_RUNS["vae"] + ["elbo.beta=4", "elbo.kl_warmup_steps=15"]  # a β-VAE
#: a VampPrior VAE: its pseudo-inputs are parameters and resume with the rest
VAMP_RUN = SMALL_RUNS["vae"] + ["model.prior=vamp", "model.num_pseudo_inputs=50"]
#: a GMVAE: its component c summed out by enumeration (trace_enum)
GMVAE_RUN = SMALL_RUNS["vae"] + [
    "model.prior=mixture", "model.num_components=3", "elbo.name=trace_enum"
]  # fmt: skip
# a class-conditional GAN on the labelled digits (G(z, y), projection discriminator)
CGAN_RUN = SMALL_RUN + tiny("gan", "model.conditional=true", "adversarial.ema_decay=0.9")
# p(x | c) on a continuous context c (columns of a CSV): a MAF and a GAN with a projection on c
CONTEXT_FLOW_RUN = SMALL_RUN + tiny("flow", "model.flow=maf", "model.num_layers=2", *TABLE)
CONTEXT_GAN_RUN = SMALL_RUN + tiny("gan", *TABLE) + ["adversarial.ema_decay=0.9"]
CONTEXT_VAE_RUN = SMALL_RUN + tiny("vae", "model.likelihood=gaussian", *TABLE)
CONTEXT_VAE_RUN += ["model.prior=conditional"]  # p(z | c) learned too
#: a multi-scale Glow on the digits: act-norm's data-dependent init, 1x1 convs, a split prior
GLOW_RUN = SMALL_RUN + tiny("flow", "model.flow=glow", "model.levels=2", width=8) + [
    "model.steps_per_level=1", "data.dequantize=true", "data.logit_lambda=1e-6"
]  # fmt: skip
#: a two-level VAE (z2 -> z1 -> x): the top-down nets of model and guide resume with the rest
HVAE_RUN = SMALL_RUNS["vae"] + ["model.levels=2", "model.top_hidden_sizes=[8]"]
#: flow guides whose steps' parameters come from the encoder (planar, Householder Sylvester)
PLANAR_RUN = SMALL_RUNS["vae"] + ["guide.name=planar", "guide.num_flows=3"]
SYLVESTER_RUN = SMALL_RUNS["vae"] + ["guide.name=sylvester", "guide.num_flows=2"]
#: a CVAE on the labelled digits: the labels reach model and guide, p(z | c) resumes too
CVAE_RUN = SMALL_RUNS["vae"] + ["model.conditional=true", "model.prior=conditional"]
VARIANTS = {
    "vae_beta": BETA_RUN,
    "vae_vamp": VAMP_RUN,
    "vae_gmvae": GMVAE_RUN,
    "vae_hierarchical": HVAE_RUN,
    "gan_conditional": CGAN_RUN,
    "flow_context": CONTEXT_FLOW_RUN,
    "gan_context": CONTEXT_GAN_RUN,
    "vae_context": CONTEXT_VAE_RUN,
    "flow_glow_multiscale": GLOW_RUN,
    "vae_planar": PLANAR_RUN,
    "vae_sylvester": SYLVESTER_RUN,
    "vae_conditional": CVAE_RUN,
}


@pytest.mark.parametrize("family", [*SMALL_RUNS, *VARIANTS])
def test_resume_equals_uninterrupted_run(tmp_path: Path, family: str) -> None:
    base = VARIANTS.get(family) or SMALL_RUNS[family]
    full = train(load_config(None, base + ["train.epochs=4"]), tmp_path / "full", quiet=True)
    part = tmp_path / "part"
    train(load_config(None, base + ["train.epochs=2"]), part, quiet=True)
    resumed = train(
        load_config(part / "config.yaml", ["train.epochs=4"]), part, resume=True, quiet=True
    )
    assert_same(state_of(full), state_of(resumed))
    assert_same(flat(full.learner.state_dict()), flat(resumed.learner.state_dict()))
    if family == "vae_beta":  # the warm-up ramped β up to elbo.beta
        betas = [r["kl_beta"] for r in read_metrics(tmp_path / "full") if "kl_beta" in r]
        assert betas and max(betas) == 4.0 and min(betas) < 1.0


def test_resume_mid_epoch_after_interrupt(tmp_path: Path) -> None:
    """An interrupt (Ctrl-C) saves the state after the last step; resuming from the middle of
    an epoch ends where the uninterrupted run ends."""
    cfg = load_config(None, SMALL_VAE + ["train.epochs=2"])
    full = train(cfg, tmp_path / "full", quiet=True)

    def interrupt(step: int, _out: dict) -> None:
        if step == 13:  # 1257 / 128 -> 10 batches an epoch: step 13 is mid-epoch 2
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(cfg, tmp_path / "part", quiet=True, on_step=interrupt)
    state = load_checkpoint(tmp_path / "part" / "checkpoint.pt")
    assert state["loop"]["step"] == 13 and state["loop"]["position"] == 3
    resumed = train(cfg, tmp_path / "part", resume=True, quiet=True)
    assert_same(state_of(full), state_of(resumed))


def test_run_folder_holds_config_metrics_checkpoint_and_samples(tmp_path: Path) -> None:
    cfg = load_config(None, SMALL_VAE + ["train.epochs=2", "output.num_samples=16"])
    run = train(cfg, tmp_path / "run", quiet=True)
    files = {p.name for p in (tmp_path / "run").iterdir()}
    assert {"config.yaml", "metrics.jsonl", "checkpoint.pt", "samples.png"} <= files
    # enough to reproduce it: the same config, with its automatic choices resolved
    resolved = replace(cfg, data=replace(cfg.data, standardize=False))
    assert load_config(tmp_path / "run" / "config.yaml") == resolved
    records = read_metrics(tmp_path / "run")
    valid = [r for r in records if r["split"] == "valid"]
    assert [r["epoch"] for r in valid] == [1, 2] and all("elbo" in r for r in valid)
    train_recs = [r for r in records if r["split"] == "train"]
    assert train_recs and all(torch.isfinite(torch.tensor(r["loss"])) for r in train_recs)
    # the loaded run is the trained one
    again = load(tmp_path / "run", device="cpu")
    assert_same(state_of(run), state_of(again))


def test_metrics_as_csv(tmp_path: Path) -> None:
    cfg = load_config(None, SMALL_VAE + ["train.epochs=1", "output.metrics_format=csv"])
    train(cfg, tmp_path / "run", quiet=True)
    assert (tmp_path / "run" / "metrics.csv").exists()
    valid = [r for r in read_metrics(tmp_path / "run") if r["split"] == "valid"]
    assert len(valid) == 1 and "elbo" in valid[0]


@pytest.mark.filterwarnings("ignore:Encountered NaN:UserWarning")
def test_nan_loss_stops_and_keeps_last_good_checkpoint(tmp_path: Path, monkeypatch) -> None:
    """A parameter blows up to infinity at step 25 (mid-epoch 3): the real loss becomes
    non-finite, training stops naming the step, and the checkpoint of epoch 2 stays."""
    real_build = training.build

    def build_with_blow_up(cfg, device, **options):
        dataset, learner = real_build(cfg, device, **options)
        real_step, calls = learner.step, {"n": 0}

        def step(x, y=None):
            calls["n"] += 1
            if calls["n"] == 25:
                with torch.no_grad():
                    next(learner.model.parameters()).fill_(float("inf"))
            return real_step(x, y)

        learner.step = step
        return dataset, learner

    monkeypatch.setattr(training, "build", build_with_blow_up)
    cfg = load_config(None, SMALL_VAE + ["train.epochs=5", "train.eval_every=0"])
    with pytest.raises(TrainingDiverged, match=r"at step 25 \(epoch 3\).*step 20\) is"):
        train(cfg, tmp_path / "run", quiet=True)
    state = load_checkpoint(tmp_path / "run" / "checkpoint.pt")
    assert state["loop"]["epoch"] == 2 and state["loop"]["step"] == 20
    for value in state["learner"]["module"].values():
        assert torch.isfinite(value).all()


def test_checkpoint_write_failing_half_way_keeps_previous(tmp_path: Path, monkeypatch) -> None:
    path = tmp_path / "checkpoint.pt"
    save_checkpoint({"learner": {"w": torch.ones(3)}}, path)

    def broken_save(obj, f, *args, **kwargs):
        f.write(b"PK\x03\x04 half a checkpoint")
        raise OSError("No space left on device")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError, match="No space left"):
        save_checkpoint({"learner": {"w": torch.zeros(3)}}, path)
    monkeypatch.undo()
    assert torch.equal(load_checkpoint(path)["learner"]["w"], torch.ones(3))
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.pt"]  # no temporary left


def test_checkpoint_is_loaded_weights_only(tmp_path: Path) -> None:
    class Evil:
        def __reduce__(self):
            return (print, ("executed!",))

    path = tmp_path / "evil.pt"
    torch.save({"learner": Evil()}, path)
    with pytest.raises(CheckpointError, match="refused") as err:
        load_checkpoint(path)
    assert "weights_only" not in str(err.value)  # never advises turning the protection off
    path.write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match=str(path.name)):
        load_checkpoint(path)


def test_max_steps_and_metrics_cadence(tmp_path: Path) -> None:
    cfg = load_config(
        None, SMALL_VAE + ["train.epochs=50", "train.max_steps=7", "train.log_every=2"]
    )
    train(cfg, tmp_path / "run", quiet=True)
    state = load_checkpoint(tmp_path / "run" / "checkpoint.pt")
    assert state["loop"]["step"] == 7
    steps = [r["step"] for r in read_metrics(tmp_path / "run") if r["split"] == "train"]
    assert steps == [2, 4, 6]
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    assert all(isinstance(json.loads(line), dict) for line in lines)


@pytest.mark.parametrize("schedule", ["cosine", "exponential"])
def test_learning_rate_schedule_follows_the_formula_and_resumes(tmp_path: Path, schedule) -> None:
    base = SMALL_VAE + [f"optim.schedule={schedule}", "optim.decay=0.5", "optim.min_lr_ratio=0.1"]
    full = train(load_config(None, base + ["train.epochs=4"]), tmp_path / "full", quiet=True)
    lr = full.learner.optimizer.param_groups[0]["lr"]
    # 10 steps an epoch, 40 in all: the last step (39) set the lr
    expected = {
        "cosine": 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 39 / 40)),
        "exponential": max(0.1, 0.5 ** (39 / 10)),
    }[schedule]
    assert lr == pytest.approx(1e-3 * expected)
    # the schedule spans the run's target (4 epochs): interrupted at step 15 and resumed,
    # the run follows the same learning rates
    part = tmp_path / "part"

    def interrupt(step: int, _out: dict) -> None:
        if step == 15:
            raise KeyboardInterrupt

    cfg = load_config(None, base + ["train.epochs=4"])
    with pytest.raises(KeyboardInterrupt):
        train(cfg, part, quiet=True, on_step=interrupt)
    resumed = train(cfg, part, resume=True, quiet=True)
    assert_same(state_of(full), state_of(resumed))

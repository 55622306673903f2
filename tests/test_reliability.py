"""Nothing is lost and a resumed run is the run: signals stop at a step boundary, divergence is
reported honestly and never checkpointed, orphan temporaries are cleaned, output that cannot
be written is one line, and resume records what it changed."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest
import torch

import pyrogen.training.loop as loop
import pyrogen.training.trainer as trainer
from conftest import SMALL_RUNS, assert_same, build_with_step_hook, fill_first_parameter, state_of
from pyrogen import load_config
from pyrogen.cli import main
from pyrogen.training import TrainingDiverged, train
from pyrogen.training.checkpoint import load_checkpoint, save_checkpoint

pytestmark = pytest.mark.usefixtures("one_thread")

FAMILIES = {
    **SMALL_RUNS,
    "vae_jit": SMALL_RUNS["vae"] + ["elbo.name=jit_trace"],
}


@pytest.fixture
def signal_in_the_middle_of_a_step(monkeypatch):
    """A real signal delivered while a step is half done (after the gradients, before the
    optimiser update): a handler that raised at once would leave half-updated parameters."""

    def install(step_number: int, signum: int):
        def hook(n, _learner, run_step):
            if n == step_number:
                os.kill(os.getpid(), signum)
            return run_step()

        monkeypatch.setattr(loop, "build", build_with_step_hook(loop.build, hook))

    return install


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
@pytest.mark.parametrize("family", list(FAMILIES))
def test_a_signal_stops_at_a_step_boundary_and_resume_is_the_uninterrupted_run(
    family, signum, tmp_path, signal_in_the_middle_of_a_step, monkeypatch
):
    cfg = load_config(None, FAMILIES[family] + ["train.epochs=3"])
    full = train(cfg, tmp_path / "full", quiet=True)
    signal_in_the_middle_of_a_step(6, signum)  # mid-epoch (10 or 4 steps an epoch)
    with pytest.raises(KeyboardInterrupt):
        train(cfg, tmp_path / "part", quiet=True)
    saved = load_checkpoint(tmp_path / "part" / "checkpoint.pt")
    assert saved["loop"]["step"] == 6  # the step that was running finished first
    monkeypatch.undo()
    resumed = train(cfg, tmp_path / "part", resume=True, quiet=True)
    assert_same(state_of(full), state_of(resumed))


def test_jit_estimator_resumed_mid_run_equals_straight_steps(tmp_path):
    """JitTrace_ELBO compiles on its first call, which runs the program several times: pyrogen
    compiles on a forked random stream, so compiling at step 21 changes nothing."""
    base = FAMILIES["vae_jit"] + ["train.epochs=5"]
    straight = train(load_config(None, base + ["train.max_steps=21"]), tmp_path / "a", quiet=True)
    train(load_config(None, base + ["train.max_steps=20"]), tmp_path / "b", quiet=True)
    resumed = train(
        load_config(tmp_path / "b" / "config.yaml", ["train.max_steps=21"]),
        tmp_path / "b",
        resume=True,
        quiet=True,
    )
    assert_same(state_of(straight), state_of(resumed))


def test_cli_reports_the_interrupt_and_the_resume_command(tmp_path, capsys, monkeypatch):
    def interrupt(step, _out):
        if step == 3:
            os.kill(os.getpid(), signal.SIGINT)

    real_train = loop.train
    monkeypatch.setattr(
        "pyrogen.training.train", lambda *a, **k: real_train(*a, **k, on_step=interrupt)
    )
    argv = ["train", "configs/flow_moons.yaml", "train.epochs=2", "--run-dir", str(tmp_path / "r")]
    assert main([*argv, "--quiet"]) == 130
    err = capsys.readouterr().err
    assert f"--resume {tmp_path / 'r'}" in err  # the folder itself, ready to paste
    assert "RUN_DIR" not in err
    assert load_checkpoint(tmp_path / "r" / "checkpoint.pt")["loop"]["step"] == 3


# ------------------------------------------------------------------ divergence
NAN_WARNING = "ignore:Encountered NaN:UserWarning"  # Pyro's, on the diverging step itself


@pytest.fixture
def blow_up(monkeypatch):
    """Make parameters infinite just before step ``at`` (``where="loss"``: the loss of that
    step is non-finite) or just after it (``"parameters"``: the step's loss was finite)."""

    def install(at: int, where: str = "loss"):
        def hook(n, learner, run_step):
            if n == at and where == "loss":
                fill_first_parameter(learner, float("inf"))
            out = run_step()
            if n == at and where == "parameters":
                fill_first_parameter(learner, float("nan"))
            return out

        monkeypatch.setattr(loop, "build", build_with_step_hook(loop.build, hook))

    return install


@pytest.mark.filterwarnings(NAN_WARNING)
def test_divergence_in_the_first_epoch_says_there_is_no_checkpoint(tmp_path, blow_up):
    blow_up(3)
    cfg = load_config(None, FAMILIES["vae"] + ["train.epochs=3"])
    with pytest.raises(TrainingDiverged, match=r"loss is (nan|inf) at step 3 .*no checkpoint"):
        train(cfg, tmp_path / "run", quiet=True)
    assert not (tmp_path / "run" / "checkpoint.pt").exists()


def test_non_finite_parameters_on_an_epochs_last_step_are_never_checkpointed(tmp_path, blow_up):
    """The last step of epoch 2 leaves NaN parameters behind a finite loss: the end-of-epoch
    checkpoint is refused, and the message points at epoch 1's, which is finite."""
    blow_up(20, where="parameters")  # 10 steps an epoch
    cfg = load_config(None, FAMILIES["vae"] + ["train.epochs=4", "train.eval_every=0"])
    with pytest.raises(TrainingDiverged, match=r"non-finite by step 20.*\(step 10\)"):
        train(cfg, tmp_path / "run", quiet=True)
    state = load_checkpoint(tmp_path / "run" / "checkpoint.pt")
    assert state["loop"]["step"] == 10
    assert all(torch.isfinite(v).all() for v in state["learner"]["module"].values())


def test_divergence_found_by_validation_is_reported_the_same_way(tmp_path, blow_up):
    blow_up(10, where="parameters")  # the epoch's last step; validation then sees NaN
    cfg = load_config(None, FAMILIES["vae"] + ["train.epochs=3", "train.eval_every=1"])
    with pytest.raises(TrainingDiverged, match=r"validation .* not finite after epoch 1"):
        train(cfg, tmp_path / "run", quiet=True)
    assert not (tmp_path / "run" / "checkpoint.pt").exists()


@pytest.mark.filterwarnings(NAN_WARNING)
def test_cli_divergence_is_one_line_exit_1(tmp_path, capsys, blow_up):
    blow_up(2)
    argv = ["train", "configs/vae_digits.yaml", "train.epochs=1", "--run-dir", str(tmp_path / "r")]
    assert main([*argv, "--quiet"]) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1 and "step 2" in err


# ------------------------------------------------------------------ files
def test_orphan_temporaries_of_a_killed_write_are_removed_by_the_next_run(tmp_path):
    cfg = load_config(None, FAMILIES["flow"] + ["train.epochs=1"])
    train(cfg, tmp_path / "run", quiet=True)
    orphan = tmp_path / "run" / ".checkpoint.pt.abc123.tmp"  # what kill -9 mid-write leaves
    orphan.write_bytes(b"PK\x03\x04 half")
    previous = load_checkpoint(tmp_path / "run" / "checkpoint.pt")  # still loadable
    assert previous["loop"]["step"] > 0
    train(load_config(tmp_path / "run" / "config.yaml", ["train.epochs=2"]), tmp_path / "run",
          resume=True, quiet=True)  # fmt: skip
    assert not orphan.exists()


def test_a_full_disk_mid_run_is_one_line_and_keeps_the_last_checkpoint(
    tmp_path, capsys, monkeypatch
):
    real_save = trainer.save_checkpoint
    calls = {"n": 0}

    def save(state, path):
        calls["n"] += 1
        if calls["n"] == 2:
            raise OSError(28, "No space left on device", str(path))
        real_save(state, path)

    monkeypatch.setattr(trainer, "save_checkpoint", save)
    run = tmp_path / "r"
    argv = ["train", "configs/flow_moons.yaml", "train.epochs=3", "train.checkpoint_every=1"]
    assert main([*argv, "--run-dir", str(run), "--quiet"]) == 1
    err = capsys.readouterr().err
    assert "No space left on device" in err and "checkpoint.pt" in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1
    assert load_checkpoint(run / "checkpoint.pt")["loop"]["epoch"] == 1


def test_checkpoint_write_failing_half_way_leaves_no_temporary(tmp_path, monkeypatch):
    path = tmp_path / "checkpoint.pt"
    save_checkpoint({"learner": {"w": torch.ones(3)}}, path)

    def broken_fsync(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", broken_fsync)
    with pytest.raises(OSError, match="No space left"):
        save_checkpoint({"learner": {"w": torch.zeros(3)}}, path)
    monkeypatch.undo()
    assert torch.equal(load_checkpoint(path)["learner"]["w"], torch.ones(3))
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.pt"]


# ------------------------------------------------------------------ resume
def test_resume_with_an_override_saves_the_merged_config_and_records_the_change(tmp_path):
    run = tmp_path / "r"
    argv = ["train", "configs/flow_moons.yaml", "train.epochs=1", "--run-dir", str(run), "--quiet"]
    assert main(argv) == 0
    assert main(["train", "--resume", str(run), "train.epochs=2", "optim.lr=5e-4", "--quiet"]) == 0
    saved = load_config(run / "config.yaml")
    assert saved.train.epochs == 2 and saved.optim.lr == pytest.approx(5e-4)
    (record,) = [json.loads(x) for x in (run / "resumes.jsonl").read_text().splitlines()]
    assert record["changed"]["train.epochs"] == [1, 2]
    assert record["changed"]["optim.lr"][1] == pytest.approx(5e-4)


def test_resuming_a_finished_run_says_so(tmp_path, capsys):
    run = tmp_path / "r"
    argv = ["train", "configs/flow_moons.yaml", "train.epochs=1", "--run-dir", str(run), "--quiet"]
    assert main(argv) == 0
    capsys.readouterr()
    before = (run / "checkpoint.pt").read_bytes()
    assert main(["train", "--resume", str(run), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "already reached" in err and "train.epochs" in err
    assert (run / "checkpoint.pt").read_bytes() == before


def test_resume_refuses_overrides_that_change_the_architecture(tmp_path, capsys):
    run = tmp_path / "r"
    argv = ["train", "configs/flow_moons.yaml", "train.epochs=1", "--run-dir", str(run), "--quiet"]
    assert main(argv) == 0
    capsys.readouterr()
    code = main(["train", "--resume", str(run), "train.epochs=2", "model.num_layers=3"])
    err = capsys.readouterr().err
    assert code == 2 and "model.num_layers" in err
    assert load_config(run / "config.yaml").model.num_layers != 3  # nothing was rewritten


def test_an_edited_config_that_no_longer_fits_its_checkpoint_is_refused(tmp_path, capsys):
    run = tmp_path / "r"
    argv = ["train", "configs/flow_moons.yaml", "train.epochs=1", "--run-dir", str(run), "--quiet"]
    assert main(argv) == 0
    text = (run / "config.yaml").read_text()
    (run / "config.yaml").write_text(text.replace("hidden_sizes:\n  - 64", "hidden_sizes:\n  - 32"))
    capsys.readouterr()
    assert main(["evaluate", str(run), "--parzen-samples", "10"]) == 2
    assert "model.hidden_sizes" in capsys.readouterr().err
    Path(run / "config.yaml").write_text(text)
    assert main(["evaluate", str(run), "--parzen-samples", "10"]) == 0

"""A user gets the best model, not the last; and optional outputs never touch training's random
streams: the same seed gives the same numbers whatever is installed or shown."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import pyrogen
from conftest import CONFIGS, DIGITS_RUN, EIGHT_GAUSSIANS, TINY_VAE, VAE_DIGITS, same_tensors, tiny
from pyrogen import ConfigError, load_config
from pyrogen.cli import main
from pyrogen.runtime import tensorboard_available
from pyrogen.training import evaluate_split, read_metrics, train
from pyrogen.training.checkpoint import load_checkpoint

pytestmark = pytest.mark.usefixtures("one_thread")

VAE = VAE_DIGITS
TINY = DIGITS_RUN + ["train.epochs=4", "output.num_samples=4"]


def valid_rows(run_dir: Path) -> list[dict]:
    return [r for r in read_metrics(run_dir) if r["split"] == "valid"]


# ------------------------------------------------------------------ best and last
@pytest.fixture(scope="module")
def worst_is_best(tmp_path_factory) -> Path:
    """``monitor_mode=min`` on the ELBO keeps the *worst* validation: its best.pt is the first
    evaluation, which makes best and last differ deterministically."""
    run_dir = tmp_path_factory.mktemp("bl") / "run"
    cfg = load_config(VAE, TINY + ["train.monitor=elbo", "train.monitor_mode=min"])
    train(cfg, run_dir, quiet=True)
    return run_dir


def test_best_pt_holds_the_model_of_the_best_validation(worst_is_best):
    rows = valid_rows(worst_is_best)
    best_row = min(rows, key=lambda r: r["elbo"])
    best = load_checkpoint(worst_is_best / "best.pt")
    assert best["loop"]["step"] == best_row["step"] != rows[-1]["step"]
    assert best["loop"]["best"] == best_row["elbo"]
    # its parameters give exactly the logged validation value (the same fixed evaluation)
    run = pyrogen.load(worst_is_best, checkpoint="best")
    again = evaluate_split(run.learner, run.dataset, "valid", run.cfg.train.eval_batch_size)
    assert again["elbo"] == pytest.approx(best_row["elbo"], rel=1e-6)
    summary = [r for r in read_metrics(worst_is_best) if r["split"] == "summary"][-1]
    assert summary["best_step"] == best_row["step"]


def test_load_evaluate_and_sample_take_best_or_last(worst_is_best, tmp_path, capsys):
    default, best = pyrogen.load(worst_is_best), pyrogen.load(worst_is_best, checkpoint="best")
    last = pyrogen.load(worst_is_best, checkpoint="last")
    assert default.checkpoint == "best" and last.checkpoint == "last"
    w = "decoder.0.weight"
    assert torch.equal(default.learner.module.state_dict()[w], best.learner.module.state_dict()[w])
    assert not torch.equal(best.learner.module.state_dict()[w], last.learner.module.state_dict()[w])
    last_ckpt = load_checkpoint(worst_is_best / "checkpoint.pt")["learner"]["module"]
    assert torch.equal(last.learner.module.state_dict()[w], last_ckpt[w])
    out = {}
    for which in ("best", "last"):
        path = tmp_path / f"{which}.pt"
        argv = ["sample", str(worst_is_best), "-n", "16", "--out", str(path)]
        assert main([*argv, "--checkpoint", which, "--means"]) == 0
        out[which] = torch.load(path, weights_only=True)
    assert not torch.equal(out["best"], out["last"])
    assert main(["evaluate", str(worst_is_best), "--checkpoint", "bogus"]) == 2
    capsys.readouterr()


def test_the_final_line_reports_best_and_last(tmp_path, capsys):
    argv = ["train", VAE, *TINY, "train.monitor_mode=min", "--run-dir", str(tmp_path / "r")]
    assert main([*argv, "--quiet"]) == 0
    line = capsys.readouterr().out.splitlines()[0]
    assert line.startswith("final: valid elbo") and "(last, step 80)" in line
    assert "best: valid elbo" in line and "(step 20, best.pt)" in line


def test_resume_continues_from_last_and_keeps_following_the_best(worst_is_best, tmp_path):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(worst_is_best, copy)
    cfg = load_config(copy / "config.yaml", ["train.epochs=5"])
    run = train(cfg, copy, resume=True, quiet=True)
    assert load_checkpoint(copy / "checkpoint.pt")["loop"]["epoch"] == 5  # from last, on
    assert run.checkpoint == "best"  # the best so far is still the first evaluation
    assert load_checkpoint(copy / "best.pt")["loop"]["step"] == valid_rows(copy)[0]["step"]


def test_early_stopping_stops_after_its_patience(tmp_path):
    cfg = load_config(
        VAE, TINY + ["train.epochs=20", "train.monitor_mode=min", "train.early_stopping=2"]
    )
    run = train(cfg, tmp_path / "r", quiet=True)
    rows = valid_rows(tmp_path / "r")
    assert len(rows) == 3  # the first evaluation is the best; two without improvement stop
    assert load_checkpoint(tmp_path / "r" / "checkpoint.pt")["loop"]["epoch"] == 3
    summary = [r for r in read_metrics(tmp_path / "r") if r["split"] == "summary"][-1]
    assert summary["stopped_early"] == 1
    assert run.checkpoint == "best"
    with pytest.raises(ConfigError, match="stopped early"):
        train(load_config(tmp_path / "r" / "config.yaml"), tmp_path / "r", resume=True)
    more = load_config(tmp_path / "r" / "config.yaml", ["train.early_stopping=4"])
    train(more, tmp_path / "r", resume=True, quiet=True)
    assert len(valid_rows(tmp_path / "r")) == 5


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["train.monitor=log_prob"], "a vae reports elbo"),
        (["gan", "train.monitor=d_loss"], "monitor_mode"),
        (["train.monitor=elbo", "train.eval_every=0"], "never validates"),
        (["train.early_stopping=3", "train.monitor=none"], "needs a validation metric"),
    ],
)
def test_bad_monitor_settings_are_one_line_errors(overrides, message):
    path = VAE
    if overrides[0] == "gan":
        path, overrides = str(CONFIGS / "gan_toy.yaml"), overrides[1:]
    with pytest.raises(ConfigError, match=message):
        load_config(path, TINY[len(TINY_VAE) :] + overrides)


def test_a_gan_keeps_the_last_unless_told_what_is_better(tmp_path):
    base = tiny("gan", EIGHT_GAUSSIANS, "data.num_train=256", width=8)
    base += ["train.epochs=2", "train.device=cpu"]
    run = train(load_config(None, base), tmp_path / "a", quiet=True)
    assert run.checkpoint == "last" and not (tmp_path / "a" / "best.pt").exists()
    told = load_config(None, base + ["train.monitor=g_loss", "train.monitor_mode=min"])
    train(told, tmp_path / "b", quiet=True)
    assert (tmp_path / "b" / "best.pt").exists()


# ------------------------------------------------------------------ optional outputs
def final_state(run_dir: Path) -> dict:
    state = load_checkpoint(run_dir / "checkpoint.pt")
    return {k: state[k] for k in ("learner", "loop", "rng")}


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> dict:
    run_dir = tmp_path_factory.mktemp("ref") / "run"
    train(load_config(VAE, TINY + ["output.tensorboard=false"]), run_dir, quiet=True)
    return final_state(run_dir)


@pytest.mark.parametrize(
    "overrides, quiet",
    [
        pytest.param(
            ["output.tensorboard=true"],
            True,
            id="tensorboard",
            marks=pytest.mark.skipif(not tensorboard_available(), reason="no tensorboard"),
        ),
        (["output.tensorboard=false", "output.figures=false"], True),
        (["output.tensorboard=false"], False),
        (["output.tensorboard=false", "output.metrics_format=csv"], True),
    ],
    ids=["tensorboard", "no figures", "not quiet", "csv metrics"],
)
def test_optional_outputs_leave_the_final_checkpoint_bit_equal(
    reference, overrides, quiet, tmp_path
):
    """TensorBoard draws a samples figure at every validation; figures, progress and the
    metrics format must not move training's random streams by one draw."""
    run_dir = tmp_path / "run"
    train(load_config(VAE, TINY + overrides), run_dir, quiet=quiet)
    if "output.tensorboard=true" in overrides:
        assert any((run_dir / "tensorboard").iterdir())
    if "output.figures=false" in overrides:
        assert not (run_dir / "samples.png").exists()
    assert same_tensors(final_state(run_dir), reference)

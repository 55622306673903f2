"""A user's own callbacks get the run's hooks, as Lightning's do: they see what the metrics file
records, can stop the run, and never change its numbers."""

from __future__ import annotations

import pytest
import torch

import pyrogen
from conftest import DIGITS_RUN, VAE_DIGITS
from pyrogen import load_config
from pyrogen.training import read_metrics, train
from pyrogen.training.checkpoint import load_checkpoint
from pyrogen.training.trainer import own_stream

pytestmark = pytest.mark.usefixtures("one_thread")

VAE = VAE_DIGITS
TINY = DIGITS_RUN + ["train.epochs=3", "output.tensorboard=false", "output.figures=false"]


class Recorder(pyrogen.Callback):
    """Every hook call, in order, with what it was given."""

    def __init__(self) -> None:
        self.calls: list[tuple] = []

    def on_fit_start(self, trainer):
        self.calls.append(("fit_start", trainer.loop.step))

    def on_train_batch_end(self, trainer, metrics):
        self.calls.append(("batch", trainer.loop.step, metrics["loss"]))

    def on_train_metrics(self, trainer, means):
        self.calls.append(("means", trainer.loop.step, means["loss"]))

    def on_validation_end(self, trainer, metrics):
        self.calls.append(("valid", trainer.loop.step, metrics["elbo"]))

    def on_epoch_end(self, trainer):
        self.calls.append(("epoch", trainer.loop.epoch))

    def teardown(self, trainer):
        self.calls.append(("teardown", trainer.loop.step))

    def on_fit_end(self, trainer):
        self.calls.append(("fit_end", trainer.loop.step))
        trainer.summary["seen_batches"] = sum(c[0] == "batch" for c in self.calls)


def test_user_callbacks_see_every_hook_and_what_the_metrics_file_records(tmp_path):
    rec = Recorder()
    train(load_config(VAE, TINY), tmp_path / "r", quiet=True, callbacks=[rec])
    kinds = [c[0] for c in rec.calls]
    assert kinds[0] == "fit_start" and kinds[-2:] == ["teardown", "fit_end"]
    assert kinds.count("batch") == 60 and kinds.count("epoch") == 3
    assert [c[1] for c in rec.calls if c[0] == "batch"] == list(range(1, 61))
    records = read_metrics(tmp_path / "r")
    valid = [(r["step"], r["elbo"]) for r in records if r["split"] == "valid"]
    assert [(c[1], c[2]) for c in rec.calls if c[0] == "valid"] == valid
    train_rows = [(r["step"], r["loss"]) for r in records if r["split"] == "train"]
    assert [(c[1], c[2]) for c in rec.calls if c[0] == "means"] == train_rows
    # the means are the means of the steps' losses since the last line
    batch = {c[1]: c[2] for c in rec.calls if c[0] == "batch"}
    assert train_rows[0][1] == pytest.approx(sum(batch[s] for s in range(1, 6)) / 5)
    summary = [r for r in records if r["split"] == "summary"][-1]
    assert summary["seen_batches"] == 60  # a callback adds to the run's summary


class StopAfter(pyrogen.Callback):
    def __init__(self, epochs: int) -> None:
        self.epochs = epochs

    def on_epoch_end(self, trainer):
        if trainer.loop.epoch >= self.epochs:
            trainer.should_stop = True


def test_a_callback_can_stop_the_run_and_the_last_checkpoint_is_written(tmp_path):
    train(load_config(VAE, TINY + ["train.epochs=10"]), tmp_path / "r", callbacks=[StopAfter(2)])
    assert load_checkpoint(tmp_path / "r" / "checkpoint.pt")["loop"]["epoch"] == 2


class DrawsInItsOwnStream(pyrogen.Callback):
    """Samples from the model at every validation, as a user's monitoring would."""

    def on_validation_end(self, trainer, metrics):  # noqa: ARG002
        with own_stream(0, "user", trainer.device):
            trainer.learner.model.sample(50)


def test_a_callback_that_draws_in_its_own_stream_changes_nothing(tmp_path):
    cfg = load_config(VAE, TINY)
    train(cfg, tmp_path / "a", quiet=True)
    train(cfg, tmp_path / "b", quiet=True, callbacks=[DrawsInItsOwnStream()])
    a = load_checkpoint(tmp_path / "a" / "checkpoint.pt")
    b = load_checkpoint(tmp_path / "b" / "checkpoint.pt")
    for k, v in a["learner"]["module"].items():
        assert torch.equal(v, b["learner"]["module"][k]), k
    assert torch.equal(a["rng"]["torch"], b["rng"]["torch"])

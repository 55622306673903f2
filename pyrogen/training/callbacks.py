"""What a run does besides learning: metrics files, TensorBoard, progress, checkpoints (last
and best), early stopping and figures, each a :class:`Callback` of the
:class:`~pyrogen.training.trainer.Trainer`.

A user adds their own through ``pyrogen.train(cfg, callbacks=[...])``: subclass
:class:`Callback` and override the hooks you need. Hooks run on every rank of a data-parallel
run (``trainer.is_main`` is rank 0, the one that writes); they must not draw from torch's
global random generator except inside :func:`~pyrogen.training.trainer.own_stream`, so that
training's numbers never depend on what is observed.

Example::

    >>> import pyrogen
    >>> class PrintELBO(pyrogen.Callback):
    ...     def on_validation_end(self, trainer, metrics):
    ...         print(trainer.loop.epoch, metrics.get("elbo"))
    >>> # pyrogen.train(cfg, callbacks=[PrintELBO()])
"""

from __future__ import annotations

import time
from typing import Any

from pyrogen.progress import bar as progress_bar
from pyrogen.progress import interactive
from pyrogen.progress import line as progress_line
from pyrogen.runtime import cpu_settings
from pyrogen.training.checkpoint import load_checkpoint
from pyrogen.training.folders import BEST
from pyrogen.training.metrics import MetricsWriter, TensorBoardLog
from pyrogen.training.trainer import Callback, Trainer, own_stream


class ModelCheckpoint(Callback):
    """``checkpoint.pt`` every ``every`` epochs (and at the end, written by the Trainer), and
    ``best.pt`` whenever the monitored validation metric improves.

    ``monitor``: ``(metric, "max" | "min")`` or ``None`` (only the last is kept). At the end
    the learner is given the best checkpoint's state (``trainer.checkpoint_used``), so the
    returned run, its figures and ``pyrogen evaluate`` all see the best model."""

    def __init__(self, every: int, monitor: tuple[str, str] | None) -> None:
        self.every = every
        self.monitor = monitor
        self.improved = False

    def on_validation_end(self, trainer: Trainer, metrics: dict[str, float]) -> None:
        if self.monitor is None:
            return
        loop = trainer.loop
        name, mode = self.monitor
        value = metrics[name]
        best = loop.best
        if best is None or (value > best if mode == "max" else value < best):
            loop.best, loop.best_step, loop.evals_since_best = value, loop.step, 0
            self.improved = True  # best.pt is written at the epoch's end, after the last
            trainer.notes.append("best so far")
        else:
            loop.evals_since_best += 1

    def on_epoch_end(self, trainer: Trainer) -> None:
        if self.every and trainer.loop.epoch % self.every == 0:
            trainer.save_checkpoint()
        if self.improved:  # after the last: a failed best.pt write leaves the last current
            trainer.save_checkpoint(trainer.run_dir / BEST)
            self.improved = False

    def on_fit_end(self, trainer: Trainer) -> None:
        loop = trainer.loop
        trainer.checkpoint_used = "last"
        if self.monitor is None or loop.best_step is None:
            return
        trainer.summary.update({f"best_{self.monitor[0]}": loop.best, "best_step": loop.best_step})
        if loop.best_step != loop.step:  # the best model, not the last
            state = load_checkpoint(trainer.run_dir / BEST, map_location=trainer.device)
            trainer.learner.load_state_dict(state["learner"])
        trainer.checkpoint_used = "best"


class EarlyStopping(Callback):
    """Stop after ``patience`` validations without a better monitored metric (counted by
    :class:`ModelCheckpoint` in ``trainer.loop.evals_since_best``, so a resumed run counts on)."""

    def __init__(self, patience: int, metric: str) -> None:
        self.patience = patience
        self.metric = metric
        self.stopped = False

    def on_validation_end(self, trainer: Trainer, metrics: dict[str, float]) -> None:  # noqa: ARG002
        waited = trainer.loop.evals_since_best
        if waited >= self.patience:
            trainer.should_stop = self.stopped = True
            trainer.notes.append(
                f"stopping early: no better valid {self.metric} in {waited} evaluations"
            )

    def on_fit_end(self, trainer: Trainer) -> None:
        if self.stopped:
            trainer.summary["stopped_early"] = 1


class MetricsLogger(Callback):
    """``metrics.jsonl`` (or ``.csv``): the mean of the training metrics every ``log_every``
    steps, every validation, and the run's summary (time, threads, what callbacks add)."""

    def __init__(self, fmt: str) -> None:
        self.fmt = fmt
        self.writer: MetricsWriter | None = None

    def on_fit_start(self, trainer: Trainer) -> None:
        self.start = time.perf_counter()
        trainer.summary.update(train_seconds=None, num_threads=None)  # first in the record
        if trainer.is_main:
            self.writer = MetricsWriter(trainer.run_dir, self.fmt)

    def on_train_metrics(self, trainer: Trainer, means: dict[str, float]) -> None:
        if self.writer is not None:
            self.writer.write(trainer.loop.step, trainer.loop.epoch + 1, "train", means)

    def on_validation_end(self, trainer: Trainer, metrics: dict[str, float]) -> None:
        if self.writer is not None:
            self.writer.write(trainer.loop.step, trainer.loop.epoch, "valid", metrics)

    def on_fit_end(self, trainer: Trainer) -> None:
        trainer.summary["train_seconds"] = time.perf_counter() - self.start
        trainer.summary["num_threads"] = trainer.num_threads

    def on_summary(self, trainer: Trainer, summary: dict[str, Any]) -> None:
        if self.writer is None:
            return
        try:
            self.writer.write(trainer.loop.step, trainer.loop.epoch, "summary", summary)
        except OSError as e:
            raise trainer.output_error(e, finished=True, what="the run's summary metrics") from None


class TensorBoard(Callback):
    """TensorBoard event files in ``run_dir/tensorboard``: the logged training means, every
    validation's metrics and a samples figure drawn in its own random stream."""

    def __init__(self) -> None:
        self.log: TensorBoardLog | None = None

    def on_fit_start(self, trainer: Trainer) -> None:
        if trainer.is_main:
            self.log = TensorBoardLog(trainer.run_dir)

    def on_train_metrics(self, trainer: Trainer, means: dict[str, float]) -> None:
        if self.log is not None:
            self.log.write(trainer.loop.step, "train", means)

    def on_validation_end(self, trainer: Trainer, metrics: dict[str, float]) -> None:
        if self.log is None:
            return
        step = trainer.loop.step
        self.log.write(step, "valid", metrics)
        with own_stream(trainer.cfg.train.seed, f"tensorboard:{step}", trainer.device):
            figure = trainer.trained_run().samples_figure()
        if figure is not None:
            self.log.figure("samples", figure, step)

    def teardown(self, trainer: Trainer) -> None:  # noqa: ARG002
        if self.log is not None:
            self.log.close()
            self.log = None


class ProgressBar(Callback):
    """A progress bar on a terminal or in a notebook, a line per validation elsewhere (none
    when ``quiet``)."""

    def __init__(self, quiet: bool) -> None:
        self.quiet = quiet

    def on_fit_start(self, trainer: Trainer) -> None:
        self.quiet = self.quiet or not trainer.is_main  # rank 0 alone shows progress
        self.show = not self.quiet and interactive()
        self.bar = progress_bar(
            total=trainer.total_steps,
            initial=trainer.loop.step,
            quiet=self.quiet,
            desc=trainer.run_dir.name,
            leave=True,
        )

    def on_train_metrics(self, trainer: Trainer, means: dict[str, float]) -> None:  # noqa: ARG002
        self.bar.set_postfix(loss=f"{means['loss']:.4g}")

    def on_train_batch_end(self, trainer: Trainer, metrics: dict[str, float]) -> None:  # noqa: ARG002
        self.bar.update(1)

    def on_validation_end(self, trainer: Trainer, metrics: dict[str, float]) -> None:
        loop, t = trainer.loop, trainer.cfg.train
        text = f"epoch {loop.epoch}/{t.epochs} (step {loop.step}/{trainer.total_steps}): " + (
            ", ".join(f"valid {k} {v:.4g}" for k, v in metrics.items())
        )
        notes = [n for n in trainer.notes if n == "best so far"]
        text += "".join(f" ({n})" for n in notes)
        text += "".join(f"; {n}" for n in trainer.notes if n not in notes)
        if self.show:
            self.bar.write(text)
        progress_line(text, self.quiet)

    def teardown(self, trainer: Trainer) -> None:  # noqa: ARG002
        self.bar.close()


class Figures(Callback):
    """``samples.png``, ``curves.png`` and the family's figures at the end of a completed run,
    from the model the run returns (the best checkpoint's, where one was kept), drawn in their
    own random stream."""

    def on_fit_end(self, trainer: Trainer) -> None:
        if not trainer.is_main:
            return

        num_parameters = sum(p.numel() for p in trainer.learner.module.parameters())
        run = trainer.trained_run()
        try:
            with (
                cpu_settings(trainer.cfg.train.num_threads, num_parameters),
                own_stream(trainer.cfg.train.seed, "figures", trainer.device),
            ):
                run.save_figures()
        except OSError as e:
            raise trainer.output_error(e, finished=True, what="the figures") from None


def default_callbacks(trainer_cfg: Any, monitor: tuple[str, str] | None, quiet: bool,
                      tensorboard: bool) -> list[Callback]:  # fmt: skip
    """The callbacks a config asks for, in the order they run: checkpoints first (a
    validation's best.pt is written before anything reports it), then early stopping,
    metrics, TensorBoard, progress and figures."""
    t, out = trainer_cfg.train, trainer_cfg.output
    callbacks: list[Callback] = [ModelCheckpoint(t.checkpoint_every, monitor)]
    if t.early_stopping is not None and monitor is not None:
        callbacks.append(EarlyStopping(t.early_stopping, monitor[0]))
    callbacks.append(MetricsLogger(out.metrics_format))
    if tensorboard:
        callbacks.append(TensorBoard())
    callbacks.append(ProgressBar(quiet))
    if out.figures:
        callbacks.append(Figures())
    return callbacks

"""The Trainer: epochs of shuffled mini-batches, validation, checkpoints; everything optional is
a :class:`~pyrogen.training.callbacks.Callback`.

A :class:`Trainer` owns one learner, its data set, the run folder and where the run is
(:class:`LoopState`). ``fit()`` runs epochs (:meth:`Trainer.epoch`) of index-sliced batches of
the in-memory training tensor, validates every ``train.eval_every`` epochs
(:meth:`Trainer.validate`) and checkpoints through its callbacks; metrics files, TensorBoard,
progress, figures, best/last checkpoints and early stopping are callbacks
(:mod:`pyrogen.training.callbacks`), in the manner of Lightning's ``Trainer``/``Callback``.

Guarantees (held by the Trainer whatever callbacks run):

* **Divergence is honest**: a non-finite loss (training or validation) or non-finite parameters
  stop the run with :class:`TrainingDiverged`, naming the step, the quantity and the last
  checkpoint with finite parameters; a checkpoint is never written with non-finite values.
* **Interrupting is safe**: SIGINT and SIGTERM stop at the next step boundary, write a
  checkpoint and raise :class:`TrainingInterrupted` (a ``KeyboardInterrupt``).
* **Callbacks never move training's random streams**: anything that draws (figures,
  TensorBoard samples) runs in :func:`own_stream`.
* **Data parallelism**: under ``torchrun`` every rank runs the same Trainer on its shard of
  each global batch; step metrics and the stop flag are all-reduced after every step; rank 0
  alone writes (callbacks see ``trainer.is_main``).
"""

from __future__ import annotations

import dataclasses
import math
import signal
import threading
import zlib
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from pyrogen.config import Config
from pyrogen.data import Dataset
from pyrogen.inference.base import Learner, lr_factor, set_lr_factor
from pyrogen.parallel import distributed
from pyrogen.training.checkpoint import all_finite, rng_state, save_checkpoint
from pyrogen.training.folders import CHECKPOINT
from pyrogen.training.output import RunOutputError
from pyrogen.training.run import TrainedRun


class TrainingDiverged(RuntimeError):
    """A loss or parameter became NaN or infinite; the message names the step, the quantity
    and the last good checkpoint."""


class TrainingInterrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM stopped the run at a step boundary; ``run_dir`` holds its state."""

    def __init__(self, run_dir: Path, saved: bool) -> None:
        super().__init__(str(run_dir))
        self.run_dir = run_dir
        self.saved = saved


@dataclass
class LoopState:
    """Where the run is: what a checkpoint must hold besides the learner."""

    epoch: int = 0  # epochs completed
    step: int = 0  # optimiser steps taken
    position: int = 0  # batches consumed in the current epoch
    permutation: torch.Tensor | None = None  # the current epoch's order of examples
    best: float | None = None  # the monitored validation metric's best value so far
    best_step: int | None = None  # the step of best.pt
    evals_since_best: int = 0  # validations without improvement (early stopping)


def evaluate_split(
    learner: Learner,
    dataset: Dataset,
    split: str,
    batch_size: int,
    seed: int = 0,
    labels: bool = False,
) -> dict[str, float]:
    """Per-example means of ``learner.evaluate`` over a whole split (fixed preprocessing
    noise drawn from ``seed``, so repeated evaluations compare like with like; the model's
    own random draws come from a forked generator, so evaluating never shifts training's
    random stream)."""
    x_all = dataset.split(split)
    y_all = dataset.labels(split) if labels else None
    n = x_all.shape[0]
    if distributed.is_distributed():  # each rank its shard, with its own draws
        start, stop = distributed.shard_range(n)
        x_all = x_all[start:stop]
        y_all = None if y_all is None else y_all[start:stop]
        seed = distributed.rank_seed(seed, "validation") % (1 << 63)
    gen = torch.Generator().manual_seed(seed)
    totals: dict[str, float] = {}
    devices = [dataset.device] if dataset.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        for start in range(0, x_all.shape[0], batch_size):
            x = dataset.process(x_all[start : start + batch_size], gen)
            y = None if y_all is None else y_all[start : start + batch_size]
            for key, value in learner.evaluate(x, y).items():
                totals[key] = totals.get(key, 0.0) + value * x.shape[0]
    if distributed.is_distributed():
        totals = distributed.sum_dicts(distributed.all_gather_object(totals))
    return {key: value / n for key, value in totals.items()}


@contextmanager
def own_stream(seed: int, name: str, device: torch.device) -> Iterator[None]:
    """Run with torch's global generator(s) seeded from ``seed`` and ``name``, and restored
    afterwards: optional outputs (figures, TensorBoard) never shift training's random draws,
    and draw the same samples whether or not anything ran before them."""
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed * 1_000_003 + zlib.crc32(name.encode()))
        yield


@contextmanager
def stop_at_step_boundary(second_interrupts: bool = True) -> Iterator[Callable[[], int | None]]:
    """While active, SIGINT and SIGTERM only set a flag, which the Trainer reads after each
    step (a signal in the middle of an optimiser update would leave half-updated parameters).
    A second signal interrupts at once, unless ``second_interrupts`` is false: under torchrun
    a Ctrl-C reaches each worker twice (from the terminal, then forwarded by torchrun, which
    kills workers that have not exited 30 s later), and a rank interrupted on its own would
    leave the others waiting in a collective. Yields a function returning the pending
    signal."""
    pending: list[int] = []
    if threading.current_thread() is not threading.main_thread():
        yield lambda: None
        return

    def handler(signum, frame):  # noqa: ARG001
        if pending and second_interrupts:
            raise KeyboardInterrupt
        pending.append(signum)

    old = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield lambda: pending[0] if pending else None
    finally:
        for s, h in old.items():
            signal.signal(s, h)


def steps_per_epoch(n: int, batch_size: int, fixed_batches: bool, world: int) -> int:
    """Optimiser steps in an epoch of ``n`` examples: the last, smaller batch counts unless
    the learner needs batches of one size (``fixed_batches``) or it has fewer examples than
    the ``world`` processes (a piece for every rank, or no step)."""
    steps = n // batch_size if fixed_batches else math.ceil(n / batch_size)
    if not fixed_batches and 0 < n % batch_size < world:
        steps -= 1
    return steps


def is_invalid_distribution(e: ValueError) -> bool:
    """Whether a ``ValueError`` is a distribution refusing NaN or infinite arguments (the
    loss diverged), as opposed to a user's mistake."""
    text = str(e)
    return "invalid values" in text or "nan" in text.lower()


class Callback:
    """Hooks of a run, each called with the trainer (in the order the callbacks are given).

    * ``on_fit_start(trainer)``: the run folder exists; nothing was trained yet (or, resumed,
      since the checkpoint);
    * ``on_train_batch_end(trainer, metrics)``: after each optimiser step (``metrics``: the
      step's per-example values, e.g. ``loss``; ``trainer.loop.step`` counts the steps);
    * ``on_train_metrics(trainer, means)``: every ``train.log_every`` steps, the means of the
      steps' metrics since the last call;
    * ``on_validation_end(trainer, metrics)``: after each validation (``train.eval_every``);
      append to ``trainer.notes`` to add to the progress line;
    * ``on_epoch_end(trainer)``: after each epoch (and its validation);
    * ``teardown(trainer)``: always, when the loop ends for any reason (close files);
    * ``on_fit_end(trainer)``: after the last checkpoint of a completed run; add to
      ``trainer.summary`` what the run's summary record should hold;
    * ``on_summary(trainer, summary)``: last, with every callback's summary entries.

    Set ``trainer.should_stop = True`` to end the run after the current epoch.
    """

    def on_fit_start(self, trainer: Trainer) -> None:
        pass

    def on_train_batch_end(self, trainer: Trainer, metrics: dict[str, float]) -> None:
        pass

    def on_train_metrics(self, trainer: Trainer, means: dict[str, float]) -> None:
        pass

    def on_validation_end(self, trainer: Trainer, metrics: dict[str, float]) -> None:
        pass

    def on_epoch_end(self, trainer: Trainer) -> None:
        pass

    def teardown(self, trainer: Trainer) -> None:
        pass

    def on_fit_end(self, trainer: Trainer) -> None:
        pass

    def on_summary(self, trainer: Trainer, summary: dict[str, Any]) -> None:
        pass


class Trainer:
    """Fit ``learner`` on ``dataset``'s training split (see the module's docstring).

    Args:
        cfg: the run's resolved config (``train`` and ``optim`` sections drive the loop).
        stored: the config as the run folder stores it (checkpoints hold it).
        run_dir: the run folder (rank 0 writes it).
        dataset, learner: built by :func:`pyrogen.build.build`.
        callbacks: :class:`~pyrogen.training.callbacks.Callback` objects, called in order.
        loop: where a resumed run is (default: the start).
        data_gen: the generator of the order of examples; noise_gen: the preprocessing's
            noise (a data-parallel rank's own; default ``data_gen``).
        uses_labels: the model takes the class labels ``y``.
        resumed_from: the checkpoint a resumed run started from (messages name it).
    """

    def __init__(
        self,
        cfg: Config,
        stored: Config,
        run_dir: Path,
        dataset: Dataset,
        learner: Learner,
        callbacks: Sequence[Callback] = (),
        loop: LoopState | None = None,
        data_gen: torch.Generator | None = None,
        noise_gen: torch.Generator | None = None,
        uses_labels: bool = False,
        resumed_from: Path | None = None,
    ) -> None:
        self.cfg, self.stored, self.run_dir = cfg, stored, Path(run_dir)
        self.dataset, self.learner = dataset, learner
        self.callbacks = list(callbacks)
        self.loop = loop or LoopState()
        self.data_gen = data_gen or torch.Generator().manual_seed(cfg.train.seed)
        self.noise_gen = noise_gen or self.data_gen
        self.uses_labels = uses_labels
        self.resumed_from = resumed_from
        self.world = distributed.world_size()
        self.is_main = distributed.is_main()
        self.device = dataset.device
        self.fixed_batches = getattr(learner, "fixed_batch_size", False)
        self.steps_per_epoch = self._steps_per_epoch()
        t = cfg.train
        total = t.epochs * self.steps_per_epoch
        self.total_steps = total if t.max_steps is None else min(total, t.max_steps)
        self.should_stop = False  # a callback asks the run to end after this epoch
        self.last_good: int | None = None  # the step of the last checkpoint written
        self.notes: list[str] = []  # what callbacks say about the current validation
        self.summary: dict[str, Any] = {}  # what callbacks report at the end
        self.num_threads: int | str = t.num_threads
        self.checkpoint_used = "last"  # whose parameters the learner holds after fit()
        self._sums: dict[str, float] = {}
        self._count = 0

    # ------------------------------------------------------------------ the run
    def _steps_per_epoch(self) -> int:
        n, b = self.dataset.train.shape[0], self.cfg.train.batch_size
        return steps_per_epoch(n, b, self.fixed_batches, self.world)

    def _call(self, hook: str, *args: Any) -> None:
        for callback in self.callbacks:
            getattr(callback, hook)(self, *args)

    def fit(self, on_step: Callable[[int, dict[str, float]], None] | None = None) -> None:
        """Train until ``train.epochs`` / ``train.max_steps`` or a callback's stop, then write
        the last checkpoint and call every callback's ``on_fit_end``."""
        t = self.cfg.train
        self.in_step = False
        try:
            with stop_at_step_boundary(second_interrupts=self.world == 1) as pending:
                self._pending = pending
                self._call("on_fit_start")
                try:
                    while (
                        self.loop.epoch < t.epochs
                        and self.loop.step < self.total_steps
                        and not self.should_stop
                    ):
                        self.epoch(on_step)
                    self.save_checkpoint()
                except KeyboardInterrupt:
                    saved = not self.in_step
                    if saved:  # at a step boundary: the state is resumable
                        self.save_checkpoint()
                    raise TrainingInterrupted(self.run_dir, saved) from None
                except OSError as e:  # a file of the run folder (metrics, TensorBoard, ...)
                    if e.filename is None or not self._in_run_dir(e.filename):
                        raise
                    raise self.output_error(e) from None
        finally:
            self._call("teardown")
        try:
            self._call("on_fit_end")
            self._call("on_summary", self.summary)
        except OSError as e:
            raise self.output_error(e, True, "the run's end (summary, figures)") from None

    def _in_run_dir(self, filename: str | bytes) -> bool:
        return self.run_dir.resolve() in Path(str(filename)).resolve().parents

    def epoch(self, on_step: Callable[[int, dict[str, float]], None] | None = None) -> None:
        """The rest of the current epoch (all of it unless resumed mid-epoch), then
        validation and the epoch's callbacks."""
        loop, t, o = self.loop, self.cfg.train, self.cfg.optim
        n = self.dataset.train.shape[0]
        if loop.permutation is None:
            loop.permutation = torch.randperm(n, generator=self.data_gen)
        batches = loop.permutation.split(t.batch_size)
        if self.fixed_batches and n % t.batch_size:
            batches = batches[:-1]  # the learner needs batches of one size
        if self.world > 1 and n % t.batch_size and len(batches[-1]) < self.world:
            batches = batches[:-1]  # a piece for every rank, or no step
        labels = self.dataset.labels("train") if self.uses_labels else None
        while loop.position < len(batches) and loop.step < self.total_steps:
            self.in_step = True
            if o.schedule != "constant":
                factor = lr_factor(
                    o.schedule, loop.step, self.total_steps, self.steps_per_epoch, o.decay,
                    o.min_lr_ratio,
                )  # fmt: skip
                set_lr_factor(self.learner.optimizers, factor)
            out, stop = self.train_step(batches[loop.position], labels)
            loop.step += 1
            loop.position += 1
            self.in_step = False
            self._call("on_train_batch_end", out)
            self._running(out)
            if on_step is not None:
                on_step(loop.step, out)
            if stop or (self.world == 1 and self._pending() is not None):
                raise KeyboardInterrupt
        if loop.position < len(batches):
            return  # max_steps reached mid-epoch
        loop.epoch += 1
        loop.position = 0
        loop.permutation = None
        if t.eval_every and loop.epoch % t.eval_every == 0:
            self.notes = []
            self._call("on_validation_end", self.validate())
        self._call("on_epoch_end")

    def _running(self, out: dict[str, float]) -> None:
        """Sum the step's metrics; every ``train.log_every`` steps hand their means to the
        callbacks' ``on_train_metrics``."""
        for key, value in out.items():
            self._sums[key] = self._sums.get(key, 0.0) + value
        self._count += 1
        if self.loop.step % self.cfg.train.log_every == 0:
            means = {k: v / self._count for k, v in self._sums.items()}
            self._sums, self._count = {}, 0
            self._call("on_train_metrics", means)

    def trained_run(self) -> TrainedRun:
        """The run as :func:`pyrogen.train` returns it (the learner as it is now)."""
        return TrainedRun(
            self.cfg, self.run_dir, self.dataset, self.learner, checkpoint=self.checkpoint_used
        )

    def train_step(
        self, idx: torch.Tensor, labels: torch.Tensor | None
    ) -> tuple[dict[str, float], bool]:
        """One optimiser step on the examples ``idx`` (this rank's piece of them); returns
        the step's metrics (global means under torchrun) and whether any rank was signalled."""
        idx = idx.to(self.device)
        if self.world > 1:  # this rank's piece of the global batch
            self.learner.global_batch_size = len(idx)
            idx = distributed.shard(idx)
        x = self.dataset.process(self.dataset.train[idx], self.noise_gen)
        y = None if labels is None else labels[idx]
        try:
            out = self.learner.step(x, y)
        except ValueError as e:  # a distribution's arguments became NaN or inf
            if not is_invalid_distribution(e) or self.world > 1:  # ranks must stay together
                raise
            out = {"loss": float("nan")}
        stop = False
        if self.world > 1:  # global means; any rank's signal stops every rank
            out, stop = distributed.reduce_step(
                out, len(x), self.learner.global_batch_size, self._pending() is not None
            )
        if not math.isfinite(out["loss"]):
            raise self.diverged(
                f"the training loss is {out['loss']} at step {self.loop.step + 1} "
                f"(epoch {self.loop.epoch + 1})"
            )
        return out, stop

    def validate(self) -> dict[str, float]:
        """Per-example validation metrics (:func:`evaluate_split`); non-finite ones stop the
        run as divergence."""
        t = self.cfg.train
        try:
            valid = evaluate_split(
                self.learner, self.dataset, "valid", t.eval_batch_size, labels=self.uses_labels
            )
        except ValueError as e:
            if not is_invalid_distribution(e):
                raise
            valid = {"loss": float("nan")}
        bad = [k for k, v in valid.items() if not math.isfinite(v)]
        if bad:
            raise self.diverged(
                f"validation {bad[0]} is not finite after epoch {self.loop.epoch} "
                f"(step {self.loop.step})"
            )
        return valid

    # ------------------------------------------------------------------ checkpoints
    @property
    def checkpoint_path(self) -> Path:
        return self.run_dir / CHECKPOINT

    def checkpoint_state(self) -> dict[str, Any]:
        """What a checkpoint holds: the learner, the loop, every random state, the config."""
        return {
            "family": self.stored.model.family,
            "config": self.stored.to_dict(),
            "learner": self.learner.state_dict(),
            "loop": dataclasses.asdict(self.loop),
            "rng": rng_state(self.data_gen, self.noise_gen),
        }

    def save_checkpoint(self, path: Path | None = None) -> None:
        """Write the state to ``path`` (default the last checkpoint), atomically and
        checksummed; refuse non-finite parameters (divergence). Every rank takes part."""
        path = self.checkpoint_path if path is None else path
        learner = self.learner
        finite = all_finite(learner.state_dict())
        if self.world > 1:  # every rank's random states and own learner state; all decide
            own = {"rng": rng_state(self.data_gen, self.noise_gen), "learner": learner.rank_state()}
            finite = distributed.all_agree(finite and all_finite(own["learner"]))
        if not finite:
            raise self.diverged(
                f"parameters or optimiser state became non-finite by step {self.loop.step} "
                f"(epoch {self.loop.epoch + 1})"
            )
        record = self.checkpoint_state()
        if self.world > 1:
            record["world_size"] = self.world
            record["ranks"] = distributed.all_gather_object(own)
        try:
            distributed.on_main(lambda: save_checkpoint(record, path))
        except OSError as e:
            raise self.output_error(e) from None
        if path == self.checkpoint_path:
            self.last_good = self.loop.step

    # ------------------------------------------------------------------ errors
    def last_checkpoint_text(self) -> str:
        if self.last_good is not None:
            return (
                f"the last checkpoint with finite parameters (step {self.last_good}) is "
                f"{self.checkpoint_path}"
            )
        if self.resumed_from is not None:
            return f"the checkpoint this run resumed from is kept in {self.resumed_from}"
        return "no checkpoint was written yet"

    def diverged(self, what: str) -> TrainingDiverged:
        return TrainingDiverged(f"{what}; training stopped: {self.last_checkpoint_text()}")

    def output_error(self, e: OSError, finished: bool = False, what: str = "") -> RunOutputError:
        """``e`` with the checkpoint that is intact: this run's last, or the one resumed."""
        if isinstance(e, RunOutputError):
            return e
        step = self.last_good
        if step is None and self.resumed_from is not None:
            step = self.resumed_step
        intact = self.checkpoint_path if step is not None else None
        return RunOutputError.from_error(e, self.run_dir, intact, step, finished, what)

    resumed_step: int | None = None

"""The run loop shared by the three families.

``train(cfg)`` builds the data set, the model and its learner (:mod:`pyrogen.build`), and only
then creates the run folder; it runs epochs of shuffled mini-batches (index slicing of
in-memory tensors). A run folder receives:

* ``config.yaml``: the resolved config; ``pyrogen train RUN_DIR/config.yaml`` reproduces it;
* ``metrics.jsonl`` (or ``.csv``): training metrics every ``train.log_every`` steps and
  validation metrics every ``train.eval_every`` epochs;
* ``checkpoint.pt``: model, optimiser(s), every RNG state, epoch, step and the position in
  the current epoch, and the config it belongs to; checksummed and written atomically;
* ``samples.png`` (and the family's figures).

Guarantees:

* **Divergence is honest**: a non-finite loss (in training or validation) or non-finite
  parameters stop the run with :class:`TrainingDiverged`, naming the step, the quantity and the
  last checkpoint with finite parameters (or saying there is none yet); a checkpoint is never
  written with non-finite parameters or optimiser state.
* **Interrupting is safe**: SIGINT (Ctrl-C) and SIGTERM stop at the next step boundary, write
  a checkpoint and raise :class:`KeyboardInterrupt`; ``train(cfg, resume=True)`` then ends with
  exactly the parameters of an uninterrupted run on the CPU.
* **A refused write is one error**: a full disk, a file-size limit or a lost permission while
  writing a checkpoint, metrics, TensorBoard events, the config and resume record of a resumed
  run, or the final figures raises :class:`~pyrogen.training.output.RunOutputError` (an
  ``OSError``) naming the file and the checkpoint that is intact (the previous one: checkpoints,
  config and records are replaced or appended whole, never left torn).

**Data parallelism.** Launched by ``torchrun`` with ``WORLD_SIZE > 1``, the same loop runs on
every rank (:mod:`pyrogen.training.distributed`): ``train.batch_size`` is the global batch,
each rank steps on its piece of it, with its own preprocessing and model noise, through the
learner's DDP modules; the step's metrics and the pending-signal flag are all-reduced after
every step, so every rank logs the same means, stops at the same step boundary and diverges
together. Rank 0 alone writes the run folder; checkpoints hold every rank's random states
and can be resumed with the same number of processes.
"""

from __future__ import annotations

import dataclasses
import math
import os
import signal
import threading
import time
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path
from typing import Any

import pyro
import torch

from pyrogen.build import build, resolve_device
from pyrogen.config import Config, ConfigError
from pyrogen.data import Dataset
from pyrogen.families import family_of
from pyrogen.inference.base import Learner, lr_factor, set_lr_factor
from pyrogen.progress import bar as progress_bar
from pyrogen.progress import interactive
from pyrogen.progress import line as progress_line
from pyrogen.runtime import cpu_settings
from pyrogen.training import distributed
from pyrogen.training.checkpoint import (
    CheckpointError,
    all_finite,
    check_checkpoint_contents,
    check_checkpoint_fits,
    fixed_differences,
    load_checkpoint,
    remove_orphans,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from pyrogen.training.folders import (
    BEST,
    CHECKPOINT,
    CONFIG,
    DATA,
    check_new_run_dir,
    claim_run_dir,
    default_run_dir,
    resolved_config,
    stored_config,
)
from pyrogen.training.metrics import MetricsWriter, TensorBoardLog, tensorboard_available
from pyrogen.training.output import RunOutputError, append_whole, write_atomic
from pyrogen.training.run import TrainedRun


class TrainingDiverged(RuntimeError):
    """A loss or parameter became NaN or infinite; the message names the step, the quantity
    and the last good checkpoint."""


@dataclass
class LoopState:
    """Where the run loop is: what a checkpoint must hold besides the learner."""

    epoch: int = 0  # epochs completed
    step: int = 0  # optimiser steps taken
    position: int = 0  # batches consumed in the current epoch
    permutation: torch.Tensor | None = None  # the current epoch's order of examples
    best: float | None = None  # the monitored validation metric's best value so far
    best_step: int | None = None  # the step of best.pt
    evals_since_best: int = 0  # validations without improvement (early stopping)


class TrainingInterrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM stopped the run at a step boundary; ``run_dir`` holds its state."""

    def __init__(self, run_dir: Path, saved: bool) -> None:
        super().__init__(str(run_dir))
        self.run_dir = run_dir
        self.saved = saved


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
    """While active, SIGINT and SIGTERM only set a flag, which the loop reads after each step
    (a signal in the middle of an optimiser update would leave half-updated parameters). A
    second signal interrupts at once, unless ``second_interrupts`` is false: under torchrun
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


def _checkpoint_state(
    cfg: Config,
    learner: Learner,
    loop: LoopState,
    data_gen: torch.Generator,
    noise_gen: torch.Generator | None = None,
) -> dict[str, Any]:
    return {
        "family": cfg.model.family,
        "config": cfg.to_dict(),
        "learner": learner.state_dict(),
        "loop": dataclasses.asdict(loop),
        "rng": rng_state(data_gen, noise_gen),
    }


def record_resume(run_dir: Path, old: dict[str, Any], cfg: Config, step: int) -> None:
    """Append what a resume changed to ``resumes.jsonl`` (config.yaml then holds the merged
    config, so the folder still says how the run was made)."""
    import json

    new = cfg.to_dict()
    changed = {}
    for section, values in new.items():
        for key, value in values.items():
            before = old.get(section, {}).get(key)
            if before != value:
                changed[f"{section}.{key}"] = [before, value]
    now = datetime.now().isoformat(timespec="seconds")
    record = {"time": now, "step": step, "changed": changed}
    append_whole(run_dir / "resumes.jsonl", (json.dumps(record) + "\n").encode())


def _save_user_data(data: Any, path: Path) -> None:
    """The user's arrays as given (``{"data": x}`` or their dict of splits), as ``.npz``."""
    import numpy as np

    arrays = data if isinstance(data, dict) else {"data": data}
    out = {}
    for key, value in arrays.items():
        if torch.is_tensor(value):
            value = value.detach().cpu().numpy()
        out[key] = np.asarray(value)
    with path.open("wb") as f:
        np.savez(f, **out)


def train(
    cfg: Config,
    run_dir: str | os.PathLike | None = None,
    resume: bool = False,
    quiet: bool = False,
    config_path: str | os.PathLike | None = None,
    on_step: Callable[[int, dict[str, float]], None] | None = None,
    data: Any = None,
    overwrite: bool | None = None,
) -> TrainedRun:
    """Train the model that ``cfg`` describes and return it as a :class:`TrainedRun`.

    ``data`` (a tensor, a numpy array, or a dict of ``train``/``valid``/``test`` arrays) trains
    on the user's own data instead of ``data.name``; splits missing from it are made with
    ``data.valid_fraction``/``data.test_fraction`` and ``train.seed``. The run folder keeps a
    copy (``data.npz``) and its checksum, so :func:`pyrogen.load` works on the run.

    A folder that already holds a run is refused (:class:`RunExistsError`) unless
    ``overwrite`` (default ``output.overwrite``) clears it first, or ``resume`` continues it
    from its last checkpoint. The returned run holds the best checkpoint's model when
    ``train.monitor`` kept one (``best.pt``), else the last.

    Example::

        >>> import pyrogen
        >>> cfg = pyrogen.load_config("configs/vae_digits.yaml", ["train.epochs=1"])
        >>> run = pyrogen.train(cfg, run_dir="runs/demo", quiet=True)  # doctest: +SKIP
        >>> run.sample(16).shape  # doctest: +SKIP
        torch.Size([16, 64])
    """
    overwrite = cfg.output.overwrite if overwrite is None else overwrite
    if resume and overwrite:
        raise ConfigError(
            "resume continues the run in its folder and overwrite replaces it: choose one"
        )
    if data is not None:
        cfg = replace(cfg, data=replace(cfg.data, name="array", path=None, checksum=None))
    device = resolve_device(cfg.train.device)
    with distributed.session(device):  # torchrun with WORLD_SIZE > 1: data-parallel
        return _train(cfg, run_dir, resume, quiet, config_path, on_step, data, device, overwrite)


def _train(
    cfg: Config,
    run_dir: str | os.PathLike | None,
    resume: bool,
    quiet: bool,
    config_path: str | os.PathLike | None,
    on_step: Callable[[int, dict[str, float]], None] | None,
    data: Any,
    device: torch.device,
    overwrite: bool,
) -> TrainedRun:
    world = distributed.world_size()
    main = distributed.is_main()
    quiet = quiet or not main  # rank 0 alone shows progress
    default_name = run_dir is None and cfg.output.name is None and not resume
    run_dir = Path(run_dir) if run_dir is not None else default_run_dir(cfg, config_path)
    if world > 1:  # rank 0's name (it holds a timestamp)
        run_dir = Path(distributed.broadcast_object(str(run_dir)))
    state = None
    if resume:
        cfg = resolved_config(cfg, run_dir)  # its own files, wherever the folder is now
        state = load_checkpoint(run_dir / CHECKPOINT, map_location=device)
        check_checkpoint_contents(state, run_dir / CHECKPOINT, resume=True)
        saved_world = int(state.get("world_size", 1))
        if saved_world != world:
            raise CheckpointError(
                f"{run_dir / CHECKPOINT} was written by a run on {saved_world} process(es); "
                f"resume it on {saved_world} (torchrun --nproc_per_node=...), not {world}: the "
                "order of the data and every rank's random streams depend on the number of "
                "processes"
            )
        if state.get("family") != cfg.family or not isinstance(state.get("config"), dict):
            check_checkpoint_fits(state, cfg, run_dir / CHECKPOINT)
        if cfg.data.standardize is None:  # auto: what the run was trained with
            saved = state["config"].get("data", {}).get("standardize")
            cfg = replace(cfg, data=replace(cfg.data, standardize=saved))
        changed = fixed_differences(state["config"], stored_config(cfg, run_dir).to_dict())
        if changed:
            raise ConfigError(
                "a resumed run cannot change what defines its model and data: "
                + "; ".join(changed[:4])
                + " (start a new run for that)"
            )
    else:
        distributed.main_first(lambda: check_new_run_dir(run_dir, overwrite))
    # rank 0 first: it downloads missing files, and its errors reach every rank
    dataset, learner = distributed.main_first(lambda: build(cfg, device, data=data))
    if dataset.checksum is not None and cfg.data.checksum is None:
        path = str(Path(cfg.data.path).resolve()) if cfg.data.path else None
        cfg = replace(cfg, data=replace(cfg.data, path=path, checksum=dataset.checksum))
    if cfg.data.standardize is None:  # the resolved auto value goes into config.yaml
        cfg = replace(cfg, data=replace(cfg.data, standardize=dataset.shift is not None))
    monitor = family_of(cfg).monitor_of(cfg)
    data_gen = torch.Generator().manual_seed(cfg.train.seed)  # the order of the examples
    noise_gen = data_gen  # the preprocessing's noise (binarisation, dequantisation)
    if world > 1:  # the same order on every rank; each rank its own noise and model draws
        noise_gen = torch.Generator().manual_seed(distributed.rank_seed(cfg.train.seed, "data"))
        pyro.set_rng_seed(distributed.rank_seed(cfg.train.seed, "model") % (1 << 32))
    loop = LoopState()
    if state is not None:
        check_checkpoint_contents(state, run_dir / CHECKPOINT, learner, resume=True)
        learner.load_state_dict(state["learner"])
        loop = LoopState(**state["loop"])
        n = dataset.train.shape[0]
        if loop.permutation is not None and not torch.equal(
            loop.permutation.long().sort().values.cpu(), torch.arange(n)
        ):
            raise CheckpointError(
                f"{run_dir / CHECKPOINT}: loop.permutation is not an order of the {n} training "
                "examples (was it edited or written by another version?)"
            )
        if world > 1:
            own = state["ranks"][distributed.rank()]
            set_rng_state(own["rng"], data_gen, noise_gen)
            learner.load_rank_state(own["learner"])
        else:
            set_rng_state(state["rng"], data_gen)
    t, o = cfg.train, cfg.optim
    n = dataset.train.shape[0]
    fixed_batches = getattr(learner, "fixed_batch_size", False)
    if world > 1:
        distributed.check_batches(t.batch_size, fixed_batches)
        learner.data_parallel()
    steps_per_epoch = n // t.batch_size if fixed_batches else math.ceil(n / t.batch_size)
    if not fixed_batches and 0 < n % t.batch_size < world:
        steps_per_epoch -= 1  # a last batch with fewer examples than processes is skipped
    if steps_per_epoch == 0:
        raise ConfigError(
            f"train.batch_size={t.batch_size} is larger than the {n} training examples, and "
            "this guide's baseline needs full batches: lower train.batch_size"
        )
    total = t.epochs * steps_per_epoch
    if t.max_steps is not None:
        total = min(total, t.max_steps)
    if state is not None and (loop.step >= total or loop.epoch >= t.epochs):
        raise ConfigError(
            f"{run_dir} has already reached its target (epoch {loop.epoch} of train.epochs="
            f"{t.epochs}, step {loop.step} of {total}): nothing to resume; raise train.epochs "
            "or train.max_steps to continue it"
        )
    if state is not None and t.early_stopping and loop.evals_since_best >= t.early_stopping:
        raise ConfigError(
            f"{run_dir} stopped early ({loop.evals_since_best} evaluations without a better "
            f"{monitor[0] if monitor else 'metric'}): raise train.early_stopping to continue it"
        )
    # everything that can fail on the user's input has been checked: the run starts
    distributed.barrier()  # every rank has read the run folder before rank 0 writes it

    def start_run_folder() -> Path:  # rank 0 alone writes the run folder
        folder = run_dir
        if state is None:
            folder = claim_run_dir(run_dir, overwrite, default_name)
        remove_orphans(folder, CHECKPOINT)
        remove_orphans(folder, BEST)
        if data is not None:
            _save_user_data(data, folder / DATA)
        return folder

    run_dir = Path(distributed.broadcast_object(str(distributed.on_main(start_run_folder))))
    if data is not None:
        cfg = replace(cfg, data=replace(cfg.data, path=str((run_dir / DATA).resolve())))
    stored = stored_config(cfg, run_dir)  # what config.yaml and the checkpoints hold

    def write_config() -> None:
        if state is not None:
            record_resume(run_dir, state["config"], stored, loop.step)
        write_atomic(run_dir / CONFIG, stored.to_yaml().encode())  # a failed write keeps the old

    try:
        distributed.on_main(write_config)
    except OSError as e:  # a resumed run's checkpoint is untouched
        intact = run_dir / CHECKPOINT if state is not None else None
        raise RunOutputError.from_error(e, run_dir, intact, loop.step) from None
    metrics = MetricsWriter(run_dir, cfg.output.metrics_format) if main else _NoMetrics()
    use_tensorboard = cfg.output.tensorboard
    board = (
        TensorBoardLog(run_dir)
        if main and (use_tensorboard or (use_tensorboard is None and tensorboard_available()))
        else None
    )
    uses_labels = family_of(cfg).uses_labels(cfg)
    train_labels = dataset.labels("train") if uses_labels else None
    show = not quiet and interactive()
    bar = progress_bar(total=total, initial=loop.step, quiet=quiet, desc=run_dir.name, leave=True)
    running: dict[str, float] = {}
    running_count = 0
    start_time = time.perf_counter()
    checkpoint_path = run_dir / CHECKPOINT
    last_good: list[int | None] = [None]

    def last_checkpoint_text() -> str:
        if last_good[0] is not None:
            return (
                f"the last checkpoint with finite parameters (step {last_good[0]}) is "
                f"{checkpoint_path}"
            )
        if state is not None:
            return f"the checkpoint this run resumed from is kept in {checkpoint_path}"
        return "no checkpoint was written yet"

    def output_error(e: OSError, finished: bool = False, what: str = "") -> RunOutputError:
        """``e`` with the checkpoint that is intact: this run's last, or the one resumed."""
        if isinstance(e, RunOutputError):
            return e
        step = last_good[0]
        if step is None and state is not None:
            step = int(state["loop"]["step"])
        intact = checkpoint_path if step is not None else None
        return RunOutputError.from_error(e, run_dir, intact, step, finished, what)

    def diverged(what: str) -> TrainingDiverged:
        return TrainingDiverged(f"{what}; training stopped: {last_checkpoint_text()}")

    def checkpoint(path: Path = checkpoint_path) -> None:
        learner_state = learner.state_dict()
        finite = all_finite(learner_state)
        if world > 1:  # every rank's random states and own learner state; all decide together
            own = {"rng": rng_state(data_gen, noise_gen), "learner": learner.rank_state()}
            finite = distributed.all_agree(finite and all_finite(own["learner"]))
        if not finite:
            raise diverged(
                f"parameters or optimiser state became non-finite by step {loop.step} (epoch "
                f"{loop.epoch + 1})"
            )
        record = _checkpoint_state(stored, learner, loop, data_gen, noise_gen)
        if world > 1:
            record["world_size"] = world
            record["ranks"] = distributed.all_gather_object(own)
        try:
            distributed.on_main(lambda: save_checkpoint(record, path))
        except OSError as e:
            raise output_error(e) from None
        if path == checkpoint_path:
            last_good[0] = loop.step

    def improved(valid: dict[str, float]) -> bool:
        """Update the best value of the monitored metric; whether this validation set it."""
        if monitor is None:
            return False
        name, mode = monitor
        value = valid[name]
        better = loop.best is None or (value > loop.best if mode == "max" else value < loop.best)
        if better:
            loop.best, loop.best_step, loop.evals_since_best = value, loop.step, 0
        else:
            loop.evals_since_best += 1
        return better

    def samples_figure_to_board() -> None:
        # its own random stream: the figure never shifts training's draws
        with own_stream(t.seed, f"tensorboard:{loop.step}", device):
            figure = TrainedRun(cfg, run_dir, dataset, learner).samples_figure()
        if figure is not None:
            board.figure("samples", figure, loop.step)

    in_step = [False]
    stopped_early = better = False
    num_parameters = sum(p.numel() for p in learner.module.parameters())
    with (
        stop_at_step_boundary(second_interrupts=world == 1) as pending_signal,
        cpu_settings(t.num_threads, num_parameters) as threads,
    ):
        try:
            while loop.epoch < t.epochs and loop.step < total and not stopped_early:
                if loop.permutation is None:
                    loop.permutation = torch.randperm(n, generator=data_gen)
                batches = loop.permutation.split(t.batch_size)
                if fixed_batches and n % t.batch_size:
                    batches = batches[:-1]  # the learner needs batches of one size
                if world > 1 and n % t.batch_size and len(batches[-1]) < world:
                    batches = batches[:-1]  # a piece for every rank, or no step
                while loop.position < len(batches) and loop.step < total:
                    in_step[0] = True
                    if o.schedule != "constant":
                        factor = lr_factor(
                            o.schedule, loop.step, total, steps_per_epoch, o.decay, o.min_lr_ratio
                        )
                        set_lr_factor(learner.optimizers, factor)
                    idx = batches[loop.position].to(device)
                    if world > 1:  # this rank's piece of the global batch
                        learner.global_batch_size = len(idx)
                        idx = distributed.shard(idx)
                    x = dataset.process(dataset.train[idx], noise_gen)
                    y = None if train_labels is None else train_labels[idx]
                    try:
                        out = learner.step(x, y)
                    except ValueError as e:  # a distribution's arguments became NaN or inf
                        bad = "invalid values" in str(e) or "nan" in str(e).lower()
                        if not bad or world > 1:  # a rank cannot leave the others' collectives
                            raise
                        out = {"loss": float("nan")}
                    stop = False
                    if world > 1:  # global means; any rank's signal stops every rank
                        out, stop = distributed.reduce_step(
                            out, len(x), learner.global_batch_size, pending_signal() is not None
                        )
                    if not math.isfinite(out["loss"]):
                        raise diverged(
                            f"the training loss is {out['loss']} at step {loop.step + 1} "
                            f"(epoch {loop.epoch + 1})"
                        )
                    loop.step += 1
                    loop.position += 1
                    in_step[0] = False
                    for key, value in out.items():
                        running[key] = running.get(key, 0.0) + value
                    running_count += 1
                    if loop.step % t.log_every == 0:
                        avg = {k: v / running_count for k, v in running.items()}
                        metrics.write(loop.step, loop.epoch + 1, "train", avg)
                        if board is not None:
                            board.write(loop.step, "train", avg)
                        running.clear()
                        running_count = 0
                        bar.set_postfix(loss=f"{avg['loss']:.4g}")
                    if on_step is not None:
                        on_step(loop.step, out)
                    bar.update(1)
                    if stop or (world == 1 and pending_signal() is not None):
                        raise KeyboardInterrupt
                if loop.position >= len(batches):  # the epoch is complete
                    loop.epoch += 1
                    loop.position = 0
                    loop.permutation = None
                    if t.eval_every and loop.epoch % t.eval_every == 0:
                        try:
                            valid = evaluate_split(
                                learner, dataset, "valid", t.eval_batch_size, labels=uses_labels
                            )
                        except ValueError as e:
                            if "invalid values" not in str(e) and "nan" not in str(e).lower():
                                raise
                            valid = {"loss": float("nan")}
                        bad = [k for k, v in valid.items() if not math.isfinite(v)]
                        if bad:
                            raise diverged(
                                f"validation {bad[0]} is not finite after epoch {loop.epoch} "
                                f"(step {loop.step})"
                            )
                        metrics.write(loop.step, loop.epoch, "valid", valid)
                        if board is not None:
                            board.write(loop.step, "valid", valid)
                            samples_figure_to_board()
                        text = f"epoch {loop.epoch}/{t.epochs} (step {loop.step}/{total}): " + (
                            ", ".join(f"valid {k} {v:.4g}" for k, v in valid.items())
                        )
                        better = improved(valid)
                        if better:
                            text += " (best so far)"
                        elif t.early_stopping and loop.evals_since_best >= t.early_stopping:
                            stopped_early = True
                            text += (
                                f"; stopping early: no better valid {monitor[0]} in "
                                f"{loop.evals_since_best} evaluations"
                            )
                        if show:
                            bar.write(text)
                        progress_line(text, quiet)
                    if t.checkpoint_every and loop.epoch % t.checkpoint_every == 0:
                        checkpoint()
                    if better:  # after the last: a failed best.pt write leaves it current
                        checkpoint(run_dir / BEST)
                        better = False
            checkpoint()
        except KeyboardInterrupt:
            saved = not in_step[0]
            if saved:  # at a step boundary: the state is resumable
                checkpoint()
            bar.close()
            raise TrainingInterrupted(run_dir, saved) from None
        except OSError as e:  # metrics, TensorBoard or checkpoint: a file of the run folder
            if e.filename is None or run_dir.resolve() not in Path(e.filename).resolve().parents:
                raise
            raise output_error(e) from None
        finally:
            bar.close()
            if board is not None:
                board.close()
    summary: dict[str, Any] = {
        "train_seconds": time.perf_counter() - start_time,
        "num_threads": threads,
    }
    if monitor is not None and loop.best is not None:  # numbers only (metrics.csv)
        summary.update({f"best_{monitor[0]}": loop.best, "best_step": loop.best_step})
    if stopped_early:
        summary["stopped_early"] = 1
    try:
        metrics.write(loop.step, loop.epoch, "summary", summary)
    except OSError as e:
        raise output_error(e, finished=True, what="the run's summary metrics") from None
    which = "last"
    if loop.best_step is not None and loop.best_step != loop.step:  # the best model, not the last
        learner.load_state_dict(load_checkpoint(run_dir / BEST, map_location=device)["learner"])
        which = "best"
    elif loop.best_step is not None:
        which = "best"
    run = TrainedRun(cfg, run_dir, dataset, learner, checkpoint=which)

    def figures() -> None:
        with cpu_settings(t.num_threads, num_parameters), own_stream(t.seed, "figures", device):
            run.save_figures()

    if cfg.output.figures:
        try:
            distributed.on_main(figures)
        except OSError as e:
            raise output_error(e, finished=True, what="the figures") from None
    return run


class _NoMetrics:
    """The metrics writer of ranks other than 0: rank 0 alone writes the run folder."""

    def write(self, *args: Any, **kwargs: Any) -> None:
        pass

"""``pyrogen.train``: from a config (and the user's data) to a run folder and a trained run.

:func:`train` checks everything that can fail on the user's input first (the run folder's
rules, a resumed checkpoint, the data and the model), then creates the run folder and hands
the learner to a :class:`~pyrogen.training.trainer.Trainer` with the callbacks the config asks
for (:func:`~pyrogen.training.callbacks.default_callbacks`) and the user's own. A run folder
receives:

* ``config.yaml``: the resolved config; ``pyrogen train RUN_DIR/config.yaml`` reproduces it;
* ``metrics.jsonl`` (or ``.csv``): training metrics every ``train.log_every`` steps and
  validation metrics every ``train.eval_every`` epochs;
* ``checkpoint.pt`` (the last state) and ``best.pt`` (the best validation of
  ``train.monitor``): model, optimiser(s), every RNG state, epoch, step and the position in
  the current epoch, and the config it belongs to; checksummed and written atomically;
* ``samples.png`` (and the family's figures).

Guarantees (the Trainer's, see :mod:`pyrogen.training.trainer`): divergence is honest,
interrupting is safe (``train(cfg, resume=True)`` then ends with exactly the parameters of an
uninterrupted run on the CPU), and a refused write is one error:
:class:`~pyrogen.training.output.RunOutputError` (an ``OSError``) naming the file and the
checkpoint that is intact.

**Data parallelism.** Launched by ``torchrun`` with ``WORLD_SIZE > 1``, the same loop runs on
every rank (:mod:`pyrogen.parallel.distributed`): ``train.batch_size`` is the global batch,
each rank steps on its piece of it, with its own preprocessing and model noise, through the
learner's DDP modules; the step's metrics and the pending-signal flag are all-reduced after
every step, so every rank logs the same means, stops at the same step boundary and diverges
together. Rank 0 alone writes the run folder; checkpoints hold every rank's random states
and can be resumed with the same number of processes.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from dataclasses import replace
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import pyro
import torch

from pyrogen.build import build
from pyrogen.config import Config, ConfigError, ProgramModelConfig
from pyrogen.families import family_of
from pyrogen.families.program import program_needed
from pyrogen.models.program import qualified_name
from pyrogen.parallel import distributed
from pyrogen.runtime import cpu_settings, resolve_device, tensorboard_available
from pyrogen.training.callbacks import default_callbacks
from pyrogen.training.checkpoint import (
    CheckpointError,
    check_checkpoint_contents,
    check_checkpoint_fits,
    fixed_differences,
    load_checkpoint,
    remove_orphans,
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
from pyrogen.training.output import RunOutputError, append_whole, write_atomic
from pyrogen.training.run import TrainedRun
from pyrogen.training.trainer import (
    Callback,
    LoopState,
    Trainer,
    TrainingDiverged,
    TrainingInterrupted,
    evaluate_split,
    own_stream,
    steps_per_epoch,
    stop_at_step_boundary,
)

__all__ = [
    "LoopState",
    "Trainer",
    "TrainingDiverged",
    "TrainingInterrupted",
    "evaluate_split",
    "own_stream",
    "stop_at_step_boundary",
    "train",
]


def record_resume(run_dir: Path, old: dict[str, Any], cfg: Config, step: int) -> None:
    """Append what a resume changed to ``resumes.jsonl`` (config.yaml then holds the merged
    config, so the folder still says how the run was made)."""
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


def with_context(data: Any, context: Any) -> dict[str, Any]:
    """The user's ``data`` and continuous ``context`` as one dict of arrays
    (``{"data": x, "context": c}``, or the splits with ``<split>_context``)."""
    if data is None:
        raise TypeError("pyrogen.train: context= is the context of data=: pass data= too")
    if not isinstance(data, dict):
        return {"data": data, "context": context}
    if "data" in data:
        return {**data, "context": context}
    if not isinstance(context, dict) or set(context) != set(data) & {"train", "valid", "test"}:
        splits = sorted(set(data) & {"train", "valid", "test"})
        raise TypeError(
            f"pyrogen.train: data= is a dict of splits {splits}: give context= as a dict of "
            "the same splits"
        )
    return {**data, **{f"{s}_context": c for s, c in context.items()}}


def _save_user_data(data: Any, path: Path) -> None:
    """The user's arrays as given (``{"data": x}`` or their dict of splits), as ``.npz``."""
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
    callbacks: Sequence[Callback] = (),
    model: torch.nn.Module | None = None,
    guide: torch.nn.Module | None = None,
    context: Any = None,
) -> TrainedRun:
    """Train the model that ``cfg`` describes and return it as a :class:`TrainedRun`.

    ``data`` (a tensor, a numpy array, or a dict of ``train``/``valid``/``test`` arrays) trains
    on the user's own data instead of ``data.name``; splits missing from it are made with
    ``data.valid_fraction``/``data.test_fraction`` and ``train.seed``. The run folder keeps a
    copy (``data.npz``) and its checksum, so :func:`pyrogen.load` works on the run.
    ``context`` (with ``data``): a continuous context c for a conditional model
    (``model.conditional=true``), one row per example of ``data`` (``(N, C)`` or ``(N,)``),
    or a dict of the same splits as ``data``; the model learns p(x | c).

    A folder that already holds a run is refused (:class:`RunExistsError`) unless
    ``overwrite`` (default ``output.overwrite``) clears it first, or ``resume`` continues it
    from its last checkpoint. The returned run holds the best checkpoint's model when
    ``train.monitor`` kept one (``best.pt``), else the last. ``callbacks``: the user's own
    :class:`~pyrogen.training.callbacks.Callback` objects, called after pyrogen's (metrics,
    TensorBoard, progress, checkpoints, early stopping, figures).

    ``model`` and ``guide``: a Pyro program of your own, ``nn.Module``\\ s whose
    ``forward(x)`` are Pyro programs with the batch in ``pyro.plate("data", x.shape[0])``,
    trained with ``cfg``'s ``elbo``, ``optim``, ``train`` and ``output`` sections
    (``model.family=program``; the run records the classes' names, and
    ``data.standardize`` left null is off: the program sees the values given). A program run
    is resumed and loaded with the pair given again.

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
    if context is not None:
        data = with_context(data, context)
    if data is not None:
        cfg = replace(cfg, data=replace(cfg.data, name="array", path=None, checksum=None))
    program = None
    if model is not None or guide is not None:
        if model is None:
            raise TypeError("pyrogen.train: guide= needs the model it guides: pass model= too")
        names = {"model_class": qualified_name(model), "guide_class": qualified_name(guide)}
        cfg = replace(cfg, model=ProgramModelConfig(**names))
        if cfg.data.standardize is None:  # the program sees the values it is given
            cfg = replace(cfg, data=replace(cfg.data, standardize=False))
        program = (model, guide)
    elif family_of(cfg).from_python:
        raise ConfigError(program_needed(cfg, run_dir, resume))
    device = resolve_device(cfg.train.device)
    with distributed.session(device):  # torchrun with WORLD_SIZE > 1: data-parallel
        return _train(
            cfg, run_dir, resume, quiet, config_path, on_step, data, device, overwrite,
            callbacks, program,
        )  # fmt: skip


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
    callbacks: Sequence[Callback] = (),
    program: tuple[torch.nn.Module, torch.nn.Module | None] | None = None,
) -> TrainedRun:
    world = distributed.world_size()
    quiet = quiet or not distributed.is_main()  # rank 0 alone shows progress
    default_name = run_dir is None and cfg.output.name is None and not resume
    run_dir = Path(run_dir) if run_dir is not None else default_run_dir(cfg, config_path)
    if world > 1:  # rank 0's name (it holds a timestamp)
        run_dir = Path(distributed.broadcast_object(str(run_dir)))
    state = None
    if resume:
        cfg, state = _open_resumed(cfg, run_dir, device, world)
    else:
        distributed.main_first(lambda: check_new_run_dir(run_dir, overwrite))
    # rank 0 first: it downloads missing files, and its errors reach every rank
    dataset, learner = distributed.main_first(
        lambda: build(cfg, device, data=data, program=program)
    )
    cfg = _with_data_facts(cfg, dataset)
    monitor = family_of(cfg).monitor_of(cfg)
    data_gen = torch.Generator().manual_seed(cfg.train.seed)  # the order of the examples
    noise_gen = data_gen  # the preprocessing's noise (binarisation, dequantisation)
    if world > 1:  # the same order on every rank; each rank its own noise and model draws
        noise_gen = torch.Generator().manual_seed(distributed.rank_seed(cfg.train.seed, "data"))
        pyro.set_rng_seed(distributed.rank_seed(cfg.train.seed, "model") % (1 << 32))
    loop = LoopState()
    if state is not None:
        loop = _restore(state, run_dir / CHECKPOINT, learner, dataset, data_gen, noise_gen)
    if world > 1:
        distributed.check_batches(cfg.train.batch_size, getattr(learner, "fixed_batch_size", False))
        learner.data_parallel()
    _check_steps_left(cfg, dataset, learner, loop, state is not None, run_dir, monitor)
    # everything that can fail on the user's input has been checked: the run starts
    distributed.barrier()  # every rank has read the run folder before rank 0 writes it
    fresh = state is None
    run_dir = _start_folder(run_dir, fresh, overwrite, default_name, data)
    if data is not None:
        cfg = replace(cfg, data=replace(cfg.data, path=str((run_dir / DATA).resolve())))
    stored = stored_config(cfg, run_dir)  # what config.yaml and the checkpoints hold
    _write_config(run_dir, stored, None if fresh else state["config"], loop.step)
    use_tensorboard = cfg.output.tensorboard
    tensorboard = use_tensorboard or (use_tensorboard is None and tensorboard_available())
    trainer = Trainer(
        cfg,
        stored,
        run_dir,
        dataset,
        learner,
        callbacks=[*default_callbacks(cfg, monitor, quiet, tensorboard), *callbacks],
        loop=loop,
        data_gen=data_gen,
        noise_gen=noise_gen,
        uses_labels=family_of(cfg).uses_labels(cfg),
        resumed_from=None if fresh else run_dir / CHECKPOINT,
    )
    trainer.resumed_step = None if fresh else loop.step
    num_parameters = sum(p.numel() for p in learner.module.parameters())
    with cpu_settings(cfg.train.num_threads, num_parameters) as threads:
        trainer.num_threads = threads
        trainer.fit(on_step)
    return trainer.trained_run()


def _open_resumed(
    cfg: Config, run_dir: Path, device: torch.device, world: int
) -> tuple[Config, dict[str, Any]]:
    """The config of a resumed run (its files found where the folder is now; the automatic
    choices it was trained with) and its last checkpoint, refused in one line if it does not
    fit: written by another number of processes, another family, or a change to what
    defines the model and data."""
    path = run_dir / CHECKPOINT
    cfg = resolved_config(cfg, run_dir)  # its own files, wherever the folder is now
    state = load_checkpoint(path, map_location=device)
    check_checkpoint_contents(state, path, resume=True)
    saved_world = int(state.get("world_size", 1))
    if saved_world != world:
        raise CheckpointError(
            f"{path} was written by a run on {saved_world} process(es); resume it on "
            f"{saved_world} (torchrun --nproc_per_node=...), not {world}: the order of the data "
            "and every rank's random streams depend on the number of processes"
        )
    if state.get("family") != cfg.family or not isinstance(state.get("config"), dict):
        check_checkpoint_fits(state, cfg, path)
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
    return cfg, state


def _with_data_facts(cfg: Config, dataset: Any) -> Config:
    """``cfg`` with what the data told: the user's file by its absolute path and checksum,
    and ``data.standardize`` resolved (config.yaml records it)."""
    d = cfg.data
    if dataset.checksum is not None and d.checksum is None:
        path = str(Path(d.path).resolve()) if d.path else None
        d = replace(d, path=path, checksum=dataset.checksum)
    if d.standardize is None:
        d = replace(d, standardize=dataset.shift is not None)
    return replace(cfg, data=d)


def _restore(
    state: dict[str, Any],
    path: Path,
    learner: Any,
    dataset: Any,
    data_gen: torch.Generator,
    noise_gen: torch.Generator,
) -> LoopState:
    """Put the learner, the loop and every random stream where the checkpoint has them."""
    check_checkpoint_contents(state, path, learner, resume=True)
    learner.load_state_dict(state["learner"])
    loop = LoopState(**state["loop"])
    n = dataset.train.shape[0]
    if loop.permutation is not None and not torch.equal(
        loop.permutation.long().sort().values.cpu(), torch.arange(n)
    ):
        raise CheckpointError(
            f"{path}: loop.permutation is not an order of the {n} training examples (was it "
            "edited or written by another version?)"
        )
    if distributed.is_distributed():
        own = state["ranks"][distributed.rank()]
        set_rng_state(own["rng"], data_gen, noise_gen)
        learner.load_rank_state(own["learner"])
    else:
        set_rng_state(state["rng"], data_gen)
    return loop


def _check_steps_left(
    cfg: Config,
    dataset: Any,
    learner: Any,
    loop: LoopState,
    resumed: bool,
    run_dir: Path,
    monitor: tuple[str, str] | None,
) -> None:
    """Refuse a batch size no step can be made with, and a resumed run with nothing left to
    do (its target reached, or stopped early with the same patience)."""
    t = cfg.train
    n = dataset.train.shape[0]
    fixed = getattr(learner, "fixed_batch_size", False)
    per_epoch = steps_per_epoch(n, t.batch_size, fixed, distributed.world_size())
    if per_epoch == 0:
        raise ConfigError(
            f"train.batch_size={t.batch_size} is larger than the {n} training examples, and "
            "this guide's baseline needs full batches: lower train.batch_size"
        )
    total = t.epochs * per_epoch if t.max_steps is None else min(t.epochs * per_epoch, t.max_steps)
    if resumed and (loop.step >= total or loop.epoch >= t.epochs):
        raise ConfigError(
            f"{run_dir} has already reached its target (epoch {loop.epoch} of train.epochs="
            f"{t.epochs}, step {loop.step} of {total}): nothing to resume; raise train.epochs "
            "or train.max_steps to continue it"
        )
    if resumed and t.early_stopping and loop.evals_since_best >= t.early_stopping:
        raise ConfigError(
            f"{run_dir} stopped early ({loop.evals_since_best} evaluations without a better "
            f"{monitor[0] if monitor else 'metric'}): raise train.early_stopping to continue it"
        )


def _start_folder(
    run_dir: Path, fresh: bool, overwrite: bool, default_name: bool, data: Any
) -> Path:
    """Rank 0 claims (a new run) or reopens (a resumed one) the run folder and saves the
    user's arrays there; every rank gets the folder's final name."""

    def start() -> str:
        folder = claim_run_dir(run_dir, overwrite, default_name) if fresh else run_dir
        remove_orphans(folder, CHECKPOINT)
        remove_orphans(folder, BEST)
        if data is not None:
            _save_user_data(data, folder / DATA)
        return str(folder)

    return Path(distributed.broadcast_object(distributed.on_main(start)))


def _write_config(
    run_dir: Path, stored: Config, resumed_config: dict[str, Any] | None, step: int
) -> None:
    """config.yaml (atomically) and, for a resumed run, what the resume changed."""

    def write() -> None:
        if resumed_config is not None:
            record_resume(run_dir, resumed_config, stored, step)
        write_atomic(run_dir / CONFIG, stored.to_yaml().encode())  # a failed write keeps the old

    try:
        distributed.on_main(write)
    except OSError as e:  # a resumed run's checkpoint is untouched
        intact = run_dir / CHECKPOINT if resumed_config is not None else None
        raise RunOutputError.from_error(e, run_dir, intact, step) from None

"""The run loop shared by the three families.

``train(cfg)`` loads the data set onto the training device, builds the model and its learner
(:mod:`pyrogen.build`), then runs epochs of shuffled mini-batches (index slicing of in-memory
tensors). A run folder receives:

* ``config.yaml``: the resolved config; ``pyrogen train RUN_DIR/config.yaml`` reproduces it;
* ``metrics.jsonl`` (or ``.csv``): training metrics every ``train.log_every`` steps and
  validation metrics every ``train.eval_every`` epochs;
* ``checkpoint.pt``: model, optimiser(s), every RNG state, epoch, step and the position in
  the current epoch, written atomically;
* ``samples.png`` (and ``density.png`` for 2-D data): figures of the trained model.

A non-finite loss stops the run with :class:`TrainingDiverged`, naming the step; the last
good checkpoint stays on disk. ``train(cfg, resume=run_dir)`` continues a run; on CPU the
resumed run ends with exactly the parameters of an uninterrupted one.
"""

from __future__ import annotations

import csv
import json
import math
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import pyro
import torch
from tqdm.auto import tqdm

from pyrogen.build import build, resolve_device
from pyrogen.checkpoint import load_checkpoint, rng_state, save_checkpoint, set_rng_state
from pyrogen.config import Config, load_config, save_config
from pyrogen.data import Dataset
from pyrogen.inference.base import Learner

CHECKPOINT = "checkpoint.pt"
CONFIG = "config.yaml"


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; the message names the step."""


@dataclass
class LoopState:
    """Where the run loop is: what a checkpoint must hold besides the learner."""

    epoch: int = 0  # epochs completed
    step: int = 0  # optimiser steps taken
    position: int = 0  # batches consumed in the current epoch
    permutation: torch.Tensor | None = None  # the current epoch's order of examples


class MetricsWriter:
    """Appends metric records to ``metrics.jsonl`` (one JSON object a line) or
    ``metrics.csv`` (long format: step, epoch, split, name, value)."""

    def __init__(self, run_dir: Path, fmt: str) -> None:
        self.fmt = fmt
        self.path = run_dir / f"metrics.{fmt}"
        if fmt == "csv" and not self.path.exists():
            with self.path.open("w", newline="") as f:
                csv.writer(f).writerow(["step", "epoch", "split", "name", "value"])

    def write(self, step: int, epoch: int, split: str, metrics: dict[str, float]) -> None:
        with self.path.open("a", newline="") as f:
            if self.fmt == "jsonl":
                record = {"step": step, "epoch": epoch, "split": split, **metrics}
                f.write(json.dumps(record) + "\n")
            else:
                w = csv.writer(f)
                for name, value in metrics.items():
                    w.writerow([step, epoch, split, name, value])


def read_metrics(run_dir: str | os.PathLike) -> list[dict[str, Any]]:
    """The records of a run's ``metrics.jsonl`` (or ``metrics.csv``, regrouped)."""
    run_dir = Path(run_dir)
    if (run_dir / "metrics.jsonl").exists():
        lines = (run_dir / "metrics.jsonl").read_text().splitlines()
        return [json.loads(line) for line in lines if line.strip()]
    records: dict[tuple, dict[str, Any]] = {}
    with (run_dir / "metrics.csv").open() as f:
        for row in csv.DictReader(f):
            key = (int(row["step"]), int(row["epoch"]), row["split"])
            rec = records.setdefault(key, {"step": key[0], "epoch": key[1], "split": key[2]})
            rec[row["name"]] = float(row["value"])
    return list(records.values())


def make_run_dir(cfg: Config, config_path: str | os.PathLike | None = None) -> Path:
    """``output.dir/output.name``, or ``output.dir/<config stem>-<timestamp>``."""
    name = cfg.output.name
    if name is None:
        stem = Path(config_path).stem if config_path else cfg.model.family
        name = f"{stem}-{datetime.now().strftime('%Y%m%d-%H%M%S')}"
    run_dir = Path(cfg.output.dir) / name
    run_dir.mkdir(parents=True, exist_ok=True)
    return run_dir


def evaluate_split(
    learner: Learner, dataset: Dataset, split: str, batch_size: int, seed: int = 0
) -> dict[str, float]:
    """Per-example means of ``learner.evaluate`` over a whole split (fixed preprocessing
    noise drawn from ``seed``, so repeated evaluations compare like with like)."""
    x_all, y_all = dataset.split(split), dataset.labels(split)
    gen = torch.Generator().manual_seed(seed)
    totals: dict[str, float] = {}
    n = x_all.shape[0]
    for start in range(0, n, batch_size):
        x = dataset.process(x_all[start : start + batch_size], gen)
        y = None if y_all is None else y_all[start : start + batch_size]
        for key, value in learner.evaluate(x, y).items():
            totals[key] = totals.get(key, 0.0) + value * x.shape[0]
    return {key: value / n for key, value in totals.items()}


def _uses_labels(cfg: Config) -> bool:
    return bool(getattr(cfg.model, "conditional", False))


def _checkpoint_state(
    cfg: Config, learner: Learner, loop: LoopState, data_gen: torch.Generator
) -> dict[str, Any]:
    return {
        "format": 1,
        "family": cfg.model.family,
        "learner": learner.state_dict(),
        "loop": {
            "epoch": loop.epoch,
            "step": loop.step,
            "position": loop.position,
            "permutation": loop.permutation,
        },
        "rng": rng_state(data_gen),
    }


def train(
    cfg: Config,
    run_dir: str | os.PathLike | None = None,
    resume: bool = False,
    quiet: bool = False,
    config_path: str | os.PathLike | None = None,
    on_step: Callable[[int, dict[str, float]], None] | None = None,
) -> TrainedRun:
    """Train the model that ``cfg`` describes and return it as a :class:`TrainedRun`.

    Example::

        >>> import pyrogen
        >>> cfg = pyrogen.load_config("configs/vae_digits.yaml", ["train.epochs=1"])
        >>> run = pyrogen.train(cfg, run_dir="runs/demo", quiet=True)  # doctest: +SKIP
        >>> run.sample(16).shape  # doctest: +SKIP
        torch.Size([16, 64])
    """
    run_dir = Path(run_dir) if run_dir is not None else make_run_dir(cfg, config_path)
    run_dir.mkdir(parents=True, exist_ok=True)
    device = resolve_device(cfg.train.device)
    pyro.clear_param_store()
    dataset, learner = build(cfg, device)
    data_gen = torch.Generator().manual_seed(cfg.train.seed)
    loop = LoopState()
    if resume:
        state = load_checkpoint(run_dir / CHECKPOINT, map_location=device)
        learner.load_state_dict(state["learner"])
        loop = LoopState(**state["loop"])
        set_rng_state(state["rng"], data_gen)
    else:
        save_config(cfg, run_dir / CONFIG)
    metrics = MetricsWriter(run_dir, cfg.output.metrics_format)
    t = cfg.train
    n = dataset.train.shape[0]
    if getattr(learner, "fixed_batch_size", False):
        steps_per_epoch = n // t.batch_size
    else:
        steps_per_epoch = math.ceil(n / t.batch_size)
    total = t.epochs * steps_per_epoch
    if t.max_steps is not None:
        total = min(total, t.max_steps)
    train_labels = dataset.labels("train") if _uses_labels(cfg) else None
    show = not quiet and sys.stderr.isatty()
    bar = tqdm(total=total, initial=loop.step, disable=not show, desc=run_dir.name, leave=True)
    running: dict[str, float] = {}
    start_time = time.perf_counter()

    def checkpoint() -> None:
        save_checkpoint(_checkpoint_state(cfg, learner, loop, data_gen), run_dir / CHECKPOINT)

    try:
        while loop.epoch < t.epochs and loop.step < total:
            if loop.permutation is None:
                loop.permutation = torch.randperm(n, generator=data_gen)
            batches = loop.permutation.split(t.batch_size)
            if getattr(learner, "fixed_batch_size", False) and n % t.batch_size:
                batches = batches[:-1]  # the learner needs batches of one size
            while loop.position < len(batches) and loop.step < total:
                idx = batches[loop.position].to(device)
                x = dataset.process(dataset.train[idx], data_gen)
                y = None if train_labels is None else train_labels[idx]
                try:
                    out = learner.step(x, y)
                except ValueError as e:  # a distribution's arguments became NaN or inf
                    if "invalid values" not in str(e):
                        raise
                    out = {"loss": float("nan")}
                if not math.isfinite(out["loss"]):
                    raise TrainingDiverged(
                        f"loss is {out['loss']} at step {loop.step + 1} (epoch "
                        f"{loop.epoch + 1}); training stopped, the last good checkpoint "
                        f"in {run_dir} is kept"
                    )
                loop.step += 1
                loop.position += 1
                for key, value in out.items():
                    running[key] = running.get(key, 0.0) + value
                if loop.step % t.log_every == 0:
                    avg = {k: v / t.log_every for k, v in running.items()}
                    metrics.write(loop.step, loop.epoch, "train", avg)
                    running.clear()
                    bar.set_postfix(loss=f"{avg['loss']:.4g}")
                if on_step is not None:
                    on_step(loop.step, out)
                bar.update(1)
            if loop.position >= len(batches):  # the epoch is complete
                loop.epoch += 1
                loop.position = 0
                loop.permutation = None
                if t.eval_every and loop.epoch % t.eval_every == 0:
                    valid = evaluate_split(learner, dataset, "valid", t.eval_batch_size)
                    metrics.write(loop.step, loop.epoch, "valid", valid)
                    bar.write(
                        f"epoch {loop.epoch}: "
                        + ", ".join(f"valid {k} {v:.4g}" for k, v in valid.items())
                    ) if show else None
                if t.checkpoint_every and loop.epoch % t.checkpoint_every == 0:
                    checkpoint()
        checkpoint()
    except KeyboardInterrupt:
        checkpoint()  # the state after the last finished step: resumable
        bar.close()
        raise
    bar.close()
    metrics.write(
        loop.step, loop.epoch, "summary", {"train_seconds": time.perf_counter() - start_time}
    )
    run = TrainedRun(cfg, run_dir, dataset, learner)
    run.save_figures()
    return run


class TrainedRun:
    """A trained model with its data set and run folder: the common face of the three
    families. ``sample(n)`` draws from the model; ``model`` is its Pyro program."""

    def __init__(self, cfg: Config, run_dir: Path, dataset: Dataset, learner: Learner) -> None:
        self.cfg = cfg
        self.run_dir = Path(run_dir)
        self.dataset = dataset
        self.learner = learner

    @property
    def family(self) -> str:
        return self.cfg.model.family

    @property
    def model(self) -> torch.nn.Module:
        """The generative process: a Pyro model (``poutine.trace``, ``Predictive``...)."""
        return self.learner.model

    @torch.no_grad()
    def sample(self, n: int) -> torch.Tensor:
        """``n`` draws in the data set's stored space (e.g. images in [0, 1])."""
        self.learner.module.eval()
        return self.dataset.to_data_space(self.model.sample(n))

    @torch.no_grad()
    def save_figures(self, num_samples: int | None = None) -> list[Path]:
        """Sample grid (images) or samples over data and a density heat-map (2-D)."""
        from pyrogen.evaluation import plots

        n = num_samples or self.cfg.output.num_samples
        paths = []
        samples = self.sample(n if self.dataset.kind == "image" else max(n, 2000))
        if self.dataset.kind == "image":
            path = self.run_dir / "samples.png"
            plots.save_image_grid(samples, self.dataset.image_shape, path)
            paths.append(path)
            if self.family == "vae":
                from pyrogen.evaluation.vae_figures import save_vae_figures

                x = self.dataset.process(self.dataset.test[:16], torch.Generator().manual_seed(0))
                paths += save_vae_figures(
                    self.model, self.learner.guide, x, self.dataset.image_shape, self.run_dir
                )
        elif samples.shape[-1] == 2:
            path = self.run_dir / "samples.png"
            lim = float(self.dataset.test.abs().max()) * 1.1
            plots.save_points(samples, path, data=self.dataset.test, lim=lim)
            paths.append(path)
            log_prob = getattr(self.model, "log_prob", None)
            if log_prob is not None and getattr(self.model, "has_inverse", True):
                path = self.run_dir / "density.png"
                plots.save_density(
                    log_prob, path, data=self.dataset.test, lim=lim, device=samples.device
                )
                paths.append(path)
        return paths


def load(run_dir: str | os.PathLike, device: str | None = None) -> TrainedRun:
    """Rebuild a trained run from its folder (config + checkpoint; no code executed)."""
    run_dir = Path(run_dir)
    cfg = load_config(run_dir / CONFIG)
    dev = resolve_device(device or cfg.train.device)
    dataset, learner = build(cfg, dev)
    state = load_checkpoint(run_dir / CHECKPOINT, map_location=dev)
    learner.load_state_dict(state["learner"])
    return TrainedRun(cfg, run_dir, dataset, learner)

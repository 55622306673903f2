"""A trained model with its data and run folder: the common face of the three families."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from pyrogen.config import Config
from pyrogen.data import Dataset
from pyrogen.families import family_of
from pyrogen.inference.base import Learner

CHECKPOINT = "checkpoint.pt"
CONFIG = "config.yaml"
DATA = "data.npz"  # the user's arrays, when a run was trained from Python


class TrainedRun:
    """A trained model with its data set and run folder. ``sample(n)`` draws from the model
    (in the data set's stored space); ``model`` is its Pyro program."""

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
        """The generative process: a Pyro model (``poutine.trace``, ``Predictive``, ``SVI``)."""
        return self.learner.model

    def summary(self) -> dict[str, float]:
        """The last validation metrics of the run (or, without validation, the last training
        metrics), as written to its metrics file."""
        from pyrogen.training.metrics import read_metrics

        records = read_metrics(self.run_dir)
        for split in ("valid", "train"):
            rows = [r for r in records if r["split"] == split]
            if rows:
                last = rows[-1]
                return {
                    f"{split} {k}": v
                    for k, v in last.items()
                    if k not in ("step", "epoch", "split") and isinstance(v, int | float)
                }
        return {}

    @torch.no_grad()
    def sample(self, n: int) -> torch.Tensor:
        """``n`` draws x ~ p(x) of the model, in the data set's stored space (e.g. images in
        [0, 1]; binary images for a VAE with a Bernoulli likelihood)."""
        self.learner.module.eval()
        return self.dataset.to_data_space(self.model.sample(n))

    @torch.no_grad()
    def sample_means(self, n: int) -> torch.Tensor:
        """For a VAE, ``n`` decoder means E[x | z], z ~ p(z) (not samples of the model: often
        shown in figures); for the other families, samples."""
        self.learner.module.eval()
        means = getattr(self.model, "sample_mean", self.model.sample)
        return self.dataset.to_data_space(means(n))

    @torch.no_grad()
    def samples_figure(self, num_samples: int | None = None):
        """A figure of the model's samples: an image grid, or samples over the test data in
        2-D (``None`` for other points)."""
        from pyrogen.evaluation import plots

        ds = self.dataset
        n = num_samples or self.cfg.output.num_samples
        if ds.kind == "image":
            title = f"{n} samples x ~ p(x) of the {self.family}"
            return plots.image_grid_figure(self.sample(n), ds.image_shape, title=title)
        if ds.num_dims == 2:
            lim = float(ds.test.abs().max()) * 1.1
            title = f"{max(n, 2000)} samples of the {self.family}"
            return plots.points_figure(self.sample(max(n, 2000)), ds.test, title, lim)
        return None

    @torch.no_grad()
    def save_figures(self, num_samples: int | None = None) -> list[Path]:
        """``samples.png`` (an image grid, or samples over the data in 2-D), ``curves.png``
        (the metrics against the step) and the family's own figures."""
        from pyrogen.evaluation import plots
        from pyrogen.training.metrics import read_metrics

        paths = []
        figure = self.samples_figure(num_samples)
        if figure is not None:
            figure.savefig(self.run_dir / "samples.png", dpi=100, bbox_inches="tight")
            paths.append(self.run_dir / "samples.png")
        curves = self.run_dir / "curves.png"
        if plots.save_curves(read_metrics(self.run_dir), curves, title=self.run_dir.name):
            paths.append(curves)
        return paths + family_of(self.cfg).figures(self, self.run_dir)


def load(run_dir: str | os.PathLike, device: str | None = None, data: object = None) -> TrainedRun:
    """Rebuild a trained run from its folder (config + checkpoint; no code executed).

    A run trained on an array passed from Python reads it back from the run folder's
    ``data.npz`` (or from ``data``, which must be the same array)."""
    from pyrogen.build import build, resolve_device
    from pyrogen.config import load_config
    from pyrogen.training.checkpoint import (
        check_checkpoint_contents,
        check_checkpoint_fits,
        load_checkpoint,
    )

    run_dir = Path(run_dir)
    cfg = load_config(run_dir / CONFIG)
    cfg = with_run_data(cfg, run_dir)
    dev = resolve_device(device or cfg.train.device, "--device" if device else "train.device")
    path = run_dir / CHECKPOINT
    state = load_checkpoint(path, map_location=dev)
    check_checkpoint_contents(state, path)  # its sections, before building anything
    check_checkpoint_fits(state, cfg, path)
    dataset, learner = build(cfg, dev, data=data)
    check_checkpoint_contents(state, path, learner)  # every tensor against the run's model
    learner.load_state_dict(state["learner"])
    return TrainedRun(cfg, run_dir, dataset, learner)


def with_run_data(cfg: Config, run_dir: Path) -> Config:
    """A config whose user array file has moved with its run folder points at the folder's
    copy (``data.npz``); the recorded checksum still guards it."""
    from dataclasses import replace

    d = cfg.data
    if d.name == "array" and d.path and not Path(d.path).exists():
        local = run_dir / DATA
        if local.exists():
            return replace(cfg, data=replace(d, path=str(local)))
    return cfg

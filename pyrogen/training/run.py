"""A trained model with its data and run folder: the common face of the three families."""

from __future__ import annotations

import inspect
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from matplotlib.figure import Figure

from pyrogen.build import build
from pyrogen.config import Config, ConfigError, read_config
from pyrogen.data import Dataset
from pyrogen.evaluation.figures import curve_labels, model_figures, samples_figure
from pyrogen.evaluation.plots import save_curves
from pyrogen.families import family_of
from pyrogen.families.program import program_needed
from pyrogen.inference.base import Learner
from pyrogen.models.context import check_context
from pyrogen.runtime import resolve_device
from pyrogen.training.checkpoint import (
    check_checkpoint_contents,
    check_checkpoint_fits,
    load_checkpoint,
)
from pyrogen.training.folders import BEST, CHECKPOINT, CONFIG, resolved_config
from pyrogen.training.metrics import read_metrics

#: ``--checkpoint`` choices: the best validation (``best.pt``) or the last state
CHECKPOINTS = ("best", "last")


@dataclass(eq=False)
class TrainedRun:
    """A trained model with its data set and run folder. ``sample(n)`` draws from the model
    (in the data set's stored space); ``model`` is its Pyro program; ``checkpoint`` says
    whose parameters it holds: ``"best"`` (``best.pt``) or ``"last"`` (``checkpoint.pt``)."""

    cfg: Config
    run_dir: Path
    dataset: Dataset
    learner: Learner
    checkpoint: str = "last"

    def __post_init__(self) -> None:
        self.run_dir = Path(self.run_dir)

    @property
    def family(self) -> str:
        return self.cfg.model.family

    @property
    def model(self) -> torch.nn.Module:
        """The generative process: a Pyro model (``poutine.trace``, ``Predictive``, ``SVI``)."""
        return self.learner.model

    def summary(self) -> dict[str, float]:
        """The last validation metrics of the run (or, without validation, the last training
        metrics), as written to its metrics file, with the step they were taken at; and where
        a best checkpoint was kept, ``best <metric>`` and ``best step``."""
        records = read_metrics(self.run_dir)
        out: dict[str, float] = {}
        for split in ("valid", "train"):
            rows = [r for r in records if r["split"] == split]
            if rows:
                last = rows[-1]
                out = {
                    f"{split} {k}": v
                    for k, v in last.items()
                    if k not in ("step", "epoch", "split") and isinstance(v, int | float)
                }
                out["step"] = last["step"]
                break
        summaries = [r for r in records if r["split"] == "summary"]
        if summaries:
            for key, value in summaries[-1].items():
                if key.startswith("best_") and isinstance(value, int | float):
                    out[key.replace("_", " ", 1)] = value
        return out

    @torch.no_grad()
    def sample(
        self,
        n: int,
        y: int | Sequence[int] | torch.Tensor | None = None,
        temperature: float = 1.0,
        context: Any = None,
    ) -> torch.Tensor:
        """``n`` draws x ~ p(x) of the model, in the data set's stored space (e.g. images in
        [0, 1]; binary images for a VAE with a Bernoulli likelihood). A conditional model
        draws x ~ p(x | c) for its context: class labels ``y`` (one label for all n, or n
        labels; default: the classes in turn), or a continuous ``context`` (one vector of C
        values for all n, or an ``(n, C)`` array; default: the test split's contexts in turn,
        so that x ~ ∫ p(x | c) p̂(c) dc); a model that is not conditional refuses them. A
        flow samples at a ``temperature`` T (the std of its base, and of a multi-scale
        flow's split priors, times T); the other families at T = 1 only."""
        self.learner.module.eval()
        options = {}
        if temperature != 1.0:
            if not self.samples_at_a_temperature:
                raise ValueError(
                    f"temperature={temperature}: sampling at a temperature applies to flows; "
                    f"this run's model is a {self.family}"
                )
            options["temperature"] = temperature
        if y is not None and context is not None:
            raise ValueError("give class labels y or a context, not both")
        given = y if y is not None else context
        if given is None and getattr(self.model, "context_dim", None) is not None:
            test = self.dataset.labels("test")  # stored as the model takes it
            labels = test[torch.arange(n, device=test.device) % test.shape[0]]
        elif given is None:
            return self.dataset.to_data_space(self.model.sample(n, **options))
        else:
            labels = self.labels_for(n, given)
        return self.dataset.to_data_space(self.model.sample(n, labels, **options))

    @property
    def samples_at_a_temperature(self) -> bool:
        """Whether the model's ``sample`` takes a ``temperature`` (the flows')."""
        return "temperature" in inspect.signature(self.model.sample).parameters

    def labels_for(self, n: int, y: Any) -> torch.Tensor:
        """``y`` as the context of n draws of the model: class labels, or continuous context
        vectors in the data's units (standardised here as the training data were:
        :meth:`~pyrogen.data.Dataset.context_to_model`). A ``ValueError`` names what is
        allowed when the model is not conditional, a label is out of range, or a context has
        the wrong shape or is not finite."""
        if not getattr(self.model, "conditional", False):
            raise ValueError(
                f"the model of {self.run_dir} is not conditional: it takes no labels or context"
            )
        device = next(self.learner.module.parameters()).device
        if isinstance(y, torch.Tensor):
            y = y.cpu()
        num_classes = getattr(self.model, "num_classes", None)
        y = check_context(y, n, num_classes, getattr(self.model, "context_dim", None), device)
        return y if num_classes is not None else self.dataset.context_to_model(y)

    @torch.no_grad()
    def sample_means(self, n: int) -> torch.Tensor:
        """For a VAE, ``n`` decoder means E[x | z], z ~ p(z) (not samples of the model: often
        shown in figures); for the other families, samples."""
        self.learner.module.eval()
        means = getattr(self.model, "sample_mean", self.model.sample)
        return self.dataset.to_data_space(means(n))

    @torch.no_grad()
    def samples_figure(self, num_samples: int | None = None) -> Figure | None:
        """A figure of the model's samples: an image grid (for a Bernoulli VAE, the draws
        x ~ p(x | z) beside the decoder means E[x | z] of the same z), or samples over the test
        data in 2-D (``None`` for other points)."""
        return samples_figure(self, num_samples or self.cfg.output.num_samples)

    @torch.no_grad()
    def save_figures(self, num_samples: int | None = None) -> list[Path]:
        """``samples.png`` (an image grid, or samples over the data in 2-D), ``curves.png``
        (the metrics against the step, labelled by what the learner optimises) and the
        figures the model's kind has (:func:`~pyrogen.evaluation.figures.model_figures`)."""
        paths = []
        figure = self.samples_figure(num_samples)
        if figure is not None:
            figure.savefig(self.run_dir / "samples.png", dpi=100, bbox_inches="tight")
            paths.append(self.run_dir / "samples.png")
        curves = self.run_dir / "curves.png"
        labels = curve_labels(self.learner)
        if save_curves(read_metrics(self.run_dir), curves, title=self.run_dir.name, **labels):
            paths.append(curves)
        return paths + model_figures(self, self.run_dir)


def load(
    run_dir: str | os.PathLike,
    device: str | None = None,
    data: object = None,
    checkpoint: str | None = None,
    model: torch.nn.Module | None = None,
    guide: torch.nn.Module | None = None,
) -> TrainedRun:
    """Rebuild a trained run from its folder (config + checkpoint; no code executed).

    ``checkpoint``: ``"best"`` (``best.pt``, the best validation of ``train.monitor``) or
    ``"last"`` (``checkpoint.pt``, where a resumed run continues); default the best when the
    run kept one. A run trained on an array passed from Python reads it back from the run
    folder's ``data.npz`` (or from ``data``, which must be the same array); the folder may
    have been moved or copied. A run that trained a Pyro program given from Python
    (``model.family=program``) is loaded with the pair given again: ``model`` and ``guide``,
    whose parameters must fit the checkpoint's."""
    run_dir = Path(run_dir)
    if checkpoint is None:
        checkpoint = "best" if (run_dir / BEST).is_file() else "last"
    if checkpoint not in CHECKPOINTS:
        raise ConfigError(f"bad checkpoint {checkpoint!r}; expected best or last")
    path = run_dir / (BEST if checkpoint == "best" else CHECKPOINT)
    if checkpoint == "best" and not path.is_file():
        raise ConfigError(
            f"{run_dir} has no best checkpoint ({BEST}): its run kept only the last (train."
            "monitor was none, or it never validated); use --checkpoint last"
        )
    cfg = read_config(run_dir / CONFIG)
    program = None if model is None and guide is None else (model, guide)
    if family_of(cfg).from_python and model is None:
        raise ConfigError(program_needed(cfg, run_dir))
    if program is not None and not family_of(cfg).from_python:
        raise ConfigError(
            f"{run_dir} holds a {cfg.family} run, built from its config: load it without "
            "model= and guide= (they are for runs that trained a Pyro program of your own)"
        )
    dev = resolve_device(device or cfg.train.device, "--device" if device else "train.device")
    state = load_checkpoint(path, map_location=dev)
    check_checkpoint_contents(state, path)  # its sections, before building anything
    check_checkpoint_fits(state, cfg, path)
    cfg = resolved_config(cfg, run_dir)
    dataset, learner = build(cfg, dev, data=data, program=program)
    check_checkpoint_contents(state, path, learner)  # every tensor against the run's model
    learner.load_state_dict(state["learner"])
    return TrainedRun(cfg, run_dir, dataset, learner, checkpoint=checkpoint)

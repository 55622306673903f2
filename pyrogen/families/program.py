"""The program family: a Pyro model/guide pair given from Python
(``pyrogen.train(cfg, data=x, model=my_model, guide=my_guide)``). It builds nothing itself:
the pair goes into a :class:`~pyrogen.inference.variational.VariationalLearner` with the
config's ``elbo``, ``optim`` and ``train`` sections. A run records the classes' names only
(configs never import code), so a program run is loaded or resumed from Python, with the
pair given again: ``pyrogen.load(run_dir, model=..., guide=...)``."""

from __future__ import annotations

import torch
from pyro.infer import Trace_ELBO, TraceEnum_ELBO
from torch import nn

from pyrogen.config import Config, ConfigError
from pyrogen.data import Dataset
from pyrogen.families.base import Family, check_estimator, estimator, learner_options
from pyrogen.inference.elbo import ENUMERATING_ELBOS
from pyrogen.inference.variational import VariationalLearner
from pyrogen.models.program import PyroProgram, inspect_program
from pyrogen.registry import ELBOS, check_name


def program_needed(cfg: Config, run_dir: object = None, resume: bool = False) -> str:
    """The one line for a program run reached without its program (the CLI, or Python
    without ``model=``)."""
    what = cfg.model.model_class or "its model class"
    run = str(run_dir) if run_dir is not None else "RUN"
    call = (
        f"pyrogen.train(cfg, run_dir={run!r}, resume=True, model=..., guide=...)"
        if resume
        else f"pyrogen.load({run!r}, model=..., guide=...)"
    )
    return (
        f"this run trained a Pyro program given from Python ({what}); configs never import "
        f"code: use {call}"
    )


class ProgramFamily(Family):
    name = "program"
    description = "a Pyro program given from Python: ELBO and importance-sampled log p(x)"
    validation_metrics = {"elbo": "max"}
    monitor = "elbo"
    from_python = True

    def validate(self, cfg: Config) -> None:
        e = cfg.elbo
        check_name(ELBOS, e.name, "elbo.name")
        # the user's guide is judged as a reparameterised one; Pyro checks the rest itself
        if e.free_bits:
            raise ConfigError(
                f"elbo.free_bits={e.free_bits} floors the KL of each dimension of a VAE's z; a "
                "Pyro program given from Python names its own latent sites, so it would not be "
                "applied (remove elbo.free_bits)"
            )
        check_estimator("diagonal_normal", cfg)

    def build_model(self, cfg: Config, data: Dataset) -> nn.Module:
        raise ConfigError(program_needed(cfg))

    def from_program(
        self, cfg: Config, data: Dataset, model: nn.Module, guide: nn.Module | None
    ) -> PyroProgram:
        """The user's pair as one module, inspected on the first training examples
        (:func:`~pyrogen.models.program.inspect_program`)."""
        program = PyroProgram(model, guide).to(data.device)
        x = data.process(data.train[:8], torch.Generator().manual_seed(0))
        y = data.labels("train")
        program.facts = inspect_program(
            program,
            x,
            cfg.elbo.name,
            enumerates=cfg.elbo.name in ENUMERATING_ELBOS,
            y=None if y is None else y[:8],
        )
        return program

    def uses_labels(self, cfg: Config) -> bool:
        """A program is ``forward(x, y=None)``: it gets the data's class labels where the data
        have them (``data={"train": x, "train_labels": y, ...}``), and ``x`` alone otherwise."""
        return True

    def build_learner(self, cfg: Config, model: nn.Module) -> VariationalLearner:
        e = cfg.elbo
        nesting = model.facts.max_plate_nesting
        elbo = estimator(cfg)
        elbo.max_plate_nesting = nesting  # the program's deepest plate, found by tracing it
        learner = VariationalLearner(
            model,
            elbo,
            guide=model.guide,
            kl_warmup_steps=e.kl_warmup_steps,
            beta=e.beta,
            **learner_options(cfg),
        )
        # validation's ELBO: sites the model sums out stay summed out
        evaluator = TraceEnum_ELBO if model.facts.enumerated else Trace_ELBO
        learner.eval_elbo = evaluator(max_plate_nesting=nesting)
        return learner

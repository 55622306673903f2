"""The ``model`` section of a run whose Pyro program was given from Python
(``pyrogen.train(cfg, data=x, model=my_model, guide=my_guide)``; ``model.family=program``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal


@dataclass
class ProgramModelConfig:
    """A Pyro model/guide pair given from Python (recorded by name only, never imported)."""

    family: Literal["program"] = field(
        default="program", metadata={"doc": "the model family: vae, flow, gan or program"}
    )
    model_class: str | None = field(
        default=None,
        metadata={"doc": "the model's qualified class name (for information; never imported)"},
    )
    guide_class: str | None = field(
        default=None,
        metadata={"doc": "the guide's qualified class name (for information; never imported)"},
    )

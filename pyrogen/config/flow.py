"""The flow family's section: ``model`` (``model.family=flow``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from pyrogen.config.schema import MAX_COUNT, num, sizes


@dataclass
class FlowModelConfig:
    """z ~ N(0, I); x = G(z) through a stack of Pyro TransformModules."""

    family: Literal["flow"] = field(
        default="flow", metadata={"doc": "the model family: vae, flow or gan"}
    )
    flow: str = field(
        default="realnvp",
        metadata={"doc": "the flow architecture (a name in pyrogen.registry.FLOWS)"},
    )
    num_layers: int = num(5, ge=1, le=1024, doc="transforms in the stack")
    hidden_sizes: list[int] = sizes(64, 64, doc="layer widths of each transform's network")
    count_bins: int = num(8, ge=2, le=1024, doc="neural spline flows: bins of each spline")
    bound: float = num(5.0, gt=0.0, le=1e6, doc="neural spline flows: the spline acts on [-B, B]")
    normalization: Literal["none", "batchnorm", "actnorm"] = field(
        default="none", metadata={"doc": "normalisation layer between transforms"}
    )
    permutation: Literal["reverse", "random"] = field(
        default="reverse", metadata={"doc": "permutation of dimensions between transforms"}
    )
    levels: int = num(1, ge=1, le=16, doc="glow, realnvp on images: scales; >1 squeezes and splits")
    steps_per_level: int | None = num(
        None, ge=1, le=1024, doc="glow, realnvp with levels: steps a scale; null: model.num_layers"
    )
    conditional: bool = field(
        default=False, metadata={"doc": "p(x | c): on class labels y or data.context columns"}
    )
    num_classes: int = num(10, ge=2, le=MAX_COUNT, doc="conditional: number of classes y")
    conditional_base: bool = field(
        default=False,
        metadata={"doc": "conditional: base p(z | c) = N(mu(c), sigma(c)^2), linear in c"},
    )

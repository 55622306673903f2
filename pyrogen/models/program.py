"""A Pyro program given from Python: any ``nn.Module`` model and guide whose ``forward(x)``
are Pyro programs with the batch in ``pyro.plate("data", x.shape[0])``.

:class:`PyroProgram` holds the pair (its ``state_dict`` is both modules' parameters, so a
run checkpoints and resumes it like any model) and announces their parameters as Pyro param
sites (:func:`~pyrogen.params.declare_params`) for the estimators that read them.
:func:`inspect_program` traces guide and model once on a batch before training and refuses,
in one line naming the sites, what an ELBO estimator cannot train:

* no ``pyro.plate("data", N)`` of the batch's size around the observed sites;
* guide sample sites the model does not have, and model latent sites without a guide site
  (except discrete sites the model marks ``infer={"enumerate": "parallel"}``, which
  ``TraceEnum_ELBO`` sums out: Σ_y p(x, y, z));
* a site marked for enumeration whose distribution has no finite support (a Poisson), and a
  site summed out in the model under an estimator that does not enumerate.

It also finds ``max_plate_nesting``, the deepest plate nesting of either trace (the data plate
and the user's plates inside it), which the estimators need to put enumerated values and
vectorised particles left of every plate.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from pyro import poutine
from pyro.infer import Predictive
from pyro.poutine.util import site_is_subsample
from torch import nn

from pyrogen.config import ConfigError
from pyrogen.params import declare_params, param_statements

DATA_PLATE = "data"


class ProgramError(ConfigError):
    """A user's Pyro program that pyrogen cannot train: the message names the sites."""


def qualified_name(obj: Any) -> str | None:
    """``module.Class`` of an object (what a run records of a program; never imported)."""
    if obj is None:
        return None
    cls = type(obj)
    return f"{cls.__module__}.{cls.__qualname__}"


class _Declared(nn.Module):
    """A user's module whose ``forward`` first announces its parameters as param sites
    named ``<prefix>.<path>``, then runs the user's program."""

    def __init__(self, program: nn.Module | None, prefix: str) -> None:
        super().__init__()
        self.program = program
        self.prefix = prefix

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        if self.program is None:  # a model without latent sites needs no guide
            return None
        declare_params(self.program, self.prefix)
        return self.program(*args, **kwargs)


@dataclass
class ProgramFacts:
    """What :func:`inspect_program` found in the traces of a program."""

    max_plate_nesting: int = 1
    observed: str = "x"  # the observed site whose value is the batch (what ``sample`` draws)
    event_shape: tuple[int, ...] = ()
    enumerated: list[str] = field(default_factory=list)  # model sites summed out (no guide site)
    latent_outside_data: list[str] = field(default_factory=list)  # global latent sites


class PyroProgram(nn.Module):
    """A user's Pyro model and guide as one module: ``forward(x)`` is the model, ``guide``
    the guide (a module: its parameters are trained with the model's). ``facts`` is set by
    :func:`inspect_program` before training."""

    def __init__(self, model: nn.Module, guide: nn.Module | None = None) -> None:
        super().__init__()
        for role, module in (("model", model), ("guide", guide)):
            if module is not None and not isinstance(module, nn.Module):
                raise TypeError(
                    f"{role}= must be an nn.Module whose forward(x) is a Pyro program; got "
                    f"{type(module).__name__}"
                )
        self.program = _Declared(model, "model")
        self.guide = _Declared(guide, "guide")
        self.facts = ProgramFacts()

    def forward(self, x: torch.Tensor, *args: Any) -> Any:
        return self.program(x, *args)

    @property
    def model_class(self) -> str | None:
        return qualified_name(self.program.program)

    @property
    def guide_class(self) -> str | None:
        return qualified_name(self.guide.program)

    @torch.no_grad()
    def sample(self, n: int) -> torch.Tensor:
        """``n`` draws x ~ p(x) of the observed site, through Pyro's ``Predictive`` on the
        model with its observations released (``poutine.uncondition``): every latent site,
        the ones the model sums out by enumeration included, is drawn from its prior."""
        reference = next(self.parameters(), None)
        device = reference.device if reference is not None else torch.device("cpu")
        x = torch.zeros(n, *self.facts.event_shape, device=device)
        site = self.facts.observed
        predictive = Predictive(
            poutine.uncondition(self.forward), num_samples=1, return_sites=[site], parallel=False
        )
        with param_statements(False):
            return predictive(x)[site][0]


def _plates(site: dict[str, Any]) -> list[Any]:
    return [f for f in site["cond_indep_stack"] if f.vectorized and f.dim is not None]


def _listed(names: list[str]) -> str:
    return ", ".join(repr(n) for n in names)


def _latents(trace: poutine.Trace) -> dict[str, dict[str, Any]]:
    return {
        name: site
        for name, site in trace.nodes.items()
        if site["type"] == "sample" and not site["is_observed"] and not site_is_subsample(site)
    }


@torch.no_grad()
def inspect_program(
    program: PyroProgram,
    x: torch.Tensor,
    elbo_name: str,
    enumerates: bool,
    y: torch.Tensor | None = None,
) -> ProgramFacts:
    """Trace guide and model (the model replaying the guide's draws) on the batch ``x`` (and
    its labels ``y`` where the data have them),
    refuse a program pyrogen cannot train (:class:`ProgramError`, one line naming the sites)
    and return its :class:`ProgramFacts` (``enumerates``: the estimator ``elbo_name`` sums
    sites marked for enumeration out). Runs on a forked random stream: training draws
    the same numbers whether or not a program was inspected."""
    devices = [x.device] if x.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices), param_statements(False), poutine.block():
        args = (x,) if y is None else (x, y)
        try:
            guide_trace = poutine.trace(program.guide).get_trace(*args)
            replayed = poutine.replay(program.forward, trace=guide_trace)
            model_trace = poutine.trace(replayed).get_trace(*args)
        except (RuntimeError, ValueError, TypeError, IndexError, KeyError) as e:
            # the user's code failed on the data (shapes, dtypes, a missing argument):
            # one line with Pyro's own first line, which names the site when it knows it
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise ProgramError(
                f"the program failed on a batch of the data (x of shape {tuple(x.shape)}): "
                f"{type(e).__name__}: {first}"
            ) from None
    n = x.shape[0]
    observed = [
        (name, site)
        for name, site in model_trace.nodes.items()
        if site["type"] == "sample" and site["is_observed"]
    ]
    if not observed:
        raise ProgramError(
            "the model observes nothing: score the batch with pyro.sample(name, dist, obs=x) "
            f'inside pyro.plate("{DATA_PLATE}", x.shape[0])'
        )
    outside = [name for name, s in observed if DATA_PLATE not in {f.name for f in _plates(s)}]
    if outside:
        raise ProgramError(
            f"the model's observed site(s) {_listed(outside)} are not inside "
            f'pyro.plate("{DATA_PLATE}", x.shape[0]): pyrogen batches the examples in that plate '
            "(per-example losses, data-parallel pieces, importance weights)"
        )
    for _, site in observed:
        (frame,) = [f for f in _plates(site) if f.name == DATA_PLATE]
        if frame.size != n:
            raise ProgramError(
                f'the model\'s pyro.plate("{DATA_PLATE}") has size {frame.size} but the batch has '
                f'{n} examples: use pyro.plate("{DATA_PLATE}", x.shape[0]) (no subsampling)'
            )
    model_latents, guide_latents = _latents(model_trace), _latents(guide_trace)
    extra = [s for s in guide_latents if s not in model_latents]
    if extra:
        raise ProgramError(
            f"the guide samples site(s) {_listed(extra)} that the model does not have: the "
            "guide's sample sites must be latent sites of the model, of the same names"
        )
    for role, sites in (("guide", guide_latents), ("model", model_latents)):
        for name, site in sites.items():
            if site["infer"].get("enumerate") and not site["fn"].has_enumerate_support:
                raise ProgramError(
                    f"the {role}'s site {name!r} is marked for enumeration (infer="
                    f"{{'enumerate': ...}}) but {type(site['fn']).__name__} has no finite "
                    "support to enumerate: sample it from the guide instead"
                )
    missing = [s for s in model_latents if s not in guide_latents]
    summed = [s for s in missing if model_latents[s]["infer"].get("enumerate") == "parallel"]
    unguided = [s for s in missing if s not in summed]
    if unguided:
        raise ProgramError(
            f"the model's latent site(s) {_listed(unguided)} have no site in the guide: give the "
            "guide a site of the same name, or (a discrete site) mark it infer={'enumerate': "
            "'parallel'} and train with elbo.name=trace_enum"
        )
    if summed and not enumerates:
        raise ProgramError(
            f"the model sums out site(s) {_listed(summed)} by enumeration, which needs "
            f"elbo.name=trace_enum (or jit_trace_enum); elbo.name={elbo_name} would not"
        )
    nesting = max(
        [1]
        + [
            -f.dim
            for t in (model_trace, guide_trace)
            for s in t.nodes.values()
            if s["type"] == "sample"
            for f in _plates(s)
        ]
    )
    batch = [name for name, s in observed if s["value"] is x]
    name = batch[0] if batch else observed[0][0]
    value = model_trace.nodes[name]["value"]
    global_latents = [
        s for s, site in model_latents.items() if DATA_PLATE not in {f.name for f in _plates(site)}
    ]
    return ProgramFacts(
        max_plate_nesting=nesting,
        observed=name,
        event_shape=tuple(value.shape[1:]),
        enumerated=summed,
        latent_outside_data=global_latents,
    )

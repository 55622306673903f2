"""The common face of the three families' models: a generative process x ~ p(x) written as a
Pyro program over a batch in ``pyro.plate("data")``."""

from __future__ import annotations

import pyro
import torch
from torch import nn

from pyrogen.params import declare_params


class GenerativeProcess(nn.Module):
    """A Pyro model ``forward(x=None, y=None, num_samples=None)`` of examples in
    ``pyro.plate("data", n)``, n = ``x.shape[0]`` or ``num_samples``.

    Subclasses write one step of the process, :meth:`process` (called inside the plate), and
    declare which submodules' parameters are not the process's param sites
    (:attr:`not_param_sites`: a discriminator, a guide, an EMA copy). The networks'
    parameters become Pyro param sites (:func:`~pyrogen.params.declare_params`) each call,
    so the JIT-compiled estimators and Pyro's ``loss_and_grads`` see them."""

    #: submodules whose parameters are not param sites of the process
    not_param_sites: tuple[str, ...] = ()

    @property
    def conditional(self) -> bool:
        """Whether the process is p(x | y), taking class labels ``y``."""
        return False

    def process(self, x: torch.Tensor | None, y: torch.Tensor | None) -> torch.Tensor:
        """The sample sites of one batch, inside ``pyro.plate("data")`` (``x`` observed when
        given); returns x."""
        raise NotImplementedError  # pragma: no cover

    def check_observed(self, x: torch.Tensor) -> None:
        """Raise where the process cannot score the data ``x`` (before any site runs)."""

    def forward(
        self,
        x: torch.Tensor | None = None,
        y: torch.Tensor | None = None,
        num_samples: int | None = None,
    ) -> torch.Tensor:
        """The generative process on ``x`` (observed) or on ``num_samples`` new examples."""
        if x is None and num_samples is None:
            raise ValueError("give the data x or a number of samples")
        if y is not None and not self.conditional:
            raise ValueError(
                f"this {type(self).__name__} is not class-conditional: it takes no labels y"
            )
        if x is not None:
            self.check_observed(x)
        declare_params(self, "", exclude=self.not_param_sites)
        n = x.shape[0] if x is not None else num_samples
        with pyro.plate("data", n):
            return self.process(x, y)

    model = forward

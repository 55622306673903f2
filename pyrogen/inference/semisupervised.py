"""The learner of the semi-supervised VAE (M2): each step is the training loop's batch plus
a batch of labelled examples cycled from the labelled set, in one ``TraceEnum_ELBO`` step.

With few labels (100 among 50,000) an epoch of plain shuffled batches would show each label
once; M2 needs them far more often. Step k adds the labelled batch ``k mod m`` of the cycle
``c = k div m`` (``m = N_l div B_l`` batches per cycle), taken from a permutation of the
labelled set drawn from ``(seed, c)``: the labelled batches are a function of the step count,
which the checkpoint holds, so a resumed run sees the same batches as an uninterrupted one.
"""

from __future__ import annotations

from typing import Any

import torch
from pyro.infer import ELBO, TraceEnum_ELBO

from pyrogen.inference.variational import VariationalLearner
from pyrogen.parallel import distributed
from pyrogen.params import param_statements


class SemiSupervisedLearner(VariationalLearner):
    """:class:`VariationalLearner` of an :class:`~pyrogen.models.ssvae.SSVAE` whose every step
    adds ``labelled_batch_size`` labelled rows cycled from ``(labelled_x, labelled_y)`` (see
    the module); ``evaluate`` reports the classification accuracy of argmax q(y | x) on the
    labelled rows and the ELBO U(x) of every row (y summed out).

    Args:
        model: the SSVAE; elbo: default ``TraceEnum_ELBO(max_plate_nesting=1)``.
        labelled_x, labelled_y: the labelled set (set later with :meth:`set_labelled`).
        labelled_batch_size: B_l (at most the labelled set's size).
        seed: the seed of the labelled batches' permutations.
        **options: :class:`VariationalLearner`'s (optimiser, clipping, precision).
    """

    def __init__(
        self,
        model: torch.nn.Module,
        elbo: ELBO | None = None,
        labelled_x: torch.Tensor | None = None,
        labelled_y: torch.Tensor | None = None,
        labelled_batch_size: int = 100,
        seed: int = 0,
        **options: Any,
    ) -> None:
        elbo = elbo if elbo is not None else TraceEnum_ELBO(max_plate_nesting=1)
        super().__init__(model, elbo, **options)
        self.eval_elbo = TraceEnum_ELBO(max_plate_nesting=1)
        self.labelled_batch_size = int(labelled_batch_size)
        self.seed = int(seed)
        self._cycle: tuple[int, torch.Tensor] | None = None
        self.labelled_x = self.labelled_y = None
        if labelled_x is not None:
            self.set_labelled(labelled_x, labelled_y)

    def set_labelled(self, x: torch.Tensor, y: torch.Tensor) -> None:
        """The labelled set whose batches every step adds."""
        if x.shape[0] == 0 or x.shape[0] != y.shape[0]:
            raise ValueError(f"need labelled examples with one label each; got {x.shape[0]}")
        self.labelled_x, self.labelled_y = x, y
        self.labelled_batch_size = min(self.labelled_batch_size, x.shape[0])
        self._cycle = None

    def labelled_indices(self, step: int) -> torch.Tensor:
        """The rows of the labelled set that step ``step`` (counted from 0) adds."""
        n, b = self.labelled_x.shape[0], self.labelled_batch_size
        per_cycle = n // b
        cycle, j = divmod(step, per_cycle)
        if self._cycle is None or self._cycle[0] != cycle:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + cycle)
            self._cycle = (cycle, torch.randperm(n, generator=g))
        return self._cycle[1][j * b : (j + 1) * b]

    def step(self, x: torch.Tensor, y: torch.Tensor | None = None) -> dict[str, float]:
        """One step on ``x`` (``y = -1`` or ``None``: unlabelled rows) and the labelled batch
        of this step (this rank's piece of it under DDP)."""
        if self.labelled_x is None:
            return super().step(x, y)
        idx = distributed.shard(self.labelled_indices(self.num_steps)).to(self.labelled_x.device)
        if y is None:
            y = torch.full((x.shape[0],), -1, dtype=torch.int64, device=x.device)
        x = torch.cat([x.reshape(x.shape[0], -1), self.labelled_x[idx].reshape(len(idx), -1)])
        return super().step(x, torch.cat([y, self.labelled_y[idx]]))

    @torch.no_grad()
    def evaluate(self, x: torch.Tensor, y: torch.Tensor | None = None) -> dict[str, float]:
        """``elbo``: U(x) per example, the bound on log p(x) with y summed out (labels
        unused); ``accuracy``: the share of labelled rows (``y >= 0``) whose argmax_y q(y|x)
        is their label (on a batch without labelled rows, absent)."""
        self.module.eval()
        with param_statements(False):
            elbo = -self.eval_elbo.loss(self.model.model, self.model.guide, x) / x.shape[0]
        out = {"elbo": elbo}
        if y is not None:
            known = y >= 0
            if known.any():
                hits = self.model.classify(x[known]) == y[known]
                out["accuracy"] = hits.double().mean().item()
        return out

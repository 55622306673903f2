"""Variational inference (VAE) and maximum likelihood (flows) through one path.

Training maximises an ELBO computed by one of Pyro's own estimators::

    ELBO(θ, φ) = E_q_φ(z|x) [ log p_θ(x, z) − log q_φ(z|x) ]  ≤  log p_θ(x)

A flow is a model with no latent sites; with an empty guide the ELBO *is* log p_θ(x), so
maximum likelihood is the same code path.

We follow Pyro's ``ELBOModule`` pattern: ``elbo(model, guide)`` is an ``nn.Module`` whose
``forward`` returns the differentiable loss, optimised by one plain ``torch.optim``
optimiser over the parameters of model and guide (no global param store).
"""

from __future__ import annotations

from typing import Any

import pyro
import torch
from pyro import poutine
from pyro.infer import ELBO
from torch import nn

from pyrogen.inference.base import make_optimizer


class EmptyGuide(nn.Module):
    """The guide of a model without latent variables (a flow): it samples nothing."""

    def forward(self, *args: Any, **kwargs: Any) -> None:
        return None


class ScaleLatents(poutine.messenger.Messenger):
    """Scale the log-density of every *latent* (unobserved) sample site by ``beta``.

    Applied to model and guide alike it turns the ELBO into
    E_q[log p(x|z)] − β KL(q(z|x) ‖ p(z)): KL warm-up (β annealing)."""

    def __init__(self, beta: float) -> None:
        super().__init__()
        self.beta = beta

    def _process_message(self, msg: dict[str, Any]) -> None:
        if msg["type"] == "sample" and not msg["is_observed"]:
            msg["scale"] = msg["scale"] * self.beta


class VariationalLearner:
    """Fit ``model``/``guide`` (both ``nn.Module``, ``forward`` = the Pyro program) with
    ``elbo`` and a torch optimiser.

    ``loss`` and the metrics are per example: −ELBO / batch size (nats).

    Example::

        >>> learner = VariationalLearner(vae, guide, pyro.infer.Trace_ELBO())
        >>> learner.step(x_batch)["loss"]  # doctest: +SKIP
    """

    def __init__(
        self,
        model: nn.Module,
        guide: nn.Module,
        elbo: ELBO,
        optim: str = "adam",
        lr: float = 1e-3,
        betas: tuple[float, float] | list[float] = (0.9, 0.999),
        momentum: float = 0.0,
        weight_decay: float = 0.0,
        clip_norm: float | None = None,
        kl_warmup_steps: int = 0,
        eval_elbo: ELBO | None = None,
    ) -> None:
        self.model = model
        self.guide = guide
        self.elbo = elbo
        self.eval_elbo = eval_elbo or elbo
        self.loss_module = elbo(model, guide)  # the ELBOModule
        self.module = nn.ModuleDict({"model": model, "guide": guide})
        self.optimizer = make_optimizer(
            self.module.parameters(), optim, lr, betas, momentum, weight_decay
        )
        self.clip_norm = clip_norm
        self.kl_warmup_steps = kl_warmup_steps
        self.num_steps = 0

    @property
    def kl_beta(self) -> float:
        if self.kl_warmup_steps <= 0:
            return 1.0
        return min(1.0, self.num_steps / self.kl_warmup_steps)

    def _loss(self, x: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
        args = (x,) if y is None else (x, y)
        beta = self.kl_beta
        if beta == 1.0:
            return self.loss_module(*args)
        with ScaleLatents(beta):
            return self.loss_module(*args)

    def step(self, x: torch.Tensor, y: torch.Tensor | None = None) -> dict[str, float]:
        self.module.train()
        loss = self._loss(x, y) / x.shape[0]
        value = loss.item()
        metrics = {"loss": value, "kl_beta": self.kl_beta}
        if not torch.isfinite(loss):
            return metrics  # the run loop stops; parameters are left untouched
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if self.clip_norm is not None:
            metrics["grad_norm"] = float(
                nn.utils.clip_grad_norm_(self.module.parameters(), self.clip_norm)
            )
        self.optimizer.step()
        self.num_steps += 1
        return metrics

    @torch.no_grad()
    def evaluate(self, x: torch.Tensor, y: torch.Tensor | None = None) -> dict[str, float]:
        """The ELBO per example (for a flow: the exact log-likelihood)."""
        self.module.eval()
        args = (x,) if y is None else (x, y)
        with torch.enable_grad():  # some estimators build surrogate graphs
            elbo = -self.eval_elbo.differentiable_loss(self.model, self.guide, *args)
        key = "log_prob" if isinstance(self.guide, EmptyGuide) else "elbo"
        return {key: elbo.item() / x.shape[0]}

    def state_dict(self) -> dict[str, Any]:
        return {
            "module": self.module.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "num_steps": self.num_steps,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.module.load_state_dict(state["module"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.num_steps = int(state["num_steps"])


def clear_param_store() -> None:
    """Models keep parameters in their modules; the global store must stay empty."""
    pyro.clear_param_store()

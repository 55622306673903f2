"""Variational inference (VAE) and maximum likelihood (flows) through one path.

Training maximises an ELBO computed by one of Pyro's own estimators::

    ELBO(θ, φ) = E_q_φ(z|x) [ log p_θ(x, z) − log q_φ(z|x) ]  ≤  log p_θ(x)

A flow is a model with no latent sites; with an empty guide the ELBO *is* log p_θ(x), so
maximum likelihood is the same code path.

We follow Pyro's ``ELBOModule`` pattern: ``elbo(model, guide)`` is an ``nn.Module`` whose
``forward`` returns the differentiable loss, optimised by one plain ``torch.optim``
optimiser over the parameters of model and guide (no global param store). Estimators that
only offer ``loss_and_grads`` (``TraceGraph_ELBO``, ``RenyiELBO``, ``ReweightedWakeSleep``)
fill the same parameters' gradients through it.
"""

from __future__ import annotations

from typing import Any

import pyro
import torch
from pyro import poutine
from pyro.infer import ELBO, Trace_ELBO, TraceTailAdaptive_ELBO
from pyro.infer.util import is_validation_enabled
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


class ParamStoreView(nn.Module):
    """Runs ``module`` after ``pyro.module(name, module)``: the JIT-compiled estimators
    (``JitTrace_ELBO`` & co.) look parameters up in Pyro's param store to pass them to the
    compiled function as inputs. The store then holds references to the module's own
    parameters under a name unique to this learner, so the module stays their owner."""

    def __init__(self, module: nn.Module, name: str) -> None:
        super().__init__()
        self.module = module
        self.name = name

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        pyro.module(self.name, self.module)
        return self.module(*args, **kwargs)


def is_jit(elbo: ELBO) -> bool:
    return type(elbo).__name__.startswith("Jit")


def has_differentiable_loss(elbo: ELBO) -> bool:
    """Whether ``elbo`` returns a differentiable loss (and so works as an ELBOModule)."""
    return callable(getattr(elbo, "differentiable_loss", None))


class VariationalLearner:
    """Fit ``model``/``guide`` (both ``nn.Module``, ``forward`` = the Pyro program) with
    ``elbo`` and a torch optimiser.

    ``loss`` is per example: −ELBO / batch size (nats). ``evaluate`` reports the plain
    Monte Carlo ELBO (``Trace_ELBO``, one particle) whatever the training estimator, so runs
    trained with different estimators are compared on the same quantity; for a flow (no
    latent sites) it is the exact log-likelihood.

    Example::

        >>> learner = VariationalLearner(vae, guide, pyro.infer.Trace_ELBO())  # doctest: +SKIP
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
    ) -> None:
        self.model = model
        self.guide = guide
        self.elbo = elbo
        self.eval_elbo = Trace_ELBO(max_plate_nesting=1)
        self.reports_loss = not isinstance(elbo, TraceTailAdaptive_ELBO)
        if is_jit(elbo) or not has_differentiable_loss(elbo):
            # these look the parameters up as Pyro param sites
            self._train_model: nn.Module = ParamStoreView(model, f"pyrogen_model_{id(self)}")
            self._train_guide: nn.Module = ParamStoreView(guide, f"pyrogen_guide_{id(self)}")
        else:
            self._train_model, self._train_guide = model, guide
        self.loss_module = (
            elbo(self._train_model, self._train_guide) if has_differentiable_loss(elbo) else None
        )
        self.module = nn.ModuleDict({"model": model, "guide": guide})
        self.optimizer = make_optimizer(
            self.module.parameters(), optim, lr, betas, momentum, weight_decay
        )
        self.clip_norm = clip_norm
        self.kl_warmup_steps = kl_warmup_steps
        self.num_steps = 0
        # Pyro keeps a decaying-average baseline per position in the batch: it needs batches
        # of one size, and its running value is part of the state to checkpoint
        self.fixed_batch_size = getattr(guide, "baseline", None) == "decaying_average"

    @property
    def kl_beta(self) -> float:
        if self.kl_warmup_steps <= 0:
            return 1.0
        return min(1.0, self.num_steps / self.kl_warmup_steps)

    def _loss_and_grads(self, args: tuple) -> torch.Tensor:
        """−ELBO of the batch, with the parameters' gradients filled in."""
        if self.loss_module is not None:
            loss = self.loss_module(*args)
            if not self.reports_loss:
                # TraceTailAdaptive_ELBO's loss is inf + (surrogate − surrogate.item()): its
                # gradient is right but its value is not an ELBO, so report a Trace_ELBO
                # estimate of the same batch instead
                loss.backward()
                with torch.no_grad():
                    return torch.as_tensor(self.eval_elbo.loss(self.model, self.guide, *args))
            if torch.isfinite(loss):
                loss.backward()
            return loss.detach()
        loss = self.elbo.loss_and_grads(self._train_model, self._train_guide, *args)
        if isinstance(loss, tuple):  # ReweightedWakeSleep: (wake-θ loss, wake-φ loss)
            loss = loss[0]
        return torch.as_tensor(float(loss))

    def step(self, x: torch.Tensor, y: torch.Tensor | None = None) -> dict[str, float]:
        self.module.train()
        args = (x,) if y is None else (x, y)
        self.optimizer.zero_grad(set_to_none=True)
        beta = self.kl_beta
        # Pyro's argument checks run on the first step, where a user's mistake shows (e.g.
        # non-binary data under a Bernoulli likelihood); later steps skip them for speed
        with pyro.validation_enabled(self.num_steps == 0 and is_validation_enabled()):
            if beta == 1.0:
                loss = self._loss_and_grads(args)
            else:
                with ScaleLatents(beta):
                    loss = self._loss_and_grads(args)
        value = loss.item() / x.shape[0]
        metrics = {"loss": value}
        if self.kl_warmup_steps:
            metrics["kl_beta"] = beta
        if not torch.isfinite(loss):
            self.optimizer.zero_grad(set_to_none=True)
            return metrics  # the run loop stops; parameters are left untouched
        if self.clip_norm is not None:
            norm = nn.utils.clip_grad_norm_(self.module.parameters(), self.clip_norm)
            metrics["grad_norm"] = float(norm)
        self.optimizer.step()
        self.num_steps += 1
        return metrics

    @torch.no_grad()
    def evaluate(self, x: torch.Tensor, y: torch.Tensor | None = None) -> dict[str, float]:
        """The ELBO per example (for a flow: the exact log-likelihood)."""
        self.module.eval()
        args = (x,) if y is None else (x, y)
        elbo = -self.eval_elbo.loss(self.model, self.guide, *args)
        key = "log_prob" if isinstance(self.guide, EmptyGuide) else "elbo"
        return {key: elbo / x.shape[0]}

    def state_dict(self) -> dict[str, Any]:
        store = pyro.get_param_store()
        baselines = {k: store[k].detach().clone() for k in store.keys() if "baseline" in k}
        return {
            "module": self.module.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "num_steps": self.num_steps,
            "param_store": baselines,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.module.load_state_dict(state["module"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.num_steps = int(state["num_steps"])
        store = pyro.get_param_store()
        for name, value in state.get("param_store", {}).items():
            store[name] = value

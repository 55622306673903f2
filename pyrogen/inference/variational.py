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

import warnings
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from typing import Any

import pyro
import torch
from pyro import poutine
from pyro.infer import ELBO, Trace_ELBO, TraceTailAdaptive_ELBO
from pyro.infer.util import is_validation_enabled
from torch import nn
from torch.distributions import constraints

from pyrogen.inference.base import (
    ZeroValue,
    autocast,
    data_parallel,
    device_of,
    grad_scaler,
    make_optimizer,
    poisoned,
    precision_dtype,
)
from pyrogen.params import param_statements


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


def is_jit(elbo: ELBO) -> bool:
    return type(elbo).__name__.startswith("Jit")


def has_differentiable_loss(elbo: ELBO) -> bool:
    """Whether ``elbo`` returns a differentiable loss (and so works as an ELBOModule)."""
    return callable(getattr(elbo, "differentiable_loss", None))


def needs_param_store(elbo: ELBO, guide: Any) -> bool:
    """Whether Pyro's estimator reads or writes Pyro's param store: the JIT estimators look
    parameters up there to pass them to the compiled function, and the decaying-average
    baseline keeps its running value there."""
    return is_jit(elbo) or getattr(guide, "baseline", None) == "decaying_average"


class VariationalLearner:
    """Fit a model and its guide (``forward`` = the Pyro program) with one of Pyro's ELBO
    estimators and a plain torch optimiser.

    Args:
        model: the generative process (a :class:`~pyrogen.models.vae.VAE` or
            :class:`~pyrogen.models.flow.Flow`, or any ``nn.Module`` whose ``forward(x, y)`` is
            a Pyro model with its batch in ``pyro.plate("data")``).
        elbo: the estimator (default ``Trace_ELBO``); for a model without latent sites (a
            flow) the ELBO is log p(x) and training is maximum likelihood.
        guide: default ``model.guide`` when the model has one (a VAE), else :class:`EmptyGuide`.
        optim, lr, betas, momentum, weight_decay: the torch optimiser.
        clip_norm: clip the gradients' global norm; kl_warmup_steps: β from 0 to 1.
        precision: ``32`` (float32), ``"bf16"`` or ``"16-mixed"``: the loss's forward pass
            runs under ``torch.autocast`` in bfloat16 or float16 (float16 with a gradient
            scaler); evaluation always runs in float32.

    ``loss`` is per example: −ELBO / batch size (nats). ``evaluate`` reports the plain
    Monte Carlo ELBO (``Trace_ELBO``, one particle) whatever the training estimator, so runs
    trained with different estimators are compared on the same quantity; for a flow (no
    latent sites) it is the exact log-likelihood.

    Estimators that need Pyro's param store (JIT-compiled ones, the decaying-average
    baseline) run each step inside a param store of this learner's own
    (``ParamStoreDict.scope``): the process-wide store is swapped out for the step and put
    back unchanged, so two learners never share an entry and a user's own entries are kept.

    **Data parallelism** (:meth:`data_parallel`, called by the run loop under ``torchrun``):
    DDP wraps a module that owns model and guide and whose ``forward`` is the estimator's
    loss of this rank's piece of the batch (:meth:`objective`); the loss is a *sum* over
    examples, so each rank differentiates W times its sum and DDP's average over the W ranks
    is the gradient of the sum over the union batch, as one process computes it. Estimators
    that differentiate inside Pyro (``loss_and_grads``: ``trace_graph``, ``renyi``,
    ``rws``) run with ``Tensor.backward`` deferred (:func:`deferred_backward`): the surrogate
    they would differentiate is returned by the DDP forward and differentiated after it, so
    DDP's hooks see the backward pass.

    Example::

        >>> learner = VariationalLearner(vae, pyro.infer.Trace_ELBO())  # doctest: +SKIP
        >>> learner.step(x_batch)["loss"]  # doctest: +SKIP
    """

    def __init__(
        self,
        model: nn.Module,
        elbo: ELBO | None = None,
        guide: nn.Module | None = None,
        optim: str = "adam",
        lr: float = 1e-3,
        betas: tuple[float, float] | list[float] = (0.9, 0.999),
        momentum: float = 0.0,
        weight_decay: float = 0.0,
        clip_norm: float | None = None,
        kl_warmup_steps: int = 0,
        precision: int | str = 32,
    ) -> None:
        if guide is None:
            guide = getattr(model, "guide", None)
            guide = guide if isinstance(guide, nn.Module) else EmptyGuide()
        self.model = model
        self.guide = guide
        self.elbo = elbo if elbo is not None else Trace_ELBO(max_plate_nesting=1)
        self.eval_elbo = Trace_ELBO(max_plate_nesting=1)
        self.reports_loss = not isinstance(self.elbo, TraceTailAdaptive_ELBO)
        self.loss_module = self.elbo(model, guide) if has_differentiable_loss(self.elbo) else None
        owned = any(m is guide for m in model.modules())
        self.module = model if owned else nn.ModuleDict({"model": model, "guide": guide})
        self.optimizer = make_optimizer(
            self.module.parameters(), optim, lr, betas, momentum, weight_decay
        )
        self.clip_norm = clip_norm
        self.kl_warmup_steps = kl_warmup_steps
        self.num_steps = 0
        # Pyro keeps a decaying-average baseline per position in the batch: it needs batches
        # of one size, and its running value is part of the state to checkpoint
        self.fixed_batch_size = getattr(guide, "baseline", None) == "decaying_average"
        self._store: dict[str, Any] | None = (
            {"params": {}, "constraints": {}} if needs_param_store(self.elbo, guide) else None
        )
        self._compiled = not is_jit(self.elbo)
        # Pyro's loss_and_grads back-propagates only when the traces hold param sites, and the
        # JIT looks parameters up by their sites' names: those need pyrogen's param statements;
        # the ELBOModule path optimises the module's parameters directly and does not
        self._needs_statements = is_jit(self.elbo) or self.loss_module is None
        # mixed precision and data parallelism (off: the steps above, unchanged)
        self.precision = precision
        self._dtype = precision_dtype(precision)
        self._scaler: torch.amp.GradScaler | None = None
        self._scaler_state: dict[str, Any] | None = None
        self._ddp: nn.Module | None = None
        self.world_size = 1

    @property
    def optimizers(self) -> list[torch.optim.Optimizer]:
        return [self.optimizer]

    @property
    def kl_beta(self) -> float:
        if self.kl_warmup_steps <= 0:
            return 1.0
        return min(1.0, self.num_steps / self.kl_warmup_steps)

    @contextmanager
    def own_param_store(self) -> Iterator[None]:
        """Run with this learner's private param store (a no-op unless the estimator needs
        one): the global store's content is swapped out and restored afterwards."""
        if self._store is None:
            yield
            return
        with pyro.get_param_store().scope(state=self._store):
            yield

    def _compile(self, args: tuple) -> None:
        """First step of a JIT estimator: register the model's and guide's param sites in the
        private store (the compiled function reads them there), then compile on a throwaway
        call. Both run on a forked RNG, so compiling (which runs the program several times)
        draws nothing from the run's random stream: a resumed run compiles in the middle of
        the stream and still equals an uninterrupted one."""
        devices = [a.device for a in args if torch.is_tensor(a) and a.device.type == "cuda"]
        with torch.random.fork_rng(devices=devices[:1]):
            with poutine.block(), poutine.trace(param_only=True) as capture:
                self.guide(*args)
                self.model(*args)
            store = pyro.get_param_store()
            for name, site in capture.trace.nodes.items():
                store._params[name] = site["value"].unconstrained()
                store._param_to_name[store._params[name]] = name
                store._constraints[name] = constraints.real
            with jit_warnings_silenced():
                self._loss_value(args, backward=False)
        self._compiled = True

    def _loss_value(self, args: tuple, backward: bool = True) -> torch.Tensor:
        """−ELBO of the batch, with the parameters' gradients filled in when ``backward``."""
        if self.loss_module is not None:
            loss = self.loss_module(*args)
            if not backward:
                return loss.detach()
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
        if not backward:
            return torch.as_tensor(float("nan"))
        loss = self.elbo.loss_and_grads(self.model, self.guide, *args)
        if isinstance(loss, tuple):  # ReweightedWakeSleep: (wake-θ loss, wake-φ loss)
            loss = loss[0]
        return torch.as_tensor(float(loss))

    @contextmanager
    def _step_context(self, args: tuple, beta: float) -> Iterator[None]:
        """What every training step runs in: this learner's param store (compiling a JIT
        estimator on the first step), pyrogen's param statements where Pyro's estimator reads
        param sites, Pyro's argument checks on the first step only, and KL warm-up's β."""
        with ExitStack() as stack:
            stack.enter_context(self.own_param_store())
            stack.enter_context(param_statements(self._needs_statements))
            if not self._compiled:
                self._compile(args)
            # Pyro's argument checks run on the first step, where a user's mistake shows (e.g.
            # non-binary data under a Bernoulli likelihood); later steps skip them for speed
            first = self.num_steps == 0
            stack.enter_context(pyro.validation_enabled(first and is_validation_enabled()))
            stack.enter_context(jit_warnings_silenced())
            if beta != 1.0:
                stack.enter_context(ScaleLatents(beta))
            yield

    def step(self, x: torch.Tensor, y: torch.Tensor | None = None) -> dict[str, float]:
        if self._ddp is not None or self._dtype is not None:
            return self._objective_step(x, y)
        self.module.train()
        args = (x,) if y is None else (x, y)
        self.optimizer.zero_grad(set_to_none=True)
        beta = self.kl_beta
        with self._step_context(args, beta):
            loss = self._loss_value(args)
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

    # ---------------------------------------------------------------- DDP, mixed precision
    def data_parallel(self) -> None:
        """Train data-parallel over the default process group (the run loop calls this under
        ``torchrun``): layers that normalise with batch statistics use the global batch
        (:mod:`pyrogen.parallel.sync_layers`), and DDP wraps :meth:`objective`. Constructing
        DDP broadcasts rank 0's parameters, so every rank starts from the same ones.

        Buffers are not re-broadcast at each step: a VAE's and a flow's are constants or
        statistics of the global batch (batch norm, act-norm), equal on every rank."""
        from pyrogen.parallel import distributed, sync_layers

        sync_layers.convert(self.module, device_of(self.module))
        self.world_size = distributed.world_size()
        self._ddp = data_parallel(_Objective(self), broadcast_buffers=False)

    def objective(self, *args: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(surrogate, value)`` for a batch: the tensor whose gradient is the estimator's
        (summed over the batch), and −ELBO of the batch to report. For ELBOModule estimators
        both are the loss; for ``loss_and_grads`` ones the surrogate is what Pyro would have
        differentiated (:func:`deferred_backward`). The forward pass runs under
        ``torch.autocast`` for ``bf16`` and ``16-mixed``; the values are float32."""
        with autocast(self._dtype, device_of(self.module)):
            if self.loss_module is not None:
                loss = self.loss_module(*args).float()
                if self.reports_loss:
                    return loss, loss.detach()
                # tail-adaptive: the value is +inf by design; report a Trace_ELBO estimate
                with torch.no_grad():
                    value = torch.as_tensor(self.eval_elbo.loss(self.model, self.guide, *args))
                return ZeroValue.apply(loss), value
            with deferred_backward() as surrogates:
                value = self.elbo.loss_and_grads(self.model, self.guide, *args)
        if isinstance(value, tuple):  # ReweightedWakeSleep: (wake-θ loss, wake-φ loss)
            value = value[0]
        surrogate = sum(s.float() for s in surrogates) if surrogates else torch.zeros(())
        return surrogate, torch.as_tensor(float(value))

    def _objective_step(self, x: torch.Tensor, y: torch.Tensor | None = None) -> dict[str, float]:
        """:meth:`step` through :meth:`objective`: under DDP (each rank differentiates W times
        its sum, so DDP's average is the sum's gradient over the union batch) and/or in mixed
        precision (the backward pass outside autocast, float16 with a gradient scaler)."""
        self.module.train()
        args = (x,) if y is None else (x, y)
        self.optimizer.zero_grad(set_to_none=True)
        if self._dtype == torch.float16 and self._scaler is None:
            self._scaler = grad_scaler(device_of(self.module))
            if self._scaler_state:
                self._scaler.load_state_dict(self._scaler_state)
        beta = self.kl_beta
        with self._step_context(args, beta):
            surrogate, value = (self._ddp or self.objective)(*args)
            finite = bool(torch.isfinite(value))
            if self._ddp is not None:  # every rank joins the all-reduce, finite or not
                surrogate = poisoned(surrogate, value)
            if (finite or self._ddp is not None) and surrogate.requires_grad:
                if self.world_size != 1:
                    surrogate = surrogate * self.world_size
                if self._scaler is not None:
                    surrogate = self._scaler.scale(surrogate)
                surrogate.backward()
        metrics = {"loss": float(value) / x.shape[0]}
        if self.kl_warmup_steps:
            metrics["kl_beta"] = beta
        if not finite:
            self.optimizer.zero_grad(set_to_none=True)
            return metrics  # the run loop stops; parameters are left untouched
        if self._scaler is not None:
            self._scaler.unscale_(self.optimizer)
        params = [p for p in self.module.parameters() if p.grad is not None]
        norm = nn.utils.get_total_norm([p.grad for p in params])
        if self._scaler is None and not torch.isfinite(norm):
            # under DDP: some rank's loss or gradient was not finite (the averaged gradients
            # are NaN on every rank), so every rank stops here
            self.optimizer.zero_grad(set_to_none=True)
            return {**metrics, "loss": float("nan")}
        if self.clip_norm is not None:
            nn.utils.clip_grads_with_norm_(params, self.clip_norm, norm)
            metrics["grad_norm"] = float(norm)
        if self._scaler is not None:  # skips the update when the gradients overflowed
            self._scaler.step(self.optimizer)
            self._scaler.update()
        else:
            self.optimizer.step()
        self.num_steps += 1
        return metrics

    def rank_state(self) -> dict[str, Any]:
        """What differs between ranks under DDP: the decaying-average baselines (each rank
        keeps the running averages of its own positions in the batch)."""
        return {"param_store": self._baselines()}

    def load_rank_state(self, state: dict[str, Any]) -> None:
        if self._store is not None:
            for name, value in state.get("param_store", {}).items():
                self._store["params"][name] = value.clone()
                self._store["constraints"][name] = constraints.real

    @torch.no_grad()
    def evaluate(self, x: torch.Tensor, y: torch.Tensor | None = None) -> dict[str, float]:
        """The ELBO per example (for a flow: the exact log-likelihood)."""
        self.module.eval()
        args = (x,) if y is None else (x, y)
        with param_statements(False):
            elbo = -self.eval_elbo.loss(self.model, self.guide, *args)
        key = "log_prob" if isinstance(self.guide, EmptyGuide) else "elbo"
        return {key: elbo / x.shape[0]}

    def state_dict(self) -> dict[str, Any]:
        """Parameters, optimiser state, the step count and the baselines kept in this
        learner's param store (the JIT's entries are the parameters themselves)."""
        state = {
            "module": self.module.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "num_steps": self.num_steps,
            "param_store": self._baselines(),
        }
        if self._dtype == torch.float16:  # the gradient scaler's scale and growth tracker
            state["scaler"] = self._scaler.state_dict() if self._scaler else self._scaler_state
        return state

    def _baselines(self) -> dict[str, torch.Tensor]:
        if self._store is None:
            return {}
        params = self._store["params"]
        return {k: v.detach().clone() for k, v in params.items() if "baseline" in k}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.module.load_state_dict(state["module"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.num_steps = int(state["num_steps"])
        self.load_rank_state(state)
        if state.get("scaler"):
            if self._scaler is not None:
                self._scaler.load_state_dict(state["scaler"])
            self._scaler_state = state["scaler"]


@contextmanager
def jit_warnings_silenced() -> Iterator[None]:
    """Silence torch's deprecation notice for ``torch.jit.trace``, which Pyro's ``Jit*``
    estimators call: the estimators are Pyro's and work with torch 2.13 as documented; the
    notice would print on every compile and says nothing the user can act on. Other warnings
    pass."""
    with warnings.catch_warnings():
        for category in (DeprecationWarning, FutureWarning, UserWarning):
            warnings.filterwarnings("ignore", message=r".*torch\.jit\.trace", category=category)
        yield


class _Objective(nn.Module):
    """What DDP wraps: the learner's module tree, with :meth:`VariationalLearner.objective`
    as ``forward`` (DDP's hooks sit on the tree's parameters)."""

    def __init__(self, learner: VariationalLearner) -> None:
        super().__init__()
        self.tree = learner.module
        self.learner = learner  # not a module: not part of the tree

    def forward(self, *args: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.learner.objective(*args)


@contextmanager
def deferred_backward() -> Iterator[list[torch.Tensor]]:
    """While active, ``Tensor.backward`` records the tensor it is called on (times its
    ``gradient``, if given) instead of differentiating it; yields the list of recorded tensors.

    Pyro's ``loss_and_grads`` estimators build a surrogate loss and call ``backward`` on it
    themselves. Under DDP the backward pass must follow the DDP forward pass that computed
    the loss (DDP's gradient hooks are armed at the end of its forward), so pyrogen runs
    ``loss_and_grads`` inside the wrapped module's forward with backward deferred, returns
    the sum of the recorded surrogates, and differentiates it after the forward. The sum's
    gradient is the sum of the gradients the calls would have accumulated."""
    recorded: list[torch.Tensor] = []
    original = torch.Tensor.backward

    def record(tensor, gradient=None, retain_graph=None, create_graph=False, inputs=None):  # noqa: ARG001
        recorded.append(tensor if gradient is None else (tensor * gradient).sum())

    torch.Tensor.backward = record
    try:
        yield recorded
    finally:
        torch.Tensor.backward = original

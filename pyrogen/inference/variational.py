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

import math
import warnings
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from typing import Any

import pyro
import torch
from pyro import poutine
from pyro.distributions import TorchDistribution
from pyro.infer import ELBO, Trace_ELBO, TraceEnum_ELBO, TraceTailAdaptive_ELBO
from pyro.infer.util import is_validation_enabled
from pyro.poutine.subsample_messenger import _Subsample
from torch import nn
from torch.distributions import Independent, constraints, kl_divergence, register_kl
from torch.overrides import TorchFunctionMode

from pyrogen.config import ELBOConfig, check_argument
from pyrogen.inference.base import (
    ZeroValue,
    data_parallel,
    device_of,
    make_optimizer,
    precision_dtype,
)
from pyrogen.inference.step import GuardedStep
from pyrogen.parallel import distributed, sync_layers
from pyrogen.params import param_statements


class EmptyGuide(nn.Module):
    """The guide of a model without latent variables (a flow): it samples nothing."""

    def forward(self, *args: Any, **kwargs: Any) -> None:
        return None


class ScaleLatents(poutine.messenger.Messenger):
    """Scale the log-density of every *latent* (unobserved) sample site by ``beta``.

    Applied to model and guide alike it turns the ELBO into
    E_q[log p(x|z)] − β KL(q(z|x) ‖ p(z)): the β-VAE (Higgins et al. 2017) and KL warm-up
    (β annealing)."""

    def __init__(self, beta: float) -> None:
        super().__init__()
        self.beta = beta

    def _process_message(self, msg: dict[str, Any]) -> None:
        if msg["type"] == "sample" and not msg["is_observed"]:
            msg["scale"] = msg["scale"] * self.beta


class FreeBits(poutine.messenger.Messenger):
    """Free bits (Kingma et al. 2016, "Improved variational inference with inverse
    autoregressive flow", App. C.8) as a Pyro effect. In a batch of N examples each latent
    dimension j's KL term S_j = Σ_n KL(q(z_nj | x_n) ‖ p(z_nj)) becomes max(N λ, S_j), i.e. the
    batch-mean KL of the dimension is floored at λ nats::

        loss = −Σ_n E_q[log p(x_n | z_n)] + Σ_j max(N λ, S_j)

    A dimension at or below the floor contributes the constant N λ and no gradient, so the
    encoder may spend those nats on reconstruction; the others contribute their KL as before.

    Every latent site is met twice per particle: in the guide (q), then in the model (p,
    replayed on the guide's draw). Both distributions are wrapped to score only dimensions above
    the floor, with m_j = [S_j > N λ] (no gradient)::

        log q̃(z_n) = Σ_j m_j log q(z_nj),   log p̃(z_n) = Σ_j [m_j log p(z_nj) − (1 − m_j) λ]

    so Σ_n (log p̃ − log q̃) = −Σ_j max(N λ, S_j). S_j is the estimator's own KL: the Monte
    Carlo Σ_n log q(z_nj) − log p(z_nj) on the draws for the estimators that score sites
    (``trace``, ``trace_graph``, their JIT versions), the closed form Σ_n KL(q_nj ‖ p_nj) for
    ``mean_field`` (which asks for KL(q̃ ‖ p̃): registered below). Under DDP ``reduce`` sums S
    and N over the ranks, so the floor applies to the union batch as in one process.

    Needs q and p that factorise per dimension (``Independent`` over one event dimension): a
    site that does not is a ``ValueError`` (configs refuse such guides and priors earlier)."""

    def __init__(
        self, free_bits: float, reduce: Callable[[torch.Tensor], torch.Tensor] | None = None
    ) -> None:
        super().__init__()
        if not free_bits > 0:
            raise ValueError(f"free_bits must be > 0 (0 is the ELBO: no effect), got {free_bits}")
        self.free_bits = float(free_bits)
        self.reduce = reduce
        self._pending: dict[str, _FreeBitsPair] = {}

    def _process_message(self, msg: dict[str, Any]) -> None:
        if msg["type"] != "sample" or msg["is_observed"] or isinstance(msg["fn"], _Subsample):
            return  # observed sites and plates' index sites are not latents
        fn, name = msg["fn"], msg["name"]
        if not (isinstance(fn, Independent) and fn.reinterpreted_batch_ndims == 1):
            raise ValueError(
                f"free bits need a latent site whose density factorises per dimension (an "
                f"Independent over one event dimension); site {name!r} has {type(fn).__name__}"
            )
        pair = self._pending.pop(name, None)
        if pair is None:  # the guide's draw comes first
            self._pending[name] = pair = _FreeBitsPair(fn, self.free_bits, self.reduce)
            msg["fn"] = _FlooredDims(fn, pair, model_side=False)
        else:  # the model's site, replayed on that draw
            pair.p = fn
            msg["fn"] = _FlooredDims(fn, pair, model_side=True)


class _FreeBitsPair:
    """q and p of one latent site in one particle, and the masks m_j = [S_j > N λ] computed
    (once per kind, without gradient) from the Monte Carlo or the closed-form S_j."""

    def __init__(self, q: Independent, free_bits: float, reduce: Callable | None) -> None:
        self.q, self.p = q, None
        self.free_bits, self.reduce = free_bits, reduce
        self.masks: dict[str, torch.Tensor] = {}

    def mask(self, kl: torch.Tensor, kind: str) -> torch.Tensor:
        """m of shape ``(..., 1, D)`` from the per-example, per-dimension KL ``(..., N, D)``."""
        if kind not in self.masks:
            kl = kl.detach()
            total, n = kl.sum(-2, keepdim=True), kl.shape[-2]
            if self.reduce is None:
                above = total > n * self.free_bits
            else:  # the union batch: Σ over ranks of S and of N
                both = self.reduce(torch.cat([total.flatten(), total.new_tensor([n])]))
                above = (both[:-1] > both[-1] * self.free_bits).reshape(total.shape)
            self.masks[kind] = above.to(device=kl.device, dtype=kl.dtype)
        return self.masks[kind]

    def monte_carlo_mask(self, z: torch.Tensor) -> torch.Tensor:
        if "mc" in self.masks:
            return self.masks["mc"]
        if self.p is None:
            raise ValueError("free bits: the guide's latent site was scored before the model's")
        return self.mask(self.q.base_dist.log_prob(z) - self.p.base_dist.log_prob(z), "mc")


_NO_SHAPE = torch.Size()


class _FlooredDims(TorchDistribution):
    """q̃ or p̃ of :class:`FreeBits`: samples are ``fn``'s, ``log_prob`` scores only the
    dimensions above the floor (plus −λ per floored dimension on the model's side)."""

    arg_constraints: dict = {}

    def __init__(self, fn: Independent, pair: _FreeBitsPair, model_side: bool) -> None:
        self.fn, self.pair, self.model_side = fn, pair, model_side
        super().__init__(fn.batch_shape, fn.event_shape, validate_args=False)

    @property
    def support(self):  # noqa: ANN201
        return self.fn.support

    @property
    def has_rsample(self) -> bool:
        return self.fn.has_rsample

    def sample(self, sample_shape: torch.Size = _NO_SHAPE) -> torch.Tensor:
        return self.fn.sample(sample_shape)

    def rsample(self, sample_shape: torch.Size = _NO_SHAPE) -> torch.Tensor:
        return self.fn.rsample(sample_shape)

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        m = self.pair.monte_carlo_mask(value)
        log_prob = (m * self.fn.base_dist.log_prob(value)).sum(-1)
        if self.model_side:
            log_prob = log_prob - self.pair.free_bits * (1 - m).sum(-1)
        return log_prob


@register_kl(_FlooredDims, _FlooredDims)
def _kl_floored_dims(q: _FlooredDims, p: _FlooredDims) -> torch.Tensor:
    """KL(q̃ ‖ p̃) = Σ_j [m_j KL(q_j ‖ p_j) + (1 − m_j) λ] per example, m from the closed-form
    S_j (``NotImplementedError`` where torch has no closed form per dimension)."""
    if q.model_side or not p.model_side or q.pair is not p.pair:
        raise NotImplementedError
    kl = kl_divergence(q.fn.base_dist, p.fn.base_dist)
    m = q.pair.mask(kl, "analytic")
    return (m * kl).sum(-1) + q.pair.free_bits * (1 - m).sum(-1)


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
        clip_norm: clip the gradients' global norm.
        beta: the weight β of KL(q(z|x) ‖ p(z)) in the training loss
            −(E_q[log p(x|z)] − β KL) (a β-VAE; 1: the ELBO), applied as a Pyro effect
            (:class:`ScaleLatents`); kl_warmup_steps: β rises linearly from 0 to ``beta``
            over these steps.
        free_bits: λ > 0 floors each latent dimension's batch-mean KL at λ nats
            (:class:`FreeBits`, Kingma et al. 2016); 0: the ELBO (the effect is not applied).
        precision: ``32`` (float32), ``"bf16"`` or ``"16-mixed"``: the loss's forward pass
            runs under ``torch.autocast`` in bfloat16 or float16 (float16 with a gradient
            scaler); evaluation always runs in float32.

    ``loss`` is per example: −ELBO / batch size (nats; the β-weighted ELBO when β ≠ 1,
    reported with ``kl_beta``; with free bits the
    floored loss). ``evaluate`` reports the plain
    Monte Carlo ELBO (``Trace_ELBO``, one particle) whatever the training estimator, so runs
    trained with different estimators (or β) are compared on the same quantity; for a flow (no
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
    ``rws``) run with their ``backward`` calls deferred (:func:`deferred_backward`, also in
    mixed precision): the surrogate they would differentiate is returned by the DDP forward
    and differentiated after it, so DDP's hooks see the backward pass.

    Every step, whatever the estimator, precision or data parallelism, is one
    :class:`~pyrogen.inference.step.GuardedStep` of :meth:`objective` (autocast, gradient
    scaler, DDP share, clipping, and no update when the loss or the gradients are not
    finite).

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
        beta: float = 1.0,
        free_bits: float = 0.0,
    ) -> None:
        check_argument(ELBOConfig, "beta", beta)
        check_argument(ELBOConfig, "free_bits", free_bits)
        if guide is None:
            guide = getattr(model, "guide", None)
            guide = guide if isinstance(guide, nn.Module) else EmptyGuide()
        self.model = model
        self.guide = guide
        self.elbo = elbo if elbo is not None else Trace_ELBO(max_plate_nesting=1)
        # an estimator that enumerates (a mixture prior's component) is evaluated enumerating
        enumerates = isinstance(self.elbo, TraceEnum_ELBO)
        self.eval_elbo = (TraceEnum_ELBO if enumerates else Trace_ELBO)(max_plate_nesting=1)
        self.reports_loss = not isinstance(self.elbo, TraceTailAdaptive_ELBO)
        self.loss_module = self.elbo(model, guide) if has_differentiable_loss(self.elbo) else None
        owned = any(m is guide for m in model.modules())
        self.module = model if owned else nn.ModuleDict({"model": model, "guide": guide})
        # autocast, gradient scaler, DDP share, clipping, NaN-cancel: one guarded step
        self._guard = GuardedStep(
            make_optimizer(self.module.parameters(), optim, lr, betas, momentum, weight_decay),
            precision,
            clip_norm,
        )
        if beta != 1.0 and isinstance(guide, EmptyGuide):
            raise ValueError(
                f"beta={beta} weighs KL(q(z|x) ‖ p(z)), but this model has no guide (no "
                "latent variables, e.g. a flow): use beta=1"
            )
        if free_bits > 0 and isinstance(guide, EmptyGuide):
            raise ValueError(
                f"free_bits={free_bits} floors the KL of each latent dimension, but this model "
                "has no guide (no latent variables, e.g. a flow): use free_bits=0"
            )
        self.beta = beta
        self.free_bits = free_bits
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
        # mixed precision and data parallelism
        self.precision = precision
        self._dtype = precision_dtype(precision)
        self._ddp: nn.Module | None = None
        self.world_size = 1

    @property
    def optimizer(self) -> torch.optim.Optimizer:
        return self._guard.optimizer

    @optimizer.setter
    def optimizer(self, optimizer: torch.optim.Optimizer) -> None:
        self._guard.optimizer = optimizer

    @property
    def clip_norm(self) -> float | None:
        return self._guard.clip_norm

    @clip_norm.setter
    def clip_norm(self, clip_norm: float | None) -> None:
        self._guard.clip_norm = clip_norm

    @property
    def _scaler(self) -> torch.amp.GradScaler | None:
        """The float16 gradient scaler, once the first 16-mixed step has created it."""
        return self._guard.scaler

    @property
    def optimizers(self) -> list[torch.optim.Optimizer]:
        return [self.optimizer]

    @property
    def kl_beta(self) -> float:
        """The KL weight of the next step: ``beta``, or min(1, k / N)·``beta`` at step k of a
        warm-up over N = ``kl_warmup_steps`` steps."""
        if self.kl_warmup_steps <= 0:
            return self.beta
        return min(1.0, self.num_steps / self.kl_warmup_steps) * self.beta

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
        """−ELBO of the batch (``NaN`` for a ``loss_and_grads`` estimator without ``backward``),
        with the parameters' gradients filled in when ``backward``."""
        if not backward:
            if self.loss_module is None:
                return torch.as_tensor(float("nan"))
            return self.loss_module(*args).detach()
        surrogate, value = self.objective(*args)
        if surrogate.requires_grad:
            surrogate.backward()
        return value

    @contextmanager
    def _step_context(self, args: tuple, beta: float) -> Iterator[None]:
        """What every training step runs in: this learner's param store (compiling a JIT
        estimator on the first step), pyrogen's param statements where Pyro's estimator reads
        param sites, Pyro's argument checks on the first step only, the KL weight β and the
        free-bits floor (both entered before compiling)."""
        with ExitStack() as stack:
            stack.enter_context(self.own_param_store())
            stack.enter_context(param_statements(self._needs_statements))
            if beta != 1.0:  # before compiling: JitTrace_ELBO keeps the β it was compiled with
                stack.enter_context(ScaleLatents(beta))
            if self.free_bits > 0:  # also before compiling: the JIT keeps the floor's ops
                reduce = distributed.all_reduce_sum if self.world_size > 1 else None
                stack.enter_context(FreeBits(self.free_bits, reduce))
            if not self._compiled:
                self._compile(args)
            # Pyro's argument checks run on the first step, where a user's mistake shows (e.g.
            # non-binary data under a Bernoulli likelihood); later steps skip them for speed
            first = self.num_steps == 0
            stack.enter_context(pyro.validation_enabled(first and is_validation_enabled()))
            stack.enter_context(jit_warnings_silenced())
            yield

    def step(self, x: torch.Tensor, y: torch.Tensor | None = None) -> dict[str, float]:
        """One guarded step of :meth:`objective` (under DDP: of the DDP module wrapping it,
        each rank differentiating W times its sum, so DDP's average is the gradient of the
        sum over the union batch). A non-finite loss or gradient leaves the parameters
        untouched and reports a non-finite ``loss``."""
        self.module.train()
        args = (x,) if y is None else (x, y)
        beta = self.kl_beta
        objective = self._ddp or self.objective
        with self._step_context(args, beta):
            done = self._guard.step(lambda: objective(*args), share=self.world_size)
        metrics = {"loss": done.value / x.shape[0]}
        if self.kl_warmup_steps or self.beta != 1.0:
            metrics["kl_beta"] = beta
        if not done.stepped:  # the run loop stops; parameters are left untouched
            if math.isfinite(done.value):  # the gradients were not (under DDP: some rank's)
                metrics["loss"] = float("nan")
            return metrics
        if self.clip_norm is not None:
            metrics["grad_norm"] = done.grad_norm
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
        sync_layers.convert(self.module, device_of(self.module))
        self.world_size = distributed.world_size()
        self._ddp = data_parallel(_Objective(self), broadcast_buffers=False)
        self._guard.distributed = True

    def objective(self, *args: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(surrogate, value)`` for a batch: the tensor whose gradient is the estimator's
        (summed over the batch), and −ELBO of the batch to report.

        * ELBOModule estimators (``differentiable_loss``): both are the loss, except for the
          tail-adaptive loss, whose value is +inf by design: its surrogate carries the
          gradient with value 0 (:class:`~pyrogen.inference.base.ZeroValue`) and the value
          reported is a ``Trace_ELBO`` estimate of the same batch;
        * ``loss_and_grads`` estimators: in one float32 process Pyro differentiates its
          surrogate itself (the gradients are filled here, the surrogate returned is a
          constant 0); under DDP or in mixed precision its ``backward`` calls are deferred
          (:func:`deferred_backward`) and the surrogate is the sum of what they would have
          differentiated.

        :meth:`step` runs it under autocast for ``bf16`` and ``16-mixed``."""
        if self.loss_module is not None:
            loss = self.loss_module(*args)
            if self.reports_loss:
                return loss, loss.detach()
            with torch.no_grad():
                value = torch.as_tensor(self.eval_elbo.loss(self.model, self.guide, *args))
            return ZeroValue.apply(loss), value
        if self._ddp is None and self._dtype is None:
            value = self.elbo.loss_and_grads(self.model, self.guide, *args)
            surrogate = torch.zeros(())
        else:
            with deferred_backward() as surrogates:
                value = self.elbo.loss_and_grads(self.model, self.guide, *args)
            surrogate = sum(s.float() for s in surrogates) if surrogates else torch.zeros(())
        if isinstance(value, tuple):  # ReweightedWakeSleep: (wake-θ loss, wake-φ loss)
            value = value[0]
        return surrogate, torch.as_tensor(float(value))

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
            state["scaler"] = self._guard.scaler_state()
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
            self._guard.load_scaler_state(state["scaler"])


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


class _DeferredBackward(TorchFunctionMode):
    """A torch function mode in which ``Tensor.backward`` records its tensor (times its
    ``gradient``, if given) instead of differentiating it; every other function runs as
    usual."""

    def __init__(self) -> None:
        super().__init__()
        self.recorded: list[torch.Tensor] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):  # noqa: ANN001, ANN204
        kwargs = kwargs or {}
        if func is torch.Tensor.backward:
            tensor = args[0]
            gradient = kwargs.get("gradient", args[1] if len(args) > 1 else None)
            self.recorded.append(tensor if gradient is None else (tensor * gradient).sum())
            return None
        return func(*args, **kwargs)


@contextmanager
def deferred_backward() -> Iterator[list[torch.Tensor]]:
    """While active (in this thread, inside the ``with`` block only), ``Tensor.backward``
    records the tensor it is called on (times its ``gradient``, if given) instead of
    differentiating it; yields the list of recorded tensors.

    Pyro's ``loss_and_grads`` estimators build a surrogate loss and call ``backward`` on it
    themselves. Under DDP the backward pass must follow the DDP forward pass that computed
    the loss (DDP's gradient hooks are armed at the end of its forward), so pyrogen runs
    ``loss_and_grads`` inside the wrapped module's forward with backward deferred, returns
    the sum of the recorded surrogates, and differentiates it after the forward. The sum's
    gradient is the sum of the gradients the calls would have accumulated.

    The deferral is a :class:`~torch.overrides.TorchFunctionMode` (``Tensor.backward``
    consults the active modes before differentiating): nothing is patched, so the class
    attribute ``torch.Tensor.backward`` and other threads are untouched."""
    with _DeferredBackward() as mode:
        yield mode.recorded

"""Adversarial training: Goodfellow et al.'s Algorithm 1 and its common variants.

The discriminator is a binary classifier D(x) = σ(d(x)) = P(data | x); the value of the game

    V(D, G) = E_{x ~ p_data}[log D(x)] + E_{z ~ p_z}[log(1 − D(G(z)))]

is its log-likelihood with data labelled 1 and samples labelled 0. D maximises V (for fixed G
the best D is D*(x) = p_data(x) / (p_data(x) + p_g(x)), Proposition 1, and
max_D V = −log 4 + 2 JSD(p_data ‖ p_g), whose minimum over G, −log 4, is reached at
p_g = p_data, Theorem 1). The losses, from logits l = d(x) (names in ``GAN_LOSSES``):

=================  ============================================  ========================
name               discriminator loss                             generator loss
=================  ============================================  ========================
minimax            −V (binary cross-entropy)                      E log(1 − D(G(z))): G
                                                                  minimises V, as stated
non_saturating     −V                                             −E log D(G(z))
hinge              E max(0, 1 − d(x)) + E max(0, 1 + d(G(z)))     −E d(G(z))
wasserstein        E d(G(z)) − E d(x) + λ E(‖∇d(x̂)‖ − 1)²          −E d(G(z))
=================  ============================================  ========================

With −log D = softplus(−l) and −log(1 − D) = softplus(l): early in training D rejects samples
confidently (l ≪ 0) and the minimax gradient ∂/∂l log(1 − σ(l)) = −σ(l) vanishes, while the
non-saturating one, −σ(−l), stays near −1: the paper's practical fix. An R1 penalty
(γ/2) E_data ‖∇_x d(x)‖² (Mescheder et al. 2018) can be added to any discriminator loss.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from pyrogen.config import AdversarialConfig, OptimConfig, check_argument
from pyrogen.inference.base import data_parallel, device_of, make_optimizer, precision_dtype
from pyrogen.inference.step import GuardedStep
from pyrogen.models.gan import GAN
from pyrogen.parallel import distributed, sync_layers
from pyrogen.registry import GAN_LOSSES


class GANLoss:
    """The two players' losses from discriminator logits (batch means); D minimises
    ``d_loss(real, fake)``, G minimises ``g_loss(fake)``.

    A loss's options are its constructor's parameters (:meth:`options`); an instance is
    passed to :class:`AdversarialLearner` as it is, so a loss of one's own needs no
    registration (registering it, ``@GAN_LOSSES.register("name")``, makes it a config name).
    Facts the rest of pyrogen reads: ``gradient_penalty`` and ``in_nats``.
    """

    #: weight λ of the WGAN-GP gradient penalty λ E(‖∇d(x̂)‖ − 1)² added to D's loss (0: none)
    gradient_penalty: float = 0.0
    #: ``d_loss`` is −V(D, G), a binary cross-entropy in nats (else in D's output units)
    in_nats: ClassVar[bool] = True

    @classmethod
    def options(cls) -> dict[str, Any]:
        """The loss's options and their defaults (its constructor's parameters); a config
        passes the ``adversarial`` keys of the same names."""
        if cls.__init__ is object.__init__:
            return {}
        params = inspect.signature(cls.__init__).parameters
        return {
            k: p.default
            for k, p in params.items()
            if k != "self" and p.kind is p.POSITIONAL_OR_KEYWORD
        }

    def d_loss(self, real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
        """−V(D, G) = −E log D(x) − E log(1 − D(G(z))) = E softplus(−l_x) + E softplus(l_z)."""
        return F.softplus(-real).mean() + F.softplus(fake).mean()

    def g_loss(self, fake: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def __repr__(self) -> str:
        shown = ", ".join(f"{k}={getattr(self, k)!r}" for k in self.options() if hasattr(self, k))
        return f"{type(self).__name__}({shown})"


@GAN_LOSSES.register("minimax")
class Minimax(GANLoss):
    """G minimises V: its loss is E log(1 − D(G(z))) = −E softplus(l) (saturates as D wins)."""

    def g_loss(self, fake: torch.Tensor) -> torch.Tensor:
        return -F.softplus(fake).mean()


@GAN_LOSSES.register("non_saturating")
class NonSaturating(GANLoss):
    """G maximises E log D(G(z)): loss E softplus(−l) (the GAN paper's practical choice)."""

    def g_loss(self, fake: torch.Tensor) -> torch.Tensor:
        return F.softplus(-fake).mean()


@GAN_LOSSES.register("hinge")
class Hinge(GANLoss):
    """Hinge loss (Lim & Ye 2017; Miyato et al. 2018): D minimises E max(0, m − d(x)) +
    E max(0, m + d(G(z))) with margin m (1 in the papers), G minimises −E d(G(z))."""

    in_nats = False

    def __init__(self, margin: float = 1.0) -> None:
        if not (math.isfinite(margin) and margin > 0):
            raise ValueError(f"bad value for 'margin': {margin!r}; expected a number > 0")
        self.margin = margin

    def d_loss(self, real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
        return F.relu(self.margin - real).mean() + F.relu(self.margin + fake).mean()

    def g_loss(self, fake: torch.Tensor) -> torch.Tensor:
        return -fake.mean()


@GAN_LOSSES.register("wasserstein")
class Wasserstein(GANLoss):
    """WGAN-GP (Gulrajani et al. 2017): a critic d minimises E d(G(z)) − E d(x) plus
    λ E (‖∇d(x̂)‖ − 1)² (``gradient_penalty`` = λ, ``adversarial.gradient_penalty`` in a
    config); G minimises −E d(G(z))."""

    in_nats = False

    def __init__(self, gradient_penalty: float = 10.0) -> None:
        check_argument(AdversarialConfig, "gradient_penalty", gradient_penalty)
        self.gradient_penalty = gradient_penalty

    def d_loss(self, real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
        return fake.mean() - real.mean()

    def g_loss(self, fake: torch.Tensor) -> torch.Tensor:
        return -fake.mean()


def make_gan_loss(name: str, **options: Any) -> GANLoss:
    """The loss registered as ``name``, given those of ``options`` its constructor takes
    (e.g. a config's ``adversarial`` section: ``gradient_penalty`` reaches ``wasserstein``
    only)."""
    cls = GAN_LOSSES.get(name)
    accepted = cls.options()
    return cls(**{k: v for k, v in options.items() if k in accepted})


def gradient_penalty(d: Callable, real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
    """E (‖∇_x̂ d(x̂)‖ − 1)², x̂ = ε x + (1 − ε) G(z), ε ~ U[0, 1] per example."""
    eps = torch.rand(real.shape[0], *([1] * (real.dim() - 1)), device=real.device)
    mix = (eps * real + (1 - eps) * fake).requires_grad_(True)
    (grad,) = torch.autograd.grad(d(mix).sum(), mix, create_graph=True)
    return (grad.reshape(grad.shape[0], -1).norm(dim=1) - 1).pow(2).mean()


def r1_penalty(d: Callable, real: torch.Tensor) -> torch.Tensor:
    """E_data ‖∇_x d(x)‖² (Mescheder et al. 2018); the learner weights it by γ/2."""
    real = real.detach().requires_grad_(True)
    (grad,) = torch.autograd.grad(d(real).sum(), real, create_graph=True)
    return grad.reshape(grad.shape[0], -1).pow(2).sum(1).mean()


class _Undo:
    """Copies of tensors (parameters, buffers, optimiser state) to put back after an update
    that has to be cancelled; an optimiser whose state was empty is emptied again."""

    def __init__(self) -> None:
        self._saved: list[tuple[torch.Tensor, torch.Tensor]] = []
        self._empty: list[torch.optim.Optimizer] = []

    def save(
        self, tensors: list[torch.Tensor], optimizers: tuple[torch.optim.Optimizer, ...] = ()
    ) -> None:
        self._empty = [opt for opt in optimizers if not opt.state]
        for opt in optimizers:
            for state in opt.state.values():
                tensors += [v for v in state.values() if torch.is_tensor(v)]
        self._saved = [(t, t.detach().clone()) for t in tensors]

    @torch.no_grad()
    def restore(self) -> None:
        for tensor, copy in self._saved:
            tensor.copy_(copy)
        for opt in self._empty:
            opt.state.clear()


class AdversarialLearner:
    """Algorithm 1 of Goodfellow et al. (2014), with separate optimisers for D and G.

    **How k D-steps consume data.** Each call of :meth:`step` is one discriminator update on
    the batch ``x`` (labelled 1) against fresh samples G(z) (labelled 0); every k-th call
    (``discriminator_steps`` = k) then makes one generator update on fresh z against the
    updated D. So k D-steps use k mini-batches of data, one G step none, as in the paper;
    an epoch of the run loop is ``N / batch_size`` D steps and ``1/k`` as many G steps.

    **Safety.** A non-finite loss or gradient of either player cancels the whole call: D's
    update is undone if G's step fails after it, buffers (batch-norm statistics, spectral-norm
    vectors) are put back, no counter moves, and ``loss`` is NaN so the run loop stops. Each
    player's update is one :class:`~pyrogen.inference.step.GuardedStep` (autocast, its own
    gradient scaler, DDP share, clipping, cancel on a non-finite loss or gradient).

    **Data parallelism** (:meth:`data_parallel`): D and G are wrapped by two DDP modules, one
    per player, so each phase's backward pass all-reduces exactly the parameters it updates.
    D's module computes its whole loss in its forward pass (one pass over cat([real, fake]),
    and the gradient and R1 penalties by double backward w.r.t. the inputs only); G's computes
    G's loss through D. Batch norm uses the global batch (SyncBatchNorm), spectral-norm and
    batch-norm buffers are broadcast from rank 0 at each forward, and every rank updates the
    same EMA generator from the same averaged weights.

    ``step`` returns ``loss`` (= ``d_loss``, the D loss with penalties), ``d_loss``,
    ``g_loss`` (G's loss at its update; on calls without one, G's loss on the D step's
    samples), ``d_real`` = mean D(x) on the batch and ``d_fake`` = mean D(G(z)) on the
    samples, both before D's update (for the hinge and Wasserstein losses: σ of the critic's
    output, a rough guide only).

    The defaults are the config's (a config's ``optim.lr`` and ``optim.betas`` left null take
    these): Adam with lr 2e-4 and betas (0.5, 0.999), as Radford et al. (2016) found stable for
    GANs; every argument a config also sets has the config key's range (``ValueError``
    otherwise, e.g. ``discriminator_steps`` >= 1).

    Example::

        >>> import torch
        >>> G = nn.Sequential(nn.Linear(2, 16), nn.ReLU(), nn.Linear(16, 2))
        >>> D = nn.Sequential(nn.Linear(2, 16), nn.LeakyReLU(0.2), nn.Linear(16, 1))
        >>> gan = GAN(G, D, latent_dim=2, event_shape=(2,))
        >>> learner = AdversarialLearner(gan, "non_saturating", lr=1e-3)
        >>> sorted(learner.step(torch.randn(64, 2)))
        ['d_fake', 'd_loss', 'd_real', 'g_loss', 'loss']
        >>> AdversarialLearner(gan, Hinge(margin=0.5)).loss
        Hinge(margin=0.5)

    ``loss`` is a :class:`GANLoss` instance (with its own options) or a name in
    ``GAN_LOSSES``; ``gradient_penalty`` (λ) goes to a loss given by name that takes one
    (``wasserstein``; null: the loss's default, 10) and cannot be given with an instance.
    """

    def __init__(
        self,
        gan: GAN,
        loss: GANLoss | str = "non_saturating",
        discriminator_steps: int = 1,
        optim: str = "adam",
        lr: float = 2e-4,
        lr_discriminator: float | None = None,
        betas: tuple[float, float] | list[float] = (0.5, 0.999),
        momentum: float = 0.0,
        weight_decay: float = 0.0,
        gradient_penalty: float | None = None,
        r1_penalty: float = 0.0,
        ema_decay: float | None = None,
        clip_norm: float | None = None,
        precision: int | str = 32,
    ) -> None:
        for section, key, value in [
            (AdversarialConfig, "discriminator_steps", discriminator_steps),
            (AdversarialConfig, "gradient_penalty", gradient_penalty),
            (AdversarialConfig, "r1_penalty", r1_penalty),
            (AdversarialConfig, "ema_decay", ema_decay),
            (OptimConfig, "lr", lr),
            (OptimConfig, "lr_discriminator", lr_discriminator),
            (OptimConfig, "betas", betas),
            (OptimConfig, "momentum", momentum),
            (OptimConfig, "weight_decay", weight_decay),
            (OptimConfig, "clip_norm", clip_norm),
        ]:
            check_argument(section, key, value)
        self.model = gan
        self.module = gan
        if isinstance(loss, GANLoss):
            if gradient_penalty is not None:
                raise ValueError(
                    f"gradient_penalty={gradient_penalty} applies to a loss given by name; "
                    f"give {type(loss).__name__} its own options instead"
                )
            self.loss = loss
        elif isinstance(loss, str):
            extra = {} if gradient_penalty is None else {"gradient_penalty": gradient_penalty}
            self.loss = make_gan_loss(loss, **extra)
        else:
            raise TypeError(f"loss must be a GANLoss or a name in GAN_LOSSES, not {loss!r}")
        #: the loss's registered name (its class's name for an unregistered loss)
        self.generator_loss = GAN_LOSSES.name_of(self.loss) or type(self.loss).__name__
        self.k = discriminator_steps
        self.gp_weight = self.loss.gradient_penalty
        self.r1_weight = r1_penalty
        if ema_decay is not None:
            gan.enable_ema(ema_decay)
        lr_d = lr if lr_discriminator is None else lr_discriminator
        opt_d = make_optimizer(
            gan.discriminator.parameters(), optim, lr_d, betas, momentum, weight_decay
        )
        opt_g = make_optimizer(gan.generator.parameters(), optim, lr, betas, momentum, weight_decay)
        # one guarded step per player (each float16 player has its own gradient scaler)
        self._guards = {
            "d": GuardedStep(opt_d, precision, clip_norm, check_gradients=True),
            "g": GuardedStep(opt_g, precision, clip_norm, check_gradients=True),
        }
        self.num_steps = 0  # discriminator updates (calls of step that succeeded)
        self.num_g_steps = 0
        self._undo = _Undo()
        # mixed precision and data parallelism
        self.precision = precision
        self._dtype = precision_dtype(precision)
        self._ddp_d: nn.Module | None = None
        self._ddp_g: nn.Module | None = None
        self.world_size = 1
        #: under DDP: the examples of the current step over all ranks (set by the run loop;
        #: ``None``: every rank's piece has the same size)
        self.global_batch_size: int | None = None

    @property
    def opt_d(self) -> torch.optim.Optimizer:
        return self._guards["d"].optimizer

    @property
    def opt_g(self) -> torch.optim.Optimizer:
        return self._guards["g"].optimizer

    @property
    def clip_norm(self) -> float | None:
        return self._guards["d"].clip_norm

    @clip_norm.setter
    def clip_norm(self, clip_norm: float | None) -> None:
        for guard in self._guards.values():
            guard.clip_norm = clip_norm

    @property
    def optimizers(self) -> list[torch.optim.Optimizer]:
        return [self.opt_d, self.opt_g]

    # ---------------------------------------------------------------- the two players
    def _generate(self, n: int, y: torch.Tensor | None = None) -> torch.Tensor:
        """G(z) for n fresh z ~ p_z (conditional: G(z, y)), shaped ``(n, *event_shape)``."""
        return self.model.generate(self.model.prior().sample((n,)), y=y)

    def discriminator_logits(
        self, real: torch.Tensor, fake: torch.Tensor, y: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """d(x) on data and d(G(z)) on samples: one pass of D over both (conditional: both
        with the labels ``y``, the samples having been drawn for the data's labels)."""
        labels = None if y is None else torch.cat([y, y])
        logits = self.model.discriminate(torch.cat([real, fake]), labels)
        return logits[: real.shape[0]], logits[real.shape[0] :]

    def discriminator_loss(
        self, real: torch.Tensor, fake: torch.Tensor, y: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """D's loss on data ``real`` and samples ``fake`` (of the labels ``y`` when
        conditional) with the configured penalties, and the logits of both."""
        l_real, l_fake = self.discriminator_logits(real, fake, y)
        loss = self.loss.d_loss(l_real, l_fake)

        def d(x: torch.Tensor) -> torch.Tensor:
            return self.model.discriminate(x, y)

        if self.loss.gradient_penalty and self.gp_weight:
            loss = loss + self.gp_weight * gradient_penalty(d, real, fake)
        if self.r1_weight:
            loss = loss + 0.5 * self.r1_weight * r1_penalty(d, real)
        return loss, l_real, l_fake

    def _labels(self, y: torch.Tensor | None, n: int) -> torch.Tensor | None:
        """The labels of a batch of n: required by a class-conditional GAN, refused by an
        unconditional one (never silently ignored)."""
        if self.model.conditional and y is None:
            raise ValueError("a class-conditional GAN trains on labelled data: give y")
        return self.model.labels(y, n)

    def _cancel(self, out: dict[str, float]) -> dict[str, float]:
        self.opt_d.zero_grad(set_to_none=True)
        self.opt_g.zero_grad(set_to_none=True)
        self._undo.restore()
        return {**out, "loss": float("nan")}

    # ---------------------------------------------------------------- DDP, mixed precision
    def data_parallel(self) -> None:
        """Train data-parallel over the default process group (the run loop calls this under
        ``torchrun``; see the class docstring). Constructing the two DDP modules broadcasts
        rank 0's parameters and buffers."""
        device = device_of(self.model)
        sync_layers.convert(self.model.generator, device)
        sync_layers.convert(self.model.discriminator, device)
        self.world_size = distributed.world_size()
        self._ddp_d = data_parallel(_DiscriminatorObjective(self))
        self._ddp_g = data_parallel(_GeneratorObjective(self))
        for guard in self._guards.values():
            guard.distributed = True

    def _discriminator_objective(
        self, real: torch.Tensor, fake: torch.Tensor, y: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """:meth:`discriminator_loss`, in float32 under autocast (the guarded step runs it
        under autocast in the configured precision)."""
        loss, l_real, l_fake = self.discriminator_loss(real, fake, y)
        if self._dtype is None:
            return loss, l_real, l_fake
        return loss.float(), l_real.float(), l_fake.float()

    def _generator_objective(self, n: int, y: torch.Tensor | None = None) -> torch.Tensor:
        """G's loss on n fresh samples (conditional: of the labels ``y``), through D."""
        return self.loss.g_loss(self.model.discriminate(self._generate(n, y), y))

    def _share(self, n: int) -> float:
        """Under DDP, the factor of this rank's batch mean, n W / B: DDP's average over the W
        ranks is then the gradient of the mean over the B examples of the union batch
        (1 when ``global_batch_size`` is unset: every rank's piece has the same size)."""
        total = self.global_batch_size
        return 1.0 if total is None else n * self.world_size / total

    def step(self, x: torch.Tensor, y: torch.Tensor | None = None) -> dict[str, float]:
        """One D step on ``x``; every k-th call also one G step (see the class docstring). A
        class-conditional GAN needs the labels ``y`` of ``x``: its samples are drawn for
        them, so that D sees both classes' data and samples in the data's proportions."""
        gan = self.model
        gan.train()
        n = x.shape[0]
        y = self._labels(y, n)
        g_step = (self.num_steps + 1) % self.k == 0
        buffers = [*gan.generator.buffers(), *gan.discriminator.buffers()]
        if g_step:  # D's update must be undone if G's step fails after it
            self._undo.save([*buffers, *gan.discriminator.parameters()], (self.opt_d,))
        else:
            self._undo.save(buffers)
        share = self._share(n)

        # D ascends V: data labelled 1, fresh samples labelled 0
        with torch.no_grad(), self._guards["d"].autocast():
            fake = self._generate(n, y)
        real = x.reshape(fake.shape)
        d_objective = self._ddp_d or self._discriminator_objective

        def d_forward() -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
            d_loss, l_real, l_fake = d_objective(real, fake, y)
            l_real, l_fake = l_real.detach(), l_fake.detach()
            reports = [torch.sigmoid(l_real).mean(), torch.sigmoid(l_fake).mean()]
            return d_loss, d_loss.detach(), [*reports, self.loss.g_loss(l_fake)]

        d = self._guards["d"].step(d_forward, share)
        out = {"loss": d.value, "d_loss": d.value, "g_loss": d.extras[2]}
        out.update(d_real=d.extras[0], d_fake=d.extras[1])
        if not d.stepped:
            return self._cancel(out)

        if g_step:  # G descends its loss on fresh z against the updated D
            g_objective = self._ddp_g or self._generator_objective

            def g_forward() -> tuple[torch.Tensor, torch.Tensor]:
                g_loss = g_objective(n, y)
                return g_loss, g_loss.detach()

            g = self._guards["g"].step(g_forward, share)
            out["g_loss"] = g.value
            if not g.stepped:
                return self._cancel(out)
            gan.update_ema()
            self.num_g_steps += 1
        self.num_steps += 1
        return out

    @torch.no_grad()
    def evaluate(self, x: torch.Tensor, y: torch.Tensor | None = None) -> dict[str, float]:
        """On a validation batch (dropout off): D's loss without penalties (−V for minimax
        and non-saturating), G's loss, mean D(x) on the data and mean D(G(z)) on as many
        fresh samples of the trained (not averaged) generator."""
        self.model.eval()
        n = x.shape[0]
        y = self._labels(y, n)
        fake = self._generate(n, y)
        l_real, l_fake = self.discriminator_logits(x.reshape(fake.shape), fake, y)
        values = torch.stack(
            [
                self.loss.d_loss(l_real, l_fake),
                self.loss.g_loss(l_fake),
                torch.sigmoid(l_real).mean(),
                torch.sigmoid(l_fake).mean(),
            ]
        ).tolist()
        return dict(zip(("d_loss", "g_loss", "d_real", "d_fake"), values, strict=True))

    # ---------------------------------------------------------------- checkpoints
    def state_dict(self) -> dict[str, Any]:
        """Both players (and the EMA generator), both optimisers and the counters."""
        state = {
            "module": self.model.state_dict(),
            "opt_d": self.opt_d.state_dict(),
            "opt_g": self.opt_g.state_dict(),
            "num_steps": self.num_steps,
            "num_g_steps": self.num_g_steps,
            "generator_loss": self.generator_loss,
            "discriminator_steps": self.k,
        }
        if self._dtype == torch.float16:  # the gradient scalers' scales and growth trackers
            scalers = {player: g.scaler_state() for player, g in self._guards.items()}
            state["scalers"] = {k: v for k, v in scalers.items() if v is not None}
        return state

    def rank_state(self) -> dict[str, Any]:
        """What differs between ranks under DDP beyond their random states: nothing."""
        return {}

    def load_rank_state(self, state: dict[str, Any]) -> None:
        pass

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["module"])
        self.opt_d.load_state_dict(state["opt_d"])
        self.opt_g.load_state_dict(state["opt_g"])
        self.num_steps = int(state["num_steps"])
        self.num_g_steps = int(state["num_g_steps"])
        for player, scaler_state in state.get("scalers", {}).items():
            self._guards[player].load_scaler_state(scaler_state)


class _DiscriminatorObjective(nn.Module):
    """What D's DDP wraps: the discriminator, with D's whole loss (penalties included) as
    ``forward(real, fake)``."""

    def __init__(self, learner: AdversarialLearner) -> None:
        super().__init__()
        self.discriminator = learner.model.discriminator
        self.learner = learner  # not a module: not part of the tree

    def forward(
        self, real: torch.Tensor, fake: torch.Tensor, y: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.learner._discriminator_objective(real, fake, y)


class _GeneratorObjective(nn.Module):
    """What G's DDP wraps: the generator, with G's loss on ``n`` fresh samples (through D,
    whose parameters receive no gradient in G's phase) as ``forward(n)``."""

    def __init__(self, learner: AdversarialLearner) -> None:
        super().__init__()
        self.generator = learner.model.generator
        self.learner = learner

    def forward(self, n: int, y: torch.Tensor | None = None) -> torch.Tensor:
        return self.learner._generator_objective(n, y)

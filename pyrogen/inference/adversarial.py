"""Adversarial training: Goodfellow et al.'s Algorithm 1 and its common variants.

The discriminator is a binary classifier D(x) = σ(d(x)) = P(data | x); the value of the game

    V(D, G) = E_{x ~ p_data}[log D(x)] + E_{z ~ p_z}[log(1 − D(G(z)))]

is its log-likelihood with data labelled 1 and samples labelled 0. D maximises V; the
generator's loss (``adversarial.generator_loss``) is one of

=================  ============================================  ========================
name               discriminator loss                             generator loss
=================  ============================================  ========================
minimax            −V (binary cross-entropy)                      E log(1 − D(G(z))) = V's
                                                                  G term: G minimises V
non_saturating     −V                                             −E log D(G(z))
hinge              E max(0, 1 − d(x)) + E max(0, 1 + d(G(z)))     −E d(G(z))
wasserstein        E d(G(z)) − E d(x) + λ E(‖∇d(x̂)‖ − 1)²          −E d(G(z))
=================  ============================================  ========================

In terms of logits l: −log D = softplus(−l) and −log(1 − D) = softplus(l). Early in training
D rejects samples confidently (l ≪ 0) and the minimax gradient ∂/∂l log(1 − σ(l)) = −σ(l)
vanishes, while the non-saturating one, −σ(−l), stays near −1: the paper's practical fix.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from pyrogen.inference.base import make_optimizer
from pyrogen.models.gan import GAN
from pyrogen.registry import GAN_LOSSES


class GANLoss:
    """Discriminator and generator losses from logits (batch means)."""

    gradient_penalty = False

    def d_loss(self, real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
        """−V: −E log D(x) − E log(1 − D(G(z)))."""
        return F.softplus(-real).mean() + F.softplus(fake).mean()

    def g_loss(self, fake: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError


@GAN_LOSSES.register("minimax")
class Minimax(GANLoss):
    """G minimises V: its loss is E log(1 − D(G(z))) (saturates when D wins)."""

    def g_loss(self, fake):
        return -F.softplus(fake).mean()


@GAN_LOSSES.register("non_saturating")
class NonSaturating(GANLoss):
    """G maximises E log D(G(z)) (the GAN paper's practical choice)."""

    def g_loss(self, fake):
        return F.softplus(-fake).mean()


@GAN_LOSSES.register("hinge")
class Hinge(GANLoss):
    """Hinge loss (Lim & Ye 2017; Miyato et al. 2018)."""

    def d_loss(self, real, fake):
        return F.relu(1 - real).mean() + F.relu(1 + fake).mean()

    def g_loss(self, fake):
        return -fake.mean()


@GAN_LOSSES.register("wasserstein")
class Wasserstein(GANLoss):
    """WGAN-GP (Gulrajani et al. 2017): a critic d, with the gradient penalty added."""

    gradient_penalty = True

    def d_loss(self, real, fake):
        return fake.mean() - real.mean()

    def g_loss(self, fake):
        return -fake.mean()


def gradient_penalty(d: nn.Module, real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
    """E (‖∇_x̂ d(x̂)‖ − 1)², x̂ = ε x + (1 − ε) G(z), ε ~ U[0, 1] per example."""
    eps = torch.rand(real.shape[0], *([1] * (real.dim() - 1)), device=real.device)
    mix = (eps * real + (1 - eps) * fake).requires_grad_(True)
    (grad,) = torch.autograd.grad(d(mix).sum(), mix, create_graph=True)
    return (grad.reshape(grad.shape[0], -1).norm(dim=1) - 1).pow(2).mean()


def r1_penalty(d: nn.Module, real: torch.Tensor) -> torch.Tensor:
    """E ‖∇_x d(x)‖² on data (Mescheder et al. 2018); weighted by γ/2."""
    real = real.detach().requires_grad_(True)
    (grad,) = torch.autograd.grad(d(real).sum(), real, create_graph=True)
    return grad.reshape(grad.shape[0], -1).pow(2).sum(1).mean()


class AdversarialLearner:
    """Algorithm 1 with separate optimisers for D and G.

    Each call of :meth:`step` is one discriminator update on the batch x against fresh
    samples G(z); every ``discriminator_steps``-th call (k in the paper) is followed by one
    generator update on fresh z. So k D-steps consume k mini-batches of data, as in the paper.
    A non-finite loss of either player leaves both untouched and is reported as ``loss``.
    """

    def __init__(
        self,
        gan: GAN,
        generator_loss: str = "non_saturating",
        discriminator_steps: int = 1,
        optim: str = "adam",
        lr: float = 2e-4,
        lr_discriminator: float | None = None,
        betas: tuple[float, float] | list[float] = (0.5, 0.999),
        weight_decay: float = 0.0,
        gradient_penalty: float = 10.0,
        r1_penalty: float = 0.0,
        ema_decay: float | None = None,
        clip_norm: float | None = None,
    ) -> None:
        self.model = gan
        self.module = gan
        self.loss = GAN_LOSSES.get(generator_loss)()
        self.k = discriminator_steps
        self.gp_weight = gradient_penalty
        self.r1_weight = r1_penalty
        self.ema_decay = ema_decay
        self.clip_norm = clip_norm
        if ema_decay is not None:
            gan.enable_ema()
        self.opt_d = make_optimizer(
            gan.discriminator.parameters(),
            optim,
            lr_discriminator or lr,
            betas,
            weight_decay=weight_decay,
        )
        self.opt_g = make_optimizer(
            gan.generator.parameters(), optim, lr, betas, weight_decay=weight_decay
        )
        self.num_steps = 0  # discriminator updates
        self.num_g_steps = 0
        self.last_g_loss = float("nan")

    @classmethod
    def from_config(cls, gan: GAN, cfg: Any) -> AdversarialLearner:
        a, o = cfg.adversarial, cfg.optim
        return cls(
            gan,
            generator_loss=a.generator_loss,
            discriminator_steps=a.discriminator_steps,
            optim=o.name,
            lr=o.lr,
            lr_discriminator=o.lr_discriminator,
            betas=o.betas,
            weight_decay=o.weight_decay,
            gradient_penalty=a.gradient_penalty,
            r1_penalty=a.r1_penalty,
            ema_decay=a.ema_decay,
            clip_norm=o.clip_norm,
        )

    def _fake(self, n: int) -> torch.Tensor:
        z = self.model.prior().sample((n,))
        return self.model.generator(z)

    def _d_loss(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        d = self.model.discriminator
        real = x.reshape(x.shape[0], -1)
        fake = self._fake(x.shape[0]).detach()
        lr, lf = d(real), d(fake)
        loss = self.loss.d_loss(lr, lf)
        if self.loss.gradient_penalty and self.gp_weight:
            loss = loss + self.gp_weight * gradient_penalty(d, real, fake)
        if self.r1_weight:
            loss = loss + 0.5 * self.r1_weight * r1_penalty(d, real)
        return loss, lr, lf

    def _update(self, opt: torch.optim.Optimizer, loss: torch.Tensor, params) -> bool:
        opt.zero_grad(set_to_none=True)
        if not torch.isfinite(loss):
            return False
        loss.backward()
        if self.clip_norm is not None:
            nn.utils.clip_grad_norm_(params, self.clip_norm)
        opt.step()
        return True

    def step(self, x: torch.Tensor, y: torch.Tensor | None = None) -> dict[str, float]:
        self.model.train()
        d_params = list(self.model.discriminator.parameters())
        d_loss, lr, lf = self._d_loss(x)
        out = {
            "loss": d_loss.item(),
            "d_loss": d_loss.item(),
            "d_real": torch.sigmoid(lr).mean().item(),
            "d_fake": torch.sigmoid(lf).mean().item(),
        }
        if not self._update(self.opt_d, d_loss, d_params):
            return out
        self.num_steps += 1
        if self.num_steps % self.k == 0:
            g_params = list(self.model.generator.parameters())
            self.model.discriminator.requires_grad_(False)
            g_loss = self.loss.g_loss(self.model.discriminator(self._fake(x.shape[0])))
            self.model.discriminator.requires_grad_(True)
            if not self._update(self.opt_g, g_loss, g_params):
                out["loss"] = g_loss.item()
                out["g_loss"] = g_loss.item()
                return out
            self.last_g_loss = g_loss.item()
            self.num_g_steps += 1
            self._update_ema()
        out["g_loss"] = self.last_g_loss
        return out

    @torch.no_grad()
    def _update_ema(self) -> None:
        """θ_ema ← β θ_ema + (1 − β) θ_G."""
        if self.model.ema_generator is None:
            return
        beta = self.ema_decay
        for e, p in zip(
            self.model.ema_generator.state_dict().values(),
            self.model.generator.state_dict().values(),
            strict=True,
        ):
            if e.dtype.is_floating_point:
                e.mul_(beta).add_(p, alpha=1 - beta)
            else:
                e.copy_(p)

    @torch.no_grad()
    def evaluate(self, x: torch.Tensor, y: torch.Tensor | None = None) -> dict[str, float]:
        """−V (the discriminator's loss), the generator's loss, mean D(x) and D(G(z))."""
        self.model.eval()
        d = self.model.discriminator
        lr, lf = d(x.reshape(x.shape[0], -1)), d(self._fake(x.shape[0]))
        return {
            "d_loss": self.loss.d_loss(lr, lf).item(),
            "g_loss": self.loss.g_loss(lf).item(),
            "d_real": torch.sigmoid(lr).mean().item(),
            "d_fake": torch.sigmoid(lf).mean().item(),
        }

    def state_dict(self) -> dict[str, Any]:
        return {
            "module": self.model.state_dict(),
            "opt_d": self.opt_d.state_dict(),
            "opt_g": self.opt_g.state_dict(),
            "num_steps": self.num_steps,
            "num_g_steps": self.num_g_steps,
            "last_g_loss": self.last_g_loss,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["module"])
        self.opt_d.load_state_dict(state["opt_d"])
        self.opt_g.load_state_dict(state["opt_g"])
        self.num_steps = int(state["num_steps"])
        self.num_g_steps = int(state["num_g_steps"])
        self.last_g_loss = float(state["last_g_loss"])

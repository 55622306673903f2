"""Amortised normalizing-flow guides whose flow parameters are outputs of the encoder, one set
per example (Rezende & Mohamed, 2015; van den Berg et al., 2018):

=============  ===============================================================================
name           q_φ(z | x): z₀ ~ N(μ(x), diag σ²(x)), then K steps z_k = f_k(z_{k−1}; x)
=============  ===============================================================================
planar         f(z) = z + û h(wᵀz + b), h = tanh, (u, w, b) per example and step
sylvester      f(z) = z + Q R h(R̃ Qᵀ z + b), Q a product of H Householder reflections, R, R̃
               upper triangular, all per example and step (orthogonal / Householder variant)
=============  ===============================================================================

log q(z_K | x) = log N(z₀; μ, σ²) − Σ_k log |det ∂f_k/∂z_{k−1}|. Neither step has a
closed-form inverse: a guide scores its own samples exactly (through the transforms' cache of
the last forward pass) but not an arbitrary z (fact ``scores_any_z = False``), and there is
no analytic KL (``mean_field`` refuses them, as it refuses ``iaf``).
"""

from __future__ import annotations

from typing import Any

import pyro.distributions as dist
import torch
import torch.nn.functional as F
from pyro.distributions.transforms.planar import ConditionedPlanar
from torch import nn
from torch.distributions import Transform, constraints

from pyrogen.models.guides import MIN_SCALE, AmortisedGuide
from pyrogen.registry import GUIDES


@GUIDES.register("planar", "diagonal Gaussian + amortised planar flow steps")
class PlanarGuide(AmortisedGuide):
    """z₀ ~ N(μ(x), diag σ²(x)) followed by ``num_flows`` (K) planar steps (Rezende & Mohamed
    2015, eq. 10–12)::

        f(z) = z + û h(wᵀz + b),   h = tanh,
        log |det ∂f/∂z| = log |1 + h'(wᵀz + b) wᵀû|,

    with û = u + (m(wᵀu) − wᵀu) w/‖w‖², m(a) = −1 + softplus(a), so that wᵀû > −1 and the
    step is invertible (the paper's appendix A.1; ``ConditionedPlanar.u_hat``). As in the paper
    the flow is amortised: u, w ∈ ℝᴰ and b ∈ ℝ of every step are outputs of the encoder, per
    example, so it outputs 2D + K(2D + 1) numbers for D = latent_dim. Each step is Pyro's
    ``ConditionedPlanar`` given the encoder's (b, u, w). The default K = 10 is the paper's
    Table 2 comparison (planar K = 10 against the diagonal Gaussian on binarised MNIST).
    """

    analytic_kl = False
    scores_any_z = False

    def __init__(
        self, encoder: nn.Module, latent_dim: int, num_flows: int = 10, name: str = "guide"
    ) -> None:
        super().__init__(encoder, latent_dim, name)
        if num_flows < 1:
            raise ValueError(f"num_flows must be >= 1, got {num_flows}")
        self.num_flows = int(num_flows)

    @classmethod
    def encoder_outputs(cls, latent_dim: int, num_flows: int = 10, **options: Any) -> int:
        return 2 * latent_dim + num_flows * (2 * latent_dim + 1)

    def steps(self, h: torch.Tensor) -> list[Transform]:
        """The K planar steps given the encoder's output ``h`` (its columns past μ and σ)."""
        d = self.latent_dim
        params = h[..., 2 * d :].reshape(*h.shape[:-1], self.num_flows, 2 * d + 1)
        return [
            ConditionedPlanar((p[..., :1], p[..., 1 : 1 + d], p[..., 1 + d :]))
            for p in params.unbind(-2)
        ]

    def posterior(self, x: torch.Tensor, y: torch.Tensor | None = None) -> dist.Distribution:
        h = self.features(x, y)
        d = self.latent_dim
        base = dist.Normal(h[..., :d], F.softplus(h[..., d : 2 * d]) + MIN_SCALE).to_event(1)
        return dist.TransformedDistribution(base, self.steps(h))


class HouseholderSylvester(Transform):
    """One Sylvester step of the orthogonal (Householder) kind with parameters per example
    (van den Berg et al., 2018, eq. 11–13 with Q from Householder reflections)::

        f(z) = z + Q R h(R̃ Qᵀ z + b),   h = tanh,
        Q = H_1 ⋯ H_M,  H_m = I − 2 v_m v_mᵀ / ‖v_m‖²,
        log |det ∂f/∂z| = Σ_i log(1 + h'(a_i) r_ii r̃_ii),  a = R̃ Qᵀ z + b,

    (the determinant lemma det(I + Q R diag h'(a) R̃ Qᵀ) = det(I + diag h'(a) R̃ R), and R̃ R is
    upper triangular with diagonal r̃_ii r_ii). R and R̃ are upper triangular with diagonals
    r_ii = tanh(ρ_i), r̃_ii = tanh(ρ̃_i), so |r_ii r̃_ii| < 1 ≤ 1/h' and every factor is
    positive: the step is invertible. Its inverse has no closed form; like Pyro's
    ``Sylvester`` it is available only for the output of the last forward pass (cache).

    Args (each with the batch shape of the examples in front):
        r: R, shape (…, D, D), upper triangular.
        r_tilde: R̃, shape (…, D, D), upper triangular.
        b: shape (…, D).
        v: the M Householder vectors, shape (…, M, D) (need not be normalised).
    """

    domain = constraints.real_vector
    codomain = constraints.real_vector
    bijective = True

    def __init__(
        self, r: torch.Tensor, r_tilde: torch.Tensor, b: torch.Tensor, v: torch.Tensor
    ) -> None:
        super().__init__(cache_size=1)
        self.r, self.r_tilde, self.b = r, r_tilde, b
        self.v = v / v.norm(dim=-1, keepdim=True)
        self.diag = r.diagonal(dim1=-2, dim2=-1) * r_tilde.diagonal(dim1=-2, dim2=-1)

    def reflect(self, z: torch.Tensor, transpose: bool) -> torch.Tensor:
        """Qᵀ z (``transpose``: H_M ⋯ H_1 z, H_1 first) or Q z (H_1 ⋯ H_M z, H_M first)."""
        vs = self.v.unbind(-2)
        for v in vs if transpose else reversed(vs):
            z = z - 2 * v * (v * z).sum(-1, keepdim=True)
        return z

    def preactivation(self, z: torch.Tensor) -> torch.Tensor:
        """a = R̃ Qᵀ z + b."""
        qz = self.reflect(z, transpose=True)
        return (self.r_tilde @ qz.unsqueeze(-1)).squeeze(-1) + self.b

    def _call(self, z: torch.Tensor) -> torch.Tensor:
        act = torch.tanh(self.preactivation(z))
        return z + self.reflect((self.r @ act.unsqueeze(-1)).squeeze(-1), transpose=False)

    def _inverse(self, y: torch.Tensor) -> torch.Tensor:
        raise KeyError(
            "a Sylvester step has no closed-form inverse: it scores only the output of its "
            "last forward pass (a sample of its own guide)"
        )

    def log_abs_det_jacobian(self, z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        slope = 1 - torch.tanh(self.preactivation(z)) ** 2
        return torch.log1p(slope * self.diag).sum(-1)


@GUIDES.register("sylvester", "diagonal Gaussian + amortised Householder Sylvester flow steps")
class SylvesterGuide(AmortisedGuide):
    """z₀ ~ N(μ(x), diag σ²(x)) followed by ``num_flows`` (K) Householder Sylvester steps
    (:class:`HouseholderSylvester`, van den Berg et al. 2018) with ``num_householder`` (M)
    reflections each. As in the paper every step's parameters are outputs of the encoder, per
    example: the strict upper triangles of R and R̃ (D(D − 1)/2 numbers each), ρ and ρ̃ of
    their diagonals tanh(ρ), tanh(ρ̃), b, and the M Householder vectors, so the encoder outputs
    2D + K(D² + 2D + M D) numbers for D = latent_dim. Defaults: K = 4, M = 8 (a product of M
    reflections spans orthogonal matrices of rank-M changes; M ≥ D reaches any of them).
    """

    analytic_kl = False
    scores_any_z = False

    def __init__(
        self,
        encoder: nn.Module,
        latent_dim: int,
        num_flows: int = 4,
        num_householder: int = 8,
        name: str = "guide",
    ) -> None:
        super().__init__(encoder, latent_dim, name)
        if num_flows < 1 or num_householder < 1:
            raise ValueError(
                f"num_flows and num_householder must be >= 1, got {num_flows}, {num_householder}"
            )
        self.num_flows, self.num_householder = int(num_flows), int(num_householder)
        d = self.latent_dim
        rows, cols = torch.triu_indices(d, d, offset=1)
        self.register_buffer("triu_rows", rows, persistent=False)
        self.register_buffer("triu_cols", cols, persistent=False)

    @classmethod
    def step_outputs(cls, latent_dim: int, num_householder: int = 8) -> int:
        """Numbers per step: 2 × D(D − 1)/2 + 3D + M D = D² + 2D + M D."""
        d = latent_dim
        return d * d + 2 * d + num_householder * d

    @classmethod
    def encoder_outputs(
        cls, latent_dim: int, num_flows: int = 4, num_householder: int = 8, **options: Any
    ) -> int:
        return 2 * latent_dim + num_flows * cls.step_outputs(latent_dim, num_householder)

    def _triangular(self, off: torch.Tensor, raw_diag: torch.Tensor) -> torch.Tensor:
        d = self.latent_dim
        m = torch.diag_embed(torch.tanh(raw_diag))
        upper = torch.zeros(*off.shape[:-1], d, d, dtype=off.dtype, device=off.device)
        upper[..., self.triu_rows, self.triu_cols] = off
        return m + upper

    def steps(self, h: torch.Tensor) -> list[Transform]:
        """The K Sylvester steps given the encoder's output ``h`` (its columns past μ, σ)."""
        d, m = self.latent_dim, self.num_householder
        t = d * (d - 1) // 2
        params = h[..., 2 * d :].reshape(*h.shape[:-1], self.num_flows, -1)
        out: list[Transform] = []
        for p in params.unbind(-2):
            sizes = [t, t, d, d, d, m * d]
            off, off_tilde, rho, rho_tilde, b, v = p.split(sizes, dim=-1)
            r = self._triangular(off, rho)
            r_tilde = self._triangular(off_tilde, rho_tilde)
            out.append(HouseholderSylvester(r, r_tilde, b, v.reshape(*v.shape[:-1], m, d)))
        return out

    def posterior(self, x: torch.Tensor, y: torch.Tensor | None = None) -> dist.Distribution:
        h = self.features(x, y)
        d = self.latent_dim
        base = dist.Normal(h[..., :d], F.softplus(h[..., d : 2 * d]) + MIN_SCALE).to_event(1)
        return dist.TransformedDistribution(base, self.steps(h))


__all__ = ["HouseholderSylvester", "PlanarGuide", "SylvesterGuide"]

"""Normalizing flows: z ~ N(0, I), x = G(z) with G a stack of Pyro ``TransformModule``s.

The flow is a ``pyro.distributions.TransformedDistribution`` whose ``log_prob`` is exact by
the change of variables::

    log p(x) = log N(G⁻¹(x); 0, I) − log |det J_G(G⁻¹(x))|

Architectures (``model.flow``), listed in the generative direction z → x:

============  ===============================================  ====================  ===========
name          layers                                           score data (G⁻¹)      sample (G)
============  ===============================================  ====================  ===========
realnvp       affine coupling + permutation (Dinh et al.)      one pass              one pass
maf           *inverse* of Pyro's AffineAutoregressive         one pass              D passes
iaf           Pyro's AffineAutoregressive as is                D passes              one pass
nsf_coupling  rational-quadratic spline coupling (Durkan)      one pass              one pass
nsf_autoreg.  inverse of Pyro's SplineAutoregressive           one pass              D passes
planar        u h(wᵀz + b) (Rezende & Mohamed)                 no inverse            one pass
radial        β h(α, r)(z − z₀)                                no inverse            one pass
glow          squeeze, act-norm, 1x1 conv, coupling (images)   one pass              one pass
============  ===============================================  ====================  ===========

Pyro's autoregressive transforms are IAF-shaped: their forward map is one pass of a MADE
network and their inverse needs D sequential passes. A MAF scores data with one pass, so it
uses the inverse of the Pyro layer as its generative step; an IAF is the same layers the other
way round: cheap to sample, D passes to score data it did not generate. Planar and radial
flows have no closed-form inverse: they can score only their own samples (Pyro caches the
pair), and scoring other data raises :class:`NotInvertibleError`. ``glow`` (in
:mod:`pyrogen.models.flow_layers`) needs the data set's ``image_shape``.

With ``model.conditional`` the flow is p(x | y): each layer is Pyro's conditional transform
given the one-hot class y.
"""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import pyro.distributions.transforms as T
import torch
import torch.nn.functional as F
from pyro.nn import AutoRegressiveNN, ConditionalAutoRegressiveNN
from torch import nn

from pyrogen.config import ConfigError, FlowModelConfig
from pyrogen.models.flow_layers import ActNorm, Layers, PermuteLayer, StaticLayer
from pyrogen.registry import FLOWS


class NotInvertibleError(ValueError):
    """A flow without an inverse was asked for the density of data it did not sample."""


def _permutation(cfg: FlowModelConfig, dim: int, layer: int) -> torch.Tensor:
    if cfg.permutation == "reverse":
        return torch.arange(dim - 1, -1, -1)
    return torch.randperm(dim, generator=torch.Generator().manual_seed(layer))


def _normalisation(cfg: FlowModelConfig, dim: int) -> Layers:
    if cfg.normalization == "batchnorm":
        return [(T.BatchNorm(dim), False)]
    if cfg.normalization == "actnorm":
        return [(ActNorm(dim), False)]
    return []


def _stack(cfg, dim, context_dim, make, inverted: bool) -> Layers:
    """``num_layers`` layers from ``make(dim, context_dim)``, with the optional normalisation
    and a fixed permutation between consecutive layers."""
    layers: Layers = []
    for i in range(cfg.num_layers):
        layers.append((make(dim, context_dim), inverted))
        if i < cfg.num_layers - 1:
            layers += _normalisation(cfg, dim)
            layers.append((PermuteLayer(_permutation(cfg, dim, i)), False))
    return layers


@FLOWS.register("realnvp")
def realnvp(cfg: FlowModelConfig, dim: int, context_dim: int | None, image_shape=None) -> Layers:
    """Affine coupling layers with permutations (RealNVP)."""

    def make(d, c):
        if c:
            return T.conditional_affine_coupling(d, c, hidden_dims=cfg.hidden_sizes)
        return T.affine_coupling(d, hidden_dims=cfg.hidden_sizes)

    return _stack(cfg, dim, context_dim, make, inverted=False)


def _made(cfg: FlowModelConfig, d: int, c: int | None, param_dims: list[int]) -> nn.Module:
    """A MADE network in the natural variable order: the permutations between layers are
    the flow's own (``model.permutation``), not Pyro's default random order per layer, which
    can give consecutive layers the same order."""
    if min(cfg.hidden_sizes, default=0) < d:
        raise ConfigError(
            f"model.hidden_sizes={list(cfg.hidden_sizes)}: model.flow={cfg.flow} uses MADE "
            f"networks, whose hidden layers must be at least as wide as the data ({d} "
            f"dimensions), or some outputs could depend on no input; use e.g. "
            f"model.hidden_sizes=[{max(2 * d, 64)}]"
        )
    order = torch.arange(d)
    if c:
        return ConditionalAutoRegressiveNN(d, c, cfg.hidden_sizes, param_dims, permutation=order)
    return AutoRegressiveNN(d, cfg.hidden_sizes, param_dims, permutation=order)


# Each affine autoregressive layer's log-scale is clamped to [-6, 6] rather than Pyro's
# default [-5, 3], which suits an IAF posterior in VI (its samples must not explode) but not
# density estimation: Pyro's clamp passes gradients through, so once a layer hits the upper
# clip the loss no longer sees its scale while the gradient keeps pushing the network's
# outputs (the unclamped shift too) up, until they run away. Measured on eight_gaussians
# (5 MAF layers of [64, 64], Adam lr 2e-3, batch 256, 1,500 steps, seeds 0-2): test
# log-likelihood -3.9e3, -4.0e5, -2.96 with [-5, 3] vs -0.07, -0.44, -0.97 with [-6, 6];
# an IAF on moons: -2.73 vs -2.46 (`python bench/bench_flows.py --skip moons digits iaf glow
# --clip-study`).
LOG_SCALE_CLIP = {"log_scale_min_clip": -6.0, "log_scale_max_clip": 6.0}


def _autoregressive(cfg, dim, context_dim, inverted: bool) -> Layers:
    def make(d, c):
        cls = T.ConditionalAffineAutoregressive if c else T.AffineAutoregressive
        return cls(_made(cfg, d, c, [1, 1]), **LOG_SCALE_CLIP)

    return _stack(cfg, dim, context_dim, make, inverted=inverted)


@FLOWS.register("maf")
def maf(cfg: FlowModelConfig, dim: int, context_dim: int | None, image_shape=None) -> Layers:
    """Masked autoregressive flow: one pass to score data, D passes to sample."""
    return _autoregressive(cfg, dim, context_dim, inverted=True)


@FLOWS.register("iaf")
def iaf(cfg: FlowModelConfig, dim: int, context_dim: int | None, image_shape=None) -> Layers:
    """Inverse autoregressive flow: one pass to sample, D passes to score data."""
    return _autoregressive(cfg, dim, context_dim, inverted=False)


@FLOWS.register("nsf_coupling")
def nsf_coupling(
    cfg: FlowModelConfig, dim: int, context_dim: int | None, image_shape=None
) -> Layers:
    """Rational-quadratic spline coupling layers (neural spline flow, coupling)."""
    if context_dim:
        raise ValueError(
            "model.flow=nsf_coupling has no conditional form in Pyro; use "
            "nsf_autoregressive, maf or realnvp for model.conditional=true"
        )

    def make(d, c):
        return T.spline_coupling(
            d, hidden_dims=cfg.hidden_sizes, count_bins=cfg.count_bins, bound=cfg.bound
        )

    return _stack(cfg, dim, context_dim, make, inverted=False)


@FLOWS.register("nsf_autoregressive")
def nsf_autoregressive(
    cfg: FlowModelConfig, dim: int, context_dim: int | None, image_shape=None
) -> Layers:
    """Rational-quadratic spline autoregressive layers, MAF-oriented (one pass to score)."""
    k = cfg.count_bins
    param_dims = [k, k, k - 1, k]  # widths, heights, inner derivatives, linear-order lambdas

    def make(d, c):
        cls = T.ConditionalSplineAutoregressive if c else T.SplineAutoregressive
        return cls(d, _made(cfg, d, c, param_dims), count_bins=k, bound=cfg.bound)

    return _stack(cfg, dim, context_dim, make, inverted=True)


def _no_context(name: str, context_dim: int | None) -> None:
    if context_dim:
        raise ValueError(f"model.flow={name} has no conditional form here; use maf or realnvp")


@FLOWS.register("planar")
def planar(cfg: FlowModelConfig, dim: int, context_dim: int | None, image_shape=None) -> Layers:
    """Planar flow layers (no inverse: scores only its own samples)."""
    _no_context("planar", context_dim)
    return [(T.Planar(dim), False) for _ in range(cfg.num_layers)]


@FLOWS.register("radial")
def radial(cfg: FlowModelConfig, dim: int, context_dim: int | None, image_shape=None) -> Layers:
    """Radial flow layers (no inverse: scores only its own samples)."""
    _no_context("radial", context_dim)
    return [(T.Radial(dim), False) for _ in range(cfg.num_layers)]


NON_INVERTIBLE = ("planar", "radial")


class Flow(nn.Module):
    """p(x) (or p(x | y)) = the push-forward of N(0, I) through G; ``forward`` (alias
    ``model``) is the Pyro model with the observed site ``x``.

    Example::

        >>> from pyrogen.config import FlowModelConfig
        >>> flow = Flow(FlowModelConfig(flow="realnvp", num_layers=2, hidden_sizes=[16]), (2,))
        >>> flow.log_prob(torch.zeros(3, 2)).shape
        torch.Size([3])
    """

    def __init__(
        self,
        cfg: FlowModelConfig,
        event_shape: tuple[int, ...],
        image_shape: tuple[int, int, int] | None = None,
    ) -> None:
        super().__init__()
        if len(event_shape) != 1:
            raise ValueError(
                f"flows act on vectors; got examples of shape {tuple(event_shape)}: "
                "set data.flatten=true"
            )
        self.cfg = cfg
        self.event_shape = tuple(event_shape)
        self.image_shape = image_shape
        self.dim = event_shape[0]
        self.has_inverse = cfg.flow not in NON_INVERTIBLE
        self.num_classes = cfg.num_classes if cfg.conditional else None
        layers = FLOWS.get(cfg.flow)(cfg, self.dim, self.num_classes, image_shape=image_shape)
        self.layers = nn.ModuleList(m for m, _ in layers)
        self.inverted = [inv for _, inv in layers]
        self.register_buffer("base_loc", torch.zeros(self.dim))
        self.register_buffer("base_scale", torch.ones(self.dim))

    def base(self) -> dist.Distribution:
        """p_z = N(0, I), from buffers (it follows the module to its device)."""
        return dist.Normal(self.base_loc, self.base_scale).to_event(1)

    def _transforms(self, y: torch.Tensor | None) -> list:
        if self.num_classes is not None:
            if y is None:
                raise ValueError("a conditional flow needs the class labels y")
            context = F.one_hot(y.long(), self.num_classes).to(self.base_loc.dtype)
        out = []
        for layer, inverted in zip(self.layers, self.inverted, strict=True):
            if hasattr(layer, "_cached_x_y"):
                # Pyro caches the last (x, y) pair of a transform: a pair from an earlier call
                # would carry old parameters and a freed graph, so each distribution starts
                # afresh (within one distribution, a sample and its log_prob still share it)
                layer._cached_x_y = (None, None)
            t = layer.transform() if isinstance(layer, StaticLayer) else layer
            if self.num_classes is not None and hasattr(t, "condition"):
                t = t.condition(context)
            out.append(t.inv if inverted else t)
        return out

    def dist(self, y: torch.Tensor | None = None) -> dist.TransformedDistribution:
        """The flow as a distribution (conditioned on labels ``y`` when conditional)."""
        base = self.base()
        if y is not None and self.num_classes is not None:
            base = base.expand(y.shape)
        return dist.TransformedDistribution(base, self._transforms(y))

    def _not_invertible(self) -> NotInvertibleError:
        return NotInvertibleError(
            f"model.flow={self.cfg.flow} has no inverse: it gives the density of its own samples "
            "only (d = flow.dist(); x = d.rsample(); d.log_prob(x)), not of data it did not "
            "sample; use realnvp, maf, nsf_* or glow for density estimation"
        )

    def log_prob(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """Exact log p(x) per example (nats, in the model's space)."""
        d = self.dist(y)
        if self.has_inverse:
            return d.log_prob(x)
        try:  # x is no sample of the fresh distribution d, so Pyro's cache cannot have it
            return d.log_prob(x)
        except (KeyError, NotImplementedError):
            raise self._not_invertible() from None

    def forward(
        self,
        x: torch.Tensor | None = None,
        y: torch.Tensor | None = None,
        num_samples: int | None = None,
    ) -> torch.Tensor:
        """The generative process: x ~ p(x) in ``pyro.plate("data")``, observed when given."""
        if x is None and num_samples is None:
            raise ValueError("give the data x or a number of samples")
        if x is not None and not self.has_inverse:
            raise self._not_invertible()  # now, not as Pyro's KeyError when the ELBO scores x
        n = x.shape[0] if x is not None else num_samples
        with pyro.plate("data", n):
            return pyro.sample("x", self.dist(y), obs=x)

    model = forward

    @torch.no_grad()
    def sample(self, n: int, y: torch.Tensor | None = None) -> torch.Tensor:
        """``n`` draws x = G(z) (a class-conditional flow draws classes uniformly if no
        ``y``)."""
        if self.num_classes is not None:
            if y is None:
                y = torch.arange(n, device=self.base_loc.device) % self.num_classes
            return self.dist(y).sample()
        return self.dist().sample((n,))

    def extra_repr(self) -> str:
        return f"flow={self.cfg.flow}, dim={self.dim}, layers={len(self.layers)}"


def log_prob_brute_force(flow: Flow, x: torch.Tensor) -> torch.Tensor:
    """log p(x) by the change of variables with an autograd Jacobian of G⁻¹ (for tests):
    log p(x) = log N(G⁻¹(x); 0, I) + log |det ∂G⁻¹/∂x|."""
    transforms = flow._transforms(None)

    def g_inv(v):
        for t in reversed(transforms):
            v = t.inv(v)
        return v

    out = []
    for xi in x:
        jac = torch.autograd.functional.jacobian(g_inv, xi[None])[0, :, 0, :]
        z = g_inv(xi[None])
        out.append(flow.base().log_prob(z)[0] + torch.linalg.slogdet(jac)[1])
    return torch.stack(out)


__all__ = ["ActNorm", "Flow", "NotInvertibleError", "log_prob_brute_force"]

"""Building blocks for :mod:`pyrogen.models.flow` that Pyro lacks, and the Glow image flow.

* :class:`ActNorm`: per-feature affine map with data-dependent initialisation (Kingma &
  Dhariwal, 2018), for vectors or for the channels of (C, H, W) images.
* :class:`SoftClipLogScale`: an affine layer's log-scale soft-clipped (zuko's choice);
  :class:`QuadraticSplineCoupling` and :class:`QuadraticSplineAutoregressive`: Pyro's spline
  layers with rational-quadratic splines that start as the identity and stay well conditioned
  in float32 (see the measurements at ``SPLINE_MINIMUMS``);
  :func:`interleave`: the permutation that makes couplings alternate even and odd coordinates.
* :class:`Inverse`: a transform module used in its inverse direction (a MAF is the inverse of
  Pyro's IAF-shaped ``AffineAutoregressive``).
* :class:`PermuteLayer`, :class:`ReshapeLayer` and :class:`FixedTransform`: parameter-free
  steps kept as modules, so their index tensors are buffers that follow the flow to its
  device.
* ``glow``: squeeze to (4C, H/2, W/2), then steps of act-norm, invertible 1x1 convolution
  (Pyro's ``GeneralizedChannelPermute``) and affine coupling over channels (Pyro's
  ``AffineCoupling`` with ``dim=-3`` and a convolutional hyper-network). Single scale.
"""

from __future__ import annotations

import math
from functools import partial

import torch
import torch.nn.functional as F
from pyro.distributions import constraints
from pyro.distributions import transforms as T
from pyro.distributions.torch_transform import TransformModule
from pyro.distributions.transforms.spline import (
    ConditionalSpline,
    ConditionedSpline,
    Spline,
    _monotonic_rational_spline,
)
from torch import nn
from torch.distributions.transforms import ReshapeTransform


class Inverse(nn.Module):
    """The transform module ``layer`` used in its inverse direction: ``transform()`` is
    ``layer.inv`` (parameters stay ``layer``'s). ``Flow([Inverse(T.AffineAutoregressive(...))])``
    is a MAF step: one pass to score data, D passes to sample."""

    def __init__(self, layer: nn.Module) -> None:
        super().__init__()
        self.layer = layer

    def transform(self) -> torch.distributions.Transform:
        return self.layer.inv


class ActNorm(TransformModule):
    """Act-norm in the generative direction: x = z ⊙ exp(s) + b per feature (a vector's
    entries, or an image's channels), so log |det ∂x/∂z| = (D / F) Σ_f s_f for F features
    in an event of D numbers.

    Data-dependent initialisation: the first time it scores data in training mode
    (x → z), it sets b = mean(x) and s = log std(x) over the batch (and pixels), so that
    z has zero mean and unit variance per feature. ``initialized`` is a buffer, so a
    checkpoint restores an initialised layer as such.
    """

    bijective = True

    def __init__(self, num_features: int, event_dim: int = 1) -> None:
        super().__init__(cache_size=1)
        self._event_dim = event_dim
        shape = (num_features,) + (1,) * (event_dim - 1)
        self.log_scale = nn.Parameter(torch.zeros(shape))
        self.bias = nn.Parameter(torch.zeros(shape))
        self.register_buffer("initialized", torch.tensor(False))

    @property
    def domain(self):
        return constraints.independent(constraints.real, self._event_dim)

    codomain = domain

    def _call(self, z):
        return z * self.log_scale.exp() + self.bias

    def _inverse(self, x):
        if self.training and not self.initialized:
            self._initialize(x)
        return (x - self.bias) * torch.exp(-self.log_scale)

    @torch.no_grad()
    def _initialize(self, x: torch.Tensor) -> None:
        feature_dim = x.dim() - self._event_dim
        dims = [d for d in range(x.dim()) if d != feature_dim]
        x = x.detach()
        self.bias.copy_(x.mean(dims).view_as(self.bias))
        if x.numel() > x.shape[feature_dim]:  # more than one value per feature
            self.log_scale.copy_(x.std(dims).clamp_min(1e-6).log().view_as(self.log_scale))
        self.initialized.fill_(True)

    def log_abs_det_jacobian(self, z, x):
        per_feature = z.shape[z.dim() - self._event_dim :].numel() // self.log_scale.numel()
        shape = z.shape[: z.dim() - self._event_dim]
        return (per_feature * self.log_scale.sum()).expand(shape)


class StaticLayer(nn.Module):
    """A parameter-free transform held as a module; ``transform()`` builds it."""

    def transform(self) -> torch.distributions.Transform:
        raise NotImplementedError


class FixedTransform(StaticLayer):
    """Any Pyro/torch ``Transform`` that is not a module, held as is (its tensors do not
    follow ``.to(device)``: prefer :class:`PermuteLayer` & co. for index tensors)."""

    def __init__(self, transform: torch.distributions.Transform) -> None:
        super().__init__()
        self._transform = transform

    def transform(self) -> torch.distributions.Transform:
        return self._transform

    def extra_repr(self) -> str:
        return type(self._transform).__name__


class PermuteLayer(StaticLayer):
    """A fixed permutation of a vector's entries, kept as a buffer."""

    def __init__(self, permutation: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("permutation", permutation)

    def transform(self) -> T.Permute:
        return T.Permute(self.permutation)


class ReshapeLayer(StaticLayer):
    """x.reshape(out_shape) per example (log |det J| = 0)."""

    def __init__(self, in_shape: tuple[int, ...], out_shape: tuple[int, ...]) -> None:
        super().__init__()
        self.in_shape, self.out_shape = tuple(in_shape), tuple(out_shape)

    def transform(self) -> ReshapeTransform:
        return ReshapeTransform(self.in_shape, self.out_shape)

    def extra_repr(self) -> str:
        return f"{self.in_shape} -> {self.out_shape}"


def squeeze_permutation(image_shape: tuple[int, int, int]) -> torch.Tensor:
    """The index map of the squeeze (space-to-depth) operation on flattened images:
    ``x_pixels = x_squeezed[..., perm]``, where the squeezed image has shape
    (4C, H/2, W/2) and channel 4c + 2i + j holds the pixels (c, 2h + i, 2w + j)."""
    c, h, w = image_shape
    idx = torch.arange(c * h * w).view(c, h // 2, 2, w // 2, 2)
    squeezed_to_pixel = idx.permute(0, 2, 4, 1, 3).reshape(-1)
    return torch.argsort(squeezed_to_pixel)


class CouplingConvNet(nn.Module):
    """The coupling's hyper-network: conv 3x3 → ReLU → conv 1x1 → ReLU → conv 3x3 (zero
    initialised, so each coupling starts as the identity), mapping the conditioning channels
    to (shift, log-scale) of the others; inputs and outputs are flattened per example, as
    Pyro's ``AffineCoupling`` passes them."""

    def __init__(self, in_channels: int, out_channels: int, spatial: tuple[int, int], hidden: int):
        super().__init__()
        self.in_channels, self.out_channels, self.spatial = in_channels, out_channels, spatial
        self.conv1 = nn.Conv2d(in_channels, hidden, 3, padding=1)
        self.conv2 = nn.Conv2d(hidden, hidden, 1)
        self.conv3 = nn.Conv2d(hidden, 2 * out_channels, 3, padding=1)
        nn.init.zeros_(self.conv3.weight)
        nn.init.zeros_(self.conv3.bias)

    def forward(self, x1: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        batch = x1.shape[:-1]
        h = x1.reshape(-1, self.in_channels, *self.spatial)
        h = self.conv3(F.relu(self.conv2(F.relu(self.conv1(h)))))
        shift, log_scale = h.chunk(2, dim=1)
        return shift.reshape(*batch, -1), log_scale.reshape(*batch, -1)


class SoftClipLogScale(nn.Module):
    """Wraps a hyper-network that returns (shift, log-scale) and maps the log-scale a to
    a / (1 + |a| / c), c = log 1000: smooth, identity near 0, bounded by ±c (zuko's
    ``MonotonicAffineTransform``). Keeps the wrapped MADE's ``permutation`` for Pyro's
    autoregressive inverse. Pyro's hard clamp stays, but no longer binds (|a| < c)."""

    bound = math.log(1000.0)

    def __init__(self, net: nn.Module, identity_init: bool = False) -> None:
        super().__init__()
        self.net = net
        if identity_init:  # the layer starts as the identity: zero shift and log-scale
            last = net.layers[-1]
            nn.init.zeros_(last.weight)
            nn.init.zeros_(last.bias)

    @property
    def permutation(self) -> torch.Tensor:
        return self.net.permutation

    def get_permutation(self) -> torch.Tensor:
        return self.net.permutation

    def forward(self, *args, **kwargs):
        shift, log_scale = self.net(*args, **kwargs)
        return shift, log_scale / (1 + log_scale.abs() / self.bound)


def interleave(dim: int) -> torch.Tensor:
    """x = v[..., perm] puts v's first half on the even coordinates of x and its second half
    on the odd ones: the coupling nearest the data conditions on the even coordinates
    (neighbouring pixels of an image), as zuko's alternating masks do."""
    return torch.argsort(torch.cat([torch.arange(0, dim, 2), torch.arange(1, dim, 2)]))


# Pyro's spline_coupling builds *linear* rational splines (order="linear") with bins of at
# least 1e-3 of [-bound, bound] and knot slopes of at least 1e-3. Trained on moons (4 layers
# of [32, 32], 300 steps), float32 then loses up to 0.5 nats (seed 0; > 1e-3 nats for 0.9 % of
# the samples at 1,000 steps) between the sample path and a fresh score of the same x: training
# drives bins to the minimum width with lambdas near 0 or 1, where theta = (x - knot) / width
# and the inverse's terms in absolute coordinates lose float32 digits, and a flat layer
# amplifies its input's rounding. pyrogen's splines are rational-quadratic (Durkan et al.; no
# lambdas) with minimum bins and slopes of 1e-2.
#
# That alone did not make them well conditioned: Pyro initialises the splines at random (steep
# bins whose inverse amplifies rounding, compounded through the couplings' conditioners) and
# pads the end knots with slope 1 - min_derivative, so the slope jumps to 1 at ±bound. Measured
# (torch 2.13 CPU, seed 0; nsf_coupling with 5 layers of [32, 32] on 6-D data, float32 against
# a float64 copy with the same weights, 2,000 points; max round trip |G⁻¹(G(z)) - z| / max
# |log p32 - log p64| of a fresh score / max |sample path log p - fresh log p|):
#   as built                      1.1e-2 / 3.4e-2 / 1.5e-2   ->  1.8e-7 / 3.4e-6 / 1.9e-6
#   parameters + N(0, 0.1²)       1.8e-2 / 1.4e-1 / 1.3e-1   ->  1.2e-5 / 1.9e-5 / 1.8e-5
#   200 Adam steps of ML          7.4e-5 / 5.7e-4 / 4.4e-4   ->  1.5e-5 / 6.2e-5 / 3.2e-5
# once every spline starts as the identity (identity_spline_init) with slope exactly 1 at
# ±bound (_ConditionedSpline); float64 gives ~1e-13. Trained on moons as above (300 steps,
# 10,000 samples), the sample-path/fresh gap over seeds 0-5 went from 6.5e-5 .. 3.4e-3 (the
# 5e-4 once promised here was exceeded by seeds 1 and 4) to 2.6e-5 .. 3.6e-5, round trip
# <= 1.1e-5. The minimums are a minor lever once initialised so: 1e-3 gave 3.0e-5 .. 6.0e-5.
# Pyro's rational-linear autoregressive splines, initialised as the identity, reached 4.6e-4
# (4.2e-5 .. 4.6e-4 over seeds 0-5); with these quadratic splines 1.2e-5 .. 1.7e-5, so
# nsf_autoregressive uses them too. tests/test_flow_precision.py holds every flow to this.
SPLINE_MINIMUMS = {"min_bin_width": 1e-2, "min_bin_height": 1e-2, "min_derivative": 1e-2}


def identity_spline_init(
    layer: nn.Module, num_splines: int, count_bins: int, min_derivative: float
) -> None:
    """Make the hyper-network whose last layer is ``layer`` output the identity spline:
    zero weights, zero bias for the widths and heights (equal bins after the softmax, so
    every bin's slope h_k / w_k is 1) and bias softplus⁻¹(1 − min_derivative) for the K − 1
    inner knot derivatives, so that min_derivative + softplus(bias) = 1. Pyro lays out the
    outputs as [widths (K n), heights (K n), derivatives ((K − 1) n), ...] for n splines."""
    nn.init.zeros_(layer.weight)
    nn.init.zeros_(layer.bias)
    n, k = num_splines, count_bins
    with torch.no_grad():
        layer.bias[2 * k * n : (3 * k - 1) * n] = math.log(math.expm1(1.0 - min_derivative))


class _ConditionedSpline(ConditionedSpline):
    """Pyro's spline with our minimums, and knot slopes of exactly 1 at ±bound.

    Pyro pads the end derivatives with 1 − min_derivative after adding min_derivative to the
    inner ones, so its spline's slope jumps from 1 − min_derivative to 1 at ±bound (and the
    identity is out of reach); here min_derivative is added before Pyro's code, which is given
    0 and so pads with 1: the spline is C¹ on the whole line."""

    def __init__(self, params, bound: float, order: str, minimums: dict[str, float]) -> None:
        super().__init__(params, bound=bound, order=order)
        self.minimums = minimums

    def spline_op(self, x, **kwargs):
        w, h, d, lam = self._params() if callable(self._params) else self._params
        return _monotonic_rational_spline(
            x,
            w,
            h,
            d + self.minimums["min_derivative"],
            lam,
            bound=self.bound,
            min_bin_width=self.minimums["min_bin_width"],
            min_bin_height=self.minimums["min_bin_height"],
            min_derivative=0.0,
            **kwargs,
        )


class _Spline(Spline):
    """Pyro's element-wise spline with :class:`_ConditionedSpline`'s op, starting as the
    identity (equal bins, unit knot slopes)."""

    def __init__(self, input_dim, count_bins, bound, order, minimums: dict[str, float]):
        super().__init__(input_dim, count_bins, bound, order)
        self.minimums = minimums
        with torch.no_grad():
            self.unnormalized_widths.zero_()
            self.unnormalized_heights.zero_()
            self.unnormalized_derivatives.fill_(
                math.log(math.expm1(1.0 - minimums["min_derivative"]))
            )
            if order == "linear":
                self.unnormalized_lambdas.zero_()  # sigmoid: 1/2

    spline_op = _ConditionedSpline.spline_op


class _ConditionalSpline(ConditionalSpline):
    def __init__(self, nn, input_dim, count_bins, bound, order, minimums: dict[str, float]):
        super().__init__(nn, input_dim, count_bins, bound, order)
        self.minimums = minimums

    def condition(self, context):
        return _ConditionedSpline(
            partial(self._params, context), self.bound, self.order, self.minimums
        )


class QuadraticSplineCoupling(T.SplineCoupling):
    """Pyro's ``SplineCoupling`` with rational-quadratic splines whose bins and knot slopes
    are at least ``SPLINE_MINIMUMS`` (Pyro's own spline code, larger minimums, slope 1 at
    ±bound). Both splines start as the identity (``hypernet``'s last layer is initialised by
    :func:`identity_spline_init`), as RealNVP's and Glow's couplings do."""

    def __init__(self, input_dim, split_dim, hypernet, count_bins=8, bound=5.0):
        TransformModule.__init__(self, cache_size=1)  # SplineCoupling's body, our splines
        self.lower_spline = _Spline(split_dim, count_bins, bound, "quadratic", SPLINE_MINIMUMS)
        identity_spline_init(
            hypernet.layers[-1],
            input_dim - split_dim,
            count_bins,
            SPLINE_MINIMUMS["min_derivative"],
        )
        self.upper_spline = _ConditionalSpline(
            hypernet, input_dim - split_dim, count_bins, bound, "quadratic", SPLINE_MINIMUMS
        )
        self.split_dim = split_dim
        self.identity = False


class QuadraticSplineAutoregressive(T.SplineAutoregressive):
    """Pyro's ``SplineAutoregressive`` with rational-quadratic splines of at least
    ``SPLINE_MINIMUMS`` (slope 1 at ±bound), starting as the identity: the MADE's last layer
    is initialised by :func:`identity_spline_init`. Pyro's default, rational-linear splines
    were measured less consistent in float32 (see ``SPLINE_MINIMUMS``)."""

    def __init__(self, input_dim, autoregressive_nn, count_bins=8, bound=5.0, init=True):
        super().__init__(input_dim, autoregressive_nn, count_bins, bound, "quadratic")
        if init:
            identity_spline_init(
                autoregressive_nn.layers[-1],
                input_dim,
                count_bins,
                SPLINE_MINIMUMS["min_derivative"],
            )
        self.spline = _ConditionalSpline(
            autoregressive_nn, input_dim, count_bins, bound, "quadratic", SPLINE_MINIMUMS
        )


class ConditionalQuadraticSplineAutoregressive(T.ConditionalSplineAutoregressive):
    """p(x | y) form of :class:`QuadraticSplineAutoregressive`."""

    def __init__(self, input_dim, autoregressive_nn, count_bins=8, bound=5.0):
        super().__init__(input_dim, autoregressive_nn, count_bins=count_bins, bound=bound)
        identity_spline_init(
            autoregressive_nn.layers[-1], input_dim, count_bins, SPLINE_MINIMUMS["min_derivative"]
        )

    def condition(self, context):
        cond_nn = partial(self.nn, context=context)
        cond_nn.permutation = cond_nn.func.permutation
        cond_nn.get_permutation = cond_nn.func.get_permutation
        return QuadraticSplineAutoregressive(self.input_dim, cond_nn, init=False, **self.kwargs)


def glow(
    dim: int,
    num_layers: int = 5,
    hidden_sizes: list[int] | tuple[int, ...] = (64,),
    image_shape: tuple[int, int, int] | None = None,
) -> list[nn.Module]:
    """Glow (single scale) on flattened ``image_shape`` images: squeeze, then
    [act-norm, invertible 1x1 conv, affine coupling] × ``num_layers``, listed in the generative
    direction; the coupling nets have ``hidden_sizes[0]`` channels."""
    if image_shape is None:
        raise ValueError("glow needs image data (an image_shape (C, H, W))")
    c, h, w = image_shape
    if h % 2 or w % 2 or c * h * w != dim:
        raise ValueError(
            f"glow needs images of even height and width matching dim={dim}; got {image_shape}"
        )
    channels, spatial = 4 * c, (h // 2, w // 2)
    squeezed = (channels, *spatial)
    split = channels // 2
    layers: list[nn.Module] = [ReshapeLayer((dim,), squeezed)]
    for _ in range(num_layers):
        net = CouplingConvNet(split, channels - split, spatial, hidden_sizes[0])
        # generative order is the reverse of Glow's data -> z step (act-norm, 1x1, coupling)
        layers.append(T.AffineCoupling(split, net, dim=-3))
        layers.append(T.GeneralizedChannelPermute(channels))
        layers.append(ActNorm(channels, event_dim=3))
    layers.append(ReshapeLayer(squeezed, (dim,)))
    layers.append(PermuteLayer(squeeze_permutation(image_shape)))
    return layers


__all__ = [
    "ActNorm",
    "ConditionalQuadraticSplineAutoregressive",
    "QuadraticSplineAutoregressive",
    "identity_spline_init",
    "QuadraticSplineCoupling",
    "SoftClipLogScale",
    "interleave",
    "CouplingConvNet",
    "FixedTransform",
    "Inverse",
    "PermuteLayer",
    "ReshapeLayer",
    "StaticLayer",
    "glow",
    "squeeze_permutation",
]

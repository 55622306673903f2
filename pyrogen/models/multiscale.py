"""Multi-scale image flows: Glow (Kingma & Dhariwal 2018, §3) and RealNVP (Dinh et al. 2017,
§3.6) with squeezes and splits.

In the data direction x → z, each of the ``levels`` scales squeezes the image (space to depth,
(C, H, W) → (4C, H/2, W/2)), transforms it, and, but at the last scale, *factors out* half of
its channels: z_l, with Glow's learned conditional prior p(z_l | h_l) = N(μ(h_l), σ(h_l)²)
computed by a zero-initialised 3x3 convolution of the half h_l that goes on to the next scale.
The last scale's output goes to N(0, I). So::

    log p(x) = Σ_l log N(z_l; μ(h_l), σ(h_l)²) + log N(z_L; 0, I) + log |det ∂(z_1..z_L)/∂x|

Each split prior is written as one more bijection of the flow, ε_l = (z_l − μ(h_l)) / σ(h_l)
(:class:`SplitPrior`, an affine coupling conditioned on h_l, with log |det| = −Σ log σ):
log N(z_l; μ, σ²) = log N(ε_l; 0, I) − Σ log σ, so the whole model is a push-forward of
N(0, I_D) through a list of transforms and goes through :class:`~pyrogen.models.flow.Flow` and
Pyro's ``TransformedDistribution`` as every other flow does (exact ``log_prob``, sampling,
training, bits/dim, checkpoints, DDP). Sampling at a temperature T draws ε ~ N(0, T² I), which
is z_l ~ N(μ(h_l), T² σ(h_l)²) at every split and N(0, T² I) at the top: the std of every
Gaussian scaled by T.

Layout: every layer acts on vectors of the flattened image's D numbers. A layer of a scale
acts on the first C·H·W of them (a :class:`Block` of shape (C, H, W), flattened channel-major);
after a split the factored channels are the block's second half, which later layers leave
alone, so the vector holds [top, ε_{L−1}, ..., ε_1] once it has passed every layer.

A scale of Glow is squeeze → K × [act-norm, invertible 1x1 convolution (Pyro's LU-form
``GeneralizedChannelPermute``), affine coupling over channels] → split; of RealNVP, K affine
couplings with alternating checkerboard masks → squeeze → K with alternating channel masks →
split, the last scale K checkerboard couplings only (Dinh et al. use 3, 3 and 4). Glow
squeezes at every scale (H, W divisible by 2^L); RealNVP at all but the last (2^(L−1)).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from pyro.distributions import constraints
from pyro.distributions import transforms as T
from pyro.distributions.torch_transform import TransformModule
from torch import nn

from pyrogen.models.flow_layers import ActNorm, CouplingConvNet

Shape = tuple[int, int, int]

#: soft clip of every log-scale here: a / (1 + |a| / c), c = log 1000 (as SoftClipLogScale)
LOG_SCALE_BOUND = math.log(1000.0)


def soft_clip(log_scale: torch.Tensor) -> torch.Tensor:
    """a ↦ a / (1 + |a| / log 1000): smooth, the identity near 0, bounded by ±log 1000."""
    return log_scale / (1 + log_scale.abs() / LOG_SCALE_BOUND)


class Block(TransformModule):
    """The image transform ``inner`` (event dim 3) applied to the first C·H·W entries of each
    vector, read as a (C, H, W) image (``shape``, the generative input's shape; ``out_shape``
    the output's, if different), the other entries left as they are: log |det J| is the
    inner transform's.

    ``_call`` is the generative direction (z → x), ``_inverse`` the data direction."""

    bijective = True
    domain = constraints.real_vector
    codomain = constraints.real_vector

    def __init__(self, inner: torch.distributions.Transform, shape: Shape,
                 out_shape: Shape | None = None) -> None:  # fmt: skip
        super().__init__(cache_size=1)
        self.inner = inner
        self.shape, self.out_shape = tuple(shape), tuple(out_shape or shape)
        self.size = math.prod(self.shape)
        self._pair: tuple[torch.Tensor, ...] | None = None  # (z, x, inner's z, inner's x)

    def _head(self, v: torch.Tensor, shape: Shape) -> tuple[torch.Tensor, torch.Tensor]:
        return v[..., : self.size].reshape(*v.shape[:-1], *shape), v[..., self.size :]

    def _join(self, head: torch.Tensor, rest: torch.Tensor) -> torch.Tensor:
        return torch.cat([head.reshape(*rest.shape[:-1], self.size), rest], dim=-1)

    def _call(self, z: torch.Tensor) -> torch.Tensor:
        h, rest = self._head(z, self.shape)
        out = self.inner(h)
        x = self._join(out, rest)
        self._pair = (z, x, h, out)
        return x

    def _inverse(self, x: torch.Tensor) -> torch.Tensor:
        out, rest = self._head(x, self.out_shape)
        h = self.inner.inv(out)
        z = self._join(h, rest)
        self._pair = (z, x, h, out)
        return z

    def log_abs_det_jacobian(self, z: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        if self._pair is not None and z is self._pair[0] and x is self._pair[1]:
            h, out = self._pair[2:]  # the inner transform's own cached pair
        else:
            out = self._head(x, self.out_shape)[0]
            h = self.inner.inv(out)
        return self.inner.log_abs_det_jacobian(h, out)

    def networks(self) -> list[nn.Module]:
        """The inner transform's conditioner network, if it has one (``train.compile``)."""
        inner = self.inner
        if callable(getattr(inner, "networks", None)):
            return list(inner.networks())
        net = getattr(inner, "nn", None)
        return [net] if isinstance(net, nn.Module) else []

    __repr__ = nn.Module.__repr__  # the inner layer too, not torch's Transform's name only

    def extra_repr(self) -> str:
        if self.out_shape != self.shape:
            return f"{self.shape} -> {self.out_shape}"
        return f"{self.shape}"


class Unsqueeze(torch.distributions.Transform):
    """Depth to space, the generative direction of Glow's squeeze: (4C, H, W) → (C, 2H, 2W),
    channel 4c + 2i + j going to the pixels (c, 2h + i, 2w + j) (``F.pixel_shuffle``); its
    inverse is the squeeze (``F.pixel_unshuffle``). A permutation: log |det J| = 0."""

    bijective = True
    domain = constraints.independent(constraints.real, 3)
    codomain = constraints.independent(constraints.real, 3)

    def __init__(self) -> None:
        super().__init__(cache_size=1)

    def _call(self, z: torch.Tensor) -> torch.Tensor:
        return F.pixel_shuffle(z, 2)

    def _inverse(self, x: torch.Tensor) -> torch.Tensor:
        return F.pixel_unshuffle(x, 2)

    def log_abs_det_jacobian(self, z: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return z.new_zeros(z.shape[:-3])


def checkerboard(shape: Shape, parity: int) -> torch.Tensor:
    """The (1, H, W) mask b[h, w] = 1 where (h + w + parity) is even (the conditioning half)."""
    _, h, w = shape
    grid = torch.arange(h).view(h, 1) + torch.arange(w).view(1, w)
    return ((grid + parity) % 2 == 0).to(torch.get_default_dtype()).unsqueeze(0)


def channel_mask(shape: Shape, parity: int) -> torch.Tensor:
    """The (C, 1, 1) mask b = 1 on the first half of the channels (``parity`` 0) or on the
    second (``parity`` 1)."""
    c = shape[0]
    first = (torch.arange(c) < c // 2).to(torch.get_default_dtype())
    return (first if parity == 0 else 1.0 - first).view(c, 1, 1)


class MaskedAffineCoupling(TransformModule):
    """RealNVP's affine coupling with a binary mask b (checkerboard or channels), generative
    direction::

        x = b ⊙ z + (1 − b) ⊙ (z ⊙ exp(s(b ⊙ z)) + t(b ⊙ z)),  log |det ∂x/∂z| = Σ (1 − b) ⊙ s

    s (soft-clipped) and t from :class:`~pyrogen.models.flow_layers.CouplingConvNet`, whose last
    convolution is zero-initialised: the layer starts as the identity."""

    bijective = True
    domain = constraints.independent(constraints.real, 3)
    codomain = constraints.independent(constraints.real, 3)

    def __init__(self, shape: Shape, mask: torch.Tensor, hidden: int) -> None:
        super().__init__(cache_size=1)
        self.shape = tuple(shape)
        c = shape[0]
        self.net = CouplingConvNet(c, c, (shape[1], shape[2]), hidden)
        self.register_buffer("mask", mask)

    def _shift_log_scale(self, conditioner: torch.Tensor):
        batch = conditioner.shape[:-3]
        shift, log_scale = self.net(conditioner.reshape(*batch, -1))
        free = 1.0 - self.mask
        shift = shift.reshape(*batch, *self.shape) * free
        log_scale = soft_clip(log_scale.reshape(*batch, *self.shape)) * free
        return shift, log_scale

    def _call(self, z: torch.Tensor) -> torch.Tensor:
        shift, log_scale = self._shift_log_scale(z * self.mask)
        return z * log_scale.exp() + shift

    def _inverse(self, x: torch.Tensor) -> torch.Tensor:
        shift, log_scale = self._shift_log_scale(x * self.mask)
        return (x - shift) * torch.exp(-log_scale)

    def log_abs_det_jacobian(self, z: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        _, log_scale = self._shift_log_scale(z * self.mask)  # b ⊙ z = b ⊙ x
        return log_scale.sum((-3, -2, -1))

    def networks(self) -> list[nn.Module]:
        return [self.net]


class SplitPrior(TransformModule):
    """Glow's split with its learned conditional prior, as a bijection. Of the (C, H, W) block,
    the first C/2 channels h go on to the next scale and the last C/2, z, are factored out with
    p(z | h) = N(μ(h), σ(h)²), (μ, log σ) = a zero-initialised 3x3 convolution of h (log σ
    soft-clipped; the prior starts as N(0, I)). Generative direction, from ε ~ N(0, I)::

        z = μ(h) + σ(h) ⊙ ε,   log |det ∂z/∂ε| = Σ log σ(h)

    so that log N(ε; 0, I) − Σ log σ(h) = log N(z; μ(h), σ(h)²): scoring ε under the flow's
    base scores z under the split prior."""

    bijective = True
    domain = constraints.independent(constraints.real, 3)
    codomain = constraints.independent(constraints.real, 3)

    def __init__(self, shape: Shape) -> None:
        super().__init__(cache_size=1)
        c = shape[0]
        if c % 2:
            raise ValueError(f"a split needs an even number of channels, got {c}")
        self.shape = tuple(shape)
        self.conv = nn.Conv2d(c // 2, c, 3, padding=1)
        nn.init.zeros_(self.conv.weight)
        nn.init.zeros_(self.conv.bias)

    def prior(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(μ(h), σ(h)) of p(z | h) for the kept channels h (shape (..., C/2, H, W))."""
        batch = h.shape[:-3]
        out = self.conv(h.reshape(-1, *h.shape[-3:]))
        mean, log_scale = out.reshape(*batch, *out.shape[-3:]).chunk(2, dim=-3)
        return mean, soft_clip(log_scale).exp()

    def _call(self, v: torch.Tensor) -> torch.Tensor:
        h, eps = v.chunk(2, dim=-3)
        mean, scale = self.prior(h)
        return torch.cat([h, mean + scale * eps], dim=-3)

    def _inverse(self, x: torch.Tensor) -> torch.Tensor:
        h, z = x.chunk(2, dim=-3)
        mean, scale = self.prior(h)
        return torch.cat([h, (z - mean) / scale], dim=-3)

    def log_abs_det_jacobian(self, v: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        _, scale = self.prior(v.chunk(2, dim=-3)[0])
        return scale.log().sum((-3, -2, -1))

    def networks(self) -> list[nn.Module]:
        return [self.conv]


def _check(image_shape: Shape | None, dim: int, levels: int, squeezes: int, name: str) -> Shape:
    if image_shape is None:
        raise ValueError(f"multi-scale {name} needs image data (an image_shape (C, H, W))")
    c, h, w = image_shape
    if c * h * w != dim:
        raise ValueError(f"image_shape {image_shape} does not hold dim={dim} numbers")
    if levels < 1:
        raise ValueError(f"levels must be >= 1, got {levels}")
    if h % 2**squeezes or w % 2**squeezes:
        raise ValueError(
            f"{name} with {levels} levels squeezes {squeezes} times: height and width must be "
            f"divisible by {2**squeezes}, got {h}x{w}"
        )
    return image_shape


def _squeeze(shape: Shape) -> tuple[Block, Shape]:
    """The squeeze of a (C, H, W) block, as a generative layer: (4C, H/2, W/2) → (C, H, W)."""
    c, h, w = shape
    squeezed = (4 * c, h // 2, w // 2)
    return Block(Unsqueeze(), squeezed, shape), squeezed


def multiscale_glow(
    dim: int,
    levels: int = 2,
    steps_per_level: int = 4,
    hidden: int = 64,
    image_shape: Shape | None = None,
) -> list[nn.Module]:
    """Multi-scale Glow on flattened ``image_shape`` images, in the generative direction:
    ``levels`` × [squeeze, ``steps_per_level`` × (act-norm, 1x1 conv, affine coupling over
    channels), split with its learned prior (not at the last level)] read backwards. The
    coupling networks have ``hidden`` channels."""
    shape = _check(image_shape, dim, levels, levels, "glow")
    data_direction: list[nn.Module] = []  # x → ε, reversed at the end
    for level in range(levels):
        squeeze, shape = _squeeze(shape)
        data_direction.append(squeeze)
        channels, spatial = shape[0], (shape[1], shape[2])
        half = channels // 2
        for _ in range(steps_per_level):
            net = CouplingConvNet(half, channels - half, spatial, hidden)
            data_direction += [
                Block(ActNorm(channels, event_dim=3), shape),
                Block(T.GeneralizedChannelPermute(channels), shape),
                Block(T.AffineCoupling(half, net, dim=-3), shape),
            ]
        if level < levels - 1:
            data_direction.append(Block(SplitPrior(shape), shape))
            shape = (half, *spatial)
    return data_direction[::-1]


def multiscale_realnvp(
    dim: int,
    levels: int = 3,
    steps_per_level: int = 3,
    hidden: int = 64,
    actnorm: bool = False,
    image_shape: Shape | None = None,
) -> list[nn.Module]:
    """Multi-scale RealNVP (Dinh et al. 2017, §3.6) on flattened ``image_shape`` images, in
    the generative direction: ``levels`` × [``steps_per_level`` checkerboard couplings, then
    (but at the last level) squeeze, ``steps_per_level`` channel couplings and a split with
    Glow's learned prior] read backwards; masks alternate their halves from one coupling to
    the next; ``actnorm`` puts an act-norm after each coupling."""
    shape = _check(image_shape, dim, levels, levels - 1, "realnvp")
    data_direction: list[nn.Module] = []

    def couplings(mask) -> None:
        for k in range(steps_per_level):
            data_direction.append(Block(MaskedAffineCoupling(shape, mask(shape, k % 2), hidden),
                                        shape))  # fmt: skip
            if actnorm:
                data_direction.append(Block(ActNorm(shape[0], event_dim=3), shape))

    for level in range(levels):
        couplings(checkerboard)
        if level == levels - 1:
            break
        squeeze, shape = _squeeze(shape)
        data_direction.append(squeeze)
        couplings(channel_mask)
        data_direction.append(Block(SplitPrior(shape), shape))
        shape = (shape[0] // 2, shape[1], shape[2])
    return data_direction[::-1]


def split_priors(layers) -> list[SplitPrior]:
    """The :class:`SplitPrior` layers of a multi-scale flow, from the data's side."""
    return [m.inner for m in reversed(list(layers)) if isinstance(m, Block)
            and isinstance(m.inner, SplitPrior)]  # fmt: skip


def max_levels(image_shape: Shape, extra: int = 0) -> int:
    """The most levels an image of ``image_shape`` takes when a flow of L levels squeezes
    L − ``extra`` times (Glow: 0; RealNVP: 1)."""
    _, h, w = image_shape
    n = 0
    while h % 2 == 0 and w % 2 == 0:
        h, w, n = h // 2, w // 2, n + 1
    return n + extra


def multiscale_parameters(kind: str, image_shape: Shape, levels: int, steps: int,
                          hidden: int) -> int:  # fmt: skip
    """About how many parameters a multi-scale flow allocates: its coupling networks (3x3,
    1x1, 3x3 convolutions), 1x1 convolutions, act-norms and split priors."""
    c = image_shape[0]
    total = 0
    for level in range(levels):
        last = level == levels - 1
        if kind == "glow":
            c *= 4
            total += steps * (9 * (c // 2) * hidden + hidden * hidden + 9 * hidden * c + 3 * c * c)
        else:
            total += steps * (9 * c * hidden + hidden * hidden + 9 * hidden * 2 * c)
            if not last:
                c *= 4
                total += steps * (9 * c * hidden + hidden * hidden + 9 * hidden * 2 * c)
        if not last:
            total += 9 * (c // 2) * c + c
            c //= 2
    return total


__all__ = [
    "Block",
    "MaskedAffineCoupling",
    "SplitPrior",
    "Unsqueeze",
    "channel_mask",
    "checkerboard",
    "max_levels",
    "multiscale_glow",
    "multiscale_parameters",
    "multiscale_realnvp",
    "soft_clip",
    "split_priors",
]

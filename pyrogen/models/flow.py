"""Normalizing flows: z ~ p_z (N(0, I)), x = G(z) with G a stack of Pyro ``TransformModule``s.

The flow is a ``pyro.distributions.TransformedDistribution`` whose ``log_prob`` is exact by
the change of variables::

    log p(x) = log p_z(G⁻¹(x)) − log |det J_G(G⁻¹(x))|

A :class:`Flow` is built from plain arguments, as zuko's flows are: a list of transform
modules in the generative direction z → x, the dimension, and optionally a base distribution
and a number of classes (for p(x | y)). The functions below build the usual architectures as
such lists::

    flow = Flow(maf(dim=2, num_layers=5, hidden_sizes=[64, 64]), dim=2)

============  ===============================================  ====================  ===========
function      layers                                           score data (G⁻¹)      sample (G)
============  ===============================================  ====================  ===========
realnvp       affine coupling + permutation (Dinh et al.)      one pass              one pass
maf           *inverse* of Pyro's AffineAutoregressive         one pass              D passes
iaf           Pyro's AffineAutoregressive as is                D passes              one pass
nsf_coupling  rational-quadratic spline coupling (Durkan)      one pass              one pass
nsf_autoreg.  inverse of Pyro's SplineAutoregressive           one pass              D passes
              (rational-quadratic, as nsf_coupling)
planar        u h(wᵀz + b) (Rezende & Mohamed)                 no inverse            one pass
radial        β h(α, r)(z − z₀)                                no inverse            one pass
glow          squeeze, act-norm, 1x1 conv, coupling (images)   one pass              one pass
============  ===============================================  ====================  ===========

Pyro's autoregressive transforms are IAF-shaped: their forward map is one pass of a MADE
network and their inverse needs D sequential passes. A MAF scores data with one pass, so it
uses the inverse of the Pyro layer (:class:`~pyrogen.models.flow_layers.Inverse`) as its
generative step; an IAF is the same layers the other way round. Planar and radial flows have
no closed-form inverse: they can score only their own samples (Pyro caches the pair), and
scoring other data raises :class:`NotInvertibleError`. ``glow`` needs the images' shape.

With ``num_classes`` the flow is p(x | y): each conditional layer is given the one-hot y.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Sequence

import pyro
import pyro.distributions as dist
import pyro.distributions.transforms as T
import torch
from pyro.distributions.conditional import ConditionalTransformModule
from pyro.nn import AutoRegressiveNN, ConditionalAutoRegressiveNN, DenseNN
from torch import nn

from pyrogen.models.context import check_context, context_size, context_vector
from pyrogen.models.flow_layers import (
    ActNorm,
    ConditionalQuadraticSplineAutoregressive,
    FixedTransform,
    Inverse,
    PermuteLayer,
    QuadraticSplineAutoregressive,
    QuadraticSplineCoupling,
    SoftClipLogScale,
    StaticLayer,
    glow,
    interleave,
)
from pyrogen.models.multiscale import (
    max_levels,
    multiscale_glow,
    multiscale_parameters,
    multiscale_realnvp,
)
from pyrogen.models.process import GenerativeProcess
from pyrogen.registry import FLOWS

Sizes = Sequence[int]


class NotInvertibleError(ValueError):
    """A flow without an inverse was asked for the density of data it did not sample."""


def _spline_outputs(options: dict) -> int:
    """A spline's numbers per dimension: widths, heights, derivatives (and lambdas)."""
    return 4 * int(options["count_bins"])


def _planar_parameters(dim: int, num_layers: int = 5, **_: object) -> int:
    """u, w (D each) and b per layer."""
    return num_layers * (2 * dim + 1)


def _radial_parameters(dim: int, num_layers: int = 5, **_: object) -> int:
    """z₀ (D), α and β per layer."""
    return num_layers * (dim + 2)


# ----------------------------------------------------------------------------- layers
def _permutation(kind: str, dim: int, layer: int) -> torch.Tensor:
    if kind == "reverse":
        return torch.arange(dim - 1, -1, -1)
    if kind == "random":
        return torch.randperm(dim, generator=torch.Generator().manual_seed(layer))
    raise ValueError(f"permutation must be reverse or random, got {kind!r}")


def _normalisation(kind: str, dim: int) -> list[nn.Module]:
    if kind == "batchnorm":
        return [T.BatchNorm(dim)]
    if kind == "actnorm":
        return [ActNorm(dim)]
    if kind == "none":
        return []
    raise ValueError(f"normalization must be none, batchnorm or actnorm, got {kind!r}")


def _stack(num_layers: int, dim: int, make, normalization: str, permutation: str) -> list:
    """``num_layers`` layers from ``make()``, with the optional normalisation and a fixed
    permutation between consecutive layers."""
    if num_layers < 1:
        raise ValueError(f"num_layers must be >= 1, got {num_layers}")
    layers: list[nn.Module] = []
    for i in range(num_layers):
        layers.append(make())
        if i < num_layers - 1:
            layers += _normalisation(normalization, dim)
            layers.append(PermuteLayer(_permutation(permutation, dim, i)))
    return layers


def _made(d: int, context_dim: int | None, hidden_sizes: Sizes, param_dims: list[int]):
    """A MADE network in the natural variable order: the permutations between layers are
    the flow's own, not Pyro's default random order per layer, which can give consecutive
    layers the same order."""
    hidden = list(hidden_sizes)
    if min(hidden, default=0) < d:
        raise ValueError(
            f"hidden_sizes={hidden}: MADE networks need hidden layers at least as wide as the "
            f"data ({d} dimensions), or some outputs could depend on no input; use e.g. "
            f"[{max(2 * d, 64)}]"
        )
    order = torch.arange(d)
    if context_dim:
        return ConditionalAutoRegressiveNN(d, context_dim, hidden, param_dims, permutation=order)
    return AutoRegressiveNN(d, hidden, param_dims, permutation=order)


# Each affine layer's log-scale a is soft-clipped to a / (1 + |a| / log 1000) (zuko's
# choice, SoftClipLogScale): smooth, with gradients everywhere, bounded by ±6.9. Pyro's own
# hard clamp ([-5, 3] by default, which suits an IAF posterior in VI but not density
# estimation: once a layer hits the upper clip the loss no longer sees its scale while the
# gradient keeps pushing the network's outputs up, and MAFs on eight_gaussians diverged at 2
# of 3 seeds) is widened to [-6, 6] behind it, where it no longer binds. Measured against
# zuko on the 8x8 digits (3 seeds, 2,000 steps; bench/bench_flows.py): the soft clip is worth
# about 1 nat for a MAF; the clamp alone changed nothing.
LOG_SCALE_CLIP = {"log_scale_min_clip": -6.0, "log_scale_max_clip": 6.0}


def _mlp_size(widths: list[int]) -> int:
    return sum(a * b + b for a, b in zip(widths[:-1], widths[1:], strict=True))


class FlowArchitecture:
    """A registered flow architecture: the function that builds its layers (``build(dim,
    **options) -> list of modules``) and the facts the rest of pyrogen reads instead of
    testing its name (CONTRIBUTING.md):

    * :attr:`options`: ``build``'s keyword parameters (but ``dim`` and ``context_dim``) and
      their defaults; a config passes the ``model`` keys of the same names;
    * :attr:`conditional`: it has a class-conditional form (``build`` takes ``context_dim``);
    * :attr:`invertible`: its layers have a closed-form inverse, so it can score (and be
      fitted to) data it did not sample;
    * :attr:`made`: its conditioners are MADE networks, whose hidden layers must be at least
      as wide as the data;
    * :meth:`num_parameters`: about how many parameters it allocates (the memory check);
    * :meth:`problem`: why it cannot take data of this shape with these options, or ``None``.

    The networks ``train.compile`` compiles are read off the built layers
    (:func:`conditioner_networks`), not declared here.
    """

    def __init__(
        self,
        name: str,
        build: Callable[..., list[nn.Module]],
        *,
        invertible: bool = True,
        made: bool = False,
        outputs_per_dim: Callable[[dict], int] | None = None,
        num_parameters: Callable[..., int] | None = None,
        problem: Callable[..., str | None] | None = None,
    ) -> None:
        self.name = name
        self.build = build
        self.invertible = invertible
        self.made = made
        self._outputs_per_dim = outputs_per_dim
        self._num_parameters = num_parameters
        self._problem = problem
        self.__doc__ = build.__doc__

    @property
    def options(self) -> dict[str, object]:
        params = inspect.signature(self.build).parameters
        return {k: p.default for k, p in params.items() if k not in ("dim", "context_dim")}

    @property
    def conditional(self) -> bool:
        return "context_dim" in inspect.signature(self.build).parameters

    def __call__(self, dim: int, **options: object) -> list[nn.Module]:
        return self.build(dim=dim, **options)

    def num_parameters(self, dim: int, context: int = 0, **options: object) -> int:
        """About how many parameters ``build(dim, **options)`` allocates: by default
        ``num_layers`` conditioners, each an MLP from the data (and ``context`` one-hot class
        numbers) through ``hidden_sizes`` to ``outputs_per_dim`` numbers per dimension (2: a
        shift and a log-scale)."""
        options = {**self.options, **options}
        if self._num_parameters is not None:
            return self._num_parameters(dim, context=context, **options)
        per_dim = self._outputs_per_dim(options) if self._outputs_per_dim else 2
        one = _mlp_size([dim + context, *options["hidden_sizes"], per_dim * dim])
        return options["num_layers"] * one

    def problem(self, dim: int, **options: object) -> str | None:
        """Why this architecture cannot take vectors of ``dim`` with these options (the
        config's refusal, naming ``model.*`` keys), or ``None``."""
        hidden = list(options.get("hidden_sizes", self.options.get("hidden_sizes", ())))
        if self.made and min(hidden) < dim:
            return (
                f"model.hidden_sizes={hidden}: model.flow={self.name} uses MADE "
                f"networks, whose hidden layers must be at least as wide as the data ({dim} "
                f"dimensions); use e.g. model.hidden_sizes=[{max(2 * dim, 64)}]"
            )
        return self._problem(dim, **options) if self._problem is not None else None

    def __repr__(self) -> str:
        return f"FlowArchitecture({self.name!r})"


def architecture(name: str, doc: str = "", **facts: object) -> Callable:
    """Decorator: register the layer-building function ``build`` as the flow architecture
    ``name`` (a :class:`FlowArchitecture` with these ``facts``) and return ``build`` itself,
    so ``realnvp(dim, ...)`` stays a plain function::

        @architecture("my_flow", made=True)
        def my_flow(dim, num_layers=5, hidden_sizes=(64, 64)): ...
    """

    def wrap(build: Callable[..., list[nn.Module]]) -> Callable[..., list[nn.Module]]:
        FLOWS.register(name, doc)(FlowArchitecture(name, build, **facts))
        return build

    return wrap


def _realnvp_parameters(dim, context=0, levels=1, image_shape=None, **options):
    """The MLP couplings' (one scale), or the multi-scale convolutional flow's."""
    if levels == 1:
        one = _mlp_size([dim + context, *options["hidden_sizes"], 2 * dim])
        return options["num_layers"] * one
    steps = options.get("steps_per_level") or options["num_layers"]
    return multiscale_parameters("realnvp", image_shape, levels, steps, options["hidden_sizes"][0])


def _realnvp_problem(dim, levels=1, image_shape=None, normalization="none", **_):
    if levels == 1:
        return None
    if image_shape is None:
        return f"model.levels={levels}: a multi-scale realnvp needs image data; these are points"
    most = max_levels(image_shape, extra=1)
    if levels > most:
        return (
            f"model.levels={levels}: realnvp squeezes model.levels - 1 times, so height and "
            f"width must be divisible by {2 ** (levels - 1)}, got "
            f"{image_shape[1]}x{image_shape[2]}; use model.levels <= {most}"
        )
    if normalization == "batchnorm":
        return "model.normalization=batchnorm: a multi-scale realnvp takes none or actnorm"
    return None


@architecture("realnvp", num_parameters=_realnvp_parameters, problem=_realnvp_problem)
def realnvp(
    dim: int,
    num_layers: int = 5,
    hidden_sizes: Sizes = (64, 64),
    normalization: str = "none",
    permutation: str = "reverse",
    context_dim: int | None = None,
    levels: int = 1,
    steps_per_level: int | None = None,
    image_shape: tuple[int, int, int] | None = None,
) -> list[nn.Module]:
    """Affine coupling layers with permutations (RealNVP). Each coupling transforms one half
    of the coordinates given the other; the reverse permutations alternate the halves and a
    last fixed permutation makes them the even and the odd coordinates rather than the first
    and the second half (for an image: alternate columns, not the top and bottom rows).

    With ``levels`` > 1, the multi-scale convolutional RealNVP of Dinh et al. (2017, §3.6) on
    ``image_shape`` images (:func:`~pyrogen.models.multiscale.multiscale_realnvp`):
    ``steps_per_level`` (default ``num_layers``) checkerboard and channel couplings a scale,
    ``hidden_sizes[0]`` channels in their networks; ``permutation`` is unused (the masks
    alternate)."""
    if levels > 1:
        if context_dim:
            raise ValueError("a multi-scale realnvp (levels > 1) has no conditional form yet")
        if normalization not in ("none", "actnorm"):
            raise ValueError(f"a multi-scale realnvp takes none or actnorm, not {normalization}")
        return multiscale_realnvp(
            dim,
            levels=levels,
            steps_per_level=steps_per_level or num_layers,
            hidden=hidden_sizes[0],
            actnorm=normalization == "actnorm",
            image_shape=image_shape,
        )

    def make():
        if context_dim:
            layer = T.conditional_affine_coupling(dim, context_dim, hidden_dims=list(hidden_sizes))
        else:
            layer = T.affine_coupling(dim, hidden_dims=list(hidden_sizes))
        # each coupling starts as the identity (as Glow's do): with Pyro's default
        # initialisation the couplings' scales compound, and a fresh 8-layer RealNVP scored
        # 5-D N(0, I) data at log p = -3.5e5 and diverged in its first steps
        layer.nn = SoftClipLogScale(layer.nn, identity_init=True)
        return layer

    layers = _stack(num_layers, dim, make, normalization, permutation)
    return layers + [PermuteLayer(interleave(dim))]


def _autoregressive(name: str, inverse: bool, doc: str) -> Callable[..., list[nn.Module]]:
    """The layer builder of an affine autoregressive flow called ``name``: Pyro's
    autoregressive transform, which samples in one pass, inverted (``inverse``, MAF: one pass
    to score data) or not (IAF: one pass to sample)."""

    def build(
        dim: int,
        num_layers: int = 5,
        hidden_sizes: Sizes = (64, 64),
        normalization: str = "none",
        permutation: str = "reverse",
        context_dim: int | None = None,
    ) -> list[nn.Module]:
        def make():
            cls = T.ConditionalAffineAutoregressive if context_dim else T.AffineAutoregressive
            # starts as the identity, as the couplings do
            made = _made(dim, context_dim, hidden_sizes, [1, 1])
            layer = cls(SoftClipLogScale(made, identity_init=True), **LOG_SCALE_CLIP)
            return Inverse(layer) if inverse else layer

        return _stack(num_layers, dim, make, normalization, permutation)

    build.__name__ = build.__qualname__ = name
    build.__doc__ = doc
    return build


maf = architecture("maf", made=True)(
    _autoregressive(
        "maf", True, "Masked autoregressive flow: one pass to score data, D passes to sample."
    )
)
iaf = architecture("iaf", made=True)(
    _autoregressive(
        "iaf", False, "Inverse autoregressive flow: one pass to sample, D passes to score data."
    )
)


@architecture("nsf_coupling", outputs_per_dim=_spline_outputs)
def nsf_coupling(
    dim: int,
    num_layers: int = 5,
    hidden_sizes: Sizes = (64, 64),
    count_bins: int = 8,
    bound: float = 5.0,
    normalization: str = "none",
    permutation: str = "reverse",
) -> list[nn.Module]:
    """Rational-quadratic spline coupling layers (neural spline flow, coupling); no
    conditional form in Pyro."""

    k, split = count_bins, dim // 2

    def make():
        net = DenseNN(
            split,
            list(hidden_sizes),
            [(dim - split) * k, (dim - split) * k, (dim - split) * (k - 1)],
        )
        return QuadraticSplineCoupling(dim, split, net, count_bins=k, bound=bound)

    return _stack(num_layers, dim, make, normalization, permutation)


@architecture("nsf_autoregressive", made=True, outputs_per_dim=_spline_outputs)
def nsf_autoregressive(
    dim: int,
    num_layers: int = 5,
    hidden_sizes: Sizes = (64, 64),
    count_bins: int = 8,
    bound: float = 5.0,
    normalization: str = "none",
    permutation: str = "reverse",
    context_dim: int | None = None,
) -> list[nn.Module]:
    """Rational-quadratic spline autoregressive layers (Durkan et al. 2019), MAF-oriented (one
    pass to score), starting as the identity. Pyro's default rational-linear splines, once
    started at the identity, drifted up to 4.6e-4 nats between the sample path and fresh
    scoring after a short fit on moons (seeds 0-5); these stay within 2e-5 (``SPLINE_MINIMUMS``)."""
    k = count_bins
    param_dims = [k, k, k - 1]  # widths, heights, inner derivatives

    def make():
        cls = (
            ConditionalQuadraticSplineAutoregressive
            if context_dim
            else QuadraticSplineAutoregressive
        )
        net = _made(dim, context_dim, hidden_sizes, param_dims)
        return Inverse(cls(dim, net, count_bins=k, bound=bound))

    return _stack(num_layers, dim, make, normalization, permutation)


@architecture("planar", invertible=False, num_parameters=_planar_parameters)
def planar(dim: int, num_layers: int = 5) -> list[nn.Module]:
    """Planar flow layers z + û tanh(wᵀz + b) (no inverse: scores only its own samples), each
    starting as the identity: Pyro's û = u + (softplus(wᵀu) − 1 − wᵀu) w / |w|² (which keeps
    wᵀû > −1) is 0 for u = log(e − 1) w / |w|², not for u = 0."""
    layers = [T.Planar(dim) for _ in range(num_layers)]
    with torch.no_grad():
        for layer in layers:
            layer.u.copy_(math.log(math.e - 1.0) * layer.w / layer.w.pow(2).sum())
    return layers


@architecture("radial", invertible=False, num_parameters=_radial_parameters)
def radial(dim: int, num_layers: int = 5) -> list[nn.Module]:
    """Radial flow layers z + β h(α, r)(z − z₀) (no inverse: scores only its own samples),
    each starting as the identity: Pyro's β = −softplus(α') + softplus(β') is 0 for β' = α'."""
    layers = [T.Radial(dim) for _ in range(num_layers)]
    with torch.no_grad():
        for layer in layers:
            layer.beta_prime.copy_(layer.alpha_prime)
    return layers


def _glow_problem(
    dim: int, image_shape: tuple[int, int, int] | None = None, levels: int = 1, **_: object
):
    if image_shape is None:
        return "model.flow=glow needs image data; these data are points"
    if image_shape[1] % 2 or image_shape[2] % 2:
        return (
            f"model.flow=glow squeezes 2x2 pixels: height and width must be even, got "
            f"{image_shape[1]}x{image_shape[2]}"
        )
    most = max_levels(image_shape)
    if levels > most:
        return (
            f"model.levels={levels}: glow squeezes once a level, so height and width must be "
            f"divisible by {2**levels}, got {image_shape[1]}x{image_shape[2]}; use "
            f"model.levels <= {most}"
        )
    return None


def _glow_parameters(dim, context=0, num_layers=5, hidden_sizes=(64,), image_shape=None,
                     levels=1, steps_per_level=None, **_):  # fmt: skip
    """3x3 convolutions over the squeezed channels."""
    if levels > 1:
        steps = steps_per_level or num_layers
        return multiscale_parameters("glow", image_shape, levels, steps, hidden_sizes[0])
    c = 4 * (image_shape[0] if image_shape else 1)
    w = hidden_sizes[0]
    return num_layers * (9 * c * w + w * w + 9 * w * 2 * c)


def _glow(
    dim: int,
    num_layers: int = 5,
    hidden_sizes: Sizes = (64,),
    levels: int = 1,
    steps_per_level: int | None = None,
    image_shape: tuple[int, int, int] | None = None,
) -> list[nn.Module]:
    """Glow on flattened ``image_shape`` images: ``levels`` scales of squeeze,
    ``steps_per_level`` (default ``num_layers``) steps of act-norm, invertible 1x1 conv and
    affine coupling, and a split with a learned conditional prior between scales
    (:func:`~pyrogen.models.multiscale.multiscale_glow`); ``levels=1`` is the single-scale
    :func:`~pyrogen.models.flow_layers.glow` (the same layers as before multi-scale flows)."""
    steps = steps_per_level or num_layers
    if levels == 1:
        return glow(dim, num_layers=steps, hidden_sizes=hidden_sizes, image_shape=image_shape)
    return multiscale_glow(dim, levels, steps, hidden_sizes[0], image_shape)


architecture(
    "glow",
    "Glow for images (squeeze, act-norm, 1x1 conv, coupling; split between model.levels)",
    num_parameters=_glow_parameters,
    problem=_glow_problem,
)(_glow)

#: Pyro's layer types without a closed-form inverse (a layer of one's own says so with a class
#: attribute ``invertible = False``)
NOT_INVERTIBLE = (T.Planar, T.Radial, T.ConditionalPlanar, T.ConditionalRadial, T.Sylvester)


def layer_invertible(layer: nn.Module) -> bool:
    """Whether a flow layer (or the layer an :class:`Inverse` wraps) has a closed-form
    inverse: its ``invertible`` attribute where it has one, else not one of
    :data:`NOT_INVERTIBLE`."""
    inner = layer.layer if isinstance(layer, Inverse) else layer
    return bool(getattr(inner, "invertible", not isinstance(inner, NOT_INVERTIBLE)))


def conditioner_networks(layer: nn.Module) -> list[nn.Module]:
    """The networks of a flow layer that compute its parameters (coupling and MADE
    networks), which ``train.compile`` compiles. A layer's ``networks()`` where it defines
    one (the convention for layers of one's own); for Pyro's transform modules, which cannot,
    their child modules that hold parameters and are not transforms themselves (``nn``,
    ``arn``, a spline coupling's hyper-network), looking inside conditional transforms, each
    network once."""
    inner = layer.layer if isinstance(layer, Inverse) else layer
    if callable(getattr(inner, "networks", None)):
        return list(inner.networks())
    out: list[nn.Module] = []
    for child in inner.children():
        if isinstance(child, ConditionalTransformModule):
            found = conditioner_networks(child)
        elif isinstance(child, torch.distributions.Transform):
            found = []
        else:
            found = [child] if any(True for _ in child.parameters()) else []
        out += [net for net in found if not any(net is seen for seen in out)]
    return out


class StandardNormal(nn.Module):
    """p_z = N(0, I) over vectors of ``dim``, from buffers (it follows the module's device)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.register_buffer("loc", torch.zeros(dim))
        self.register_buffer("scale", torch.ones(dim))

    def forward(self) -> dist.Distribution:
        return dist.Normal(self.loc, self.scale).to_event(1)


class ConditionalNormal(nn.Module):
    """p_z(z | c) = N(μ(c), diag σ(c)²) with [μ, log σ] = W c + b, a linear map of the context
    vector c (zero at the start: N(0, I) for every c)."""

    def __init__(self, dim: int, context_size: int) -> None:
        super().__init__()
        self.dim = int(dim)
        self.net = nn.Linear(context_size, 2 * self.dim)
        nn.init.zeros_(self.net.weight)
        nn.init.zeros_(self.net.bias)

    def forward(self, context: torch.Tensor) -> dist.Distribution:
        loc, log_scale = self.net(context).split(self.dim, dim=-1)
        return dist.Normal(loc, log_scale.exp()).to_event(1)


class Flow(GenerativeProcess):
    """p(x) (or p(x | y)) = the push-forward of the base p_z through G.

    Args:
        transforms: the layers of G in the generative direction z → x: Pyro
            ``TransformModule``s, :class:`~pyrogen.models.flow_layers.Inverse` of one (a layer
            used backwards), parameter-free ``StaticLayer``s, or plain Pyro/torch
            ``Transform``s (kept as they are).
        dim: the dimension D of x (flows act on vectors: images are flattened).
        base: an ``nn.Module`` whose ``forward()`` returns p_z (event shape ``(D,)``), or a
            Pyro distribution; default N(0, I) from buffers.
        num_classes: makes the flow p(x | c) on class labels y: layers with a ``condition``
            method get c = the one-hot label y.
        context_dim: makes the flow p(x | c) on a continuous context c ∈ ℝ^C (the batch's
            ``y`` of shape ``(N, C)``), given as it is to those layers
            (:mod:`pyrogen.models.context`).
        conditional_base: a conditional flow's base is p_z(z | c) too
            (:class:`ConditionalNormal`), not N(0, I).

    ``forward`` (alias ``model``) is the Pyro model with the observed site ``x``.

    Example::

        >>> flow = Flow(realnvp(dim=2, num_layers=2, hidden_sizes=[16]), dim=2)
        >>> flow.log_prob(torch.zeros(3, 2)).shape
        torch.Size([3])
    """

    def __init__(
        self,
        transforms: Sequence[nn.Module | torch.distributions.Transform],
        dim: int,
        base: nn.Module | dist.Distribution | None = None,
        num_classes: int | None = None,
        context_dim: int | None = None,
        conditional_base: bool = False,
    ) -> None:
        super().__init__()
        width = context_size(num_classes, context_dim)  # refuses both
        if conditional_base and not width:
            raise ValueError(
                "conditional_base needs a conditional flow (num_classes or context_dim)"
            )
        if conditional_base and base is not None:
            raise ValueError("give a base or conditional_base=True, not both")
        if dim < 1:
            raise ValueError(f"dim must be >= 1, got {dim}")
        if not transforms:
            raise ValueError("a flow needs at least one transform")
        self.dim = int(dim)
        self.event_shape = (self.dim,)
        self.layers = nn.ModuleList(
            t if isinstance(t, nn.Module) else FixedTransform(t) for t in transforms
        )
        if conditional_base:
            base = ConditionalNormal(self.dim, width)
        elif base is None:
            base = StandardNormal(self.dim)
        self.base_module = base if isinstance(base, nn.Module) else None
        self._base_distribution = None if isinstance(base, nn.Module) else base
        self.num_classes = num_classes
        self.context_dim = context_dim
        self.conditional_base = conditional_base
        self.has_inverse = all(layer_invertible(layer) for layer in self.layers)

    def _like(self) -> torch.Tensor:
        """A tensor of the flow's device and dtype."""
        for t in (*self.parameters(), *self.buffers()):
            return t
        return torch.zeros(())

    def base(self, y: torch.Tensor | None = None) -> dist.Distribution:
        """p_z (with ``conditional_base``: p_z(z | c) for the context ``y``)."""
        if self.conditional_base:
            if y is None:
                raise ValueError("a flow with a conditional base needs its context")
            return self.base_module(self._context(y))
        if self.base_module is not None:
            return self.base_module()
        return self._base_distribution

    def _context(self, y: torch.Tensor) -> torch.Tensor:
        return context_vector(y, self.num_classes, self.context_dim, self._like().dtype)

    def _transforms(self, y: torch.Tensor | None) -> list:
        if self.conditional:
            if y is None:
                raise ValueError("a conditional flow needs its context: class labels or c")
            context = self._context(y)
        out = []
        for layer in self.layers:
            t = layer.transform() if isinstance(layer, StaticLayer | Inverse) else layer
            inner = layer.layer if isinstance(layer, Inverse) else layer
            if hasattr(inner, "_cached_x_y"):
                # Pyro caches the last (x, y) pair of a transform: a pair from an earlier call
                # would carry old parameters and a freed graph, so each distribution starts
                # afresh (within one distribution, a sample and its log_prob still share it)
                inner._cached_x_y = (None, None)
            if self.conditional and hasattr(inner, "condition"):
                inner_t = inner.condition(context)
                t = inner_t.inv if isinstance(layer, Inverse) else inner_t
            out.append(t)
        return out

    def dist(self, y: torch.Tensor | None = None) -> dist.TransformedDistribution:
        """The flow as a distribution (conditioned on the context ``y`` when conditional)."""
        base = self.base(y)
        if y is not None and self.conditional and not self.conditional_base:
            base = base.expand(y.shape if self.num_classes is not None else y.shape[:-1])
        return dist.TransformedDistribution(base, self._transforms(y))

    def _not_invertible(self) -> NotInvertibleError:
        return NotInvertibleError(
            "this flow has a layer without an inverse (planar, radial): it gives the density "
            "of its own samples only (d = flow.dist(); x = d.rsample(); d.log_prob(x)), not of "
            "data it did not sample; use realnvp, maf, nsf_* or glow for density estimation"
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

    @property
    def conditional(self) -> bool:
        return self.num_classes is not None or self.context_dim is not None

    def check_observed(self, x: torch.Tensor) -> None:
        if not self.has_inverse:
            raise self._not_invertible()  # now, not as Pyro's KeyError when the ELBO scores x

    def process(self, x: torch.Tensor | None, y: torch.Tensor | None) -> torch.Tensor:
        """x ~ p(x) (or p(x | y)), observed when given. The flow's parameters are param sites
        (:mod:`pyrogen.params`)."""
        return pyro.sample("x", self.dist(y), obs=x)

    @torch.no_grad()
    def sample(
        self, n: int, y: torch.Tensor | None = None, temperature: float = 1.0
    ) -> torch.Tensor:
        """``n`` draws x = G(z) (a class-conditional flow draws classes round-robin if no
        ``y``; one on a continuous context needs ``y``, ``(n, C)``). At a ``temperature``
        T ≠ 1, z = E[z] + T (z' − E[z]) with z' ~ p_z: for the Gaussian base, z ~ N(0, T² I),
        and in a multi-scale flow every split prior's std is scaled by T too
        (:mod:`pyrogen.models.multiscale`); T = 0 gives G(E[z])."""
        if not (temperature >= 0.0 and math.isfinite(temperature)):
            raise ValueError(f"temperature must be finite and >= 0, got {temperature}")
        if self.conditional:
            if y is None:  # classes round-robin; a continuous context must be given
                y = check_context(None, n, self.num_classes, self.context_dim, self._like().device)
            d, shape = self.dist(y), ()
        else:
            d, shape = self.dist(), (n,)
        if temperature == 1.0:
            return d.sample(shape)
        z = d.base_dist.sample(shape)
        mean = d.base_dist.mean
        z = mean + temperature * (z - mean)
        for t in d.transforms:
            z = t(z)
        return z

    def extra_repr(self) -> str:
        c = (
            f"classes={self.num_classes}"
            if self.context_dim is None
            else f"context={self.context_dim}"
        )
        return f"dim={self.dim}, layers={len(self.layers)}, {c}"


def make_flow(
    name: str,
    dim: int,
    num_classes: int | None = None,
    context_dim: int | None = None,
    conditional_base: bool = False,
    **options: object,
) -> Flow:
    """``Flow(<architecture name>(dim, **options), dim)``: a flow of a registered architecture
    (``realnvp``, ``maf``, ...) with that function's options; ``num_classes`` makes it
    class-conditional, ``context_dim`` conditional on a continuous context c ∈ ℝ^C.

    Example::

        >>> make_flow("maf", 2, num_layers=3, hidden_sizes=[32]).log_prob(torch.zeros(1, 2)).shape
        torch.Size([1])
    """
    arch = FLOWS.get(name)
    unknown = sorted(set(options) - set(arch.options))
    if unknown:
        allowed = ", ".join(arch.options)
        raise TypeError(f"{name} takes no option {', '.join(unknown)} (options: {allowed})")
    width = context_size(num_classes, context_dim)
    if width:
        if not arch.conditional:
            raise ValueError(f"{name} has no conditional form")
        options["context_dim"] = width
    layers = arch(dim, **options)
    return Flow(layers, dim, None, num_classes, context_dim, conditional_base=conditional_base)


def log_prob_brute_force(flow: Flow, x: torch.Tensor) -> torch.Tensor:
    """log p(x) by the change of variables with an autograd Jacobian of G⁻¹ (for tests):
    log p(x) = log p_z(G⁻¹(x)) + log |det ∂G⁻¹/∂x|."""
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


__all__ = [
    "Flow",
    "FlowArchitecture",
    "architecture",
    "conditioner_networks",
    "Inverse",
    "NotInvertibleError",
    "StandardNormal",
    "glow",
    "iaf",
    "log_prob_brute_force",
    "maf",
    "make_flow",
    "nsf_autoregressive",
    "nsf_coupling",
    "planar",
    "radial",
    "realnvp",
]

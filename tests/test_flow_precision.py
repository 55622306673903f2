"""Flows whose numbers can be relied on in float32, for every registered architecture (a new
one is covered when it registers): each starts as the identity map (up to fixed reorderings),
and as built, perturbed and briefly trained it agrees with a float64 copy of itself with the
same weights: the round trip G⁻¹(G(z)) = z, log p of fresh scoring, and the log p a sample
was drawn with (the sampling path) against a fresh score of the same point.

Tolerances: in these tests the worst float32 errors measured (torch 2.13 CPU) are 3.5e-6 for
the round trip (limit 3e-5) and 3.2e-5 nats for log p (limit 1e-4; nsf_coupling perturbed).
Before the spline layers started at the identity with a unit slope at ±bound, nsf_coupling
here was off by 1.4e-3 nats (fresh float32 vs float64) as built, 1.6e-3 perturbed and 3.3e-5
in the round trip after training."""

from __future__ import annotations

from contextlib import contextmanager

import pyro.distributions.transforms as T
import pytest
import torch

from pyrogen.models.flow import Flow, NotInvertibleError, make_flow
from pyrogen.models.flow_layers import StaticLayer
from pyrogen.registry import FLOWS

ARCHITECTURES = FLOWS.names()
ROUND_TRIP, LOG_P = 3e-5, 1e-4

pytestmark = pytest.mark.usefixtures("one_thread")


def options(name: str) -> tuple[int, dict]:
    """(dim, options) for a small flow of architecture ``name``: 3 layers, [16] hidden units
    where it has a network, 5 dimensions (odd: uneven coupling halves) or (1, 4, 4) images."""
    accepted = FLOWS.get(name).options  # the architecture's keyword parameters
    opts: dict = {"num_layers": 3}
    if "hidden_sizes" in accepted:
        opts["hidden_sizes"] = [16]
    if "image_shape" in accepted:
        opts["image_shape"] = (1, 4, 4)
        return 16, opts
    return 5, opts


def build(name: str, num_classes: int | None = None) -> Flow:
    torch.manual_seed(0)
    dim, opts = options(name)
    return make_flow(name, dim, num_classes=num_classes, **opts).eval()


@contextmanager
def default_dtype(dtype: torch.dtype):
    """Pyro's autoregressive inverse allocates its buffers in the default dtype."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(old)


def float64_copy(flow: Flow, name: str) -> Flow:
    f64 = build(name).double()
    f64.load_state_dict({k: v.double() for k, v in flow.state_dict().items()})
    return f64.eval()


def perturb(flow: Flow) -> Flow:
    """Every parameter plus N(0, 0.1²) noise (seeded)."""
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in flow.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=g))
    return flow


def train(flow: Flow, steps: int = 25) -> Flow:
    """``steps`` Adam steps of maximum likelihood on skewed, correlated, shifted data; a flow
    without an inverse (planar, radial: variational posteriors) instead minimises the reverse
    KL(q ‖ p) to the density p of N(0.5, 0.7²) per coordinate, on its own samples."""
    g = torch.Generator().manual_seed(2)
    a = torch.randn(flow.dim, flow.dim, generator=g) / flow.dim**0.5
    target = torch.distributions.Normal(0.5, 0.7)
    opt = torch.optim.Adam(flow.parameters(), lr=1e-2)
    flow.train()
    for _ in range(steps):
        e = torch.randn(128, flow.dim, generator=g)
        if flow.has_inverse:
            loss = -flow.log_prob((e + 0.3 * e**3) @ a.T + 0.5).mean()
        else:
            x, log_q = sample_path(flow, e)
            loss = (log_q - target.log_prob(x).sum(-1)).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return flow.eval()


def sample_path(flow: Flow, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """x = G(z) and log p(x) on the sampling path (Pyro's cached pairs, no inverse)."""
    transforms = flow._transforms(None)
    x = z
    for t in transforms:
        x = t(x)
    return x, torch.distributions.TransformedDistribution(flow.base(), transforms).log_prob(x)


def round_trip(flow: Flow, x: torch.Tensor) -> torch.Tensor:
    """G(G⁻¹(x)) through fresh transforms (every inverse computed, none cached)."""
    z = x.clone()
    for t in reversed(flow._transforms(None)):
        z = t.inv(z.clone())
    for t in flow._transforms(None):
        z = t(z)
    return z


def base_z(flow: Flow, n: int = 500, dtype=torch.float32) -> torch.Tensor:
    return torch.randn(n, flow.dim, generator=torch.Generator().manual_seed(3)).to(dtype)


# ----------------------------------------------------------------------------- identity
@pytest.mark.parametrize("name", ARCHITECTURES)
def test_every_architecture_starts_as_the_identity(name):
    """Each layer with parameters maps its input to itself with log |det J| = 0, except the
    fixed reorderings (permutations, reshapes) and Glow's 1x1 convolutions (random rotations,
    as in Kingma & Dhariwal), which must be isometries of log-det 0; so the flow's density is
    exactly the base density."""
    flow = build(name)
    # uniform on [-6, 6]: every spline bin, the knots at ±bound (5) and beyond
    v = 12.0 * torch.rand(256, flow.dim, generator=torch.Generator().manual_seed(5)) - 6.0
    with torch.no_grad():
        for layer, t in zip(flow.layers, flow._transforms(None), strict=True):
            y = t(v)
            ladj = t.log_abs_det_jacobian(v, y)
            assert ladj.abs().max() < 1e-5, (name, layer)
            if isinstance(layer, StaticLayer) or isinstance(layer, T.GeneralizedChannelPermute):
                norms = v.flatten(1).norm(dim=1), y.flatten(1).norm(dim=1)
                torch.testing.assert_close(*norms, rtol=1e-5, atol=1e-5)
            else:
                torch.testing.assert_close(y, v, rtol=1e-6, atol=1e-6, msg=f"{name}: {layer}")
            v = y
        x, lp_path = sample_path(flow, base_z(flow, 64))
        expected = flow.base().log_prob(x)
        torch.testing.assert_close(lp_path, expected, rtol=0, atol=1e-5)
        if flow.has_inverse:
            data = 2.0 * torch.randn(64, flow.dim, generator=torch.Generator().manual_seed(4))
            torch.testing.assert_close(
                flow.log_prob(data), flow.base().log_prob(data), rtol=1e-6, atol=1e-5
            )


CONDITIONAL = [n for n in ARCHITECTURES if FLOWS.get(n).conditional]  # the declared fact


@pytest.mark.parametrize("name", CONDITIONAL)
def test_every_class_conditional_flow_starts_as_the_base_density_for_every_class(name):
    flow = build(name, num_classes=3)
    x = 2.0 * torch.randn(30, flow.dim, generator=torch.Generator().manual_seed(4))
    y = torch.arange(30) % 3
    with torch.no_grad():
        torch.testing.assert_close(flow.log_prob(x, y), flow.base().log_prob(x), rtol=0, atol=1e-5)


# ------------------------------------------------------------- float32 against float64
STATES = {"built": lambda f: f, "perturbed": perturb, "trained": train}


@pytest.mark.parametrize("state", STATES)
@pytest.mark.parametrize("name", ARCHITECTURES)
def test_float32_agrees_with_float64_with_the_same_weights(name, state):
    flow = STATES[state](build(name))
    f64 = float64_copy(flow, name)
    z = base_z(flow)
    with torch.no_grad():
        if state != "built":  # the test would be vacuous at the identity
            x, lp = sample_path(flow, z)
            assert (lp - flow.base().log_prob(x)).abs().max() > 0.05
        x32, path32 = sample_path(flow, z)
        with default_dtype(torch.float64):
            x64, path64 = sample_path(f64, z.double())
        assert (x32.double() - x64).abs().max() < ROUND_TRIP
        assert (path32.double() - path64).abs().max() < LOG_P
        if not flow.has_inverse:  # planar, radial: their own samples only
            with pytest.raises(NotInvertibleError):
                flow.log_prob(x32.clone())
            return
        # the round trip, in float32 (float64 as the reference of what is achievable)
        assert (round_trip(flow, x32) - x32).abs().max() < ROUND_TRIP
        with default_dtype(torch.float64):
            assert (round_trip(f64, x64) - x64).abs().max() < 1e-10
            fresh64 = f64.log_prob(x64.clone())
        # fresh scoring of the same points in both precisions
        fresh32 = flow.log_prob(x64.float())
        assert (fresh32.double() - fresh64).abs().max() < LOG_P
        # the density a sample was drawn with is the density a fresh score gives it
        assert (path32 - flow.log_prob(x32.clone())).abs().max() < LOG_P

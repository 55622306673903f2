"""The amortised planar and Sylvester flow guides: each step's log|det| is the log-determinant
of its Jacobian (autograd), the guide's log q(z|x) of its own sample is the base density minus
the summed log-determinants of the whole flow, the planar steps are invertible (wᵀû > −1),
the facts they declare are true, and the configs build them with the documented widths."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from conftest import TINY_BINARY_VAE, vae_and_batch
from pyrogen import ConfigError, PlanarGuide, SylvesterGuide, diagnose, load_config
from pyrogen.build import build
from pyrogen.inference.elbo import check_compatible
from pyrogen.registry import GUIDES

D = 3
FLOW_GUIDES = {
    "planar": (PlanarGuide, {"num_flows": 3}),
    "sylvester": (SylvesterGuide, {"num_flows": 2, "num_householder": 2}),
}


def _guide(name: str, scale: float = 1.5, n_in: int = 4) -> nn.Module:
    """A float64 guide whose encoder is one linear map with large weights (flow parameters far
    from the identity: wᵀu < −1 for some planar steps before the reparameterisation)."""
    cls, options = FLOW_GUIDES[name]
    torch.manual_seed(0)
    encoder = nn.Linear(n_in, cls.encoder_outputs(D, **options)).double()
    with torch.no_grad():
        encoder.weight.normal_(0, scale)
        encoder.bias.normal_(0, scale)
    return cls(encoder, D, **options)


def _x(n: int = 6) -> torch.Tensor:
    return torch.randn(n, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(1))


def _per_example_jacobians(f, z: torch.Tensor) -> torch.Tensor:
    """(N, D, D): ∂f(z)_n / ∂z_n, checking that f maps each example on its own."""
    n, d = z.shape
    full = torch.autograd.functional.jacobian(lambda v: f(v.reshape(n, d)).reshape(-1), z.flatten())
    blocks = full.reshape(n, d, n, d)
    own = torch.stack([blocks[i, :, i, :] for i in range(n)])
    others = blocks.clone()
    for i in range(n):
        others[i, :, i, :] = 0
    assert torch.count_nonzero(others) == 0  # example n's step uses example n's parameters
    return own


@pytest.mark.parametrize("name", FLOW_GUIDES)
def test_each_step_log_abs_det_is_the_log_determinant_of_its_jacobian(name):
    guide = _guide(name)
    x = _x()
    z = torch.randn(6, D, dtype=torch.float64, generator=torch.Generator().manual_seed(2)) * 2
    for step in guide.steps(guide.features(x).detach()):
        y = step(z)
        jac = _per_example_jacobians(step._call, z)
        sign, logdet = torch.linalg.slogdet(jac)
        assert (sign > 0).all()  # orientation kept: 1 + h'·(…) > 0, an invertible step
        torch.testing.assert_close(step.log_abs_det_jacobian(z, y), logdet, rtol=1e-9, atol=1e-9)
        z = y


@pytest.mark.parametrize("name", FLOW_GUIDES)
def test_log_q_of_its_own_sample_is_the_base_density_minus_the_flow_log_det(name):
    """log q(z_K | x) = log N(z₀; μ(x), σ²(x)) − log |det ∂z_K/∂z₀|, the determinant of the
    composed flow by autograd (independent of the steps' own log|det|)."""
    guide = _guide(name)
    x = _x()
    q = guide.posterior(x)
    torch.manual_seed(3)
    z = q.rsample()
    torch.manual_seed(3)
    z0 = q.base_dist.rsample()  # the same draw of the base

    def flow(v: torch.Tensor) -> torch.Tensor:
        for step in q.transforms:
            v = step._call(v)
        return v

    torch.testing.assert_close(flow(z0), z)
    _, logdet = torch.linalg.slogdet(_per_example_jacobians(flow, z0.detach()))
    expected = q.base_dist.log_prob(z0) - logdet
    got = q.log_prob(z)
    assert got.shape == (6,) and torch.isfinite(got).all()
    torch.testing.assert_close(got, expected, rtol=1e-9, atol=1e-9)


def test_planar_steps_satisfy_the_invertibility_condition():
    """wᵀû = −1 + softplus(wᵀu) ≥ −1 for every example and step, also where the encoder's u has
    wᵀu far below −1 (then f(z) = z + u tanh(wᵀz + b) would fold space)."""
    guide = _guide("planar", scale=1.0)
    h = guide.features(_x(64)).detach()
    raw_below, checked = 0, 0
    for step in guide.steps(h):
        b, u, w = step._params
        assert b.shape == (64, 1) and u.shape == w.shape == (64, D)
        raw_below += int(((w * u).sum(-1) < -1).sum())
        u_hat = step.u_hat(u, w)
        wu = (w * u_hat).sum(-1)
        torch.testing.assert_close(wu, -1 + nn.functional.softplus((w * u).sum(-1)))
        assert (wu >= -1 - 1e-12).all()  # exactly −1 where softplus(wᵀu) underflows (wᵀu < −37)
        assert (wu[(w * u).sum(-1) > -30] > -1).all()
        checked += wu.numel()
    assert raw_below > 10 and checked == 3 * 64


def test_sylvester_q_is_orthogonal_and_r_r_tilde_upper_triangular_with_bounded_diagonals():
    guide = _guide("sylvester", scale=1.0)
    for step in guide.steps(guide.features(_x()).detach()):
        eye = torch.eye(D, dtype=torch.float64).expand(6, D, D)
        # columns of Q: Q e_j (reflect the basis vectors, one example per row of the batch)
        q = torch.stack([step.reflect(eye[:, :, j], transpose=False) for j in range(D)], -1)
        torch.testing.assert_close(q.transpose(-1, -2) @ q, eye)
        qt = torch.stack([step.reflect(eye[:, :, j], transpose=True) for j in range(D)], -1)
        torch.testing.assert_close(qt, q.transpose(-1, -2))
        for r in (step.r, step.r_tilde):
            assert torch.equal(r, r.triu())
            assert (r.diagonal(dim1=-2, dim2=-1).abs() < 1).all()


@pytest.mark.parametrize("name", GUIDES.names())
def test_scores_any_z_says_whether_q_scores_a_point_it_did_not_draw(name):
    """The fact check_compatible reads to refuse the VampPrior (p(z) = mean_k q(z | u_k))."""
    cls = GUIDES.get(name)
    torch.manual_seed(0)
    guide = cls(nn.Linear(4, cls.encoder_outputs(D)), D)
    q = guide.posterior(torch.randn(5, 4))
    z = torch.randn(5, D)
    if cls.scores_any_z:
        assert torch.isfinite(q.log_prob(z)).all()
    else:
        with pytest.raises(KeyError):
            q.log_prob(z)


def test_vamp_prior_is_refused_in_one_line_for_the_flow_guides():
    for name in FLOW_GUIDES:
        message = check_compatible(name, "trace", prior="vamp")
        assert message.startswith(f"guide.name={name}") and "model.prior=vamp" in message
        with pytest.raises(ConfigError) as err:
            load_config(None, TINY_BINARY_VAE + [f"guide.name={name}", "model.prior=vamp"])
        assert str(err.value) == message and "\n" not in message
    assert check_compatible("iaf", "trace", prior="vamp") is None


@pytest.mark.parametrize(
    "overrides, cls, flows, width",
    [
        (["guide.name=planar"], PlanarGuide, 10, 2 * 3 + 10 * (2 * 3 + 1)),
        (["guide.name=planar", "guide.num_flows=4"], PlanarGuide, 4, 6 + 4 * 7),
        (["guide.name=sylvester"], SylvesterGuide, 4, 6 + 4 * (9 + 6 + 8 * 3)),
        (
            ["guide.name=sylvester", "guide.num_flows=2", "guide.num_householder=1"],
            SylvesterGuide,
            2,
            6 + 2 * (9 + 6 + 3),
        ),
        (["guide.name=iaf"], None, 2, None),
    ],
)
def test_the_config_builds_the_guide_with_its_options_and_encoder_width(
    overrides, cls, flows, width
):
    """guide.num_flows left unset gives each guide its own default (planar 10 as in Rezende &
    Mohamed's Table 2, sylvester 4, iaf 2); the encoder outputs the documented numbers."""
    _, learner = build(load_config(None, TINY_BINARY_VAE + overrides), "cpu")
    guide = learner.guide
    if cls is None:
        assert len(guide.flows) == flows
        return
    assert isinstance(guide, cls) and guide.num_flows == flows
    x = torch.zeros(2, 64)
    assert guide.features(x).shape == (2, width)
    assert len(guide.posterior(x).transforms) == flows


def test_diagnose_reports_what_a_guide_scoring_only_its_own_samples_cannot_give():
    """KL(q ‖ p) is the Monte Carlo average over q's own draws (finite); I(x; z) and the
    inference gaps need q at z drawn for other examples or by another q: named, not crashed."""
    model, x = vae_and_batch("guide.name=planar", "guide.num_flows=2")
    out = diagnose(model, data=x, gap_examples=4, num_samples=8, refine_steps=2)
    assert math.isfinite(out["kl"]["total"]["mean"]) and out["kl"]["samples"] > 0
    assert out["mutual_information"]["mean"] is None
    assert "its own samples" in out["mutual_information"]["reason"]
    assert "amortisation_gap" not in out and "its own samples" in out["amortisation_gap_reason"]

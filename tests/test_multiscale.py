"""Multi-scale image flows (Glow, RealNVP): each layer's log-det against autograd, the exact
log_prob against a brute-force change of variables written in Glow's own terms (the factored
parts scored by their Gaussian priors), the float32 round trip, sampling at a temperature,
the single-scale configs unchanged, config refusals, and a run sampled from the CLI."""

from __future__ import annotations

import pytest
import torch
from pyro.distributions import transforms as T

from conftest import SMALL_RUN
from pyrogen import ConfigError, load_config
from pyrogen.build import build
from pyrogen.cli import main
from pyrogen.families import family_of
from pyrogen.models.flow import make_flow
from pyrogen.models.flow_layers import ActNorm, CouplingConvNet, glow, squeeze_permutation
from pyrogen.models.multiscale import (
    Block,
    MaskedAffineCoupling,
    SplitPrior,
    Unsqueeze,
    channel_mask,
    checkerboard,
    split_priors,
)
from pyrogen.training import train

pytestmark = pytest.mark.usefixtures("one_thread")

#: (architecture, image shape, levels): 4x4 images take two Glow levels (two squeezes) and
#: three RealNVP levels (squeezes between them)
FLOWS = [("glow", (1, 4, 4), 2), ("glow", (2, 4, 4), 2), ("realnvp", (1, 4, 4), 3),
         ("realnvp", (2, 4, 4), 2)]  # fmt: skip


def nudge(module: torch.nn.Module, seed: int = 7, scale: float = 0.1) -> torch.nn.Module:
    """Move every parameter off its initial value (every layer starts as the identity, every
    split prior as N(0, I))."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g, dtype=p.dtype))
    return module


def make(name: str, shape, levels: int, normalization: str = "none"):
    torch.manual_seed(0)
    options = {"normalization": normalization} if name == "realnvp" else {}
    flow = make_flow(name, shape[0] * shape[1] * shape[2], levels=levels, steps_per_level=2,
                     hidden_sizes=[8], image_shape=shape, **options)  # fmt: skip
    g = torch.Generator().manual_seed(5)
    flow.train()
    with torch.no_grad():  # act-norm's data-dependent initialisation on shifted, scaled data
        flow.log_prob(1.0 + 2.0 * torch.randn(32, flow.dim, generator=g))
    return nudge(flow).eval()


def images(n: int, dim: int, seed: int = 1) -> torch.Tensor:
    return 0.7 * torch.randn(n, dim, generator=torch.Generator().manual_seed(seed))


# ------------------------------------------------------------------ layers
LAYERS = {
    "squeeze": lambda: Block(Unsqueeze(), (8, 2, 2), (2, 4, 4)),
    "actnorm": lambda: Block(ActNorm(2, event_dim=3), (2, 4, 4)),
    "1x1 conv": lambda: Block(T.GeneralizedChannelPermute(2), (2, 4, 4)),
    "channel coupling (glow)": lambda: Block(
        T.AffineCoupling(1, CouplingConvNet(1, 1, (4, 4), 8), dim=-3), (2, 4, 4)
    ),
    "checkerboard 0": lambda: Block(
        MaskedAffineCoupling((2, 4, 4), checkerboard((2, 4, 4), 0), 8), (2, 4, 4)
    ),  # fmt: skip
    "checkerboard 1": lambda: Block(
        MaskedAffineCoupling((2, 4, 4), checkerboard((2, 4, 4), 1), 8), (2, 4, 4)
    ),  # fmt: skip
    "channel mask 0": lambda: Block(
        MaskedAffineCoupling((4, 2, 2), channel_mask((4, 2, 2), 0), 8), (4, 2, 2)
    ),  # fmt: skip
    "channel mask 1": lambda: Block(
        MaskedAffineCoupling((4, 2, 2), channel_mask((4, 2, 2), 1), 8), (4, 2, 2)
    ),  # fmt: skip
    "split prior": lambda: Block(SplitPrior((4, 2, 2)), (4, 2, 2)),
}


@pytest.mark.parametrize("name", LAYERS)
def test_each_layer_log_det_is_autograds_log_abs_det_jacobian(name, float64):
    """On vectors of 32 + 5 numbers: the layer acts on the first 32 (a 2x4x4 or 4x2x2 image)
    and leaves the last 5 alone; log |det ∂x/∂z| by autograd over all 37 equals the layer's
    own, on the sampling path (cached) and scoring fresh data (recomputed)."""
    torch.manual_seed(0)
    layer = nudge(LAYERS[name](), scale=0.3).eval()  # act-norm: no data-dependent init here
    z = torch.randn(4, 37, generator=torch.Generator().manual_seed(2))
    expected = torch.stack(
        [torch.linalg.slogdet(torch.autograd.functional.jacobian(layer._call, zi))[1] for zi in z]
    )
    x = layer(z)
    assert torch.equal(x[:, 32:], z[:, 32:])
    torch.testing.assert_close(layer.log_abs_det_jacobian(z, x), expected, atol=1e-10, rtol=0)
    fresh = x.clone()
    back = layer.inv(fresh)
    torch.testing.assert_close(back, z, atol=1e-10, rtol=0)
    torch.testing.assert_close(layer.log_abs_det_jacobian(back, fresh), expected)
    if name == "squeeze":  # the single-scale glow's space to depth: channel 4c + 2i + j
        squeezed = layer.inv(z.clone())[:, :32]
        assert torch.equal(squeezed[:, squeeze_permutation((2, 4, 4))], z[:, :32])
        assert (
            squeezed.view(4, 8, 2, 2)[0, 4 * 1 + 2 * 1 + 0, 1, 1]
            == z[0, :32].view(2, 4, 4)[1, 3, 2]
        )


def test_split_prior_scores_the_factored_half_by_its_conditional_gaussian(float64):
    layer = nudge(SplitPrior((4, 2, 2)), scale=0.3)
    x = torch.randn(3, 4, 2, 2, generator=torch.Generator().manual_seed(3))
    eps = layer.inv(x)
    h, z = x.chunk(2, dim=1)
    mean, scale = layer.prior(h)
    assert torch.equal(eps[:, :2], h)
    normal = torch.distributions.Normal(0.0, 1.0)
    log_p = normal.log_prob(eps[:, 2:]).sum((1, 2, 3)) - layer.log_abs_det_jacobian(eps, x)
    expected = torch.distributions.Normal(mean, scale).log_prob(z).sum((1, 2, 3))
    torch.testing.assert_close(log_p, expected)
    assert (scale - 1).abs().max() > 1e-3  # the prior is learned: not N(0, I) any more


# ------------------------------------------------------------------ the whole flow
def glow_terms_log_prob(flow, x: torch.Tensor) -> torch.Tensor:
    """log p(x) in Glow's own terms, without the flow's whitening of the factored parts:
    the bijection x → (z_1, ..., z_L) is every layer but the split priors (its log |det J| by
    autograd on the whole bijection), each factored part z_l is scored by
    N(μ(h_l), σ(h_l)²) of the half h_l kept at its split, and the top by N(0, I)."""
    layers = list(reversed(flow.layers))  # the data direction

    def bijection(v: torch.Tensor) -> torch.Tensor:
        for layer in layers:
            if not isinstance(layer.inner, SplitPrior):
                v = layer._inverse(v)
        return v

    def factored(v: torch.Tensor) -> torch.Tensor:
        """Σ_l log N(z_l; μ(h_l), σ(h_l)²), read off the same pass."""
        total = v.new_zeros(())
        for layer in layers:
            if isinstance(layer.inner, SplitPrior):
                block = v[: layer.size].view(layer.shape)
                h, z = block.chunk(2, dim=0)
                mean, scale = layer.inner.prior(h[None])
                total = total + torch.distributions.Normal(mean[0], scale[0]).log_prob(z).sum()
            else:
                v = layer._inverse(v)
        return total

    top = flow.layers[0].size  # the last scale's numbers
    out = []
    for xi in x:
        jac = torch.autograd.functional.jacobian(bijection, xi)
        v = bijection(xi)
        top_lp = torch.distributions.Normal(0.0, 1.0).log_prob(v[:top]).sum()
        out.append(top_lp + factored(xi) + torch.linalg.slogdet(jac)[1])
    return torch.stack(out)


@pytest.mark.parametrize(("name", "shape", "levels"), FLOWS)
def test_log_prob_is_the_brute_force_change_of_variables_with_split_priors(
    name, shape, levels, float64
):
    flow = make(name, shape, levels)
    assert len(split_priors(flow.layers)) == levels - 1
    x = images(5, flow.dim)
    torch.testing.assert_close(flow.log_prob(x), glow_terms_log_prob(flow, x), atol=1e-9, rtol=0)


@pytest.mark.parametrize(("name", "shape", "levels"), [*FLOWS, ("realnvp", (1, 4, 4), 2)])
def test_inverse_of_forward_is_identity_in_float32(name, shape, levels):
    norm = "actnorm" if name == "realnvp" and levels == 2 else "none"
    flow = make(name, shape, levels, normalization=norm)
    z = torch.randn(16, flow.dim, generator=torch.Generator().manual_seed(3))
    x = z
    for t in flow._transforms(None):
        x = t(x)
    back = x
    for t in reversed(flow._transforms(None)):
        back = t.inv(back.clone())  # a new tensor: no cached pair, a real inverse
    assert back.dtype == torch.float32
    torch.testing.assert_close(back, z, atol=1e-4, rtol=0)


def latents(flow, x: torch.Tensor) -> torch.Tensor:
    """ε = G⁻¹(x), through fresh tensors."""
    for t in reversed(flow._transforms(None)):
        x = t.inv(x.clone())
    return x


@pytest.mark.parametrize(("name", "shape", "levels"), FLOWS[:1] + FLOWS[2:3])
def test_temperature_scales_every_gaussian_and_zero_gives_the_mode_path(
    name, shape, levels, float64
):
    flow = make(name, shape, levels)
    torch.manual_seed(11)
    at_one = flow.sample(6)
    torch.manual_seed(11)
    at_half = flow.sample(6, temperature=0.5)
    # the same draws, ε halved: z_l − μ(h_l) = T σ(h_l) ε_l at every split, T ε at the top
    torch.testing.assert_close(latents(flow, at_half), 0.5 * latents(flow, at_one))
    cold = flow.sample(4, temperature=0.0)
    assert torch.equal(cold, cold[:1].expand_as(cold))
    mode = torch.zeros(1, flow.dim)
    for t in flow._transforms(None):
        mode = t(mode)
    torch.testing.assert_close(cold[:1], mode)
    # on the mode path each factored part is its prior's mean μ(h_l) (not 0: learned)
    v, means = cold[0], []
    for layer in reversed(flow.layers):
        if isinstance(layer.inner, SplitPrior):
            h, z = v[: layer.size].view(layer.shape).chunk(2, dim=0)
            mean, _ = layer.inner.prior(h[None])
            torch.testing.assert_close(z, mean[0])
            means.append(mean.abs().max())
        v = layer._inverse(v)
    assert means and min(means) > 1e-3
    with pytest.raises(ValueError, match="temperature"):
        flow.sample(2, temperature=-1.0)


def test_single_scale_glow_and_realnvp_are_the_layers_of_before():
    """levels=1 builds today's layers: old configs and checkpoints load and score the same."""
    torch.manual_seed(0)
    new = make_flow("glow", 16, num_layers=2, hidden_sizes=[8], image_shape=(1, 4, 4))
    torch.manual_seed(0)
    old = glow(16, num_layers=2, hidden_sizes=[8], image_shape=(1, 4, 4))
    old_state = torch.nn.ModuleList(old).state_dict()
    assert new.layers.state_dict().keys() == old_state.keys()
    assert all(torch.equal(v, old_state[k]) for k, v in new.layers.state_dict().items())
    flat = make_flow("realnvp", 16, num_layers=2, hidden_sizes=[8], image_shape=(1, 4, 4))
    assert not any(isinstance(m, Block) for m in flat.layers)


def test_the_family_finds_the_networks_and_estimates_the_parameters():
    cfg = load_config(None, ["model.family=flow", "model.flow=glow", "data.name=digits",
                             "model.levels=3", "model.steps_per_level=2"])  # fmt: skip
    dataset, learner = build(cfg, "cpu")
    model = learner.model
    family = family_of(cfg)
    nets = family.networks(model)
    assert len(nets) == 3 * 2 + 2  # a coupling network a step, a prior between the levels
    actual = sum(p.numel() for p in model.parameters())
    estimate = family.estimate_parameters(cfg, dataset)
    assert 0.5 * actual < estimate < 2 * actual


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["model.flow=glow", "model.levels=4"], "model.levels=4: glow squeezes once a level"),
        (["model.flow=realnvp", "model.levels=5"], "model.levels <= 4"),
        (["model.flow=maf", "model.levels=2"], "model.levels=2: model.flow=maf is single-scale"),
        (["model.flow=maf", "model.steps_per_level=2"], "model.steps_per_level=2 applies to"),
        (["model.flow=glow", "model.levels=2", "model.conditional=true"], "no conditional form"),
        (["model.flow=realnvp", "model.levels=2", "model.normalization=batchnorm"], "none or act"),
        (["model.flow=realnvp", "model.levels=2", "data.name=moons"], "needs image data"),
    ],
)
def test_shapes_and_options_a_multiscale_flow_cannot_take_are_refused(overrides, message):
    with pytest.raises(ConfigError, match=message):
        build(load_config(None, ["model.family=flow", "data.name=digits", *overrides]), "cpu")


MULTISCALE_RUN = SMALL_RUN + ["model.family=flow", "model.flow=glow", "data.name=digits",
                              "model.levels=2", "model.steps_per_level=1",
                              "model.hidden_sizes=[8]", "data.dequantize=true",
                              "data.logit_lambda=1e-6"]  # fmt: skip


def test_a_trained_multiscale_run_samples_at_a_temperature_from_the_cli(tmp_path, capsys):
    run = train(load_config(None, [*MULTISCALE_RUN, "train.max_steps=3"]), tmp_path / "r",
                quiet=True)  # fmt: skip
    out = tmp_path / "cold.pt"
    assert main(["sample", str(tmp_path / "r"), "-n", "3", "--temperature", "0",
                 "--out", str(out)]) == 0  # fmt: skip
    cold = torch.load(out)
    assert cold.shape == (3, 64) and torch.equal(cold, cold[:1].expand_as(cold))
    torch.testing.assert_close(run.sample(2, temperature=0.0), cold[:2])
    capsys.readouterr()
    assert main(["sample", str(tmp_path / "r"), "--temperature", "-1", "--out",
                 str(tmp_path / "x.pt")]) == 2  # fmt: skip
    assert "--temperature" in capsys.readouterr().err
    assert not (tmp_path / "x.pt").exists()

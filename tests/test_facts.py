"""Facts live on the classes: every guide, flow architecture and GAN loss declares what the
rest of pyrogen needs (its options, ``reparameterised``, ``analytic_kl``, ``invertible``,
``conditional``, ``num_parameters``, its conditioner networks), and a new one defined here,
in one class plus its registration, is picked up by config validation, building and the
compatibility checks (the worked examples of CONTRIBUTING.md)."""

from __future__ import annotations

import warnings

import pyro.distributions as dist
import pyro.distributions.transforms as T
import pyro.poutine as poutine
import pytest
import torch
import torch.nn.functional as F
from pyro.nn import DenseNN
from torch import nn

from conftest import GAUSSIAN, POINTS
from pyrogen import ConfigError, load_config
from pyrogen.build import build
from pyrogen.config import from_dict
from pyrogen.families import FAMILIES
from pyrogen.inference.adversarial import AdversarialLearner, GANLoss, Hinge, Wasserstein
from pyrogen.inference.elbo import check_compatible
from pyrogen.models.flow import FlowArchitecture, architecture, log_prob_brute_force, make_flow
from pyrogen.models.gan import GAN
from pyrogen.models.guides import MIN_SCALE, AmortisedGuide
from pyrogen.models.process import GenerativeProcess
from pyrogen.nets import mlp_discriminator, mlp_generator
from pyrogen.registry import FLOWS, GAN_LOSSES, GUIDES

pytestmark = pytest.mark.usefixtures("one_thread")

RUN = ["train.device=cpu", "train.seed=0"]
VAE = ["model.hidden_sizes=[8]", GAUSSIAN, *POINTS]


@pytest.fixture
def registries():
    """Registrations made by a test are removed after it (the registries are global)."""
    saved = [(r, dict(r._items), dict(r._docs)) for r in (GUIDES, FLOWS, GAN_LOSSES)]
    yield
    for r, items, docs in saved:
        r._items, r._docs = items, docs


# ------------------------------------------------------------------ the toy entries
def register_student_t() -> type:
    """CONTRIBUTING.md's guide: q(z | x) = Student-t(ν, μ(x), σ(x)) per coordinate."""

    @GUIDES.register("student_t", "diagonal Student-t")
    class StudentTGuide(AmortisedGuide):
        """q_φ(z | x) = Π_i t_ν(z_i; μ_i(x), σ_i(x)): heavier tails than a Gaussian; torch
        has no closed-form KL to the Gaussian prior, so ``mean_field`` must refuse it."""

        analytic_kl = False

        def __init__(self, encoder, latent_dim, df: float = 4.0, name: str = "guide"):
            super().__init__(encoder, latent_dim, name)
            self.df = float(df)

        def posterior(self, x):
            loc, raw = self.features(x).chunk(2, dim=-1)
            return dist.StudentT(self.df, loc, F.softplus(raw) + MIN_SCALE).to_event(1)

    return StudentTGuide


class ToyCoupling(T.AffineCoupling):
    """An affine coupling layer of one's own: it names its conditioner network itself."""

    def networks(self) -> list[nn.Module]:
        return [self.nn]


def register_toy_coupling():
    """CONTRIBUTING.md's flow architecture: affine couplings with alternating halves."""

    @architecture("toy_coupling")
    def toy_coupling(dim: int, num_layers: int = 2, hidden_sizes=(16,)) -> list[nn.Module]:
        """Affine couplings, each followed by a reversal of the coordinates."""
        layers: list[nn.Module] = []
        for _ in range(num_layers):
            net = DenseNN(dim // 2, list(hidden_sizes), [dim - dim // 2, dim - dim // 2])
            layers += [ToyCoupling(dim // 2, net), T.Permute(torch.arange(dim - 1, -1, -1))]
        return layers

    return toy_coupling


class LeastSquares(GANLoss):
    """CONTRIBUTING.md's GAN loss: least squares (Mao et al. 2017), D minimises
    ½ E (d(x) − b)² + ½ E (d(G(z)) − a)², G minimises ½ E (d(G(z)) − c)²."""

    in_nats = False

    def __init__(self, a: float = 0.0, b: float = 1.0, c: float = 1.0) -> None:
        self.a, self.b, self.c = a, b, c

    def d_loss(self, real, fake):
        return 0.5 * ((real - self.b) ** 2).mean() + 0.5 * ((fake - self.a) ** 2).mean()

    def g_loss(self, fake):
        return 0.5 * ((fake - self.c) ** 2).mean()


def tiny_gan() -> GAN:
    torch.manual_seed(0)
    return GAN(mlp_generator(2, [8], 2), mlp_discriminator(2, [8]), 2, (2,))


# ------------------------------------------------------------------ every registered entry
@pytest.mark.parametrize("name", GUIDES.names())
def test_every_guide_declares_its_facts_and_they_are_true(name):
    cls = GUIDES.get(name)
    assert isinstance(cls.reparameterised, bool) and isinstance(cls.analytic_kl, bool)
    options = cls.options()
    assert isinstance(options, dict) and not {"encoder", "latent_dim", "name"} & set(options)
    assert cls.problem(3) is None and isinstance(cls.problem(1) or "", str)
    assert isinstance(cls.num_parameters(3), int) and cls.num_parameters(3) >= 0
    torch.manual_seed(0)
    encoder = nn.Linear(4, cls.encoder_outputs(3))
    extra = {"baseline_net": nn.Linear(4, 1)} if options.get("baseline") == "neural" else {}
    q = cls(encoder, 3, **extra).posterior(torch.randn(5, 4))
    assert q.has_rsample == cls.reparameterised
    prior = dist.Normal(torch.zeros(5, 3), 1.0).to_event(1)
    try:
        torch.distributions.kl_divergence(q, prior)
        analytic = True
    except NotImplementedError:
        analytic = False
    assert analytic == cls.analytic_kl, name
    # factorised: q(z|x) is a product of per-dimension densities (elbo.free_bits reads them)
    per_dim = isinstance(q, torch.distributions.Independent) and q.reinterpreted_batch_ndims == 1
    assert isinstance(cls.factorised, bool) and cls.factorised == (
        per_dim and tuple(q.base_dist.batch_shape) == (5, 3)
    ), name


@pytest.mark.parametrize("name", FLOWS.names())
def test_every_flow_architecture_declares_its_facts_and_they_are_true(name):
    arch = FLOWS.get(name)
    assert isinstance(arch, FlowArchitecture) and arch.name == name
    for fact in ("invertible", "conditional", "made"):
        assert isinstance(getattr(arch, fact), bool)
    assert isinstance(arch.options, dict)
    kw = {"image_shape": (1, 4, 4)} if "image_shape" in arch.options else {}
    kw |= {"hidden_sizes": [32]} if "hidden_sizes" in arch.options else {}
    assert arch.problem(16, **kw) is None
    count = arch.num_parameters(16, **kw)
    flow = make_flow(name, 16, **kw)
    assert flow.has_inverse == arch.invertible
    built = sum(p.numel() for p in flow.parameters())
    assert isinstance(count, int) and built / 4 <= count <= 4 * built  # an estimate
    if arch.conditional:
        assert make_flow(name, 16, num_classes=3, **kw).num_classes == 3
    else:
        with pytest.raises(ValueError, match="no conditional form"):
            make_flow(name, 16, num_classes=3, **kw)
    # the networks train.compile compiles hold every parameter but the layers' own few
    nets = FAMILIES["flow"].networks(flow)
    in_nets = sum(p.numel() for n in nets for p in n.parameters())
    assert in_nets >= 0.9 * built if name in ("realnvp", "maf", "iaf", "nsf_coupling") else True


@pytest.mark.parametrize("name", GAN_LOSSES.names())
def test_every_gan_loss_declares_its_facts(name):
    cls = GAN_LOSSES.get(name)
    assert isinstance(cls.options(), dict) and isinstance(cls.in_nats, bool)
    loss = cls()
    assert isinstance(loss.gradient_penalty, float)
    real, fake = torch.randn(6), torch.randn(6)
    assert loss.d_loss(real, fake).shape == () and loss.g_loss(fake).shape == ()
    assert GAN_LOSSES.name_of(loss) == name


# ------------------------------------------------------------------ adding a guide
def test_a_new_guide_is_one_class_and_its_registration(registries):
    register_student_t()
    base = ["guide.name=student_t", "model.latent_dim=2", *VAE]
    # the compatibility check reads its facts: no analytic KL, reparameterised
    assert "student_t guide does not have" in check_compatible("student_t", "mean_field")
    with pytest.raises(ConfigError, match="closed form, which the student_t guide"):
        load_config(None, [*base, "elbo.name=mean_field"])
    assert check_compatible("student_t", "renyi", num_particles=2) is None
    with pytest.raises(ConfigError, match="guide.baseline=neural applies to guide.name="):
        load_config(None, [*base, "guide.baseline=neural"])
    cfg = load_config(None, [*base, *RUN, "elbo.name=trace"])
    dataset, learner = build(cfg, "cpu")
    assert type(learner.model.guide).__name__ == "StudentTGuide"
    assert learner.model.guide.df == 4.0
    out = learner.step(dataset.train[:16])
    assert torch.isfinite(torch.tensor(out["loss"]))


def test_config_options_reach_a_guide_by_its_constructor_parameters():
    """No table of options: guide.rank reaches low_rank_normal because its constructor takes
    ``rank``; baseline and baseline_beta reach score_function."""
    common = ["model.latent_dim=2", *VAE, *RUN]
    cfg = load_config(None, [*common, "guide.name=low_rank_normal", "guide.rank=3"])
    assert build(cfg, "cpu")[1].model.guide.rank == 3
    sf = ["guide.name=score_function", "guide.baseline=neural", "elbo.name=trace_graph"]
    guide = build(load_config(None, [*common, *sf, "guide.baseline_beta=0.5"]), "cpu")[1]
    assert guide.model.guide.baseline == "neural" and guide.model.guide.baseline_beta == 0.5
    assert guide.model.guide.baseline_net is not None


# ------------------------------------------------------------------ adding a flow
def test_a_new_flow_architecture_is_one_function_and_its_registration(registries):
    toy = register_toy_coupling()
    arch = FLOWS.get("toy_coupling")
    assert arch.invertible and not arch.conditional and not arch.made
    assert arch.options == {"num_layers": 2, "hidden_sizes": (16,)}
    base = ["model.family=flow", "model.flow=toy_coupling", "model.hidden_sizes=[8]", *POINTS]
    with pytest.raises(ConfigError, match="toy_coupling has no conditional form"):
        load_config(None, [*base, "model.conditional=true"])
    cfg = load_config(None, [*base, *RUN, "model.num_layers=3"])
    dataset, learner = build(cfg, "cpu")
    flow = learner.model
    assert sum(isinstance(layer, ToyCoupling) for layer in flow.layers) == 3
    # its networks() are what train.compile compiles; the estimate counts them
    nets = FAMILIES["flow"].networks(flow)
    assert len(nets) == 3 and all(isinstance(n, DenseNN) for n in nets)
    built = sum(p.numel() for p in flow.parameters())
    assert FAMILIES["flow"].estimate_parameters(cfg, dataset) >= built
    x = dataset.train[:4]
    torch.testing.assert_close(flow.log_prob(x), log_prob_brute_force(flow, x))
    assert torch.isfinite(torch.tensor(learner.step(dataset.train[:16])["loss"]))
    assert toy(dim=4)[0].__class__ is ToyCoupling  # the function stays a plain function


def test_a_flow_without_an_inverse_is_refused_by_its_fact(registries):
    @architecture("toy_planar", invertible=False)
    def toy_planar(dim: int, num_layers: int = 2) -> list[nn.Module]:
        return [T.Planar(dim) for _ in range(num_layers)]

    with pytest.raises(ConfigError, match="toy_planar has no inverse.*realnvp"):
        load_config(None, ["model.family=flow", "model.flow=toy_planar", *POINTS])


# ------------------------------------------------------------------ adding a GAN loss
def test_a_gan_loss_instance_trains_without_the_registry():
    assert GAN_LOSSES.name_of(LeastSquares()) is None
    learner = AdversarialLearner(tiny_gan(), LeastSquares(b=0.9), lr=1e-3)
    assert learner.loss.b == 0.9 and learner.generator_loss == "LeastSquares"
    before = [p.detach().clone() for p in learner.model.discriminator.parameters()]
    out = learner.step(torch.randn(16, 2))
    assert set(out) == {"loss", "d_loss", "g_loss", "d_real", "d_fake"}
    assert torch.isfinite(torch.tensor(out["loss"])) and learner.num_steps == 1
    after = list(learner.model.discriminator.parameters())
    assert any(not torch.equal(a, b) for a, b in zip(before, after, strict=True))


def test_a_registered_gan_loss_is_a_config_name(registries):
    GAN_LOSSES.register("least_squares")(LeastSquares)
    toy = ["model.family=gan", "model.hidden_sizes=[8]", "model.discriminator_hidden_sizes=[8]"]
    toy += ["model.output=identity"]
    cfg = load_config(None, [*toy, *POINTS, *RUN, "adversarial.loss=least_squares"])
    _, learner = build(cfg, "cpu")
    assert isinstance(learner.loss, LeastSquares) and learner.generator_loss == "least_squares"


def test_loss_options_live_on_the_instance():
    real, fake = torch.tensor([0.2, 2.0]), torch.tensor([-0.1, -3.0])
    half = Hinge(margin=0.5).d_loss(real, fake)
    assert half.item() == pytest.approx((0.3 + 0.0) / 2 + (0.4 + 0.0) / 2)
    torch.testing.assert_close(
        Hinge().d_loss(real, fake), GAN_LOSSES.get("hinge")().d_loss(real, fake)
    )
    assert AdversarialLearner(tiny_gan(), Wasserstein(gradient_penalty=5.0)).gp_weight == 5.0
    assert AdversarialLearner(tiny_gan(), "wasserstein", gradient_penalty=2.0).gp_weight == 2.0
    assert AdversarialLearner(tiny_gan(), "wasserstein").gp_weight == 10.0
    assert AdversarialLearner(tiny_gan(), "hinge").gp_weight == 0.0
    with pytest.raises(ValueError, match="^gradient_penalty=1.0 applies to a loss given by name"):
        AdversarialLearner(tiny_gan(), Wasserstein(), gradient_penalty=1.0)
    with pytest.raises(ValueError, match="bad value for 'gradient_penalty'"):
        Wasserstein(gradient_penalty=-1.0)
    cfg = load_config(None, ["model.family=gan", "adversarial.loss=wasserstein",
                             "adversarial.gradient_penalty=3"])  # fmt: skip
    assert FAMILIES["gan"].make_loss(cfg).gradient_penalty == 3.0


# ------------------------------------------------------------------ the renamed key
def test_the_old_generator_loss_key_is_read_as_loss_with_a_warning(tmp_path):
    renamed = r"'adversarial.generator_loss' is renamed 'adversarial.loss'; read as "
    with pytest.warns(FutureWarning, match=renamed + "adversarial.loss=hinge"):
        old = load_config(None, ["model.family=gan", "adversarial.generator_loss=hinge"])
    assert old == load_config(None, ["model.family=gan", "adversarial.loss=hinge"])
    # an old run folder's config.yaml still loads
    folder = tmp_path / "old_run"
    folder.mkdir()
    text = old.to_yaml().replace("  loss: hinge", "  generator_loss: hinge")
    assert "generator_loss: hinge" in text
    (folder / "config.yaml").write_text(text)
    with pytest.warns(FutureWarning):
        assert load_config(folder / "config.yaml").adversarial.loss == "hinge"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert "generator_loss" not in old.to_yaml()
        load_config(None, ["model.family=gan", "adversarial.loss=hinge"])  # no warning


def test_the_old_and_the_new_key_together_are_refused():
    raw = {
        "model": {"family": "gan"},
        "adversarial": {"generator_loss": "hinge", "loss": "minimax"},
    }
    both = "'adversarial.generator_loss' is the old name of 'adversarial.loss'"
    with pytest.raises(ConfigError, match=f"^{both}: give only adversarial.loss, not both$"):
        from_dict(raw)


@pytest.mark.parametrize("family", ["vae", "flow", "gan"])
def test_every_model_is_one_generative_process_that_refuses_labels_it_cannot_use(family):
    """The three models share one Pyro program skeleton (GenerativeProcess): the batch in
    pyro.plate("data"), x observed when given; labels given to a model that is not
    class-conditional are refused, never silently ignored."""
    extra = {"vae": [GAUSSIAN], "gan": ["model.output=identity"]}.get(family, [])
    cfg = load_config(None, [f"model.family={family}", *POINTS, "model.hidden_sizes=[8]", *extra])
    dataset, learner = build(cfg, "cpu")
    model = learner.model
    assert isinstance(model, GenerativeProcess) and not model.conditional
    x = dataset.train[:5]
    tr = poutine.trace(model).get_trace(x)
    (plate,) = tr.nodes["x"]["cond_indep_stack"]
    assert (plate.name, plate.size) == ("data", 5)
    assert model(num_samples=3).shape[0] == 3
    with pytest.raises(ValueError, match="not class-conditional: it takes no labels y"):
        model(x, torch.zeros(5, dtype=torch.long))

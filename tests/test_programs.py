"""A Pyro program of the user's own (``pyrogen.train(cfg, data=x, model=m, guide=g)``):
TraceEnum's ELBO equals the sum over y written by hand; training moves the parameters and a
SIGINT'd run resumes bit-equal; 2 DDP ranks step as one process on the union batch; load,
evaluate and sample; each bad program and each CLI command on a program run is one line."""

from __future__ import annotations

import math
import os
import signal
from pathlib import Path

import pyro
import pyro.distributions as dist
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import pyrogen
from conftest import assert_same, flat
from pyrogen.cli import main
from pyrogen.config import EvaluationConfig
from pyrogen.models.program import ProgramError

pytestmark = pytest.mark.usefixtures("one_thread")
K, Z, D = 3, 2, 4  # classes y, latent z, data x


class Mixture(nn.Module):
    """p(y) p(z) p(x | y, z): y ~ Cat(π) summed out, z ~ N(0, I), x ~ N(W [z, onehot y], s²)."""

    def __init__(self, enumerate_y: bool = True, y_dist: str = "categorical") -> None:
        super().__init__()
        self.logits = nn.Parameter(torch.zeros(K))
        self.decoder = nn.Linear(Z + K, D)
        self.log_scale = nn.Parameter(torch.zeros(()))
        self.infer = {"enumerate": "parallel"} if enumerate_y else {}
        self.y_dist = y_dist

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None) -> None:
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(torch.zeros(Z), 1.0).to_event(1))
            prior = dist.Categorical(logits=self.logits)
            if self.y_dist == "poisson":
                prior = dist.Poisson(torch.ones(()))
            y = pyro.sample("y", prior, infer=self.infer).long().clamp(max=K - 1)
            shape = torch.broadcast_shapes(z.shape[:-1], y.shape)
            h = torch.cat([z.expand(*shape, Z), F.one_hot(y, K).float().expand(*shape, K)], -1)
            loc = self.decoder(h)
            pyro.sample("x", dist.Normal(loc, self.log_scale.exp()).to_event(1), obs=x)


class Encoder(nn.Module):
    """q(z | x) (and, with ``guide_y``, q(y | x) sampled from the guide)."""

    def __init__(self, guide_y: bool = False, extra_site: bool = False) -> None:
        super().__init__()
        self.net = nn.Linear(D, 2 * Z)
        self.classifier = nn.Linear(D, K)
        self.guide_y, self.extra_site = guide_y, extra_site

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None) -> None:
        loc, raw = self.net(x).chunk(2, -1)
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(loc, F.softplus(raw) + 1e-3).to_event(1))
            if self.guide_y:
                pyro.sample("y", dist.Categorical(logits=self.classifier(x)))
            if self.extra_site:
                pyro.sample("w", dist.Normal(0.0, 1.0))


def data(n: int = 96, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, D, generator=torch.Generator().manual_seed(seed)) * 2


def config(*extra: str) -> pyrogen.Config:
    base = ["elbo.name=trace_enum", "train.epochs=2", "train.batch_size=16", "train.device=cpu"]
    return pyrogen.load_config(None, [*base, "output.tensorboard=false", *extra])


def pair(seed: int = 0, **guide) -> tuple[nn.Module, nn.Module]:
    torch.manual_seed(seed)
    return Mixture(), Encoder(**guide)


# ----------------------------------------------------------------------------- enumeration
def test_trace_enum_elbo_is_the_sum_over_y_written_by_hand() -> None:
    """With z fixed by the guide's draw, TraceEnum's ELBO is E_q(z)[log Σ_y p(x, y, z) −
    log q(z | x)]; with the same z the hand-written sum matches to float64 precision."""
    torch.set_default_dtype(torch.float64)
    try:
        model, guide = pair(1)
        x = data(7).double()
        elbo = pyro.infer.TraceEnum_ELBO(max_plate_nesting=1)
        pyro.set_rng_seed(3)
        loss = elbo.differentiable_loss(model, guide, x)
        pyro.set_rng_seed(3)  # the same z: the guide runs first and draws only z
        loc, raw = guide.net(x).chunk(2, -1)
        q = torch.distributions.Normal(loc, F.softplus(raw) + 1e-3)
        z = q.sample()
        log_pz = torch.distributions.Normal(0.0, 1.0).log_prob(z).sum(-1)
        log_py = model.logits.log_softmax(-1)
        joint = []
        for y in range(K):
            h = torch.cat([z, F.one_hot(torch.full((7,), y), K).double()], -1)
            px = torch.distributions.Normal(model.decoder(h), model.log_scale.exp())
            joint.append(log_py[y] + px.log_prob(x).sum(-1))
        by_hand = (torch.stack(joint).logsumexp(0) + log_pz - q.log_prob(z).sum(-1)).sum()
        assert abs(float(-loss.detach()) - float(by_hand.detach())) < 1e-10
    finally:
        torch.set_default_dtype(torch.float32)


# ----------------------------------------------------------------------------- training
def test_training_moves_parameters_and_sigint_resume_is_bit_equal(tmp_path: Path) -> None:
    x = data()
    full = pyrogen.train(config(), data=x, run_dir=tmp_path / "full", quiet=True,
                         model=pair()[0], guide=pair()[1])  # fmt: skip
    torch.manual_seed(0)  # pair()'s initial values
    before = {k: v.clone() for k, v in Mixture().state_dict().items()}
    after = full.learner.module.program.program.state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before)

    def sigint(step: int, _out: dict) -> None:
        if step == 9:  # 77 training examples / 16 -> 5 steps an epoch: mid-epoch 2
            os.kill(os.getpid(), signal.SIGINT)

    part = tmp_path / "part"
    with pytest.raises(KeyboardInterrupt):
        pyrogen.train(config(), data=x, run_dir=part, quiet=True, on_step=sigint,
                      model=pair()[0], guide=pair()[1])  # fmt: skip
    resumed = pyrogen.train(pyrogen.load_config(part / "config.yaml"), run_dir=part,
                            resume=True, quiet=True, model=Mixture(), guide=Encoder())  # fmt: skip
    assert resumed.learner.num_steps == full.learner.num_steps
    assert_same(flat(full.learner.state_dict()), flat(resumed.learner.state_dict()))


@pytest.mark.filterwarnings("ignore::pyrogen.evaluation.loglik.PsisWarning")
def test_load_evaluate_sample(tmp_path: Path) -> None:
    run = pyrogen.train(config("train.epochs=1"), data=data(), run_dir=tmp_path / "r",
                        quiet=True, model=pair()[0], guide=pair()[1])  # fmt: skip
    loaded = pyrogen.load(tmp_path / "r", model=Mixture(), guide=Encoder())
    assert_same(flat(run.learner.module.state_dict()), flat(loaded.learner.module.state_dict()))
    assert loaded.sample(11).shape == (11, D)
    ev = EvaluationConfig(is_samples=200, parzen_samples=50)
    est = pyrogen.evaluate(loaded, ev)["estimates"]
    elbo, iw = est["elbo"], est["importance_sampled"]
    assert math.isfinite(elbo["mean"]) and math.isfinite(iw["mean"])
    assert iw["mean"] >= elbo["mean"] - 3 * (elbo["stderr"] or 0.0)
    assert iw["psis_khat"]["n"] == est["elbo"]["n"]


def test_importance_weights_sum_out_y_exactly() -> None:
    """With q(z|x) = p(z) the log weight is log Σ_y p(x | y, z) p(y): the enumerated
    importance weights equal the hand-written mixture density of the same draw."""
    from pyrogen.evaluation.loglik import summed_out_log_weights

    model, _ = pair(2)

    def prior_guide(x: torch.Tensor) -> None:
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(torch.zeros(Z), 1.0).to_event(1))

    x = data(5)
    with torch.no_grad():
        pyro.set_rng_seed(4)
        log_w = summed_out_log_weights(model, prior_guide, x, 3)
        pyro.set_rng_seed(4)
        z = torch.randn(3, 5, Z)
        terms = []
        for y in range(K):
            h = torch.cat([z, F.one_hot(torch.full((3, 5), y), K).float()], -1)
            px = torch.distributions.Normal(model.decoder(h), model.log_scale.exp())
            terms.append(model.logits.log_softmax(-1)[y] + px.log_prob(x).sum(-1))
    torch.testing.assert_close(log_w, torch.stack(terms).logsumexp(0), atol=1e-5, rtol=1e-5)


# ----------------------------------------------------------------------------- DDP
class PointGuide(nn.Module):
    """z = f(x) exactly (a Delta guide): with y summed out the ELBO has no noise, so two
    ranks and one process must make the same step."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Linear(D, Z)

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None) -> None:
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Delta(self.net(x)).to_event(1))


def _one_step(world: int, rank: int) -> dict[str, torch.Tensor]:
    from pyrogen.build import build

    cfg = config("model.family=program", "optim.name=sgd", "optim.lr=0.1", "optim.momentum=0.9")
    torch.manual_seed(0)
    _, learner = build(cfg, "cpu", data=data(), program=(Mixture(), PointGuide()))
    x = data(24, seed=7)
    if world > 1:
        learner.data_parallel()
        learner.global_batch_size = x.shape[0]
        x = x.tensor_split(world)[rank]
    for _ in range(2):
        learner.step(x)
    return {k: v.detach().clone() for k, v in learner.module.state_dict().items()}


def _ddp_worker(rank: int, root: str) -> None:
    torch.save(_one_step(2, rank), Path(root) / f"rank{rank}.pt")


def test_two_rank_step_equals_one_process_on_the_union_batch(tmp_path: Path) -> None:
    from test_distributed import launch

    single = _one_step(1, 0)
    launch(_ddp_worker, str(tmp_path))
    for rank in range(2):
        got = torch.load(tmp_path / f"rank{rank}.pt")
        assert got.keys() == single.keys()
        for key, value in single.items():
            torch.testing.assert_close(got[key], value, atol=1e-6, rtol=1e-5, msg=key)
    torch.manual_seed(0)  # the steps moved the decoder
    start = Mixture().state_dict()
    assert not torch.equal(start["decoder.weight"], single["program.program.decoder.weight"])


# ----------------------------------------------------------------------------- bad programs
class NoPlate(nn.Module):
    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None) -> None:
        pyro.sample("x", dist.Normal(torch.zeros_like(x), 1.0).to_event(2), obs=x)


BAD = {
    "no data plate": (lambda: (NoPlate(), None), 'not inside pyro.plate("data"'),
    "guide site the model lacks": (lambda: (Mixture(), Encoder(extra_site=True)), "'w'"),
    "model site without a guide site": (
        lambda: (Mixture(enumerate_y=False), Encoder()),
        "latent site(s) 'y' have no site in the guide",
    ),
    "enumerated site with no finite support": (
        lambda: (Mixture(y_dist="poisson"), Encoder()),
        "site 'y' is marked for enumeration",
    ),
}


@pytest.mark.parametrize("case", BAD)
def test_a_bad_program_is_one_clear_error(tmp_path: Path, case: str) -> None:
    make, words = BAD[case]
    model, guide = make()
    with pytest.raises(ProgramError) as err:
        pyrogen.train(config(), data=data(), run_dir=tmp_path / "r", quiet=True,
                      model=model, guide=guide)  # fmt: skip
    text = str(err.value)
    assert words in text and "\n" not in text
    assert not (tmp_path / "r").exists()  # nothing created for a refused run


def test_summing_out_needs_an_enumerating_estimator(tmp_path: Path) -> None:
    with pytest.raises(ProgramError, match="needs elbo.name=trace_enum"):
        pyrogen.train(config("elbo.name=trace"), data=data(), run_dir=tmp_path / "r",
                      quiet=True, model=Mixture(), guide=Encoder())  # fmt: skip
    # sampled from the guide instead, y trains with Trace_ELBO (a score-function term)
    guided = Encoder(guide_y=True)
    run = pyrogen.train(config("elbo.name=trace", "train.epochs=1"), data=data(),
                        run_dir=tmp_path / "g", quiet=True, model=Mixture(enumerate_y=False),
                        guide=guided)  # fmt: skip
    assert run.sample(3).shape == (3, D)


def test_nested_plates_set_max_plate_nesting(tmp_path: Path) -> None:
    class PerCoordinate(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.loc = nn.Parameter(torch.zeros(D))

        def forward(self, x: torch.Tensor, y: torch.Tensor | None = None) -> None:
            with pyro.plate("data", x.shape[0], dim=-2), pyro.plate("coords", D, dim=-1):
                c = pyro.sample("c", dist.Categorical(logits=torch.zeros(2)),
                                infer={"enumerate": "parallel"})  # fmt: skip
                pyro.sample("x", dist.Normal(self.loc * c, 1.0), obs=x)

    run = pyrogen.train(config("train.epochs=1"), data=data(), run_dir=tmp_path / "r",
                        quiet=True, model=PerCoordinate())  # fmt: skip
    assert run.learner.elbo.max_plate_nesting == 2
    assert run.model.facts.enumerated == ["c"]


# ----------------------------------------------------------------------------- the CLI
def test_cli_on_a_program_run_is_one_line(tmp_path: Path, capsys) -> None:
    run_dir = tmp_path / "r"
    pyrogen.train(config("train.epochs=1"), data=data(), run_dir=run_dir, quiet=True,
                  model=Mixture(), guide=Encoder())  # fmt: skip
    for argv in (
        ["evaluate", str(run_dir)],
        ["sample", str(run_dir), "-n", "4", "--out", str(tmp_path / "s.png")],
        ["train", "--resume", str(run_dir), "train.epochs=3"],
    ):
        assert main(argv) == 2, argv
        err = capsys.readouterr().err.strip()
        assert "\n" not in err and "Pyro program given from Python" in err, err
        assert "test_programs.Mixture" in err and "model=..., guide=..." in err
    assert not (tmp_path / "s.png").exists()


# ----------------------------------------------------------------------------- labels
class LabelledMixture(nn.Module):
    """p(y) p(x | y) with y ~ Cat(softmax(logits)) observed when given, else summed out; every
    class starts with the same mean, so without labels the program is symmetric in y and
    its p(y) gets no gradient at all."""

    def __init__(self) -> None:
        super().__init__()
        self.logits = nn.Parameter(torch.zeros(K))
        self.means = nn.Parameter(torch.zeros(K, D))

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None) -> None:
        with pyro.plate("data", x.shape[0]):
            y = pyro.sample(
                "y", dist.Categorical(logits=self.logits), obs=y, infer={"enumerate": "parallel"}
            )
            pyro.sample("x", dist.Normal(self.means[y], 1.0).to_event(1), obs=x)


def test_a_program_gets_the_labels_the_data_have(tmp_path: Path) -> None:
    """forward(x, y): with train_labels in the data the program sees y (here all 2, so p(y)
    learns it); without them it gets x alone, y is summed out and p(y) stays uniform."""
    x = data()
    labelled = {"train": x, "train_labels": torch.full((x.shape[0],), 2, dtype=torch.int64)}
    cfg = config("optim.lr=0.05")
    torch.manual_seed(0)
    run = pyrogen.train(cfg, tmp_path / "y", data=labelled, model=LabelledMixture(), quiet=True)
    assert torch.softmax(run.model.program.program.logits.detach(), 0)[2] > 0.5  # from 1/3
    torch.manual_seed(0)
    run = pyrogen.train(cfg, tmp_path / "no_y", data=x, model=LabelledMixture(), quiet=True)
    p_y = torch.softmax(run.model.program.program.logits.detach(), 0)
    assert torch.allclose(p_y, torch.full((K,), 1 / K), atol=1e-5)


def test_a_program_that_fails_on_the_data_is_one_line(tmp_path: Path) -> None:
    """A guide built for other data (here: 5 inputs, the data have 4) fails inside the user's
    code: the error is one line naming the shapes, and nothing is written."""

    class WrongEncoder(Encoder):
        def __init__(self) -> None:
            super().__init__()
            self.net = nn.Linear(D + 1, 2 * Z)

    with pytest.raises(ProgramError) as err:
        pyrogen.train(config(), tmp_path / "r", data=data(), model=Mixture(), guide=WrongEncoder())
    message = str(err.value)
    assert "\n" not in message and "(x of shape (8, 4))" in message and "RuntimeError" in message
    assert not (tmp_path / "r").exists()

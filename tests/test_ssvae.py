"""The semi-supervised VAE M2 (model.family=ssvae): the enumerated ELBO, labelled rows,
the accuracy metric, the balanced labelled subset, training, exact resume and the class grid."""

from __future__ import annotations

import os
from pathlib import Path

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro import poutine
from pyro.infer import TraceEnum_ELBO
from torch import nn

import pyrogen
from conftest import assert_same, flat, state_of
from pyrogen.config import ConfigError, EvaluationConfig
from pyrogen.data.errors import DataError
from pyrogen.data.semisupervised import balanced_subset
from pyrogen.evaluation.figures import class_grid_figure
from pyrogen.inference.semisupervised import SemiSupervisedLearner
from pyrogen.models.ssvae import SSVAE
from pyrogen.training.checkpoint import load_checkpoint

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("PYROGEN_SHARED_DATA") or ROOT.parent / "shared" / "data")
needs_mnist = pytest.mark.skipif(
    not (SHARED / "mnist" / "train-images-idx3-ubyte.gz").is_file()
    or not (SHARED / "binarized_mnist" / "binarized_mnist_train.amat.gz").is_file(),
    reason=f"no shared MNIST files in {SHARED}",
)
D, K, Z = 6, 3, 2


def tiny_ssvae(alpha: float = 0.0, weight: float = 1.0, dtype=torch.float64) -> SSVAE:
    torch.manual_seed(0)
    m = SSVAE(
        nn.Linear(D, K), nn.Linear(D + K, 2 * Z), nn.Linear(Z + K, D), Z, K, (D,), alpha, weight
    )
    return m.to(dtype)


def test_enumerated_elbo_equals_the_sum_over_classes():
    """TraceEnum_ELBO's loss of unlabelled rows is −Σ_rows Σ_y q(y|x) [log p(x|y,z_y) + log p(y)
    + log p(z_y) − log q(z_y|x,y) − log q(y|x)], z_y the same draws (float64)."""
    m = tiny_ssvae()
    x = torch.bernoulli(torch.rand(4, D, generator=torch.Generator().manual_seed(1))).double()
    pyro.set_rng_seed(5)
    loss = TraceEnum_ELBO(max_plate_nesting=1).loss(m.model, m.guide, x)
    torch.manual_seed(5)
    eps = torch.randn(K, 4, Z, dtype=torch.float64)  # the guide's draws of z, one per class
    with torch.no_grad():
        log_qy = m.guide.class_logits(x).log_softmax(-1)
        total = torch.zeros(4, dtype=torch.float64)
        for k in range(K):
            y = torch.nn.functional.one_hot(torch.full((4,), k), K).double()
            q_z = m.guide.posterior_z(x, y)
            z = q_z.base_dist.loc + q_z.base_dist.scale * eps[k]
            p_x = dist.Bernoulli(logits=m.decoder(torch.cat([z, y], -1))).to_event(1)
            p_z = dist.Normal(torch.zeros(Z, dtype=torch.float64), 1.0).to_event(1)
            log_py = torch.log(torch.tensor(1.0 / K, dtype=torch.float64))
            term = p_x.log_prob(x) + log_py + p_z.log_prob(z)
            term = term - q_z.log_prob(z) - log_qy[:, k]
            total += log_qy[:, k].exp() * term
    assert loss == pytest.approx(-float(total.sum()), rel=1e-12)


def test_labelled_rows_are_observed_and_carry_the_auxiliary_term():
    m = tiny_ssvae(alpha=2.5, weight=0.5)
    x = torch.bernoulli(torch.full((5, D), 0.5, dtype=torch.float64))
    y = torch.tensor([-1, 2, -1, 0, -1])
    guide = poutine.trace(m.guide).get_trace(x, y)
    model = poutine.trace(poutine.replay(m.model, trace=guide)).get_trace(x, y)
    # the guide samples y of the 3 unlabelled rows only, enumerated; the labelled y is observed
    assert guide.nodes["y_u"]["infer"]["enumerate"] == "parallel"
    assert guide.nodes["y_u"]["value"].shape == (3, K)
    assert "y_l" not in guide.nodes and model.nodes["y_l"]["is_observed"]
    assert model.nodes["y_l"]["value"].argmax(-1).tolist() == [2, 0]
    # the factor is α log q(y|x) on the labelled rows, the plate scaled by labelled_weight
    aux = model.nodes["y_aux"]
    logq = m.guide.class_logits(x[[1, 3]]).log_softmax(-1)[[0, 1], [2, 0]]
    assert torch.allclose(aux["fn"].log_prob(aux["value"]), 2.5 * logq)
    assert aux["scale"] == 0.5 and model.nodes["x_l"]["scale"] == 0.5
    assert model.nodes["x_u"]["scale"] == 1.0


class FixedClassifier(nn.Module):
    """Predicts class (column 0 > 0.5) + 2 * (column 1 > 0.5)."""

    def forward(self, x):
        pred = (x[:, 0] > 0.5).long() + 2 * (x[:, 1] > 0.5).long()
        return torch.nn.functional.one_hot(pred, 4).float() * 10


def test_accuracy_is_the_share_of_labelled_rows_classified_right():
    model = SSVAE(FixedClassifier(), nn.Linear(D + 4, 2 * Z), nn.Linear(Z + 4, D), Z, 4, (D,))
    learner = SemiSupervisedLearner(model)
    x = torch.zeros(6, D)
    x[1, 0] = x[2, 1] = x[3, 0] = x[3, 1] = 1.0  # predictions 0, 1, 2, 3, 0, 0
    y = torch.tensor([0, 1, 3, 3, 2, -1])  # right: rows 0, 1, 3; wrong: 2, 4; row 5 unlabelled
    out = learner.evaluate(x, y)
    assert out["accuracy"] == pytest.approx(3 / 5)
    assert "accuracy" not in learner.evaluate(x, None) and "elbo" in out


def test_labelled_subset_is_balanced_and_chosen_by_the_seed():
    labels = torch.arange(10).repeat_interleave(30)[torch.randperm(300)]
    a = balanced_subset(labels, 40, 10, seed=0)
    assert torch.bincount(labels[a], minlength=10).tolist() == [4] * 10
    assert torch.equal(a, balanced_subset(labels, 40, 10, seed=0))
    assert not torch.equal(a, balanced_subset(labels, 40, 10, seed=1))
    with pytest.raises(DataError, match="multiple of 10"):
        balanced_subset(labels, 45, 10, seed=0)
    with pytest.raises(DataError, match="class"):
        balanced_subset(labels, 400, 10, seed=0)


def test_labelled_batches_cycle_through_the_labelled_set():
    learner = SemiSupervisedLearner(tiny_ssvae(dtype=torch.float32), labelled_batch_size=4)
    learner.set_labelled(torch.zeros(10, D), torch.arange(10) % K)
    first_cycle = torch.cat([learner.labelled_indices(k) for k in range(2)])
    assert len(first_cycle.unique()) == 8  # 2 batches of 4 per cycle, no row twice
    assert not torch.equal(learner.labelled_indices(0), learner.labelled_indices(2))
    again = SemiSupervisedLearner(tiny_ssvae(dtype=torch.float32), labelled_batch_size=4)
    again.set_labelled(torch.zeros(10, D), torch.arange(10) % K)
    assert torch.equal(again.labelled_indices(7), learner.labelled_indices(7))


def test_class_grid_has_one_row_per_style_and_one_column_per_class():
    m = tiny_ssvae(dtype=torch.float32)
    torch.manual_seed(0)
    grid = m.class_grid(4)
    assert grid.shape == (4 * K, D) and ((grid >= 0) & (grid <= 1)).all()
    z = torch.randn(4, 1, Z, generator=torch.Generator().manual_seed(0))
    # row-major: images 0..K-1 share the first style, column k is class k
    expected = torch.sigmoid(m.decoder(torch.cat([z[0].expand(K, Z), torch.eye(K)], -1)))
    torch.manual_seed(0)
    assert torch.allclose(m.class_grid(4)[:K], expected)


def tiny_cfg(*extra: str) -> pyrogen.Config:
    return pyrogen.load_config(
        ROOT / "configs" / "ssvae_mnist.yaml",
        [
            f"data.root={SHARED}",
            "data.labelled=20",
            "data.num_train=120",
            "data.num_valid=60",
            "data.num_test=50",
            "model.hidden_sizes=[16]",
            "model.latent_dim=2",
            "train.batch_size=25",
            "train.epochs=2",
            "train.log_every=2",
            "train.device=cpu",
            "output.num_samples=20",
            *extra,
        ],
    )


def test_refusals_name_the_key():
    with pytest.raises(ConfigError, match="elbo.name must be trace_enum"):
        tiny_cfg("elbo.name=trace")
    with pytest.raises(ConfigError, match="elbo.beta=1"):
        tiny_cfg("elbo.beta=2")
    with pytest.raises(DataError, match="needs data.labelled"):
        pyrogen.build(tiny_cfg("data.labelled=null"), "cpu")
    cfg = tiny_cfg()
    assert pyrogen.families.family_of(cfg).monitor_of(cfg) == ("accuracy", "max")


@needs_mnist
def test_training_moves_parameters_reports_accuracy_and_draws_the_grid(tmp_path):
    cfg = tiny_cfg()
    dataset, learner = pyrogen.build(cfg, "cpu")
    assert (dataset.train_labels >= 0).sum() == 20 and dataset.train.shape[0] == 120
    assert torch.bincount(dataset.train_labels[dataset.train_labels >= 0]).tolist() == [2] * 10
    assert dataset.is_binary()
    before = {k: v.clone() for k, v in learner.module.state_dict().items()}
    run = pyrogen.train(cfg, run_dir=tmp_path / "run", quiet=True)
    after = run.learner.module.state_dict()
    assert all(not torch.equal(before[k], after[k]) for k in before)
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    valid = [line for line in lines if '"valid"' in line]
    assert len(valid) == 2 and all('"accuracy"' in line for line in valid)
    assert (tmp_path / "run" / "samples.png").is_file()
    fig = class_grid_figure(run.model, run.dataset, 3)
    assert fig.axes[0].images[0].get_array().shape[:2] == (3 * 29 + 1, 10 * 29 + 1)


@needs_mnist
def test_resume_mid_epoch_equals_the_uninterrupted_run(tmp_path):
    whole = pyrogen.train(tiny_cfg(), run_dir=tmp_path / "whole", quiet=True)
    pyrogen.train(tiny_cfg("train.max_steps=3"), run_dir=tmp_path / "part", quiet=True)
    resumed = pyrogen.train(tiny_cfg(), run_dir=tmp_path / "part", resume=True, quiet=True)
    last = load_checkpoint(tmp_path / "whole" / "checkpoint.pt")
    again = load_checkpoint(tmp_path / "part" / "checkpoint.pt")
    assert_same(flat(last["learner"]), flat(again["learner"]), "learner")
    assert_same(state_of(whole), state_of(resumed))


@needs_mnist
def test_evaluate_reports_the_bound_is_log_likelihood_and_test_accuracy(tmp_path):
    """pyrogen.evaluate on an M2 run: the ELBO with y summed out, IS log p(x) with (y, z)
    drawn from q(y|x) q(z|x,y) (>= the ELBO within error), and the classifier's test accuracy
    equal to counting its hits by hand."""
    run = pyrogen.train(tiny_cfg(), run_dir=tmp_path / "run", quiet=True)
    report = pyrogen.evaluate(run, EvaluationConfig(split="test", is_samples=200))
    est = report["estimates"]
    assert report["family"] == "ssvae"
    x, y = run.dataset.test, run.dataset.test_labels
    assert est["accuracy"]["mean"] == (run.model.classify(x) == y).double().mean().item()
    assert est["accuracy"]["n"] == 50 and est["accuracy"]["unit"] == "fraction"
    logp, elbo = est["importance_sampled"], est["elbo"]
    assert logp["mean"] > elbo["mean"] - 3 * elbo["stderr"]

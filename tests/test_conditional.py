"""Class-conditional generation (issue 21): the conditional GAN (G(z, y) and a projection
discriminator d(x, y)) and the conditional flow draw different samples for different labels,
as their training data say; labels are refused by a model that is not class-conditional."""

from __future__ import annotations

import math
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from conftest import tiny
from pyrogen import evaluate, load_config, train
from pyrogen.cli import main
from pyrogen.config import ConfigError, EvaluationConfig
from pyrogen.evaluation.conditional import conditional_accuracy
from pyrogen.inference.adversarial import AdversarialLearner
from pyrogen.models.gan import GAN
from pyrogen.nets import ProjectionDiscriminator

FAST = ["train.device=cpu", "train.seed=0", "output.figures=false", "output.tensorboard=false"]


def two_blobs(n: int = 512, seed: int = 0) -> dict[str, torch.Tensor]:
    """Class 0 around (−2, 0), class 1 around (+2, 0), σ = 0.3: a label-conditional model must
    put each class's samples on its own side."""
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % 2
    x = 0.3 * torch.randn(n, 2, generator=g)
    x[:, 0] += 4.0 * y - 2.0
    return {"train": x, "train_labels": y}


CONDITIONAL = {
    "gan": tiny("gan", width=64, latent=4)
    + ["model.conditional=true", "model.num_classes=2", "optim.lr=2e-3", "train.epochs=40"],
    "flow": tiny("flow", "model.flow=maf", "model.num_layers=2", width=32)
    + ["model.conditional=true", "model.num_classes=2", "train.epochs=15"],
}


@pytest.mark.parametrize("family", CONDITIONAL)
def test_samples_for_a_label_lie_where_that_labels_data_lie(tmp_path: Path, family: str) -> None:
    cfg = load_config(None, [*FAST, *CONDITIONAL[family], "train.batch_size=64"])
    run = train(cfg, tmp_path / "run", data=two_blobs(), quiet=True)
    torch.manual_seed(1)
    left, right = run.sample(400, 0), run.sample(400, 1)
    assert left[:, 0].mean() < -1.0 < 1.0 < right[:, 0].mean(), (left.mean(0), right.mean(0))
    both = run.sample(400, torch.arange(400) % 2)  # one label per example
    assert both[0::2, 0].mean() < 0 < both[1::2, 0].mean()
    est = evaluate(run, EvaluationConfig(parzen_samples=100, quiet=True))["estimates"]
    assert est["classifier_accuracy"]["mean"] > 0.99  # the blobs are separable: the ceiling
    assert est["conditional_accuracy"]["mean"] > 0.75  # chance: 0.5
    if family == "flow":  # log p(x | y), exact
        assert math.isfinite(est["exact"]["mean"])


def test_conditional_accuracy_is_the_share_of_samples_the_judge_labels_as_drawn() -> None:
    """Samples drawn for the wrong class score 0 where the right class scores 1."""
    data = two_blobs(400)
    x, y = data["train"], data["train_labels"]
    dataset = SimpleNamespace(train=x, num_classes=2, labels=lambda split: y)

    def run_drawing(flip: bool) -> SimpleNamespace:
        def sample(n: int, labels: torch.Tensor) -> torch.Tensor:
            side = (labels ^ int(flip)).float() * 4.0 - 2.0
            return torch.stack([side + 0.3 * torch.randn(n), 0.3 * torch.randn(n)], -1)

        return SimpleNamespace(dataset=dataset, sample=sample)

    right = conditional_accuracy(run_drawing(False), x, y, per_class=100)
    wrong = conditional_accuracy(run_drawing(True), x, y, per_class=100)
    assert right["conditional_accuracy"]["mean"] > 0.98
    assert wrong["conditional_accuracy"]["mean"] < 0.02
    assert right["conditional_accuracy"]["n"] == 200
    assert right["classifier_accuracy"] == wrong["classifier_accuracy"]


def test_the_projection_discriminator_is_psi_of_phi_plus_the_class_embedding() -> None:
    torch.manual_seed(0)
    phi, psi = nn.Sequential(nn.Linear(3, 5), nn.Tanh()), nn.Linear(5, 1)
    d = ProjectionDiscriminator(phi, psi, num_classes=4)
    x, y = torch.randn(6, 3), torch.tensor([0, 1, 2, 3, 0, 1])
    expected = psi(phi(x)).squeeze(-1) + (d.embed.weight[y] * phi(x)).sum(-1)
    torch.testing.assert_close(d(x, y), expected)
    assert not torch.allclose(d(x, y), d(x, (y + 1) % 4))


def test_a_conditional_gan_draws_its_fakes_for_the_batch_labels() -> None:
    """D sees data and samples of the same labels; G's input is [z, e_y]."""
    torch.manual_seed(0)
    g = nn.Sequential(nn.Linear(2 + 3, 2))
    d = ProjectionDiscriminator(nn.Linear(2, 4), nn.Linear(4, 1), num_classes=3)
    gan = GAN(g, d, latent_dim=2, event_shape=(2,), num_classes=3)
    z = torch.randn(5, 2)
    y = torch.tensor([0, 1, 2, 1, 0])
    torch.testing.assert_close(gan.generate(z, y=y), g(torch.cat([z, torch.eye(3)[y]], -1)))
    learner = AdversarialLearner(gan, lr=1e-3)
    out = learner.step(torch.randn(5, 2), y)
    assert torch.isfinite(torch.tensor(out["loss"]))
    with pytest.raises(ValueError, match="class-conditional GAN trains on labelled data"):
        learner.step(torch.randn(5, 2))
    with pytest.raises(ValueError, match=r"labels must lie in 0\.\.2, got \[3\]"):
        gan.sample(2, torch.tensor([0, 3]))
    with pytest.raises(ValueError, match="class labels must be integers"):
        gan.sample(2, torch.tensor([0.0, 1.5]))  # was silently truncated to 1
    torch.testing.assert_close(gan.generate(z[:3], y=2), gan.generate(z[:3], y=[2, 2, 2]))


def test_labels_are_refused_by_a_model_that_is_not_class_conditional(tmp_path: Path) -> None:
    gan = GAN(nn.Linear(2, 2), nn.Linear(2, 1), latent_dim=2, event_shape=(2,))
    with pytest.raises(ValueError, match="not class-conditional"):
        gan.sample(3, torch.tensor([0, 1, 0]))
    with pytest.raises(ValueError, match="not class-conditional"):
        AdversarialLearner(gan).step(torch.randn(4, 2), torch.tensor([0, 1, 0, 1]))
    cfg = load_config(None, [*FAST, *tiny("gan"), "train.max_steps=2", "data.name=moons"])
    run = train(cfg, tmp_path / "run", quiet=True)
    with pytest.raises(ValueError, match="not conditional: it takes no labels or context"):
        run.sample(4, 1)


def test_a_conditional_model_needs_labelled_data() -> None:
    cfg = load_config(None, [*FAST, *tiny("gan"), "model.conditional=true", "data.name=moons"])
    with pytest.raises(ConfigError, match="model.conditional=true needs class labels"):
        train(cfg, None, quiet=True)


def test_sample_label_from_the_command_line(tmp_path: Path, capsys) -> None:
    config = tmp_path / "gan_digits.yaml"
    config.write_text("model:\n  family: gan\ndata:\n  name: digits\n")
    run = tmp_path / "cgan"
    argv = ["train", str(config), "--run-dir", str(run), "--quiet", *FAST, *tiny("gan")]
    assert main([*argv, "model.conditional=true", "train.max_steps=3"]) == 0
    three = tmp_path / "three.png"
    assert main(["sample", str(run), "-n", "8", "--label", "3", "--out", str(three)]) == 0
    assert three.stat().st_size > 0
    capsys.readouterr()
    bad = tmp_path / "bad.png"
    assert main(["sample", str(run), "-n", "8", "--label", "10", "--out", str(bad)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "labels must lie in 0..9" in err and not bad.exists()
    plain = tmp_path / "gan"
    argv[3] = str(plain)
    assert main([*argv, "train.max_steps=2"]) == 0
    capsys.readouterr()
    assert main(["sample", str(plain), "--label", "1", "--out", str(bad)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "not conditional" in err and not bad.exists()

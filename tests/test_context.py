"""Conditioning on a continuous context c (issue 21): columns of a user's CSV/npz named by
``data.context``, or ``context=`` from Python; flows and GANs learn p(x | c); a conditional
flow's p(x | c) is a density in x for every c; malformed contexts get one line each."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from conftest import tiny
from pyrogen import evaluate, load, load_config, train
from pyrogen.cli import main
from pyrogen.config import ConfigError, EvaluationConfig, read_config
from pyrogen.data import DataError, load_dataset
from pyrogen.data.user_arrays import read_array_file
from pyrogen.models.context import check_context, context_vector
from pyrogen.models.flow import make_flow
from pyrogen.models.gan import GAN

FAST = ["train.device=cpu", "train.seed=0", "output.figures=false", "output.tensorboard=false"]


def mirrored(n: int = 800, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """c ~ U(8, 12); x = (c, −c) + 0.1 ε: p(x | c) is a small blob at (c, −c). (c far from 0:
    the model takes c standardised, the user gives it in the data's units.)"""
    rng = np.random.default_rng(seed)
    c = rng.uniform(8, 12, size=(n, 1)).astype(np.float32)
    x = np.concatenate([c, -c], 1) + 0.1 * rng.normal(size=(n, 2)).astype(np.float32)
    return x, c


def write_csv(path: Path, x: np.ndarray, c: np.ndarray) -> Path:
    rows = ["temperature,a,b"] + [
        f"{ci[0]:.6f},{xi[0]:.6f},{xi[1]:.6f}" for xi, ci in zip(x, c, strict=True)
    ]
    path.write_text("\n".join(rows) + "\n")
    return path


def flow_config(tmp_path: Path) -> str:
    path = tmp_path / "flow.yaml"
    path.write_text("model:\n  family: flow\n  conditional: true\n")
    return str(path)


CONDITIONAL = {
    "vae": tiny("vae", "model.likelihood=gaussian", width=64, latent=2) + ["train.epochs=40"],
    "flow": tiny("flow", "model.flow=maf", "model.num_layers=2", width=32) + ["train.epochs=30"],
    "gan": tiny("gan", width=64, latent=2)
    + ["model.output=identity", "optim.lr=2e-3", "train.epochs=40"],
}


# ------------------------------------------------------------------ the data layer
def test_csv_columns_named_by_data_context_become_c_and_leave_x(tmp_path: Path) -> None:
    x, c = mirrored(100)
    path = write_csv(tmp_path / "t.csv", x, c)
    arrays = read_array_file(path, context=["temperature"])
    assert arrays["data"].shape == (100, 2) and arrays["context"].shape == (100, 1)
    np.testing.assert_allclose(arrays["context"][:, 0], c[:, 0], atol=1e-6)
    cfg = load_config(None, ["data.name=array", f"data.path={path}", "data.context=[temperature]"])
    ds = load_dataset(cfg.data, seed=0)
    assert ds.context_dim == 1 and ds.num_classes is None
    assert ds.labels("train").dtype == torch.float32 and ds.labels("train").shape[1] == 1
    n = ds.train.shape[0] + ds.valid.shape[0] + ds.test.shape[0]
    assert n == 100 and ds.train.shape[1] == 2
    # each split's context stays with its rows: x[:, 0] follows c (standardised alike)
    corr = np.corrcoef(ds.train[:, 0].numpy(), ds.labels("train")[:, 0].numpy())[0, 1]
    assert corr > 0.99


def test_npz_arrays_named_by_data_context_per_split(tmp_path: Path) -> None:
    x, c = mirrored(100)
    path = tmp_path / "t.npz"
    np.savez(path, train=x[:80], test=x[80:], train_temp=c[:80], test_temp=c[80:, 0])
    cfg = load_config(None, ["data.name=array", f"data.path={path}", "data.context=[temp]"])
    ds = load_dataset(cfg.data, seed=0)
    assert ds.context_dim == 1
    stored = ds.labels("test")[:, 0] * ds.context_scale + ds.context_shift  # standardised
    torch.testing.assert_close(stored, torch.from_numpy(c[80:, 0]))
    train_c = ds.labels("train")
    assert abs(float(train_c.mean())) < 1e-5 and abs(float(train_c.std()) - 1) < 1e-5


MALFORMED = {
    "unknown column": (["data.context=[pressure]"], "names column 'pressure'"),
    "NaN": (["data.context=[temperature]"], "NaN or infinite context values"),
    "takes every column": (["data.context=[temperature,a,b]"], "none is left for x"),
}


@pytest.mark.parametrize("case", MALFORMED)
def test_a_malformed_context_file_gets_one_line_and_no_run(
    tmp_path: Path, capsys, case: str
) -> None:
    x, c = mirrored(50)
    if case == "NaN":
        c[7, 0] = np.nan
    path = write_csv(tmp_path / "t.csv", x, c)
    overrides, message = MALFORMED[case]
    run = tmp_path / "run"
    argv = ["train", flow_config(tmp_path), "--run-dir", str(run), *FAST, *tiny("flow")]
    argv += ["data.name=array", f"data.path={path}", *overrides]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err and str(path) in err, err
    assert "Traceback" not in err and not run.exists()


def test_context_from_python_of_the_wrong_length_or_with_nan_is_refused() -> None:
    x, c = mirrored(50)
    cfg = load_config(None, [*FAST, *tiny("flow"), "model.conditional=true"])
    with pytest.raises(DataError, match=r"context of shape \(49, 1\); expected \(50, C\)"):
        train(cfg, None, data=x, context=c[:49], quiet=True)
    c[3, 0] = np.inf
    with pytest.raises(DataError, match="1 NaN or infinite context values .first: row 3"):
        train(cfg, None, data=x, context=c, quiet=True)
    with pytest.raises(DataError, match="both class labels and a context"):
        labelled = {"data": x, "labels": np.zeros(50, int)}
        train(cfg, None, data=labelled, context=mirrored(50)[1], quiet=True)


def test_data_context_is_refused_where_it_names_no_file_columns(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="data.context names columns of a data.name=array"):
        load_config(None, [*FAST, *tiny("flow"), "data.context=[t]", "data.name=moons"])
    cfg = read_config(None, [*FAST, *tiny("flow"), "data.context=[t]", "data.name=array"])
    with pytest.raises(ConfigError, match="pass the context itself: pyrogen.train"):
        train(cfg, None, data=mirrored(20)[0], quiet=True)
    path = tmp_path / "x.npy"
    np.save(path, mirrored(20)[0])
    with pytest.raises(DataError, match="the file has no column names"):
        read_array_file(path, context=["t"])


# ------------------------------------------------------------------ the models
@pytest.mark.parametrize(
    "name, conditional_base",
    [("maf", False), ("realnvp", False), ("iaf", False), ("nsf_autoregressive", False),
     ("maf", True)],
)  # fmt: skip
def test_a_conditional_flow_is_a_density_in_x_for_every_context(
    name: str, conditional_base: bool, float64
) -> None:
    """∫ p(x | c) dx ≈ 1 on a 2-D grid, for several c (a random, untrained flow: the density is
    exact whatever the weights), with the base N(0, I) or p(z | c)."""
    torch.manual_seed(0)
    flow = make_flow(
        name, 2, context_dim=3, conditional_base=conditional_base, num_layers=2, hidden_sizes=[16]
    ).double()
    for p in flow.parameters():  # away from the identity start, so that c matters
        p.data.add_(0.1 * torch.randn_like(p))
    if conditional_base:  # a base that moves with c: the layers alone would be a weaker test
        for layer in flow.layers:
            for p in layer.parameters():
                p.data.zero_()
    h = 0.05
    g = torch.arange(-8, 8, h, dtype=torch.float64) + h / 2
    grid = torch.cartesian_prod(g, g)
    masses = []
    for c in ([0.0, 0.0, 0.0], [1.5, -1.0, 0.5], [-2.0, 2.0, 1.0]):
        ctx = torch.tensor(c, dtype=torch.float64).expand(grid.shape[0], 3)
        with torch.no_grad():
            masses.append(float(flow.log_prob(grid, ctx).exp().sum() * h * h))
    assert all(abs(m - 1) < 0.02 for m in masses), masses
    with torch.no_grad():
        near = torch.randn(5, 2, dtype=torch.float64)
        a = flow.log_prob(near, torch.zeros(5, 3, dtype=torch.float64))
        b = flow.log_prob(near, torch.ones(5, 3, dtype=torch.float64))
    assert not torch.allclose(a, b)  # the context changes the density


@pytest.mark.parametrize("family", CONDITIONAL)
def test_samples_follow_the_context_they_are_drawn_for(tmp_path: Path, family: str) -> None:
    x, c = mirrored()
    cfg = load_config(None, [*FAST, *CONDITIONAL[family], "model.conditional=true"])
    run = train(cfg, tmp_path / "run", data=x, context=c, quiet=True)
    assert run.model.context_dim == 1 and run.dataset.context_dim == 1
    torch.manual_seed(1)
    for value in (8.5, 11.5):
        s = run.sample(300, context=[value])
        assert abs(float(s[:, 0].mean()) - value) < 0.5, (value, s.mean(0))
        assert abs(float(s[:, 1].mean()) + value) < 0.5, (value, s.mean(0))
    per_row = run.sample(4, context=np.array([[8.5], [11.5], [8.5], [11.5]]))
    assert per_row.shape == (4, 2)
    marginal = run.sample(500)  # contexts of the test split in turn: x ~ ∫ p(x | c) p̂(c) dc
    assert float(marginal[:, 0].std()) > 0.5 and abs(float(marginal[:, 0].mean()) - 10) < 0.5
    again = load(tmp_path / "run")  # data.npz keeps the context; the model is rebuilt with it
    assert again.model.context_dim == 1
    if family != "gan":  # log p(x | c) on the test split's contexts: exact, or IS (VAE)
        ev = EvaluationConfig(parzen_samples=100, is_samples=20, quiet=True)
        est = evaluate(run, ev)["estimates"]
        ll = est["exact" if family == "flow" else "importance_sampled"]["mean"]
        assert math.isfinite(ll) and ll > 0, est  # a blob of std 0.1 given c: a high density


def test_a_user_context_is_checked_before_any_draw(tmp_path: Path) -> None:
    x, c = mirrored(200)
    cfg = load_config(None, [*FAST, *tiny("flow"), "model.conditional=true", "train.max_steps=2"])
    run = train(cfg, tmp_path / "run", data=x, context=c, quiet=True)
    with pytest.raises(ValueError, match=r"shape \(2,\); expected \(1,\) for one context"):
        run.sample(3, context=[1.0, 2.0])
    with pytest.raises(ValueError, match="has 2 rows; expected 1 or 3"):
        run.sample(3, context=[[1.0], [2.0]])
    with pytest.raises(ValueError, match="NaN or infinite"):
        run.sample(3, context=[float("nan")])
    with pytest.raises(ValueError, match="class labels y or a context, not both"):
        run.sample(3, 1, context=[1.0])


def test_context_vector_is_one_hot_for_classes_and_the_vector_itself_otherwise() -> None:
    assert context_vector(torch.tensor([1]), num_classes=3).tolist() == [[0.0, 1.0, 0.0]]
    with pytest.raises(ValueError, match=r"3 values per example"):
        context_vector(torch.zeros(2, 2), context_dim=3)
    assert check_context(2, 4, num_classes=3).tolist() == [2, 2, 2, 2]
    with pytest.raises(ValueError, match=r"labels must lie in 0\.\.2, got \[5\]"):
        check_context([0, 5], 2, num_classes=3)


def test_every_family_draws_classes_in_turn_and_asks_for_a_continuous_context() -> None:
    """No y: a class-conditional model draws 0..K−1 round-robin; one on a continuous context
    refuses, with the one message of check_context (GAN, flow and VAE share it)."""
    assert check_context(None, 5, num_classes=3).tolist() == [0, 1, 2, 0, 1]
    torch.manual_seed(0)
    gan = GAN(
        nn.Linear(2 + 3, 2), nn.Linear(2 + 3, 1), latent_dim=2, event_shape=(2,), context_dim=3
    )
    flow = make_flow("realnvp", 2, context_dim=3, num_layers=2, hidden_sizes=[8])
    for model in (gan, flow):
        with pytest.raises(ValueError, match=r"conditioned on a context of 3 numbers: give one"):
            model.sample(4)
    assert gan.sample(4, y=[0.5, -1.0, 2.0]).shape == (4, 2)  # one context for all 4 draws
    gan_k = GAN(
        nn.Linear(2 + 3, 2), nn.Linear(2 + 3, 1), latent_dim=2, event_shape=(2,), num_classes=3
    )
    z = torch.randn(5, 2)
    torch.testing.assert_close(gan_k.generate(z), gan_k.generate(z, y=[0, 1, 2, 0, 1]))


def test_sample_context_from_the_command_line(tmp_path: Path, capsys) -> None:
    x, c = mirrored(300)
    path = write_csv(tmp_path / "t.csv", x, c)
    run = tmp_path / "run"
    argv = ["train", flow_config(tmp_path), "--run-dir", str(run), "--quiet", *FAST]
    argv += [*tiny("flow"), "train.max_steps=3", "data.name=array"]
    assert main([*argv, f"data.path={path}", "data.context=[temperature]"]) == 0
    ctx = tmp_path / "c.npy"
    np.save(ctx, np.array([0.5], np.float32))
    out = tmp_path / "s.pt"
    assert main(["sample", str(run), "-n", "6", "--context", str(ctx), "--out", str(out)]) == 0
    assert torch.load(out, weights_only=True).shape == (6, 2)
    capsys.readouterr()
    np.save(ctx, np.zeros((2, 3), np.float32))
    bad = tmp_path / "bad.pt"
    assert main(["sample", str(run), "-n", "6", "--context", str(ctx), "--out", str(bad)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "expected (1,) for one context" in err, err
    assert not bad.exists()


def test_the_shipped_table_config_learns_p_x_given_c(tmp_path: Path, monkeypatch) -> None:
    """configs/cflow_diabetes.yaml from the repository root: x (7 columns) given c (age, sex,
    bmi, bp); a patient's context from a one-row CSV, in the table's units."""
    monkeypatch.chdir(Path(__file__).resolve().parents[1])
    run = tmp_path / "run"
    argv = ["train", "configs/cflow_diabetes.yaml", "--run-dir", str(run), "--quiet", *FAST]
    assert main([*argv, "train.max_steps=20", "train.eval_every=10"]) == 0
    trained = load(run)
    assert trained.dataset.context_dim == 4 and trained.dataset.event_shape == (7,)
    patient = tmp_path / "patient.csv"
    patient.write_text("age,sex,bmi,bp\n50,1,30,100\n")
    out = tmp_path / "draws.pt"
    argv = ["sample", str(run), "-n", "50", "--context", str(patient), "--out", str(out)]
    assert main(argv) == 0
    draws = torch.load(out, weights_only=True)
    assert draws.shape == (50, 7) and bool(torch.isfinite(draws).all())
    assert 50 < float(draws[:, 0].mean()) < 400  # total cholesterol (mg/dl): the table's units


def test_a_conditional_base_learns_where_z_lies_for_each_context(tmp_path: Path) -> None:
    """model.conditional_base: p(z | c) = N(Wc + b, ...) carries the context alone when the
    layers are few; refused without model.conditional."""
    x, c = mirrored()
    over = [*FAST, *CONDITIONAL["flow"], "model.conditional=true", "model.conditional_base=true"]
    run = train(load_config(None, over), tmp_path / "run", data=x, context=c, quiet=True)
    assert float(run.model.base_module.net.weight.detach().abs().sum()) > 0  # it learned from c
    torch.manual_seed(0)
    s = run.sample(300, context=[11.5], temperature=0.5)
    assert abs(float(s[:, 0].mean()) - 11.5) < 0.5
    with pytest.raises(ConfigError, match="model.conditional_base=true .* model.conditional"):
        load_config(None, [*FAST, *tiny("flow"), "model.conditional_base=true"])


def test_a_context_given_for_some_splits_only_is_refused(tmp_path: Path) -> None:
    x, c = mirrored(100)
    path = tmp_path / "t.npz"
    np.savez(path, train=x[:80], test=x[80:], train_temp=c[:80])
    cfg = load_config(None, ["data.name=array", f"data.path={path}", "data.context=[temp]"])
    with pytest.raises(DataError, match="the context is missing for test; give it for all"):
        load_dataset(cfg.data, seed=0)

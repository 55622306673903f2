"""The command line as a user runs it, and `pyrogen compare` on a small budget."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from types import SimpleNamespace

import pytest

from pyrogen.cli import main
from pyrogen.config import ConfigError, EvaluationConfig
from pyrogen.evaluation.report import evaluate_run
from pyrogen.models.flow import make_flow
from pyrogen.workflows.compare import compare
from pyrogen.workflows.compare_config import load_compare_config

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
FAST = ["train.epochs=2", "train.max_steps=20", "train.device=cpu", "train.eval_every=0"]


def test_train_sample_evaluate_end_to_end(tmp_path, capsys):
    run = tmp_path / "run"
    rc = main(["train", str(CONFIGS / "vae_digits.yaml"), *FAST, "--run-dir", str(run), "--quiet"])
    assert rc == 0 and (run / "checkpoint.pt").exists() and (run / "samples.png").exists()
    assert main(["sample", str(run), "-n", "9", "--out", str(tmp_path / "s.png")]) == 0
    assert (tmp_path / "s.png").stat().st_size > 0
    capsys.readouterr()
    rc = main(
        [
            "evaluate",
            str(run),
            "--json",
            "--is-samples",
            "20",
            "--parzen-samples",
            "200",
            "--max-examples",
            "50",
            "--bound",
            "renyi:20",
        ]
    )
    assert rc == 0
    result = json.loads(capsys.readouterr().out)
    est = result["estimates"]
    assert set(est) == {"elbo", "importance_sampled", "renyi:20", "parzen"}
    assert est["elbo"]["mean"] <= est["importance_sampled"]["mean"]
    # the IWAE bound with K = 20 estimates the same quantity as IS with K = 20
    assert est["renyi:20"]["K"] == 20 and est["renyi:20"]["mean"] > est["elbo"]["mean"]
    assert est["renyi:20"]["mean"] == pytest.approx(est["importance_sampled"]["mean"], abs=0.5)
    # a bound that does not apply is a one-line user error
    assert main(["evaluate", str(run), "--bound", "renyi", "--parzen-samples", "10"]) == 2
    assert "needs elbo.num_particles > 1" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="apply to VAE runs, not to a flow"):
        flow_run = SimpleNamespace(model=make_flow("realnvp", 2))  # a run of a flow
        evaluate_run(flow_run, EvaluationConfig(bounds=["renyi:5"]))
    # resume continues the same run
    assert main(["train", "--resume", str(run), "train.max_steps=30", "--quiet"]) == 0


@pytest.mark.parametrize(
    "argv, message",
    [
        (["train", "missing.yaml"], "config file not found"),
        (
            ["train", str(CONFIGS / "vae_digits.yaml"), "train.epoch=3"],
            "did you mean 'train.epochs'",
        ),
        (
            ["train", str(CONFIGS / "vae_digits.yaml"), "guide.name=iaf", "elbo.name=mean_field"],
            "closed form",
        ),
        (["sample", "/nonexistent", "--out", "x.png"], "not a run folder"),
        (["evaluate", "/nonexistent"], "not a run folder"),
        (["compare", "missing.yaml"], "config file not found"),
    ],
)
def test_user_errors_are_one_line_with_exit_code_2(argv, message, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and err.count("\n") == 1


def test_bad_arguments_exit_2_in_one_line_and_help_explains(capsys):
    assert main(["sample"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("pyrogen sample: error: ") and err.count("\n") == 1
    assert "required: RUN_DIR" in err.replace("the following arguments are required", "required")
    assert main(["train", "--help"]) == 0
    out = capsys.readouterr().out
    assert "key=value" in out and "anywhere on the line" in out
    assert main(["evaluate", "--help"]) == 0
    out = capsys.readouterr().out  # every option with its default and allowed values
    assert "(default: 1000)" in out and "{train,valid,test}" in out
    assert main(["--version"]) == 0 and capsys.readouterr().out.startswith("pyrogen ")


def test_compare_config_errors_name_the_family():
    with pytest.raises(ConfigError, match="in section 'flow': .*'model.flow'"):
        load_compare_config(CONFIGS / "compare_toy.yaml", ["flow.model.flow=glowz"])
    with pytest.raises(ConfigError, match="unknown section 'vea'"):
        load_compare_config(CONFIGS / "compare_toy.yaml", ["vea.model.latent_dim=2"])


def test_compare_shares_the_data_space_except_the_flows_logit_transform():
    cc = load_compare_config(CONFIGS / "compare_digits.yaml")
    assert all(cfg.data.dequantize for cfg in cc.runs.values())  # one density space
    assert cc.runs["flow"].data.logit_lambda == 1e-6
    assert cc.runs["vae"].data.logit_lambda is None and cc.runs["gan"].data.logit_lambda is None
    with pytest.raises(ConfigError, match="'flow.data.dequantize' is shared by all families"):
        load_compare_config(CONFIGS / "compare_digits.yaml", ["flow.data.dequantize=false"])


def test_compare_on_the_toy_config(tmp_path):
    cc = load_compare_config(
        CONFIGS / "compare_toy.yaml",
        [
            "train.epochs=2",
            "train.device=cpu",
            "data.num_train=1000",
            "evaluation.parzen_samples=1000",
            "evaluation.quality_samples=500",
            "evaluation.is_samples=50",
            "evaluation.max_test=500",
        ],
    )
    rows = {r["family"]: r for r in compare(cc, tmp_path)}
    assert set(rows) == {"vae", "flow", "gan"}
    for row in rows.values():
        assert row["parameters"] > 0 and row["train_seconds"] > 0
        assert row["sample_seconds_per_1000"] > 0 and row["mmd2"] == row["mmd2"]
        assert row["parzen"]["stderr"] > 0 and row["frechet"] >= 0
    # each estimator only where it applies
    assert "exact" in rows["flow"] and "exact" not in rows["vae"] and "exact" not in rows["gan"]
    assert rows["vae"]["elbo"]["mean"] <= rows["vae"]["importance_sampled"]["mean"]
    assert "importance_sampled" not in rows["flow"] and "elbo" not in rows["gan"]
    # the exact likelihood and the Parzen estimate of the same flow measure the same thing
    assert abs(rows["flow"]["exact"]["mean"] - rows["flow"]["parzen"]["mean"]) < 0.5
    for name in ("compare.md", "compare.csv", "compare.json", "samples.png"):
        assert (tmp_path / name).stat().st_size > 0
    table = (tmp_path / "compare.md").read_text()
    assert table.count("\n|") == 4 and "score " in table  # 3 rows, and what columns score
    saved = json.loads((tmp_path / "compare.json").read_text())  # strict JSON
    assert saved["samples"] == "draws" and len(saved["rows"]) == 3
    # the sample metrics score draws x ~ p(x); asking for the VAE's decoder means changes its
    # row (means lie on the decoder's manifold, draws add the likelihood's noise), and only
    # its row
    runs = [f"{f}={tmp_path / f}" for f in ("vae", "flow", "gan")]
    means = load_compare_config(
        CONFIGS / "compare_toy.yaml",
        ["evaluation.samples=means", "evaluation.parzen_samples=1000",
         "evaluation.quality_samples=500", "evaluation.is_samples=50", "evaluation.max_test=500"],
    )  # fmt: skip
    run_dirs = dict(r.split("=") for r in runs)
    again = {r["family"]: r for r in compare(means, tmp_path / "means", run_dirs=run_dirs)}
    assert again["vae"]["mmd2"] != rows["vae"]["mmd2"]
    assert again["gan"]["mmd2"] == rows["gan"]["mmd2"]
    assert again["vae"]["elbo"] == rows["vae"]["elbo"]  # likelihoods do not depend on it


SHARED_MNIST = CONFIGS.parents[1] / "shared" / "data"


@pytest.mark.skipif(
    not (SHARED_MNIST / "mnist" / "t10k-images-idx3-ubyte.gz").is_file(),
    reason="no shared MNIST files",
)
def test_compare_runs_on_mnist_from_the_shared_files(tmp_path):
    cc = load_compare_config(
        CONFIGS / "compare_mnist.yaml",
        [
            f"data.root={SHARED_MNIST}",
            "train.epochs=1",
            "train.max_steps=5",
            "train.device=cpu",
            "evaluation.parzen_samples=200",
            "evaluation.parzen_valid=100",
            "evaluation.quality_samples=200",
            "evaluation.is_samples=10",
            "evaluation.max_test=200",
        ],
    )
    rows = {r["family"]: r for r in compare(cc, tmp_path)}
    assert set(rows) == {"vae", "flow", "gan"}
    assert all(row["parzen"]["n"] == 200 for row in rows.values())
    assert rows["flow"]["bits_per_dim"]["mean"] > 0


def test_gradients_command_writes_the_variance_table_and_plot(tmp_path, capsys):
    rc = main(
        [
            "gradients",
            str(CONFIGS / "vae_digits.yaml"),
            "train.device=cpu",
            "--estimators",
            "reparam",
            "score_function",
            "--particles",
            "1",
            "4",
            "--samples",
            "30",
            "--batch-size",
            "16",
            "--warmup",
            "0",
            "--out",
            str(tmp_path),
        ]
    )
    assert rc == 0
    for name in ("gradient_variance.md", "gradient_variance.csv", "gradient_variance.png"):
        assert (tmp_path / name).stat().st_size > 0
    with (tmp_path / "gradient_variance.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 2 * 2 * 2  # estimators x particles x parameter groups
    var = {(r["estimator"], r["particles"], r["group"]): float(r["variance"]) for r in rows}
    for (est, k, group), v in var.items():
        if est == "score_function":  # far noisier than reparameterisation, same settings
            assert v > 10 * var[("reparam", k, group)]
    assert main(["gradients", str(CONFIGS / "gan_toy.yaml")]) == 2
    assert "about guides" in capsys.readouterr().err


def test_compare_on_conditional_configs_reports_the_conditional_accuracy(tmp_path):
    """model.conditional=true in every family of a compare config: each row has the share of
    its samples for class y that the judge labels y, beside the judge's ceiling."""
    families = ("vae", "flow", "gan")
    cc = load_compare_config(
        CONFIGS / "compare_digits.yaml",
        [*FAST, *(f"{f}.model.conditional=true" for f in families)]
        + ["flow.model.num_layers=2", "flow.model.hidden_sizes=[64]"]
        + ["evaluation.parzen_samples=100", "evaluation.quality_samples=50"]
        + ["evaluation.is_samples=5", "evaluation.max_test=50"],
    )
    rows = {r["family"]: r for r in compare(cc, tmp_path)}
    for family in families:
        acc = rows[family]["conditional_accuracy"]
        assert acc["n"] == 10 * 500 and 0 <= acc["mean"] <= 1
        assert rows[family]["classifier_accuracy"]["mean"] > 0.8  # the ceiling on real digits
    assert "conditional accuracy" in (tmp_path / "compare.md").read_text()

"""The command line as its users expect: every usage error is one line with exit code 2 and a
pointer to --help, misspelt options and commands get the nearest valid one, a config key given
as an option gets its key=value form, --help states each default once, and
``pyrogen config --defaults`` lists every key of the schema with its type, default, allowed
values and a line of doc."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from pathlib import Path

import pytest

from pyrogen import __version__
from pyrogen.cli import main
from pyrogen.config import MODEL_CONFIGS, SECTIONS, Config

ROOT = Path(__file__).resolve().parents[1]
CONFIG = str(ROOT / "configs" / "vae_digits.yaml")


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    """An empty working directory: a refused command must leave it empty."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


def one_line_error(argv: list[str], capsys, workdir: Path) -> str:
    """Run the CLI on ``argv``; check exit 2, one line on stderr, nothing on stdout or disk."""
    code = main(argv)
    out, err = capsys.readouterr()
    assert code == 2, (argv, code, err)
    assert out == "" and err.count("\n") == 1 and err.endswith("\n"), err
    assert list(workdir.iterdir()) == [], "a refused command wrote files"
    return err.rstrip("\n")


@pytest.mark.parametrize(
    ("argv", "prog", "culprit"),
    [
        (["sample", "RUN", "-n", "0", "--out", "x.png"], "pyrogen sample", "argument -n: 0"),
        (["evaluate", "RUN", "--split", "bogus"], "pyrogen evaluate", "'bogus'"),
        (["sample", "RUN"], "pyrogen sample", "required: --out"),
        (["sample"], "pyrogen sample", "RUN_DIR"),
        (["evaluate", "RUN", "--frobnicate"], "pyrogen evaluate", "--frobnicate"),
        (["sample", "RUN", "--out", "x.png", "extra"], "pyrogen sample", "extra"),
        (["trian", CONFIG], "pyrogen", "'trian'"),
        (["--bogus"], "pyrogen", "required: command"),
    ],
)
def test_every_argparse_error_is_one_line_naming_the_culprit_and_help(
    argv, prog, culprit, capsys, workdir
):
    line = one_line_error(argv, capsys, workdir)
    assert line.startswith(f"{prog}: error: ")
    assert culprit in line
    assert line.endswith(f"(see {prog} --help)")
    assert "usage:" not in line


def test_a_misspelt_command_gets_the_nearest_one(capsys, workdir):
    line = one_line_error(["trian", CONFIG], capsys, workdir)
    assert "unknown command 'trian'; did you mean 'train'?" in line
    line = one_line_error(["evalute", "RUN"], capsys, workdir)
    assert "did you mean 'evaluate'?" in line
    line = one_line_error([CONFIG], capsys, workdir)  # the command forgotten
    assert f"did you mean 'pyrogen train {CONFIG}'?" in line


@pytest.mark.parametrize(
    ("argv", "hint"),
    [
        (["train", CONFIG, "--run_dir", "x"], "did you mean --run-dir?"),
        (["train", CONFIG, "--run_dir=x"], "did you mean --run-dir?"),
        (["train", CONFIG, "--quite"], "did you mean --quiet?"),
        (["sample", "RUN", "--out", "x.png", "--sed", "3"], "did you mean --seed?"),
        (["evaluate", "RUN", "--is_samples", "5"], "did you mean --is-samples?"),
    ],
)
def test_a_misspelt_option_gets_the_nearest_option(argv, hint, capsys, workdir):
    line = one_line_error(argv, capsys, workdir)
    assert hint in line and "unrecognized argument" in line


@pytest.mark.parametrize(
    ("argv", "hint"),
    [
        (["train", CONFIG, "--epochs", "3"], "did you mean train.epochs=3?"),
        (["train", CONFIG, "--epochs=3"], "did you mean train.epochs=3?"),
        (["train", "--epochs", "3", CONFIG], "did you mean train.epochs=3?"),
        (["train", CONFIG, "--epochs", "--quiet"], "did you mean train.epochs=VALUE?"),
        (["train", CONFIG, "--epoch", "3"], "did you mean train.epochs=3?"),
        (["train", CONFIG, "--batch-size", "64"], "did you mean train.batch_size=64?"),
        (["config", CONFIG, "--latent_dim", "4"], "did you mean model.latent_dim=4?"),
        (
            ["train", CONFIG, "--hidden-sizes", "[8]"],
            "did you mean model.hidden_sizes=[8] or guide.hidden_sizes=[8]?",
        ),
    ],
)
def test_a_config_key_given_as_an_option_gets_its_override_form(argv, hint, capsys, workdir):
    line = one_line_error(argv, capsys, workdir)
    assert "config keys are set as section.key=value" in line and hint in line


def test_config_keys_are_not_suggested_to_commands_without_overrides(capsys, workdir):
    line = one_line_error(["evaluate", "RUN", "--epochs", "3"], capsys, workdir)
    assert "train.epochs" not in line


def test_the_override_form_suggested_is_accepted(capsys):
    assert main(["train", CONFIG, "--epochs", "3"]) == 2
    form = capsys.readouterr().err.split("did you mean ")[1].split("?")[0]
    assert main(["config", CONFIG, form]) == 0
    assert "epochs: 3\n" in capsys.readouterr().out


def test_a_bare_pyrogen_prints_the_help_and_exits_0(capsys):
    assert main([]) == 0
    out, err = capsys.readouterr()
    assert out.startswith("usage: pyrogen") and err == ""
    assert all(cmd in out for cmd in ("train", "config", "sample", "evaluate", "compare"))


@pytest.mark.parametrize("flag", ["-V", "--version"])
def test_version(flag, capsys):
    assert main([flag]) == 0
    assert capsys.readouterr().out == f"pyrogen {__version__}\n"


@pytest.mark.parametrize(
    "command", ["train", "config", "sample", "evaluate", "diagnose", "compare", "gradients"]
)
def test_help_states_each_default_once_and_never_none(command, capsys):
    assert main([command, "--help"]) == 0
    text = " ".join(capsys.readouterr().out.split())  # argparse wraps lines
    assert "(default: None)" not in text and "(default: False)" not in text
    assert "train.device) (default" not in text and "<config>) (default" not in text


def test_help_keeps_useful_defaults(capsys):
    assert main(["evaluate", "--help"]) == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "(default: 1000)" in text and "(default: test)" in text
    assert "where to load the run (default: the run's train.device) --num" in text
    assert main(["train", "--help"]) == 0
    assert "pyrogen config --defaults" in capsys.readouterr().out


# ------------------------------------------------------------------ pyrogen config --defaults
def _all_fields():
    for section, cls in [*SECTIONS.items(), *(("model", c) for c in MODEL_CONFIGS.values())]:
        for f in dataclasses.fields(cls):
            yield f"{section}.{f.name}", f


def test_every_field_of_every_section_has_a_one_line_doc():
    keys = list(_all_fields())
    assert len(keys) > 80  # every section and model family was walked
    for key, f in keys:
        doc = f.metadata.get("doc", "")
        assert doc.strip(), f"{key} has no doc (metadata['doc'])"
        assert "\n" not in doc and len(doc) <= 90, f"{key}: one short line, got {doc!r}"
    sections = {f.name for f in dataclasses.fields(Config)} - {"source"}
    assert sections == {*SECTIONS, "model"}, "a section of Config is missing from SECTIONS"


def _listing(capsys, *family: str) -> dict[str, list[str]]:
    """The --defaults table as {key: [type, default, allowed, doc]} (first row of each key)."""
    assert main(["config", "--defaults", *family]) == 0
    out, err = capsys.readouterr()
    assert err == ""
    rows: dict[str, list[str]] = {}
    for line in out.splitlines():
        if line.startswith("#"):
            continue
        key, rest = line.split(None, 1)
        rows.setdefault(key, rest.split("  "))
    return rows


def _cells(row: list[str]) -> list[str]:
    return [c.strip() for c in row if c.strip()]


def test_defaults_lists_type_default_range_and_doc_of_each_key(capsys):
    rows = _listing(capsys)
    assert _cells(rows["train.epochs"]) == [
        "int",
        "10",
        ">= 0 and <= 1099511627776",
        "passes over the training split",
    ]
    assert _cells(rows["optim.betas"])[:3] == [
        "list[float]|null",
        "null",
        "2 items, each >= 0 and < 1",
    ]
    assert _cells(rows["data.binarize"])[:3] == ["str", "none", "none, static, dynamic"]
    assert _cells(rows["train.num_threads"])[:3] == ["int|str", "auto", ">= 1 and <= 1024, or auto"]
    assert _cells(rows["data.logit_lambda"])[:3] == ["float|null", "null", ">= 0 and < 0.5"]
    # every key of every section and of every model family, each with its doc
    expected = {key for key, _ in _all_fields()}
    assert set(rows) == expected
    for key, f in _all_fields():
        if not key.startswith("model."):
            assert rows[key][-1].strip() == f.metadata["doc"], key


def test_defaults_lists_registered_names(capsys):
    from pyrogen import registry

    rows = _listing(capsys)
    guide = " ".join(rows["guide.name"])
    assert "diagonal_normal" in guide and "iaf" in guide and "low_rank_normal" in guide
    for key, reg in [
        ("data.name", registry.DATASETS),
        ("guide.name", registry.GUIDES),
        ("elbo.name", registry.ELBOS),
        ("model.flow", registry.FLOWS),
        ("adversarial.loss", registry.GAN_LOSSES),
    ]:
        assert ", ".join(reg.names()) in " ".join(rows[key]), key


def test_defaults_of_one_family_lists_its_model_section_only(capsys):
    assert main(["config", "--defaults", "flow"]) == 0
    out = capsys.readouterr().out
    assert "# model (model.family=flow)" in out and "model.family=vae" not in out
    assert "model.num_layers" in out and "model.latent_dim" not in out
    assert "train.epochs" in out and "guide.name" in out  # every other section stays
    assert main(["config", "--defaults"]) == 0
    out = capsys.readouterr().out
    assert all(f"# model (model.family={fam})" in out for fam in MODEL_CONFIGS)


def test_defaults_refuses_an_unknown_family_and_a_config(capsys, workdir):
    line = one_line_error(["config", "--defaults", "vea"], capsys, workdir)
    assert "'vea'; did you mean 'vae'?" in line and "vae, flow, gan" in line
    line = one_line_error(["config", CONFIG, "--defaults"], capsys, workdir)
    assert "takes no CONFIG" in line


def test_config_still_prints_the_resolved_config(capsys):
    assert main(["config", CONFIG, "train.epochs=3"]) == 0
    out = capsys.readouterr().out
    assert "epochs: 3\n" in out and out.startswith("data:")


def test_python_m_pyrogen_usage_error_is_one_line_on_stderr_with_exit_2(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "pyrogen", "evaluate", "RUN", "--split", "bogus"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
        timeout=120,
    )
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.count("\n") == 1, proc.stderr
    assert proc.stderr.startswith("pyrogen evaluate: error: argument --split: invalid choice")
    assert proc.stderr.rstrip().endswith("(see pyrogen evaluate --help)")
    assert list(tmp_path.iterdir()) == []


def test_warnings_are_one_line_naming_the_command(capsys):
    """A renamed key is accepted with one warning line (Python's own display adds the source
    line), and Python's display is back afterwards."""
    import warnings

    before = warnings.showwarning
    argv = ["config", "configs/vae_digits.yaml", "adversarial.generator_loss=hinge"]
    assert main(argv) == 0
    err = capsys.readouterr().err
    assert err.splitlines() == [
        "pyrogen config: warning: 'adversarial.generator_loss' is renamed 'adversarial.loss'; "
        "read as adversarial.loss=hinge"
    ]
    assert warnings.showwarning is before

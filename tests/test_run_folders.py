"""A finished run is never destroyed: run folders are append-only history, default names never
collide, and a moved or copied run folder works from its own files."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import pyrogen
import pyrogen.training.folders as folders
from conftest import DIGITS_RUN, VAE_DIGITS
from pyrogen import load_config
from pyrogen.cli import main
from pyrogen.training import RunExistsError, train
from pyrogen.training.checkpoint import load_checkpoint

pytestmark = pytest.mark.usefixtures("one_thread")

ROOT = Path(__file__).resolve().parents[1]
TINY = DIGITS_RUN + ["train.epochs=2", "output.num_samples=4"]
VAE = VAE_DIGITS


def snapshot(folder: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()
    }


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    """A finished run (two epochs) made through the CLI."""
    run_dir = tmp_path_factory.mktemp("finished") / "run"
    assert main(["train", VAE, *TINY, "--run-dir", str(run_dir), "--quiet"]) == 0
    return run_dir


def test_cli_refuses_a_folder_that_holds_a_run_and_changes_nothing(finished, capsys):
    before = snapshot(finished)
    code = main(["train", VAE, *TINY, "train.epochs=1", "--run-dir", str(finished), "--quiet"])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert len(err.splitlines()) == 1
    assert f"--resume {finished}" in err and "--overwrite" in err
    assert snapshot(finished) == before  # checkpoint, metrics, figures: byte for byte


def test_python_refuses_with_the_library_error(finished):
    before = snapshot(finished)
    cfg = load_config(VAE, TINY)
    with pytest.raises(RunExistsError, match="already holds a run"):
        train(cfg, finished, quiet=True)
    with pytest.raises(RunExistsError):  # the README's fixed output.name, run twice
        train(load_config(VAE, TINY + [f"output.dir={finished.parent}", "output.name=run"]))
    assert snapshot(finished) == before


def test_overwrite_replaces_the_old_run_entirely(tmp_path):
    run_dir = tmp_path / "run"
    cfg = load_config(VAE, TINY)
    train(cfg, run_dir, quiet=True)
    (run_dir / "notes-of-the-old-run.txt").write_text("old")
    one_epoch = load_config(VAE, TINY + ["train.epochs=1", "train.eval_every=0"])
    train(one_epoch, run_dir, quiet=True, overwrite=True)
    assert not (run_dir / "notes-of-the-old-run.txt").exists()
    assert not (run_dir / "best.pt").exists()  # the old run's best is gone with it
    records = pyrogen.training.read_metrics(run_dir)
    assert [r["split"] for r in records].count("summary") == 1  # no old records appended
    assert max(r["step"] for r in records) == 20  # one epoch of 20 steps
    assert load_checkpoint(run_dir / "checkpoint.pt")["loop"]["epoch"] == 1
    # the config key does the same, and is never stored as true
    cfg_key = load_config(VAE, TINY + ["train.epochs=1", "output.overwrite=true"])
    train(cfg_key, run_dir, quiet=True)
    assert "overwrite: false" in (run_dir / "config.yaml").read_text()


def test_a_folder_of_other_files_is_never_cleared(tmp_path):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "thesis.tex").write_text("precious")
    with pytest.raises(RunExistsError, match="not a pyrogen run"):
        train(load_config(VAE, TINY), mine, quiet=True, overwrite=True)
    assert [p.name for p in mine.iterdir()] == ["thesis.tex"]


def test_resume_and_overwrite_together_are_refused(finished, capsys):
    code = main(["train", "--resume", str(finished), "--overwrite", "train.epochs=3"])
    assert code == 2 and "choose one" in capsys.readouterr().err


def test_default_names_never_collide(tmp_path, monkeypatch):
    """Two runs started in the same second (a frozen clock) get two folders."""

    class Frozen:
        @staticmethod
        def now():
            import datetime

            return datetime.datetime(2026, 12, 5, 9, 0, 0)

    monkeypatch.setattr(folders, "datetime", Frozen)
    cfg = load_config(VAE, TINY + ["train.epochs=1", f"output.dir={tmp_path}"])
    first = train(cfg, quiet=True, config_path=VAE)
    second = train(cfg, quiet=True, config_path=VAE)
    assert first.run_dir.name == "vae_digits-20261205-090000"
    assert second.run_dir.name == "vae_digits-20261205-090000-2"
    assert (first.run_dir / "checkpoint.pt").exists() and (
        second.run_dir / "checkpoint.pt"
    ).exists()
    # a name taken between choosing it and writing (another process) moves on
    taken = folders.default_run_dir(cfg, VAE)
    assert taken.name.endswith("-3")
    taken.mkdir()
    assert folders.claim_run_dir(taken, False, default_name=True).name.endswith("-4")


# ------------------------------------------------------------------ relocatable runs
@pytest.fixture(scope="module")
def from_python(tmp_path_factory) -> Path:
    """A flow trained from an array passed from Python (its copy lives in the run folder)."""
    x = np.random.default_rng(0).normal(size=(400, 3)).astype("float32")
    cfg = load_config(
        str(ROOT / "configs" / "flow_moons.yaml"),
        ["train.epochs=2", "model.hidden_sizes=[16]", "train.device=cpu", "train.eval_every=1"],
    )
    run_dir = tmp_path_factory.mktemp("py") / "own-data"
    train(cfg, run_dir=run_dir, data=x, quiet=True)
    return run_dir


def test_paths_inside_the_run_folder_are_stored_relative_to_it(from_python):
    text = (from_python / "config.yaml").read_text()
    assert "path: data.npz" in text
    assert str(from_python) not in text
    saved = load_checkpoint(from_python / "checkpoint.pt")["config"]
    assert saved["data"]["path"] == "data.npz"


def test_a_moved_folder_evaluates_samples_and_resumes_from_its_own_files(from_python, tmp_path):
    moved = tmp_path / "elsewhere" / "renamed"
    shutil.copytree(from_python, moved)
    original = load_checkpoint(from_python / "checkpoint.pt")["learner"]["module"]
    shutil.rmtree(from_python)  # the original is gone: nothing may read it
    try:
        run = pyrogen.load(moved)
        assert Path(run.cfg.data.path) == (moved / "data.npz").resolve()
        for k, v in original.items():
            assert torch.equal(run.learner.module.state_dict()[k], v)
        assert main(["evaluate", str(moved), "--quiet", "--json", "--max-examples", "20"]) == 0
        assert main(["sample", str(moved), "-n", "8", "--out", str(tmp_path / "s.pt")]) == 0
        assert main(["train", "--resume", str(moved), "train.epochs=3", "--quiet"]) == 0
        assert load_checkpoint(moved / "checkpoint.pt")["loop"]["epoch"] == 3
        assert "path: data.npz" in (moved / "config.yaml").read_text()
    finally:
        shutil.copytree(moved, from_python)


def test_a_copied_folder_reads_its_own_copy_of_the_data(from_python, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(from_python, copy)
    np.savez(from_python / "data.npz", data=np.zeros((400, 3), "float32"))  # the original changes
    try:
        run = pyrogen.load(copy)  # the copy's data: its checksum still matches
        assert run.dataset.train.abs().sum() > 0
        with pytest.raises(pyrogen.DataError, match="checksum"):
            pyrogen.load(from_python)  # the edited original is caught by its checksum
    finally:
        shutil.rmtree(from_python)
        shutil.copytree(copy, from_python)


def test_pytest_removes_its_tutorial_folder(tmp_path):
    """The session's temporary folder for tutorial runs is gone when pytest ends."""
    env = {k: v for k, v in __import__("os").environ.items() if k != "PYROGEN_TUTORIAL_RUNS"}
    env["TMPDIR"] = str(tmp_path)
    probe = "tests/test_run_folders.py::test_default_runs_folder_is_exported"
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", probe],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout[-2000:]
    assert not list(tmp_path.glob("pyrogen-tutorials-*"))


def test_default_runs_folder_is_exported():
    """(Run by the test above in a child pytest: the folder exists during the session.)"""
    runs = Path(__import__("os").environ["PYROGEN_TUTORIAL_RUNS"])
    assert runs.is_dir()

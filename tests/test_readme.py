"""The README says what pyrogen does: its code blocks run (commands with tiny budgets), its
shipped config is the file in configs/, and its run-folder table lists what runs leave."""

from __future__ import annotations

import re
import shlex
import shutil
from pathlib import Path

import pytest

from pyrogen.cli import main

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
BLOCKS = re.findall(r"```(\w+)\n(.*?)```", README, flags=re.S)
pytestmark = pytest.mark.usefixtures("one_thread")


def tiny(argv: list[str], calls: list[int]) -> list[str]:
    """The README's command with a tiny budget: a few steps of training, small evaluations."""
    if argv[0] == "train":
        calls[0] += 3  # each train (or resume) call goes 3 steps further
        return [*argv, f"train.max_steps={calls[0]}", "--quiet"]
    if argv[0] == "evaluate":
        return [*argv, "--is-samples", "5", "--parzen-samples", "50", "--max-examples", "20"]
    if argv[0] == "diagnose":
        return [*argv, "--subset", "5", "--refine-steps", "5", "--is-samples", "10"]
    return argv


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    work = tmp_path_factory.mktemp("readme")
    (work / "configs").symlink_to(ROOT / "configs")
    return work


def test_the_shipped_config_shown_is_the_file(workdir):
    (yaml,) = [text for lang, text in BLOCKS if lang == "yaml"]
    assert yaml == (ROOT / "configs" / "vae_digits.yaml").read_text()


def test_every_command_and_code_block_runs(workdir, monkeypatch, capsys):
    monkeypatch.chdir(workdir)
    calls = [0]
    ran = 0
    namespace = {"__name__": "readme"}  # the Python blocks continue one another
    for lang, text in BLOCKS:
        if lang == "bash":
            for line in text.splitlines():
                line = line.split("  #")[0].strip()
                if not line.startswith("pyrogen "):
                    continue  # pip install, pytest, ruff: the environment, not pyrogen
                argv = shlex.split(line)[1:]
                code = main(tiny(argv, calls))
                assert code == 0, f"{line}: {capsys.readouterr().err}"
                ran += 1
        elif lang == "python":
            exec(compile(text, "README.md", "exec"), namespace)  # noqa: S102
            ran += 1
    assert ran >= 8


def test_the_run_folder_table_lists_what_runs_leave(workdir, monkeypatch):
    monkeypatch.chdir(workdir)
    table = README.split("## What a run leaves behind")[1].split("\n## ")[0]
    listed = set()
    for row in table.splitlines():
        if row.startswith("| `"):
            listed.update(re.findall(r"`([\w.]+/?)`", row.split("|")[1]))
    runs = workdir / "runs"
    # the README's own runs, plus a 2-D flow and a VAE with a 2-D latent space
    tiny_run = ["train.max_steps=3", "train.log_every=1", "--quiet", "--run-dir"]
    assert main(["train", "configs/flow_moons.yaml", *tiny_run, str(runs / "flow")]) == 0
    assert (
        main(
            [
                "train",
                "configs/vae_digits.yaml",
                "model.latent_dim=2",
                "train.epochs=1",
                "train.eval_every=1",  # a validation: best.pt
                *tiny_run[1:],
                str(runs / "vae2"),
            ]
        )
        == 0
    )
    left = {p.name + ("/" if p.is_dir() else "") for p in runs.glob("*/*")}
    assert listed - left == set(), f"listed but never written: {listed - left}"
    shutil.rmtree(runs / "flow")

"""A checkpoint whose contents do not fit its run is refused in one line, even with a valid
checksum: files edited by hand or written by another version (a missing or unknown section,
an unknown learner entry, a tensor of another shape, a NaN weight, a loop entry too many, a
value of the wrong type) never reach ``evaluate``, ``sample`` or ``train --resume``; nothing is
written for a refused command, and valid checkpoints still load and resume."""

from __future__ import annotations

import math
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

import pyrogen
from conftest import tiny
from pyrogen.cli import main
from pyrogen.training.checkpoint import (
    CheckpointError,
    check_checkpoint_contents,
    load_checkpoint,
    save_checkpoint,
)

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = ["train.epochs=1", "train.device=cpu", "train.seed=1"]
RUNS = {
    "vae": (
        "configs/vae_digits.yaml",
        TINY + tiny("vae", "guide.hidden_sizes=[16]", "data.num_train=200", "train.batch_size=100"),
    ),
    # a score-function guide with a decaying-average baseline: the learner's param store is
    # empty when built and filled by training (no false positive on lazily made state)
    "vae_baseline": (
        "configs/vae_digits.yaml",
        TINY
        + tiny("vae", "guide.name=score_function", "guide.baseline=decaying_average")
        + ["elbo.name=trace_graph", "data.num_train=200", "train.batch_size=100"],
    ),
    "flow": (
        "configs/flow_moons.yaml",
        TINY + tiny("flow", "model.num_layers=2", "data.num_train=256", width=8),
    ),
    "gan": (
        "configs/gan_toy.yaml",
        TINY + tiny("gan", "data.num_train=256", "train.batch_size=128", width=8),
    ),
}


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> dict[str, Path]:
    """One tiny run of each learner variant, trained once for the module."""
    root = tmp_path_factory.mktemp("trained")
    runs = {}
    for name, (config, overrides) in RUNS.items():
        cfg = pyrogen.load_config(config, overrides)
        pyrogen.train(cfg, run_dir=root / name, quiet=True)
        runs[name] = root / name
    return runs


def edited(trained: dict[str, Path], family: str, tmp_path: Path, edit: Callable) -> Path:
    """A copy of a run whose checkpoint was edited and saved again (its checksum is valid)."""
    run = tmp_path / family
    shutil.copytree(trained[family], run)
    state = load_checkpoint(run / "checkpoint.pt")
    edit(state)
    save_checkpoint(state, run / "checkpoint.pt")
    return run


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def first_weight(state: dict) -> str:
    return next(k for k in state["learner"]["module"] if k.endswith("weight"))


def optimizer_of(state: dict) -> dict:
    learner = state["learner"]
    return learner["optimizer"] if "optimizer" in learner else learner["opt_d"]


def set_nan(state: dict) -> None:
    state["learner"]["module"][first_weight(state)].view(-1)[0] = math.nan


def reshape_weight(state: dict) -> None:
    module = state["learner"]["module"]
    name = first_weight(state)
    rows, cols = module[name].shape
    module[name] = torch.zeros(rows, cols + 1)


# (edit, what the one line must name)
CASES = {
    "missing section": (lambda s: s.pop("loop"), "lacks 'loop'"),
    "unknown section": (lambda s: s.update(extra=1), "unknown entry 'extra'"),
    "unknown learner key": (lambda s: s["learner"].update(bogus=1), "learner has unknown"),
    "wrong shape": (reshape_weight, "has shape"),
    "nan weight": (set_nan, "non-finite"),
    "optimiser state of another shape": (
        lambda s: optimizer_of(s)["state"][0].update(exp_avg=torch.zeros(7)),
        ".state.0.exp_avg has shape (7,)",
    ),
    "extra loop entry": (lambda s: s["loop"].update(foo=1), "loop has unknown entry 'foo'"),
    "wrong type": (lambda s: s["loop"].update(step="3"), "loop.step is str '3'"),
}
# the cases about the learner's state, checked for every learner variant
LEARNER_CASES = ("unknown learner key", "wrong shape", "nan weight")
PARAMS = [(case, "vae") for case in CASES] + [
    (case, family) for case in LEARNER_CASES for family in ("flow", "gan")
]
PARAMS.append(("optimiser state of another shape", "gan"))  # two optimisers: D's state


def commands(run: Path, tmp_path: Path) -> list[list[str]]:
    return [
        ["evaluate", str(run), "--parzen-samples", "10", "--is-samples", "2", "--quiet"],
        ["sample", str(run), "-n", "4", "--out", str(tmp_path / "out.png")],
        ["train", "--resume", str(run), "train.epochs=3", "--quiet"],
    ]


@pytest.mark.parametrize(("case", "family"), PARAMS)
def test_a_checkpoint_that_does_not_fit_is_refused_in_one_line(
    trained, tmp_path, capsys, case, family
):
    edit, named = CASES[case]
    run = edited(trained, family, tmp_path, edit)
    before = snapshot(run)
    capsys.readouterr()
    for argv in commands(run, tmp_path):
        assert main(argv) == 2, argv
        captured = capsys.readouterr()
        err = captured.err.strip()
        assert "\n" not in err and "Traceback" not in err, err
        assert err.startswith(f"pyrogen {argv[0]}: error: {run / 'checkpoint.pt'}: "), err
        assert named in err, err
        assert snapshot(run) == before  # nothing written, not even metrics or config.yaml
        assert not (tmp_path / "out.png").exists()


def test_the_line_names_the_entry_and_both_shapes(trained, tmp_path, capsys):
    run = edited(trained, "vae", tmp_path, reshape_weight)
    capsys.readouterr()
    assert main(["sample", str(run), "-n", "4", "--out", str(tmp_path / "s.png")]) == 2
    err = capsys.readouterr().err
    assert "learner.module.decoder.0.weight has shape (16, 3), the run's model needs (16, 2)" in err
    assert "another version" in err


def test_a_missing_learner_entry_is_named(trained, tmp_path):
    run = edited(trained, "gan", tmp_path, lambda s: s["learner"]["module"].pop("prior_a"))
    with pytest.raises(CheckpointError, match=r"learner\.module lacks 'prior_a'"):
        pyrogen.load(run)


def test_a_permutation_that_is_not_an_order_of_the_data_is_refused_on_resume(
    trained, tmp_path, capsys
):
    def mid_epoch(state):
        state["loop"].update(position=1, permutation=torch.arange(7))

    run = edited(trained, "flow", tmp_path, mid_epoch)
    before = snapshot(run)
    capsys.readouterr()
    assert main(["train", "--resume", str(run), "train.epochs=3", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "loop.permutation is not an order of the 256 training examples" in err
    assert snapshot(run) == before


def test_random_states_are_checked_for_resume_only(trained):
    state = load_checkpoint(trained["vae"] / "checkpoint.pt")
    state["rng"]["python"] = (3, (1, 2), None)
    learner = pyrogen.load(trained["vae"]).learner
    check_checkpoint_contents(state, "x.pt", learner)  # evaluate and sample draw afresh
    with pytest.raises(CheckpointError, match=r"^x\.pt: rng\.python is tuple"):
        check_checkpoint_contents(state, "x.pt", learner, resume=True)


def test_any_checkpoint_file_is_named_in_the_message(trained):
    """The check takes the file's path, so it serves ``best.pt`` as well as
    ``checkpoint.pt``."""
    learner = pyrogen.load(trained["flow"]).learner
    state = load_checkpoint(trained["flow"] / "checkpoint.pt")
    check_checkpoint_contents(state, "best.pt", learner)
    set_nan(state)
    check_checkpoint_contents(state, "best.pt")  # without the learner: the layout only
    with pytest.raises(CheckpointError, match=r"^runs/x/best\.pt: learner\.module\..*non-finite"):
        check_checkpoint_contents(state, Path("runs/x/best.pt"), learner)


def test_a_data_parallel_checkpoint_needs_a_rank_entry_for_each_process(trained):
    state = load_checkpoint(trained["vae"] / "checkpoint.pt")
    own = {"rng": state["rng"], "learner": {"param_store": {}}}
    state.update(world_size=2, ranks=[own, own])
    check_checkpoint_contents(state, "c.pt", resume=True)
    state["ranks"] = [own]
    with pytest.raises(CheckpointError, match="expected a list of 2 entries"):
        check_checkpoint_contents(state, "c.pt", resume=True)
    del state["ranks"]
    with pytest.raises(CheckpointError, match="lacks 'ranks'"):
        check_checkpoint_contents(state, "c.pt")


@pytest.mark.parametrize("family", list(RUNS))
def test_a_valid_checkpoint_still_loads_samples_and_resumes(trained, tmp_path, capsys, family):
    run = edited(trained, family, tmp_path, lambda s: None)  # re-saved: no false positives
    state = load_checkpoint(run / "checkpoint.pt")
    loaded = pyrogen.load(run)
    for key, value in state["learner"]["module"].items():
        assert torch.equal(loaded.learner.state_dict()["module"][key], value)
    for argv in commands(run, tmp_path):
        assert main(argv) == 0, (argv, capsys.readouterr().err)
    assert (tmp_path / "out.png").is_file()
    assert load_checkpoint(run / "checkpoint.pt")["loop"]["epoch"] == 3

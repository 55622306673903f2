"""Faults on output: a file-size limit (``ulimit -f``), a full disk or a path that cannot be
written, met while training writes its checkpoint, metrics, TensorBoard events, the config
and resume record of a resumed run, or its final figures, end in one line on stderr naming the
file and the checkpoint that is intact, exit code 1, no traceback; the intact checkpoint loads
and evaluates.

The limits are set in the child process only (``RLIMIT_FSIZE`` with ``SIGXFSZ`` ignored, so a
write past the limit fails with ``EFBIG`` instead of killing the process)."""

from __future__ import annotations

import json
import os
import resource
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

import pyrogen
from pyrogen.training.checkpoint import load_checkpoint
from pyrogen.training.output import RunOutputError, append_whole, write_atomic

ROOT = Path(__file__).resolve().parent.parent
TINY = [
    "data.num_train=256",
    "model.hidden_sizes=[16]",
    "guide.hidden_sizes=[16]",
    "train.batch_size=64",
    "train.num_threads=1",
    "train.eval_every=1",
    "train.checkpoint_every=1",
    "train.log_every=1",
]
STEPS_PER_EPOCH = 4  # 256 examples, batches of 64


def _env() -> dict[str, str]:
    env = dict(os.environ, MPLBACKEND="Agg", OMP_NUM_THREADS="1")
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    return env


def _limit(size: int | None):
    def preexec() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (size, size))

    return None if size is None else preexec


def _pyrogen(*argv: str, fsize: int | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "pyrogen", *argv],
        cwd=ROOT,
        env=_env(),
        capture_output=True,
        text=True,
        preexec_fn=_limit(fsize),
        timeout=300,
    )


def _one_error_line(result: subprocess.CompletedProcess) -> str:
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("pyrogen train: error: cannot write ")
    return lines[0]


def _intact_text(run: Path, step: int) -> str:
    return (
        f"the previous checkpoint (step {step}) {run / 'checkpoint.pt'} is intact: continue "
        f"with pyrogen train --resume {run}"
    )


def _no_temporaries(run: Path) -> None:
    assert not [p.name for p in run.glob(".*.tmp")]


@pytest.fixture(scope="module")
def one_epoch(tmp_path_factory) -> Path:
    """A finished one-epoch run (step 4), written without limits."""
    run = tmp_path_factory.mktemp("faults") / "base"
    argv = ["train", "configs/vae_digits.yaml", *TINY, "train.epochs=1", "--quiet"]
    result = _pyrogen(*argv, "--run-dir", str(run))
    assert result.returncode == 0, result.stderr
    return run


@pytest.fixture
def resumable(one_epoch, tmp_path) -> Path:
    run = tmp_path / "run"
    shutil.copytree(one_epoch, run)
    return run


def _resume(run: Path, fsize: int | None, *extra: str) -> subprocess.CompletedProcess:
    return _pyrogen("train", "--resume", str(run), "train.epochs=3", "--quiet", *extra, fsize=fsize)


def test_a_checkpoint_past_the_size_limit_keeps_the_previous_one(resumable):
    before = (resumable / "checkpoint.pt").read_bytes()
    limit = len(before) // 2  # config, records, metrics and events fit; a checkpoint does not
    line = _one_error_line(_resume(resumable, limit, "output.tensorboard=true"))
    assert line == (
        f"pyrogen train: error: cannot write {resumable / 'checkpoint.pt'}: File too large; "
        + _intact_text(resumable, STEPS_PER_EPOCH)
    )
    assert (resumable / "checkpoint.pt").read_bytes() == before
    _no_temporaries(resumable)
    state = load_checkpoint(resumable / "checkpoint.pt")
    assert state["loop"]["step"] == STEPS_PER_EPOCH
    # what the failed epoch logged is whole: every line of metrics.jsonl parses
    records = [json.loads(x) for x in (resumable / "metrics.jsonl").read_text().splitlines()]
    assert max(r["step"] for r in records) == 2 * STEPS_PER_EPOCH
    argv = ["--quiet", "--is-samples", "5", "--parzen-samples", "50", "--max-examples", "20"]
    evaluated = _pyrogen("evaluate", str(resumable), *argv, "--json")
    assert evaluated.returncode == 0, evaluated.stderr
    assert "elbo" in json.loads(evaluated.stdout)["estimates"]
    # and the run continues from it once the file can be written
    assert _resume(resumable, None).returncode == 0
    assert load_checkpoint(resumable / "checkpoint.pt")["loop"]["step"] == 3 * STEPS_PER_EPOCH


def test_a_first_checkpoint_that_cannot_be_written_says_there_is_none(tmp_path):
    run = tmp_path / "fresh"
    argv = ["train", "configs/vae_digits.yaml", *TINY, "train.epochs=2", "--quiet"]
    result = _pyrogen(*argv, "output.tensorboard=false", "--run-dir", str(run), fsize=40_000)
    line = _one_error_line(result)
    assert line.startswith(
        f"pyrogen train: error: cannot write {run / 'checkpoint.pt'}: File too large; no "
        "checkpoint was written yet"
    )
    assert not (run / "checkpoint.pt").exists()
    _no_temporaries(run)


@pytest.mark.parametrize(
    ("limit", "culprit"), [(40, "resumes.jsonl"), (1000, "config.yaml")]
)  # config.yaml holds about 1.4 kB, the resume record about 80 bytes
def test_a_resume_whose_records_cannot_be_written_leaves_them_whole(resumable, limit, culprit):
    config = (resumable / "config.yaml").read_bytes()
    line = _one_error_line(_resume(resumable, limit))
    assert line == (
        f"pyrogen train: error: cannot write {resumable / culprit}: File too large; "
        + _intact_text(resumable, STEPS_PER_EPOCH)
    )
    assert (resumable / "config.yaml").read_bytes() == config  # not truncated
    if culprit == "resumes.jsonl":  # cut back to nothing, not a torn line
        assert (resumable / "resumes.jsonl").read_bytes() == b""
    _no_temporaries(resumable)
    assert load_checkpoint(resumable / "checkpoint.pt")["loop"]["step"] == STEPS_PER_EPOCH


def test_metrics_past_the_size_limit_leave_no_torn_line(tmp_path):
    run = tmp_path / "fresh"
    argv = ["train", "configs/vae_digits.yaml", *TINY, "train.epochs=2", "--quiet"]
    argv += ["output.tensorboard=false", "data.num_train=1024", "train.batch_size=16"]
    # config.yaml (~1.4 kB) fits; ~70 bytes a metrics line, 64 steps before the checkpoint
    result = _pyrogen(*argv, "--run-dir", str(run), fsize=2000)
    line = _one_error_line(result)
    assert line.startswith(f"pyrogen train: error: cannot write {run / 'metrics.jsonl'}: File too")
    text = (run / "metrics.jsonl").read_text()
    assert text.endswith("\n") and 0 < len(text) <= 2000
    steps = [json.loads(x)["step"] for x in text.splitlines()]
    assert steps == list(range(1, len(steps) + 1))


def test_tensorboard_events_past_the_size_limit_are_one_error(resumable):
    # the samples figure of the first evaluation (several kB) exceeds the limit
    line = _one_error_line(_resume(resumable, 4000, "output.tensorboard=true"))
    prefix = "pyrogen train: error: cannot write "
    path, _, rest = line.removeprefix(prefix).partition(": File too large; ")
    assert Path(path).parent == resumable / "tensorboard" and "tfevents" in Path(path).name
    assert rest == _intact_text(resumable, STEPS_PER_EPOCH)
    assert load_checkpoint(resumable / "checkpoint.pt")["loop"]["step"] == STEPS_PER_EPOCH


def test_figures_that_cannot_be_written_at_the_end_say_training_finished(tmp_path):
    run = tmp_path / "fresh"
    argv = ["train", "configs/vae_digits.yaml", *TINY, "train.epochs=1", "--quiet"]
    assert _pyrogen(*argv, "--run-dir", str(run)).returncode == 0
    (run / "samples.png").unlink()
    (run / "samples.png").mkdir()  # a folder where the figure should go
    result = _pyrogen("train", "--resume", str(run), "train.epochs=2", "--quiet")
    assert result.returncode == 1 and "Traceback" not in result.stderr
    steps = 2 * STEPS_PER_EPOCH
    assert result.stderr.splitlines() == [
        f"pyrogen train: error: training finished; its checkpoint (step {steps}) "
        f"{run / 'checkpoint.pt'} is intact; the figures could not be written: cannot write "
        f"{run / 'samples.png'}: Is a directory"
    ]
    assert load_checkpoint(run / "checkpoint.pt")["loop"]["step"] == steps


def test_train_from_python_raises_one_exception_class(tmp_path, one_thread):
    run = tmp_path / "py"

    def block_metrics(step: int, _out: dict) -> None:  # every later metrics write fails
        if step == 1:
            (run / "metrics.jsonl").mkdir()

    cfg = pyrogen.load_config("configs/vae_digits.yaml", [*TINY, "train.epochs=1"])
    with pytest.raises(RunOutputError) as caught:
        pyrogen.train(cfg, run, quiet=True, on_step=block_metrics)
    e = caught.value
    assert isinstance(e, OSError) and e.filename == str(run / "metrics.jsonl")
    assert e.checkpoint is None and not e.finished
    assert "no checkpoint was written yet" in str(e)


def test_atomic_writes_keep_the_old_file_when_the_write_fails(tmp_path, monkeypatch):
    target = tmp_path / "config.yaml"
    target.write_bytes(b"old\n")
    log = tmp_path / "log.jsonl"
    log.write_bytes(b'{"a": 1}\n')
    real_write = os.write

    def half_then_full(fd: int, data) -> int:  # the disk fills half-way through
        if len(data) > 4:
            return real_write(fd, bytes(data[: len(data) // 2]))
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "write", half_then_full)
    with pytest.raises(OSError) as caught:
        write_atomic(target, b"new content\n")
    assert caught.value.filename == str(target) and caught.value.errno == 28
    with pytest.raises(OSError) as caught:
        append_whole(log, b'{"a": 2}\n')
    assert caught.value.filename == str(log)
    monkeypatch.undo()
    assert target.read_bytes() == b"old\n" and log.read_bytes() == b'{"a": 1}\n'
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.yaml", "log.jsonl"]


@pytest.fixture
def small_tmpfs(tmp_path):
    """A 128 kB tmpfs (root and a kernel that allows it), unmounted afterwards."""
    mount = tmp_path / "mnt"
    mount.mkdir()
    made = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=128k", "tmpfs", str(mount)], capture_output=True
    )
    if made.returncode != 0:
        pytest.skip("mounting a tmpfs is not permitted here")
    yield mount
    subprocess.run(["umount", str(mount)], check=True)


def test_a_full_disk_keeps_the_previous_checkpoint(one_epoch, small_tmpfs):
    run = small_tmpfs / "run"
    run.mkdir()
    for name in ("config.yaml", "checkpoint.pt", "metrics.jsonl"):
        shutil.copy(one_epoch / name, run / name)  # ~90 kB of 128: no room for a second copy
    line = _one_error_line(_resume(run, None, "output.tensorboard=false"))
    assert line == (
        f"pyrogen train: error: cannot write {run / 'checkpoint.pt'}: No space left on device; "
        + _intact_text(run, STEPS_PER_EPOCH)
    )
    assert (run / "checkpoint.pt").read_bytes() == (one_epoch / "checkpoint.pt").read_bytes()
    _no_temporaries(run)

"""Run folders are append-only history: where a run is written, and what it may replace.

* ``train`` writes a new run into a new (or empty) folder. A folder that already holds a run is
  refused with :class:`RunExistsError` (one line naming ``--resume DIR`` and ``--overwrite``);
  ``overwrite=True`` (``--overwrite``, ``output.overwrite: true``) clears the old run first.
  A folder that holds files but no run is never cleared: pyrogen deletes only what it wrote.
* Default names (``output.dir/<config stem>-<timestamp>``) never collide: a name that exists
  gets a suffix ``-2``, ``-3``, ..., and the folder is claimed with an exclusive ``mkdir`` so
  two runs started in the same second get two folders.
* Paths inside a run folder are stored relative to it (:func:`stored_config`), so a moved or
  copied folder evaluates, samples and resumes from its own files (:func:`resolved_config`).
"""

from __future__ import annotations

import os
import re
import shutil
from dataclasses import replace
from datetime import datetime
from pathlib import Path

from pyrogen.config import Config, ConfigError

CHECKPOINT = "checkpoint.pt"
BEST = "best.pt"
CONFIG = "config.yaml"
DATA = "data.npz"  # the user's arrays, when a run was trained from Python
#: files whose presence means a folder holds a run
RUN_FILES = (CONFIG, CHECKPOINT, BEST, "metrics.jsonl", "metrics.csv")


class RunExistsError(ConfigError):
    """``train`` was pointed at a folder that already holds a run (or other files)."""


def holds_run(folder: Path) -> bool:
    """Whether ``folder`` holds a pyrogen run (a config, a checkpoint or metrics)."""
    return any((folder / name).exists() for name in RUN_FILES)


def check_new_run_dir(run_dir: Path, overwrite: bool) -> None:
    """Refuse, before anything is written, a folder that a new run may not use: one holding a
    run (unless ``overwrite``), one holding other files, or a path that is a file."""
    if not run_dir.exists():
        return
    if not run_dir.is_dir():
        raise RunExistsError(f"{run_dir} is a file, not a run folder: choose another --run-dir")
    if holds_run(run_dir):
        if not overwrite:
            raise RunExistsError(
                f"{run_dir} already holds a run: continue it with pyrogen train --resume "
                f"{run_dir}, or replace it with --overwrite (output.overwrite=true; from Python "
                "overwrite=True), or choose another --run-dir / output.name"
            )
        return
    if any(run_dir.iterdir()):
        raise RunExistsError(
            f"{run_dir} holds files that are not a pyrogen run; a run is written into a new or "
            "empty folder: choose another --run-dir / output.name"
        )


def default_run_dir(cfg: Config, config_path: str | os.PathLike | None = None) -> Path:
    """``output.dir/output.name``, or ``output.dir/<config stem>-<timestamp>`` with a suffix
    ``-2``, ``-3``, ... when that name is taken (not created)."""
    if cfg.output.name is not None:
        return Path(cfg.output.dir) / cfg.output.name
    stem = Path(config_path).stem if config_path else cfg.name
    base = Path(cfg.output.dir) / f"{stem}-{datetime.now().strftime('%Y%m%d-%H%M%S')}"
    return _free_name(base)


def _free_name(path: Path) -> Path:
    """``path`` if free, else the next free ``<stem>-<timestamp>-k`` (k = 2, 3, ...)."""
    match = re.fullmatch(r"(.*-\d{8}-\d{6})(?:-(\d+))?", path.name)
    base, k = (match.group(1), int(match.group(2) or 1)) if match else (path.name, 1)
    while path.exists():
        k += 1
        path = path.with_name(f"{base}-{k}")
    return path


def claim_run_dir(run_dir: Path, overwrite: bool, default_name: bool) -> Path:
    """Create the run folder (clearing an old run's files when ``overwrite``) and check that
    it is writable; returns the folder used. A default name taken since it was chosen (another
    run started in the same second) moves on to the next free suffix. Errors are one-line
    :class:`ConfigError`\\ s naming the path."""
    try:
        if default_name:
            while True:
                try:
                    run_dir.mkdir(parents=True)
                    break
                except FileExistsError:
                    run_dir = _free_name(run_dir)
        else:
            check_new_run_dir(run_dir, overwrite)  # again: the folder may have changed
            if overwrite and run_dir.is_dir() and holds_run(run_dir):
                clear_run_dir(run_dir)
            run_dir.mkdir(parents=True, exist_ok=True)
        probe = run_dir / ".pyrogen-write-test"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise ConfigError(
            f"cannot write the run folder {run_dir}: {e.strerror or e} (set output.dir)"
        ) from None
    return run_dir


def clear_run_dir(run_dir: Path) -> None:
    """Delete everything in a folder that holds a run (``--overwrite``)."""
    for entry in run_dir.iterdir():
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()


def stored_config(cfg: Config, run_dir: Path) -> Config:
    """``cfg`` as a run folder stores it: a data file inside the folder by its relative path,
    and ``output.overwrite`` false (it is an action, not a property of the run: training from
    the run's own config.yaml must never clear the run)."""
    if cfg.output.overwrite:
        cfg = replace(cfg, output=replace(cfg.output, overwrite=False))
    path = cfg.data.path
    if path is None or not Path(path).is_absolute():
        return cfg
    try:
        relative = Path(path).resolve().relative_to(Path(run_dir).resolve())
    except ValueError:  # outside the run folder: kept as it is
        return cfg
    return replace(cfg, data=replace(cfg.data, path=relative.as_posix()))


def resolved_config(cfg: Config, run_dir: Path) -> Config:
    """A run folder's stored config with its files found where the folder is now: a relative
    ``data.path`` that names a file in the folder is read from there. (A run written before
    paths were stored relatively holds an absolute path to its own ``data.npz``: when that is
    gone, the folder's own copy is used; the recorded checksum still guards it.)"""
    d = cfg.data
    if d.path is None:
        return cfg
    path = Path(d.path)
    local = Path(run_dir) / path
    if not path.is_absolute() and local.exists():
        return replace(cfg, data=replace(d, path=str(local.resolve())))
    if d.name == "array" and path.is_absolute() and not path.exists():
        own = Path(run_dir) / DATA
        if own.exists():
            return replace(cfg, data=replace(d, path=str(own.resolve())))
    return cfg

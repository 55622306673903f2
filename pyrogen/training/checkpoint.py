"""Checkpoints: checksummed, written atomically, read without executing code.

A checkpoint is a ``dict`` of tensors and plain Python values (the learner's state, the loop's
position, every RNG state, and the config it belongs to). On disk it is
``torch.save({"format": 2, "sha256": h, "payload": b})`` where ``b`` is the ``torch.save``
bytes of the state and ``h`` their SHA-256, so a flipped byte anywhere is detected on load.

It is written to a temporary file in the same folder, flushed to disk and renamed over the old
one, so a write that fails half-way (a full disk, a killed process) leaves the previous
checkpoint intact; temporaries that a killed process left behind are removed by
:func:`remove_orphans` when the next run starts in that folder. It is read with
``torch.load(..., weights_only=True)``, which refuses anything but tensors and plain
containers: loading a checkpoint never runs code from it, and pyrogen never offers to load it
any other way.
"""

from __future__ import annotations

import hashlib
import io
import os
import pickle
import random
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pyrogen.training.output import write_atomic

FORMAT = 2
TMP_PREFIX = "."
TMP_SUFFIX = ".tmp"


class CheckpointError(RuntimeError):
    """A checkpoint file is missing, unreadable, corrupted or does not fit the run."""


def _serialise(state: dict[str, Any]) -> bytes:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    return buffer.getvalue()


def save_checkpoint(state: dict[str, Any], path: str | os.PathLike) -> None:
    """Write ``state`` to ``path`` with its checksum, atomically (temporary file, fsync,
    rename). Both ``torch.save`` calls write to memory, so an ``OSError`` (no space, a
    file-size limit, a read-only folder) comes from the file write alone, names ``path`` and
    leaves the previous file intact; torch's own errors are not disguised as disk faults."""
    path = Path(path)
    payload = _serialise(state)
    record = {"format": FORMAT, "sha256": hashlib.sha256(payload).hexdigest(), "payload": payload}
    write_atomic(path, _serialise(record), sync=True)


def remove_orphans(folder: str | os.PathLike, name: str = "checkpoint.pt") -> list[Path]:
    """Delete temporary files of interrupted writes of ``name`` in ``folder`` (a process
    killed while writing cannot clean up after itself); returns what was removed."""
    removed = []
    for p in Path(folder).glob(f"{TMP_PREFIX}{name}.*{TMP_SUFFIX}"):
        try:
            p.unlink()
            removed.append(p)
        except OSError:
            pass
    return removed


def _weights_only_load(source: Any, path: Path, map_location: Any) -> Any:
    try:
        return torch.load(source, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError:
        raise CheckpointError(
            f"{path}: refused: the file holds Python objects beyond tensors and plain values, "
            "which pyrogen never loads (a checkpoint could run code that way)"
        ) from None
    except (RuntimeError, EOFError, OSError, ValueError, zipfile.BadZipFile) as e:
        detail = str(e).splitlines()[0][:160] if str(e) else type(e).__name__
        raise CheckpointError(f"{path}: not a readable pyrogen checkpoint ({detail})") from None


def load_checkpoint(path: str | os.PathLike, map_location: Any = "cpu") -> dict[str, Any]:
    """Read a checkpoint with ``weights_only=True`` (no code is executed) and verify its
    checksum; a missing, truncated, corrupted or foreign file is a :class:`CheckpointError`."""
    path = Path(path)
    if path.is_dir():
        raise CheckpointError(f"{path} is a folder, not a checkpoint file")
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path}")
    record = _weights_only_load(path, path, "cpu")
    if not isinstance(record, dict) or record.get("format") != FORMAT:
        raise CheckpointError(
            f"{path}: not a pyrogen checkpoint of format {FORMAT} (written by another program "
            "or an older pyrogen)"
        )
    payload = record.get("payload")
    if not isinstance(payload, bytes) or not isinstance(record.get("sha256"), str):
        raise CheckpointError(f"{path}: not a pyrogen checkpoint (no payload and checksum)")
    if hashlib.sha256(payload).hexdigest() != record["sha256"]:
        raise CheckpointError(
            f"{path}: checksum mismatch: the file is corrupted (the last checkpoint written "
            "intact cannot be recovered from it)"
        )
    state = _weights_only_load(io.BytesIO(payload), path, map_location)
    if not isinstance(state, dict) or "learner" not in state:
        raise CheckpointError(f"{path}: not a pyrogen checkpoint (no 'learner' entry)")
    return state


def all_finite(state: Any) -> bool:
    """Whether every floating-point tensor in a nested state is finite."""
    if torch.is_tensor(state):
        return not state.is_floating_point() or bool(torch.isfinite(state).all())
    if isinstance(state, dict):
        return all(all_finite(v) for v in state.values())
    if isinstance(state, list | tuple):
        return all(all_finite(v) for v in state)
    if isinstance(state, float):
        return state == state and abs(state) != float("inf")
    return True


# Keys a resumed run may not change: they decide the networks' shapes or what the data are.
FIXED_SECTIONS = ("model", "guide")
FIXED_DATA_KEYS = (
    "name",
    "path",
    "checksum",
    "binarize",
    "dequantize",
    "logit_lambda",
    "standardize",
    "levels",
    "image_size",
    "valid_fraction",
    "test_fraction",
    "num_train",
    "num_valid",
    "num_test",
    "noise",
    "flatten",
)


def fixed_differences(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """``section.key (old -> new)`` for every architecture or data key that differs."""
    out = []
    for section in FIXED_SECTIONS:
        a, b = old.get(section, {}), new.get(section, {})
        for key in sorted(set(a) | set(b)):
            if a.get(key) != b.get(key):
                out.append(f"{section}.{key} ({a.get(key)!r} -> {b.get(key)!r})")
    a, b = old.get("data", {}), new.get("data", {})
    for key in FIXED_DATA_KEYS:
        if key == "checksum" and (a.get(key) is None or b.get(key) is None):
            continue
        if a.get(key) != b.get(key):
            out.append(f"data.{key} ({a.get(key)!r} -> {b.get(key)!r})")
    return out


def check_checkpoint_fits(state: dict[str, Any], cfg: Any, path: Path) -> None:
    """Refuse a checkpoint written for another family, architecture or data set."""
    saved = state.get("config")
    if state.get("family") != cfg.family or not isinstance(saved, dict):
        raise CheckpointError(
            f"{path} holds a {state.get('family')} run; the config describes a {cfg.family}"
        )
    diff = fixed_differences(saved, cfg.to_dict())
    if diff:
        raise CheckpointError(
            f"{path} was written for another configuration: "
            + "; ".join(diff[:4])
            + (f" and {len(diff) - 4} more" if len(diff) > 4 else "")
        )


def rng_state(
    data_generator: torch.Generator, noise_generator: torch.Generator | None = None
) -> dict[str, Any]:
    """Every random number generator a run draws from, as weights-only-loadable values
    (``noise``: a data-parallel rank's own generator of preprocessing noise)."""
    np_state = np.random.get_state()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "data": data_generator.get_state(),
        "python": random.getstate(),
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]],
    }
    if noise_generator is not None and noise_generator is not data_generator:
        state["noise"] = noise_generator.get_state()
    if torch.cuda.is_available():
        if _one_device_per_process():  # a data-parallel rank: its own GPU only
            state["cuda_current"] = torch.cuda.get_rng_state()
        else:
            state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(
    state: dict[str, Any],
    data_generator: torch.Generator,
    noise_generator: torch.Generator | None = None,
) -> None:
    """Restore what :func:`rng_state` captured."""
    torch.set_rng_state(state["torch"])
    data_generator.set_state(state["data"])
    if noise_generator is not None and "noise" in state:
        noise_generator.set_state(state["noise"])
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, *rest = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), *rest))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    if "cuda_current" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda_current"])


def _one_device_per_process() -> bool:
    from pyrogen.training.distributed import is_distributed

    return is_distributed()

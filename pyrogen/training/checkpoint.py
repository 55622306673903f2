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
import math
import os
import pickle
import random
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pyrogen.inference.base import Learner
from pyrogen.parallel.distributed import is_distributed
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


# ----------------------------------------------------------------- what a checkpoint holds
#: the sections of every checkpoint (a data-parallel run adds ``world_size`` and ``ranks``)
SECTIONS = {"family": str, "config": dict, "learner": dict, "loop": dict, "rng": dict}
MULTI_PROCESS_SECTIONS = ("world_size", "ranks")
LOOP_KEYS = ("epoch", "step", "position", "permutation")
#: the best-checkpoint bookkeeping (absent from checkpoints written before best.pt existed)
LOOP_OPTIONAL_KEYS = ("best", "best_step", "evals_since_best")
RNG_KEYS = ("torch", "data", "python", "numpy")  # always; "noise", "cuda", "cuda_current" may be
RNG_OPTIONAL_KEYS = ("noise", "cuda", "cuda_current")
MISFIT = "the file does not fit this run's config; was it edited or written by another version?"
EDITED = "was it edited or written by another version?"
MAX_NAMED = 3


def check_checkpoint_contents(
    state: dict[str, Any],
    path: str | os.PathLike,
    learner: Learner | None = None,
    *,
    resume: bool = False,
) -> None:
    """Refuse, with one :class:`CheckpointError` naming ``path``, the entry and what was
    expected, a checkpoint (any file :func:`load_checkpoint` read: ``checkpoint.pt``,
    ``best.pt``) whose contents do not fit, even with a valid checksum.

    Checked: the sections ``family``, ``config``, ``learner``, ``loop``, ``rng`` (and
    ``world_size`` with ``ranks`` for a data-parallel run, nothing else) and their types; the
    loop's entries, exactly ``epoch``, ``step``, ``position`` (non-negative ints) and
    ``permutation`` (a 1-D integer tensor or ``None``); with ``resume``, every random state
    ``set_rng_state`` restores. With ``learner`` (the one built from the run's config), the
    learner's state is compared with ``learner.state_dict()``: the same keys at every level,
    every tensor of the same shape and dtype, every floating-point value finite; optimiser
    state, empty before the first step, is checked against the shapes of the parameters it
    belongs to. Without ``learner`` only the layout is checked (cheap: callers check it before
    building, then again with the learner)."""
    path = Path(path)
    _check_layout(state, path, resume)
    if learner is not None:
        expected = learner.state_dict()
        optimizers = list(getattr(learner, "optimizers", []))
        shapes = [[tuple(p.shape) for g in o.param_groups for p in g["params"]] for o in optimizers]
        _LearnerCheck(path, shapes).compare(state["learner"], expected, "learner")
        _check_finite(state["learner"], "learner", path)


def _refuse(path: Path, text: str) -> CheckpointError:
    return CheckpointError(f"{path}: {text}")


def _names(keys: Any) -> str:
    keys = sorted(keys, key=str)
    text = ", ".join(repr(k) for k in keys[:MAX_NAMED])
    return text + (f" and {len(keys) - MAX_NAMED} more" if len(keys) > MAX_NAMED else "")


def _kind(value: Any) -> str:
    if torch.is_tensor(value):
        return f"a tensor of shape {tuple(value.shape)}"
    text = repr(value)
    return f"{type(value).__name__} {text if len(text) <= 30 else text[:27] + '...'}"


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _check_keys(found: Any, expected: Any, where: str, path: Path, hint: str) -> None:
    missing, unknown = set(expected) - set(found), set(found) - set(expected)
    if missing or unknown:
        parts = [f"lacks {_names(missing)}"] if missing else []
        entries = "entry" if len(unknown) == 1 else "entries"
        parts += [f"has unknown {entries} {_names(unknown)}"] if unknown else []
        raise _refuse(path, f"{where} {' and '.join(parts)} ({hint})")


def _check_layout(state: Any, path: Path, resume: bool) -> None:
    if not isinstance(state, dict):
        raise _refuse(path, f"not a pyrogen checkpoint (it holds {_kind(state)}, not sections)")
    multi = "world_size" in state or "ranks" in state
    sections = [*SECTIONS, *(MULTI_PROCESS_SECTIONS if multi else ())]
    wanted = f"a pyrogen checkpoint holds {', '.join(sections)}; {EDITED}"
    _check_keys(state, sections, "the checkpoint", path, wanted)
    for name, kind in SECTIONS.items():
        if not isinstance(state[name], kind):
            raise _refuse(
                path, f"section {name!r} is {_kind(state[name])}, expected a {kind.__name__}"
            )
    loop = state["loop"]
    exactly = (
        f"expected {', '.join(LOOP_KEYS)} (and optionally {', '.join(LOOP_OPTIONAL_KEYS)}); "
        + EDITED
    )
    optional = [k for k in LOOP_OPTIONAL_KEYS if k in loop]
    _check_keys(loop, [*LOOP_KEYS, *optional], "loop", path, exactly)
    for key in [*LOOP_KEYS[:3], *(k for k in optional if k == "evals_since_best")]:
        if not _is_count(loop[key]):
            raise _refuse(
                path, f"loop.{key} is {_kind(loop[key])}, expected an int >= 0 ({EDITED})"
            )
    if loop.get("best_step") is not None and not _is_count(loop["best_step"]):
        raise _refuse(path, f"loop.best_step is {_kind(loop['best_step'])}, expected an int >= 0")
    best = loop.get("best")
    if best is not None and (not isinstance(best, float) or not math.isfinite(best)):
        raise _refuse(path, f"loop.best is {_kind(best)}, expected a finite number or None")
    perm = loop["permutation"]
    if perm is not None and not (
        torch.is_tensor(perm)
        and perm.dim() == 1
        and not perm.is_floating_point()
        and not perm.is_complex()
        and perm.dtype != torch.bool
    ):
        raise _refuse(
            path, f"loop.permutation is {_kind(perm)}, expected a 1-D integer tensor or None"
        )
    if multi:
        world, ranks = state["world_size"], state["ranks"]
        if not (_is_count(world) and world >= 2):
            raise _refuse(path, f"world_size is {_kind(world)}, expected an int >= 2")
        if not isinstance(ranks, list) or len(ranks) != world:
            raise _refuse(path, f"ranks is {_kind(ranks)}, expected a list of {world} entries")
        for i, own in enumerate(ranks):
            if not isinstance(own, dict) or set(own) != {"rng", "learner"}:
                raise _refuse(path, f"ranks.{i} is {_kind(own)}, expected rng and learner")
            if not isinstance(own["learner"], dict):
                raise _refuse(path, f"ranks.{i}.learner is {_kind(own['learner'])}, not a dict")
            _check_finite(own["learner"], f"ranks.{i}.learner", path)
            if resume:
                _check_rng(own["rng"], f"ranks.{i}.rng", path)
    if resume:
        _check_rng(state["rng"], "rng", path)


def _check_rng(rng: Any, where: str, path: Path) -> None:
    """The states :func:`set_rng_state` restores: torch's and the data's generators (byte
    tensors of the CPU generator's size), Python's ``(version, 625 ints, gauss)`` and numpy's
    ``[name, 624 keys, pos, has_gauss, gauss]``."""
    if not isinstance(rng, dict):
        raise _refuse(path, f"{where} is {_kind(rng)}, expected a dict of random states")
    _check_keys(
        {k: v for k, v in rng.items() if k not in RNG_OPTIONAL_KEYS},
        RNG_KEYS,
        where,
        path,
        f"expected {', '.join(RNG_KEYS)} (and optionally {', '.join(RNG_OPTIONAL_KEYS)})",
    )
    size = torch.get_rng_state().numel()
    for key in ("torch", "data", "noise"):
        value = rng.get(key, torch.get_rng_state())
        if not (torch.is_tensor(value) and value.dtype == torch.uint8 and value.numel() == size):
            raise _refuse(
                path, f"{where}.{key} is {_kind(value)}, expected a generator state of {size} bytes"
            )
    python = rng["python"]
    if not (
        isinstance(python, list | tuple)
        and len(python) == 3
        and isinstance(python[0], int)
        and isinstance(python[1], list | tuple)
        and len(python[1]) == 625
        and all(isinstance(v, int) for v in python[1])
        and (python[2] is None or isinstance(python[2], float))
    ):
        raise _refuse(path, f"{where}.python is {_kind(python)}, expected Python's random state")
    numpy = rng["numpy"]
    if not (
        isinstance(numpy, list | tuple)
        and len(numpy) == 5
        and isinstance(numpy[0], str)
        and torch.is_tensor(numpy[1])
        and numpy[1].shape == (624,)
        and not numpy[1].is_floating_point()
        and all(isinstance(v, int) for v in numpy[2:4])
        and isinstance(numpy[4], float | int)
    ):
        raise _refuse(path, f"{where}.numpy is {_kind(numpy)}, expected numpy's random state")
    cuda = rng.get("cuda", [])
    if not (isinstance(cuda, list) and all(torch.is_tensor(v) for v in cuda)):
        raise _refuse(path, f"{where}.cuda is {_kind(cuda)}, expected a list of tensors")
    if "cuda_current" in rng and not torch.is_tensor(rng["cuda_current"]):
        raise _refuse(path, f"{where}.cuda_current is {_kind(rng['cuda_current'])}, not a tensor")


def _is_optimizer_state(value: Any) -> bool:
    return isinstance(value, dict) and set(value) == {"state", "param_groups"}


class _LearnerCheck:
    """Compares a checkpoint's learner state with a freshly built learner's, recursively,
    naming entries by their dotted path (``learner.module.decoder.0.weight``)."""

    def __init__(self, path: Path, optimizer_shapes: list[list[tuple[int, ...]]]) -> None:
        self.path = path
        self.optimizer_shapes = optimizer_shapes  # per optimiser, its parameters' shapes
        self.optimizers_seen = 0

    def refuse(self, where: str, text: str) -> CheckpointError:
        return _refuse(self.path, f"{where} {text} ({MISFIT})")

    def compare(self, found: Any, expected: Any, where: str) -> None:
        if _is_optimizer_state(expected):
            index = self.optimizers_seen
            self.optimizers_seen += 1
            shapes = self.optimizer_shapes[index] if index < len(self.optimizer_shapes) else None
            self.compare_optimizer(found, expected, where, shapes)
        elif torch.is_tensor(expected):
            if not torch.is_tensor(found):
                raise self.refuse(where, f"is {_kind(found)}, the run's model needs a tensor")
            if found.shape != expected.shape:
                raise self.refuse(
                    where,
                    f"has shape {tuple(found.shape)}, the run's model needs "
                    f"{tuple(expected.shape)}",
                )
            if found.dtype != expected.dtype:
                raise self.refuse(
                    where, f"has dtype {found.dtype}, the run's model needs {expected.dtype}"
                )
        elif isinstance(expected, dict):
            if not isinstance(found, dict):
                raise self.refuse(where, f"is {_kind(found)}, expected a dict")
            if expected:  # an empty dict (baselines, scaler states) fills during training
                _check_keys(found, expected, where, self.path, MISFIT)
                for key, value in expected.items():
                    self.compare(found[key], value, f"{where}.{key}")
            elif not all(isinstance(k, str) for k in found):
                raise self.refuse(where, "has keys that are not names")
        elif isinstance(expected, list | tuple):
            if not isinstance(found, list | tuple) or len(found) != len(expected):
                raise self.refuse(
                    where, f"is {_kind(found)}, expected a list of {len(expected)} entries"
                )
            for i, (a, b) in enumerate(zip(found, expected, strict=True)):
                self.compare(a, b, f"{where}.{i}")
        elif expected is None:  # state created lazily (a gradient scaler's): any plain value
            pass
        else:
            self.compare_plain(found, expected, where)

    def compare_plain(self, found: Any, expected: Any, where: str) -> None:
        if isinstance(expected, bool) or isinstance(expected, str):
            ok = type(found) is type(expected)
        elif isinstance(expected, int):
            ok = isinstance(found, int) and not isinstance(found, bool)
        elif isinstance(expected, float):
            ok = isinstance(found, float | int) and not isinstance(found, bool)
        else:
            ok = type(found) is type(expected)
        if not ok:
            raise self.refuse(where, f"is {_kind(found)}, expected a {type(expected).__name__}")

    def compare_optimizer(
        self, found: Any, expected: dict, where: str, shapes: list[tuple[int, ...]] | None
    ) -> None:
        """``param_groups``: as many groups, each with the same parameter ids and an ``lr``
        (torch fills in other options a version lacks); ``state``: per parameter id, values
        of that parameter's shape (or scalars, such as Adam's ``step``)."""
        if not isinstance(found, dict):
            raise self.refuse(where, f"is {_kind(found)}, expected an optimiser's state")
        _check_keys(found, expected, where, self.path, MISFIT)
        groups, wanted = found["param_groups"], expected["param_groups"]
        if not isinstance(groups, list) or len(groups) != len(wanted):
            raise self.refuse(
                f"{where}.param_groups",
                f"is {_kind(groups)}, the run's optimiser has {len(wanted)} group(s)",
            )
        ids: list[Any] = []
        for i, (group, want) in enumerate(zip(groups, wanted, strict=True)):
            at = f"{where}.param_groups.{i}"
            if not isinstance(group, dict) or "params" not in group or "lr" not in group:
                raise self.refuse(at, f"is {_kind(group)}, expected a dict with params and lr")
            if group["params"] != want["params"]:
                raise self.refuse(
                    f"{at}.params",
                    f"lists {len(group['params'])} parameters, the run's optimiser has "
                    f"{len(want['params'])}",
                )
            if not isinstance(group["lr"], float | int) or isinstance(group["lr"], bool):
                raise self.refuse(f"{at}.lr", f"is {_kind(group['lr'])}, expected a number")
            ids += want["params"]
        per_param = found["state"]
        if not isinstance(per_param, dict):
            raise self.refuse(f"{where}.state", f"is {_kind(per_param)}, expected a dict")
        if expected["state"]:  # a learner whose optimiser already stepped: compare like-for-like
            self.compare(per_param, expected["state"], f"{where}.state")
            return
        unknown = set(per_param) - set(ids)
        if unknown:
            raise self.refuse(f"{where}.state", f"has unknown parameter ids {_names(unknown)}")
        known = shapes if shapes is not None and len(shapes) == len(ids) else None
        for pid, values in per_param.items():
            at = f"{where}.state.{pid}"
            if not isinstance(values, dict):
                raise self.refuse(at, f"is {_kind(values)}, expected a dict")
            shape = known[ids.index(pid)] if known is not None else None
            for name, value in values.items():
                if torch.is_tensor(value) and value.dim() > 0 and shape is not None:
                    if tuple(value.shape) != shape:
                        raise self.refuse(
                            f"{at}.{name}",
                            f"has shape {tuple(value.shape)}, the run's model needs {shape}",
                        )


def _check_finite(state: Any, where: str, path: Path) -> None:
    """Refuse the first floating-point tensor or float of a nested state that is NaN or
    infinite."""
    if torch.is_tensor(state):
        if state.is_floating_point() and not bool(torch.isfinite(state).all()):
            raise _refuse(
                path,
                f"{where} holds non-finite values (NaN or inf): the weights are unusable "
                "(a diverged run is never checkpointed; was the file edited?)",
            )
    elif isinstance(state, dict):
        for key, value in state.items():
            _check_finite(value, f"{where}.{key}", path)
    elif isinstance(state, list | tuple):
        for i, value in enumerate(state):
            _check_finite(value, f"{where}.{i}", path)
    elif isinstance(state, float) and not math.isfinite(state):
        raise _refuse(path, f"{where} is {state}, not a finite number")


# Keys a resumed run may not change: they decide the networks' shapes or what the data are.
FIXED_SECTIONS = ("model", "guide")
FIXED_DATA_KEYS = (
    "name",
    "path",
    "context",
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
        if is_distributed():  # a data-parallel rank: its own GPU only
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

"""A run's metrics: one JSON object a line (``metrics.jsonl``) or a long CSV table."""

from __future__ import annotations

import csv
import io
import itertools
import json
import math
import os
import socket
import struct
import time
from pathlib import Path
from typing import Any

import numpy as np

from pyrogen.training.output import append_whole


def _finite_or_none(value: Any) -> Any:
    """Strict JSON has no NaN or infinity: such values are written as ``null``."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


class MetricsWriter:
    """Appends metric records to ``metrics.jsonl`` (one JSON object a line) or
    ``metrics.csv`` (long format: step, epoch, split, name, value).

    ``epoch`` is the number of the epoch a record belongs to, counted from 1, for training
    and validation rows alike. A record is appended whole or not at all
    (:func:`~pyrogen.training.output.append_whole`): a write that fails (full disk, file-size
    limit) raises an ``OSError`` naming the file and leaves no torn line behind."""

    def __init__(self, run_dir: Path, fmt: str) -> None:
        self.fmt = fmt
        self.path = run_dir / f"metrics.{fmt}"

    def write(self, step: int, epoch: int, split: str, metrics: dict[str, float]) -> None:
        if self.fmt == "jsonl":
            record = {"step": step, "epoch": epoch, "split": split}
            record.update({k: _finite_or_none(v) for k, v in metrics.items()})
            text = json.dumps(record, allow_nan=False) + "\n"
        else:
            buffer = io.StringIO()
            w = csv.writer(buffer)
            if not self.path.exists() or self.path.stat().st_size == 0:
                w.writerow(["step", "epoch", "split", "name", "value"])
            for name, value in metrics.items():
                w.writerow([step, epoch, split, name, value])
            text = buffer.getvalue()
        append_whole(self.path, text.encode())


class TensorBoardLog:
    """TensorBoard event files in ``run_dir/tensorboard``: every metric line as scalars
    (``train/loss``, ``valid/elbo``, ...) and the samples figure at each evaluation. Open with
    ``tensorboard --logdir runs``.

    Events are written in the caller's thread, each record whole before the call returns
    (``SummaryWriter`` writes from a thread of its own, whose failure prints a traceback and
    surfaces calls later): a full disk or a file-size limit is an ``OSError`` naming the event
    file, raised by the call that could not write. The file is created at the first event."""

    def __init__(self, run_dir: Path) -> None:
        self.folder = run_dir / "tensorboard"
        self.path: Path | None = None
        self._fd: int | None = None

    def _open(self) -> int:
        from tensorboard.compat.proto.event_pb2 import Event

        try:
            self.folder.mkdir(exist_ok=True)
        except OSError as e:
            raise OSError(e.errno, e.strerror, str(self.folder)) from None
        stem = f"events.out.tfevents.{int(time.time()):010d}.{socket.gethostname()}.{os.getpid()}"
        for index in itertools.count():  # a new file for every run in this process
            path = self.folder / f"{stem}.{index}"
            try:
                self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
            except FileExistsError:
                continue
            except OSError as e:
                raise OSError(e.errno, e.strerror, str(path)) from None
            self.path = path
            break
        self._event(Event(wall_time=time.time(), file_version="brain.Event:2"))
        return self._fd

    def _event(self, event: Any) -> None:
        """One TFRecord: length, its masked CRC-32C, the serialised event, its CRC."""
        from tensorboard.compat.tensorflow_stub.pywrap_tensorflow import masked_crc32c

        fd = self._open() if self._fd is None else self._fd
        data = event.SerializeToString()
        header = struct.pack("<Q", len(data))
        record = (
            header
            + struct.pack("<I", masked_crc32c(header))
            + data
            + struct.pack("<I", masked_crc32c(data))
        )
        view = memoryview(record)
        try:
            while view:
                view = view[os.write(fd, view) :]
        except OSError as e:
            raise OSError(e.errno, e.strerror, str(self.path)) from None

    def _summary(self, summary: Any, step: int) -> None:
        from tensorboard.compat.proto.event_pb2 import Event

        self._event(Event(wall_time=time.time(), step=step, summary=summary))

    def write(self, step: int, split: str, metrics: dict[str, float]) -> None:
        from torch.utils.tensorboard.summary import scalar

        for name, value in metrics.items():
            if isinstance(value, int | float) and math.isfinite(value):
                self._summary(scalar(f"{split}/{name}", value), step)

    def image(self, tag: str, image: Any, step: int) -> None:
        """An ``(H, W)`` grey or ``(H, W, 3)`` colour array in [0, 1]."""
        from torch.utils.tensorboard.summary import image as image_summary

        fmt = "HW" if image.ndim == 2 else "HWC"
        self._summary(image_summary(tag, image, dataformats=fmt), step)

    def figure(self, tag: str, figure: Any, step: int) -> None:
        """A matplotlib figure, drawn to RGB pixels."""
        # here, not at the top: only TensorBoard runs draw, and `import pyrogen` stays off Agg
        from matplotlib.backends.backend_agg import FigureCanvasAgg

        canvas = FigureCanvasAgg(figure)
        canvas.draw()
        pixels = np.asarray(canvas.buffer_rgba())[..., :3]
        self.image(tag, pixels, step)

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def read_metrics(run_dir: str | os.PathLike) -> list[dict[str, Any]]:
    """The records of a run's ``metrics.jsonl`` (or ``metrics.csv``, regrouped)."""
    run_dir = Path(run_dir)
    if (run_dir / "metrics.jsonl").exists():
        lines = (run_dir / "metrics.jsonl").read_text().splitlines()
        return [json.loads(line) for line in lines if line.strip()]
    records: dict[tuple, dict[str, Any]] = {}
    path = run_dir / "metrics.csv"
    if not path.exists():
        return []
    with path.open() as f:
        for row in csv.DictReader(f):
            key = (int(row["step"]), int(row["epoch"]), row["split"])
            rec = records.setdefault(key, {"step": key[0], "epoch": key[1], "split": key[2]})
            rec[row["name"]] = float(row["value"])
    return list(records.values())

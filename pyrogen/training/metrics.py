"""A run's metrics: one JSON object a line (``metrics.jsonl``) or a long CSV table."""

from __future__ import annotations

import csv
import json
import math
import os
from pathlib import Path
from typing import Any


def _finite_or_none(value: Any) -> Any:
    """Strict JSON has no NaN or infinity: such values are written as ``null``."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


class MetricsWriter:
    """Appends metric records to ``metrics.jsonl`` (one JSON object a line) or
    ``metrics.csv`` (long format: step, epoch, split, name, value).

    ``epoch`` is the number of the epoch a record belongs to, counted from 1, for training
    and validation rows alike."""

    def __init__(self, run_dir: Path, fmt: str) -> None:
        self.fmt = fmt
        self.path = run_dir / f"metrics.{fmt}"
        if fmt == "csv" and not self.path.exists():
            with self.path.open("w", newline="") as f:
                csv.writer(f).writerow(["step", "epoch", "split", "name", "value"])

    def write(self, step: int, epoch: int, split: str, metrics: dict[str, float]) -> None:
        with self.path.open("a", newline="") as f:
            if self.fmt == "jsonl":
                record = {"step": step, "epoch": epoch, "split": split}
                record.update({k: _finite_or_none(v) for k, v in metrics.items()})
                f.write(json.dumps(record, allow_nan=False) + "\n")
            else:
                w = csv.writer(f)
                for name, value in metrics.items():
                    w.writerow([step, epoch, split, name, value])


def tensorboard_available() -> bool:
    try:
        from torch.utils.tensorboard import SummaryWriter  # noqa: F401
    except ImportError:
        return False
    return True


class TensorBoardLog:
    """TensorBoard event files in ``run_dir/tensorboard``: every metric line as scalars
    (``train/loss``, ``valid/elbo``, ...) and the samples figure at each evaluation. Open with
    ``tensorboard --logdir runs``."""

    def __init__(self, run_dir: Path) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(run_dir / "tensorboard"))

    def write(self, step: int, split: str, metrics: dict[str, float]) -> None:
        for name, value in metrics.items():
            if isinstance(value, int | float) and math.isfinite(value):
                self.writer.add_scalar(f"{split}/{name}", value, step)

    def image(self, tag: str, image: Any, step: int) -> None:
        """An ``(H, W)`` grey or ``(H, W, 3)`` colour array in [0, 1]."""
        fmt = "HW" if image.ndim == 2 else "HWC"
        self.writer.add_image(tag, image, step, dataformats=fmt)

    def figure(self, tag: str, figure: Any, step: int) -> None:
        self.writer.add_figure(tag, figure, step)

    def close(self) -> None:
        self.writer.flush()
        self.writer.close()


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

"""What every reproduction shares: the shared data folder, the hardware line, and the
results JSON written next to the script."""

from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
DATA = os.environ.get("PYROGEN_SHARED_DATA", str(ROOT.parent / "shared" / "data"))


def hardware() -> dict[str, Any]:
    """Where a number came from: CPU model, core count, GPU if any (each result records the
    torch threads it ran with)."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "torch": torch.__version__,
    }


def write_result(name: str, result: dict[str, Any]) -> Path:
    """``bench/reproduce/results/<name>.json`` (strict JSON: no NaN)."""
    out = HERE / "results" / f"{name}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    result = {"written": time.strftime("%Y-%m-%d %H:%M:%S"), "hardware": hardware(), **result}
    out.write_text(json.dumps(result, indent=2, allow_nan=False) + "\n")
    print(f"wrote {out}", flush=True)
    return out


def estimate(report: dict[str, Any], name: str) -> dict[str, Any]:
    """One estimate of a :func:`pyrogen.evaluate` report: mean, stderr, n."""
    e = report["estimates"][name]
    return {k: e[k] for k in ("mean", "stderr", "n") if k in e}

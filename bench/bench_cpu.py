"""CPU execution: pyrogen's default thread setting against every fixed setting, on an idle
machine and beside a CPU load, and torch.compile's speed-up or slow-down per family.

Each measurement is a fresh ``python -m pyrogen train CONFIG train.max_steps=S`` process
(``train.eval_every=0``, no TensorBoard, figures skipped by a tiny sample count); its
training time is read from the run's ``metrics.jsonl`` (the ``summary`` row, which also
records the thread count ``auto`` chose). Settings: ``train.num_threads`` = 1, 2 and ``auto``
(the default). Conditions: ``idle``, and ``load``: one busy process (a Python loop) that the
bench starts before and stops after each measurement, keeping one core busy as a browser, a
notebook or a second training would. Settings are interleaved within each repeat, so a change
in the machine's state hits them alike; each cell is the median over ``--repeats``.

It prints, per config and condition, ms per step of each setting, the ratio default / best,
and whether the default is within 1.2x of the best; then (``--compile``) the time with
``train.compile=true`` (steady state, and the compile time paid on the first steps).

    python bench/bench_cpu.py --steps 300 --repeats 3 --compile
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ["flow_moons", "gan_toy", "vae_digits"]
SETTINGS = ["1", "2", "auto"]


def busy_loop() -> subprocess.Popen:
    """One process spinning on a core until killed."""
    return subprocess.Popen([sys.executable, "-c", "while True: pass"])


def train_seconds(config: str, steps: int, threads: str, extra: list[str]) -> tuple[float, int]:
    """(seconds of training, threads used) of one fresh training process."""
    with tempfile.TemporaryDirectory() as out:
        cmd = [
            sys.executable,
            "-m",
            "pyrogen",
            "train",
            str(ROOT / "configs" / f"{config}.yaml"),
            f"train.max_steps={steps}",
            "train.eval_every=0",
            "train.checkpoint_every=0",
            f"train.num_threads={threads}",
            "output.tensorboard=false",
            "output.num_samples=4",
            "--run-dir",
            out,
            "--quiet",
            *extra,
        ]
        subprocess.run(cmd, check=True, capture_output=True, cwd=ROOT)
        rows = [json.loads(x) for x in (Path(out) / "metrics.jsonl").read_text().splitlines()]
        (summary,) = [r for r in rows if r["split"] == "summary"]
        return summary["train_seconds"], summary["num_threads"]


def measure(config, steps, threads, condition, extra=()) -> tuple[float, int]:
    load = busy_loop() if condition == "load" else None
    try:
        if load is not None:
            time.sleep(1.0)  # let the load start before auto looks at the machine
        return train_seconds(config, steps, threads, list(extra))
    finally:
        if load is not None:
            load.kill()
            load.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--configs", nargs="+", default=CONFIGS)
    parser.add_argument("--conditions", nargs="+", default=["idle", "load"])
    parser.add_argument("--compile", action="store_true", help="also time train.compile=true")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "bench_cpu.json"))
    args = parser.parse_args()
    print(f"cores: {os.cpu_count()}, steps per run: {args.steps}, repeats: {args.repeats}")
    results: dict = {"steps": args.steps, "cells": {}}
    for config in args.configs:
        for condition in args.conditions:
            times: dict[str, list[float]] = {s: [] for s in SETTINGS}
            chosen = set()
            for _ in range(args.repeats):
                for setting in SETTINGS:
                    seconds, used = measure(config, args.steps, setting, condition)
                    times[setting].append(seconds)
                    if setting == "auto":
                        chosen.add(used)
            ms = {s: 1000 * statistics.median(v) / args.steps for s, v in times.items()}
            best = min(ms[s] for s in ("1", "2"))
            ratio = ms["auto"] / best
            verdict = "ok" if ratio <= 1.2 else "SLOWER than 1.2x best"
            print(
                f"{config:<11} {condition:<5} ms/step: 1 thread {ms['1']:7.2f}, 2 threads "
                f"{ms['2']:7.2f}, auto ({'/'.join(map(str, sorted(chosen)))}) {ms['auto']:7.2f}"
                f"  default/best {ratio:.2f} {verdict}"
            )
            results["cells"][f"{config}/{condition}"] = {"ms_per_step": ms, "ratio": ratio}
        if args.compile:
            plain, compiled, first = [], [], []
            for _ in range(args.repeats):
                plain.append(measure(config, args.steps, "auto", "idle")[0])
                long_run = measure(config, 2 * args.steps, "auto", "idle", ["train.compile=true"])
                short_run = measure(config, args.steps, "auto", "idle", ["train.compile=true"])
                compiled.append(long_run[0] - short_run[0])  # the second half: steady state
                first.append(short_run[0])
            p = 1000 * statistics.median(plain) / args.steps
            c = 1000 * statistics.median(compiled) / args.steps
            overhead = statistics.median(first) - statistics.median(plain)
            print(
                f"{config:<11} compile: {p:7.2f} -> {c:7.2f} ms/step steady ({p / c:.2f}x), "
                f"compiling costs {overhead:.1f} s"
            )
            results["cells"][f"{config}/compile"] = {
                "plain_ms": p,
                "compiled_ms": c,
                "speedup": p / c,
                "compile_seconds": overhead,
            }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=2))
    print(f"results in {args.out}")


if __name__ == "__main__":
    main()

"""``pyrogen compare``: one model of each family on the same data and budget, side by side.

For each family the table gives: parameters, training time, time to draw 1,000 samples,
the test log-likelihood by every estimator that applies (exact, importance-sampled, ELBO,
Parzen) and sample-quality scores that need no downloaded network (kernel MMD² and a
Fréchet distance in the features of a classifier pyrogen trains on the same data, or in the
data space for unlabelled 2-D data). It also draws one figure with the families' samples.
"""

from __future__ import annotations

import csv
import json
import math
import os
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from matplotlib.figure import Figure

from pyrogen.evaluation.plots import image_grid
from pyrogen.evaluation.report import evaluate_run, has_bounds
from pyrogen.evaluation.sample_metrics import sample_quality, train_feature_classifier
from pyrogen.progress import line, steps
from pyrogen.training import TrainedRun, load, read_metrics, train
from pyrogen.workflows.compare_config import CompareConfig

COLUMNS = [
    ("family", "family"),
    ("parameters", "parameters"),
    ("train_seconds", "train time (s)"),
    ("sample_seconds_per_1000", "1,000 samples (s)"),
    ("exact", "exact log p(x), nats"),
    ("bits_per_dim", "bits/dim"),
    ("importance_sampled", "IS log p(x), nats"),
    ("elbo", "ELBO, nats"),
    ("parzen", "Parzen log p̂(x), nats"),
    ("mmd2", "MMD² of samples"),
    ("frechet", "Fréchet of samples"),
    ("conditional_accuracy", "conditional accuracy"),
    ("classifier_accuracy", "its ceiling (real data)"),
]


def time_sampling(run: TrainedRun, n: int = 1000, repeats: int = 3) -> float:
    """Best-of-``repeats`` wall time to draw ``n`` samples (synchronised on CUDA)."""
    best = float("inf")
    for _ in range(repeats):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        start = time.perf_counter()
        run.sample(n)
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - start)
    return best


def _train_seconds(run: TrainedRun) -> float:
    summaries = [r for r in read_metrics(run.run_dir) if r["split"] == "summary"]
    return float(sum(r.get("train_seconds", 0.0) for r in summaries))


def compare(
    cc: CompareConfig,
    out_dir: str | os.PathLike,
    run_dirs: dict[str, str] | None = None,
    quiet: bool = True,
) -> list[dict[str, Any]]:
    """Train (or load from ``run_dirs``) each family's model, evaluate them alike, and write
    ``compare.md``, ``compare.csv``, ``compare.json`` and ``samples.png`` into ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    run_dirs = run_dirs or {}
    runs: dict[str, TrainedRun] = {}
    for family, cfg in cc.runs.items():
        if family in run_dirs:
            line(f"compare: loading the {family} run {run_dirs[family]}", quiet)
            runs[family] = load(run_dirs[family])
        else:
            line(f"compare: training the {family}", quiet)
            runs[family] = train(cfg, out / family, quiet=quiet)
    first = next(iter(runs.values()))
    ds = first.dataset
    ev = cc.evaluation
    split = ds.split(ev.split)
    # a seeded random subset: file splits can be ordered (binarized MNIST by class, the MNIST
    # test set by writer population), so the first N rows are not a sample of the split
    pick = torch.randperm(split.shape[0], generator=torch.Generator().manual_seed(0))
    real = split[pick[: ev.quality_samples].to(split.device)]
    classifier = None
    if ds.labels("train") is not None and ds.kind == "image":
        classifier = train_feature_classifier(
            ds.train.reshape(ds.train.shape[0], -1),
            ds.labels("train"),
            ds.num_classes,
            seed=0,
            device=ds.train.device,
        )
    rows = []
    samples = {}
    for family, run in steps(runs.items(), "compare: evaluating", quiet=quiet):
        # extra bounds (evaluation.bounds) are a VAE's: the other families skip them
        bounds = has_bounds(run.model)
        result = evaluate_run(run, ev if bounds else replace(ev, bounds=[]))
        torch.manual_seed(0)
        draw = run.sample_means if ev.samples == "means" else run.sample
        fake = draw(real.shape[0])
        samples[family] = fake[:64] if ds.kind == "image" else fake
        quality = sample_quality(
            real.reshape(real.shape[0], -1), fake.reshape(fake.shape[0], -1), classifier
        )
        row: dict[str, Any] = {
            "family": family,
            "parameters": result["parameters"],
            "train_seconds": _train_seconds(run),
            "sample_seconds_per_1000": time_sampling(run),
            **{k: v for k, v in quality.items()},
        }
        for name, est in result["estimates"].items():
            row[name] = est
        rows.append(row)
    write_tables(rows, out, ev.samples)
    save_side_by_side(samples, ds, out / "samples.png", ev.samples)
    return rows


def _finite(value: Any) -> Any:
    """Strict JSON: NaN and infinities as null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value


def _cell(value: Any) -> str:
    if value is None:
        return "—"
    if isinstance(value, dict):
        if value.get("stderr") is None:
            return f"{value['mean']:.2f}"
        return f"{value['mean']:.2f} ± {value['stderr']:.2f}"
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def format_markdown(rows: list[dict[str, Any]]) -> str:
    """The comparison as a Markdown table (— where an estimator does not apply)."""
    cols = [(k, h) for k, h in COLUMNS if any(r.get(k) is not None for r in rows)]
    lines = ["| " + " | ".join(h for _, h in cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        lines.append("| " + " | ".join(_cell(r.get(k)) for k, _ in cols) + " |")
    return "\n".join(lines)


LEGEND = (
    "Likelihoods are in nats per example of the test split, in the data's stored space (for "
    "images: dequantised intensities in [0, 1], a density); bits/dim from the same density. "
    "Parzen, MMD² (lower is better) and Fréchet (lower is better) score {kind}, not the "
    "likelihood."
)


def write_tables(rows: list[dict[str, Any]], out: Path, kind: str = "draws") -> None:
    what = "draws x ~ p(x)" if kind == "draws" else "decoder means (VAE) or draws"
    note = LEGEND.format(kind=f"{len(rows)} models' {what}")
    (out / "compare.md").write_text(format_markdown(rows) + "\n\n" + note + "\n")
    payload = {"samples": kind, "note": note, "rows": rows}
    (out / "compare.json").write_text(json.dumps(_finite(payload), indent=2, allow_nan=False))
    with (out / "compare.csv").open("w", newline="") as f:
        w = csv.writer(f)
        header = []
        for key, _ in COLUMNS:
            if any(isinstance(r.get(key), dict) for r in rows):
                header += [key, f"{key}_stderr"]
            else:
                header.append(key)
        w.writerow(header)
        for r in rows:
            line = []
            for key, _ in COLUMNS:
                v = r.get(key)
                if any(isinstance(rr.get(key), dict) for rr in rows):
                    line += ["", ""] if v is None else [v["mean"], v["stderr"]]
                else:
                    line.append("" if v is None else v)
            w.writerow(line)


def save_side_by_side(
    samples: dict[str, torch.Tensor], ds: Any, path: Path, kind: str = "draws"
) -> None:
    """One figure: each family's samples in a column (image grids, or 2-D scatters over the
    test data on one shared scale, with one legend)."""
    what = "samples x ~ p(x)" if kind == "draws" else "samples (VAE: decoder means E[x | z])"
    fig = Figure(figsize=(4 * len(samples), 4.6), layout="constrained")
    axes = fig.subplots(1, len(samples), squeeze=False, sharex=True, sharey=True)
    handles = []
    for ax, (family, x) in zip(axes[0], samples.items(), strict=True):
        if ds.kind == "image":
            grid = image_grid(x, ds.image_shape, nrow=8)
            ax.imshow(grid, cmap="gray", vmin=0, vmax=1, interpolation="nearest")
            ax.axis("off")
        else:
            d = ds.test[:2000].cpu()
            real = ax.scatter(d[:, 0], d[:, 1], s=2, alpha=0.2, color="tab:blue")
            s = x.detach().cpu()
            fake = ax.scatter(s[:, 0], s[:, 1], s=3, alpha=0.5, color="tab:orange")
            handles = [real, fake]
            lim = float(d.abs().max()) * 1.15
            ax.set_xlim(-lim, lim)
            ax.set_ylim(-lim, lim)
            ax.set_aspect("equal")
            ax.set_xlabel("$x_1$")
        ax.set_title(family)
    if handles:
        axes[0][0].set_ylabel("$x_2$")
        fig.legend(
            handles, ["test data", "model samples"], loc="outside lower center", ncol=2,
            markerscale=5, frameon=False,
        )  # fmt: skip
    fig.suptitle(f"{what}, same data and budget for every family")
    fig.savefig(path, dpi=100, bbox_inches="tight")

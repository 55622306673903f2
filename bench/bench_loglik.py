"""Importance-sampled log p(x) and Parzen windows against the machine's matrix-multiply rate.

IS log p(x) of the binarized-MNIST VAE (``configs/vae_binarized_mnist.yaml``: 784-500-500-50,
tanh, Bernoulli decoder) with K = 5000 spends nearly all its arithmetic in the decoder, run
on N·K latent draws: 2·(50·500 + 500·500 + 500·784) FLOP per draw (2·m·n·k per matrix
product), plus the encoder once per example and particle chunk. The rate of pyrogen's
:func:`~pyrogen.evaluation.loglik.importance_sampling` on N test images, in FLOP/s, is set
against a plain chain of ``torch.mm`` of the decoder's shapes on the same N·K rows, measured
in the same run, the two alternating so that load from elsewhere hits both alike; the ratio
says how close evaluation runs to the machine's limit (weights are random unless ``--run``:
the FLOP count does not depend on training). ``--run`` also takes a VampPrior or two-level
VAE: their FLOP add the prior's mixture product and the second level's networks per draw
(:func:`model_flop`), against the same decoder-only matmul chain.

The Parzen window's cost is the squared distances ‖x‖² − 2 x·s + ‖s‖² of N_x examples to S
samples (a float64 matrix product, 2·N_x·S·D FLOP) and a log-sum-exp per σ of the grid:
:func:`~pyrogen.evaluation.parzen.parzen_log_likelihoods` on the σ grid (the validation step
of the protocol) is set against a plain float64 ``torch.mm`` of the same shapes.

    python bench/bench_loglik.py --threads 1 2 --repeats 3          # ~1 minute per thread count
    python bench/bench_loglik.py --threads 1 --examples 100 --traced  # also Pyro's traced path

On a machine shared with other processes, run with ``OMP_WAIT_POLICY=PASSIVE``: with
the default (spinning) policy every parallel region of a multi-threaded run can wait a whole
scheduler slice for a thread that another process holds off the core, which hits the many
small operations of IS far harder than the three products of the plain chain.

Writes ``bench/results/bench_loglik.json`` (``--out``).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import time
from functools import partial
from pathlib import Path

import pyro
import torch
from torch import nn

from pyrogen import load_config
from pyrogen.build import build
from pyrogen.evaluation.loglik import (
    BLOCK_ROWS,
    importance_sampling,
    plain_vae,
    traced_log_importance_weights,
    vae_log_importance_weights,
)
from pyrogen.evaluation.parzen import parzen_log_likelihoods
from pyrogen.models.hierarchical import HierarchicalVAE
from pyrogen.models.priors import MixtureOfGaussiansPrior, VampPrior
from pyrogen.training.run import load

ROOT = Path(__file__).resolve().parents[1]


def linear_flop(net: nn.Module) -> int:
    """FLOP of one row through ``net``'s ``nn.Linear`` layers: Σ 2·in·out."""
    return sum(
        2 * m.in_features * m.out_features for m in net.modules() if isinstance(m, nn.Linear)
    )


def model_flop(vae) -> tuple[int, int]:
    """(FLOP per latent draw, FLOP per example and particle chunk) of IS through ``vae``: the
    decoder on every draw, and for a two-level VAE also p(z1 | z2)'s and q(z1 | x, z2)'s
    networks, and for a mixture prior of K diagonal Gaussians on d dimensions the product of
    [z², z, 1] with its (2d + 1, K) matrix; the encoder once per example and chunk (the
    VampPrior's once per pseudo-input and chunk, counted per example of a 100-image batch)."""
    per_draw = linear_flop(vae.decoder)
    per_chunk = linear_flop(vae.guide.encoder)
    if isinstance(vae, HierarchicalVAE):
        per_draw += linear_flop(vae.top_down) + linear_flop(vae.guide.bottom)
        per_chunk += linear_flop(vae.guide.top)
    prior = vae.prior_module
    if isinstance(prior, VampPrior | MixtureOfGaussiansPrior):
        k = prior.num_pseudo_inputs if isinstance(prior, VampPrior) else prior.num_components
        d = vae.top_latent_dim if isinstance(vae, HierarchicalVAE) else vae.latent_dim
        per_draw += 2 * (2 * d + 1) * k
        if isinstance(prior, VampPrior):
            per_chunk += k * linear_flop(vae.guide.encoder) // 100
    return per_draw, per_chunk


def decoder_shapes(net: nn.Module) -> list[tuple[int, int]]:
    """(in, out) of each ``nn.Linear`` of the decoder, in order."""
    return [(m.in_features, m.out_features) for m in net.modules() if isinstance(m, nn.Linear)]


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def matmul_chain(shapes: list[tuple[int, int]], rows: int, block: int, seed: int = 0):
    """A closure running ``rows`` rows through plain ``torch.mm`` of the given (in, out)
    shapes, ``block`` rows at a time, into preallocated outputs (no bias, no activation)."""
    g = torch.Generator().manual_seed(seed)
    weights = [torch.randn(o, i, generator=g) / math.sqrt(i) for i, o in shapes]
    z = torch.randn(block, shapes[0][0], generator=g)
    outs = [torch.empty(block, o) for _, o in shapes]

    def run() -> None:
        for start in range(0, rows, block):
            b = min(block, rows - start)
            h = z[:b]
            for w, out in zip(weights, outs, strict=True):
                h = torch.mm(h, w.T, out=out[:b])

    return run


def direct_weights(model, guide, x: torch.Tensor, k: int, block_rows: int) -> torch.Tensor:
    """The direct path's log weights with decoder blocks of ``block_rows`` rows."""
    return vae_log_importance_weights(plain_vae(model, guide), x, k, block_rows=block_rows)


def is_bench(vae, x: torch.Tensor, args: argparse.Namespace) -> dict:
    """Alternating timings of pyrogen's IS log p(x) and the plain matmul chain."""
    n, k = x.shape[0], args.k
    dims = math.prod(x.shape[1:])
    chunk = max(1, min(k, 20_000_000 // (min(n, 100) * dims)))  # importance_sampling's default
    chunks = math.ceil(k / chunk)
    dec, enc = model_flop(vae)
    flop = n * k * dec + n * chunks * enc
    ref_flop = n * k * linear_flop(vae.decoder)
    ref = matmul_chain(decoder_shapes(vae.decoder), n * k, args.ref_rows)

    def pyrogen_is(log_weights=None):
        if log_weights is None and args.block_rows:  # the direct path, another block size
            log_weights = partial(direct_weights, block_rows=args.block_rows)
        options = {} if log_weights is None else {"log_weights": log_weights}
        pyro.set_rng_seed(args.seed)
        return importance_sampling(vae.model, vae.guide, x, k, quiet=True, **options)

    ref()  # warm up both
    pyrogen_is()
    rows = []
    for r in range(args.repeats):
        t_ref = timed(ref)
        t_is = timed(pyrogen_is)
        row = {
            "repeat": r,
            "pyrogen_s": t_is,
            "matmul_s": t_ref,
            "pyrogen_gflops": flop / t_is / 1e9,
            "matmul_gflops": ref_flop / t_ref / 1e9,
        }
        row["ratio"] = row["pyrogen_gflops"] / row["matmul_gflops"]
        if args.traced:
            t_tr = timed(lambda: pyrogen_is(traced_log_importance_weights))
            row["traced_s"] = t_tr
            row["traced_gflops"] = flop / t_tr / 1e9
            row["traced_ratio"] = row["traced_gflops"] / row["matmul_gflops"]
        rows.append(row)
        extra = ""
        if args.traced:
            extra = f", traced path {row['traced_gflops']:6.2f} ({row['traced_ratio']:.2f})"
        print(
            f"  IS     repeat {r}: pyrogen {row['pyrogen_gflops']:6.2f} GFLOP/s, plain matmul "
            f"{row['matmul_gflops']:6.2f} GFLOP/s, ratio {row['ratio']:.2f}{extra}",
            flush=True,
        )
    return {
        "examples": n,
        "K": k,
        "decoder_flop_per_sample": dec,
        "encoder_flop_per_example": enc,
        "flop": flop,
        "block_rows": args.block_rows or BLOCK_ROWS,
        "matmul_block_rows": args.ref_rows,
        "repeats": rows,
        "median_ratio": statistics.median(r["ratio"] for r in rows),
    }


def parzen_bench(vae, valid: torch.Tensor, args: argparse.Namespace) -> dict:
    """Alternating timings of the Parzen window on a σ grid and a plain float64 matmul."""
    pyro.set_rng_seed(args.seed)
    # flat float64 samples, as pyrogen.evaluate passes them
    samples = vae.sample(args.parzen_samples).reshape(args.parzen_samples, -1).double()
    x = valid[: args.parzen_examples].reshape(-1, samples.shape[1])
    sigmas = torch.logspace(-1, 0, 10)
    s64, x64 = samples, x.double()
    out = torch.empty(256, s64.shape[0], dtype=torch.float64)

    def ref() -> None:
        for xb in x64.split(256):
            torch.mm(xb, s64.T, out=out[: xb.shape[0]])

    def window() -> None:
        parzen_log_likelihoods(samples, x, sigmas)

    def one_sigma() -> None:  # the scoring of the test split at the chosen σ
        parzen_log_likelihoods(samples, x, sigmas[3:4])

    flop = 2 * x.shape[0] * samples.shape[0] * samples.shape[1]
    ref()
    window()
    rows = []
    for r in range(args.repeats):
        t_ref = timed(ref)
        t_p = timed(window)
        t_1 = timed(one_sigma)
        row = {
            "repeat": r,
            "parzen_s": t_p,
            "parzen_one_sigma_s": t_1,
            "matmul_s": t_ref,
            "parzen_gflops": flop / t_p / 1e9,
            "parzen_one_sigma_gflops": flop / t_1 / 1e9,
            "matmul_gflops": flop / t_ref / 1e9,
        }
        row["ratio"] = row["parzen_gflops"] / row["matmul_gflops"]
        row["one_sigma_ratio"] = row["parzen_one_sigma_gflops"] / row["matmul_gflops"]
        rows.append(row)
        print(
            f"  Parzen repeat {r}: pyrogen {row['parzen_gflops']:6.2f} GFLOP/s on the grid of "
            f"{len(sigmas)} σ ({row['parzen_one_sigma_gflops']:6.2f} at one σ), plain float64 "
            f"matmul {row['matmul_gflops']:6.2f} GFLOP/s, ratio {row['ratio']:.2f} "
            f"({row['one_sigma_ratio']:.2f})",
            flush=True,
        )
    return {
        "examples": x.shape[0],
        "samples": samples.shape[0],
        "sigmas": len(sigmas),
        "flop": flop,
        "repeats": rows,
        "median_ratio": statistics.median(r["ratio"] for r in rows),
        "median_one_sigma_ratio": statistics.median(r["one_sigma_ratio"] for r in rows),
    }


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--examples", type=int, default=20, help="test images for IS log p(x)")
    p.add_argument("--k", type=int, default=5000, help="importance samples per image")
    p.add_argument(
        "--threads",
        nargs="+",
        default=["1", "all"],
        help="torch thread counts to measure, each pinned in turn ('all': every core)",
    )
    p.add_argument("--repeats", type=int, default=3, help="alternating measurements per count")
    p.add_argument("--ref-rows", type=int, default=1024, help="rows per plain matmul block")
    p.add_argument("--block-rows", type=int, default=0, help="decoder rows per block of IS")
    p.add_argument("--traced", action="store_true", help="also time Pyro's traced IS path")
    p.add_argument("--parzen-samples", type=int, default=10_000, help="0: skip Parzen")
    p.add_argument("--parzen-examples", type=int, default=500)
    p.add_argument("--run", default=None, help="a trained run folder (weights) instead of random")
    p.add_argument(
        "--data-root",
        default=os.environ.get("PYROGEN_SHARED_DATA", str(ROOT.parent / "shared" / "data")),
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=str(ROOT / "bench" / "results" / "bench_loglik.json"))
    args = p.parse_args()

    if args.run:
        trained = load(args.run, device="cpu")
        dataset, vae = trained.dataset, trained.model
    else:
        cfg = load_config(
            ROOT / "configs" / "vae_binarized_mnist.yaml",
            [f"data.root={args.data_root}", "train.device=cpu", "output.tensorboard=false"],
        )
        dataset, learner = build(cfg, "cpu")
        vae = learner.model
    vae.eval()
    # a seeded random subset: the .amat test rows are grouped by digit, a prefix is one digit
    pick = torch.randperm(dataset.test.shape[0], generator=torch.Generator().manual_seed(1))
    x = dataset.test[pick[: args.examples]]

    results = {
        "written": time.strftime("%Y-%m-%d %H:%M:%S"),
        "cpu": platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
        "torch": torch.__version__,
        "load_average": os.getloadavg(),
        "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY"),
        "weights": args.run or "random",
        "by_threads": {},
    }
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                results["cpu"] = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    for threads in args.threads:
        n = os.cpu_count() if threads == "all" else int(threads)
        torch.set_num_threads(n)
        print(f"{n} thread(s): IS log p(x) of {x.shape[0]} test images, K = {args.k}", flush=True)
        entry = {"IS": is_bench(vae, x, args)}
        if args.parzen_samples > 0:
            entry["parzen"] = parzen_bench(vae, dataset.split("valid"), args)
        results["by_threads"][str(n)] = entry
        summary = f"{n} thread(s): median ratio IS {entry['IS']['median_ratio']:.2f}"
        if "parzen" in entry:
            parzen = entry["parzen"]
            summary += (
                f", Parzen {parzen['median_ratio']:.2f} on the σ grid, "
                f"{parzen['median_one_sigma_ratio']:.2f} at one σ"
            )
        print(summary, flush=True)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2, allow_nan=False) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()

"""Data-parallel throughput: 1 process vs N processes (DDP), and the communication share of a
step, for the conv VAE on MNIST and the GAN paper's MNIST GAN.

Each configuration runs the learner's training step as ``pyrogen train`` does under
``torchrun``: a global batch of B examples (``train.batch_size``), each of the N ranks stepping
on its piece through the learner's DDP modules, then the step's metrics all-reduced. It
reports, per model and N:

* examples per second (B × steps / wall time, timed between barriers);
* the communication share of a step: 1 − t(no communication) / t(step), where the second
  time is of the same steps with DDP's gradient all-reduce switched off (``no_sync``) and the
  metrics' all-reduce skipped, measured in blocks interleaved with the normal steps so that
  load on the machine hits both alike.

N processes share the machine: on GPUs one process per GPU (``nccl``); on the CPU (``gloo``)
the cores are divided among the processes (cores / N threads each). One process is measured
with one thread and with every core (torch's intra-op threads), and the speed-up is against
the faster of the two. On one CPU, N processes only split the same cores: the comparison then
shows what data parallelism costs (communication, duplicated work) or, on a busy machine,
that single-threaded processes suffer less from other jobs than one multi-threaded process;
not a gain to expect from more hardware. The load average is printed with the results.

    python bench/bench_ddp.py --nproc 2 --steps 40 --data-root ../shared/data
    python bench/bench_ddp.py --nproc 4 --steps 200 --device cuda   # 4 GPUs

Without MNIST files (``--data digits``) the conv VAE and the GAN run on scikit-learn's 8×8
digits instead (the GAN then at its MNIST width).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import socket
import statistics
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

ROOT = Path(__file__).resolve().parents[1]

MODELS = {
    "conv VAE": [
        str(ROOT / "configs" / "vae_mnist.yaml"),
        "model.architecture=conv",
        "data.flatten=false",
    ],
    "MNIST GAN": [str(ROOT / "configs" / "gan_mnist.yaml")],
}


def _config(name: str, args: argparse.Namespace):
    from pyrogen import load_config

    path, *overrides = MODELS[name]
    overrides += [f"train.device={args.device}", "data.download=false"]
    if args.data == "digits":
        overrides += ["data.name=digits"]
    elif args.data_root:
        overrides += [f"data.root={args.data_root}"]
    if args.batch_size:
        overrides += [f"train.batch_size={args.batch_size}"]
    return load_config(path, overrides)


def _no_communication(learner):
    """DDP's gradient all-reduce switched off (every DDP module of the learner)."""
    stack = contextlib.ExitStack()
    for ddp in (getattr(learner, a, None) for a in ("_ddp", "_ddp_d", "_ddp_g")):
        if ddp is not None:
            stack.enter_context(ddp.no_sync())
    return stack


def _worker(
    rank: int, world: int, port: int, name: str, args: argparse.Namespace, threads: int, out: str
):
    from pyrogen.build import build
    from pyrogen.parallel import distributed

    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        RANK=str(rank),
        WORLD_SIZE=str(world),
        LOCAL_RANK=str(rank),
        LOCAL_WORLD_SIZE=str(world),
    )
    torch.set_num_threads(threads)
    cfg = _config(name, args)
    device = torch.device(f"cuda:{rank}" if cfg.train.device.startswith("cuda") else "cpu")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if world > 1:
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend, rank=rank, world_size=world)
    dataset, learner = build(cfg, device)
    if world > 1:
        learner.data_parallel()
    b = cfg.train.batch_size
    n = dataset.train.shape[0]
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(0))
    noise = torch.Generator().manual_seed(distributed.rank_seed(0, "bench"))
    step_no = [0]

    def step(communicate: bool = True) -> None:
        start = (step_no[0] * b) % max(1, n - b)
        idx = distributed.shard(perm[start : start + b]).to(device)
        learner.global_batch_size = b
        x = dataset.process(dataset.train[idx], noise)
        if communicate or world == 1:
            out = learner.step(x)
            if world > 1:
                distributed.reduce_step(out, len(idx), b, False)
        else:
            with _no_communication(learner):
                learner.step(x)
        step_no[0] += 1

    def timed(count: int, communicate: bool = True) -> float:
        if device.type == "cuda":
            torch.cuda.synchronize()
        distributed.barrier()
        t0 = time.perf_counter()
        for _ in range(count):
            step(communicate)
        if device.type == "cuda":
            torch.cuda.synchronize()
        distributed.barrier()
        return time.perf_counter() - t0

    for _ in range(args.warmup):
        step()
    with_comm, without = [], []
    blocks = max(1, args.steps // args.block)
    for _ in range(blocks):
        with_comm.append(timed(args.block) / args.block)
        if world > 1:
            without.append(timed(args.block, communicate=False) / args.block)
    if rank == 0:
        t_step = statistics.median(with_comm)
        result = {
            "model": name,
            "processes": world,
            "threads": torch.get_num_threads(),
            "device": device.type,
            "batch": b,
            "parameters": sum(p.numel() for p in learner.module.parameters()),
            "seconds_per_step": t_step,
            "examples_per_second": b / t_step,
        }
        if without:
            t_free = statistics.median(without)
            result["seconds_per_step_without_communication"] = t_free
            result["communication_share"] = max(0.0, 1.0 - t_free / t_step)
        Path(out).write_text(json.dumps(result))
    if world > 1:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def measure(name: str, world: int, threads: int, args: argparse.Namespace) -> dict:
    out = Path(args.out_dir) / f"{name.replace(' ', '_')}-{world}x{threads}.json"
    mp.spawn(
        _worker,
        args=(world, _free_port(), name, args, threads, str(out)),
        nprocs=world,
        join=True,
    )
    return json.loads(out.read_text())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--nproc", type=int, default=2, help="N, the processes compared with 1")
    p.add_argument("--steps", type=int, default=40, help="timed steps per configuration")
    p.add_argument("--block", type=int, default=10, help="steps per interleaved block")
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--batch-size", type=int, default=None, help="global batch (default: config)")
    p.add_argument("--cores", type=int, default=None, help="CPU cores to use (default: all)")
    p.add_argument("--device", default="cpu", help="cpu or cuda (one GPU per process)")
    p.add_argument("--data", choices=["mnist", "digits"], default="mnist")
    p.add_argument("--data-root", default=None, help="folder holding mnist/ (data.root)")
    p.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    p.add_argument("--out-dir", default="runs/bench-ddp")
    args = p.parse_args()
    Path(args.out_dir).mkdir(parents=True, exist_ok=True)
    cores = args.cores or len(os.sched_getaffinity(0))
    gpu = args.device.startswith("cuda")
    plan = [(1, 1)] + ([] if gpu or cores == 1 else [(1, cores)])
    plan += [(args.nproc, 1 if gpu else max(1, cores // args.nproc))]
    load = [os.getloadavg()[0]]
    rows = []
    for name in args.models:
        for world, threads in plan:
            rows.append(measure(name, world, threads, args))
            r = rows[-1]
            share = r.get("communication_share")
            print(
                f"{name}: {world} process(es) x {r['threads']} thread(s): "
                f"{r['examples_per_second']:.0f} examples/s"
                + (f", communication {100 * share:.0f}% of a step" if share is not None else ""),
                flush=True,
            )
    print()
    print("| model | processes | threads each | device | global batch | examples/s | "
          "speed-up | communication share |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|")
    base: dict[str, float] = {}
    for r in rows:
        if r["processes"] == 1:
            base[r["model"]] = max(base.get(r["model"], 0.0), r["examples_per_second"])
    for r in rows:
        share = r.get("communication_share")
        print(
            f"| {r['model']} | {r['processes']} | {r['threads']} | {r['device']} | {r['batch']} | "
            f"{r['examples_per_second']:.0f} | {r['examples_per_second'] / base[r['model']]:.2f} | "
            + (f"{100 * share:.0f}% |" if share is not None else "— |")
        )
    load.append(os.getloadavg()[0])
    print(f"\n{cores} CPU cores; 1-minute load average {load[0]:.1f} before, {load[1]:.1f} after")
    Path(args.out_dir, "results.json").write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()

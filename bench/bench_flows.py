"""Normalising flows: pyrogen's MAF and RealNVP vs zuko's MAF and RealNVP, same budget.

zuko is used for this benchmark only (it is not a pyrogen dependency)::

    pip install zuko          # the zuko columns are skipped, with a message, when absent

Data: the 2-D ``moons`` toy, and scikit-learn's 8x8 ``digits`` (64-D) dequantised and
logit-transformed with λ = 0.05. Each mini-batch goes through pyrogen's ``Dataset.process``
once (seeded) and the *same* tensors are fed to both libraries; the test set is processed once
with a fixed seed. Both sides get the same sizes (number of transforms, hidden units of each
made/coupling net, ReLU), no normalisation layers, reversed orderings between transforms, and
the same budget (steps, batch size, Adam lr, betas (0.9, 0.999)). pyrogen trains through its
``VariationalLearner`` (Pyro ``Trace_ELBO`` on the flow's observed site, EmptyGuide); zuko
with a hand loop on ``-flow().log_prob(x).mean()``. Training is timed in interleaved blocks
so machine load hits every model alike.

Reported: test log-likelihood (mean ± s.e., nats in the model space: for digits the logit
space), ms per training step, ms per 1,000 samples, and ratios pyrogen / zuko. Then the MAF /
IAF asymmetry in pyrogen at D = 64: an IAF scores data with D sequential passes per layer, so
its training step (which needs log p(x)) is far slower than a MAF's. Last, pyrogen's Glow on
the digits as 1x8x8 images, same batches and budget (zuko has no Glow).

    python bench/bench_flows.py --moons-steps 3000 --digits-steps 2000 --iaf-steps 10
"""

from __future__ import annotations

import argparse
import math
import time

import pyro
import torch

from pyrogen.config import DataConfig
from pyrogen.data import load_dataset
from pyrogen.inference.variational import VariationalLearner
from pyrogen.models.flow import make_flow

try:
    import zuko
except ImportError:  # pragma: no cover - optional
    zuko = None


def mean_se(v: torch.Tensor) -> str:
    return f"{v.mean().item():.2f} ± {v.std().item() / math.sqrt(v.numel()):.2f}"


class PyrogenSide:
    def __init__(self, kind, dim, layers, hidden, lr, image_shape=None):
        extra = {"image_shape": image_shape} if kind == "glow" else {}
        self.flow = make_flow(kind, dim, num_layers=layers, hidden_sizes=list(hidden), **extra)
        self.learner = VariationalLearner(self.flow, pyro.infer.Trace_ELBO(), lr=lr)

    def step(self, x):
        return self.learner.step(x)["loss"]

    @torch.no_grad()
    def log_prob(self, x):
        self.flow.eval()
        return self.flow.log_prob(x)

    def sample(self, n):
        self.flow.eval()
        return self.flow.sample(n)

    def num_params(self):
        return sum(p.numel() for p in self.flow.parameters())


class ZukoSide:
    def __init__(self, kind, dim, layers, hidden, lr):
        cls = {"maf": zuko.flows.MAF, "realnvp": zuko.flows.RealNVP}[kind]
        self.flow = cls(dim, transforms=layers, hidden_features=tuple(hidden))
        self.opt = torch.optim.Adam(self.flow.parameters(), lr=lr)

    def step(self, x):
        loss = -self.flow().log_prob(x).mean()
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        return loss.item()

    @torch.no_grad()
    def log_prob(self, x):
        return self.flow().log_prob(x)

    @torch.no_grad()
    def sample(self, n):
        return self.flow().sample((n,))

    def num_params(self):
        return sum(p.numel() for p in self.flow.parameters())


def batches_for(ds, steps, batch_size, seed):
    """``steps`` processed mini-batches (the same tensors go to every model)."""
    n = ds.train.shape[0]
    gen = torch.Generator().manual_seed(seed)
    order = torch.cat(
        [torch.randperm(n, generator=gen) for _ in range(steps * batch_size // n + 1)]
    )
    pgen = torch.Generator().manual_seed(seed + 1)
    return [
        ds.process(ds.train[order[i * batch_size : (i + 1) * batch_size]], pgen)
        for i in range(steps)
    ]


def time_sampling(model, n, reps):
    model.sample(n)  # warm-up
    start = time.perf_counter()
    for _ in range(reps):
        model.sample(n)
    return (time.perf_counter() - start) / reps


def run_dataset(name, ds, args, steps, layers, hidden):
    dim = ds.event_shape[0]
    batches = batches_for(ds, steps, args.batch_size, args.seed)
    test = ds.process(ds.test, torch.Generator().manual_seed(args.seed + 2))
    models = {}
    for kind in ("maf", "realnvp"):
        torch.manual_seed(args.seed)
        models[("pyrogen", kind)] = PyrogenSide(kind, dim, layers, hidden, args.lr)
        if zuko is not None:
            torch.manual_seed(args.seed)
            models[("zuko", kind)] = ZukoSide(kind, dim, layers, hidden, args.lr)
    times = dict.fromkeys(models, 0.0)
    last = dict.fromkeys(models, float("nan"))
    pyro.set_rng_seed(args.seed)
    t0 = time.perf_counter()
    for i in range(0, steps, args.block):
        for key, m in models.items():
            start = time.perf_counter()
            for x in batches[i : i + args.block]:
                last[key] = m.step(x)
            times[key] += time.perf_counter() - start
        if (i // args.block) % 5 == 0:
            losses = "  ".join(f"{k[0]}-{k[1]} {v:.2f}" for k, v in last.items())
            print(
                f"  [{name}] step {i + args.block}: {losses} ({time.perf_counter() - t0:.0f} s)",
                flush=True,
            )
    results = {}
    for key, m in models.items():
        lp = m.log_prob(test)
        t_sample = time_sampling(m, 1000, args.sample_reps)
        results[key] = dict(
            lp=lp,
            step=times[key] / steps,
            sample=t_sample,
            params=m.num_params(),
            nonfinite=int((~torch.isfinite(lp)).sum()),
        )
    print()
    print(
        f"{name} (D = {dim}): {layers} transforms, hidden {list(hidden)}, {steps} steps of batch "
        f"{args.batch_size}, Adam lr {args.lr}; test log p(x) on {test.shape[0]} examples "
        "(nats, model space)"
    )
    print(f"{'':<18}{'params':>9}{'test log p(x)':>20}{'ms / step':>11}{'ms / 1k samples':>17}")
    for key, r in results.items():
        lp = r["lp"][torch.isfinite(r["lp"])]
        extra = f"  ({r['nonfinite']} non-finite dropped)" if r["nonfinite"] else ""
        print(
            f"{key[0] + ' ' + key[1]:<18}{r['params']:>9}{mean_se(lp):>20}"
            f"{1000 * r['step']:>11.2f}{1000 * r['sample']:>17.1f}{extra}"
        )
    if zuko is not None:
        for kind in ("maf", "realnvp"):
            p, z = results[("pyrogen", kind)], results[("zuko", kind)]
            print(
                f"ratio pyrogen / zuko, {kind}: step time {p['step'] / z['step']:.2f}, sampling "
                f"time {p['sample'] / z['sample']:.2f}, Δ test LL "
                f"{p['lp'].mean().item() - z['lp'].mean().item():+.2f} nats"
            )
    print(flush=True)


def iaf_vs_maf(ds, args, layers, hidden):
    dim = ds.event_shape[0]
    batches = batches_for(ds, args.iaf_steps, args.batch_size, args.seed)
    torch.manual_seed(args.seed)
    maf = PyrogenSide("maf", dim, layers, hidden, args.lr)
    torch.manual_seed(args.seed)
    iaf = PyrogenSide("iaf", dim, layers, hidden, args.lr)
    maf.step(batches[0])
    iaf.step(batches[0])  # warm-up
    t = {"maf": 0.0, "iaf": 0.0}
    for x in batches:  # interleaved, step by step
        for k, m in (("maf", maf), ("iaf", iaf)):
            start = time.perf_counter()
            m.step(x)
            t[k] += time.perf_counter() - start
    s = {k: time_sampling(m, 1000, args.sample_reps) for k, m in (("maf", maf), ("iaf", iaf))}
    print(
        f"pyrogen MAF vs IAF at D = {dim} (digits): {layers} transforms, hidden {list(hidden)}, "
        f"batch {args.batch_size}, {args.iaf_steps} timed steps each (interleaved)"
    )
    print(f"{'':<14}{'ms / step':>12}{'ms / 1k samples':>17}")
    for k in ("maf", "iaf"):
        print(f"{'pyrogen ' + k:<14}{1000 * t[k] / args.iaf_steps:>12.2f}{1000 * s[k]:>17.1f}")
    print(
        f"ratio iaf / maf: step time {t['iaf'] / t['maf']:.1f}, sampling time "
        f"{s['iaf'] / s['maf']:.2f}"
    )


def glow_digits(ds, args, steps, layers, hidden):
    """pyrogen's Glow (no zuko counterpart) on the same digits batches and budget."""
    batches = batches_for(ds, steps, args.batch_size, args.seed)
    test = ds.process(ds.test, torch.Generator().manual_seed(args.seed + 2))
    torch.manual_seed(args.seed)
    m = PyrogenSide("glow", ds.event_shape[0], layers, hidden[:1], args.lr, ds.image_shape)
    pyro.set_rng_seed(args.seed)
    start = time.perf_counter()
    for x in batches:
        m.step(x)
    step = (time.perf_counter() - start) / steps
    lp = m.log_prob(test)
    t_sample = time_sampling(m, 1000, args.sample_reps)
    print(
        f"pyrogen glow on digits {tuple(ds.image_shape)}: squeeze to 4x4x4, {layers} steps "
        f"(act-norm, 1x1 conv, affine coupling with {hidden[0]}-channel conv nets), {steps} "
        f"steps of batch {args.batch_size}; {m.num_params()} params"
    )
    print(
        f"  test log p(x) {mean_se(lp)} nats (model space), {1000 * step:.2f} ms / step, "
        f"{1000 * t_sample:.1f} ms / 1k samples"
    )
    print(flush=True)


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--moons-steps", type=int, default=1000)
    p.add_argument("--digits-steps", type=int, default=500)
    p.add_argument("--iaf-steps", type=int, default=10)
    p.add_argument("--batch-size", type=int, default=100)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--layers", type=int, default=5)
    p.add_argument("--moons-hidden", type=int, nargs="+", default=[64, 64])
    p.add_argument("--digits-hidden", type=int, nargs="+", default=[128, 128])
    p.add_argument("--logit-lambda", type=float, default=0.05)
    p.add_argument("--block", type=int, default=25, help="steps per interleaved timing block")
    p.add_argument("--sample-reps", type=int, default=3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1, help="torch threads (1: tiny networks)")
    p.add_argument("--skip", nargs="*", default=[], choices=["moons", "digits", "iaf", "glow"])
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    print(
        f"torch {torch.__version__}, pyro {pyro.__version__}, threads {torch.get_num_threads()}"
        + (f", zuko {zuko.__version__}" if zuko is not None else "")
    )
    if zuko is None:
        print("zuko is not installed (pip install zuko): reporting pyrogen only")
    if "moons" not in args.skip:
        moons = load_dataset(DataConfig(name="moons"))
        run_dataset("moons", moons, args, args.moons_steps, args.layers, args.moons_hidden)
    digits = load_dataset(
        DataConfig(name="digits", dequantize=True, logit_lambda=args.logit_lambda)
    )
    if "digits" not in args.skip:
        run_dataset("digits", digits, args, args.digits_steps, args.layers, args.digits_hidden)
    if "iaf" not in args.skip:
        iaf_vs_maf(digits, args, args.layers, args.digits_hidden)
    if "glow" not in args.skip:
        glow_digits(digits, args, args.digits_steps, args.layers, args.digits_hidden)


if __name__ == "__main__":
    main()

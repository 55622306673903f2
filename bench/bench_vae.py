"""VAE on statically binarized MNIST: pyrogen vs a plain-PyTorch reference, same budget.

Both models have the architecture of ``configs/vae_binarized_mnist.yaml`` (784-500-500-50,
tanh, Bernoulli decoder, diagonal Gaussian encoder) and see the same mini-batches in the
same order. pyrogen trains through its ELBOModule path (Pyro's Trace_ELBO +
one torch Adam); the reference is a hand-written reparameterised ELBO with torch Adam. Then
both get the same test log p(x) estimate (importance sampling, K = 5000 by default, written
independently for the reference) and their time per training step is reported side by side.

    python bench/bench_vae.py --steps 3000 --test-examples 1000 --k 5000
"""

from __future__ import annotations

import argparse
import math
import os
import time
from pathlib import Path

import pyro
import torch
import torch.nn.functional as F
from torch import nn

from pyrogen import load_config
from pyrogen.build import build
from pyrogen.evaluation.loglik import importance_log_likelihood

ROOT = Path(__file__).resolve().parents[1]


class ReferenceVAE(nn.Module):
    """The same VAE in plain PyTorch."""

    def __init__(self, d: int = 784, h: tuple[int, ...] = (500, 500), latent: int = 50) -> None:
        super().__init__()
        self.enc = nn.Sequential(
            nn.Linear(d, h[1]),
            nn.Tanh(),
            nn.Linear(h[1], h[0]),
            nn.Tanh(),
            nn.Linear(h[0], 2 * latent),
        )
        self.dec = nn.Sequential(
            nn.Linear(latent, h[0]), nn.Tanh(), nn.Linear(h[0], h[1]), nn.Tanh(), nn.Linear(h[1], d)
        )
        self.latent = latent

    def encode(self, x):
        loc, raw = self.enc(x).chunk(2, -1)
        return loc, F.softplus(raw) + 1e-4

    def log_weights(self, x, k: int):
        """log p(x, z) − log q(z | x) for k samples z ~ q(z | x): shape (k, N)."""
        loc, scale = self.encode(x)
        eps = torch.randn(k, *loc.shape, device=x.device)
        z = loc + scale * eps
        logits = self.dec(z)
        log_px = -F.binary_cross_entropy_with_logits(
            logits, x.expand_as(logits), reduction="none"
        ).sum(-1)
        log_pz = -0.5 * (z**2).sum(-1) - 0.5 * self.latent * math.log(2 * math.pi)
        log_qz = (-0.5 * eps**2 - scale.log()).sum(-1) - 0.5 * self.latent * math.log(2 * math.pi)
        return log_px + log_pz - log_qz

    def loss(self, x):
        return -self.log_weights(x, 1).sum()


@torch.no_grad()
def reference_log_likelihood(vae: ReferenceVAE, x, k: int, chunk: int = 500, batch: int = 100):
    out = []
    for xb in x.split(batch):
        parts = [
            torch.logsumexp(vae.log_weights(xb, min(chunk, k - s)), 0) for s in range(0, k, chunk)
        ]
        out.append(torch.logsumexp(torch.stack(parts), 0) - math.log(k))
    return torch.cat(out)


def mean_se(v: torch.Tensor) -> str:
    return f"{v.mean().item():.2f} ± {v.std().item() / math.sqrt(v.numel()):.2f}"


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--steps", type=int, default=3000)
    p.add_argument("--batch-size", type=int, default=100)
    p.add_argument("--k", type=int, default=5000, help="importance samples for log p(x)")
    p.add_argument("--test-examples", type=int, default=1000)
    p.add_argument(
        "--data-root",
        default=os.environ.get("PYROGEN_SHARED_DATA", str(ROOT.parent / "shared" / "data")),
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=os.cpu_count(), help="torch threads, both sides")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    cfg = load_config(
        ROOT / "configs" / "vae_binarized_mnist.yaml",
        [
            f"data.root={args.data_root}",
            "train.device=cpu",
            f"train.batch_size={args.batch_size}",
            "output.tensorboard=false",
        ],
    )
    dataset, learner = build(cfg, "cpu")
    torch.manual_seed(args.seed)
    ref = ReferenceVAE(latent=cfg.model.latent_dim)
    opt = torch.optim.Adam(ref.parameters(), lr=cfg.optim.lr)  # torch defaults (foreach)
    n = dataset.train.shape[0]
    gen = torch.Generator().manual_seed(args.seed)
    order = torch.cat(
        [torch.randperm(n, generator=gen) for _ in range(args.steps * args.batch_size // n + 1)]
    )
    batches = [
        dataset.train[order[i * args.batch_size : (i + 1) * args.batch_size]]
        for i in range(args.steps)
    ]

    # Interleave blocks of steps so that any load on the machine hits both alike.
    pyro.set_rng_seed(args.seed)
    t_pyrogen = t_ref = 0.0
    block = 50
    for i in range(0, args.steps, block):
        start = time.perf_counter()
        for x in batches[i : i + block]:
            learner.step(x)
        t_pyrogen += time.perf_counter() - start
        start = time.perf_counter()
        for x in batches[i : i + block]:
            opt.zero_grad(set_to_none=True)
            (ref.loss(x) / x.shape[0]).backward()
            opt.step()
        t_ref += time.perf_counter() - start
    t_pyrogen /= args.steps
    t_ref /= args.steps

    # a seeded random subset: the .amat test rows are grouped by digit, a prefix is one digit
    pick = torch.randperm(dataset.test.shape[0], generator=torch.Generator().manual_seed(1))
    x_test = dataset.test[pick[: args.test_examples]]
    pyro.set_rng_seed(args.seed + 1)
    learner.module.eval()
    vae = learner.model
    lp_pyrogen = importance_log_likelihood(vae.model, vae.guide, x_test, args.k)
    lp_ref = reference_log_likelihood(ref, x_test, args.k)
    print(
        f"binarized MNIST, {args.steps} steps of batch {args.batch_size}, "
        f"test log p(x) on a random {x_test.shape[0]} of the 10,000 test images with K = "
        f"{args.k} (nats), {torch.get_num_threads()} threads"
    )
    print(f"{'':<22}{'test log p(x)':>18}{'ms / step':>12}")
    print(f"{'pyrogen (Trace_ELBO)':<22}{mean_se(lp_pyrogen):>18}{1000 * t_pyrogen:>12.2f}")
    print(f"{'plain PyTorch':<22}{mean_se(lp_ref):>18}{1000 * t_ref:>12.2f}")
    print(f"time ratio pyrogen / plain PyTorch: {t_pyrogen / t_ref:.2f}")


if __name__ == "__main__":
    main()

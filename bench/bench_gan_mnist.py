"""GAN on MNIST: Parzen-window test log-likelihood (the GAN paper's protocol) and time per
step of pyrogen's AdversarialLearner vs a plain-PyTorch reference loop, same budget.

Both GANs follow one config (``--config``, default ``configs/gan_mnist.yaml``, or the same
settings as overrides if that file is absent). The default is the GAN paper's MNIST MLP scale:
generator 100 -> 1200 -> 1200 -> 784 (ReLU, sigmoid output), z ~ U[-1, 1]^100; discriminator
784 -> 240 -> 240 -> 1 with dropout 0.5. NOTE: our discriminator is an MLP with leaky ReLU
(slope 0.2), not the paper's maxout network. ``configs/gan_mnist_dcgan.yaml`` gives DCGAN-style
conv networks and an EMA of G's weights; the plain loop then builds the same by hand.
Non-saturating generator loss, k = 1, Adam with the config's lr (2e-4 MLP, 1e-3 DCGAN) and
betas (0.5, 0.999), and both see the same
mini-batches of a 5,000-image training subset in the same order. Training is timed in
interleaved blocks so that machine load hits both sides alike.

Evaluation (Goodfellow et al. 2014, after Breuleux et al. 2011): 10,000 generated samples,
a Gaussian Parzen window with σ chosen on 1,000 validation images from a 10-value log grid
in [0.1, 1], mean ± s.e. of log p̂(x) over the 10,000 MNIST test images. The paper reports
225 ± 2 for its (fully trained, 50,000-image) GAN; the budget here is far smaller.

The shared MNIST at /work/shared/data/mnist holds a 5,000-image training file; pyrogen holds
out 1/6 of it for validation, so the GAN trains on 4,167 images and σ is chosen on the 833
validation images (not 1,000).

    python bench/bench_gan_mnist.py --steps 1500 --batch-size 100
"""

from __future__ import annotations

import argparse
import copy
import os
import time
from pathlib import Path

import pyro
import torch
import torch.nn.functional as F
from torch import nn

from pyrogen import load_config
from pyrogen.build import build
from pyrogen.evaluation.parzen import parzen_evaluate

ROOT = Path(__file__).resolve().parents[1]

# The GAN paper's MNIST scale, for when configs/gan_mnist.yaml does not exist.
FALLBACK = [
    "model.family=gan",
    "data.name=mnist",
    "model.latent_dim=100",
    "model.prior=uniform",
    "model.hidden_sizes=[1200,1200]",
    "model.discriminator_hidden_sizes=[240,240]",
    "model.discriminator_dropout=0.5",
    "model.output=sigmoid",
    "adversarial.loss=non_saturating",
    "adversarial.discriminator_steps=1",
    "optim.lr=2.0e-4",
    "optim.betas=[0.5,0.999]",
]


class ReferenceGAN(nn.Module):
    """The same GAN in plain PyTorch: the GAN paper's MLPs, or (``conv``) the DCGAN-style
    networks of ``model.architecture=conv``; ``ema_decay`` keeps a moving average of G's
    weights (first update copies G, buffers follow G's) that sampling uses, as pyrogen's
    ``adversarial.ema_decay``."""

    def __init__(
        self,
        latent=100,
        g_hidden=(1200, 1200),
        d_hidden=(240, 240),
        dropout=0.5,
        conv=False,
        prior="uniform",
        ema_decay=None,
    ):
        super().__init__()
        self.latent, self.prior, self.ema_decay = latent, prior, ema_decay
        if conv:  # 1 x 28 x 28 images: 28 -> 14 -> 7 and back
            c0, c1 = g_hidden
            self.g = nn.Sequential(
                nn.Linear(latent, c0 * 49),
                nn.ReLU(),
                nn.Unflatten(1, (c0, 7, 7)),
                nn.ConvTranspose2d(c0, c1, 4, 2, 1),
                nn.BatchNorm2d(c1),
                nn.ReLU(),
                nn.ConvTranspose2d(c1, 1, 4, 2, 1),
                nn.Sigmoid(),
            )
            d0, d1 = d_hidden
            d = [nn.Unflatten(1, (1, 28, 28))]
            for a, b in ((1, d0), (d0, d1)):
                d += [nn.Conv2d(a, b, 4, 2, 1), nn.LeakyReLU(0.2)]
                d += [nn.Dropout(dropout)] if dropout > 0 else []
            self.d = nn.Sequential(*d, nn.Flatten(), nn.Linear(d1 * 49, 1))
        else:
            g, sizes = [], [latent, *g_hidden]
            for a, b in zip(sizes[:-1], sizes[1:], strict=True):
                g += [nn.Linear(a, b), nn.ReLU()]
            self.g = nn.Sequential(*g, nn.Linear(sizes[-1], 784), nn.Sigmoid())
            d, sizes = [], [784, *d_hidden]
            for a, b in zip(sizes[:-1], sizes[1:], strict=True):
                d += [nn.Linear(a, b), nn.LeakyReLU(0.2), nn.Dropout(dropout)]
            self.d = nn.Sequential(*d, nn.Linear(sizes[-1], 1))
        self.g_ema = None  # created by the first update_ema, as AveragedModel does

    def z(self, n):
        return (
            torch.randn(n, self.latent)
            if self.prior == "normal"
            else torch.rand(n, self.latent) * 2 - 1
        )

    def fake(self, n):
        return self.g(self.z(n)).reshape(n, 784)

    @torch.no_grad()
    def update_ema(self):
        if self.ema_decay is None:
            return
        if self.g_ema is None:
            self.g_ema = copy.deepcopy(self.g).requires_grad_(False)
            return
        for p_ema, p in zip(self.g_ema.parameters(), self.g.parameters(), strict=True):
            p_ema.lerp_(p, 1.0 - self.ema_decay)
        for b_ema, b in zip(self.g_ema.buffers(), self.g.buffers(), strict=True):
            b_ema.copy_(b)

    @torch.no_grad()
    def sample(self, n):
        self.eval()
        g = self.g_ema if self.g_ema is not None else self.g
        return g(self.z(n)).reshape(n, 784)


def parser(description: str = __doc__) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description=description, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--config",
        default="configs/gan_mnist.yaml",
        help="the GAN config both sides follow (its model and optim sections; model.architecture "
        "mlp or conv)",
    )
    p.add_argument("--steps", type=int, default=1500, help="D+G updates per side")
    p.add_argument("--batch-size", type=int, default=100)
    p.add_argument(
        "--num-train",
        type=int,
        default=None,
        help="train subset size (default: all; the shared 5,000-image file gives 4,167 train "
        "+ 833 validation after pyrogen's 1/6 hold-out)",
    )
    p.add_argument("--num-samples", type=int, default=10_000, help="Parzen window samples")
    p.add_argument("--num-valid", type=int, default=1000, help="validation images for σ")
    p.add_argument(
        "--ref-parzen", action="store_true", help="also Parzen-evaluate the reference GAN"
    )
    p.add_argument("--block", type=int, default=50, help="steps per interleaved timing block")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch default)")
    p.add_argument(
        "--data-root",
        default=os.environ.get("PYROGEN_SHARED_DATA", str(ROOT.parent / "shared" / "data")),
    )
    p.add_argument(
        "--r1",
        type=float,
        default=0.0,
        help="weight γ of the R1 penalty γ/2 E‖∇_x D(x)‖² on data, on both sides (0: off)",
    )
    p.add_argument("--seed", type=int, default=0)
    return p


def compare(args: argparse.Namespace) -> dict:
    """Train both sides on the same batches (interleaved timing blocks), then Parzen-score
    pyrogen's GAN, the reference (``--ref-parzen``) and the training images themselves."""
    print("args:", " ".join(f"--{k.replace('_', '-')}={v}" for k, v in vars(args).items()))
    if args.threads:
        torch.set_num_threads(args.threads)

    overrides = [
        f"data.root={args.data_root}",
        *([f"data.num_train={args.num_train}"] if args.num_train else []),
        "train.device=cpu",
        f"train.batch_size={args.batch_size}",
        f"adversarial.r1_penalty={args.r1}",
    ]
    path = Path(args.config)
    if not path.is_file() and (ROOT / path).is_file():  # relative to the repository
        path = ROOT / path
    path = path.resolve()
    cfg_source = (
        (str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path))
        if path.is_file()
        else "overrides (no yaml)"
    )
    cfg = load_config(
        path if path.is_file() else None, (FALLBACK if not path.is_file() else []) + overrides
    )
    torch.manual_seed(args.seed)
    dataset, learner = build(cfg, "cpu")
    m = cfg.model
    torch.manual_seed(args.seed)
    ref = ReferenceGAN(
        m.latent_dim,
        tuple(m.hidden_sizes),
        tuple(m.discriminator_hidden_sizes),
        m.discriminator_dropout,
        conv=m.architecture == "conv",
        prior=m.prior,
        ema_decay=cfg.adversarial.ema_decay,
    )
    betas = tuple(cfg.optim.betas)
    opt_d = torch.optim.Adam(ref.d.parameters(), lr=cfg.optim.lr, betas=betas)
    opt_g = torch.optim.Adam(ref.g.parameters(), lr=cfg.optim.lr, betas=betas)

    shape = dataset.train.shape[1:]  # pyrogen's GAN sees the data as its dataset gives them
    train = dataset.train.reshape(dataset.train.shape[0], -1)
    n = train.shape[0]
    gen = torch.Generator().manual_seed(args.seed)
    order = torch.cat(
        [torch.randperm(n, generator=gen) for _ in range(args.steps * args.batch_size // n + 1)]
    )
    batches = [
        train[order[i * args.batch_size : (i + 1) * args.batch_size]] for i in range(args.steps)
    ]

    def ref_step(x):
        ref.train()
        fake = ref.fake(x.shape[0]).detach()
        if args.r1:
            x = x.detach().requires_grad_(True)
        d_real = ref.d(x)
        d_loss = F.softplus(-d_real).mean() + F.softplus(ref.d(fake)).mean()
        if args.r1:  # Mescheder et al. 2018, as pyrogen's adversarial.r1_penalty
            (grad,) = torch.autograd.grad(d_real.sum(), x, create_graph=True)
            d_loss = d_loss + 0.5 * args.r1 * grad.pow(2).flatten(1).sum(1).mean()
        opt_d.zero_grad(set_to_none=True)
        d_loss.backward()
        opt_d.step()
        ref.d.requires_grad_(False)
        g_loss = F.softplus(-ref.d(ref.fake(x.shape[0]))).mean()
        ref.d.requires_grad_(True)
        opt_g.zero_grad(set_to_none=True)
        g_loss.backward()
        opt_g.step()
        ref.update_ema()
        return d_loss.item(), g_loss.item()

    pyro.set_rng_seed(args.seed)
    t_pyrogen = t_ref = 0.0
    last_p = last_r = None
    t0 = time.perf_counter()
    for i in range(0, args.steps, args.block):
        start = time.perf_counter()
        for x in batches[i : i + args.block]:
            last_p = learner.step(x.reshape(-1, *shape))
        t_pyrogen += time.perf_counter() - start
        start = time.perf_counter()
        for x in batches[i : i + args.block]:
            last_r = ref_step(x)
        t_ref += time.perf_counter() - start
        if (i // args.block) % 10 == 0:
            print(
                f"  step {i + args.block:>6}  pyrogen d {last_p['d_loss']:.3f} g "
                f"{last_p['g_loss']:.3f} | ref d {last_r[0]:.3f} g {last_r[1]:.3f}  "
                f"({time.perf_counter() - t0:.0f} s)",
                flush=True,
            )
    t_pyrogen /= args.steps
    t_ref /= args.steps

    valid = dataset.valid.reshape(dataset.valid.shape[0], -1)
    test = dataset.test.reshape(dataset.test.shape[0], -1)
    start = time.perf_counter()
    learner.model.eval()
    torch.manual_seed(args.seed + 1)
    pz_p = parzen_evaluate(
        learner.model.sample, valid, test, args.num_samples, num_valid=args.num_valid
    )
    t_eval_p = time.perf_counter() - start
    nan = {"mean": float("nan"), "stderr": float("nan"), "sigma": float("nan")}
    torch.manual_seed(args.seed + 1)
    pz_r = (
        parzen_evaluate(ref.sample, valid, test, args.num_samples, num_valid=args.num_valid)
        if args.ref_parzen
        else nan
    )
    t_eval = time.perf_counter() - start
    # sanity reference: the Parzen window on the training images themselves
    pz_d = parzen_evaluate(lambda k: train[:k], valid, test, n, num_valid=args.num_valid)
    return {
        "cfg_source": cfg_source,
        "cfg": cfg,
        "learner": learner,
        "reference": ref,
        "train": train,
        "valid": valid,
        "test": test,
        "pyrogen": pz_p,
        "plain": pz_r,
        "training_images": pz_d,
        "ms_per_step_pyrogen": 1000 * t_pyrogen,
        "ms_per_step_plain": 1000 * t_ref,
        "eval_seconds": t_eval,
        "eval_seconds_pyrogen": t_eval_p,
    }


def main() -> None:
    args = parser().parse_args()
    r = compare(args)
    cfg_source, n = r["cfg_source"], r["train"].shape[0]
    pz_p, pz_r, pz_d = r["pyrogen"], r["plain"], r["training_images"]
    t_pyrogen, t_ref = r["ms_per_step_pyrogen"] / 1000, r["ms_per_step_plain"] / 1000
    test, valid = r["test"], r["valid"]
    t_eval, t_eval_p = r["eval_seconds"], r["eval_seconds_pyrogen"]
    print()
    print(
        f"GAN on MNIST ({cfg_source}): {args.steps} steps (1 D + 1 G update each) of batch "
        f"{args.batch_size} on a {n}-image train subset (= {args.steps * args.batch_size / n:.1f}"
        f" epochs); torch threads {torch.get_num_threads()}"
    )
    print(
        f"Parzen log-likelihood on {test.shape[0]} test images, {args.num_samples} samples, "
        f"σ from a 10-value log grid in [0.1, 1] on {min(args.num_valid, valid.shape[0])} "
        f"validation images (nats); evaluation took {t_eval_p:.0f} s (pyrogen), {t_eval:.0f} s "
        "(all)"
    )
    print(f"{'':<34}{'Parzen test LL':>18}{'σ':>8}{'ms / step':>12}")
    fmt = lambda r: f"{r['mean']:.1f} ± {r['stderr']:.1f}"  # noqa: E731
    print(
        f"{'pyrogen AdversarialLearner':<34}{fmt(pz_p):>18}{pz_p['sigma']:>8.3f}"
        f"{1000 * t_pyrogen:>12.2f}"
    )
    print(
        f"{'plain PyTorch reference loop':<34}{fmt(pz_r):>18}{pz_r['sigma']:>8.3f}"
        f"{1000 * t_ref:>12.2f}"
    )
    print(f"{'training images as the samples':<34}{fmt(pz_d):>18}{pz_d['sigma']:>8.3f}{'—':>12}")
    print(f"{'GAN paper (Goodfellow et al. 2014)':<34}{'225 ± 2':>18}{'':>8}{'—':>12}")
    print(f"time ratio pyrogen / plain PyTorch: {t_pyrogen / t_ref:.2f}")
    arch = (
        "DCGAN-style conv networks"
        if r["cfg"].model.architecture == "conv"
        else "leaky-ReLU MLP discriminator"
    )
    print(
        "note: paper = maxout discriminator, 50,000 training images, full training; here = "
        f"{arch}, {n} images, {args.steps} steps"
    )


if __name__ == "__main__":
    main()

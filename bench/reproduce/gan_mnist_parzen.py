"""GAN on MNIST: the GAN paper's Parzen-window protocol (Goodfellow et al. 2014, Table 1),
pyrogen's GAN against a plain-PyTorch loop at equal budget and against the training images.

Protocol
--------
* Data: MNIST intensities in [0, 1]. The shared training file holds a 5,000-image subset
  (500 per digit), of which pyrogen holds out 1/6 for validation: the GANs train on 4,167
  images (the paper: 50,000), sigma is chosen on the 833 validation images (the paper: 1,000
  of its 10,000), and the score is on the complete 10,000-image MNIST test set.
* Architecture, two configs (``--config``):
  - ``configs/gan_mnist_dcgan.yaml`` (default): DCGAN-style generator z ~ U[-1, 1]^100 ->
    linear -> 64 x 7 x 7 -> transposed conv -> 32 x 14 x 14 (batch norm, ReLU) -> transposed
    conv -> 1 x 28 x 28 (sigmoid); discriminator two stride-2 convolutions (32, 64 channels,
    leaky ReLU) and a linear head; G's weights averaged (EMA, decay 0.999) for sampling;
    Adam lr 1e-3 (chosen by validation Parzen in pilots, see the config).
  - ``configs/gan_mnist.yaml``: the GAN paper's MLPs, generator 100 -> 1200 -> 1200 -> 784
    (ReLU, sigmoid output), discriminator 784 -> 240 -> 240 -> 1 with dropout 0.5 (leaky ReLU;
    the paper used maxout units), no EMA, Adam lr 2e-4.
  Both: non-saturating generator loss, k = 1, Adam (betas (0.5, 0.999)), batch 100,
  ``--steps`` D+G updates. The plain-PyTorch loop builds the same networks (and the same EMA)
  by hand; both sides see the same mini-batches in the same order
  (``bench/bench_gan_mnist.py``, timed in interleaved blocks).
* Evaluation: 10,000 samples, a Gaussian Parzen window whose sigma is chosen from
  ``logspace(-1, 0, 10)`` by validation log-likelihood, mean +- s.e. of log p(x) over the
  test images (nats). The same protocol on 4,167 *training images* used as the "samples" is
  the ceiling a model that memorised its training set would reach.
* Memorisation check: for 1,000 samples, the mean Euclidean distance to the nearest training
  image, against the same for 1,000 held-out test images (a generator that copies its
  training set has samples much nearer to the training images than new digits are).

What a Parzen score means, and does not (Theis, van den Oord & Bethge 2016): it is the
log-density of the test set under a kernel density estimate built from samples. In 784
dimensions with 10,000 kernels it is dominated by the distance from each test image to its
nearest samples, so it rewards samples that sit near real digits (including copies of the
training set) and it is far from the model's log-likelihood; a model's rank can flip with the
window. It is reported because the GAN paper did, beside samples and the memorisation check,
never as a likelihood.

    python bench/reproduce/gan_mnist_parzen.py                    # DCGAN, 12,000 steps
    python bench/reproduce/gan_mnist_parzen.py --r1 1             # + R1 on both sides (+156)
    python bench/reproduce/gan_mnist_parzen.py --config configs/gan_mnist.yaml --steps 3000
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from _common import HERE, ROOT, write_result  # noqa: E402
from bench_gan_mnist import compare, parser  # noqa: E402


def nearest_distance(x: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """Each row of x: its Euclidean distance to the nearest row of ``reference``."""
    return torch.cdist(x, reference).min(dim=1).values


def main() -> None:
    p = parser(__doc__)
    p.set_defaults(steps=12_000, ref_parzen=True, threads=1, config="configs/gan_mnist_dcgan.yaml")
    args = p.parse_args()
    start = time.perf_counter()
    r = compare(args)
    wall = time.perf_counter() - start
    torch.manual_seed(args.seed + 2)
    with torch.no_grad():
        samples = {
            "pyrogen": r["learner"].model.sample(1000).reshape(1000, -1),
            "plain": r["reference"].sample(1000).reshape(1000, -1),
        }
    train, test = r["train"], r["test"]
    held_out = test[torch.randperm(test.shape[0], generator=torch.Generator().manual_seed(0))]
    memo = {"test_images": nearest_distance(held_out[:1000], train).mean().item()}
    for name, s in samples.items():
        memo[name] = nearest_distance(s, train).mean().item()

    fig, axes = plt.subplots(1, 3, figsize=(10, 3.8))
    for ax, (title, imgs) in zip(
        axes,
        [
            ("pyrogen GAN samples", samples["pyrogen"][:64]),
            ("plain-PyTorch GAN samples", samples["plain"][:64]),
            ("nearest training image\nto each pyrogen sample", None),
        ],
        strict=True,
    ):
        if imgs is None:
            idx = torch.cdist(samples["pyrogen"][:64], train).argmin(dim=1)
            imgs = train[idx]
        grid = imgs.reshape(8, 8, 28, 28).permute(0, 2, 1, 3).reshape(8 * 28, 8 * 28)
        ax.imshow(grid.numpy(), cmap="gray", vmin=0, vmax=1)
        ax.set_title(title, fontsize=10)
        ax.axis("off")
    r1 = f", R1 γ = {args.r1:g} on both sides" if args.r1 else ""
    fig.suptitle(
        f"{r['cfg_source']}: GAN on MNIST (4,167 training images), {args.steps:,} steps{r1}"
    )
    fig.tight_layout(rect=(0, 0, 1, 0.94))  # leave the suptitle its own row
    name = f"gan_mnist_parzen-{Path(args.config).stem}" + (f"-r1-{args.r1:g}" if args.r1 else "")
    figure = HERE / "results" / f"{name}.png"
    figure.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(figure, dpi=110)

    keep = ("mean", "stderr", "sigma", "num_samples")
    result = {
        "command": "python bench/reproduce/gan_mnist_parzen.py "
        + " ".join(f"--{k.replace('_', '-')}={v}" for k, v in vars(args).items()),
        "config": r["cfg_source"],
        "architecture": r["cfg"].model.architecture,
        "ema_decay": r["cfg"].adversarial.ema_decay,
        "steps": args.steps,
        "r1_penalty": args.r1,
        "threads": args.threads,
        "train_images": int(train.shape[0]),
        "epochs": args.steps * args.batch_size / train.shape[0],
        "parzen": {
            "pyrogen": {k: r["pyrogen"][k] for k in keep},
            "plain_pytorch": {k: r["plain"][k] for k in keep},
            "training_images": {k: r["training_images"][k] for k in keep},
            "paper": {"mean": 225.0, "stderr": 2.0},
        },
        "nearest_training_image_distance": memo,
        "ms_per_step": {"pyrogen": r["ms_per_step_pyrogen"], "plain": r["ms_per_step_plain"]},
        "wall_seconds": round(wall, 1),
        "figure": str(figure.relative_to(ROOT)),
    }
    pz = result["parzen"]
    print(
        f"Parzen (nats): pyrogen {pz['pyrogen']['mean']:.1f} +- {pz['pyrogen']['stderr']:.1f}, "
        f"plain {pz['plain_pytorch']['mean']:.1f} +- {pz['plain_pytorch']['stderr']:.1f}, "
        f"training images {pz['training_images']['mean']:.1f}; nearest-training distance: "
        + ", ".join(f"{k} {v:.2f}" for k, v in memo.items()),
        flush=True,
    )
    write_result(name, result)


if __name__ == "__main__":
    main()

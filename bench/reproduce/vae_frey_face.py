"""Gaussian VAE on Frey Face: the AEVB paper's experiment (Kingma & Welling 2014, Fig. 2),
the variational lower bound against training samples seen, for several latent sizes.

Protocol
--------
* Data: Roweis's ``frey_rawface.mat``, 1,965 grayscale 28 x 20 frames, intensities scaled
  to [0, 1] (no dequantisation, as in the paper); pyrogen's fixed split (seed-0
  permutation): 1,565 train / 200 valid / 200 test. The paper does not publish its split.
* Model, as in the paper's Frey experiment: x_i ~ N(mu_i(z), sigma_i^2(z)) with mu through
  a sigmoid (means in (0, 1)) and log sigma from the decoder (floored at 0.01,
  ``model.min_scale``); one hidden layer of 200 tanh units in decoder and encoder; diagonal
  Gaussian q(z|x); z ~ N(0, I) with ``--latents`` sizes (the paper's 2, 5, 10, 20).
* Objective: the ELBO with one reparameterised sample (Pyro's ``Trace_ELBO``), batch 100.
  The paper used Adagrad (step size from {0.01, 0.02, 0.1}) and a weight-decay prior; pyrogen
  has no Adagrad, so Adam at lr ``--lr`` (1e-3) with no weight decay: an honest difference.
* ``--epochs`` epochs (1,565 images / 100 = 16 steps each; 3,000 epochs = 4.7 million
  training samples, the range of the paper's x axis for Frey Face).
* Evaluation per latent size: the ELBO on the train and test splits (the paper's two
  curves), and log p(x) by importance sampling with K = ``--k`` (5,000) on the test split,
  per image, in nats, in the [0, 1]-scaled intensity space (a density, not a probability:
  values are positive because sigma is far below 1).

The paper reports the bound only as a figure, so there is no number to match: the claims to
reproduce are its trend (a larger latent space reaches a higher bound, and "superfluous
latent variables did not result in overfitting") and the shape of its curves. Figure:
``bench/reproduce/results/vae_frey_face.png``.

    python bench/reproduce/vae_frey_face.py
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import matplotlib
import matplotlib.ticker

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from _common import DATA, HERE, ROOT, estimate, write_result  # noqa: E402

import pyrogen  # noqa: E402
from pyrogen.config import EvaluationConfig  # noqa: E402
from pyrogen.training.metrics import read_metrics  # noqa: E402

TRAIN_IMAGES = 1565


def read_curves(run_dir: Path) -> dict[str, list[tuple[float, float]]]:
    """(training samples seen, ELBO) of a run: train rows (the loss, -ELBO, averaged since the
    previous row) and validation rows."""
    records = read_metrics(run_dir)
    per_step = TRAIN_IMAGES / -(-TRAIN_IMAGES // 100)  # images per step, 16 steps an epoch
    return {
        "train": [
            (r["step"] * per_step, -r["loss"])
            for r in records
            if r["split"] == "train" and r.get("loss") is not None
        ],
        "valid": [
            (r["epoch"] * TRAIN_IMAGES, r["elbo"])
            for r in records
            if r["split"] == "valid" and r.get("elbo") is not None
        ],
    }


def plot(curves: dict[int, dict[str, list[tuple[float, float]]]]) -> Path:
    """The paper's figure: the bound against training samples, one colour per latent size."""
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for i, latent in enumerate(curves):
        colour = f"C{i}"
        for split, style in (("train", "-"), ("valid", "--")):
            pts = curves[latent][split]
            if pts:
                ax.plot(*zip(*pts, strict=True), style, color=colour, lw=1.2)
        ax.plot([], [], "-", color=colour, label=f"$N_z$ = {latent}")
    ax.plot([], [], "-", color="0.4", label="train (running mean)")
    ax.plot([], [], "--", color="0.4", label="validation")
    ax.set_xscale("log")
    ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax.set_xlabel("training samples evaluated")
    ax.set_ylabel("ELBO per image (nats)")
    ax.set_title("Frey Face, Gaussian VAE: lower bound vs training samples")
    lows = [v for c in curves.values() for pts in c.values() for _, v in pts[len(pts) // 10 :]]
    if lows:
        ax.set_ylim(min(lows) - 50, max(lows) + 50)
    ax.legend(fontsize=8, loc="upper left")  # the curves start low on the left
    fig.tight_layout()
    figure = HERE / "results" / "vae_frey_face.png"
    figure.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(figure, dpi=120)
    return figure


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--latents", type=int, nargs="+", default=[2, 5, 10, 20])
    p.add_argument("--epochs", type=int, default=3000)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--k", type=int, default=5000)
    p.add_argument("--threads", default="1")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--data-root", default=DATA)
    p.add_argument("--runs", default=str(ROOT / "bench" / "reproduce" / "runs"))
    p.add_argument(
        "--replot", action="store_true", help="only redraw the figure from the run folders"
    )
    args = p.parse_args()
    if args.replot:
        runs = Path(args.runs)
        print(
            "wrote",
            plot(
                {z: read_curves(runs / f"vae_frey_face-z{z}-seed{args.seed}") for z in args.latents}
            ),
        )
        return

    rows, curves = [], {}
    for latent in args.latents:
        ov = [
            f"data.root={args.data_root}",
            f"model.latent_dim={latent}",
            f"train.epochs={args.epochs}",
            f"train.eval_every={max(1, args.epochs // 30)}",
            f"train.checkpoint_every={max(1, args.epochs // 10)}",
            "train.log_every=160",
            f"train.seed={args.seed}",
            f"train.num_threads={args.threads}",
            f"optim.lr={args.lr}",
            f"output.dir={args.runs}",
            f"output.name=vae_frey_face-z{latent}-seed{args.seed}",
            "output.tensorboard=false",
        ]
        cfg = pyrogen.load_config(ROOT / "configs" / "vae_frey.yaml", ov)
        start = time.perf_counter()
        run = pyrogen.train(cfg, quiet=True)
        train_s = time.perf_counter() - start
        threads = int(args.threads) if args.threads != "auto" else "auto"
        test = pyrogen.evaluate(
            run, EvaluationConfig(split="test", is_samples=args.k, num_threads=threads)
        )
        train = pyrogen.evaluate(
            run, EvaluationConfig(split="train", is_samples=args.k, num_threads=threads)
        )
        row = {
            "latent_dim": latent,
            "train_elbo": estimate(train, "elbo"),
            "train_log_px": estimate(train, "importance_sampled"),
            "test_elbo": estimate(test, "elbo"),
            "test_log_px": estimate(test, "importance_sampled"),
            "train_seconds": round(train_s, 1),
            "run_dir": str(run.run_dir),
        }
        rows.append(row)
        curves[latent] = read_curves(run.run_dir)
        print(
            f"z={latent:>3}: ELBO train {row['train_elbo']['mean']:.1f} test "
            f"{row['test_elbo']['mean']:.1f} +- {row['test_elbo']['stderr']:.1f}; IS log p(x) "
            f"test {row['test_log_px']['mean']:.1f} +- {row['test_log_px']['stderr']:.1f} "
            f"({train_s / 60:.1f} min)",
            flush=True,
        )

    figure = plot(curves)
    write_result(
        "vae_frey_face",
        {
            "command": "python bench/reproduce/vae_frey_face.py "
            + " ".join(f"--{k.replace('_', '-')}={v}" for k, v in vars(args).items()),
            "epochs": args.epochs,
            "threads": args.threads,
            "training_samples": args.epochs * TRAIN_IMAGES,
            "K": args.k,
            "rows": rows,
            "figure": str(figure.relative_to(ROOT)),
        },
    )


if __name__ == "__main__":
    main()

"""VAE variants on statically binarized MNIST at equal budget, IS K = 5000; and a β sweep.

Protocol
--------
* Data: Larochelle's statically binarized MNIST, the 50,000 / 10,000 / 10,000 ``.amat``
  split (``../shared/data/binarized_mnist``), shuffled each epoch.
* Base model (``configs/vae_binarized_mnist.yaml``): Bernoulli decoder 50 -> 500 -> 500 ->
  784; encoder 784 -> 500 -> 500 -> 2 x 50 (diagonal Gaussian q(z|x)); ``--activation``
  (default ReLU for every variant: with the config's tanh the VampPrior collapses: its
  posteriors at the data and at the pseudo-inputs merge within 50 steps, 0 of 50 units
  active after 3 epochs, test ELBO −206.9 with or without a KL warm-up); batch 100,
  Adam lr ``--lr`` with a cosine decay to lr / 20, the KL term warmed up linearly from 0 to 1
  over ``--warmup-epochs`` (ELBO variants; none under ``--iwae``).
* Variants, each a list of config overrides on the base (``VARIANTS``):
  ``standard`` (p(z) = N(0, I)), ``vamp`` (VampPrior, K = 500 pseudo-inputs started at random
  training images; Tomczak & Welling 2018), ``planar`` (q(z|x) followed by 10 planar flows;
  Rezende & Mohamed 2015), ``two_level`` (a two-level hierarchy of latents, ``model.levels=2``),
  ``vamp_two_level`` (both: the VampPrior on the top latent z2, the paper's HVAE + VampPrior).
  ``--iwae K`` trains every variant on the IWAE bound instead (Pyro's ``RenyiELBO``, alpha =
  0, K vectorised particles).
  ``--set KEY=VALUE ... --label NAME`` adds config overrides to every variant, after its
  own (e.g. ``optim.name=adamw optim.weight_decay=0.05`` or ``model.hidden_sizes=[300,300]``);
  NAME goes into the run folders and the results file's name.
* Budget: pyrogen's training has no wall-clock limit, so equal time is set in steps. By
  default every variant trains ``--epochs`` epochs (equal epochs; each variant's training
  seconds are recorded beside its numbers, so the comparison at equal *time* is read from
  them). ``--minutes M`` gives every variant the same time instead: a pilot run of
  ``--pilot-steps`` steps measures each variant's seconds per step (setup included, so the
  estimate errs on the short side), and the variant then trains ``M * 60 / (s per step)``
  steps (``train.max_steps``); ``--steps N`` trains N steps with no pilot. Timings on a
  shared machine are noisy; the JSON records both the planned steps and the seconds each run
  took.
* Evaluation: the test ELBO and log p(x) by importance sampling with K = ``--k`` proposals
  from q(z|x) (``pyrogen.evaluate``), mean +- standard error over all 10,000 test images
  (``--max-test N``: a seeded random subset of N, said so in the JSON).

References (static binarized MNIST, log p(x) in nats): VampPrior paper (Tomczak & Welling
2018, their gated MLPs, 40 latents): standard prior -88.56, VampPrior -85.57, two-level
(HVAE) standard -86.05, VampPrior -83.19; pythae's VampPrior reproduction -85.79; planar flows
K = 10 (Rezende & Mohamed 2015, DLGM): <= -87.5 (the paper reports the ELBO's bound), diagonal
q <= -89.9.

β sweep (``--beta-sweep B1 B2 ...``): one model per β (the standard variant trained on
E_q[log p(x|z)] - β KL(q || p), ``--sweep-epochs`` epochs, no warm-up), then on a seeded random
``--sweep-examples`` test images: the rate R = E_x KL(q(z|x) || p(z)) and the active units
(``pyrogen.diagnose``), the distortion D = -E_x E_q[log p(x|z)] (one z per image), and the
ELBO at β = 1, -(R + D). Writes ``results/vae_variants-beta_sweep.json`` and the
rate–distortion figure ``results/vae_variants-beta_sweep.png``.

    python bench/reproduce/vae_variants.py --epochs 100
    python bench/reproduce/vae_variants.py --minutes 60 --variants standard vamp
    python bench/reproduce/vae_variants.py --steps 110000 --variants vamp --label adamw0.1-220ep \\
        --set optim.name=adamw optim.weight_decay=0.1  # the VampPrior at -85.48 nats
    nice -n 10 python bench/reproduce/vae_variants.py --beta-sweep 0.25 0.5 1 2 4 --sweep-epochs 3
"""

from __future__ import annotations

import argparse
import math
import time
import warnings
from typing import Any

import torch
from _common import DATA, HERE, ROOT, estimate, write_result
from matplotlib.figure import Figure

import pyrogen
from pyrogen.config import EvaluationConfig
from pyrogen.evaluation.diagnostics import PosteriorCollapseWarning

CONFIG = ROOT / "configs" / "vae_binarized_mnist.yaml"
STEPS_PER_EPOCH = 50_000 // 100

#: each variant: the config overrides on the base
VARIANTS: dict[str, list[str]] = {
    "standard": ["model.prior=standard"],
    "vamp": ["model.prior=vamp", "model.num_pseudo_inputs=500"],
    "planar": ["guide.name=planar", "guide.num_flows=10"],
    "two_level": ["model.levels=2"],
    "vamp_two_level": ["model.prior=vamp", "model.num_pseudo_inputs=500", "model.levels=2"],
}
#: published log p(x) (nats) beside each variant
REFERENCES: dict[str, dict[str, float]] = {
    "standard": {
        "Tomczak & Welling 2018, VAE standard prior": -88.56,
        "Rezende & Mohamed 2015, diagonal q (bound)": -89.9,
    },
    "vamp": {"Tomczak & Welling 2018, VampPrior": -85.57, "pythae, VampPrior": -85.79},
    "planar": {"Rezende & Mohamed 2015, planar K = 10 (bound)": -87.5},
    "two_level": {"Tomczak & Welling 2018, HVAE standard prior": -86.05},
    "vamp_two_level": {
        "Tomczak & Welling 2018, HVAE VampPrior": -83.19,
        "Tomczak & Welling 2018, one-level VampPrior": -85.57,
    },
}


def common(args: argparse.Namespace, name: str) -> list[str]:
    """The overrides every run shares: data, batch, optimiser, threads, run folder."""
    return [
        f"data.root={args.data_root}",
        "train.batch_size=100",
        f"train.seed={args.seed}",
        f"train.num_threads={args.threads}",
        "train.log_every=500",
        f"optim.lr={args.lr}",
        f"model.activation={args.activation}",
        "optim.schedule=cosine",
        "optim.min_lr_ratio=0.05",
        f"output.dir={args.runs}",
        f"output.name={name}-seed{args.seed}",
        "output.tensorboard=false",
    ]


def objective(args: argparse.Namespace) -> list[str]:
    """The training bound: the ELBO with a KL warm-up, or the IWAE bound with ``--iwae`` K."""
    if args.iwae is not None:
        return [
            "elbo.name=renyi",
            "elbo.alpha=0",
            f"elbo.num_particles={args.iwae}",
            "elbo.vectorize_particles=true",
        ]
    return [f"elbo.kl_warmup_steps={args.warmup_epochs * STEPS_PER_EPOCH}"]


def step_budget(steps: int) -> list[str]:
    """The overrides that train ``steps`` steps, evaluating and checkpointing ten times."""
    epochs = math.ceil(steps / STEPS_PER_EPOCH)
    every = max(1, epochs // 10)
    return [
        f"train.epochs={epochs}",
        f"train.max_steps={steps}",
        f"train.eval_every={every}",
        f"train.checkpoint_every={every}",
    ]


def budget(args: argparse.Namespace, variant: str) -> tuple[list[str], dict[str, Any]]:
    """``train.epochs`` (equal epochs), ``--steps`` steps, or with ``--minutes`` the
    ``train.max_steps`` that a pilot run says fit in that time; the overrides and what was
    measured."""
    if args.steps is not None:  # a fixed number of steps: no pilot
        return step_budget(args.steps), {"planned_steps": args.steps}
    if args.minutes is None:
        every = max(1, args.epochs // 10)
        ov = [f"train.epochs={args.epochs}", f"train.eval_every={every}"]
        return [*ov, f"train.checkpoint_every={every}"], {"epochs": args.epochs}
    seconds = []
    for n in (args.pilot_steps, 2 * args.pilot_steps):  # the difference drops the setup time
        pilot = [
            *VARIANTS[variant],
            *objective(args),
            *common(args, f"vae_variants-pilot{n}-{variant}"),
            *args.set,
            f"train.epochs={math.ceil(n / STEPS_PER_EPOCH)}",
            f"train.max_steps={n}",
            "train.eval_every=0",
            "train.checkpoint_every=0",
            "output.overwrite=true",  # a pilot is only timed
        ]
        start = time.perf_counter()
        pyrogen.train(pyrogen.load_config(CONFIG, pilot), quiet=True)
        seconds.append(time.perf_counter() - start)
    per_step = (seconds[1] - seconds[0]) / args.pilot_steps
    if per_step <= 0:  # a noisy machine: fall back to the longer pilot, setup included
        per_step = seconds[1] / (2 * args.pilot_steps)
    steps = max(1, int(args.minutes * 60 / per_step))
    return step_budget(steps), {
        "pilot_seconds_per_step": round(per_step, 4),
        "planned_steps": steps,
    }


def run_variant(args: argparse.Namespace, variant: str, tag: str) -> dict[str, Any]:
    """Train one variant at the budget, then its test ELBO and IS log p(x)."""
    steps, planned = budget(args, variant)
    ov = [*VARIANTS[variant], *objective(args), *common(args, f"{tag}-{variant}"), *steps]
    ov += args.set  # the user's own overrides come last, so they win
    print(f"{variant}: overrides", " ".join(ov), flush=True)
    start = time.perf_counter()
    run = pyrogen.train(pyrogen.load_config(CONFIG, ov), quiet=False)
    train_s = time.perf_counter() - start
    ev = EvaluationConfig(
        split="test",
        is_samples=args.k,
        max_test=args.max_test,
        parzen_samples=100,  # not part of this protocol: kept cheap
        parzen_valid=100,
        quiet=False,
        num_threads=args.threads if args.threads == "auto" else int(args.threads),
    )
    start = time.perf_counter()
    report = pyrogen.evaluate(run, ev)
    eval_s = time.perf_counter() - start
    row = {
        "overrides": ov,
        "run_dir": str(run.run_dir),
        **planned,
        "test_elbo": estimate(report, "elbo"),
        "test_log_px": estimate(report, "importance_sampled"),
        "train_seconds": round(train_s, 1),
        "eval_seconds": round(eval_s, 1),
        "parameters": report["parameters"],
        "references_log_px": REFERENCES[variant],
    }
    lp = row["test_log_px"]
    print(
        f"{variant}: test log p(x) {lp['mean']:.2f} +- {lp['stderr']:.2f} "
        f"(ELBO {row['test_elbo']['mean']:.2f}), train {train_s / 60:.1f} min",
        flush=True,
    )
    return row


# ------------------------------------------------------------------ the β sweep
@torch.no_grad()
def distortion(run: pyrogen.TrainedRun, num_examples: int, seed: int) -> dict[str, float]:
    """D = −E_x E_q(z|x)[log p(x | z)], one z per image, on the seeded random test subset that
    :func:`pyrogen.diagnose` with the same ``max_examples`` and ``seed`` reads."""
    test = run.dataset.test
    keep = torch.randperm(len(test), generator=torch.Generator().manual_seed(seed))
    x = run.dataset.process(test[keep[:num_examples]], torch.Generator().manual_seed(seed))
    run.learner.module.eval()
    z = run.model.guide.posterior(x).sample()
    d = -run.model.decode(z).log_prob(x).double()
    return {"mean": d.mean().item(), "stderr": (d.std() / math.sqrt(len(d))).item()}


def sweep_point(args: argparse.Namespace, beta: float) -> dict[str, Any]:
    """Train the standard variant at ``beta``; its rate, distortion and active units."""
    ov = [
        *common(args, f"vae_variants-beta{beta:g}"),
        f"elbo.beta={beta}",
        f"train.epochs={args.sweep_epochs}",
        "train.eval_every=0",
        "train.checkpoint_every=0",
        "output.overwrite=true",  # short runs: a new sweep replaces them
    ]
    start = time.perf_counter()
    run = pyrogen.train(pyrogen.load_config(CONFIG, ov), quiet=True)
    train_s = time.perf_counter() - start
    torch.manual_seed(args.seed)
    with warnings.catch_warnings():  # collapse at large β is what the sweep is looking for
        warnings.simplefilter("ignore", PosteriorCollapseWarning)
        diag = pyrogen.diagnose(
            run, max_examples=args.sweep_examples, gap_examples=None, seed=args.seed
        )
    rate = diag["kl"]["total"]
    dist = distortion(run, args.sweep_examples, args.seed)
    units = diag["active_units"]
    point = {
        "beta": beta,
        "rate_kl": {k: rate[k] for k in ("mean", "stderr")},
        "distortion": dist,
        "elbo": -(rate["mean"] + dist["mean"]),
        "active_units": units["active"],
        "latent_dim": units["dimension"],
        "mutual_information": diag["mutual_information"]["mean"],
        "train_seconds": round(train_s, 1),
        "run_dir": str(run.run_dir),
    }
    print(
        f"β = {beta:g}: rate {rate['mean']:.2f}, distortion {dist['mean']:.2f}, "
        f"ELBO {point['elbo']:.2f}, {units['active']} of {units['dimension']} units active "
        f"({train_s:.0f} s)",
        flush=True,
    )
    return point


def sweep_figure(points: list[dict[str, Any]]) -> Figure:
    """Left: distortion against rate, each point labelled by its β, with the line of equal
    ELBO, R + D = const, through the best point; right: active units against β."""
    fig = Figure(figsize=(10, 4))
    ax, au = fig.subplots(1, 2, gridspec_kw={"width_ratios": [3, 2]})
    rates = [p["rate_kl"]["mean"] for p in points]
    dists = [p["distortion"]["mean"] for p in points]
    ax.plot(rates, dists, "o-", color="tab:blue")
    span = max(rates) - min(rates) or 1.0
    best = max(points, key=lambda p: p["elbo"])
    r0, r1 = min(rates) - 0.1 * span, max(rates) + 0.1 * span
    ax.plot(
        [r0, r1],
        [-best["elbo"] - r0, -best["elbo"] - r1],
        "--",
        color="gray",
        lw=0.8,
        label=f"R + D = {-best['elbo']:.1f}: the best ELBO (β = {best['beta']:g})",
    )
    ax.legend(loc="upper right", fontsize=8)
    for p, r, d in zip(points, rates, dists, strict=True):
        ax.annotate(f"β = {p['beta']:g}", (r, d), xytext=(5, 4), textcoords="offset points")
    ax.set_xlabel("rate R = E_x KL(q(z|x) ‖ p(z)) (nats)")
    ax.set_ylabel("distortion D = −E_x E_q log p(x|z) (nats)")
    ax.set_title("rate–distortion on binarized MNIST test images", fontsize=9)
    betas = [p["beta"] for p in points]
    au.plot(betas, [p["active_units"] for p in points], "o-", color="tab:orange")
    au.set_xscale("log")
    au.minorticks_off()
    au.set_xticks(betas, [f"{b:g}" for b in betas])
    au.set_ylim(0, points[0]["latent_dim"] + 1)
    au.set_xlabel("β")
    au.set_ylabel(f"active units (of {points[0]['latent_dim']})")
    au.set_title("active units: Cov_x E_q[z_u | x] > 0.01", fontsize=9)
    fig.tight_layout()
    return fig


def beta_sweep(args: argparse.Namespace) -> None:
    points = [sweep_point(args, b) for b in sorted(args.beta_sweep)]
    png = HERE / "results" / "vae_variants-beta_sweep.png"
    png.parent.mkdir(parents=True, exist_ok=True)
    sweep_figure(points).savefig(png, dpi=110, bbox_inches="tight")
    print(f"wrote {png}", flush=True)
    write_result(
        "vae_variants-beta_sweep",
        {
            "command": command(args),
            "epochs_per_beta": args.sweep_epochs,
            "test_examples": f"random {args.sweep_examples} (seed {args.seed})",
            "threads": args.threads,
            "figure": str(png.relative_to(ROOT)),
            "points": points,
        },
    )


def command(args: argparse.Namespace) -> str:
    flags = []
    for k, v in vars(args).items():
        if v is None or v is False or v == []:
            continue
        flag = f"--{k.replace('_', '-')}"
        flags.append(
            flag if v is True else f"{flag}={' '.join(map(str, v)) if isinstance(v, list) else v}"
        )
    return "python bench/reproduce/vae_variants.py " + " ".join(flags)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS))
    p.add_argument("--epochs", type=int, default=100, help="equal epochs (default budget)")
    p.add_argument("--minutes", type=float, default=None, help="equal training time instead")
    p.add_argument("--steps", type=int, default=None, help="a fixed number of steps instead")
    p.add_argument("--pilot-steps", type=int, default=100, help="--minutes: the timing pilot")
    p.add_argument("--warmup-epochs", type=int, default=10)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--activation", default="relu", choices=["relu", "tanh"])
    p.add_argument("--iwae", type=int, default=None, metavar="K", help="train on the IWAE bound")
    p.add_argument("--k", type=int, default=5000, help="importance samples per test image")
    p.add_argument("--max-test", type=int, default=None, help="a random subset of the test set")
    p.add_argument("--beta-sweep", type=float, nargs="+", default=None, metavar="BETA")
    p.add_argument("--sweep-epochs", type=int, default=3)
    p.add_argument("--sweep-examples", type=int, default=2000, help="test images per β")
    p.add_argument("--threads", default="auto", help="train.num_threads")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--data-root", default=DATA)
    p.add_argument("--runs", default=str(ROOT / "bench" / "reproduce" / "runs"))
    p.add_argument(
        "--set",
        nargs="+",
        default=[],
        metavar="KEY=VALUE",
        help="config overrides for every variant, e.g. optim.weight_decay=1e-4 (needs --label)",
    )
    p.add_argument("--label", default=None, help="names the runs and results of a --set")
    args = p.parse_args()
    if args.set and not args.label:
        p.error("--set needs --label, which names its runs and results file")
    if args.set and args.beta_sweep is not None:
        p.error("--set applies to the variants, not to --beta-sweep's own models")

    if args.beta_sweep is not None:
        beta_sweep(args)
        return
    budget_tag = (
        f"{args.steps}steps"
        if args.steps is not None
        else f"{args.epochs}ep"
        if args.minutes is None
        else f"{args.minutes:g}min"
    )
    tag = "vae_variants" + (f"-iwae{args.iwae}" if args.iwae else "") + f"-{budget_tag}"
    tag += f"-{args.label}" if args.label else ""
    subset = f"-test{args.max_test}" if args.max_test is not None else ""
    rows = {v: run_variant(args, v, tag) for v in args.variants}
    write_result(
        f"{tag}{subset}-{'-'.join(args.variants)}",
        {
            "command": command(args),
            "budget": {"ep": "equal epochs", "min": f"{args.minutes} min each"}.get(
                budget_tag.lstrip("0123456789."), f"{args.steps} steps each"
            ),
            "objective": "ELBO" if args.iwae is None else f"IWAE k = {args.iwae}",
            "threads": args.threads,
            "K": args.k,
            "test_subset": "all" if args.max_test is None else f"random {args.max_test} (seed 0)",
            "variants": rows,
        },
    )


if __name__ == "__main__":
    main()

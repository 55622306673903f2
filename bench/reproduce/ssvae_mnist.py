"""M2 (Kingma et al. 2014) on MNIST: pyrogen's ``model.family=ssvae`` beside the ``SSVAE`` class
of Pyro's own ``examples/vae/ss_vae_M2.py``, at equal data, architecture, batch size, optimiser
and epochs, in one process; test accuracy per number of labels and milliseconds per step.

Protocol (pyrogen's ``semisupervised_mnist``): the unlabelled pool is the 50,000 statically
binarized MNIST train images; ``labelled`` images of the shared MNIST train file (balanced per
class, chosen with the seed) are labelled, its other images validate, the MNIST test file
(10,000) tests; grey images are binarised once. Both models see exactly these tensors. Pyro's
example is trained its own way (its ``SVI`` steps: unlabelled batches, with the labelled set's
batches interleaved once per epoch, then the auxiliary SVI on those, α = 46 per example);
pyrogen adds a cycled labelled batch to every step. Each reports the test accuracy at its
best validation accuracy. The paper's M2 with 100 labels: 11.97 ± 1.71 % test error.

    python bench/reproduce/ssvae_mnist.py --pyro-examples /work/ref/examples/vae \\
        --labels 100 600 1000 3000 --epochs 50

Pyro's example is imported from ``--pyro-examples`` (never copied here); the modules it imports
only for its command line (visdom, its torchvision data loaders) are stubbed.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
import types
from pathlib import Path

import pyro
import torch
import torch.nn.functional as F
from _common import DATA, ROOT, write_result
from pyro.infer import SVI, Trace_ELBO, TraceEnum_ELBO, config_enumerate
from pyro.optim import Adam

import pyrogen
from pyrogen.training.trainer import evaluate_split

PAPER = {"labels": 100, "test_error_percent": 11.97, "stderr": 1.71}


def pyro_ssvae_class(examples: Path) -> type:
    """``SSVAE`` of Pyro's ``ss_vae_M2.py`` (its command-line-only imports stubbed)."""
    stubs = {
        "visdom": {"Visdom": None},
        "utils.mnist_cached": {"MNISTCached": None, "mkdir_p": None, "setup_data_loaders": None},
        "pyro.contrib.examples.util": {"print_and_log": print},
    }
    for name, attrs in stubs.items():
        if name not in sys.modules:
            try:
                __import__(name)
            except ImportError:
                module = types.ModuleType(name)
                module.__dict__.update(attrs)
                sys.modules[name] = module
    sys.path.insert(0, str(examples))
    import ss_vae_M2  # noqa: PLC0415

    return ss_vae_M2.SSVAE


def accuracy(classify, x: torch.Tensor, y: torch.Tensor, batch: int = 1000) -> float:
    hits = sum(
        int((classify(x[i : i + batch]) == y[i : i + batch]).sum()) for i in range(0, len(x), batch)
    )
    return hits / len(x)


def run_pyro(cls: type, ds, args, seed: int) -> dict:
    """Pyro's example's training at equal data: its SVI steps, its interleaving."""
    pyro.clear_param_store()
    pyro.set_rng_seed(seed)
    y_train = ds.train_labels
    xu, xl = ds.train[y_train < 0], ds.train[y_train >= 0]
    yl = F.one_hot(y_train[y_train >= 0], 10).float()
    net = cls(z_dim=args.latent_dim, hidden_layers=args.hidden, config_enum="parallel",
              aux_loss_multiplier=args.pyro_alpha)  # fmt: skip
    opt = Adam({"lr": args.lr, "betas": (0.9, 0.999)})
    guide = config_enumerate(net.guide, "parallel", expand=True)
    elbo = TraceEnum_ELBO(max_plate_nesting=1, strict_enumeration_warning=False)
    svis = [SVI(net.model, guide, opt, loss=elbo)]
    svis.append(SVI(net.model_classify, net.guide_classify, opt, loss=Trace_ELBO()))
    b = args.batch_size
    classify = lambda x: net.encoder_y(x).argmax(-1)  # noqa: E731
    best, test_at_best, steps, seconds = -1.0, 0.0, 0, 0.0
    g = torch.Generator().manual_seed(seed)
    for _ in range(args.epochs):
        unsup = xu[torch.randperm(len(xu), generator=g)].split(b)
        perm = torch.randperm(len(xl), generator=g)
        sup = list(zip(xl[perm].split(b), yl[perm].split(b), strict=True))
        every = max(1, int((len(xu) + len(xl)) / len(xl)))
        it_u, it_s, n_sup = iter(unsup), iter(sup), 0
        for i in range(len(unsup) + len(sup)):
            supervised = i % every == 1 and n_sup < len(sup)
            batch = next(it_s) if supervised else (next(it_u),)
            n_sup += supervised
            start = time.perf_counter()
            for svi in svis if supervised else svis[:1]:
                svi.step(*batch)
            seconds += time.perf_counter() - start
            steps += 1
        with torch.no_grad():
            valid = accuracy(classify, ds.valid, ds.valid_labels)
            if valid > best:
                best, test_at_best = valid, accuracy(classify, ds.test, ds.test_labels)
    return {"best_valid_accuracy": best, "test_accuracy": test_at_best,
            "ms_per_step": 1000 * seconds / steps, "steps": steps}  # fmt: skip


def run_pyrogen(cfg, out: Path) -> tuple[dict, object]:
    run = pyrogen.train(cfg, run_dir=out, quiet=True, overwrite=True)
    summary = [
        line for line in (out / "metrics.jsonl").read_text().splitlines() if "summary" in line
    ]
    import json  # noqa: PLC0415

    s = json.loads(summary[-1])
    test = evaluate_split(run.learner, run.dataset, "test", 1000, labels=True)["accuracy"]
    total_steps = cfg.train.epochs * math.ceil(run.dataset.train.shape[0] / cfg.train.batch_size)
    return {"best_valid_accuracy": s["best_accuracy"], "test_accuracy": test,
            "ms_per_step": 1000 * s["train_seconds"] / total_steps, "steps": total_steps,
            "best_step": s.get("best_step")}, run  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--pyro-examples", type=Path, default=Path("/work/ref/examples/vae"))
    p.add_argument("--labels", type=int, nargs="+", default=[100, 600, 1000, 3000])
    p.add_argument("--epochs", type=int, default=50)
    p.add_argument("--batch-size", type=int, default=200)
    p.add_argument("--latent-dim", type=int, default=50)
    p.add_argument("--hidden", type=int, nargs="+", default=[500])
    p.add_argument("--lr", type=float, default=4.2e-4)
    p.add_argument("--pyro-alpha", type=float, default=46.0, help="Pyro's aux_loss_multiplier")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--data-root", default=DATA)
    p.add_argument("--out", type=Path, default=Path("/tmp/pyrogen-ssvae-bench"))
    p.add_argument("--name", default="ssvae_mnist")
    args = p.parse_args()
    torch.set_num_threads(1)
    cls = pyro_ssvae_class(args.pyro_examples)
    rows = []
    for labels in args.labels:
        cfg = pyrogen.load_config(ROOT / "configs" / "ssvae_mnist.yaml", [
            f"data.root={args.data_root}", f"data.labelled={labels}",
            f"train.epochs={args.epochs}", f"train.batch_size={args.batch_size}",
            f"model.latent_dim={args.latent_dim}", f"model.hidden_sizes={args.hidden}",
            f"optim.lr={args.lr}", f"train.seed={args.seed}", "train.device=cpu",
            "train.num_threads=1", "output.figures=false", "output.tensorboard=false",
        ])  # fmt: skip
        ours, run = run_pyrogen(cfg, args.out / f"labels{labels}")
        theirs = run_pyro(cls, run.dataset, args, args.seed)
        row = {"labels": labels, "pyrogen": ours, "pyro_example": theirs,
               "step_time_ratio": ours["ms_per_step"] / theirs["ms_per_step"]}  # fmt: skip
        print(row, flush=True)
        rows.append(row)
    write_result(args.name, {
        "config": "configs/ssvae_mnist.yaml", "epochs": args.epochs,
        "batch_size": args.batch_size, "latent_dim": args.latent_dim, "hidden": args.hidden,
        "lr": args.lr, "pyro_aux_loss_multiplier": args.pyro_alpha, "threads": 1,
        "paper_m2": PAPER, "results": rows,
    })  # fmt: skip


if __name__ == "__main__":
    main()

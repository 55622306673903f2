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
import statistics
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
from pyrogen.nets import MLP
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


class PyroExample:
    """Pyro's example's ``SSVAE`` at equal data, trained its own way: its SVI steps on
    unlabelled batches, the labelled set's batches interleaved once per epoch, each followed
    by the auxiliary SVI (α = ``--pyro-alpha`` per example)."""

    def __init__(self, cls: type, ds, args, seed: int) -> None:
        pyro.clear_param_store()
        pyro.set_rng_seed(seed)
        y_train = ds.train_labels
        self.ds, self.b = ds, args.batch_size
        self.xu, self.xl = ds.train[y_train < 0], ds.train[y_train >= 0]
        self.yl = F.one_hot(y_train[y_train >= 0], 10).float()
        self.net = cls(z_dim=args.latent_dim, hidden_layers=args.hidden, config_enum="parallel",
                       aux_loss_multiplier=args.pyro_alpha)  # fmt: skip
        opt = Adam({"lr": args.lr, "betas": (0.9, 0.999)})
        guide = config_enumerate(self.net.guide, "parallel", expand=True)
        elbo = TraceEnum_ELBO(max_plate_nesting=1, strict_enumeration_warning=False)
        self.svi = SVI(self.net.model, guide, opt, loss=elbo)
        self.aux = SVI(self.net.model_classify, self.net.guide_classify, opt, loss=Trace_ELBO())
        self.g = torch.Generator().manual_seed(seed)

    def classify(self, x: torch.Tensor) -> torch.Tensor:
        return self.net.encoder_y(x).argmax(-1)

    def step(self, x: torch.Tensor, y: torch.Tensor | None = None) -> None:
        """One of its steps: unlabelled (``y`` None), or labelled followed by the auxiliary."""
        if y is None:
            self.svi.step(x)
        else:
            self.svi.step(x, y)
            self.aux.step(x, y)

    def train(self, epochs: int) -> dict:
        best, test_at_best, steps, seconds = -1.0, 0.0, 0, 0.0
        ds, b = self.ds, self.b
        for _ in range(epochs):
            unsup = self.xu[torch.randperm(len(self.xu), generator=self.g)].split(b)
            perm = torch.randperm(len(self.xl), generator=self.g)
            sup = list(zip(self.xl[perm].split(b), self.yl[perm].split(b), strict=True))
            every = max(1, int((len(self.xu) + len(self.xl)) / len(self.xl)))
            it_u, it_s, n_sup = iter(unsup), iter(sup), 0
            for i in range(len(unsup) + len(sup)):
                supervised = i % every == 1 and n_sup < len(sup)
                batch = next(it_s) if supervised else (next(it_u),)
                n_sup += supervised
                start = time.perf_counter()
                self.step(*batch)
                seconds += time.perf_counter() - start
                steps += 1
            with torch.no_grad():
                valid = accuracy(self.classify, ds.valid, ds.valid_labels)
                if valid > best:
                    best, test_at_best = valid, accuracy(self.classify, ds.test, ds.test_labels)
        return {"best_valid_accuracy": best, "test_accuracy": test_at_best,
                "ms_per_step": 1000 * seconds / steps, "steps": steps}  # fmt: skip


def side_by_side_epoch_time(learner, theirs: PyroExample, rounds: int, block: int) -> dict:
    """Seconds per epoch of each, measured in alternating blocks on the same unlabelled
    batches, so that whatever else the machine runs weighs on both alike.

    An epoch is a pass over the unlabelled pool: pyrogen's steps each add their cycled
    labelled batch; Pyro's example adds its labelled batches (plus the auxiliary step) in
    proportion, N_l / N_u of a batch per unlabelled batch. Each round times ``block``
    unlabelled batches of each, in alternating order; the ratio is the median of the rounds'
    ratios, and each side's ms per unlabelled batch (its epoch time / its N_u / B) the
    median of its rounds.
    """
    b = theirs.b
    g = torch.Generator().manual_seed(1)
    share = len(theirs.xl) / len(theirs.xu)
    carry, ratios, ours_ms, theirs_ms = 0.0, [], [], []
    unlabelled = torch.full((b,), -1, dtype=torch.int64)
    for r in range(rounds):
        idx = torch.randperm(len(theirs.xu), generator=g)[: block * b]
        batches = list(theirs.xu[idx].split(b))
        carry += block * share
        n_sup, carry = int(carry), carry - int(carry)
        sup = [torch.randperm(len(theirs.xl), generator=g)[:b] for _ in range(n_sup)]
        sup_batches = [(theirs.xl[i], theirs.yl[i]) for i in sup]

        def ours(batches: list = batches) -> float:
            start = time.perf_counter()
            for x in batches:
                learner.step(x, unlabelled[: len(x)])
            return time.perf_counter() - start

        def pyro_example(batches: list = batches, sup_batches: list = sup_batches) -> float:
            start = time.perf_counter()
            for x in batches:
                theirs.step(x)
            for x, y in sup_batches:
                theirs.step(x, y)
            return time.perf_counter() - start

        if r % 2:
            t_theirs, t_ours = pyro_example(), ours()
        else:
            t_ours, t_theirs = ours(), pyro_example()
        ratios.append(t_ours / t_theirs)
        ours_ms.append(1000 * t_ours / block)
        theirs_ms.append(1000 * t_theirs / block)
    return {"epoch_time_ratio": statistics.median(ratios),
            "pyrogen_ms_per_unlabelled_batch": statistics.median(ours_ms),
            "pyro_example_ms_per_unlabelled_batch": statistics.median(theirs_ms),
            "round_ratios": ratios, "rounds": rounds, "block": block}  # fmt: skip


def labels_only(ds, args, seed: int, epochs: int) -> dict:
    """The control: M2's classifier (``[784, *hidden, 10]``, softplus) trained on the labelled
    rows alone with cross-entropy, Adam at the same learning rate, as many steps as M2 took
    (one labelled batch per step), validated each 1/epochs of them: what M2 adds to its
    labels is the gap between its accuracy and this one's."""
    torch.manual_seed(seed)
    y_train = ds.train_labels
    xl, yl = ds.train[y_train >= 0], y_train[y_train >= 0]
    net = MLP(xl.shape[1], list(args.hidden), 10, "softplus")
    opt = torch.optim.Adam(net.parameters(), lr=args.lr)
    b = min(args.batch_size, len(xl))
    steps_per_epoch = math.ceil(len(ds.train) / args.batch_size)
    g = torch.Generator().manual_seed(seed)
    classify = lambda x: net(x).argmax(-1)  # noqa: E731
    best, test_at_best, per_cycle = -1.0, 0.0, len(xl) // b
    for step in range(epochs * steps_per_epoch):
        cycle, j = divmod(step, per_cycle)
        if j == 0:
            perm = torch.randperm(len(xl), generator=g)
        rows = perm[j * b : (j + 1) * b]
        opt.zero_grad()
        F.cross_entropy(net(xl[rows]), yl[rows]).backward()
        opt.step()
        if (step + 1) % steps_per_epoch == 0:
            with torch.no_grad():
                valid = accuracy(classify, ds.valid, ds.valid_labels)
                if valid > best:
                    best, test_at_best = valid, accuracy(classify, ds.test, ds.test_labels)
    return {"best_valid_accuracy": best, "test_accuracy": test_at_best}


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
    p.add_argument(
        "--paper-alpha",
        action="store_true",
        help="also train pyrogen with model.alpha = 0.1 N / N_l (Kingma et al.)",
    )
    p.add_argument("--timing-rounds", type=int, default=10)
    p.add_argument("--timing-block", type=int, default=10, help="unlabelled batches per round")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--data-root", default=DATA)
    p.add_argument("--out", type=Path, default=Path("/tmp/pyrogen-ssvae-bench"))
    p.add_argument("--name", default="ssvae_mnist")
    args = p.parse_args()
    torch.set_num_threads(1)
    cls = pyro_ssvae_class(args.pyro_examples)
    rows = []
    for labels in args.labels:
        ov = [
            f"data.root={args.data_root}", f"data.labelled={labels}",
            f"train.epochs={args.epochs}", f"train.batch_size={args.batch_size}",
            f"model.latent_dim={args.latent_dim}", f"model.hidden_sizes={args.hidden}",
            f"optim.lr={args.lr}", f"train.seed={args.seed}", "train.device=cpu",
            "train.num_threads=1", "output.figures=false", "output.tensorboard=false",
        ]  # fmt: skip
        cfg = pyrogen.load_config(ROOT / "configs" / "ssvae_mnist.yaml", ov)
        ours, run = run_pyrogen(cfg, args.out / f"labels{labels}")
        theirs = PyroExample(cls, run.dataset, args, args.seed)
        row = {"labels": labels, "pyrogen": ours, "pyro_example": theirs.train(args.epochs),
               "labels_only": labels_only(run.dataset, args, args.seed, args.epochs)}  # fmt: skip
        if args.paper_alpha:
            n = run.dataset.train.shape[0]
            cfg = pyrogen.load_config(
                ROOT / "configs" / "ssvae_mnist.yaml", [*ov, f"model.alpha={0.1 * n / labels}"]
            )
            row["pyrogen_paper_alpha"] = {
                "alpha": 0.1 * n / labels,
                **run_pyrogen(cfg, args.out / f"labels{labels}-paper-alpha")[0],
            }
        row["timing"] = side_by_side_epoch_time(
            run.learner, theirs, args.timing_rounds, args.timing_block
        )
        print(row, flush=True)
        rows.append(row)
    write_result(args.name, {
        "config": "configs/ssvae_mnist.yaml", "epochs": args.epochs,
        "batch_size": args.batch_size, "latent_dim": args.latent_dim, "hidden": args.hidden,
        "lr": args.lr, "pyro_aux_loss_multiplier": args.pyro_alpha, "threads": 1,
        "command": "python bench/reproduce/ssvae_mnist.py " + " ".join(sys.argv[1:]),
        "paper_m2": PAPER, "results": rows,
    })  # fmt: skip


if __name__ == "__main__":
    main()

"""``pyrogen``: train, sample from and evaluate deep generative models from the shell.

    pyrogen train configs/vae_digits.yaml guide.name=iaf train.epochs=3
    pyrogen train --resume runs/vae_digits-20261125-101500 train.epochs=20
    pyrogen sample runs/vae_digits-20261125-101500 -n 64 --out samples.png
    pyrogen evaluate runs/vae_digits-20261125-101500 --split test

A user's mistake (a missing file, an unknown config key, a bad value) is reported in one line
on stderr with exit code 2, never with a traceback.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

EXIT_USAGE = 2
EXIT_FAILED = 1


class UsageError(Exception):
    """A mistake in the command line: one line, exit code 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, exit 2 (argparse prints usage too)
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


def _user_errors() -> tuple[type[BaseException], ...]:
    from pyrogen.config import ConfigError
    from pyrogen.data import DataError
    from pyrogen.registry import RegistryError
    from pyrogen.training.checkpoint import CheckpointError

    return (UsageError, ConfigError, DataError, CheckpointError, RegistryError)


def _cmd_train(args: argparse.Namespace) -> int:
    from pyrogen.build import load_config
    from pyrogen.training import CONFIG, TrainingDiverged, train

    positional = list(args.args)
    overrides = [a for a in positional if "=" in a]
    paths = [a for a in positional if "=" not in a]
    if args.resume:
        if paths:
            raise UsageError(f"with --resume the config comes from the run folder; got {paths[0]}")
        run_dir = Path(args.resume)
        if not (run_dir / CONFIG).is_file():
            raise UsageError(f"{run_dir} is not a run folder (no {CONFIG})")
        cfg = load_config(run_dir / CONFIG, overrides)
        config_path = None
    else:
        if len(paths) != 1:
            raise UsageError("give one CONFIG file (and any key=value overrides)")
        config_path = paths[0]
        cfg = load_config(config_path, overrides)
        run_dir = Path(args.run_dir) if args.run_dir else None
    try:
        run = train(
            cfg, run_dir, resume=bool(args.resume), quiet=args.quiet, config_path=config_path
        )
    except TrainingDiverged as e:
        print(f"pyrogen train: {e}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        print("pyrogen train: interrupted; checkpoint saved, resume with --resume", file=sys.stderr)
        return 130
    print(f"run folder: {run.run_dir}")
    return 0


def _load_run(path: str, device: str | None):
    from pyrogen.training import CHECKPOINT, CONFIG, load

    run_dir = Path(path)
    for name in (CONFIG, CHECKPOINT):
        if not (run_dir / name).is_file():
            raise UsageError(f"{run_dir} is not a run folder (no {name})")
    return load(run_dir, device=device)


def _cmd_sample(args: argparse.Namespace) -> int:
    import torch

    from pyrogen.evaluation import plots

    if args.n <= 0:
        raise UsageError(f"-n must be a positive integer, got {args.n}")
    out = Path(args.out)
    if out.suffix not in (".png", ".pt"):
        raise UsageError(f"--out must end in .png (a figure) or .pt (a tensor), got {out}")
    run = _load_run(args.run_dir, args.device)
    torch.manual_seed(args.seed)
    x = run.sample(args.n)
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.suffix == ".pt":
        torch.save(x.cpu(), out)
    elif run.dataset.kind == "image":
        plots.save_image_grid(x, run.dataset.image_shape, out)
    else:
        plots.save_points(x, out, data=run.dataset.test)
    print(f"wrote {args.n} samples to {out}")
    return 0


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from pyrogen.config import EvaluationConfig
    from pyrogen.evaluation.report import evaluate_run, format_report

    run = _load_run(args.run_dir, args.device)
    ev = EvaluationConfig(
        split=args.split,
        is_samples=args.is_samples,
        parzen_samples=args.parzen_samples,
        max_test=args.max_examples,
        bounds=list(args.bound or []),
    )
    results = evaluate_run(run, ev)
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        print(format_report(results))
    return 0


def _cmd_compare(args: argparse.Namespace) -> int:
    from pyrogen.evaluation.compare import compare, format_markdown
    from pyrogen.evaluation.compare_config import FAMILIES, load_compare_config

    overrides = list(args.overrides)
    cc = load_compare_config(args.config, overrides)
    run_dirs = {}
    for item in args.runs or []:
        family, _, path = item.partition("=")
        if family not in FAMILIES or not path:
            raise UsageError(
                f"--runs takes FAMILY=RUN_DIR with FAMILY one of {FAMILIES}, got {item}"
            )
        _load_run(path, None)  # checks the folder
        run_dirs[family] = path
    out = Path(args.out) if args.out else Path("runs") / f"compare-{Path(args.config).stem}"
    rows = compare(cc, out, run_dirs=run_dirs, quiet=args.quiet)
    print(format_markdown(rows))
    print(f"tables and figure in {out}")
    return 0


def _cmd_gradients(args: argparse.Namespace) -> int:
    import torch

    from pyrogen.build import build, load_config
    from pyrogen.evaluation.gradients import (
        ESTIMATORS,
        encoder_output_groups,
        format_table,
        run_gradient_diagnostic,
    )

    path = Path(args.target)
    if path.is_dir():
        run = _load_run(args.target, "cpu")
        cfg, dataset, learner = run.cfg, run.dataset, run.learner
        out = Path(args.out) if args.out else path
    elif path.is_file():
        cfg = load_config(path, list(args.overrides))
        dataset, learner = build(cfg, "cpu")
        out = Path(args.out) if args.out else Path("runs") / f"gradients-{path.stem}"
    else:
        raise UsageError(f"{path}: no such run folder or config file")
    guide = getattr(learner.model, "guide", None)
    if guide is None or not hasattr(guide, "encoder"):
        raise UsageError(f"gradient estimators are about guides: {path} is a {cfg.model.family}")
    for est in args.estimators:
        if est not in ESTIMATORS:
            raise UsageError(f"unknown estimator {est!r} (allowed: {', '.join(ESTIMATORS)})")
    x = dataset.process(dataset.train[: args.batch_size], torch.Generator().manual_seed(0))
    vae = learner.model
    rows = run_gradient_diagnostic(
        vae.model,
        vae.guide,
        x,
        args.estimators,
        args.particles,
        args.samples,
        out_dir=out,
        groups=encoder_output_groups(vae.guide),
        warmup=args.warmup,
    )
    print(format_table(rows))
    print(f"table, CSV and plot in {out}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="pyrogen",
        description="Deep generative models (VAEs, normalizing flows, GANs) as Pyro "
        "generative processes: train from YAML configs, sample, evaluate.",
    )
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    p = sub.add_parser(
        "train",
        help="train a model from a YAML config",
        description="Train the model a YAML config describes. Any key can be overridden as "
        "section.key=value, e.g. `pyrogen train configs/vae_digits.yaml guide.name=iaf "
        "elbo.name=trace_graph elbo.num_particles=4 train.epochs=3`. The run folder "
        "(output.dir/output.name) receives the resolved config, metrics, a checkpoint and "
        "figures.",
    )
    p.add_argument("args", nargs="*", metavar="CONFIG [key=value ...]")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue the run in RUN_DIR")
    p.add_argument("--run-dir", help="write the run here instead of output.dir/<name>")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser(
        "sample",
        help="draw samples from a trained run",
        description="Draw N samples from the model of a run folder and save them as a PNG "
        "(image grid or 2-D scatter) or a .pt tensor.",
    )
    p.add_argument("run_dir", metavar="RUN_DIR")
    p.add_argument("-n", type=int, default=64, help="number of samples (default 64)")
    p.add_argument("--out", required=True, metavar="FILE", help="FILE.png or FILE.pt")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:N (default: the run's)")
    p.set_defaults(func=_cmd_sample)

    p = sub.add_parser(
        "evaluate",
        help="print every log-likelihood a trained run supports",
        description="Evaluate a run folder on a split: exact log-likelihood and bits/dim "
        "(flows), ELBO and importance-sampled log p(x) (VAEs), Parzen-window "
        "log-likelihood (any family).",
    )
    p.add_argument("run_dir", metavar="RUN_DIR")
    p.add_argument("--split", choices=["train", "valid", "test"], default="test")
    p.add_argument("--is-samples", type=int, default=1000, help="K for importance sampling")
    p.add_argument("--parzen-samples", type=int, default=10_000, help="samples in the window")
    p.add_argument("--max-examples", type=int, default=None, help="evaluate on the first N")
    p.add_argument(
        "--bound",
        action="append",
        metavar="NAME[:K]",
        help="VAE: also the bound of estimator NAME (an elbo.name) with K particles, e.g. "
        "renyi:50 (the IWAE bound), trace:100; repeatable",
    )
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.add_argument("--device", default=None)
    p.set_defaults(func=_cmd_evaluate)

    p = sub.add_parser(
        "compare",
        help="train one model per family on the same data and compare them",
        description="Train (or load with --runs) a VAE, a flow and a GAN on the same data and "
        "budget, as a compare config describes, then write a table (Markdown, CSV, JSON) of "
        "parameters, training time, sampling time, every log-likelihood that applies and "
        "sample-quality scores, and one figure of the families' samples.",
    )
    p.add_argument("config", metavar="CONFIG")
    p.add_argument("overrides", nargs="*", metavar="key=value")
    p.add_argument("--runs", nargs="*", metavar="FAMILY=RUN_DIR", help="load instead of train")
    p.add_argument("--out", help="output folder (default runs/compare-<config name>)")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=_cmd_compare)

    p = sub.add_parser(
        "gradients",
        help="measure the variance of ELBO gradient estimators",
        description="Draw N independent estimates of the ELBO gradient for the guide of a VAE "
        "(a run folder, or a config for an untrained model) from the reparameterised and "
        "score-function estimators (no baseline, decaying average, neural) with several "
        "particle counts; print mean, variance and SNR per parameter group, and save a table "
        "and a plot of variance against particles.",
    )
    p.add_argument("target", metavar="RUN_DIR|CONFIG")
    p.add_argument("overrides", nargs="*", metavar="key=value")
    p.add_argument(
        "--estimators",
        nargs="+",
        default=["reparam", "score_function", "score_function_avg", "score_function_nn"],
    )
    p.add_argument("--particles", nargs="+", type=int, default=[1, 4, 16])
    p.add_argument("--samples", type=int, default=200, help="gradient draws per estimator")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument(
        "--warmup",
        type=int,
        default=200,
        help="updates of each baseline on the batch before measuring, so that it is where "
        "training would have it (default 200; 0: measure untrained baselines)",
    )
    p.add_argument("--out", help="output folder (default: the run folder)")
    p.set_defaults(func=_cmd_gradients)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except _user_errors() as e:
        print(f"pyrogen {args.command}: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except FileNotFoundError as e:
        print(f"pyrogen {args.command}: error: {e}", file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())

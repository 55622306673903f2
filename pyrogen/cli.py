"""``pyrogen`` (or ``python -m pyrogen``): train, sample from and evaluate deep generative
models from the shell.

    pyrogen train configs/vae_digits.yaml guide.name=iaf train.epochs=3
    pyrogen config configs/vae_digits.yaml train.epochs=3       # print the resolved config
    pyrogen train --resume runs/vae_digits-20261125-101500 train.epochs=20
    pyrogen sample runs/vae_digits-20261125-101500 -n 64 --out samples.png
    pyrogen evaluate runs/vae_digits-20261125-101500 --split test

``key=value`` overrides may stand anywhere on the line. A user's mistake (a missing file, an
unknown key, a bad value, an option out of range) is reported in one line on stderr with exit
code 2 (argparse's own errors add the usage line), never with a traceback; nothing is written
for a refused command.

``train`` and ``evaluate`` also run data-parallel under ``torchrun`` (``torchrun
--nproc_per_node=N -m pyrogen train CONFIG``): rank 0 alone prints and writes.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any

EXIT_USAGE = 2
EXIT_FAILED = 1
EXIT_INTERRUPTED = 130

MAX_SEED = (1 << 32) - 1


class UsageError(Exception):
    """A mistake in the command line: one line, exit code 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # usage, then one line; exit 2
        self.print_usage(sys.stderr)
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


class _Help(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Defaults in every option's help, descriptions kept as written."""


def _int_range(low: int, high: int, what: str = "an integer"):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {what}") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"{value} is out of range; expected {low}..{high}")
        return value

    parse.__name__ = what  # argparse names the type in its messages
    return parse


POSITIVE = _int_range(1, 1 << 31, "a positive integer")
SEED = _int_range(0, MAX_SEED, "a seed")
COUNT = _int_range(1, 1 << 20, "a positive integer")
NONNEGATIVE = _int_range(0, 1 << 31, "a non-negative integer")


def _threads(text: str) -> int | str:
    if text == "auto":
        return text
    return _int_range(1, 1024, "a thread count or auto")(text)


#: the commands that run data-parallel under torchrun (WORLD_SIZE > 1)
DISTRIBUTED_COMMANDS = ("train", "evaluate")


def _is_main() -> bool:
    """Rank 0 of a torchrun launch (or a plain process): the one that prints."""
    from pyrogen.training.distributed import is_main

    return is_main()


def _say(*args: Any, **kwargs: Any) -> None:
    """``print`` on rank 0 only."""
    if _is_main():
        print(*args, **kwargs)


def _user_errors() -> tuple[type[BaseException], ...]:
    from pyrogen.config import ConfigError
    from pyrogen.data import DataError
    from pyrogen.registry import RegistryError
    from pyrogen.training.checkpoint import CheckpointError

    return (UsageError, ConfigError, DataError, CheckpointError, RegistryError)


def _split_args(items: list[str]) -> tuple[list[str], list[str]]:
    """Positional words into (paths, key=value overrides)."""
    overrides = [a for a in items if "=" in a]
    return [a for a in items if "=" not in a], overrides


def _cmd_train(args: argparse.Namespace) -> int:
    from pyrogen.build import load_config
    from pyrogen.training import CONFIG, TrainingDiverged, train

    paths, overrides = _split_args(args.args)
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
            raise UsageError(
                f"give one CONFIG file (and any key=value overrides); got {len(paths)}: "
                + " ".join(paths[:3])
            )
        config_path = paths[0]
        cfg = load_config(config_path, overrides)
        run_dir = Path(args.run_dir) if args.run_dir else None
    try:
        run = train(
            cfg, run_dir, resume=bool(args.resume), quiet=args.quiet, config_path=config_path
        )
    except TrainingDiverged as e:
        _say(f"pyrogen train: {e}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        _say(
            "pyrogen train: interrupted; the state after the last finished step is saved: "
            "continue with pyrogen train --resume RUN_DIR",
            file=sys.stderr,
        )
        return EXIT_INTERRUPTED
    if not _is_main():
        return 0
    summary = run.summary()
    if summary:
        print("final: " + ", ".join(f"{k} {v:.4g}" for k, v in summary.items()))
    print(f"run folder: {run.run_dir}")
    return 0


def _cmd_config(args: argparse.Namespace) -> int:
    from pyrogen.build import load_config

    paths, overrides = _split_args(args.args)
    if len(paths) != 1:
        raise UsageError("give one CONFIG file (and any key=value overrides)")
    print(load_config(paths[0], overrides).to_yaml(), end="")
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

    out = Path(args.out)
    if out.suffix not in (".png", ".pt"):
        raise UsageError(f"--out must end in .png (a figure) or .pt (a tensor), got {out}")
    if out.parent and out.parent.exists() and not out.parent.is_dir():
        raise UsageError(f"--out {out}: {out.parent} is not a folder")
    from pyrogen.runtime import configure_threads, count_parameters

    run = _load_run(args.run_dir, args.device)
    configure_threads(args.num_threads, count_parameters(run.learner.module))
    torch.manual_seed(args.seed)
    x = run.sample_means(args.n) if args.means else run.sample(args.n)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        if out.suffix == ".pt":
            torch.save(x.cpu(), out)
        elif run.dataset.kind == "image":
            what = "decoder means E[x | z]" if args.means else "samples x ~ p(x)"
            title = f"{args.n} {what} of {run.run_dir.name}"
            plots.save_image_grid(x, run.dataset.image_shape, out, title=title)
        else:
            plots.save_points(x, out, data=run.dataset.test, title=f"samples of {run.run_dir.name}")
    except OSError as e:
        raise UsageError(f"cannot write {out}: {e.strerror or e}") from None
    print(f"wrote {args.n} samples to {out}")
    return 0


def _strict_json(value: Any) -> Any:
    """NaN and infinities as ``null``: strict JSON parsers reject them."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _strict_json(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_strict_json(v) for v in value]
    return value


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from pyrogen.config import EvaluationConfig
    from pyrogen.evaluation.report import evaluate_run, format_report, parse_bound

    for spec in args.bound or []:
        parse_bound(spec)  # before loading anything
    run = _load_run(args.run_dir, args.device)
    ev = EvaluationConfig(
        split=args.split,
        is_samples=args.is_samples,
        parzen_samples=args.parzen_samples,
        max_test=args.max_examples,
        bounds=list(args.bound or []),
        seed=args.seed,
        num_threads=args.num_threads,
        quiet=args.quiet or args.json,
    )
    results = evaluate_run(run, ev)
    if args.json:
        _say(json.dumps(_strict_json(results), indent=2, allow_nan=False))
    else:
        _say(format_report(results))
    return 0


def _cmd_compare(args: argparse.Namespace) -> int:
    from pyrogen.evaluation.compare import compare, format_markdown
    from pyrogen.evaluation.compare_config import FAMILIES, load_compare_config

    paths, overrides = _split_args(args.args)
    if len(paths) != 1:
        raise UsageError("give one compare CONFIG file (and any key=value overrides)")
    settings = [f"evaluation.num_threads={args.num_threads}", f"evaluation.quiet={args.quiet}"]
    cc = load_compare_config(paths[0], overrides + settings)
    run_dirs = {}
    for item in args.runs or []:
        family, _, path = item.partition("=")
        if family not in FAMILIES or not path:
            raise UsageError(
                f"--runs takes FAMILY=RUN_DIR with FAMILY one of {', '.join(FAMILIES)}, got {item}"
            )
        _load_run(path, None)  # checks the folder
        run_dirs[family] = path
    out = Path(args.out) if args.out else Path("runs") / f"compare-{Path(paths[0]).stem}"
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

    paths, overrides = _split_args(args.args)
    if len(paths) != 1:
        raise UsageError("give one RUN_DIR or CONFIG (and, for a config, key=value overrides)")
    for est in args.estimators:
        if est not in ESTIMATORS:
            raise UsageError(f"unknown estimator {est!r} (allowed: {', '.join(ESTIMATORS)})")
    path = Path(paths[0])
    if path.is_dir():
        if overrides:
            raise UsageError("overrides apply to a CONFIG, not to a run folder")
        run = _load_run(paths[0], "cpu")
        cfg, dataset, learner = run.cfg, run.dataset, run.learner
        out = Path(args.out) if args.out else path
    elif path.is_file():
        cfg = load_config(path, overrides)
        dataset, learner = build(cfg, "cpu")
        out = Path(args.out) if args.out else Path("runs") / f"gradients-{path.stem}"
    else:
        raise UsageError(f"{path}: no such run folder or config file")
    from pyrogen.runtime import configure_threads, count_parameters

    configure_threads(args.num_threads, count_parameters(learner.module))
    vae = learner.model
    guide = getattr(vae, "guide", None)
    if guide is None or not hasattr(guide, "encoder"):
        raise UsageError(f"gradient estimators are about guides: {path} is a {cfg.model.family}")
    x = dataset.process(dataset.train[: args.batch_size], torch.Generator().manual_seed(0))
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
        progress=not args.quiet,
    )
    print(format_table(rows))
    print(f"table, CSV and plot in {out}")
    return 0


def _version() -> str:
    from pyrogen import __version__

    return f"pyrogen {__version__}"


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="pyrogen",
        description="Deep generative models (VAEs, normalizing flows, GANs) as Pyro "
        "generative processes: train from YAML configs, sample, evaluate, compare.",
        formatter_class=_Help,
    )
    parser.add_argument("--version", action="version", version=_version())
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    def threads(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--num-threads",
            type=_threads,
            default="auto",
            metavar="N|auto",
            help="torch CPU threads; auto picks from the free cores (see train.num_threads)",
        )

    def device(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--device",
            default=None,
            metavar="auto|cpu|cuda|cuda:N",
            help="where to load the run (default: the run's train.device)",
        )

    p = sub.add_parser(
        "train",
        help="train a model from a YAML config",
        formatter_class=_Help,
        description="Train the model a YAML config describes. Any key can be overridden as "
        "section.key=value, anywhere on the line, e.g.\n  pyrogen train configs/vae_digits.yaml "
        "guide.name=iaf elbo.name=trace_graph elbo.num_particles=4 train.epochs=3\nThe run "
        "folder (output.dir/output.name) receives the resolved config, metrics, a checkpoint "
        "and figures.",
    )
    p.add_argument("args", nargs="*", metavar="CONFIG [key=value ...]")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue the run in RUN_DIR")
    p.add_argument("--run-dir", metavar="DIR", help="write the run here, not output.dir/<name>")
    p.add_argument("--quiet", action="store_true", help="no progress bar or progress lines")
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser(
        "config",
        help="print the resolved config without training",
        formatter_class=_Help,
        description="Read CONFIG, apply the overrides, check everything that can be checked "
        "before reading data, and print the resolved YAML (what config.yaml of a run holds).",
    )
    p.add_argument("args", nargs="*", metavar="CONFIG [key=value ...]")
    p.set_defaults(func=_cmd_config)

    p = sub.add_parser(
        "sample",
        help="draw samples from a trained run",
        formatter_class=_Help,
        description="Draw N samples from the model of a run folder and save them as a PNG "
        "(image grid or 2-D scatter) or a .pt tensor.",
    )
    p.add_argument("run_dir", metavar="RUN_DIR")
    p.add_argument("-n", type=_int_range(1, 100_000), default=64, help="number of samples")
    p.add_argument("--out", required=True, metavar="FILE", help="FILE.png or FILE.pt")
    p.add_argument("--seed", type=SEED, default=0, help="random seed of the draws")
    p.add_argument(
        "--means",
        action="store_true",
        help="VAE: the decoder's means E[x | z], z ~ p(z), instead of draws x ~ p(x)",
    )
    device(p)
    threads(p)
    p.set_defaults(func=_cmd_sample)

    p = sub.add_parser(
        "evaluate",
        help="print every log-likelihood a trained run supports",
        formatter_class=_Help,
        description="Evaluate a run folder on a split, in nats per example: the exact "
        "log-likelihood and bits/dim (flows), the ELBO and importance-sampled log p(x) (VAEs), "
        "a Parzen-window estimate (every family). Discrete data (binary images) have "
        "probabilities, continuous data densities: the table says which.",
    )
    p.add_argument("run_dir", metavar="RUN_DIR")
    p.add_argument("--split", choices=["train", "valid", "test"], default="test")
    p.add_argument("--is-samples", type=COUNT, default=1000, help="K for importance sampling")
    p.add_argument(
        "--parzen-samples", type=COUNT, default=10_000, help="model samples in the Parzen window"
    )
    p.add_argument(
        "--max-examples", type=POSITIVE, default=None, help="a random subset of N examples"
    )
    p.add_argument(
        "--bound",
        action="append",
        metavar="NAME[:K]",
        help="VAE: also the bound of estimator NAME (an elbo.name) with K particles, e.g. "
        "renyi:50 (the IWAE bound), trace:100; repeatable",
    )
    p.add_argument("--seed", type=SEED, default=0, help="seed of every estimator's stream")
    p.add_argument("--json", action="store_true", help="print strict JSON instead of a table")
    p.add_argument("--quiet", action="store_true", help="no progress bars or lines")
    device(p)
    threads(p)
    p.set_defaults(func=_cmd_evaluate)

    p = sub.add_parser(
        "compare",
        help="train one model per family on the same data and compare them",
        formatter_class=_Help,
        description="Train (or load with --runs) a VAE, a flow and a GAN on the same data and "
        "budget, as a compare config describes, then write a table (Markdown, CSV, JSON) of "
        "parameters, training time, sampling time, every log-likelihood that applies and "
        "sample-quality scores, and one figure of the families' samples.",
    )
    p.add_argument("args", nargs="*", metavar="CONFIG [key=value ...]")
    p.add_argument("--runs", nargs="+", metavar="FAMILY=RUN_DIR", help="load instead of train")
    p.add_argument("--out", metavar="DIR", help="output folder (default runs/compare-<config>)")
    p.add_argument("--quiet", action="store_true", help="no progress bars or lines")
    threads(p)
    p.set_defaults(func=_cmd_compare)

    p = sub.add_parser(
        "gradients",
        help="measure the variance of ELBO gradient estimators",
        formatter_class=_Help,
        description="Draw N independent estimates of the ELBO gradient for the guide of a VAE "
        "(a run folder, or a config for an untrained model) from the reparameterised and "
        "score-function estimators (no baseline, decaying average, neural) with several "
        "particle counts; print mean, variance and SNR per parameter group, and save a table "
        "and a plot of variance against particles.",
    )
    p.add_argument("args", nargs="*", metavar="RUN_DIR|CONFIG [key=value ...]")
    p.add_argument(
        "--estimators",
        nargs="+",
        default=["reparam", "score_function", "score_function_avg", "score_function_nn"],
        metavar="NAME",
        help="reparam, score_function, score_function_avg, score_function_nn",
    )
    p.add_argument(
        "--particles",
        nargs="+",
        type=_int_range(1, 4096),
        default=[1, 4, 16],
        metavar="K",
        help="particle counts",
    )
    p.add_argument("--samples", type=_int_range(2, 100_000), default=200, help="draws each")
    p.add_argument(
        "--batch-size", type=_int_range(1, 1 << 20), default=64, help="examples in the batch"
    )
    p.add_argument(
        "--warmup",
        type=_int_range(0, 1_000_000),
        default=200,
        help="updates of each baseline on the batch before measuring, so that it is where "
        "training would have it (0: measure untrained baselines)",
    )
    p.add_argument("--out", metavar="DIR", help="output folder (default: the run folder)")
    p.add_argument("--quiet", action="store_true", help="no progress bar or lines")
    threads(p)
    p.set_defaults(func=_cmd_gradients)
    return parser


def _one_line(e: BaseException) -> str:
    text = " ".join(str(e).split())
    return text if len(text) <= 600 else text[:595] + " ..."


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    try:
        # key=value words may follow flags: argparse leaves them over; they join the command's
        # positional words (argparse's parse_intermixed_args does not support sub-commands)
        args, extra = parser.parse_known_args(argv)
        if extra:
            if not hasattr(args, "args") or any(e.startswith("-") for e in extra):
                unknown = [e for e in extra if e.startswith("-")] or extra
                parser.error(f"unrecognized arguments: {' '.join(unknown)}")
            args.args = [*args.args, *extra]
    except SystemExit as e:  # argparse: --help, --version, or a usage error (printed)
        return int(e.code or 0)
    try:
        from pyrogen.training.distributed import env_world_size

        if env_world_size() > 1 and args.command not in DISTRIBUTED_COMMANDS:
            raise UsageError(
                f"{args.command} runs in one process; run it without torchrun (only "
                f"{' and '.join(DISTRIBUTED_COMMANDS)} run data-parallel)"
            )
        return args.func(args)
    except _user_errors() as e:  # the same on every rank: rank 0 says it
        _say(f"pyrogen {args.command}: error: {_one_line(e)}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        _say(f"pyrogen {args.command}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except (MemoryError, RuntimeError) as e:
        if not isinstance(e, MemoryError) and not _is_out_of_memory(e):
            raise
        print(
            f"pyrogen {args.command}: error: out of memory ({_one_line(e)[:120]}); use smaller "
            "sizes (model.hidden_sizes, train.batch_size, elbo.num_particles)",
            file=sys.stderr,
        )
        return EXIT_USAGE
    except OSError as e:  # a file that cannot be written mid-run (disk full, read-only)
        from pyrogen.training.output import RunOutputError

        if isinstance(e, RunOutputError):  # says which checkpoint is intact
            _say(f"pyrogen {args.command}: error: {_one_line(e)}", file=sys.stderr)
            return EXIT_FAILED
        where = f" {e.filename}" if getattr(e, "filename", None) else ""
        print(
            f"pyrogen {args.command}: error: cannot write{where}: {e.strerror or e}",
            file=sys.stderr,
        )
        return EXIT_FAILED


def _is_out_of_memory(e: RuntimeError) -> bool:
    """torch's allocation failures: ``torch.OutOfMemoryError`` (CUDA) and the CPU allocator's
    ``RuntimeError`` ("DefaultCPUAllocator: can't allocate memory")."""
    text = str(e)
    return type(e).__name__ == "OutOfMemoryError" or "can't allocate memory" in text


if __name__ == "__main__":
    sys.exit(main())

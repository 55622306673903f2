"""``pyrogen`` (or ``python -m pyrogen``): train, sample from and evaluate deep generative
models from the shell.

    pyrogen train configs/vae_digits.yaml guide.name=iaf train.epochs=3
    pyrogen config configs/vae_digits.yaml train.epochs=3       # print the resolved config
    pyrogen config --defaults vae       # every key: type, default, allowed values, meaning
    pyrogen train --resume runs/vae_digits-20261125-101500 train.epochs=20
    pyrogen sample runs/vae_digits-20261125-101500 -n 64 --out samples.png
    pyrogen evaluate runs/vae_digits-20261125-101500 --split test
    pyrogen diagnose runs/vae_digits-20261125-101500             # what the VAE's z learned

``key=value`` overrides may stand anywhere on the line. A user's mistake (a missing file, an
unknown key, a bad value, an option out of range) is reported in one line on stderr with exit
code 2, never with a traceback (a misspelt option or command gets the nearest valid one, an
option that is a config key its ``section.key=value`` form); nothing is written for a refused
command. A bare ``pyrogen`` prints the help.

``train`` and ``evaluate`` also run data-parallel under ``torchrun`` (``torchrun
--nproc_per_node=N -m pyrogen train CONFIG``): rank 0 alone prints and writes.
"""

from __future__ import annotations

import argparse
import difflib
import json
import math
import sys
import warnings
from pathlib import Path
from typing import Any, NoReturn

EXIT_USAGE = 2
EXIT_FAILED = 1
EXIT_INTERRUPTED = 130

MAX_SEED = (1 << 32) - 1


class UsageError(Exception):
    """A mistake in the command line: one line, exit code 2."""


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors: ``pyrogen CMD: error: MESSAGE (see pyrogen CMD --help)``
    on stderr, exit code 2 (no usage block)."""

    #: the sub-command parsers by name (set on the top-level parser by :func:`build_parser`)
    commands: dict[str, argparse.ArgumentParser]

    def error(self, message: str) -> NoReturn:
        text = " ".join(message.split())
        self.exit(EXIT_USAGE, f"{self.prog}: error: {text} (see {self.prog} --help)\n")


class _Help(argparse.RawDescriptionHelpFormatter):
    """Descriptions kept as written; an option's default is appended to its help unless the
    help already states one or there is none to state (``None``, ``False``)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        if (
            "default" in text.lower()
            or default is None
            or default is False
            or default == argparse.SUPPRESS
            or not (action.option_strings or action.nargs in ("?", "*"))
        ):
            return text
        return f"{text} (default: %(default)s)".lstrip()


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
    from pyrogen.parallel.distributed import is_main

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
    from pyrogen.training import CONFIG, TrainingDiverged, TrainingInterrupted, train

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
    if args.overwrite and args.resume:
        raise UsageError("--overwrite replaces a run and --resume continues it: choose one")
    try:
        run = train(
            cfg,
            run_dir,
            resume=bool(args.resume),
            quiet=args.quiet,
            config_path=config_path,
            overwrite=True if args.overwrite else None,
        )
    except TrainingDiverged as e:
        _say(f"pyrogen train: {e}", file=sys.stderr)
        return EXIT_FAILED
    except TrainingInterrupted as e:
        what = "the state after the last finished step is saved" if e.saved else "stopped"
        _say(
            f"pyrogen train: interrupted; {what}: continue with pyrogen train --resume {e.run_dir}",
            file=sys.stderr,
        )
        return EXIT_INTERRUPTED
    if not _is_main():
        return 0
    print(final_line(run.summary()))
    print(f"run folder: {run.run_dir}")
    return 0


def final_line(summary: dict[str, float]) -> str:
    """``final: valid elbo -23.24 (last, step 3200); best: valid elbo -22.91 (step 2800,
    best.pt)``: the last validation and, where one was kept, the best."""
    step = summary.get("step")
    last = {k: v for k, v in summary.items() if not k.startswith("best ") and k != "step"}
    text = "final: " + ", ".join(f"{k} {v:.4g}" for k, v in last.items())
    if step is not None:
        text += f" (last, step {int(step)})"
    best = {k[5:]: v for k, v in summary.items() if k.startswith("best ") and k != "best step"}
    if best and "best step" in summary:
        values = ", ".join(f"valid {k} {v:.4g}" for k, v in best.items())
        text += f"; best: {values} (step {int(summary['best step'])}, best.pt)"
    return text


def _cmd_config(args: argparse.Namespace) -> int:
    from pyrogen.build import load_config

    if args.defaults is not None:
        if args.args:
            raise UsageError(f"--defaults lists the schema; it takes no CONFIG, got {args.args[0]}")
        print(format_defaults(None if args.defaults == "all" else args.defaults), end="")
        return 0
    paths, overrides = _split_args(args.args)
    if len(paths) != 1:
        raise UsageError(
            "give one CONFIG file (and any key=value overrides), or --defaults [vae|flow|gan]"
        )
    print(load_config(paths[0], overrides).to_yaml(), end="")
    return 0


#: config keys whose values are names in a registry of :mod:`pyrogen.registry`
REGISTRY_KEYS = {
    "data.name": "DATASETS",
    "guide.name": "GUIDES",
    "elbo.name": "ELBOS",
    "model.flow": "FLOWS",
    "adversarial.loss": "GAN_LOSSES",
}


def format_defaults(family: str | None = None) -> str:
    """The table ``pyrogen config --defaults [FAMILY]`` prints: one line per key, ``section.key
    type default allowed doc``, under a ``# section: ...`` heading per section; the model
    section of ``family`` (default: of every family). Registry keys list the registered names."""
    from pyrogen import registry
    from pyrogen.config import MODEL_CONFIGS, schema_table

    if family is not None and family not in MODEL_CONFIGS:
        close = difflib.get_close_matches(str(family), list(MODEL_CONFIGS), n=1, cutoff=0.5)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise UsageError(
            f"--defaults takes a model family, got {family!r}{hint} (allowed: "
            f"{', '.join(MODEL_CONFIGS)}, or none for all)"
        )
    names = {key: getattr(registry, reg).names() for key, reg in REGISTRY_KEYS.items()}
    table = schema_table(family, names)
    rows = [row for _, section in table for row in section]
    caps = (48, 16, 16, 36)  # a long cell (a list of names) shifts its own line only
    widths = [min(cap, max(len(r[i]) for r in rows)) for i, cap in enumerate(caps)]

    def line(cells: tuple[str, ...]) -> str:
        padded = [cell.ljust(w) for cell, w in zip(cells[:4], widths, strict=True)]
        return "  ".join([*padded, cells[4]]).rstrip()

    lines = [line(("# key", "type", "default", "allowed", "doc"))]
    for heading, section in table:
        lines.append(f"# {heading}".replace("``", ""))
        lines += [line(row) for row in section]
    return "\n".join(lines) + "\n"


def _load_run(path: str, device: str | None, checkpoint: str | None = None):
    from pyrogen.training import CHECKPOINT, CONFIG, load

    run_dir = Path(path)
    for name in (CONFIG, CHECKPOINT):
        if not (run_dir / name).is_file():
            raise UsageError(f"{run_dir} is not a run folder (no {name})")
    return load(run_dir, device=device, checkpoint=checkpoint)


def _cmd_sample(args: argparse.Namespace) -> int:
    import torch

    from pyrogen.evaluation import plots

    out = Path(args.out)
    if out.suffix not in (".png", ".pt"):
        raise UsageError(f"--out must end in .png (a figure) or .pt (a tensor), got {out}")
    if out.parent and out.parent.exists() and not out.parent.is_dir():
        raise UsageError(f"--out {out}: {out.parent} is not a folder")
    from pyrogen.runtime import configure_threads, count_all_parameters

    context = None
    if args.context is not None:
        if args.label is not None or args.means:
            raise UsageError("--context draws x ~ p(x | c): not with --label or --means")
        context = _read_context(args.context)
    run = _load_run(args.run_dir, args.device, args.checkpoint)
    configure_threads(args.num_threads, count_all_parameters(run.learner.module))
    torch.manual_seed(args.seed)
    if args.temperature != 1.0 and (args.means or not run.samples_at_a_temperature):
        raise UsageError(
            f"--temperature {args.temperature} applies to flows (without --means); this run's "
            f"model is a {run.family}"
        )
    if args.label is not None:
        if args.means:
            raise UsageError("--means and --label: class-conditional means are not drawn here")
        try:
            x = run.sample(args.n, args.label, temperature=args.temperature)
        except ValueError as e:
            raise UsageError(f"--label {args.label}: {e}") from None
    elif context is not None:
        try:
            x = run.sample(args.n, context=context, temperature=args.temperature)
        except ValueError as e:
            raise UsageError(f"--context {args.context}: {e}") from None
    elif args.means:
        x = run.sample_means(args.n)
    else:
        x = run.sample(args.n, temperature=args.temperature)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        if out.suffix == ".pt":
            torch.save(x.cpu(), out)
        elif run.dataset.kind == "image":
            what = "decoder means E[x | z]" if args.means else "samples x ~ p(x)"
            if args.label is not None:
                what = f"samples x ~ p(x | y={args.label})"
            if context is not None:
                what = f"samples x ~ p(x | c) for the context in {Path(args.context).name}"
            title = f"{args.n} {what} of {run.run_dir.name}"
            plots.save_image_grid(x, run.dataset.image_shape, out, title=title)
        else:
            plots.save_points(x, out, data=run.dataset.test, title=f"samples of {run.run_dir.name}")
    except OSError as e:
        raise UsageError(f"cannot write {out}: {e.strerror or e}") from None
    print(f"wrote {args.n} samples to {out}")
    return 0


def _read_context(path: str) -> Any:
    """The array of a ``--context`` file (.npy, or .csv of numbers), as numpy."""
    from pyrogen.data import DataError
    from pyrogen.data.user_arrays import read_array_file

    if Path(path).suffix.lower() not in (".npy", ".csv"):
        raise UsageError(f"--context {path}: expected a .npy or .csv file of the context values")
    try:
        return read_array_file(path)["data"]
    except DataError as e:
        raise UsageError(f"--context {e}") from None


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
    run = _load_run(args.run_dir, args.device, args.checkpoint)
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
    from pyrogen.evaluation.diagnostics import diagnose_run, refusal

    if args.json and refusal(run.model) is None and results["num_examples"] > 1:  # no gaps
        results["diagnostics"] = diagnose_run(
            run, args.split, max_examples=args.max_examples, gap_examples=None, seed=args.seed
        )
    if args.json:
        _say(json.dumps(_strict_json(results), indent=2, allow_nan=False))
    else:
        _say(format_report(results))
    return 0


def _cmd_diagnose(args: argparse.Namespace) -> int:
    from pyrogen.evaluation.diagnostics import (
        diagnose_run,
        format_diagnostics,
        refusal,
        save_kl_figure,
    )
    from pyrogen.runtime import configure_threads, count_all_parameters

    out = Path(args.out) if args.out else Path(args.run_dir)
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out} is not a folder")
    run = _load_run(args.run_dir, args.device, args.checkpoint)
    reason = refusal(run.model)
    if reason is not None:
        raise UsageError(f"{args.run_dir} is a {run.family} run; {reason}")
    configure_threads(args.num_threads, count_all_parameters(run.learner.module))
    result = diagnose_run(
        run,
        args.split,
        max_examples=args.max_examples,
        gap_examples=args.subset,
        num_samples=args.is_samples,
        refine_steps=args.refine_steps,
        seed=args.seed,
    )
    try:
        out.mkdir(parents=True, exist_ok=True)
        figure = save_kl_figure(result, out / "kl_per_dim.png")
    except OSError as e:
        raise UsageError(f"cannot write {out / 'kl_per_dim.png'}: {e.strerror or e}") from None
    if args.json:
        print(json.dumps(_strict_json(result), indent=2, allow_nan=False))
    else:
        print(format_diagnostics(result))
        print(f"KL per dimension: {figure}" if figure else "KL per dimension: no figure")
    return 0


def _cmd_compare(args: argparse.Namespace) -> int:
    from pyrogen.workflows.compare import compare, format_markdown
    from pyrogen.workflows.compare_config import COMPARED_FAMILIES, load_compare_config

    paths, overrides = _split_args(args.args)
    if len(paths) != 1:
        raise UsageError("give one compare CONFIG file (and any key=value overrides)")
    settings = [f"evaluation.num_threads={args.num_threads}", f"evaluation.quiet={args.quiet}"]
    cc = load_compare_config(paths[0], overrides + settings)
    run_dirs = {}
    for item in args.runs or []:
        family, _, path = item.partition("=")
        if family not in COMPARED_FAMILIES or not path:
            raise UsageError(
                f"--runs takes FAMILY=RUN_DIR with FAMILY one of "
                f"{', '.join(COMPARED_FAMILIES)}, got {item}"
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
    from pyrogen.evaluation.discrete_gradients import DISCRETE_ESTIMATORS
    from pyrogen.evaluation.gradients import (
        ESTIMATORS,
        encoder_output_groups,
        format_table,
        run_gradient_diagnostic,
    )

    paths, overrides = _split_args(args.args)
    if len(paths) != 1:
        raise UsageError("give one RUN_DIR or CONFIG (and, for a config, key=value overrides)")
    allowed = DISCRETE_ESTIMATORS if args.discrete else ESTIMATORS
    args.estimators = args.estimators or list(allowed)
    for est in args.estimators:
        if est not in allowed:
            what = "discrete estimator" if args.discrete else "estimator"
            raise UsageError(f"unknown {what} {est!r} (allowed: {', '.join(allowed)})")
    if not args.discrete and (args.temperatures or args.components):
        raise UsageError("--temperatures and --components apply to --discrete")
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
    from pyrogen.runtime import configure_threads, count_all_parameters

    configure_threads(args.num_threads, count_all_parameters(learner.module))
    if args.discrete:
        return _discrete_gradients(args, dataset, out)
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


def _discrete_gradients(args: argparse.Namespace, dataset: Any, out: Path) -> int:
    """``pyrogen gradients --discrete``: the estimators of a categorical latent's gradient on
    a mixture of ``--components`` components fitted to a batch of the data."""
    import torch

    from pyrogen.evaluation.discrete_gradients import (
        CategoricalGuide,
        format_discrete_table,
        mixture_for,
        run_discrete_gradient_diagnostic,
    )

    x = dataset.process(dataset.train[: args.batch_size], torch.Generator().manual_seed(0))
    x = x.reshape(x.shape[0], -1)
    k = args.components or 10
    if x.shape[0] < k:
        raise UsageError(f"--components {k} needs --batch-size >= {k} (got {x.shape[0]})")
    with torch.random.fork_rng():
        torch.manual_seed(0)
        guide = CategoricalGuide(x.shape[1], k).to(x.device)
    rows = run_discrete_gradient_diagnostic(
        mixture_for(x, k),
        guide,
        x,
        out_dir=out,
        estimators=args.estimators,
        temperatures=args.temperatures or [1.0, 0.5, 0.1],
        num_samples=args.samples,
        warmup=args.warmup,
        progress=not args.quiet,
    )
    print(format_discrete_table(rows))
    print(f"table, CSV and plot in {out}")
    return 0


def _temperature(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0 < value <= 100:
        raise argparse.ArgumentTypeError(f"{value} is out of range; expected 0 < τ <= 100")
    return value


def _sampling_temperature(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0 <= value <= 100:
        raise argparse.ArgumentTypeError(f"{value} is out of range; expected 0 <= T <= 100")
    return value


def _version() -> str:
    from pyrogen import __version__

    return f"pyrogen {__version__}"


def build_parser() -> _Parser:
    parser = _Parser(
        prog="pyrogen",
        description="Deep generative models (VAEs, normalizing flows, GANs) as Pyro "
        "generative processes: train from YAML configs, sample, evaluate, compare.",
        formatter_class=_Help,
    )
    parser.add_argument("-V", "--version", action="version", version=_version())
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    def command(name: str, summary: str, description: str) -> argparse.ArgumentParser:
        """A sub-command with its one-line summary (``pyrogen --help``) and description."""
        return sub.add_parser(name, help=summary, formatter_class=_Help, description=description)

    parser.commands = sub.choices

    def threads(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--num-threads",
            type=_threads,
            default="auto",
            metavar="N|auto",
            help="torch CPU threads; auto picks from the free cores (see train.num_threads)",
        )

    def run_options(p: argparse.ArgumentParser) -> None:
        """--checkpoint, --device and --num-threads: how a run folder is loaded and run."""
        checkpoint(p)
        device(p)
        threads(p)

    def checkpoint(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--checkpoint",
            choices=["best", "last"],
            default=None,
            help="best.pt (the best validation of train.monitor) or checkpoint.pt (the last "
            "state); default: best when the run kept one",
        )

    def device(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--device",
            default=None,
            metavar="auto|cpu|cuda|cuda:N",
            help="where to load the run (default: the run's train.device)",
        )

    p = command(
        "train",
        "train a model from a YAML config",
        "Train the model a YAML config describes. Any key can be overridden as "
        "section.key=value, anywhere on the line, e.g.\n  pyrogen train configs/vae_digits.yaml "
        "guide.name=iaf elbo.name=trace_graph elbo.num_particles=4 train.epochs=3\nThe run "
        "folder (output.dir/output.name) receives the resolved config, metrics, a checkpoint "
        "and figures.\nEvery key with its type, default and allowed values: pyrogen config "
        "--defaults [vae|flow|gan]",
    )
    p.add_argument("args", nargs="*", metavar="CONFIG [key=value ...]")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue the run in RUN_DIR")
    p.add_argument("--run-dir", metavar="DIR", help="write the run here, not output.dir/<name>")
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace the run already in the run folder (output.overwrite=true); without it "
        "such a folder is refused",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar or progress lines")
    p.set_defaults(func=_cmd_train)

    p = command(
        "config",
        "print the resolved config without training",
        "Read CONFIG, apply the overrides, check everything that can be checked "
        "before reading data, and print the resolved YAML (what config.yaml of a run holds).\n"
        "With --defaults, list every key instead: type, default, allowed values or names, and "
        "what it does.",
    )
    p.add_argument("args", nargs="*", metavar="CONFIG [key=value ...]")
    p.add_argument(
        "--defaults",
        nargs="?",
        const="all",
        metavar="FAMILY",
        help="list every key of the schema (no CONFIG needed), with the model section of "
        "FAMILY (vae, flow or gan) or of every family",
    )
    p.set_defaults(func=_cmd_config)

    p = command(
        "sample",
        "draw samples from a trained run",
        "Draw N samples from the model of a run folder and save them as a PNG "
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
    p.add_argument(
        "--label",
        type=_int_range(0, 100_000),
        default=None,
        help="a class-conditional model: draw x ~ p(x | y) for this class y",
    )
    p.add_argument(
        "--context",
        default=None,
        metavar="FILE",
        help="a model on a continuous context: draw x ~ p(x | c) for the c in FILE (.npy or "
        ".csv: one row of C values for all n, or n rows)",
    )
    p.add_argument(
        "--temperature",
        type=_sampling_temperature,
        default=1.0,
        metavar="T",
        help="flows: draw z ~ N(0, T² I) (every split prior's std times T too); default 1",
    )
    run_options(p)
    p.set_defaults(func=_cmd_sample)

    p = command(
        "evaluate",
        "print every log-likelihood a trained run supports",
        "Evaluate a run folder on a split, in nats per example: the exact "
        "log-likelihood and bits/dim (flows), the ELBO and importance-sampled log p(x) (VAEs), "
        "a Parzen-window estimate (every family). Discrete data (binary images) have "
        "probabilities, continuous data densities: the table says which.",
    )
    p.add_argument("run_dir", metavar="RUN_DIR")
    p.add_argument(
        "--split", choices=["train", "valid", "test"], default="test", help="the split evaluated"
    )
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
    run_options(p)
    p.set_defaults(func=_cmd_evaluate)

    p = command(
        "diagnose",
        "what a VAE run learned: active units, KL per dimension, I(x; z), inference gaps",
        "Diagnose the latent space of a VAE run on a split: active units (Cov_x E_q[z_u | x] > "
        "0.01), KL(q ‖ p) per latent dimension (a sorted bar figure kl_per_dim.png in the run "
        "folder or --out), the minibatch estimate of I(x; z), and on a subset of examples the "
        "approximation and amortisation gaps (log p(x), the amortised ELBO and the ELBO of a "
        "diagonal Gaussian refined per example by SVI). Warns when fewer than half of the "
        "units are active (posterior collapse).",
    )
    p.add_argument("run_dir", metavar="RUN_DIR")
    p.add_argument(
        "--split", choices=["train", "valid", "test"], default="test", help="the split diagnosed"
    )
    p.add_argument(
        "--max-examples",
        type=_int_range(2, 1 << 31),
        default=None,
        help="a random subset of N examples",
    )
    p.add_argument(
        "--subset", type=_int_range(1, 100_000), default=100, help="examples for the gaps"
    )
    p.add_argument(
        "--refine-steps",
        type=_int_range(0, 1_000_000),
        default=100,
        help="SVI steps refining each example's local q",
    )
    p.add_argument("--is-samples", type=COUNT, default=1000, help="K draws of each q")
    p.add_argument("--seed", type=SEED, default=0, help="seed of every diagnostic's stream")
    p.add_argument("--out", metavar="DIR", help="folder of kl_per_dim.png (default: RUN_DIR)")
    p.add_argument("--json", action="store_true", help="print strict JSON instead of a table")
    run_options(p)
    p.set_defaults(func=_cmd_diagnose)

    p = command(
        "compare",
        "train one model per family on the same data and compare them",
        "Train (or load with --runs) a VAE, a flow and a GAN on the same data and "
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

    p = command(
        "gradients",
        "measure the variance of ELBO gradient estimators",
        "Draw N independent estimates of the ELBO gradient for the guide of a VAE "
        "(a run folder, or a config for an untrained model) from the reparameterised and "
        "score-function estimators (no baseline, decaying average, neural) with several "
        "particle counts; print mean, variance and SNR per parameter group, and save a table "
        "and a plot of variance against particles. With --discrete: the estimators of a "
        "categorical latent's gradient (enumeration, score function with and without "
        "baselines, Gumbel-softmax at several temperatures), their variance and their bias "
        "against the exact enumerated gradient.",
    )
    p.add_argument("args", nargs="*", metavar="RUN_DIR|CONFIG [key=value ...]")
    p.add_argument(
        "--estimators",
        nargs="+",
        default=None,
        metavar="NAME",
        help="reparam, score_function, score_function_avg, score_function_nn (default: all); "
        "with --discrete: enum, score_function, score_function_avg, score_function_nn, "
        "gumbel_softmax",
    )
    p.add_argument(
        "--discrete",
        action="store_true",
        help="estimators of a categorical latent c instead: a mixture of --components "
        "components fitted to the batch, q(c | x) linear; enumeration (exact) is the "
        "reference each estimator's bias is measured against",
    )
    p.add_argument(
        "--temperatures",
        nargs="+",
        type=_temperature,
        metavar="TAU",
        help="--discrete: the Gumbel-softmax temperatures (default: 1 0.5 0.1)",
    )
    p.add_argument(
        "--components",
        type=_int_range(2, 1000),
        metavar="K",
        help="--discrete: the mixture's number of components (default: 10)",
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


#: the commands whose ``key=value`` words are run-config overrides (``compare``'s are not)
CONFIG_COMMANDS = ("train", "config", "gradients")


def _option_names(parser: argparse.ArgumentParser) -> list[str]:
    return [s for action in parser._actions for s in action.option_strings]


def _config_keys() -> dict[str, list[str]]:
    """Each field name of the schema with its ``section.key`` forms (``epochs``:
    ``[train.epochs]``; ``name``: ``[data.name, guide.name, ...]``)."""
    import dataclasses

    from pyrogen.config import MODEL_CONFIGS, SECTIONS

    classes = [*(("model", c) for c in MODEL_CONFIGS.values()), *SECTIONS.items()]
    out: dict[str, list[str]] = {}
    for section, cls in classes:
        for f in dataclasses.fields(cls):
            keys = out.setdefault(f.name, [])
            if f"{section}.{f.name}" not in keys:
                keys.append(f"{section}.{f.name}")
    return out


def _unknown_option_hint(
    parser: argparse.ArgumentParser, command: str, word: str, argv: list[str]
) -> str:
    """'; did you mean ...?' for an unknown option: the nearest option of the command, or, for
    a config key written as an option (``--epochs 3``), its override form ``train.epochs=3``."""
    name, eq, value = word.partition("=")
    if not eq and word in argv:  # the word after the option, if it is not another option
        after = argv[argv.index(word) + 1 : argv.index(word) + 2]
        value = after[0] if after and not after[0].startswith("-") and "=" not in after[0] else ""
    options = _option_names(parser)
    dashed = "--" + name.lstrip("-").replace("_", "-")
    if dashed in options:
        return f"; did you mean {dashed}?"
    bare = name.lstrip("-").replace("-", "_")
    fields = _config_keys() if command in CONFIG_COMMANDS else {}
    stems = {o.lstrip("-"): o for o in options}  # "--" would make every pair look alike
    close = [stems[c] for c in difflib.get_close_matches(name.lstrip("-"), list(stems), n=1)]
    near = difflib.get_close_matches(bare, list(fields), n=1, cutoff=0.8)
    # an exact config key, else the nearest option, else the nearest config key
    keys = fields.get(bare) or ([] if close or not near else fields[near[0]])
    if keys:
        forms = [f"{k}={value or 'VALUE'}" for k in keys]
        listed = forms[0] if len(forms) == 1 else ", ".join(forms[:-1]) + " or " + forms[-1]
        return f"; config keys are set as section.key=value: did you mean {listed}?"
    return f"; did you mean {close[0]}?" if close else ""


def _unknown_command(parser: _Parser, word: str) -> NoReturn:
    close = difflib.get_close_matches(word, list(parser.commands), n=1, cutoff=0.5)
    if close:
        hint = f"; did you mean {close[0]!r}?"
    elif word.endswith((".yaml", ".yml")):
        hint = f"; did you mean 'pyrogen train {word}'?"
    else:
        hint = ""
    parser.error(f"unknown command {word!r}{hint} (commands: {', '.join(parser.commands)})")


def _parse(parser: _Parser, argv: list[str]) -> argparse.Namespace:
    """``argv`` parsed; every mistake is one line from the parser that saw it (exit 2)."""
    if argv and not argv[0].startswith("-") and argv[0] not in parser.commands:
        _unknown_command(parser, argv[0])
    # key=value words may follow flags: argparse leaves them over; they join the command's
    # positional words (argparse's parse_intermixed_args does not support sub-commands)
    args, extra = parser.parse_known_args(argv)
    if not extra:
        return args
    sub = parser.commands[args.command]
    unknown = [e for e in extra if e.startswith("-")]
    if not unknown and hasattr(args, "args"):
        args.args = [*args.args, *extra]
        return args
    if not unknown:
        sub.error(f"unrecognized arguments: {' '.join(extra)}")
    hints = (_unknown_option_hint(sub, args.command, u, argv) for u in unknown)
    hint = next((h for h in hints if h), "")
    plural = "s" if len(unknown) > 1 else ""
    sub.error(f"unrecognized argument{plural} {' '.join(unknown)}{hint}")


def _warning_line(command: str):
    """Python's ``showwarning`` for the CLI: each warning (a renamed config key, unreliable
    importance weights) is one line ``pyrogen COMMAND: warning: ...`` on rank 0's stderr."""

    def show(message, category, filename, lineno, file=None, line=None):  # noqa: ARG001
        _say(f"pyrogen {command}: warning: {_one_line(Warning(message))}", file=sys.stderr)

    return show


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    if not argv:  # a bare `pyrogen`: what it can do
        parser.print_help()
        return 0
    try:
        args = _parse(parser, argv)
    except SystemExit as e:  # argparse: --help, --version, or a usage error (printed)
        return int(e.code or 0)
    try:
        from pyrogen.parallel.distributed import env_world_size

        if env_world_size() > 1 and args.command not in DISTRIBUTED_COMMANDS:
            raise UsageError(
                f"{args.command} runs in one process; run it without torchrun (only "
                f"{' and '.join(DISTRIBUTED_COMMANDS)} run data-parallel)"
            )
        with warnings.catch_warnings():  # restores Python's display afterwards
            warnings.showwarning = _warning_line(args.command)
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

"""Every mistake gets one clear line: malformed configs, overrides, CLI options, data files and
checkpoints, generated systematically from the schema.

For each malformed input the command must exit with code 2, print no traceback, name the
culprit (the key, the option, the file) in its one-line message, and create nothing on disk.
The counts are printed at the end of the module (``pytest -s``) for the record.
"""

from __future__ import annotations

import dataclasses
import gzip
import os
import struct
import typing
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pyrogen.cli import main
from pyrogen.config import (
    MODEL_CONFIGS,
    SECTIONS,
    ConfigError,
    read_config,
)

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
BASE = {
    "vae": "vae_digits.yaml",
    "flow": "flow_moons.yaml",
    "gan": "gan_toy.yaml",
    "ssvae": "ssvae_mnist.yaml",
}
# when a "malformed" value were accepted, the run must stay tiny (and then the test fails)
TINY = ["train.epochs=1", "train.max_steps=1", "train.eval_every=0", "output.num_samples=4"]
TALLY: Counter = Counter()


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    """An empty working directory: a refused command must leave it empty."""
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    return work


def refused(argv: list[str], culprit: str, capsys, workdir: Path, kind: str) -> None:
    """Run the CLI and check the contract for a malformed input."""
    TALLY[f"{kind} tried"] += 1
    code = main(argv)
    out, err = capsys.readouterr()
    created = sorted(p.name for p in workdir.iterdir())
    assert code == 2, f"exit {code} for {argv}: {err[-300:]}"
    assert "Traceback" not in err and "Traceback" not in out
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1, err
    assert culprit in lines[0], f"{culprit!r} not named in: {lines[0]}"
    assert len(lines[0]) < 800
    assert created == [], f"refused run left {created}"
    TALLY[f"{kind} exit 2"] += 1


# ------------------------------------------------------------------ values from the schema
def _leaves(tp):
    origin = typing.get_origin(tp)
    if origin in (typing.Union, __import__("types").UnionType):
        return set().union(*(_leaves(a) for a in typing.get_args(tp)))
    return {tp}


def bad_values(tp, meta: dict) -> list:
    """Values that no field of type ``tp`` with range ``meta`` may accept."""
    leaves = _leaves(tp)
    origin = {typing.get_origin(t) for t in leaves}
    values: list = [{"a": 1}]  # a mapping is never a valid value
    numeric = {int, float} & leaves
    if numeric:
        values += ["abc", float("nan"), float("inf"), float("-inf"), 10**30, [1]]
        if meta.get("ge") is not None:
            values.append(meta["ge"] - 1)
        if meta.get("gt") is not None:
            values += [meta["gt"], meta["gt"] - 1]
        if meta.get("le") is not None:
            values.append(meta["le"] * 2 + 1)
        if meta.get("lt") is not None:
            values += [meta["lt"], meta["lt"] + 1]
        if float not in leaves:
            values.append(1.5)
    if list in origin:
        values += ["abc", [float("nan")], [-(10**9)], [10**12], [[1]]]
        if meta.get("len"):
            values.append([0.5] * (meta["len"] + 1))
        elif meta.get("max_len"):
            values.append([8] * (meta["max_len"] + 1))
            if meta.get("min_len", 1):  # [] is an affine map where min_len is 0
                values.append([])
    if bool in leaves:
        values += ["maybe", 2]
    literal = [t for t in leaves if typing.get_origin(t) is typing.Literal]
    if literal:
        values += ["no_such_choice", 3.5]
    if str in leaves and not numeric and not literal:
        values += [[1, 2]]
    return values


def schema_cases() -> list[tuple[str, str, object]]:
    cases = []
    for section, cls in SECTIONS.items():
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            for value in bad_values(hints[f.name], dict(f.metadata)):
                cases.append(("vae", f"{section}.{f.name}", value))
    for family, cls in MODEL_CONFIGS.items():
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            for value in bad_values(hints[f.name], dict(f.metadata)):
                cases.append((family, f"model.{f.name}", value))
    # names looked up in registries
    for key in ("data.name", "guide.name", "elbo.name"):
        cases.append(("vae", key, "no_such_name"))
    cases.append(("flow", "model.flow", "no_such_flow"))
    cases.append(("gan", "adversarial.loss", "no_such_loss"))
    return cases


SCHEMA_CASES = schema_cases()


def _text(value) -> str:
    return yaml.safe_dump(value, default_flow_style=True, width=10**6).strip().removesuffix("\n...")


@pytest.mark.parametrize(
    ("family", "key", "value"), SCHEMA_CASES, ids=[f"{k}={_text(v)}" for _, k, v in SCHEMA_CASES]
)
def test_every_malformed_value_of_every_key_is_one_line_exit_2(
    family, key, value, capsys, workdir, tmp_path
):
    if family == "program":  # a program's config has only the family's own keys
        base = tmp_path / "program.yaml"
        base.write_text("model:\n  family: program\ndata:\n  name: digits\n")
    else:
        base = CONFIGS / BASE[family]
    argv = ["train", str(base), *TINY, f"{key}={_text(value)}", "--quiet"]
    refused(argv, key, capsys, workdir, "config value")


# ------------------------------------------------------------------ checks made while building
BUILD_CASES = [
    ("vae", ["guide.name=iaf", "model.latent_dim=1"], "model.latent_dim"),
    ("vae", ["model.architecture=conv", "data.name=moons", "data.binarize=none",
             "model.likelihood=gaussian"], "model.architecture"),
    ("vae", ["model.architecture=conv", "data.name=digits", "data.flatten=false"], None),
    ("vae", ["data.binarize=none"], "model.likelihood=bernoulli"),
    ("vae", ["data.name=moons", "data.binarize=dynamic"], "data.binarize"),
    ("vae", ["data.dequantize=true"], "data.dequantize"),
    ("vae", ["data.name=array"], "data.path"),
    ("vae", ["data.name=image_folder"], "data.path"),
    ("vae", ["data.logit_lambda=0"], "data.logit_lambda"),
    ("vae", ["data.valid_fraction=0.6", "data.test_fraction=0.5"], "data.valid_fraction"),
    ("flow", ["model.flow=glow"], "model.flow=glow"),
    ("flow", ["model.flow=planar"], "model.flow=planar"),
    ("flow", ["model.flow=maf", "data.name=digits", "model.hidden_sizes=[16]"], "hidden_sizes"),
    ("flow", ["model.conditional=true"], "model.conditional"),
    ("vae", ["model.conditional=true", "model.prior=vamp"], "model.prior=vamp"),
    ("vae", ["model.conditional=true", "model.levels=2"], "model.levels=2"),
    ("vae", ["model.prior=conditional"], "model.conditional=true"),
    ("vae", ["model.conditional=true", "data.name=moons", "model.likelihood=gaussian",
             "data.binarize=none"], "model.conditional=true"),
    ("flow", ["model.conditional=true", "model.flow=nsf_coupling"], "model.conditional"),
    ("flow", ["data.flatten=false", "data.name=digits"], "data.flatten"),
    ("flow", ["data.context=[age]"], "data.context"),
    ("gan", ["data.context=[age]", "model.conditional=true"], "data.context"),
    ("gan", ["model.architecture=conv"], "model.architecture"),
    ("gan", ["model.output=sigmoid"], "model.output"),
    ("gan", ["model.architecture=conv", "data.name=digits", "model.hidden_sizes=[8]"], "hidden"),
    ("vae", ["train.device=cuda:7"], "train.device"),
    ("vae", ["guide.baseline=neural"], "guide.baseline"),
    ("vae", ["elbo.name=rws"], "elbo.num_particles"),
    ("vae", ["guide.name=score_function", "guide.baseline=decaying_average",
             "elbo.name=trace_graph", "train.batch_size=5000"], "train.batch_size"),
]  # fmt: skip


@pytest.mark.parametrize(("family", "overrides", "culprit"), BUILD_CASES)
def test_checks_made_while_building_name_their_keys(family, overrides, culprit, capsys, workdir):
    if culprit is None:  # 8x8 digits are fine for conv: not a mistake; must train
        assert main(["train", str(CONFIGS / BASE[family]), *TINY, *overrides, "--quiet"]) == 0
        return
    if "cuda" in " ".join(overrides) and torch.cuda.device_count() > 7:
        pytest.skip("this machine has that GPU")
    argv = ["train", str(CONFIGS / BASE[family]), *TINY, *overrides, "--quiet"]
    refused(argv, culprit, capsys, workdir, "build check")


def test_a_model_too_large_for_memory_is_refused_before_allocating(capsys, workdir):
    argv = [
        "train",
        str(CONFIGS / "vae_digits.yaml"),
        *TINY,
        "model.hidden_sizes=[65536,65536,65536]",
    ]
    refused(argv, "model", capsys, workdir, "too large")


# ------------------------------------------------------------------ config files
FILES = {
    "syntax": (b"train: [1, 2\n", "not valid YAML"),
    "tab": (b"train:\n\tepochs: 3\n", "not valid YAML"),
    "not utf-8": (b"train:\n  epochs: \xff\xfe3\n", "not UTF-8"),
    "alias": (b"a: &x [1, 2]\nb: *x\n", "aliases"),
    "billion laughs": (
        b"a: &a [x, x, x, x, x, x, x, x, x]\nb: &b [*a, *a, *a, *a, *a, *a, *a, *a]\n"
        b"c: &c [*b, *b, *b, *b, *b, *b, *b, *b]\n",
        "aliases",
    ),
    "a list": (b"- 1\n- 2\n", "mapping"),
    "a scalar": (b"42\n", "mapping"),
    "python tag": (b"data:\n  name: !!python/object/apply:os.system ['echo pwned']\n", "YAML"),
    "deep nesting": (b"a: " + b"[" * 5000 + b"]" * 5000 + b"\n", "YAML"),
    "unknown section": (b"trian:\n  epochs: 3\n", "trian"),
    "section not a mapping": (b"train: 3\n", "train"),
    "empty": (b"", "model.likelihood=bernoulli"),  # the default digits are not binary
    "comments only": (b"# nothing here\n", "model.likelihood=bernoulli"),
    "huge": (b"# " + b"x" * (2 << 20) + b"\n", "bytes"),
    "key that is a list": (b"train:\n  [1, 2]: 3\n", "train"),
}


@pytest.mark.parametrize("name", list(FILES))
def test_malformed_config_files_are_one_line(name, tmp_path, capsys, workdir):
    content, culprit = FILES[name]
    path = tmp_path / f"{name.replace(' ', '_')}.yaml"
    path.write_bytes(content)
    refused(["train", str(path), "--quiet"], culprit, capsys, workdir, "config file")


def test_a_folder_or_missing_file_as_config(tmp_path, capsys, workdir):
    refused(["train", str(tmp_path)], "is a folder", capsys, workdir, "config file")
    refused(["train", str(tmp_path / "nope.yaml")], "nope.yaml", capsys, workdir, "config file")
    refused(["config", str(tmp_path / "nope.yaml")], "nope.yaml", capsys, workdir, "config file")


OVERRIDES = [
    ("train.epochs=[1", "train.epochs"),
    ("train.epochs", "train.epochs"),
    ("=3", "=3"),
    ("train..epochs=3", "train..epochs"),
    ("train.epochs.x=3", "train.epochs"),
    ("data.name=${oc.env:HOME}", "data.name"),
    ("nonsense=1", "nonsense"),
    ("train.epochs=3=4", "train.epochs"),
    ("train.seed=-1", "train.seed"),
    ("train.seed=4294967296", "train.seed"),
    ("optim.lr=nan", "optim.lr"),
    ("optim.lr=.inf", "optim.lr"),
    ("train.log_every=0", "train.log_every"),
    ("model.hidden_sizes=[-1]", "model.hidden_sizes"),
    ("model.hidden_sizes=[0]", "model.hidden_sizes"),
    ("output.num_samples=0", "output.num_samples"),
    ("train.device=cuda:x", "train.device"),
]


@pytest.mark.parametrize(("override", "culprit"), OVERRIDES)
def test_malformed_overrides_are_one_line(override, culprit, capsys, workdir):
    argv = ["train", str(CONFIGS / "vae_digits.yaml"), *TINY, override]
    if override == "train.epochs":  # a word without '=' is a second config file
        culprit = "one CONFIG"
    refused(argv, culprit, capsys, workdir, "override")


# ------------------------------------------------------------------ random text (Hypothesis)
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=300) | st.text(max_size=300).map(str.encode))
def test_any_bytes_as_a_config_give_a_config_or_a_config_error(content):
    """Whatever a file holds, reading it returns a Config or raises ConfigError: nothing else
    escapes (no YAML, Unicode or type errors)."""
    import tempfile

    with tempfile.NamedTemporaryFile(suffix=".yaml", delete=False) as f:
        f.write(content)
    try:
        read_config(f.name)
        TALLY["random file accepted"] += 1
    except ConfigError as e:
        assert "\n" not in str(e).strip()
        TALLY["random file refused"] += 1
    finally:
        os.unlink(f.name)


@settings(max_examples=150, deadline=None)
@given(
    st.sampled_from(["train.epochs", "optim.lr", "model.hidden_sizes", "data.name", "elbo.alpha"]),
    st.text(max_size=40),
)
def test_any_override_value_gives_a_config_or_a_config_error(key, text):
    try:
        read_config(None, [f"{key}={text}"])
    except ConfigError as e:
        assert "\n" not in str(e).strip() and len(str(e)) < 800


# ------------------------------------------------------------------ command-line options
@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    run = tmp_path_factory.mktemp("trained") / "run"
    cfg = str(CONFIGS / "vae_digits.yaml")
    assert main(["train", cfg, *TINY, "model.hidden_sizes=[16]", "--run-dir", str(run)]) == 0
    flow = run.parent / "flow"
    cfg = str(CONFIGS / "flow_moons.yaml")
    assert main(["train", cfg, *TINY, "--run-dir", str(flow), "--quiet"]) == 0
    return run


def cli_cases(run: str) -> list[tuple[list[str], str]]:
    cfg = str(CONFIGS / "vae_digits.yaml")
    return [
        (["sample", run, "--out", "s.png", "-n", "0"], "-n"),
        (["sample", run, "--out", "s.png", "-n", "-3"], "-n"),
        (["sample", run, "--out", "s.png", "-n", "abc"], "-n"),
        (["sample", run, "--out", "s.png", "--seed", "-1"], "--seed"),
        (["sample", run, "--out", "s.png", "--seed", str(1 << 40)], "--seed"),
        (["sample", run, "--out", "s.png", "--device", "tpu"], "--device"),
        (["sample", run, "--out", "s.png", "--device", "cuda:9"], "--device"),
        (["sample", run, "--out", "s.txt"], "--out"),
        (["sample", run], "--out"),
        (["sample", run, "--out", "s.png", "--num-threads", "0"], "--num-threads"),
        (["evaluate", run, "--is-samples", "0"], "--is-samples"),
        (["evaluate", run, "--is-samples", "-5"], "--is-samples"),
        (["evaluate", run, "--parzen-samples", "0"], "--parzen-samples"),
        (["evaluate", run, "--parzen-samples", str(1 << 40)], "--parzen-samples"),
        (["evaluate", run, "--max-examples", "0"], "--max-examples"),
        (["evaluate", run, "--split", "holdout"], "--split"),
        (["evaluate", run, "--bound", "renyi:0"], "renyi:0"),
        (["evaluate", run, "--bound", "renyi:x"], "renyi:x"),
        (["evaluate", run, "--bound", "nope:5"], "nope"),
        (["evaluate", run, "--bound", "renyy:5"], "did you mean 'renyi'"),
        (["evaluate", run, "--seed", "-2"], "--seed"),
        (["evaluate", "/no/such/run"], "/no/such/run"),
        (["gradients", cfg, "--particles", "0"], "--particles"),
        (["gradients", cfg, "--samples", "0"], "--samples"),
        (["gradients", cfg, "--samples", "1"], "--samples"),
        (["gradients", cfg, "--batch-size", "0"], "--batch-size"),
        (["gradients", cfg, "--warmup", "-1"], "--warmup"),
        (["gradients", cfg, "--estimators", "magic"], "magic"),
        (["gradients", "/no/such/thing"], "/no/such/thing"),
        (["gradients", str(CONFIGS / "flow_moons.yaml")], "flow"),
        (["compare", str(CONFIGS / "compare_toy.yaml"), "--runs", "diffusion=x"], "--runs"),
        (["compare", str(CONFIGS / "compare_toy.yaml"), "evaluation.is_samples=0"], "is_samples"),
        (["train", "--resume", "/no/such/run"], "/no/such/run"),
        (["train", cfg, "--resume", run], "--resume"),
        (["train", cfg, "--bogus"], "--bogus"),
        (["train"], "CONFIG"),
        (["nonsense"], "nonsense"),
    ]


def test_every_cli_option_is_range_checked(trained, capsys, workdir):
    for argv, culprit in cli_cases(str(trained)):
        refused(argv, culprit, capsys, workdir, "CLI option")


# ------------------------------------------------------------------ data files
def _idx(dims: list[int], body: bytes = b"") -> bytes:
    return bytes([0, 0, 8, len(dims)]) + struct.pack(f">{len(dims)}I", *dims) + body


DATA_FILES = {
    "idx dims overflow": ("mnist/train-images-idx3-ubyte", _idx([2**32 - 1] * 3, b"\0" * 16)),
    "idx truncated": ("mnist/train-images-idx3-ubyte", _idx([10, 28, 28], b"\0" * 100)),
    "idx bad magic": ("mnist/train-images-idx3-ubyte", b"\x01\x02\x03\x04" + b"\0" * 20),
    "idx gzip corrupt": ("mnist/train-images-idx3-ubyte.gz", gzip.compress(b"x" * 100)[:-10]),
    "amat blank": ("binarized_mnist/binarized_mnist_train.amat", b"\n\n\n  \n"),
    "amat bad value": ("binarized_mnist/binarized_mnist_train.amat", b"0 1 2\n"),
    "frey not mat": ("frey_faces/frey_rawface.mat", b"MATLAB 5.0 but not really"),
}
DATA_NAMES = {"idx": "mnist", "amat": "binarized_mnist", "frey": "frey"}


@pytest.mark.parametrize("name", list(DATA_FILES))
def test_malformed_data_files_are_one_line_naming_the_file(name, tmp_path, capsys, workdir):
    rel, content = DATA_FILES[name]
    path = tmp_path / "data" / rel
    path.parent.mkdir(parents=True)
    path.write_bytes(content)
    if name.startswith("idx"):  # the other MNIST files must exist for the loader to go on
        for other in (
            "train-labels-idx1-ubyte",
            "t10k-images-idx3-ubyte",
            "t10k-labels-idx1-ubyte",
        ):
            (path.parent / other).write_bytes(_idx([1], b"\0"))
    data_name = DATA_NAMES[name.split()[0]]
    argv = [
        "train",
        str(CONFIGS / "vae_digits.yaml"),
        *TINY,
        f"data.name={data_name}",
        f"data.root={tmp_path / 'data'}",
        "data.download=false",
    ]
    refused(argv, Path(rel).name, capsys, workdir, "data file")


def test_a_folder_where_a_data_file_should_be_is_not_downloaded_into(tmp_path, capsys, workdir):
    (tmp_path / "data" / "frey_faces" / "frey_rawface.mat").mkdir(parents=True)
    argv = ["train", str(CONFIGS / "vae_digits.yaml"), *TINY, "data.name=frey"]
    refused(argv + [f"data.root={tmp_path / 'data'}"], "is a folder", capsys, workdir, "data file")


USER_FILES = {
    "x.npy": b"\x93NUMPY not really",
    "x.npz": b"PK\x03\x04 broken zip",
    "x.csv": b"1,2\n3,abc\n",
    "x.pt": b"not a torch file",
    "x.txt": b"1 2 3",
    "empty.csv": b"",
}


@pytest.mark.parametrize("name", list(USER_FILES))
def test_malformed_user_files_are_one_line_naming_the_file(name, tmp_path, capsys, workdir):
    path = tmp_path / name
    path.write_bytes(USER_FILES[name])
    argv = [
        "train",
        str(CONFIGS / "flow_moons.yaml"),
        *TINY,
        "data.name=array",
        f"data.path={path}",
    ]
    refused(argv, name, capsys, workdir, "data file")


def test_user_data_with_nan_or_wrong_shape_is_refused(tmp_path, capsys, workdir):
    bad = np.ones((50, 2), np.float32)
    bad[3, 1] = np.nan
    np.save(tmp_path / "nan.npy", bad)
    np.save(tmp_path / "5d.npy", np.ones((4, 2, 2, 2, 2), np.float32))
    for name in ("nan.npy", "5d.npy"):
        argv = ["train", str(CONFIGS / "flow_moons.yaml"), *TINY, "data.name=array"]
        refused(argv + [f"data.path={tmp_path / name}"], name, capsys, workdir, "data file")


# ------------------------------------------------------------------ outputs and checkpoints
def test_an_output_folder_that_cannot_be_created(tmp_path, capsys, workdir):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    argv = ["train", str(CONFIGS / "flow_moons.yaml"), *TINY, f"output.dir={blocker}"]
    refused(argv, str(blocker), capsys, workdir, "output")
    if os.geteuid() != 0:  # root writes anywhere
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        argv = ["train", str(CONFIGS / "flow_moons.yaml"), *TINY, f"output.dir={locked}"]
        refused(argv, str(locked), capsys, workdir, "output")


def test_corrupted_and_foreign_checkpoints_are_refused(trained, tmp_path, capsys, workdir):
    import shutil

    for damage in ("flip", "truncate", "pickle", "other family", "other activation"):
        run = tmp_path / damage.replace(" ", "_")
        shutil.copytree(trained, run)
        ckpt = run / "checkpoint.pt"
        data = bytearray(ckpt.read_bytes())
        if damage == "flip":
            data[len(data) // 2] ^= 0xFF
            ckpt.write_bytes(bytes(data))
            culprit = "checkpoint.pt"
        elif damage == "truncate":
            ckpt.write_bytes(bytes(data[: len(data) // 3]))
            culprit = "checkpoint.pt"
        elif damage == "pickle":

            class Evil:
                def __reduce__(self):
                    return (print, ("executed!",))

            torch.save({"learner": Evil()}, ckpt)
            culprit = "checkpoint.pt"
        elif damage == "other family":  # a flow's checkpoint in the VAE's run folder
            shutil.copy(trained.parent / "flow" / "checkpoint.pt", ckpt)
            culprit = "checkpoint.pt"
        else:
            text = (run / "config.yaml").read_text()
            (run / "config.yaml").write_text(text.replace("activation: relu", "activation: tanh"))
            culprit = "model.activation"
        for argv in (["evaluate", str(run)], ["sample", str(run), "--out", "s.png"]):
            refused(argv, culprit, capsys, workdir, "checkpoint")
        _, err = capsys.readouterr()
        assert "executed!" not in err and "weights_only" not in err


def test_zz_every_malformed_input_tried_ended_in_a_clean_exit_2(capsys):
    """The tally of this module (it runs last; ``pytest -s`` prints the counts)."""
    tried = sum(v for k, v in TALLY.items() if k.endswith("tried"))
    clean = sum(v for k, v in TALLY.items() if k.endswith("exit 2"))
    if not tried:
        pytest.skip("run with the rest of this module")
    with capsys.disabled():
        print(f"\nmalformed inputs through the CLI: {tried} tried, {clean} clean exit 2")
        for key, value in sorted(TALLY.items()):
            print(f"  {key}: {value}")
    assert clean == tried

"""The conventions users of PyTorch, Pyro, Lightning and Hydra expect: TensorBoard events,
progress where it can be seen, strict JSON, one random stream per metric, runs named after
their config, threads and denormals handled and restored, no noise from the JIT."""

from __future__ import annotations

import json
import math
import warnings

import pytest
import torch

import pyrogen
from pyrogen import load_config
from pyrogen.cli import main
from pyrogen.runtime import SMALL_MODEL, cpu_settings, resolve_threads
from pyrogen.training import read_metrics

pytestmark = pytest.mark.usefixtures("one_thread")
FAST = ["train.epochs=3", "train.eval_every=1", "train.log_every=2", "train.device=cpu"]


@pytest.fixture(scope="module")
def vae_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("ux") / "vae"
    cfg = load_config("configs/vae_digits.yaml", FAST + ["model.hidden_sizes=[32]"])
    return pyrogen.train(cfg, run_dir, quiet=True)


def test_tensorboard_events_hold_the_metrics_and_samples(vae_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(vae_run.run_dir / "tensorboard")).Reload()
    tags = events.Tags()
    assert {"train/loss", "valid/elbo"} <= set(tags["scalars"])
    valid = [e.value for e in events.Scalars("valid/elbo")]
    from_file = [r["elbo"] for r in read_metrics(vae_run.run_dir) if r["split"] == "valid"]
    assert valid == pytest.approx(from_file) and len(valid) == 3
    assert "samples" in tags["images"]  # the samples figure at each evaluation
    assert (vae_run.run_dir / "curves.png").stat().st_size > 0


def test_epochs_are_numbered_one_way_for_training_and_validation(vae_run):
    records = read_metrics(vae_run.run_dir)
    steps_per_epoch = math.ceil(1257 / 64)
    for r in records:
        if r["split"] == "train":  # the epoch the step belongs to, from 1
            assert r["epoch"] == math.ceil(r["step"] / steps_per_epoch)
        if r["split"] == "valid":  # the epoch just completed, from 1
            assert r["step"] == r["epoch"] * steps_per_epoch


def test_off_a_terminal_a_line_per_evaluation_and_the_final_metrics(tmp_path, capsys):
    argv = ["train", "configs/flow_moons.yaml", *FAST, "--run-dir", str(tmp_path / "r")]
    assert main(argv) == 0
    out, err = capsys.readouterr()
    lines = [x for x in err.splitlines() if x.startswith("epoch ")]
    assert len(lines) == 3 and "valid log_prob" in lines[-1] and "(step " in lines[0]
    assert "final: valid log_prob" in out and "run folder:" in out
    assert main([*argv[:-2], "--run-dir", str(tmp_path / "q"), "--quiet"]) == 0
    out, err = capsys.readouterr()
    assert err == "" and "final:" in out


def test_library_runs_are_named_after_their_config(tmp_path):
    cfg = load_config("configs/flow_moons.yaml", ["train.max_steps=2", f"output.dir={tmp_path}"])
    run = pyrogen.train(cfg, quiet=True)
    assert run.run_dir.name.startswith("flow_moons-")


def test_evaluate_json_is_strict_and_each_metric_has_its_own_stream(vae_run, capsys):
    run = str(vae_run.run_dir)
    base = ["evaluate", run, "--json", "--is-samples", "20", "--parzen-samples", "300"]
    assert main([*base, "--max-examples", "1"]) == 0
    one = json.loads(capsys.readouterr().out, parse_constant=lambda c: pytest.fail(c))
    assert one["estimates"]["elbo"]["stderr"] is None  # not NaN: one example has no spread
    assert one["estimates"]["elbo"]["unit"] == "nats"
    assert one["estimates"]["elbo"]["kind"] == "discrete"  # binary digits: probabilities
    assert one["estimates"]["parzen"]["kind"] == "density"
    assert main(base) == 0
    plain = json.loads(capsys.readouterr().out)["estimates"]
    assert main([*base, "--bound", "renyi:5"]) == 0
    more = json.loads(capsys.readouterr().out)["estimates"]
    for name in ("parzen", "elbo", "importance_sampled"):  # asking for a bound changes nothing
        assert more[name]["mean"] == plain[name]["mean"]
    assert main([*base, "--seed", "1"]) == 0
    other = json.loads(capsys.readouterr().out)["estimates"]
    assert other["parzen"]["mean"] != plain["parzen"]["mean"]  # the seed is the seed


def test_the_evaluate_table_has_units_and_says_what_is_a_density(vae_run, capsys):
    assert (
        main(["evaluate", str(vae_run.run_dir), "--is-samples", "5", "--parzen-samples", "50"]) == 0
    )
    out = capsys.readouterr().out
    assert "unit" in out and "nats" in out
    assert "discrete: log-probability" in out and "density: log-density" in out


def test_threads_auto_and_denormals_are_set_during_work_and_restored():
    assert resolve_threads("auto", SMALL_MODEL - 1) == 1
    assert resolve_threads(3) == 3
    before = torch.get_num_threads()
    tiny = torch.tensor([1e-40])  # a float32 denormal
    with cpu_settings(2) as threads:
        assert threads == 2 and torch.get_num_threads() == 2
        flushed = (tiny * 1.0).item()
    assert torch.get_num_threads() == before
    assert (tiny * 1.0).item() != 0.0  # the user's code sees denormals again
    if torch.backends.cpu.get_cpu_capability() != "DEFAULT":  # x86 with SSE3 or better
        assert flushed == 0.0


def test_jit_estimators_print_no_deprecation_notice(tmp_path):
    cfg = load_config(None, ["elbo.name=jit_trace", "data.binarize=dynamic", "train.max_steps=3"])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        pyrogen.train(cfg, tmp_path / "r", quiet=True)
    assert not [w for w in caught if "jit" in str(w.message).lower()]

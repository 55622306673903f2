"""pyrogen as a library: models from the user's own networks, plain Pyro SVI that trains them,
isolation between models and from the user's param store, the user's own data through
``pyrogen.train(cfg, data=...)`` and the command line, and a package without import cycles."""

from __future__ import annotations

import ast
import math
from pathlib import Path

import numpy as np
import pyro
import pytest
import torch
from pyro import poutine
from pyro.infer import SVI, Importance, Predictive, Trace_ELBO
from torch import nn

import pyrogen
from conftest import GAUSSIAN, tiny
from pyrogen import VAE, IAFGuide, VariationalLearner, load_config
from pyrogen.build import build
from pyrogen.cli import main

PACKAGE = Path(pyrogen.__file__).parent
pytestmark = pytest.mark.usefixtures("one_thread")


def own_vae(latent_dim: int = 4, dim: int = 64, seed: int = 0) -> VAE:
    """A VAE from the test's own networks: nothing of pyrogen's but the constructor."""
    torch.manual_seed(seed)
    encoder = nn.Sequential(nn.Linear(dim, 32), nn.Tanh(), nn.Linear(32, 2 * latent_dim))
    decoder = nn.Sequential(nn.Linear(latent_dim, 32), nn.Tanh(), nn.Linear(32, dim))
    return VAE(encoder, decoder, latent_dim=latent_dim, event_shape=(dim,))


def binary_digits(n: int = 256) -> torch.Tensor:
    ds = pyrogen.load_dataset(pyrogen.config.DataConfig(name="digits", binarize="static"))
    return ds.train[:n]


# ------------------------------------------------------------------ plain Pyro
def test_plain_svi_with_pyro_optim_trains_every_parameter_of_a_pyrogen_vae():
    vae, x = own_vae(), binary_digits()
    before = {n: p.detach().clone() for n, p in vae.named_parameters()}
    svi = SVI(vae.model, vae.guide, pyro.optim.Adam({"lr": 1e-2}), Trace_ELBO())
    losses = [svi.step(x) / len(x) for _ in range(60)]
    assert np.mean(losses[-10:]) < np.mean(losses[:10]) - 5.0  # nats per digit
    moved = [n for n, p in vae.named_parameters() if not torch.equal(before[n], p)]
    assert moved == list(before)  # every parameter: encoder and decoder
    assert len(pyro.get_param_store()) == 0  # and nothing went into the global store


def test_plain_svi_follows_pyrogens_own_loop_step_for_step():
    """The same model, batches and random draws: Pyro's SVI + pyro.optim.Adam and pyrogen's
    ELBOModule + torch Adam take the same steps (Adam is elementwise), so the loss falls at the
    same rate."""
    x = binary_digits()
    a, b = own_vae(seed=1), own_vae(seed=1)
    svi = SVI(a.model, a.guide, pyro.optim.Adam({"lr": 1e-2}), Trace_ELBO())
    learner = VariationalLearner(b, Trace_ELBO(max_plate_nesting=1), lr=1e-2)
    ours, theirs = [], []
    for step in range(30):
        pyro.set_rng_seed(step)
        theirs.append(svi.step(x) / len(x))
        pyro.set_rng_seed(step)
        ours.append(learner.step(x)["loss"])
    np.testing.assert_allclose(ours, theirs, rtol=1e-3)
    for (name, p), q in zip(a.named_parameters(), b.parameters(), strict=True):
        torch.testing.assert_close(p, q, atol=1e-4, rtol=1e-3, msg=name)


def test_predictive_trace_and_importance_work_on_the_model():
    vae, x = own_vae(), binary_digits(32)
    trace = poutine.trace(vae.model).get_trace(x)
    assert trace.nodes["z"]["value"].shape == (32, 4) and trace.nodes["x"]["is_observed"]
    draws = Predictive(vae.model, num_samples=3, return_sites=["x"])(num_samples=5)
    assert draws["x"].shape == (3, 5, 64) and set(draws["x"].unique().tolist()) <= {0.0, 1.0}
    posterior = Predictive(vae.model, guide=vae.guide, num_samples=2, return_sites=["z"])(x)
    assert posterior["z"].shape == (2, 32, 4)
    importance = Importance(vae.model, vae.guide, num_samples=20).run(x[:1])
    assert math.isfinite(float(importance.get_log_normalizer()))


def test_param_sites_are_the_modules_parameters_under_their_names():
    vae = own_vae()
    model_sites = poutine.trace(vae.model, param_only=True).get_trace(num_samples=2).nodes
    guide_sites = poutine.trace(vae.guide, param_only=True).get_trace(binary_digits(2)).nodes
    names = [n for n, _ in vae.named_parameters()]
    assert sorted(model_sites) == sorted(n for n in names if not n.startswith("guide."))
    assert sorted(guide_sites) == sorted(n for n in names if n.startswith("guide."))
    # the site's value is the parameter (a view of it): updates reach the module
    site = model_sites["decoder.0.weight"]
    assert site["value"].unconstrained() is vae.decoder[0].weight


# ------------------------------------------------------------------ own networks
def test_a_vae_from_the_users_own_networks_and_guide_trains_with_pyrogens_learner():
    torch.manual_seed(0)
    x = binary_digits()
    enc = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, IAFGuide.encoder_outputs(4)))
    dec = nn.Sequential(nn.Linear(4, 64), nn.ReLU(), nn.Linear(64, 64))
    vae = VAE(None, dec, latent_dim=4, event_shape=64, guide=IAFGuide(enc, 4, num_flows=2))
    learner = VariationalLearner(vae, lr=3e-3)
    start = learner.evaluate(x)["elbo"]
    for _ in range(150):
        learner.step(x)
    assert learner.evaluate(x)["elbo"] > start + 10.0


def test_constructors_take_plain_arguments_and_check_them():
    with pytest.raises(ValueError, match="encoder or a guide"):
        VAE(None, nn.Linear(2, 4), latent_dim=2, event_shape=(4,))
    vae = VAE(nn.Linear(4, 4), nn.Linear(2, 3), latent_dim=2, event_shape=(4,))
    with pytest.raises(ValueError, match="decoder gives 3 numbers per example"):
        vae.sample(2)
    with pytest.raises(ValueError, match="generator gives"):
        pyrogen.GAN(nn.Linear(2, 3), nn.Linear(4, 1), latent_dim=2, event_shape=(4,)).sample(2)


# ------------------------------------------------------------------ isolation
def test_two_models_in_one_process_never_share_parameters_or_baselines():
    overrides = [
        "data.binarize=dynamic",
        "model.latent_dim=2",
        "model.hidden_sizes=[16]",
        "guide.name=score_function",
        "guide.baseline=decaying_average",
        "elbo.name=trace_graph",
        "train.device=cpu",
    ]
    cfg = load_config(None, overrides)
    ds, first = build(cfg)
    _, second = build(cfg)
    untouched = {k: v.clone() for k, v in second.module.state_dict().items()}
    x = ds.process(ds.train[:64], torch.Generator().manual_seed(0))
    for _ in range(5):
        first.step(x)
    assert all(torch.equal(untouched[k], v) for k, v in second.module.state_dict().items())
    baselines = first.state_dict()["param_store"]
    assert baselines and all("baseline" in k for k in baselines)  # the running average
    assert second.state_dict()["param_store"] == {}  # a learner that never stepped has none
    assert len(pyro.get_param_store()) == 0  # both kept it in a store of their own
    second.step(x)
    a, b = first.state_dict()["param_store"], second.state_dict()["param_store"]
    assert all(not torch.equal(a[k], b[k]) for k in a)


def test_two_jit_learners_are_independent():
    cfg = load_config(
        None, ["data.binarize=dynamic", "model.hidden_sizes=[16]", "elbo.name=jit_trace"]
    )
    ds, first = build(cfg, "cpu")
    _, second = build(cfg, "cpu")
    untouched = {k: v.clone() for k, v in second.module.state_dict().items()}
    x = ds.process(ds.train[:64], torch.Generator().manual_seed(0))
    losses = [first.step(x)["loss"] for _ in range(20)]
    assert losses[-1] < losses[0]
    assert all(torch.equal(untouched[k], v) for k, v in second.module.state_dict().items())
    assert len(pyro.get_param_store()) == 0


def test_a_users_param_store_survives_pyrogen_train(tmp_path):
    mine = pyro.param("my_scale", torch.tensor([1.0, 2.0]))
    pyro.module("my_net", nn.Linear(2, 2))
    keys = sorted(pyro.get_param_store().keys())
    cfg = load_config(
        None,
        [
            "elbo.name=jit_trace",  # an estimator that uses a param store: its own
            "data.binarize=dynamic",
            "model.hidden_sizes=[16]",
            "train.max_steps=5",
            "train.device=cpu",
        ],
    )
    pyrogen.train(cfg, tmp_path / "run", quiet=True)
    assert sorted(pyro.get_param_store().keys()) == keys
    assert pyro.param("my_scale") is mine


# ------------------------------------------------------------------ the user's data
def two_blobs(n: int = 600, dim: int = 3, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.concatenate(
        [rng.normal(-2.0, 0.5, (n // 2, dim)), rng.normal(2.0, 0.5, (n // 2, dim))]
    ).astype(np.float32)


FAMILY_OVERRIDES = {
    "vae": [GAUSSIAN, *tiny("vae", width=32)],
    "flow": tiny("flow", "model.flow=realnvp", width=32),
    "gan": tiny("gan", "adversarial.r1_penalty=0.1", width=32),
}


@pytest.mark.parametrize("family", list(FAMILY_OVERRIDES))
def test_each_family_trains_on_an_array_from_python_and_reloads(family, tmp_path):
    x = two_blobs()
    settings = ["train.epochs=30", "train.batch_size=32", "optim.lr=3e-3", "train.device=cpu"]
    cfg = load_config(None, FAMILY_OVERRIDES[family] + settings)
    run = pyrogen.train(cfg, tmp_path / "run", data=torch.from_numpy(x), quiet=True)
    assert run.dataset.train.shape == (480, 3)  # 10 % valid, 10 % test by default
    samples = run.sample(2000)
    # two modes near ±2 per coordinate, as in the data
    assert (samples[:, 0] < 0).float().mean().item() == pytest.approx(0.5, abs=0.2)
    assert samples[:, 0].abs().mean().item() == pytest.approx(2.0, abs=0.6)
    saved = load_config(tmp_path / "run" / "config.yaml")
    assert saved.data.name == "array" and saved.data.checksum.startswith("sha256:")
    again = pyrogen.load(tmp_path / "run", device="cpu")  # the data come from the run folder
    torch.testing.assert_close(again.dataset.test, run.dataset.test)
    x[0, 0] += 1.0  # another array: refused, naming what differs
    with pytest.raises(pyrogen.DataError, match="differ from those the run was trained on"):
        pyrogen.load(tmp_path / "run", data=x)


def test_a_dict_of_splits_from_python_keeps_its_splits(tmp_path):
    x = two_blobs(300)
    splits = {"train": x[:200], "valid": x[200:250], "test": x[250:]}
    cfg = load_config(None, FAMILY_OVERRIDES["flow"] + ["train.epochs=1", "train.device=cpu"])
    run = pyrogen.train(cfg, tmp_path / "run", data=splits, quiet=True)
    torch.testing.assert_close(run.dataset.test, torch.from_numpy(x[250:]))


def test_standardised_points_report_densities_in_the_users_units(tmp_path):
    """data.standardize: the flow sees (x − m)/s, its log-likelihood is reported in x's units
    (log-det −Σ log s), and samples come back in x's units."""
    x = 100.0 + 10.0 * two_blobs()
    base = FAMILY_OVERRIDES["flow"] + ["train.epochs=20", "train.device=cpu"]
    plain = pyrogen.train(
        load_config(None, base + ["data.standardize=true"]), tmp_path / "a", data=x, quiet=True
    )
    ev = pyrogen.config.EvaluationConfig(parzen_samples=200)
    exact = pyrogen.evaluate(plain, ev)["estimates"]["exact"]["mean"]
    ds = plain.dataset
    z = ds.process(ds.test)
    by_hand = (plain.model.log_prob(z) - ds.scale.log().sum()).mean().item()
    assert exact == pytest.approx(by_hand, rel=1e-5)
    assert plain.sample(1000).abs().mean().item() > 50  # in the data's units, not standardised


def test_cli_trains_on_a_csv_and_an_image_folder(tmp_path, capsys):
    from PIL import Image

    x = two_blobs(400, dim=2)
    csv_path = tmp_path / "points.csv"
    np.savetxt(csv_path, x, delimiter=",", header="u,v", comments="")
    code = main(
        [
            "train",
            "configs/flow_moons.yaml",
            "data.name=array",
            f"data.path={csv_path}",
            "train.epochs=2",
            f"output.dir={tmp_path / 'runs'}",
            "output.name=csv",
            "--quiet",
        ]
    )
    assert code == 0, capsys.readouterr().err
    assert main(["evaluate", str(tmp_path / "runs" / "csv"), "--parzen-samples", "50"]) == 0
    folder = tmp_path / "faces"
    rng = np.random.default_rng(0)
    for label in ("a", "b"):
        (folder / label).mkdir(parents=True)
        for i in range(20):
            pixels = (rng.random((8, 8)) * 255).astype(np.uint8)
            Image.fromarray(pixels).save(folder / label / f"{i}.png")
    code = main(
        [
            "train",
            "configs/vae_digits.yaml",
            "data.name=image_folder",
            f"data.path={folder}",
            "data.binarize=dynamic",
            "train.epochs=1",
            f"output.dir={tmp_path / 'runs'}",
            "output.name=images",
            "--quiet",
        ]
    )
    assert code == 0, capsys.readouterr().err
    run = pyrogen.load(tmp_path / "runs" / "images")
    assert run.dataset.image_shape == (1, 8, 8) and run.dataset.num_classes == 2
    capsys.readouterr()
    broken = tmp_path / "broken.npy"
    broken.write_bytes(b"\x93NUMPY garbage")
    code = main(["train", "configs/flow_moons.yaml", "data.name=array", f"data.path={broken}"])
    err = capsys.readouterr().err
    assert code == 2 and "broken.npy" in err and "Traceback" not in err


# ------------------------------------------------------------------ the package's shape
def _imports(path: Path) -> set[str]:
    """The pyrogen modules a source file imports (at any depth of the file)."""
    tree = ast.parse(path.read_text())
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("pyrogen"):
            found.add(node.module)
            for alias in node.names:  # "from pyrogen.data import user" imports a module
                found.add(f"{node.module}.{alias.name}")
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("pyrogen"))
    return found


def _module_graph() -> dict[str, set[str]]:
    modules = {}
    for path in PACKAGE.rglob("*.py"):
        rel = path.relative_to(PACKAGE.parent).with_suffix("")
        name = ".".join(rel.parts[:-1] if rel.name == "__init__" else rel.parts)
        modules[name] = path
    graph = {}
    for name, path in modules.items():
        graph[name] = {m for m in _imports(path) if m in modules and m != name}
    return graph


def test_the_package_has_no_import_cycles():
    graph = _module_graph()
    # a package imports its own sub-modules to export them: that edge is not a cycle
    edges = {a: {b for b in bs if not b.startswith(a + ".")} for a, bs in graph.items()}
    state: dict[str, int] = {}
    cycle: list[str] = []

    def visit(node: str, path: list[str]) -> bool:
        state[node] = 1
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 1:
                cycle.extend(path[path.index(nxt) :] + [node, nxt] if nxt in path else [node, nxt])
                return True
            if state.get(nxt) is None and visit(nxt, path + [node]):
                return True
        state[node] = 2
        return False

    for node in sorted(edges):
        if state.get(node) is None and visit(node, []):
            break
    assert not cycle, " -> ".join(cycle)


def test_config_is_schema_only_and_families_are_asked_not_tested():
    graph = _module_graph()
    config = {
        name for name in graph if name == "pyrogen.config" or name.startswith("pyrogen.config.")
    }
    assert {"pyrogen.config", "pyrogen.config.schema", "pyrogen.config.run"} <= config
    for name in config:  # the package imports nothing of pyrogen outside itself
        assert graph[name] <= config, (name, graph[name] - config)
    # no module outside the family table compares anything with a family's name
    offenders = []
    for path in PACKAGE.rglob("*.py"):
        if {"families", "config"} & set(path.relative_to(PACKAGE).parts):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Compare):
                for side in [node.left, *node.comparators]:
                    if isinstance(side, ast.Constant) and side.value in ("vae", "flow", "gan"):
                        offenders.append(f"{path.name}:{node.lineno}")
    assert offenders == []

"""The typed config: every kind of user error gets a clear message; overrides and the saved
config round-trip."""

from __future__ import annotations

from pathlib import Path

import pytest

from pyrogen import load_config
from pyrogen.config import ConfigError, from_dict, parse_overrides, save_config

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "c.yaml"
    p.write_text(text)
    return p


TRAINING_CONFIGS = sorted(p for p in CONFIGS.glob("*.yaml") if not p.name.startswith("compare"))


@pytest.mark.parametrize("path", TRAINING_CONFIGS, ids=lambda p: p.name)
def test_every_shipped_config_is_valid_and_round_trips(path: Path, tmp_path: Path) -> None:
    cfg = load_config(path)
    save_config(cfg, tmp_path / "resolved.yaml")
    assert load_config(tmp_path / "resolved.yaml") == cfg


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("compare_*.yaml")), ids=lambda p: p.name)
def test_every_shipped_compare_config_is_valid(path: Path) -> None:
    from pyrogen.workflows.compare_config import load_compare_config

    cc = load_compare_config(path)
    assert set(cc.runs) == {"vae", "flow", "gan"}
    assert len({c.data.name for c in cc.runs.values()}) == 1  # one data set for all


def test_unknown_key_names_the_key_and_the_nearest_valid_one(tmp_path: Path) -> None:
    p = write(tmp_path, "train:\n  epoch: 3\n")
    with pytest.raises(
        ConfigError, match=r"unknown key 'train.epoch'.*did you mean 'train.epochs'"
    ):
        load_config(p)


def test_unknown_key_in_family_section(tmp_path: Path) -> None:
    p = write(tmp_path, "model:\n  family: flow\n  num_layer: 3\n")
    with pytest.raises(ConfigError, match=r"'model.num_layer'.*'model.num_layers'"):
        load_config(p)


def test_key_of_another_family_is_unknown(tmp_path: Path) -> None:
    # latent_dim belongs to VAEs and GANs, not to flows
    p = write(tmp_path, "model:\n  family: flow\n  latent_dim: 3\n")
    with pytest.raises(ConfigError, match=r"unknown key 'model.latent_dim'"):
        load_config(p)


def test_unknown_section(tmp_path: Path) -> None:
    p = write(tmp_path, "trian:\n  epochs: 3\n")
    with pytest.raises(ConfigError, match=r"unknown section 'trian'.*did you mean 'train'"):
        load_config(p)


@pytest.mark.parametrize(
    "override, pattern",
    [
        ("train.epochs=three", r"'train.epochs': 'three'; expected an integer"),
        ("train.epochs=1.5", r"'train.epochs': 1.5; expected an integer"),
        ("data.binarize=sometimes", r"'data.binarize': 'sometimes'; expected one of 'none'"),
        ("model.likelihood=poisson", r"'model.likelihood'.*'bernoulli', 'gaussian'"),
        ("optim.lr=-1", r"'optim.lr': -1.0; expected a finite number > 0"),
        ("optim.lr=nan", r"'optim.lr': nan; expected a finite number > 0"),
        ("train.batch_size=0", r"'train.batch_size': 0; expected an integer >= 1"),
        ("train.device=tpu", r"'train.device': 'tpu'; expected auto, cpu, cuda or cuda:N"),
        ("model.hidden_sizes=[64,x]", r"'model.hidden_sizes'.*a list of an integer"),
        ("model.family=diffusion", r"'model.family': 'diffusion'; expected one of 'vae'"),
    ],
)
def test_bad_value_names_key_value_and_allowed(override: str, pattern: str) -> None:
    with pytest.raises(ConfigError, match=pattern):
        load_config(None, [override])


@pytest.mark.parametrize(
    "override, key",
    [
        ("guide.name=iaff", "guide.name"),
        ("elbo.name=trace_elbo", "elbo.name"),
        ("data.name=cifar", "data.name"),
    ],
)
def test_registry_names_are_checked_with_allowed_values(override: str, key: str) -> None:
    with pytest.raises(ConfigError, match=rf"'{key}'.*\(allowed: "):
        load_config(None, [override])


def test_flow_and_gan_names_are_checked() -> None:
    with pytest.raises(ConfigError, match=r"'model.flow': 'realnpv'; did you mean 'realnvp'"):
        load_config(None, ["model.family=flow", "model.flow=realnpv"])
    with pytest.raises(ConfigError, match=r"'adversarial.loss'.*allowed"):
        load_config(None, ["model.family=gan", "adversarial.loss=minmax"])


def test_overrides_are_typed_nested_and_win_over_the_file(tmp_path: Path) -> None:
    p = write(tmp_path, "train:\n  epochs: 10\n  batch_size: 64\noptim:\n  lr: 1.0e-3\n")
    cfg = load_config(
        p,
        [
            "train.epochs=3",
            "guide.name=iaf",
            "elbo.num_particles=4",
            "optim.lr=3e-4",
            "model.hidden_sizes=[32,16]",
            "data.root=null",
        ],
    )
    assert cfg.train.epochs == 3 and cfg.train.batch_size == 64
    assert cfg.guide.name == "iaf" and cfg.elbo.num_particles == 4
    assert cfg.optim.lr == pytest.approx(3e-4)
    assert cfg.model.hidden_sizes == [32, 16]
    assert cfg.data.root is None


def test_yaml_1_1_exponent_strings_are_numbers(tmp_path: Path) -> None:
    # PyYAML reads "1e-3" (no dot) as a string; a float field must still accept it
    p = write(tmp_path, "optim:\n  lr: 1e-3\n")
    assert load_config(p).optim.lr == pytest.approx(1e-3)


def test_malformed_override() -> None:
    with pytest.raises(ConfigError, match="expected section.key=value"):
        parse_overrides(["=3"])


def test_missing_file_and_bad_yaml(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "nope.yaml")
    p = write(tmp_path, "train: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(p)
    p = write(tmp_path, "- 1\n- 2\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(p)


def test_section_must_be_a_mapping() -> None:
    with pytest.raises(ConfigError, match="train: expected a section"):
        from_dict({"train": 3})


def test_config_never_evaluates_code(tmp_path: Path) -> None:
    # a YAML python tag is refused by the safe loader instead of being executed
    p = write(tmp_path, "data:\n  name: !!python/object/apply:os.system ['echo pwned']\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(p)
    # an OmegaConf interpolation of an environment variable is kept as plain text
    with pytest.raises(ConfigError):
        load_config(None, ["data.name=${oc.env:HOME}"])

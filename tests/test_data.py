"""Data sets and preprocessing: toy densities have their documented shape, splits are fixed and
distinct, preprocessing is exact (bins, Bernoulli means, logit Jacobian against autograd,
bits/dim of the uniform density), batches cover every example once. No test uses the network.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import pytest
import torch

import pyrogen.data.download as download
import pyrogen.data.preprocess as preprocess
from pyrogen.config import DataConfig
from pyrogen.data import (
    DataError,
    binarize,
    bits_per_dim,
    default_data_root,
    dequantize,
    inverse_logit,
    iterate_minibatches,
    load_dataset,
    logit_transform,
)
from pyrogen.data.toy import RING_RADII, eight_gaussian_centres
from pyrogen.registry import DATASETS

SHARED = Path(
    os.environ.get("PYROGEN_SHARED_DATA")
    or Path(__file__).resolve().parents[1].parent / "shared" / "data"
)
TOYS = ["moons", "eight_gaussians", "checkerboard", "spirals", "rings"]


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("a data test tried to download")

    monkeypatch.setattr(download, "download", refuse)


def shared(rel: str):
    """Skip unless the shared real data file ``rel`` exists."""
    return pytest.mark.skipif(not (SHARED / rel).is_file(), reason=f"no {SHARED / rel}")


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ---------------------------------------------------------------------------- toy densities
def test_every_data_set_is_registered():
    assert set(TOYS + ["digits", "mnist", "binarized_mnist", "frey"]) <= set(DATASETS.names())


@pytest.mark.parametrize("name", TOYS)
def test_toy_splits_have_default_sizes_are_reproducible_and_distinct(name):
    ds = load_dataset(DataConfig(name=name))
    assert (ds.kind, ds.event_shape, ds.image_shape, ds.levels) == ("points", (2,), None, None)
    assert [tuple(ds.split(s).shape) for s in ("train", "valid", "test")] == [
        (10_000, 2),
        (2_000, 2),
        (5_000, 2),
    ]
    assert ds.train.dtype == torch.float32 and all(ds.labels(s) is None for s in ("train", "test"))
    again = load_dataset(DataConfig(name=name))
    assert torch.equal(ds.train, again.train) and torch.equal(ds.test, again.test)
    # independent draws: no test point equals a training point
    assert not (ds.test[:1000, None] == ds.train[None, :2000]).all(-1).any()
    small = load_dataset(DataConfig(name=name, num_train=300, num_valid=20, num_test=50))
    assert [small.split(s).shape[0] for s in ("train", "valid", "test")] == [300, 20, 50]


def test_eight_gaussians_lie_on_the_eight_centres_with_the_given_noise():
    centres = eight_gaussian_centres()
    assert torch.allclose(centres.norm(dim=1), torch.full((8,), 2.0))
    for noise in (0.02, 0.1):
        x = load_dataset(DataConfig(name="eight_gaussians", noise=noise)).train
        d, k = torch.cdist(x, centres).min(dim=1)
        assert d.max() < 6 * noise
        counts = torch.bincount(k, minlength=8).float() / len(x)
        assert torch.allclose(counts, torch.full((8,), 1 / 8), atol=0.015)
        assert (x - centres[k]).std(0).sub(noise).abs().max() < 0.05 * noise


def test_checkerboard_fills_the_dark_squares_only():
    x = load_dataset(DataConfig(name="checkerboard")).train
    assert x.abs().max() <= 4
    cell = torch.floor(x / 2).long()
    assert ((cell[:, 0] + cell[:, 1]) % 2 == 0).all()
    counts = torch.unique(cell, dim=0, return_counts=True)[1]
    assert len(counts) == 8 and counts.min() > 0.1 * len(x)


def test_rings_and_moons_without_noise_lie_on_their_curves():
    x = load_dataset(DataConfig(name="rings", noise=0.0)).train
    gap = (x.norm(dim=1, keepdim=True) - torch.tensor(RING_RADII)).abs().min(dim=1).values
    assert gap.max() < 1e-5
    m = (load_dataset(DataConfig(name="moons", noise=0.0)).train - torch.tensor([-1.0, -0.2])) / 2
    outer = (m.norm(dim=1) - 1).abs() < 1e-5
    inner = ((m - torch.tensor([1.0, 0.5])).norm(dim=1) - 1).abs() < 1e-5
    assert (outer | inner).all() and 0.45 < outer.float().mean() < 0.55


def test_spirals_are_two_point_symmetric_arms():
    x = load_dataset(DataConfig(name="spirals", noise=0.0)).train
    assert x.norm(dim=1).max() < (3 * math.pi + 0.5 * math.sqrt(2)) / 3 + 1e-5
    assert x.mean(0).abs().max() < 0.1  # the arms are mirror images through the origin


@pytest.mark.parametrize(
    "option", [{"binarize": "dynamic"}, {"dequantize": True}, {"logit_lambda": 1e-6}]
)
def test_image_options_on_points_are_an_error(option):
    with pytest.raises(DataError, match="applies to images.*moons"):
        load_dataset(DataConfig(name="moons", **option))


# ---------------------------------------------------------------------------- digits
def test_digits_splits_partition_the_1797_images_on_the_17_level_grid():
    from sklearn.datasets import load_digits

    ds = load_dataset(DataConfig(name="digits"))
    assert [ds.split(s).shape for s in ("train", "valid", "test")] == [
        (1257, 64),
        (270, 64),
        (270, 64),
    ]
    assert (ds.image_shape, ds.num_classes, ds.levels, ds.kind) == ((1, 8, 8), 10, 17, "image")
    x = torch.cat([ds.train, ds.valid, ds.test])
    assert x.min() == 0 and x.max() == 1 and torch.equal(x * 16, torch.round(x * 16))
    original = torch.as_tensor(load_digits().data, dtype=torch.float32) / 16
    key = lambda t: sorted(map(tuple, t.tolist()))  # noqa: E731
    assert key(x) == key(original)  # a partition: every image in exactly one split
    y = torch.cat([ds.train_labels, ds.valid_labels, ds.test_labels])
    assert (
        y.dtype == torch.int64
        and torch.bincount(y).tolist()
        == torch.bincount(torch.as_tensor(load_digits().target)).tolist()
    )
    assert len(torch.unique(ds.valid_labels)) == 10
    conv = load_dataset(DataConfig(name="digits", flatten=False))
    assert conv.train.shape == (1257, 1, 8, 8) and conv.event_shape == (1, 8, 8)
    assert torch.equal(conv.train.flatten(1), ds.train)


def test_subsets_are_nested_fixed_and_bounded():
    full = load_dataset(DataConfig(name="digits"))
    a = load_dataset(DataConfig(name="digits", num_train=100, num_test=50))
    b = load_dataset(DataConfig(name="digits", num_train=500))
    assert torch.equal(a.train, b.train[:100]) and torch.equal(a.train_labels, b.train_labels[:100])
    rows = {tuple(r) for r in full.train.tolist()}
    assert all(tuple(r) in rows for r in b.train.tolist())
    assert a.test.shape[0] == 50 and a.valid.shape[0] == 270
    with pytest.raises(DataError, match="num_train=5,000.*only 1,257"):
        load_dataset(DataConfig(name="digits", num_train=5000))
    with pytest.raises(DataError, match="num_valid"):
        load_dataset(DataConfig(name="digits", num_valid=0))


def test_static_binarization_is_fixed_at_load_and_keeps_the_mean():
    ds = load_dataset(DataConfig(name="digits", binarize="static"))
    again = load_dataset(DataConfig(name="digits", binarize="static"))
    plain = load_dataset(DataConfig(name="digits"))
    assert torch.equal(ds.train, again.train) and ds.levels == 2
    assert set(ds.train.unique().tolist()) == {0.0, 1.0}
    assert abs(ds.train.mean() - plain.train.mean()) < 0.01
    assert torch.equal(ds.process(ds.train[:10], gen()), ds.train[:10])  # nothing stochastic
    sub = load_dataset(DataConfig(name="digits", binarize="static", num_train=100))
    rows = {tuple(r) for r in ds.train.tolist()}
    assert all(tuple(r) in rows for r in sub.train.tolist())  # a subset keeps its draws


# ---------------------------------------------------------------------------- preprocessing
def test_dynamic_binarization_is_bernoulli_of_the_intensity():
    p = torch.linspace(0, 1, 11).repeat(20_000, 1)
    b = binarize(p, gen(1))
    assert set(b.unique().tolist()) <= {0.0, 1.0}
    assert (b.mean(0) - p[0]).abs().max() < 0.015  # 4 standard errors at n = 20,000
    assert torch.equal(b, binarize(p, gen(1))) and not torch.equal(b, binarize(p, gen(2)))


@pytest.mark.parametrize("levels", [256, 17, 2])
def test_dequantization_stays_in_the_pixel_bin(levels):
    k = torch.arange(levels, dtype=torch.float32).repeat(2000, 1)
    y = dequantize(k / (levels - 1), levels, gen())
    lo, hi = k / levels, (k + 1) / levels
    assert ((y >= lo) & (y < hi)).all()
    assert (y.mean(0) - (k[0] + 0.5) / levels).abs().max() < 0.03 / levels


def test_dequantization_never_reaches_the_upper_bin_edge(monkeypatch):
    # the largest u below 1 makes k + u round up to k + 1 in float32; y must stay in its bin
    top = torch.nextafter(torch.tensor(1.0), torch.tensor(0.0))
    monkeypatch.setattr(preprocess, "uniform_like", lambda x, g=None: torch.full_like(x, top))
    k = torch.arange(256, dtype=torch.float32)
    y = dequantize(k / 255, 256, gen())
    assert (y < (k + 1) / 256).all() and (y >= k / 256).all() and y.max() < 1


@pytest.mark.parametrize("lam", [0.0, 1e-6, 0.05])
def test_logit_log_det_equals_autograd_jacobian(lam):
    y = torch.rand(4, 6, generator=gen(), dtype=torch.float64) * 0.98 + 0.01
    z, log_det = logit_transform(y, lam)
    for i in range(y.shape[0]):
        jac = torch.autograd.functional.jacobian(lambda v: logit_transform(v, lam)[0], y[i])
        assert torch.allclose(log_det[i], torch.linalg.slogdet(jac).logabsdet, rtol=1e-10)
    assert torch.allclose(inverse_logit(z, lam), y, atol=1e-12)


def test_logit_space_uniform_density_gives_exactly_8_bits_per_dim():
    ds = load_dataset(DataConfig(name="digits", dequantize=True, logit_lambda=1e-6))
    assert ds.bits_per_dim(0.0) == math.log2(17)
    z = ds.process(ds.train[:64].double(), gen())
    assert z.shape == (64, 64) and torch.isfinite(z).all()
    assert torch.allclose(ds.to_data_space(z), dequantize(ds.train[:64].double(), 17, gen()))
    # the push-forward of U[0,1]^D through the logit map: a logistic density, rescaled by
    # 1 / (1 - 2 lam) for s = lam + (1 - 2 lam) y; the log-det must bring it back to 0
    lam = ds.logit_lambda
    log_p_model = (-z - 2 * torch.nn.functional.softplus(-z) - math.log1p(-2 * lam)).sum(1)
    log_p_cube = log_p_model + ds.log_det_jacobian(z)
    assert torch.allclose(log_p_cube, torch.zeros(64, dtype=torch.float64), atol=1e-8)


def test_bits_per_dim_conversion():
    for d in (64, 784, 3072):
        assert bits_per_dim(0.0, d) == 8.0  # uniform on the cube: exactly 8 bits/dim
        assert bits_per_dim(torch.tensor(0.0), d, levels=2) == 1.0
        # a density 1/2 per dimension on the cube is one more bit per dimension
        assert bits_per_dim(-d * math.log(2.0), d) == pytest.approx(9.0, abs=1e-12)


def test_process_is_deterministic_without_stochastic_options_and_seeded_with_them():
    plain = load_dataset(DataConfig(name="digits"))
    x = plain.train[:32]
    assert torch.equal(plain.process(x, gen()), x)
    assert torch.equal(plain.log_det_jacobian(x), torch.zeros(32))
    ds = load_dataset(DataConfig(name="digits", binarize="dynamic", dequantize=True))
    g = gen(7)
    state = g.get_state()
    out = ds.process(x, g)
    g.set_state(state)
    assert torch.equal(out, ds.process(x, g)) and torch.equal(x, plain.train[:32])
    assert ds.model_levels == 2 and ((out >= 0) & (out < 1)).all()


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cpu_generator_gives_the_same_batches_on_cuda():
    cfg = DataConfig(name="digits", binarize="dynamic", dequantize=True, logit_lambda=1e-6)
    cpu, cuda = load_dataset(cfg, "cpu"), load_dataset(cfg, "cuda")
    a = cpu.process(cpu.train[:16], gen(3))
    b = cuda.process(cuda.train[:16], gen(3))
    assert b.device.type == "cuda" and torch.allclose(a, b.cpu(), atol=1e-5)
    cuda_gen = torch.Generator(device="cuda").manual_seed(3)
    assert cuda.process(cuda.train[:16], cuda_gen).device.type == "cuda"
    idx = next(iterate_minibatches(100, 10, gen(), "cuda"))
    assert idx.device.type == "cuda"


# ---------------------------------------------------------------------------- batching
@pytest.mark.parametrize("shuffle,drop_last", [(True, False), (False, False), (True, True)])
def test_minibatches_visit_every_example_once_per_epoch(shuffle, drop_last):
    g = gen(5)
    for _ in range(3):
        batches = list(iterate_minibatches(103, 10, g, "cpu", shuffle, drop_last))
        seen = torch.cat(batches)
        assert [len(b) for b in batches] == [10] * 10 + ([] if drop_last else [3])
        assert len(seen.unique()) == len(seen) and seen.dtype == torch.int64
        if not drop_last:
            assert torch.equal(seen.sort().values, torch.arange(103))
        if not shuffle:
            assert torch.equal(seen, torch.arange(103))


def test_minibatches_are_reproducible_from_the_generator_state():
    g = gen(11)
    state = g.get_state()
    first = list(iterate_minibatches(50, 8, g))
    second = list(iterate_minibatches(50, 8, g))  # the next epoch: a new order
    g.set_state(state)
    assert all(torch.equal(a, b) for a, b in zip(first, iterate_minibatches(50, 8, g), strict=True))
    assert not torch.equal(torch.cat(first), torch.cat(second))


# ---------------------------------------------------------------------------- roots, real files
def test_default_data_root_honours_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("PYROGEN_DATA", str(tmp_path / "data"))
    assert default_data_root() == tmp_path / "data"
    monkeypatch.delenv("PYROGEN_DATA")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    assert default_data_root() == tmp_path / "cache" / "pyrogen"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert default_data_root() == Path.home() / ".cache" / "pyrogen"


@pytest.mark.shared_data
@shared("mnist/train-images-idx3-ubyte.gz")
def test_real_mnist_loads_with_balanced_splits():
    ds = load_dataset(DataConfig(name="mnist", root=str(SHARED), download=False, flatten=False))
    n = ds.train.shape[0] + ds.valid.shape[0]
    assert ds.valid.shape[0] == n // 6 and ds.test.shape == (10_000, 1, 28, 28)
    assert ds.image_shape == (1, 28, 28) and ds.levels == 256 and ds.num_classes == 10
    assert ds.train.min() == 0 and ds.train.max() == 1
    assert torch.equal(ds.train * 255, torch.round(ds.train * 255))
    # the shared training subset is sorted by class: the valid split must still hold all 10
    assert len(torch.unique(ds.valid_labels)) == 10
    assert torch.bincount(ds.test_labels).min() > 800


@pytest.mark.shared_data
@shared("binarized_mnist/binarized_mnist_train.amat.gz")
def test_real_binarized_mnist_has_its_50k_10k_10k_splits():
    ds = load_dataset(DataConfig(name="binarized_mnist", root=str(SHARED), download=False))
    assert [ds.split(s).shape for s in ("train", "valid", "test")] == [
        (50_000, 784),
        (10_000, 784),
        (10_000, 784),
    ]
    assert ds.levels == 2 and set(ds.test.unique().tolist()) == {0.0, 1.0}
    assert 0.1 < ds.train.mean() < 0.16  # about 13% of MNIST's pixels are on


@pytest.mark.shared_data
@shared("frey_faces/frey_rawface.mat")
def test_real_frey_faces_split_1565_200_200():
    ds = load_dataset(DataConfig(name="frey", root=str(SHARED), download=False, flatten=False))
    assert [ds.split(s).shape[0] for s in ("train", "valid", "test")] == [1565, 200, 200]
    assert ds.image_shape == (1, 28, 20) and ds.train_labels is None and ds.levels == 256
    x = torch.cat([ds.train, ds.valid, ds.test]).flatten(1)
    assert len(torch.unique(x, dim=0)) > 1900  # distinct frames, nothing repeated by the split

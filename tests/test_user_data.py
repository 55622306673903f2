"""A user's own data: every file format reads back exactly, shapes and values become pyrogen's
layout, malformed files and arrays raise a one-line DataError naming the file, splits are
seeded, disjoint and covering, image folders give labels and one size, checksums detect a
single changed value. Small arrays only: the file runs in a few seconds.
"""

from __future__ import annotations

import hashlib
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from pyrogen.data.errors import DataError
from pyrogen.data.user_arrays import (
    array_checksum,
    file_checksum,
    read_array_file,
    read_image_folder,
    user_splits,
)

pytestmark = pytest.mark.usefixtures("one_thread")


def rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


def splits(arrays, **kw):
    kw = {"valid_fraction": 0.1, "test_fraction": 0.2, "seed": 0, **kw}
    return user_splits(arrays, **kw)


def raises(fn, *fragments: str) -> str:
    """Call ``fn``, expect a one-line DataError holding every fragment; return the message."""
    with pytest.raises(DataError) as info:
        fn()
    msg = str(info.value)
    assert "\n" not in msg and len(msg) < 600, msg
    for fragment in fragments:
        assert fragment in msg, (fragment, msg)
    return msg


# ---------------------------------------------------------------------------- formats
def test_npy_reads_back_exactly(tmp_path):
    x = rng().integers(0, 256, (7, 4, 5), dtype=np.uint8)
    np.save(tmp_path / "x.npy", x)
    out = read_array_file(tmp_path / "x.npy")
    assert list(out) == ["data"] and out["data"].dtype == np.uint8
    np.testing.assert_array_equal(out["data"], x)


def test_npz_with_splits_and_labels_reads_back_exactly(tmp_path):
    arrays = {
        "train": rng(1).normal(size=(9, 3)),
        "valid": rng(2).normal(size=(4, 3)),
        "test": rng(3).normal(size=(5, 3)),
        "train_labels": np.arange(9) % 2,
        "test_labels": np.arange(5) % 2,
    }
    with open(tmp_path / "s.NPZ", "wb") as f:  # extension in any case
        np.savez(f, **arrays)
    out = read_array_file(tmp_path / "s.NPZ")
    assert sorted(out) == sorted(arrays)
    for k, v in arrays.items():
        np.testing.assert_array_equal(out[k], v)
        assert out[k].dtype == v.dtype


def test_npz_with_one_array_under_any_name_is_the_data(tmp_path):
    x = rng().normal(size=(6, 2)).astype(np.float32)
    np.savez_compressed(tmp_path / "one.npz", features=x)
    out = read_array_file(tmp_path / "one.npz")
    assert list(out) == ["data"]
    np.testing.assert_array_equal(out["data"], x)


@pytest.mark.parametrize(
    "delim, header, sep_spaces",
    [(",", False, ""), (",", True, " "), (";", True, ""), ("\t", False, ""), (";", False, "  ")],
)
def test_csv_reads_back_exactly(tmp_path, delim, header, sep_spaces):
    x = rng().normal(size=(5, 3)) * 1e3
    lines = ["x" + delim + "y label" + delim + "z"] if header else []
    lines += [(sep_spaces + delim + sep_spaces).join(repr(float(v)) for v in row) for row in x]
    lines.insert(len(lines) - 1, "   ")  # a blank line is skipped
    (tmp_path / "d.csv").write_text("\n".join(lines) + "\n")
    out = read_array_file(tmp_path / "d.csv")
    assert list(out) == ["data"]
    np.testing.assert_array_equal(out["data"], x)  # exact, header dropped


def test_csv_single_column_is_n_by_1(tmp_path):
    (tmp_path / "c.csv").write_text("value\n1\n2.5\n-3\n")
    np.testing.assert_array_equal(read_array_file(tmp_path / "c.csv")["data"], [[1], [2.5], [-3]])


def test_pt_tensor_and_dict_read_back_exactly(tmp_path):
    t = torch.randn(6, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    torch.save(t, tmp_path / "t.pt")
    out = read_array_file(tmp_path / "t.pt")
    assert list(out) == ["data"] and out["data"].dtype == np.float32
    np.testing.assert_array_equal(out["data"], t.numpy())
    d = {"train": t, "test": t[:2] + 1, "train_labels": torch.arange(6)}
    torch.save(d, tmp_path / "d.pt")
    out = read_array_file(tmp_path / "d.pt")
    assert sorted(out) == sorted(d)
    for k, v in d.items():
        np.testing.assert_array_equal(out[k], v.numpy())


# ---------------------------------------------------------------------------- malformed files
class _Evil:
    """Unpickling it would create ``marker``: the test checks that it never runs."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def _truncated_npy(p: Path) -> None:
    np.save(p, np.arange(100.0).reshape(10, 10))
    p.write_bytes(p.read_bytes()[:200])


def _truncated_pt(p: Path) -> None:
    torch.save(torch.ones(50), p)
    p.write_bytes(p.read_bytes()[:300])


MALFORMED = {
    "truncated.npy": (_truncated_npy, ["not a readable .npy", "read all data"]),
    "garbage.npy": (lambda p: p.write_bytes(b"not numpy at all"), ["magic string"]),
    "empty.npy": (lambda p: p.write_bytes(b""), ["empty file"]),
    "unrelated.npz": (
        lambda p: np.savez(p, images=np.ones(3), targets=np.ones(3)),
        ["'images', 'targets'", "'train'"],
    ),
    "labels_only.npz": (
        lambda p: np.savez(p, train=np.ones(3), valid_labels=np.ones(3)),
        ["'valid_labels' but no 'valid'"],
    ),
    "truncated.npz": (
        lambda p: (np.savez(p, a=np.ones(50)), p.write_bytes(p.read_bytes()[:100])),
        ["not a readable .npz"],
    ),
    "text.csv": (lambda p: p.write_text("a,b\n1,2\n\n3,4\n5,oops\n"), ["line 5, column 2", "oops"]),
    "ragged.csv": (lambda p: p.write_text("1,2,3\n4,5,6\n7,8\n"), ["line 3 has 2 columns", "3"]),
    "narrow.csv": (lambda p: p.write_text("a,b,c\n1,2\n3,4\n"), ["line 2 has 2 columns"]),
    "header_only.csv": (lambda p: p.write_text("a,b\n\n"), ["no data"]),
    "truncated.pt": (_truncated_pt, ["not a readable .pt"]),
    "list.pt": (lambda p: torch.save([torch.ones(2)], p), ["holds a list"]),
    "data.txt": (lambda p: p.write_text("1,2\n"), ["unknown file type '.txt'", ".npy, .npz"]),
    "folder.npy": (lambda p: p.mkdir(), ["is a folder", "image_folder"]),
    "missing.npy": (lambda p: None, ["no such file"]),
}


@pytest.mark.parametrize("name", sorted(MALFORMED))
def test_malformed_files_raise_one_line_naming_the_file(tmp_path, name):
    make, fragments = MALFORMED[name]
    path = tmp_path / name
    make(path)
    raises(lambda: read_array_file(path), str(path), *fragments)


def test_pt_with_a_pickled_object_is_refused_without_running_it(tmp_path, capfd):
    marker = tmp_path / "code_ran"
    path = tmp_path / "evil.pt"
    torch.save({"train": torch.ones(3), "x": _Evil(marker)}, path)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        msg = raises(lambda: read_array_file(path), str(path), "refused", "GLOBAL io.open")
    assert not marker.exists()
    printed = capfd.readouterr()
    for text in [msg, printed.out, printed.err, *(str(w.message) for w in caught)]:
        assert "weights_only" not in text, text


# ---------------------------------------------------------------------------- shapes and values
def test_points_of_one_and_five_dimensions():
    x1 = rng().normal(size=40)
    r = splits(x1)
    assert r.kind == "points" and r.levels is None and r.train.shape[1:] == (1,)
    assert sorted(torch.cat([r.train, r.valid, r.test])[:, 0].tolist()) == sorted(
        x1.astype(np.float32).tolist()
    )
    x5 = rng().normal(size=(40, 5))
    r = splits(x5)
    assert r.train.shape[1:] == (5,) and r.train.dtype == torch.float32
    assert r.train.is_contiguous() and r.train.device.type == "cpu"


def test_image_layouts_agree_and_integers_are_scaled():
    chw = rng().integers(0, 256, (20, 3, 5, 6), dtype=np.uint8)
    a = splits(chw)
    b = splits(np.ascontiguousarray(chw.transpose(0, 2, 3, 1)))  # channels last
    assert a.kind == b.kind == "image" and a.levels == b.levels == 256
    assert a.train.shape[1:] == (3, 5, 6)
    for s in ("train", "valid", "test"):
        assert torch.equal(getattr(a, s), getattr(b, s))
    np.testing.assert_array_equal(
        torch.cat([a.train, a.valid, a.test]).sort(0).values,
        torch.from_numpy(chw).float().div(255).sort(0).values,
    )
    gray = rng().integers(0, 16, (20, 5, 6))  # int64 N x H x W on 16 levels
    g = splits(gray, levels=16)
    assert g.train.shape[1:] == (1, 5, 6) and g.levels == 16
    assert torch.cat([g.train, g.valid, g.test]).max() == 1.0
    assert set(torch.cat([g.train, g.valid, g.test]).mul(15).round().unique().tolist()) <= set(
        range(16)
    )


def test_image_value_checks():
    raises(lambda: splits(np.full((10, 4, 4), 1023)), "1023", "data.levels")
    assert splits(np.full((10, 4, 4), 1023), levels=1024).train.max() == 1.0
    raises(lambda: splits(np.full((10, 4, 4), 20), levels=16), "data.levels=16", "0..15")
    raises(lambda: splits(np.full((10, 4, 4), -1)), "[-1, -1]")
    raises(lambda: splits(np.linspace(0, 255, 160).reshape(10, 4, 4)), "[0, 1]", "255", "scale")
    f = splits(rng().random((10, 1, 4, 4)).astype(np.float32))
    assert f.levels is None and 0 <= f.train.min() and f.train.max() <= 1
    assert splits(np.ones((10, 4, 4), dtype=bool)).levels == 2
    raises(lambda: splits(rng().normal(size=(10, 3)), levels=256), "points")


@pytest.mark.parametrize(
    "shape, fragment",
    [((10, 2, 4, 4, 1), "(10, 2, 4, 4, 1)"), ((10, 5, 4, 4), "C = 1 or 3"), ((0, 3), "(0, 3)")],
)
def test_unsupported_shapes_are_refused(shape, fragment):
    raises(lambda: splits(np.zeros(shape), source="my.npy"), "my.npy", fragment)


def test_content_checks_name_the_source_and_split():
    x = rng().normal(size=(30, 2))
    bad = x.copy()
    bad[[1, 4, 7], 0] = np.nan
    bad[9, 1] = np.inf
    raises(
        lambda: splits({"train": x, "valid": bad}, source="f.npz"),
        "f.npz",
        "valid",
        "3 NaN",
        "1 inf",
    )
    raises(lambda: splits(np.array([["a", "b"]] * 5)), "dtype <U1")
    raises(lambda: splits(np.array([{}, {}], dtype=object)), "dtype object")
    raises(lambda: splits({"train": x, "test": x[:, :1]}), "(1,)", "(2,)")
    raises(lambda: splits({"train": x, "train_labels": np.arange(29)}), "(29,)", "(30,)")
    raises(lambda: splits({"train": x, "train_labels": np.full(30, 0.5)}), "integers")
    raises(lambda: splits({"train": x, "train_labels": np.arange(30), "test": x}), "test")
    r = splits(np.array([[True, False]] * 10))
    assert r.kind == "points" and set(r.train.flatten().tolist()) <= {0.0, 1.0}


def test_results_are_float32_copies_of_numpy_or_torch_input():
    x = rng().normal(size=(30, 3))
    a = splits(x, seed=5)
    b = splits(torch.from_numpy(x), seed=5)
    assert torch.equal(a.train, b.train) and torch.equal(a.test, b.test)
    given = torch.from_numpy(x.astype(np.float32))
    r = splits({"train": given, "valid": given[:3], "test": given[:4]})
    given.zero_()
    assert r.train.abs().sum() > 0 and r.valid.abs().sum() > 0  # not views of the input


# ---------------------------------------------------------------------------- splits
def test_splits_are_seeded_sized_disjoint_and_covering():
    n = 103
    x = np.arange(n, dtype=np.float64)[:, None] + 0.5
    y = np.arange(n) % 7
    a = splits({"data": x, "labels": y}, valid_fraction=0.15, test_fraction=0.25, seed=3)
    assert (a.valid.shape[0], a.test.shape[0], a.train.shape[0]) == (15, 26, 62)
    ids = [t[:, 0].tolist() for t in (a.train, a.valid, a.test)]
    assert sorted(sum(ids, [])) == (x[:, 0]).tolist()  # disjoint and covering
    for s in ("train", "valid", "test"):  # labels follow their examples
        xs, ys = getattr(a, s), getattr(a, f"{s}_labels")
        assert ys.dtype == torch.int64 and torch.equal(ys, (xs[:, 0] - 0.5).long() % 7)
    assert a.num_classes == 7
    again = splits({"data": x, "labels": y}, valid_fraction=0.15, test_fraction=0.25, seed=3)
    other = splits({"data": x, "labels": y}, valid_fraction=0.15, test_fraction=0.25, seed=4)
    assert all(torch.equal(getattr(a, s), getattr(again, s)) for s in ("train", "valid", "test"))
    assert not torch.equal(a.valid, other.valid) and not torch.equal(a.test, other.test)


def test_given_splits_are_kept_and_only_missing_ones_carved():
    x = np.arange(40.0)[:, None]
    test = -np.arange(5.0)[:, None]
    r = splits({"train": x, "test": test}, valid_fraction=0.01, test_fraction=0.0)
    np.testing.assert_array_equal(r.test, test)
    assert r.valid.shape[0] == 1 and r.train.shape[0] == 39  # at least one example
    assert sorted(torch.cat([r.train, r.valid])[:, 0].tolist()) == x[:, 0].tolist()
    full = {"train": x, "valid": x[:2], "test": x[:3]}
    r = splits(full, valid_fraction=0.0, test_fraction=0.0)
    assert torch.equal(r.train, torch.from_numpy(x).float())


def test_split_fraction_errors():
    x = np.arange(20.0)[:, None]
    raises(lambda: splits(x, valid_fraction=0.0), "data.valid_fraction", "valid split")
    raises(lambda: splits({"train": x, "valid": x}, test_fraction=0), "data.test_fraction")
    raises(lambda: splits(x, valid_fraction=1.0), "data.valid_fraction", "[0, 1)")
    raises(lambda: splits(x, test_fraction=-0.1), "data.test_fraction")
    raises(lambda: splits(x, valid_fraction=0.5, test_fraction=0.5), "< 1")
    raises(lambda: splits(x[:2]), "2 examples", "data.valid_fraction=0.1")


# ---------------------------------------------------------------------------- image folders
def _png(path: Path, array: np.ndarray, fmt: str | None = None) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path, fmt)


def test_image_folder_with_class_subfolders_gives_labels(tmp_path):
    imgs = rng().integers(0, 256, (5, 6, 7), dtype=np.uint8)
    names = ["dog/b.png", "cat/x.PNG", "dog/a.png", "cat/deep/y.png", "bird/z.png"]
    for name, im in zip(names, imgs, strict=True):
        _png(tmp_path / name, im)
    (tmp_path / "README.txt").write_text("not an image")
    _png(tmp_path / ".hidden" / "h.png", imgs[0])
    out = read_image_folder(tmp_path)
    assert out["data"].dtype == np.uint8 and out["data"].shape == (5, 1, 6, 7)
    order = ["bird/z.png", "cat/deep/y.png", "cat/x.PNG", "dog/a.png", "dog/b.png"]
    np.testing.assert_array_equal(out["data"][:, 0], imgs[[names.index(n) for n in order]])
    assert list(out["classes"]) == ["bird", "cat", "dog"]
    np.testing.assert_array_equal(out["labels"], [0, 1, 1, 2, 2])
    assert out["labels"].dtype == np.int64
    r = splits(out, valid_fraction=0.2, test_fraction=0.2)
    assert r.kind == "image" and r.num_classes == 3 and r.levels == 256
    assert r.train.shape[1:] == (1, 6, 7) and r.train_labels is not None


def test_image_folder_without_classes_and_mixed_modes_becomes_rgb(tmp_path):
    gray = rng().integers(0, 256, (8, 8), dtype=np.uint8)
    colour = np.zeros((8, 8, 3), np.uint8)
    colour[..., 0], colour[..., 2] = 200, 40
    _png(tmp_path / "a_gray.png", gray)
    _png(tmp_path / "b_colour.jpg", colour, "JPEG")
    rgba = np.dstack([colour, np.full((8, 8), 7, np.uint8)])
    _png(tmp_path / "sub" / "c_rgba.png", rgba)
    out = read_image_folder(tmp_path)
    assert set(out) == {"data"} and out["data"].shape == (3, 3, 8, 8)
    for c in range(3):  # grayscale replicated into R = G = B
        np.testing.assert_array_equal(out["data"][0, c], gray)
    assert np.abs(out["data"][1].astype(int) - colour.transpose(2, 0, 1)).max() <= 3  # JPEG
    np.testing.assert_array_equal(out["data"][2], colour.transpose(2, 0, 1))  # alpha dropped


def test_sixteen_bit_grayscale_is_scaled_to_eight_bits(tmp_path):
    from PIL import Image

    v = np.array([[0, 257, 65535, 32896]], dtype=np.uint16)
    Image.fromarray(v).save(tmp_path / "deep.png")
    out = read_image_folder(tmp_path)["data"]
    np.testing.assert_array_equal(out[0, 0], [[0, 1, 255, 128]])


def test_image_folder_sizes(tmp_path):
    _png(tmp_path / "a.png", np.full((6, 4), 50, np.uint8))
    _png(tmp_path / "b.png", np.full((5, 4), 90, np.uint8))
    raises(lambda: read_image_folder(tmp_path), "a.png is 6x4", "b.png is 5x4", "data.image_size")
    out = read_image_folder(tmp_path, image_size=(3, 2))["data"]
    assert out.shape == (2, 1, 3, 2)
    assert (out[0] == 50).all() and (out[1] == 90).all()  # constant images stay constant
    raises(lambda: read_image_folder(tmp_path, image_size=(0, 2)), "data.image_size")


def test_image_folder_errors(tmp_path):
    _png(tmp_path / "ok" / "a.png", np.zeros((4, 4), np.uint8))
    corrupt = tmp_path / "ok" / "b.png"
    corrupt.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 20)
    raises(lambda: read_image_folder(tmp_path / "ok"), str(corrupt), "unreadable image")
    (tmp_path / "empty").mkdir()
    raises(lambda: read_image_folder(tmp_path / "empty"), str(tmp_path / "empty"), ".png, .jpg")
    (tmp_path / "texts").mkdir()
    (tmp_path / "texts" / "a.txt").write_text("x")
    raises(lambda: read_image_folder(tmp_path / "texts"), "no images found")
    raises(lambda: read_image_folder(tmp_path / "nope"), "no such folder")
    raises(lambda: read_image_folder(tmp_path / "ok" / "a.png"), "not a folder")


# ---------------------------------------------------------------------------- checksums
def test_array_checksum_is_stable_and_sensitive(tmp_path):
    x = rng().normal(size=(10, 3)).astype(np.float32)
    c = array_checksum(x)
    assert c.startswith("sha256:") and len(c) == 7 + 64
    assert c == array_checksum(x.copy()) == array_checksum(torch.from_numpy(x))
    assert c == array_checksum({"data": x})
    np.save(tmp_path / "x.npy", x)
    assert c == array_checksum(read_array_file(tmp_path / "x.npy"))
    assert c == array_checksum(x.astype(">f4"))  # byte order does not matter, values do
    changed = x.copy()
    changed[4, 1] = np.nextafter(changed[4, 1], np.float32(1))
    assert array_checksum(changed) != c
    assert array_checksum(x.astype(np.float64)) != c
    assert array_checksum(x.reshape(3, 10)) != c
    d = {"train": x, "test": x[:2]}
    assert array_checksum(d) == array_checksum(dict(reversed(d.items())))
    assert array_checksum(d) != array_checksum({"train": x, "valid": x[:2]})


def test_file_checksum(tmp_path):
    p = tmp_path / "f.csv"
    p.write_bytes(b"1,2\n3,4\n")
    assert file_checksum(p) == "sha256:" + hashlib.sha256(b"1,2\n3,4\n").hexdigest()
    p.write_bytes(b"1,2\n3,5\n")
    assert file_checksum(p) == "sha256:" + hashlib.sha256(b"1,2\n3,5\n").hexdigest()
    raises(lambda: file_checksum(tmp_path / "none.csv"), "none.csv")

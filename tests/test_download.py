"""Data files: readers check their formats (a truncated or corrupt file is an error naming it),
files are found under the data root in their plain or gzipped form, and downloads are
atomic and checked against md5, with fallback to the next URL. Downloads are served by a
local HTTP server on 127.0.0.1; no test reaches the internet.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import http.server
import os
import threading
import urllib.parse
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import scipy.io
import torch

from pyrogen.config import DataConfig
from pyrogen.data import DataError, download, load_dataset
from pyrogen.data.download import DataSource, RemoteFile, fetch, find_local, md5sum
from pyrogen.data.files import read_amat, read_frey, read_idx, write_idx

SHARED = Path(
    os.environ.get("PYROGEN_SHARED_DATA")
    or Path(__file__).resolve().parents[1].parent / "shared" / "data"
)


def shared(rel: str):
    return pytest.mark.skipif(not (SHARED / rel).is_file(), reason=f"no {SHARED / rel}")


@pytest.fixture(autouse=True)
def local_network_only(monkeypatch):
    """Any URL other than 127.0.0.1 fails the test instead of reaching the internet."""
    real = urllib.request.urlopen

    def guarded(request, *args, **kwargs):
        url = request.full_url if isinstance(request, urllib.request.Request) else request
        assert urllib.parse.urlsplit(url).hostname == "127.0.0.1", f"network access: {url}"
        return real(request, *args, **kwargs)

    monkeypatch.setattr(urllib.request, "urlopen", guarded)
    monkeypatch.setenv("no_proxy", "127.0.0.1")
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")


def rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


def amat_text(rows: np.ndarray) -> bytes:
    return "".join(" ".join(map(str, r)) + "\n" for r in rows).encode()


# ---------------------------------------------------------------------------- IDX
@pytest.mark.parametrize("name", ["images-idx3-ubyte", "images-idx3-ubyte.gz"])
def test_idx_round_trip_plain_and_gzipped(tmp_path, name):
    images = rng().integers(0, 256, (7, 28, 28), dtype=np.uint8)
    write_idx(tmp_path / name, images)
    assert (tmp_path / name).read_bytes()[:2] == (b"\x1f\x8b" if name.endswith(".gz") else b"\0\0")
    out = read_idx(tmp_path / name, ndim=3)
    assert out.dtype == np.uint8 and np.array_equal(out, images)


def test_idx_gzip_is_detected_by_content_not_name(tmp_path):
    labels = rng().integers(0, 10, 30, dtype=np.uint8)
    write_idx(tmp_path / "labels-idx1-ubyte", labels, compress=True)  # gzip, no .gz suffix
    assert np.array_equal(read_idx(tmp_path / "labels-idx1-ubyte", ndim=1), labels)


def test_truncated_idx_names_the_file_and_the_expected_size(tmp_path):
    path = tmp_path / "train-images-idx3-ubyte.gz"
    write_idx(path, np.zeros((50, 28, 28), np.uint8))
    data = gzip.decompress(path.read_bytes())
    path.write_bytes(gzip.compress(data[: 16 + 1234]))
    with pytest.raises(DataError) as e:
        read_idx(path)
    assert str(e.value) == (
        f"{path}: truncated IDX file: header says 50 images of 28x28 (39,200 bytes) but only "
        "1,234 bytes follow"
    )


@pytest.mark.parametrize(
    "payload,match",
    [
        (b"\x89PNG\r\n\x1a\n....", "not an IDX file: magic number 89504e47"),
        (b"\0\0\x08\x03\0\0", "truncated IDX header"),
        (bytes([0, 0, 8, 1, 0, 0, 0, 2, 5, 6, 7]), "trailing data"),
        (bytes([0, 0, 8, 1, 0, 0, 0, 2, 5, 6]), "IDX file has 1 dimensions; expected 3"),
    ],
)
def test_malformed_idx_is_an_error_naming_the_file(tmp_path, payload, match):
    path = tmp_path / "bad-idx3-ubyte"
    path.write_bytes(payload)
    with pytest.raises(DataError, match=match) as e:
        read_idx(path, ndim=3 if "dimensions" in match else None)
    assert str(path) in str(e.value)


def test_truncated_gzip_is_an_error_naming_the_file(tmp_path):
    path = tmp_path / "t10k-images-idx3-ubyte.gz"
    write_idx(path, rng().integers(0, 256, (20, 28, 28), dtype=np.uint8))
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(DataError, match=f"{path}: corrupt or truncated gzip"):
        read_idx(path)


@pytest.mark.shared_data
@shared("mnist/t10k-images-idx3-ubyte.gz")
def test_real_mnist_test_files_are_the_canonical_ones():
    files = download.SOURCES["mnist"].files
    for key in ("test_images", "test_labels"):
        path = SHARED / "mnist" / files[key].name
        assert md5sum(path) == files[key].md5 and path.stat().st_size == files[key].size
    images = read_idx(SHARED / "mnist" / files["test_images"].name, ndim=3)
    labels = read_idx(SHARED / "mnist" / files["test_labels"].name, ndim=1)
    assert images.shape == (10_000, 28, 28) and labels.shape == (10_000,)
    assert images.max() == 255 and sorted(np.unique(labels)) == list(range(10))


# ---------------------------------------------------------------------------- .amat
@pytest.mark.parametrize("gz", [False, True])
def test_amat_round_trip_plain_and_gzipped(tmp_path, gz):
    rows = rng().integers(0, 2, (9, 784), dtype=np.uint8)
    text = amat_text(rows)
    path = tmp_path / ("x.amat.gz" if gz else "x.amat")
    path.write_bytes(gzip.compress(text) if gz else text)
    out = read_amat(path)
    assert out.dtype == np.uint8 and np.array_equal(out, rows)


def test_amat_other_whitespace_layouts_parse_the_same(tmp_path):
    rows = rng(1).integers(0, 2, (5, 784), dtype=np.uint8)
    odd = "\r\n".join("  ".join(map(str, r)) + " " for r in rows)  # CRLF, no final newline
    (tmp_path / "odd.amat").write_text(odd + "\n\n")
    assert np.array_equal(read_amat(tmp_path / "odd.amat"), rows)


@pytest.mark.parametrize(
    "edit,match",
    [
        (
            lambda t: t.replace(b"\n", b" 1\n", 2).replace(b" 1\n", b"\n", 1),
            "line 2: expected 784 values 0/1, found 785 values",
        ),
        (lambda t: t[: len(t) // 2 + 100], "line 3: expected 784 values 0/1, found"),
        (lambda t: t[:40] + b"2" + t[41:], "line 1: value '2' is not 0 or 1"),
        (lambda t: t[:40] + b"01" + t[41:], "line 1: expected 784 values 0/1, found values longer"),
    ],
)
def test_malformed_amat_is_an_error_naming_the_file_and_line(tmp_path, edit, match):
    path = tmp_path / "binarized_mnist_valid.amat"
    path.write_bytes(edit(amat_text(rng().integers(0, 2, (4, 784), dtype=np.uint8))))
    with pytest.raises(DataError, match=match) as e:
        read_amat(path)
    assert str(e.value).startswith(str(path))


@pytest.mark.shared_data
@shared("binarized_mnist/binarized_mnist_test.amat.gz")
def test_real_binarized_mnist_test_split_has_10000_rows():
    x = read_amat(SHARED / "binarized_mnist" / "binarized_mnist_test.amat.gz")
    assert x.shape == (10_000, 784) and set(np.unique(x)) == {0, 1}


# ---------------------------------------------------------------------------- Frey Face
def test_frey_columns_are_28_by_20_faces_row_by_row(tmp_path):
    faces = rng().integers(0, 256, (12, 28, 20), dtype=np.uint8)
    scipy.io.savemat(tmp_path / "frey_rawface.mat", {"ff": faces.reshape(12, 560).T})
    assert np.array_equal(read_frey(tmp_path / "frey_rawface.mat"), faces)


@pytest.mark.parametrize(
    "content,match",
    [
        ({"faces": np.zeros((560, 3), np.uint8)}, "no variable 'ff' \\(found: faces\\)"),
        ({"ff": np.zeros((784, 3), np.uint8)}, "'ff' is uint8 of shape 784x3; expected uint8"),
        ({"ff": np.zeros((560, 3))}, "'ff' is float64 of shape 560x3"),
    ],
)
def test_wrong_frey_content_is_an_error_naming_the_file(tmp_path, content, match):
    path = tmp_path / "frey_rawface.mat"
    scipy.io.savemat(path, content)
    with pytest.raises(DataError, match=match) as e:
        read_frey(path)
    assert str(e.value).startswith(str(path))


def test_truncated_frey_file_is_an_error(tmp_path):
    path = tmp_path / "frey_rawface.mat"
    scipy.io.savemat(path, {"ff": np.ones((560, 40), np.uint8)})
    path.write_bytes(path.read_bytes()[:3000])
    with pytest.raises(DataError, match=f"{path}: not a readable MATLAB"):
        read_frey(path)


@pytest.mark.shared_data
@shared("frey_faces/frey_rawface.mat")
def test_real_frey_file_has_1965_faces_of_28_by_20():
    faces = read_frey(SHARED / "frey_faces" / "frey_rawface.mat")
    assert faces.shape == (1965, 28, 20) and faces.dtype == np.uint8


# ---------------------------------------------------------------------------- finding files
def make_mnist(folder: Path, n_train: int = 60, n_test: int = 20, gz: bool = True) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    g, sfx = rng(2), ".gz" if gz else ""
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        write_idx(folder / f"{prefix}-images-idx3-ubyte{sfx}", g.integers(0, 256, (n, 28, 28)))
        write_idx(folder / f"{prefix}-labels-idx1-ubyte{sfx}", np.arange(n) % 10)


@pytest.mark.parametrize("gz", [True, False])
def test_mnist_loads_from_plain_or_gzipped_files_under_the_root(tmp_path, gz):
    make_mnist(tmp_path / "mnist", gz=gz)
    ds = load_dataset(DataConfig(name="mnist", root=str(tmp_path), download=False))
    assert [ds.split(s).shape[0] for s in ("train", "valid", "test")] == [50, 10, 20]
    assert ds.train.shape[1] == 784 and ds.test_labels.tolist() == [i % 10 for i in range(20)]


def test_files_are_found_by_name_gz_twin_then_in_the_root_itself(tmp_path):
    (tmp_path / "mnist").mkdir()
    assert find_local(tmp_path, "mnist", "a.gz") is None
    (tmp_path / "a").write_bytes(b"x")
    assert find_local(tmp_path, "mnist", "a.gz") == tmp_path / "a"  # root, un-gzipped name
    (tmp_path / "mnist" / "a.gz").write_bytes(b"x")
    assert find_local(tmp_path, "mnist", "a.gz") == tmp_path / "mnist" / "a.gz"
    (tmp_path / "mnist" / "b.amat.gz").write_bytes(b"x")
    assert find_local(tmp_path, "mnist", "b.amat") == tmp_path / "mnist" / "b.amat.gz"


def test_missing_file_without_download_says_where_it_looked(tmp_path):
    with pytest.raises(DataError) as e:
        load_dataset(DataConfig(name="frey", root=str(tmp_path), download=False))
    msg = str(e.value)
    assert "frey_rawface.mat not found in" in msg and str(tmp_path / "frey_faces") in msg
    assert "data.root" in msg and "PYROGEN_DATA" in msg


def test_mismatched_mnist_pair_is_an_error_naming_both_files(tmp_path):
    make_mnist(tmp_path / "mnist")
    write_idx(tmp_path / "mnist" / "t10k-labels-idx1-ubyte.gz", np.zeros(19))
    with pytest.raises(DataError, match="has 20 images but .*t10k-labels.* has 19 labels"):
        load_dataset(DataConfig(name="mnist", root=str(tmp_path), download=False))


# ---------------------------------------------------------------------------- downloads
class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass

    def do_GET(self) -> None:
        if self.path.startswith("/short/"):  # announces more bytes than it sends
            self.send_response(200)
            self.send_header("Content-Length", "100000")
            self.end_headers()
            self.wfile.write(b"\0" * 1000)
            return
        self.server.requests.append(self.path)  # type: ignore[attr-defined]
        super().do_GET()


@pytest.fixture
def server(tmp_path):
    """A local HTTP server of the folder ``served``: yields (folder, base URL)."""
    served = tmp_path / "served"
    served.mkdir()
    handler = functools.partial(QuietHandler, directory=str(served))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    httpd.requests = []  # type: ignore[attr-defined]
    thread = threading.Thread(target=httpd.serve_forever, args=(0.01,), daemon=True)
    thread.start()
    yield served, f"http://127.0.0.1:{httpd.server_address[1]}", httpd.requests
    httpd.shutdown()
    httpd.server_close()
    thread.join()


def test_download_checks_md5_and_renames_atomically(server, tmp_path):
    served, base, _ = server
    (served / "f.bin").write_bytes(b"pyrogen" * 1000)
    md5 = hashlib.md5(b"pyrogen" * 1000).hexdigest()
    dest = tmp_path / "root" / "f.bin"
    assert download.download(f"{base}/f.bin", dest, md5) == dest
    assert dest.read_bytes() == b"pyrogen" * 1000 and os.listdir(dest.parent) == ["f.bin"]
    download.verify_checksum(dest, md5)
    with pytest.raises(DataError, match=f"{dest}: checksum mismatch: expected md5 0+, got {md5}"):
        download.verify_checksum(dest, "0" * 32)


def test_wrong_checksum_names_file_and_md5s_and_leaves_nothing(server, tmp_path):
    served, base, _ = server
    (served / "f.bin").write_bytes(b"corrupted")
    dest = tmp_path / "root" / "f.bin"
    with pytest.raises(DataError) as e:
        download.download(f"{base}/f.bin", dest, "f68b3c2dcbeaaa9fbdd348bbdeb94873")
    msg = str(e.value)
    assert str(dest) in msg and f"{base}/f.bin" in msg
    assert "expected md5 f68b3c2dcbeaaa9fbdd348bbdeb94873" in msg
    assert hashlib.md5(b"corrupted").hexdigest() in msg
    assert not (tmp_path / "root").exists()  # the folder made for it is gone too


def test_interrupted_download_leaves_no_partial_file(server, tmp_path):
    _, base, _ = server
    dest = tmp_path / "root" / "f.bin"
    with pytest.raises(DataError) as e:
        download.download(f"{base}/short/f.bin", dest)
    assert str(e.value) == (
        f"{base}/short/f.bin: download failed (connection closed after 1,000 of 100,000 bytes)"
    )
    assert not (tmp_path / "root").exists()
    dest.parent.mkdir()  # a folder that was there before is kept, empty
    with pytest.raises(DataError):
        download.download(f"{base}/short/f.bin", dest)
    assert os.listdir(dest.parent) == []


def test_fetch_falls_back_to_the_next_url_after_a_404(server, tmp_path, monkeypatch):
    served, base, requests = server
    make_mnist(served)
    files = {}
    for key, name in [
        ("train_images", "train-images-idx3-ubyte.gz"),
        ("train_labels", "train-labels-idx1-ubyte.gz"),
        ("test_images", "t10k-images-idx3-ubyte.gz"),
        ("test_labels", "t10k-labels-idx1-ubyte.gz"),
    ]:
        urls = (f"{base}/missing/{name}", f"{base}/{name}")
        files[key] = RemoteFile(name, urls, md5sum(served / name))
    monkeypatch.setitem(download.SOURCES, "mnist", DataSource("mnist", files))
    root = tmp_path / "root"
    ds = load_dataset(DataConfig(name="mnist", root=str(root)))
    assert ds.test.shape == (20, 784)
    assert sorted(os.listdir(root / "mnist")) == sorted(f.name for f in files.values())
    assert len(requests) == 8  # each file: a 404, then the second URL
    load_dataset(DataConfig(name="mnist", root=str(root)))
    assert len(requests) == 8  # present now: nothing downloaded again
    for f in files.values():
        assert md5sum(root / "mnist" / f.name) == f.md5


def test_failed_fetch_lists_every_url_tried(server, tmp_path, monkeypatch):
    served, base, _ = server
    (served / "frey_rawface.mat").write_bytes(b"<html>not a mat file</html>")
    urls = (f"{base}/nowhere.mat", f"{base}/frey_rawface.mat")
    source = DataSource("frey_faces", {"faces": RemoteFile("frey_rawface.mat", urls, None)})
    monkeypatch.setitem(download.SOURCES, "frey", source)
    with pytest.raises(DataError) as e:
        load_dataset(DataConfig(name="frey", root=str(tmp_path / "root")))
    msg = str(e.value)
    assert "tried 2 URL(s)" in msg and f"{urls[0]}: download failed (HTTP 404" in msg
    assert "not a readable MATLAB .mat file" in msg  # no md5 known: checked by format
    assert not (tmp_path / "root").exists()  # a refused run leaves no folders behind


def test_format_checked_download_of_a_file_without_md5(server, tmp_path):
    served, base, _ = server
    faces = rng().integers(0, 256, (30, 28, 20), dtype=np.uint8)
    scipy.io.savemat(served / "frey_rawface.mat", {"ff": faces.reshape(30, -1).T})
    source = DataSource(
        "frey_faces", {"faces": RemoteFile("frey_rawface.mat", (f"{base}/frey_rawface.mat",))}
    )
    root = tmp_path / "root"
    with pytest.MonkeyPatch.context() as mp:
        mp.setitem(download.SOURCES, "frey", source)
        path = fetch("frey", "faces", root, validate=read_frey)
        ds = load_dataset(DataConfig(name="frey", root=str(root), flatten=False))
    assert path == root / "frey_faces" / "frey_rawface.mat"
    assert [ds.split(s).shape[0] for s in ("train", "valid", "test")] == [18, 6, 6]
    x = torch.cat([ds.train, ds.valid, ds.test]).mul(255).round().to(torch.uint8)
    assert sorted(map(bytes, x.numpy())) == sorted(map(bytes, faces[:, None]))

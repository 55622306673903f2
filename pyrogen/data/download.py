"""Where the data files come from, how they are found on disk, and checked downloads.

:data:`SOURCES` is the table of every file data set: the folder its files live in under the
data root and, for each file, its canonical name, the URLs to try in order, and its md5 (or
``None`` where no checksum is known for certain: then a download is checked by format).

A file is looked for under ``root/<folder>/`` then ``root/``, as its canonical name, as that
name plus ``.gz`` (the readers gunzip transparently), or without ``.gz`` when the canonical name
has it. Files already on disk are validated by their readers' format checks (so a subset such
as a 5,000-image MNIST training file is accepted); downloads are always checked against the
md5 when one is known, and written atomically (temporary file in the same folder, checksum,
``os.replace``), so an interrupted or wrong download never leaves a file behind.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import sys
import tempfile
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from pyrogen.data.errors import DataError

READ_BYTES = 1 << 20  # bytes read at a time from a download or a file being hashed
TIMEOUT_S = 60.0


@dataclass(frozen=True)
class RemoteFile:
    """One file of a data set: canonical name, URLs tried in order, md5 (``None``: unknown)."""

    name: str
    urls: tuple[str, ...]
    md5: str | None = None
    size: int | None = None  # bytes, where known; informative only


@dataclass(frozen=True)
class DataSource:
    """The files of one data set and the folder (under the data root) they live in."""

    folder: str
    files: dict[str, RemoteFile]


def _mnist(name: str, md5: str, size: int) -> RemoteFile:
    return RemoteFile(
        name,
        (
            f"https://ossci-datasets.s3.amazonaws.com/mnist/{name}",
            f"http://yann.lecun.com/exdb/mnist/{name}",
        ),
        md5,
        size,
    )


def _binarized_mnist(split: str) -> RemoteFile:
    name = f"binarized_mnist_{split}.amat"
    url = f"http://www.cs.toronto.edu/~larocheh/public/datasets/binarized_mnist/{name}"
    return RemoteFile(name, (url,), None)  # no md5 known for certain: format-checked


# md5s of MNIST: the canonical files (as torchvision lists them); the two t10k files are
# byte-identical to the copies in the project's shared data. Sizes from yann.lecun.com.
SOURCES: dict[str, DataSource] = {
    "mnist": DataSource(
        "mnist",
        {
            "train_images": _mnist(
                "train-images-idx3-ubyte.gz", "f68b3c2dcbeaaa9fbdd348bbdeb94873", 9912422
            ),
            "train_labels": _mnist(
                "train-labels-idx1-ubyte.gz", "d53e105ee54ea40749a09fcbcd1e9432", 28881
            ),
            "test_images": _mnist(
                "t10k-images-idx3-ubyte.gz", "9fb629c4189551a2d022fa330f9573f3", 1648877
            ),
            "test_labels": _mnist(
                "t10k-labels-idx1-ubyte.gz", "ec29112dd5afa0611ce80d1b7f02629c", 4542
            ),
        },
    ),
    "binarized_mnist": DataSource(
        "binarized_mnist",
        {split: _binarized_mnist(split) for split in ("train", "valid", "test")},
    ),
    "frey": DataSource(
        "frey_faces",
        {
            # no md5 known for the file as served: format-checked (ff is 560 x N uint8)
            "faces": RemoteFile(
                "frey_rawface.mat", ("https://cs.nyu.edu/~roweis/data/frey_rawface.mat",)
            ),
        },
    ),
}


# -------------------------------------------------------------------- checksums
def md5sum(path: str | Path) -> str:
    """The hex md5 digest of a file's bytes (as stored, gzipped or not)."""
    h = hashlib.md5()
    with open(path, "rb") as f:
        while chunk := f.read(READ_BYTES):
            h.update(chunk)
    return h.hexdigest()


def verify_checksum(path: str | Path, md5: str) -> None:
    """Raise :class:`DataError` unless the file's md5 is ``md5``."""
    actual = md5sum(path)
    if actual != md5.lower():
        raise DataError(f"{path}: checksum mismatch: expected md5 {md5}, got {actual}")


# -------------------------------------------------------------------- finding files
def candidate_names(name: str) -> list[str]:
    """``name``, then ``name.gz`` (or ``name`` without ``.gz`` when it ends in ``.gz``)."""
    return [name, name[:-3] if name.endswith(".gz") else name + ".gz"]


def search_folders(root: Path, folder: str) -> list[Path]:
    """The folders searched for a data set's files: ``root/folder`` then ``root``."""
    return [root / folder, root]


def find_local(root: str | Path, folder: str, name: str) -> Path | None:
    """The first existing file among :func:`candidate_names` in :func:`search_folders`."""
    for directory in search_folders(Path(root), folder):
        for candidate in candidate_names(name):
            path = directory / candidate
            if path.is_file():
                return path
            if path.is_dir():
                raise DataError(f"{path} is a folder; expected the data file {name} there")
    return None


# -------------------------------------------------------------------- downloads
def download(
    url: str,
    dest: str | Path,
    md5: str | None = None,
    validate: Callable[[Path], object] | None = None,
    timeout: float = TIMEOUT_S,
) -> Path:
    """Download ``url`` to ``dest`` atomically and return ``dest``.

    The bytes stream to a temporary file in ``dest``'s folder while their md5 is computed;
    when ``md5`` is given it must match, and ``validate(tmp_path)`` (a reader's format check)
    must not raise; only then is the file renamed to ``dest`` with ``os.replace``. On any
    failure the temporary file and the folders made for it are deleted (a folder that
    existed before is kept) and :class:`DataError` names the URL and the file.
    """
    dest = Path(dest)
    made = _missing_folders(dest.parent)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent)
    tmp = Path(tmp_name)
    try:
        h = hashlib.md5()
        request = urllib.request.Request(url, headers={"User-Agent": "pyrogen"})
        with os.fdopen(fd, "wb") as out:
            try:
                with urllib.request.urlopen(request, timeout=timeout) as response:
                    announced = response.headers.get("Content-Length")
                    received = 0
                    while chunk := response.read(READ_BYTES):
                        out.write(chunk)
                        h.update(chunk)
                        received += len(chunk)
            except (urllib.error.URLError, http.client.HTTPException, OSError, ValueError) as e:
                if isinstance(e, urllib.error.HTTPError):
                    reason = f"HTTP {e.code} {e.reason}"
                else:
                    reason = getattr(e, "reason", None) or repr(e)
                raise DataError(f"{url}: download failed ({reason})") from None
        # http.client returns a short body silently when the connection drops
        if announced is not None and announced.isdigit() and received != int(announced):
            raise DataError(
                f"{url}: download failed (connection closed after {received:,} of "
                f"{int(announced):,} bytes)"
            )
        actual = h.hexdigest()
        if md5 is not None and actual != md5.lower():
            raise DataError(
                f"{dest}: checksum mismatch for the download from {url}: expected md5 {md5}, "
                f"got {actual}; the downloaded data was deleted"
            )
        if validate is not None:
            try:
                validate(tmp)
            except DataError as e:
                raise DataError(
                    f"{dest}: the download from {url} is not valid ({e}); it was deleted"
                ) from None
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)
        if not dest.exists():
            _remove_empty(made)
    return dest


def _missing_folders(folder: Path) -> list[Path]:
    """The folders ``folder.mkdir(parents=True)`` would make, deepest first."""
    missing = []
    while not folder.exists() and folder.parent != folder:
        missing.append(folder)
        folder = folder.parent
    return missing


def _remove_empty(folders: list[Path]) -> None:
    """Remove ``folders`` (deepest first) while they are empty: a refused download leaves no
    trace, and a folder something else wrote into meanwhile is kept."""
    for folder in folders:
        try:
            folder.rmdir()
        except OSError:
            return


def fetch(
    dataset: str,
    key: str,
    root: str | Path,
    allow_download: bool = True,
    validate: Callable[[Path], object] | None = None,
) -> Path:
    """The local path of file ``key`` of ``dataset`` (see :data:`SOURCES`), downloading it
    into ``root/<folder>/`` from its URLs in order when it is missing and allowed to."""
    source = SOURCES[dataset]
    remote = source.files[key]
    root = Path(root)
    found = find_local(root, source.folder, remote.name)
    if found is not None:
        return found
    folders = " or ".join(str(d) for d in search_folders(root, source.folder))
    if not allow_download:
        raise DataError(
            f"{dataset}: file {remote.name} not found in {folders} and data.download is false; "
            "put the file there, set data.root (or $PYROGEN_DATA) to the folder that holds it, "
            "or set data.download=true"
        )
    dest = root / source.folder / remote.name
    failures = []
    for url in remote.urls:
        print(f"pyrogen: downloading {url} to {dest}", file=sys.stderr)
        try:
            return download(url, dest, remote.md5, validate=None if remote.md5 else validate)
        except DataError as e:
            failures.append(str(e))
    raise DataError(
        f"{dataset}: could not download {remote.name} (tried {len(failures)} URL(s): "
        + "; ".join(failures)
        + f"); download it by hand into {root / source.folder}"
    )

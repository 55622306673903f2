"""Readers of the file formats of the image data sets, with format checks.

Every reader opens a file gzipped or plain alike (gzip is recognised by its magic bytes
``1f 8b``, not by the file name) and checks the format before trusting it, so a truncated or
corrupt file raises :class:`~pyrogen.data.DataError` naming the file and what was expected.

* :func:`read_idx`: LeCun's IDX format (MNIST): a big-endian header ``0 0 type ndim``, then
  ``ndim`` 32-bit dimensions, then the items.
* :func:`read_amat`: the ``.amat`` text of Larochelle's binarized MNIST: one example per line,
  784 space-separated ``0``/``1`` values.
* :func:`read_frey`: Roweis's ``frey_rawface.mat``: variable ``ff`` of shape 560 x N, uint8,
  each column one 28 x 20 face stored row by row.
"""

from __future__ import annotations

import gzip
import io
import math
import zlib
from pathlib import Path

import numpy as np

from pyrogen.data.errors import DataError

GZIP_MAGIC = b"\x1f\x8b"

# IDX type byte -> (numpy big-endian dtype, name)
IDX_TYPES = {
    0x08: (">u1", "unsigned byte"),
    0x09: (">i1", "signed byte"),
    0x0B: (">i2", "short"),
    0x0C: (">i4", "int"),
    0x0D: (">f4", "float"),
    0x0E: (">f8", "double"),
}


def read_bytes(path: str | Path) -> bytes:
    """The content of ``path``, gunzipped when it starts with the gzip magic bytes."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise DataError(f"{path}: cannot read file ({e.strerror or e})") from None
    if raw[:2] != GZIP_MAGIC:
        return raw
    try:
        return gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as e:
        raise DataError(f"{path}: corrupt or truncated gzip data ({e})") from None


def _plural(n: int, what: str) -> str:
    return f"{n:,} {what}" if n == 1 else f"{n:,} {what}s"


def read_idx(path: str | Path, ndim: int | None = None) -> np.ndarray:
    """Read an IDX file (gzipped or not) into a native-endian array of the header's shape.

    ``ndim``, when given, is the number of dimensions expected (3 for images, 1 for labels).
    The header must announce exactly as many bytes as follow it.
    """
    path = Path(path)
    data = read_bytes(path)
    if len(data) < 4:
        raise DataError(f"{path}: not an IDX file: {len(data)} bytes, shorter than the header")
    if data[0] != 0 or data[1] != 0 or data[2] not in IDX_TYPES:
        raise DataError(
            f"{path}: not an IDX file: magic number {data[:4].hex()} is not 0000TTNN "
            f"(TT a type code in {', '.join(f'{t:02x}' for t in IDX_TYPES)})"
        )
    dtype, type_name = IDX_TYPES[data[2]]
    nd = data[3]
    if ndim is not None and nd != ndim:
        raise DataError(f"{path}: IDX file has {nd} dimensions; expected {ndim}")
    header = 4 + 4 * nd
    if len(data) < header:
        raise DataError(
            f"{path}: truncated IDX header: {nd} dimensions need {header} bytes, "
            f"the file has {len(data)}"
        )
    dims = tuple(int(d) for d in np.frombuffer(data, ">u4", count=nd, offset=4))
    itemsize = np.dtype(dtype).itemsize
    expected = math.prod(dims) * itemsize  # Python integers: no overflow whatever the header
    body = len(data) - header
    if body != expected:
        what = _describe(dims, type_name)
        problem = "but only" if body < expected else "but"
        kind = "truncated IDX file" if body < expected else "IDX file has trailing data"
        raise DataError(
            f"{path}: {kind}: header says {what} ({expected:,} bytes) {problem} "
            f"{body:,} bytes follow"
        )
    return np.frombuffer(data, dtype, offset=header).reshape(dims).astype(dtype[1:])


def _describe(dims: tuple[int, ...], type_name: str) -> str:
    if len(dims) == 3:
        return f"{_plural(dims[0], 'image')} of {dims[1]}x{dims[2]}"
    if len(dims) == 1:
        return f"{_plural(dims[0], 'item')} ({type_name})"
    return f"an array of shape {'x'.join(map(str, dims))} ({type_name})"


def write_idx(path: str | Path, array: np.ndarray, compress: bool | None = None) -> None:
    """Write ``array`` (uint8) as an IDX file; gzipped when ``compress`` or the name ends in
    ``.gz``. The inverse of :func:`read_idx`, for tests and for making small data files."""
    path = Path(path)
    a = np.ascontiguousarray(array, dtype=np.uint8)
    header = bytes([0, 0, 0x08, a.ndim]) + np.asarray(a.shape, ">u4").tobytes()
    payload = header + a.tobytes()
    if compress if compress is not None else path.suffix == ".gz":
        payload = gzip.compress(payload)
    path.write_bytes(payload)


_NOT_SPACE = np.ones(256, dtype=bool)  # lookup table: byte -> "is not ASCII whitespace"
_NOT_SPACE[list(b" \t\r\n\f\v")] = False


def read_amat(path: str | Path, width: int = 784) -> np.ndarray:
    """Read an ``.amat`` file of binary examples into a uint8 array of shape ``(N, width)``.

    Each non-blank line must hold exactly ``width`` whitespace-separated values, each the
    single character ``0`` or ``1``. Files in the canonical layout (one space between values,
    ``\\n`` line ends) take a fast path; any other layout goes through a general vectorised
    parser that also names the first bad line.
    """
    path = Path(path)
    buf = np.frombuffer(read_bytes(path), np.uint8)
    if buf.size == 0:
        raise DataError(f"{path}: empty .amat file; expected lines of {width} values 0/1")
    fast = _read_canonical_amat(buf, width)
    if fast is not None:
        return fast
    is_token = _NOT_SPACE[buf]
    bad = np.flatnonzero(is_token & (buf != ord("0")) & (buf != ord("1")))
    newlines = np.flatnonzero(buf == ord("\n"))
    line_starts = np.concatenate([[0], newlines + 1])
    line_starts = line_starts[line_starts < buf.size]
    if bad.size:
        line = int(np.searchsorted(line_starts, bad[0], side="right"))
        char = bytes(buf[bad[0] : bad[0] + 1]).decode("latin-1")
        raise DataError(f"{path}: line {line}: value {char!r} is not 0 or 1 (.amat of 0/1)")
    token_start = is_token.copy()
    token_start[1:] &= ~is_token[:-1]
    tokens = np.add.reduceat(token_start.view(np.uint8), line_starts, dtype=np.int64)
    chars = np.add.reduceat(is_token.view(np.uint8), line_starts, dtype=np.int64)
    nonblank = tokens > 0
    wrong = np.flatnonzero(nonblank & ((tokens != width) | (chars != width)))
    if wrong.size:
        i = int(wrong[0])
        found = (
            f"{tokens[i]} values" if chars[i] == tokens[i] else "values longer than one character"
        )
        raise DataError(f"{path}: line {i + 1}: expected {width} values 0/1, found {found}")
    rows = int(nonblank.sum())
    if rows == 0:
        raise DataError(f"{path}: no examples (only blank lines); expected lines of {width} 0/1")
    return (buf[is_token] - ord("0")).reshape(rows, width)


def _read_canonical_amat(buf: np.ndarray, width: int) -> np.ndarray | None:
    """Fast path for the canonical layout ``"v v ... v\\n"`` (``2 width`` bytes a line): the
    values, or ``None`` when the layout differs (then the general parser checks and reports)."""
    line = 2 * width
    if buf.size % line:
        return None
    m = buf.reshape(-1, line)
    values = m[:, 0::2]
    if not (
        (m[:, -1] == ord("\n")).all()
        and (m[:, 1:-1:2] == ord(" ")).all()
        and ((values | 1) == ord("1")).all()  # b | 1 == '1' only for b in {'0', '1'}
    ):
        return None
    return values - ord("0")


FREY_HEIGHT, FREY_WIDTH = 28, 20


def read_frey(path: str | Path) -> np.ndarray:
    """Read ``frey_rawface.mat`` (gzipped or not) into uint8 faces of shape ``(N, 28, 20)``.

    The variable ``ff`` is 560 x N; column ``j`` is face ``j`` row by row, so the faces are
    ``ff.T.reshape(N, 28, 20)``.
    """
    from scipy.io import loadmat
    from scipy.io.matlab import MatReadError

    path = Path(path)
    data = read_bytes(path)
    try:
        mat = loadmat(io.BytesIO(data), variable_names=None)
    except Exception as e:  # scipy raises many kinds of error on damaged input
        detail = f"{type(e).__name__}: {e}" if not isinstance(e, MatReadError) else str(e)
        raise DataError(f"{path}: not a readable MATLAB .mat file ({detail})") from None
    if "ff" not in mat:
        found = ", ".join(k for k in mat if not k.startswith("__")) or "none"
        raise DataError(f"{path}: no variable 'ff' (found: {found}); expected Frey Face data")
    ff = mat["ff"]
    size = FREY_HEIGHT * FREY_WIDTH
    if ff.ndim != 2 or ff.shape[0] != size or ff.dtype != np.uint8:
        raise DataError(
            f"{path}: variable 'ff' is {ff.dtype} of shape {'x'.join(map(str, ff.shape))}; "
            f"expected uint8 of shape {size} x N (N faces of {FREY_HEIGHT}x{FREY_WIDTH})"
        )
    return np.ascontiguousarray(ff.T.reshape(-1, FREY_HEIGHT, FREY_WIDTH))

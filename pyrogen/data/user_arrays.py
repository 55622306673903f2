"""A user's own data: array files, folders of images and in-memory arrays, checked and split.

Files (:func:`read_array_file`, chosen by extension, any case):

* ``.npy``: one array (read with ``allow_pickle=False``).
* ``.npz`` (``allow_pickle=False``) and ``.pt`` (``torch.load(weights_only=True)``, so a file
  holding anything but tensors is refused without running its code): a tensor (``.pt``), or
  arrays under the keys ``train`` (required), ``valid``, ``test`` and ``<split>_labels``; or
  ``data`` with optional ``labels``; or exactly one array under any name.
* ``.csv``: numbers separated by ``,`` (or ``;`` / tab when the first row holds one), spaces
  around cells allowed, blank lines skipped, and at most one header row: a first row whose
  cells are not all numbers. The result is float64 ``(N, D)``.

Folders (:func:`read_image_folder`): every ``.png``/``.jpg``/``.jpeg`` under the folder (hidden
files and folders skipped) in order of relative path, as uint8 ``(N, C, H, W)``; class labels
when the images sit in one sub-folder per class.

:func:`user_splits` turns arrays into :class:`~pyrogen.data.dataset.RawSplits`. Layouts: ``(N,)``
and ``(N, D)`` are points; ``(N, H, W)``, ``(N, C, H, W)`` and ``(N, H, W, C)`` with ``C`` in
{1, 3} are images. Integer images are intensities ``0..L-1`` scaled to ``x / (L - 1)``; float
images must already lie in ``[0, 1]``; bool images are float 0/1 on ``L = 2`` levels. Missing
``valid``/``test`` splits are carved out of ``train`` by a seeded random permutation.

:func:`array_checksum` and :func:`file_checksum` record where a run's data came from.
"""

from __future__ import annotations

import hashlib
import pickle
import re
import zipfile
import zlib
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch

from pyrogen.data.errors import DataError
from pyrogen.data.raw import RawSplits

ArrayLike = np.ndarray | torch.Tensor | Sequence

ARRAY_EXTENSIONS = (".npy", ".npz", ".csv", ".pt")
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg")
SPLITS = ("train", "valid", "test")
LABEL_KEYS = tuple(f"{s}_labels" for s in SPLITS)
CONTEXT_KEYS = tuple(f"{s}_context" for s in SPLITS)
MAX_QUOTE = 200  # characters of a library's error message quoted in a DataError
CHECKSUM_READ_BYTES = 1 << 20  # bytes read at a time by file_checksum
_GRAY_MODES = {"1", "L", "LA", "La", "I", "I;16", "I;16B", "I;16L", "I;16N", "F"}
_NUMBER = re.compile(r"[+-]?((\d+\.?\d*|\.\d+)([eE][+-]?\d+)?|nan|inf|infinity)", re.IGNORECASE)
_ACCEPTED_KEYS = (
    "'train' with optional 'valid', 'test', '<split>_labels' and '<split>_context'; or 'data' "
    "with optional 'labels' or 'context'; or a single array under any name"
)


def _quote(e: BaseException | str) -> str:
    """A library's error message on one line, at most :data:`MAX_QUOTE` characters."""
    text = " ".join(str(e).split()) or type(e).__name__
    return text if len(text) <= MAX_QUOTE else text[: MAX_QUOTE - 3] + "..."


# -------------------------------------------------------------------- array files
def read_array_file(path: str | Path, context: Sequence[str] = ()) -> dict[str, np.ndarray]:
    """Read a ``.npy``, ``.npz``, ``.csv`` or ``.pt`` file (see the module docstring).

    Returns ``{"data": array}`` for a single array (with ``"labels"`` when the file has them),
    else the split dict ``{"train": ..., "valid": ..., "test": ..., "train_labels": ...}``
    holding only the keys present. ``context`` (``data.context``): the CSV columns (by their
    header names) or ``.npz``/``.pt`` arrays that hold a continuous context c, returned under
    ``"context"`` (or ``"<split>_context"``) and no longer part of x. Raises
    :class:`DataError` naming the file when it is missing, a folder, empty, of an unknown
    type, corrupt or of an unaccepted layout, or names a context it does not have.
    """
    path, suffix = Path(path), Path(path).suffix.lower()
    if not path.is_file():
        problem = "is a folder (for images use data.name=image_folder)" if path.is_dir() else ""
        raise DataError(f"{path}: {problem or 'no such file'}")
    if suffix not in ARRAY_EXTENSIONS:
        raise DataError(
            f"{path}: unknown file type {suffix or '(no extension)'!r}; "
            f"expected one of {', '.join(ARRAY_EXTENSIONS)}"
        )
    try:
        empty = path.stat().st_size == 0
    except OSError as e:
        raise DataError(f"{path}: cannot read file ({e.strerror or e})") from None
    if empty:
        raise DataError(f"{path}: empty file; expected a {suffix} file of numbers")
    read = {".npy": _read_npy, ".npz": _read_npz, ".csv": _read_csv, ".pt": _read_pt}[suffix]
    arrays = read(path)
    header = arrays.pop("columns", None)
    if context and (suffix == ".npy" or (suffix == ".csv" and header is None)):
        raise DataError(
            f"{path}: data.context names columns, but the file has no column names (a .npy "
            "file or a CSV without a header row); use a CSV with a header, or a .npz"
        )
    if context:
        cols = None if header is None else [str(c) for c in header]
        arrays = _context_columns(arrays, list(context), cols, str(path))
    return _keys_form(arrays, str(path))


def _read_npy(path: Path) -> dict[str, np.ndarray]:
    try:
        with open(path, "rb") as f:
            return {"data": np.lib.format.read_array(f, allow_pickle=False)}
    except (ValueError, OSError, EOFError) as e:
        raise DataError(f"{path}: not a readable .npy file ({_quote(e)})") from None


def _read_npz(path: Path) -> dict[str, np.ndarray]:
    try:
        npz = np.load(path, allow_pickle=False)
        if not isinstance(npz, np.lib.npyio.NpzFile):
            raise ValueError("not a zip archive of .npy files")
        with npz:
            arrays = {k: npz[k] for k in npz.files}
    except (zipfile.BadZipFile, zlib.error, ValueError, OSError, EOFError, KeyError) as e:
        raise DataError(f"{path}: not a readable .npz file ({_quote(e)})") from None
    return arrays


def _read_pt(path: Path) -> dict[str, np.ndarray]:
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, OSError) as e:
        detail = _torch_detail(e)
        if detail.startswith("Unsupported global"):
            raise DataError(
                f"{path}: refused: it holds objects other than tensors ({detail}); "
                "save a tensor or a dict of tensors with torch.save"
            ) from None
        raise DataError(f"{path}: not a readable .pt file ({detail})") from None
    if isinstance(obj, torch.Tensor):
        return {"data": _to_numpy(obj, str(path))}
    if not isinstance(obj, dict):
        raise DataError(f"{path}: holds a {type(obj).__name__}; expected a tensor or a dict")
    bad = [f"{k!r} ({type(v).__name__})" for k, v in obj.items() if not torch.is_tensor(v)]
    if bad:
        raise DataError(f"{path}: not tensors: {', '.join(bad)}; expected a dict of tensors")
    return {k: _to_numpy(v, str(path)) for k, v in obj.items()}


def _torch_detail(e: BaseException) -> str:
    """The useful part of torch.load's message, without its advice to disable weights_only."""
    text = str(e)
    if "WeightsUnpickler error:" in text:
        text = text.split("WeightsUnpickler error:", 1)[1].split("Check the documentation")[0]
        text = re.split(r"\.\s", text.strip(), maxsplit=1)[0]
    return type(e).__name__ if "weights_only" in text else _quote(text)


def _is_number(cell: str) -> bool:
    return _NUMBER.fullmatch(cell.strip()) is not None


def _read_csv(path: Path) -> dict[str, np.ndarray]:
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except OSError as e:
        raise DataError(f"{path}: cannot read file ({e.strerror or e})") from None
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not a UTF-8 text file ({_quote(e)})") from None
    rows = [(i, line) for i, line in enumerate(text.splitlines(), 1) if line.strip()]
    if not rows:
        raise DataError(f"{path}: no rows; expected comma-separated numbers")
    first = rows[0][1]
    delim = ";" if ";" in first else "\t" if "\t" in first else ","
    width = len(first.split(delim))
    header = not all(_is_number(c) for c in first.split(delim))
    data = rows[1:] if header else rows
    columns = {"columns": np.array([c.strip() for c in first.split(delim)])} if header else {}
    if not data:
        raise DataError(f"{path}: a header row and no data; expected rows of numbers")
    try:  # fast path; the loop below names the first bad cell when it fails
        out = np.loadtxt([line for _, line in data], delimiter=delim, comments=None, ndmin=2)
        if out.shape[1] == width:
            return {"data": out, **columns}
    except ValueError:
        pass
    values = []
    for lineno, line in data:
        cells = line.split(delim)
        if len(cells) != width:
            raise DataError(
                f"{path}: line {lineno} has {len(cells)} columns; expected {width} "
                f"(as on line {rows[0][0]})"
            )
        for col, cell in enumerate(cells, 1):
            if not _is_number(cell):
                shown = repr(cell.strip()[:40]) if cell.strip() else "an empty cell"
                raise DataError(f"{path}: line {lineno}, column {col}: {shown} is not a number")
        values.append([float(c) for c in cells])
    return {"data": np.array(values, dtype=np.float64), **columns}


def _keys_form(arrays: Mapping, where: str) -> dict:
    """``arrays`` in one of the accepted key layouts (a single array becomes ``"data"``)."""
    keys = list(arrays)
    found = ", ".join(repr(k) for k in keys) or "none"
    per_split = (*SPLITS, *LABEL_KEYS, *CONTEXT_KEYS)
    if any(k in per_split for k in keys):
        if "train" in arrays and all(k in per_split for k in keys):
            for s in SPLITS:
                for extra in (f"{s}_labels", f"{s}_context"):
                    if extra in arrays and s not in arrays:
                        raise DataError(f"{where}: has '{extra}' but no '{s}'")
            return dict(arrays)
    elif "data" in arrays and set(keys) <= {"data", "labels", "classes", "context"}:
        return dict(arrays)
    elif len(keys) == 1:
        return {"data": arrays[keys[0]]}
    raise DataError(f"{where}: unexpected keys (found {found}); expected {_ACCEPTED_KEYS}")


def _context_columns(
    arrays: dict[str, np.ndarray], names: Sequence[str], header: list[str] | None, where: str
) -> dict[str, np.ndarray]:
    """Move the columns (CSV header names) or arrays (``.npz``/``.pt`` keys ``name`` or
    ``<split>_name``) that ``data.context`` names out of the data into ``context`` keys: the
    continuous context c, one column per name (an array of shape ``(N, k)`` gives k)."""
    if header is not None:
        unknown = [n for n in names if n not in header]
        if unknown:
            raise DataError(
                f"{where}: data.context names column {unknown[0]!r}, which the header does not "
                f"have (columns: {', '.join(header)})"
            )
        idx = [header.index(n) for n in names]
        rest = [i for i in range(len(header)) if i not in idx]
        if not rest:
            raise DataError(f"{where}: data.context takes every column; none is left for x")
        data = arrays["data"]
        return {"data": data[:, rest], "context": data[:, idx]}
    parts: dict[str, list[np.ndarray]] = {}
    out = dict(arrays)
    for name in names:
        hits = [k for k in (name, *(f"{s}_{name}" for s in SPLITS)) if k in out]
        if not hits:
            raise DataError(
                f"{where}: data.context names {name!r}, but the file has no array {name!r} or "
                f"'<split>_{name}' (arrays: {', '.join(map(repr, arrays))})"
            )
        for k in hits:
            split = "data" if k == name else k.split("_", 1)[0]
            a = np.asarray(out.pop(k))
            parts.setdefault(split, []).append(a.reshape(a.shape[0], -1) if a.ndim else a)
    for split, cols in parts.items():
        key = "context" if split == "data" else f"{split}_context"
        try:
            out[key] = np.concatenate(cols, axis=1) if len(cols) > 1 else cols[0]
        except ValueError:
            raise DataError(f"{where}: the data.context arrays have different lengths") from None
    rest = [k for k in out if k not in ("context", *CONTEXT_KEYS)]
    if len(rest) == 1 and rest[0] not in ("data", "train"):
        out["data"] = out.pop(rest[0])  # the one array left is x, under any name
    return out


# -------------------------------------------------------------------- image folders
def read_image_folder(
    path: str | Path, image_size: tuple[int, int] | None = None
) -> dict[str, np.ndarray]:
    """Every PNG/JPEG image under ``path`` as ``{"data": uint8 (N, C, H, W)}``.

    Files are found recursively (extensions any case; names starting with ``.`` skipped) and
    sorted by relative path (as strings: ``10.png`` before ``2.png``). When the folder holds no
    image itself and every sub-folder holds images, the sub-folders are classes: the dict then
    also has ``"labels"`` (int64 ``(N,)``, the index of the image's top sub-folder) and
    ``"classes"`` (a numpy ``str`` array of the sorted sub-folder names). If every image is
    grayscale (modes 1, L, LA; 16-bit scaled by ``1/257``) ``C = 1``, else all are converted to
    RGB (alpha dropped, no EXIF rotation) and ``C = 3``. Images must share one size unless
    ``image_size=(H, W)`` is given: then each is resized to it with Pillow's bilinear filter
    (which averages over the source pixels when shrinking).
    """
    from PIL import Image

    path = Path(path)
    if not path.is_dir():
        problem = "not a folder" if path.exists() else "no such folder"
        raise DataError(f"{path}: {problem}; expected a folder of .png/.jpg/.jpeg images")
    size = None
    if image_size is not None:
        if len(image_size) != 2 or not all(_is_int(s) and s >= 1 for s in image_size):
            raise DataError(f"bad value for 'data.image_size': {image_size!r}; expected [H, W]")
        size = (int(image_size[0]), int(image_size[1]))
    rels = ((p.relative_to(path), p) for p in path.rglob("*"))
    files = sorted(
        (r.as_posix(), p)
        for r, p in rels
        if r.suffix.lower() in IMAGE_EXTENSIONS
        and not any(part.startswith(".") for part in r.parts)
        and p.is_file()
    )
    if not files:
        raise DataError(
            f"{path}: no images found; expected files ending in {', '.join(IMAGE_EXTENSIONS)} "
            "(any case) in the folder or its sub-folders"
        )
    tops = sorted(p.name for p in path.iterdir() if p.is_dir() and not p.name.startswith("."))
    with_images = {rel.split("/", 1)[0] for rel, _ in files if "/" in rel}
    by_class = all("/" in rel for rel, _ in files) and set(tops) == with_images
    classes = tops if by_class else None
    images, first = [], None
    for _, file in files:
        try:
            with Image.open(file) as im:
                im.load()
                im = _to_8bit(im)
        except (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError) as e:
            raise DataError(f"{file}: unreadable image ({_quote(e)})") from None
        hw = (im.height, im.width)
        if size is not None and hw != size:
            im = im.resize((size[1], size[0]), Image.Resampling.BILINEAR)
        elif size is None and first is not None and hw != first[1]:
            raise DataError(
                f"{path}: images differ in size: {first[0]} is {first[1][0]}x{first[1][1]} but "
                f"{file} is {hw[0]}x{hw[1]} (height x width); pass data.image_size=[H, W] to "
                "resize them all"
            )
        first = first or (file, hw)
        images.append(np.asarray(im))
    if any(a.ndim == 3 for a in images):  # colour: grays become R = G = B, as Pillow's L -> RGB
        data = np.stack([a if a.ndim == 3 else np.repeat(a[..., None], 3, -1) for a in images])
        data = np.ascontiguousarray(data.transpose(0, 3, 1, 2))
    else:
        data = np.stack(images)[:, None]
    out = {"data": data}
    if classes is not None:
        index = {c: i for i, c in enumerate(classes)}
        out["labels"] = np.array([index[rel.split("/", 1)[0]] for rel, _ in files], np.int64)
        out["classes"] = np.array(classes, dtype=str)
    return out


def _to_8bit(im):
    """A Pillow image as mode ``L`` (grayscale) or ``RGB``, 8 bits a channel."""
    from PIL import Image

    if im.mode.startswith("I"):  # 16-bit grayscale: 0..65535 -> 0..255
        a = np.asarray(im, dtype=np.float64) / 257.0
        return Image.fromarray(np.clip(np.rint(a), 0, 255).astype(np.uint8), "L")
    return im.convert("L" if im.mode in _GRAY_MODES else "RGB")


# -------------------------------------------------------------------- splits
def user_splits(
    arrays: ArrayLike | dict[str, ArrayLike],
    *,
    valid_fraction: float,
    test_fraction: float,
    seed: int,
    levels: int | None = None,
    source: str = "array",
) -> RawSplits:
    """Check a user's arrays and turn them into :class:`~pyrogen.data.dataset.RawSplits`.

    ``arrays`` is one array (numpy, torch or nested sequence) or a dict in a layout that
    :func:`read_array_file` accepts, or what :func:`read_image_folder` returns. Given splits
    are used as they are; a missing ``valid``/``test`` split is carved out of ``train`` (or of
    the single array) by ``torch.randperm(n)`` from a generator seeded with ``seed``:
    ``max(1, round(n * fraction))`` examples each, valid first, the rest stay for training.
    The results are float32 CPU copies (labels int64), images ``(N, C, H, W)`` and points
    ``(N, D)``, with ``num_classes`` (largest label + 1, or the number of classes) and
    ``levels`` (images: ``levels``, default 256 for integers up to 255 and 2 for bool; None
    for points). NaN and infinite values are counted after the cast to float32. Every refusal
    is a :class:`DataError` whose message starts with ``source``.
    """
    for key, f in (("valid_fraction", valid_fraction), ("test_fraction", test_fraction)):
        if isinstance(f, bool) or not isinstance(f, (int, float, np.number)) or not 0 <= f < 1:
            raise DataError(f"bad value for 'data.{key}': {f!r}; expected a number in [0, 1)")
    if valid_fraction + test_fraction >= 1:
        raise DataError(
            f"data.valid_fraction + data.test_fraction = {valid_fraction + test_fraction:g}; "
            "expected < 1, so that some data remain for training"
        )
    if levels is not None and not (_is_int(levels) and levels >= 2):
        raise DataError(f"bad value for 'data.levels': {levels!r}; expected an integer >= 2")
    d = _keys_form(arrays, source) if isinstance(arrays, Mapping) else {"data": arrays}
    classes = d.pop("classes", None)
    names = {s: f"the {s} split" for s in SPLITS}
    if "data" in d:
        d["train"] = d.pop("data")
        names["train"] = "the data"
        for extra in ("labels", "context"):
            if extra in d:
                d[f"train_{extra}"] = d.pop(extra)
    xs = {s: _examples(d[s], f"{source}: {names[s]}") for s in SPLITS if s in d}
    ys = {
        s: _labels(d[f"{s}_labels"], f"{source}: {names[s]}", len(xs[s]))
        for s in SPLITS
        if f"{s}_labels" in d
    }
    cs = {
        s: _context(d[f"{s}_context"], f"{source}: {names[s]}", len(xs[s]))
        for s in SPLITS
        if f"{s}_context" in d
    }
    if ys and cs:
        raise DataError(
            f"{source}: has both class labels and a context; give one (the labels, or the "
            "continuous context c)"
        )
    what = "labels are" if ys else "the context is"
    ys = ys or cs
    if ys and set(ys) != set(xs):
        missing = ", ".join(s for s in xs if s not in ys)
        raise DataError(f"{source}: {what} missing for {missing}; give it for all or none")
    widths = {tuple(c.shape[1:]) for c in cs.values()}
    if len(widths) > 1:
        raise DataError(
            f"{source}: the splits' contexts have different widths {sorted(widths)}; "
            "every split needs the same context columns"
        )
    shape = xs["train"].shape[1:]
    for s, x in xs.items():
        if x.shape[1:] != shape:
            raise DataError(
                f"{source}: examples of {names[s]} have shape {tuple(x.shape[1:])} but those of "
                f"{names['train']} {tuple(shape)}; every split needs the same shape"
            )
    n, counts = xs["train"].shape[0], {}
    for s, frac in (("valid", valid_fraction), ("test", test_fraction)):
        if s in xs:
            continue
        if frac == 0:
            raise DataError(
                f"{source}: no {s} split given and data.{s}_fraction=0; pyrogen evaluates on "
                f"non-empty valid and test splits: set data.{s}_fraction > 0 or give a {s} split"
            )
        counts[s] = max(1, round(n * frac))
    if n - sum(counts.values()) < 1:
        raise DataError(
            f"{source}: cannot carve {' and '.join(counts)} out of {n} examples with "
            f"data.valid_fraction={valid_fraction:g}, data.test_fraction={test_fraction:g}; "
            "at least one example must remain in each split"
        )
    kind, tensors, levels = _values(xs, source, names, levels)
    if counts:
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
        parts = perm.split([*counts.values(), n - sum(counts.values())])
        x, y = tensors["train"], ys.get("train")
        for s, idx in zip([*counts, "train"], parts, strict=True):
            tensors[s] = x[idx]
            if y is not None:
                ys[s] = y[idx]
    num_classes = None
    context_dim = int(next(iter(cs.values())).shape[1]) if cs else None
    if ys and not cs:
        top = max(int(y.max()) for y in ys.values())
        num_classes = top + 1 if classes is None else len(classes)
        if top >= num_classes:
            raise DataError(f"{source}: label {top} but only {num_classes} classes")
    return RawSplits(
        kind=kind,
        **{s: tensors[s].contiguous() for s in SPLITS},
        **{f"{s}_labels": ys[s].contiguous() for s in ys},
        num_classes=num_classes,
        context_dim=context_dim,
        levels=levels,
    )


def _is_int(x: object) -> bool:
    return isinstance(x, (int, np.integer)) and not isinstance(x, bool)


def _to_numpy(x: ArrayLike, where: str) -> np.ndarray:
    """A numpy view of a tensor (bfloat16 as float32) or ``np.asarray`` of anything else."""
    try:
        if isinstance(x, torch.Tensor):
            x = x.detach().cpu()
            return (x.float() if x.dtype == torch.bfloat16 else x).numpy()
        return np.asarray(x)
    except (ValueError, TypeError, RuntimeError) as e:
        raise DataError(f"{where} cannot be read as an array ({_quote(e)})") from None


def _examples(x: ArrayLike, where: str) -> np.ndarray:
    """The array of examples, checked: numbers, ``N >= 1``, non-empty examples."""
    a = _to_numpy(x, where)
    if a.dtype.kind not in "biuf":
        raise DataError(f"{where} has dtype {a.dtype}; expected numbers (int, float or bool)")
    if a.ndim == 0 or a.shape[0] == 0:
        raise DataError(f"{where} has shape {a.shape}; expected at least one example (N, ...)")
    if a.ndim > 1 and min(a.shape[1:]) == 0:
        raise DataError(f"{where} has shape {a.shape}: its examples hold no values")
    return a


def _labels(y: ArrayLike, where: str, n: int) -> torch.Tensor:
    """Integer labels, one per example, as an int64 tensor."""
    a = _to_numpy(y, where + " labels")
    if a.ndim != 1 or a.shape[0] != n:
        raise DataError(f"{where} has labels of shape {a.shape}; expected ({n},), one an example")
    if a.dtype.kind not in "biu":
        raise DataError(f"{where} has labels of dtype {a.dtype}; expected integers")
    if a.size and a.min() < 0:
        raise DataError(f"{where} has a negative label {a.min()}; expected 0, 1, 2, ...")
    return torch.from_numpy(a.astype(np.int64))


def _context(c: ArrayLike, where: str, n: int) -> torch.Tensor:
    """A continuous context, one row per example, as a float32 ``(N, C)`` tensor."""
    a = _to_numpy(c, where + " context")
    if a.ndim == 1:
        a = a[:, None]
    if a.ndim != 2 or a.shape[0] != n or a.shape[1] == 0:
        raise DataError(
            f"{where} has a context of shape {a.shape}; expected ({n}, C), one row an example"
        )
    if a.dtype.kind not in "biuf":
        raise DataError(f"{where} has a context of dtype {a.dtype}; expected numbers")
    f = a.astype(np.float32)
    bad = ~np.isfinite(f)
    if bad.any():
        row, col = (int(i) for i in np.argwhere(bad)[0])
        raise DataError(
            f"{where} has {int(bad.sum()):,} NaN or infinite context values (first: row {row}, "
            f"context column {col}); remove or replace them"
        )
    return torch.from_numpy(f)


def _values(
    xs: dict[str, np.ndarray], source: str, names: dict[str, str], levels: int | None
) -> tuple[str, dict[str, torch.Tensor], int | None]:
    """``(kind, float32 tensors, levels)``: layout and values checked, images scaled."""
    shape = xs["train"].shape
    if len(shape) <= 2:
        kind, layout = "points", "points"
    elif len(shape) == 3:
        kind, layout = "image", "gray"
    elif len(shape) == 4 and shape[1] in (1, 3):
        kind, layout = "image", "chw"
    elif len(shape) == 4 and shape[3] in (1, 3):
        kind, layout = "image", "hwc"
    else:
        raise DataError(
            f"{source}: unsupported shape {tuple(shape)}; expected points (N,) or (N, D), or "
            "images (N, H, W), (N, C, H, W) or (N, H, W, C) with C = 1 or 3"
        )
    if kind == "points" and levels is not None:
        raise DataError(f"data.levels applies to images, but {source} holds points {shape}")
    dtype = xs["train"].dtype
    integer = kind == "image" and dtype.kind in "iu"
    if kind == "image" and any((a.dtype.kind in "iu") != integer for a in xs.values()):
        raise DataError(f"{source}: integer and float image splits; give them all one dtype")
    if integer:
        lo = min(int(a.min()) for a in xs.values())
        hi = max(int(a.max()) for a in xs.values())
        if levels is None and hi > 255:
            raise DataError(
                f"{source}: integer images with values up to {hi}; set data.levels to their "
                "number of intensity levels (e.g. 1024 for 10-bit, 65536 for 16-bit images)"
            )
        levels = levels or 256
        if lo < 0 or hi > levels - 1:
            raise DataError(
                f"{source}: integer images with values in [{lo}, {hi}]; data.levels={levels} "
                f"expects 0..{levels - 1}"
            )
    elif kind == "image" and dtype.kind == "b" and levels is None:
        levels = 2
    tensors = {}
    for s, a in xs.items():
        f = a.astype(np.float32)  # a copy: the user's array is never shared
        if not integer and a.dtype.kind == "f":
            n_nan, n_inf = int(np.isnan(f).sum()), int(np.isinf(f).sum())
            if n_nan or n_inf:
                raise DataError(
                    f"{source}: {names[s]} has {n_nan:,} NaN and {n_inf:,} infinite values "
                    "(as float32); remove or replace them"
                )
        if f.ndim == 1 or layout == "gray":
            f = f[:, None]
        elif layout == "hwc":
            f = np.ascontiguousarray(f.transpose(0, 3, 1, 2))
        t = torch.from_numpy(f)
        tensors[s] = t.div_(levels - 1) if integer else t
    if kind == "image" and not integer:
        lo = min(float(t.min()) for t in tensors.values())
        hi = max(float(t.max()) for t in tensors.values())
        if lo < 0 or hi > 1:
            raise DataError(
                f"{source}: float images must lie in [0, 1] but range over [{lo:g}, {hi:g}]; "
                "scale them (e.g. x / 255) or pass integers 0..L-1 (with data.levels)"
            )
    return kind, tensors, levels


# -------------------------------------------------------------------- checksums
def array_checksum(arrays: ArrayLike | dict[str, ArrayLike]) -> str:
    """``"sha256:<hex>"`` of the arrays: for each key in sorted order its name, dtype (as
    little-endian), shape and bytes. A single array hashes as ``{"data": array}``, so it equals
    the checksum of what :func:`read_array_file` returns for a ``.npy`` of it; a tensor and a
    numpy array with the same dtype and values have the same checksum."""
    d = arrays if isinstance(arrays, Mapping) else {"data": arrays}
    h = hashlib.sha256()
    for key in sorted(d, key=str):
        a = _to_numpy(d[key], f"array {key!r}")
        if a.dtype.kind == "O":
            raise DataError(f"array {key!r} holds Python objects; expected numbers")
        a = np.ascontiguousarray(a, dtype=a.dtype.newbyteorder("<"))
        h.update(f"{key}\0{a.dtype.str}\0{a.shape}\0".encode())
        h.update(a.tobytes() if a.ndim == 0 else a.data)
    return "sha256:" + h.hexdigest()


def file_checksum(path: str | Path) -> str:
    """``"sha256:<hex>"`` of the file's bytes."""
    h = hashlib.sha256()
    try:
        with open(path, "rb") as f:
            while chunk := f.read(CHECKSUM_READ_BYTES):
                h.update(chunk)
    except OSError as e:
        raise DataError(f"{path}: cannot read file ({e.strerror or e})") from None
    return "sha256:" + h.hexdigest()

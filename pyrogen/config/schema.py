"""The schema machinery, which knows no section: typed fields with ranges (:func:`num`,
:func:`sizes`), coercion and range checks of one value, checking a section against its
dataclass (:func:`build_section`, :func:`check_argument`), YAML reading (the safe loader with
aliases refused, a size limit), ``key=value`` overrides and their :func:`merge`, and the rows of
``pyrogen config --defaults`` (:func:`section_rows`).

The sections themselves are dataclasses built from these fields, each family's beside the
others (:mod:`pyrogen.config.vae`, :mod:`pyrogen.config.flow`, :mod:`pyrogen.config.gan`) and
the common ones with the whole :class:`~pyrogen.config.run.Config` in
:mod:`pyrogen.config.run`.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import os
import types
import typing
from dataclasses import field
from pathlib import Path
from typing import Any, Literal, Union

import yaml


class ConfigError(ValueError):
    """A user's mistake in a config file or override; the message says what and where."""


# --------------------------------------------------------------------------------------
# ranges
# --------------------------------------------------------------------------------------

MAX_WIDTH = 1 << 16  # hidden units, latent dimensions, channels
MAX_COUNT = 1 << 20  # particles, samples
MAX_STEPS = 1 << 40  # epochs, steps, cadences
MAX_SEED = (1 << 32) - 1  # numpy's seeds are 32-bit; torch's are 64-bit


def num(default: Any, *, ge: float | None = None, gt: float | None = None,
        le: float | None = None, lt: float | None = None, doc: str = "") -> Any:  # fmt: skip
    """A numeric field with its allowed range (every bound is inclusive unless ``gt``/``lt``)
    and its one-line ``doc`` (what ``pyrogen config --defaults`` prints)."""
    return field(default=default, metadata={"ge": ge, "gt": gt, "le": le, "lt": lt, "doc": doc})


def sizes(
    *default: int, max_len: int = 64, le: int = MAX_WIDTH, min_len: int = 1, doc: str = ""
) -> Any:
    """A list of layer widths, each in ``[1, le]``, ``min_len`` to ``max_len`` of them
    (``min_len=0``: ``[]`` is allowed and means no hidden layer, an affine map)."""
    return field(
        default_factory=lambda: list(default),
        metadata={"ge": 1, "le": le, "max_len": max_len, "min_len": min_len, "doc": doc},
    )


# --------------------------------------------------------------------------------------
# validation of one value
# --------------------------------------------------------------------------------------


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if origin in (Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if origin is list:
        (inner,) = typing.get_args(tp)
        return f"a list of {_type_name(inner)}"
    if tp is type(None):
        return "null"
    return {int: "an integer", float: "a number", str: "a string", bool: "true or false"}.get(
        tp, getattr(tp, "__name__", str(tp))
    )


_FAIL = object()


def _coerce(value: Any, tp: Any) -> Any:
    """Return ``value`` as type ``tp``, or ``_FAIL``."""
    origin = typing.get_origin(tp)
    if origin is Literal:
        return value if value in typing.get_args(tp) else _FAIL
    if origin in (Union, types.UnionType):
        for arg in typing.get_args(tp):
            out = _coerce(value, arg)
            if out is not _FAIL:
                return out
        return _FAIL
    if origin is list:
        if not isinstance(value, list | tuple):
            return _FAIL
        (inner,) = typing.get_args(tp)
        items = [_coerce(v, inner) for v in value]
        return _FAIL if any(i is _FAIL for i in items) else items
    if tp is type(None):
        return None if value is None else _FAIL
    if tp is bool:
        return value if isinstance(value, bool) else _FAIL
    if tp is int:
        return value if isinstance(value, int) and not isinstance(value, bool) else _FAIL
    if tp is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            try:
                return float(value)
            except OverflowError:  # an integer beyond float's range
                return _FAIL
        if isinstance(value, str):  # YAML 1.1 reads "1e-3" as a string
            try:
                return float(value)
            except ValueError:
                return _FAIL
        return _FAIL
    if tp is str:  # a number where text is expected (output.name=1) is meant as text
        if isinstance(value, int | float) and not isinstance(value, bool):
            return str(value)
        return value if isinstance(value, str) else _FAIL
    return value


def _shown(value: Any, limit: int = 60) -> str:
    """``repr(value)``, shortened: error messages stay one short line."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 5] + " ..."


def _key(key: Any) -> str:
    """A key as written, shortened (keys come from the user's file)."""
    text = str(key).replace("\n", " ")
    return text if len(text) <= 40 else text[:35] + " ..."


def _range_text(meta: dict[str, Any]) -> str:
    parts = []
    for key, symbol in (("ge", ">="), ("gt", ">"), ("le", "<="), ("lt", "<")):
        if meta.get(key) is not None:
            bound = meta[key]
            parts.append(f"{symbol} {bound:g}" if isinstance(bound, float) else f"{symbol} {bound}")
    return " and ".join(parts)


def _check_number(value: Any, meta: dict[str, Any]) -> bool:
    if isinstance(value, float) and not math.isfinite(value):
        return False
    checks = (
        ("ge", lambda b: value >= b),
        ("gt", lambda b: value > b),
        ("le", lambda b: value <= b),
        ("lt", lambda b: value < b),
    )
    return all(meta.get(k) is None or ok(meta[k]) for k, ok in checks)


def _check_range(key: str, value: Any, tp: Any, meta: dict[str, Any]) -> None:
    """Raise :class:`ConfigError` unless ``value`` is finite and within the field's range."""
    if value is None or not meta:
        return
    kind = "a number" if float in _leaf_types(tp) else "an integer"
    if isinstance(value, list):
        length = meta.get("len")
        if length is not None and len(value) != length:
            raise ConfigError(
                f"bad value for '{key}': {_shown(value)}; expected a list of {length} numbers"
                + (f", each {_range_text(meta)}" if _range_text(meta) else "")
            )
        if meta.get("max_len") is not None and len(value) > meta["max_len"]:
            raise ConfigError(
                f"bad value for '{key}': a list of {len(value)} items; at most "
                f"{meta['max_len']} allowed"
            )
        if len(value) < meta.get("min_len", 1) and meta.get("max_len") is not None:
            raise ConfigError(f"bad value for '{key}': []; expected at least one size")
        for item in value:
            if not _check_number(item, meta):
                raise ConfigError(
                    f"bad value for '{key}': {_shown(value)}; each item must be finite and "
                    f"{_range_text(meta)}"
                )
        return
    if isinstance(value, int | float) and not isinstance(value, bool):
        if not _check_number(value, meta):
            finite = "a finite number" if kind == "a number" else kind
            raise ConfigError(
                f"bad value for '{key}': {_shown(value)}; expected {finite} {_range_text(meta)}"
            )


def _leaf_types(tp: Any) -> set[Any]:
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType, list):
        return set().union(*(_leaf_types(a) for a in typing.get_args(tp)))
    return {tp}


def build_section(cls: type, values: Any, path: str) -> Any:
    """Check ``values`` (a mapping) against dataclass ``cls``: known keys, types, ranges."""
    if values is None:
        values = {}
    if not isinstance(values, dict):
        raise ConfigError(f"{path}: expected a section of key: value pairs, got {_shown(values)}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in values.items():
        if key not in fields:
            close = difflib.get_close_matches(str(key), list(fields), n=1, cutoff=0.5)
            hint = f"; did you mean '{path}.{close[0]}'?" if close else ""
            raise ConfigError(
                f"unknown key '{path}.{_key(key)}'{hint} (valid keys in '{path}': "
                f"{', '.join(fields)})"
            )
        out = _coerce(value, hints[key])
        if out is _FAIL:
            raise ConfigError(
                f"bad value for '{path}.{key}': {_shown(value)}; expected {_type_name(hints[key])}"
            )
        _check_range(f"{path}.{key}", out, hints[key], dict(fields[key].metadata))
        kwargs[key] = out
    return cls(**kwargs)


def check_argument(section: type, key: str, value: Any, name: str | None = None) -> None:
    """Refuse a constructor argument outside the range of the config field ``section.key``
    (one source of ranges for Python and YAML); raises :class:`ConfigError` (a
    ``ValueError``) naming ``name`` (default ``key``), the value and the allowed range."""
    meta = dict(next(f for f in dataclasses.fields(section) if f.name == key).metadata)
    if isinstance(value, tuple):
        value = list(value)
    _check_range(name or key, value, typing.get_type_hints(section)[key], meta)


# --------------------------------------------------------------------------------------
# loading
# --------------------------------------------------------------------------------------

MAX_CONFIG_BYTES = 1 << 20  # a config file is a few hundred bytes; refuse anything huge


class _SafeLoader(yaml.SafeLoader):
    """PyYAML's safe loader without aliases: ``*name`` references can expand a few bytes
    into gigabytes (the 'billion laughs'), and a config never needs them."""

    def compose_node(self, parent, index):  # type: ignore[no-untyped-def]
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise ConfigError(
                f"YAML aliases (*{event.anchor}) are not allowed in a config (line "
                f"{event.start_mark.line + 1}): write the value out"
            )
        return super().compose_node(parent, index)


def parse_yaml(text: str, where: str) -> Any:
    """``yaml.safe_load`` without aliases; a syntax error is one line naming ``where``."""
    try:
        return yaml.load(text, Loader=_SafeLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark
        at = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        raise ConfigError(f"{where}: not valid YAML: {e.problem or e.context}{at}") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{where}: not valid YAML: {str(e).splitlines()[0][:120]}") from None
    except RecursionError:
        raise ConfigError(f"{where}: not valid YAML: nested too deeply") from None


def parse_overrides(overrides: list[str]) -> dict[str, Any]:
    """``["train.epochs=3", "model.hidden_sizes=[64,64]"]`` -> nested dict.

    The value is read as YAML (so ``[64,64]`` is a list and ``1e-3`` a number); the key is a
    dotted path of plain names."""
    out: dict[str, Any] = {}
    for item in overrides:
        key, sep, text = item.partition("=")
        parts = key.split(".")
        if not sep or not key or not all(p.isidentifier() for p in parts):
            raise ConfigError(
                f"bad override {_shown(item)}; expected section.key=value, e.g. train.epochs=3"
            )
        if len(text) > 10_000:
            raise ConfigError(f"bad override for '{key}': value longer than 10,000 characters")
        value = parse_yaml(text, f"override {key}") if text.strip() else None
        if isinstance(value, str) and "${" in value:
            raise ConfigError(f"bad override for '{key}': interpolations (${{...}}) not supported")
        node = out
        for p in parts[:-1]:
            child = node.setdefault(p, {})
            if not isinstance(child, dict):
                raise ConfigError(f"bad override {_shown(item)}: '{p}' is set twice")
            node = child
        node[parts[-1]] = value
    return out


def merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    """``base`` with ``extra`` merged in, section by section (``extra`` wins)."""
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


def read_yaml_file(path: str | os.PathLike) -> dict[str, Any]:
    """A config file's mapping of sections; every problem is a one-line :class:`ConfigError`."""
    p = Path(path)
    if p.is_dir():
        raise ConfigError(f"{p} is a folder; expected a YAML config file")
    if not p.is_file():
        raise ConfigError(f"config file not found: {p}")
    try:
        size = p.stat().st_size
        if size > MAX_CONFIG_BYTES:
            raise ConfigError(f"{p}: {size:,} bytes; a config is at most {MAX_CONFIG_BYTES:,}")
        data = p.read_bytes()
    except OSError as e:
        raise ConfigError(f"{p}: cannot read ({e.strerror or e})") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(f"{p}: not UTF-8 text (byte {e.start}); save it as UTF-8") from None
    raw = parse_yaml(text, str(p))
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{p}: a config must be a mapping of sections")
    return raw


# --------------------------------------------------------------------------------------
# the rows of pyrogen config --defaults
# --------------------------------------------------------------------------------------


def section_rows(
    cls: type, section: str, names: dict[str, list[str]] | None = None
) -> list[tuple[str, str, str, str, str]]:
    """The keys of the section dataclass ``cls`` as rows ``(section.key, type, default,
    allowed values, doc)``, read from the fields' types and metadata; ``names`` gives the
    allowed values of keys looked up in registries (e.g. ``data.name``)."""
    hints = typing.get_type_hints(cls)
    rows = []
    for item in dataclasses.fields(cls):
        key = f"{section}.{item.name}"
        meta = dict(item.metadata)
        allowed = ", ".join((names or {}).get(key, [])) or _allowed_text(hints[item.name], meta)
        default = item.default_factory() if item.default is dataclasses.MISSING else item.default  # type: ignore[misc]
        rows.append(
            (
                key,
                _short_type(hints[item.name]),
                _yaml_text(default),
                allowed or "-",
                meta.get("doc", ""),
            )
        )
    return rows


def _short_type(tp: Any) -> str:
    """``int``, ``float|null``, ``list[int]``; a ``Literal`` by the types of its values."""
    origin = typing.get_origin(tp)
    if origin is Literal:
        return "|".join(dict.fromkeys(type(a).__name__ for a in typing.get_args(tp)))
    if origin in (Union, types.UnionType):
        return "|".join(dict.fromkeys(_short_type(a) for a in typing.get_args(tp)))
    if origin is list:
        return f"list[{_short_type(typing.get_args(tp)[0])}]"
    return "null" if tp is type(None) else getattr(tp, "__name__", str(tp))


def _yaml_text(value: Any) -> str:
    """A value as it is written in a config: ``null``, ``true``, ``[256, 256]``."""
    if value is None or isinstance(value, bool):
        return {None: "null", True: "true", False: "false"}[value]
    if isinstance(value, list):
        return "[" + ", ".join(_yaml_text(v) for v in value) + "]"
    return str(value)


def _allowed_text(tp: Any, meta: dict[str, Any]) -> str:
    """The range (``>= 0 and <= 10``), list lengths and ``Literal`` choices of a field."""
    leaves = _leaf_types(tp)
    choices = [
        str(a) for t in leaves if typing.get_origin(t) is Literal for a in typing.get_args(t)
    ]
    parts = []
    args = typing.get_args(tp) if typing.get_origin(tp) in (Union, types.UnionType) else (tp,)
    if any(typing.get_origin(a) is list for a in args):
        length = meta.get("len")
        count = (
            f"{length} items"
            if length
            else f"1..{meta['max_len']} items"
            if meta.get("max_len")
            else ""
        )
        each = f"each {_range_text(meta)}" if _range_text(meta) else ""
        parts.append(", ".join(p for p in (count, each) if p))
    else:
        parts.append(_range_text(meta))
    parts.append(", ".join(choices))
    return ", or ".join(p for p in parts if p)

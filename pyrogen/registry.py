"""One place where config names become objects.

A config never imports or evaluates code: every name it may contain (a data set, a guide,
an ELBO estimator, a flow architecture, a GAN loss, ...) is looked up in a :class:`Registry`
here, and an unknown name is an error listing the allowed ones. Each entry registers itself
where it is defined (``@GUIDES.register("iaf")`` on the class), so adding one edits no list:
``import pyrogen`` imports every module that defines an entry (the family table imports the
models and learning methods, and the data package its data sets), so every name is known
once ``pyrogen`` is imported.

Example::

    >>> from pyrogen.registry import Registry
    >>> ACTIVATIONS = Registry("activation")
    >>> @ACTIVATIONS.register("relu")
    ... def relu():
    ...     import torch
    ...     return torch.nn.ReLU()
    >>> ACTIVATIONS.names()
    ['relu']
"""

from __future__ import annotations

import difflib
from collections.abc import Callable
from typing import Any

from pyrogen.config import ConfigError


class RegistryError(KeyError):
    """An unknown name was looked up in a registry."""

    def __str__(self) -> str:  # KeyError quotes its message; we want it plain
        return str(self.args[0])


class Registry:
    """A mapping from config names to constructors."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, Callable[..., Any]] = {}
        self._docs: dict[str, str] = {}

    def register(self, name: str, doc: str = "") -> Callable[[Callable[..., Any]], Callable]:
        """Decorator: register ``fn`` under ``name``."""

        def wrap(fn: Callable[..., Any]) -> Callable[..., Any]:
            if name in self._items and self._items[name] is not fn:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            self._items[name] = fn
            self._docs[name] = doc or (fn.__doc__ or "").strip().split("\n")[0]
            return fn

        return wrap

    def add(self, name: str, fn: Callable[..., Any], doc: str = "") -> None:
        """Register ``fn`` under ``name`` (non-decorator form)."""
        self.register(name, doc)(fn)

    def names(self) -> list[str]:
        return sorted(self._items)

    def items(self) -> list[tuple[str, Any]]:
        """``(name, entry)`` pairs in the order they were registered."""
        return list(self._items.items())

    def name_of(self, entry: object) -> str | None:
        """The name ``entry`` (or, for an instance, its class) is registered under, or
        ``None``."""
        for name, item in self._items.items():
            if item is entry or (isinstance(item, type) and type(entry) is item):
                return name
        return None

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def get(self, name: str) -> Callable[..., Any]:
        try:
            return self._items[name]
        except KeyError:
            raise RegistryError(self.unknown_message(name)) from None

    def unknown_message(self, name: str) -> str:
        close = difflib.get_close_matches(str(name), self.names(), n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        return f"unknown {self.kind} {name!r}{hint} (allowed: {', '.join(self.names())})"


def check_name(registry: Registry, name: str, key: str) -> None:
    """Raise a :class:`~pyrogen.config.ConfigError` naming the config ``key`` unless ``name``
    is registered in ``registry`` (with the nearest name and the allowed ones)."""
    if name not in registry:
        close = difflib.get_close_matches(str(name), registry.names(), n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        shown = repr(name) if len(repr(name)) <= 60 else repr(name)[:55] + " ...'"
        raise ConfigError(
            f"bad value for '{key}': {shown}{hint} (allowed: {', '.join(registry.names())})"
        )


DATASETS = Registry("data set")
GUIDES = Registry("guide")
ELBOS = Registry("ELBO estimator")
FLOWS = Registry("flow architecture")
GAN_LOSSES = Registry("GAN loss")

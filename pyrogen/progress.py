"""Progress for long work (training, importance sampling, Parzen windows, gradient draws,
``compare``): a bar in terminals and notebooks (``tqdm.auto``), a line per milestone on
stderr off a terminal (logs, CI), nothing with ``quiet``."""

from __future__ import annotations

import sys
import warnings
from collections.abc import Iterable, Iterator
from typing import Any, TypeVar

with warnings.catch_warnings():  # a notebook without ipywidgets gets tqdm's text bar: fine
    warnings.filterwarnings("ignore", message="IProgress not found")
    from tqdm.auto import tqdm

T = TypeVar("T")


def in_notebook() -> bool:
    """Whether we run inside a Jupyter kernel (where ``tqdm.auto`` draws a widget)."""
    shell = sys.modules.get("IPython")
    ip = shell.get_ipython() if shell is not None else None  # type: ignore[attr-defined]
    return ip is not None and "IPKernelApp" in getattr(ip, "config", {})


def interactive() -> bool:
    """A terminal or a notebook: somewhere a progress bar redraws in place."""
    return sys.stderr.isatty() or in_notebook()


def bar(
    iterable: Iterable[T] | None = None,
    total: int | None = None,
    desc: str = "",
    quiet: bool = False,
    **kwargs: Any,
) -> tqdm:
    """A ``tqdm.auto`` bar shown only where it can redraw (see :func:`interactive`)."""
    return tqdm(iterable, total=total, desc=desc, disable=quiet or not interactive(), **kwargs)


def line(message: str, quiet: bool = False) -> None:
    """A progress line on stderr, off a terminal only (a bar says the same on a terminal)."""
    if not quiet and not interactive():
        print(message, file=sys.stderr, flush=True)


def steps(
    iterable: Iterable[T], desc: str, quiet: bool = False, total: int | None = None
) -> Iterator[T]:
    """Iterate with a bar on a terminal, or off a terminal a line at the start and at each
    tenth of the way (at most 11 lines, whatever the length)."""
    items = list(iterable) if total is None else iterable
    n = len(items) if total is None else total  # type: ignore[arg-type]
    marks = {0, *(round(n * k / 10) - 1 for k in range(1, 11))}
    with bar(total=n, desc=desc, quiet=quiet) as b:
        for i, item in enumerate(items):
            if i in marks:
                line(f"{desc}: {i + 1}/{n}", quiet)
            yield item
            b.update(1)

"""Writing a run folder when the disk may refuse: whole-or-nothing writes and one exception.

A full file system (``ENOSPC``), a file-size limit (``ulimit -f``: ``EFBIG``) or a permission
lost mid-run (``EACCES``, ``EROFS``) can stop any write of a run. The writers here leave no
torn file behind: :func:`write_atomic` replaces a file only once its new content is complete,
and :func:`append_whole` cuts a file back to its old length when an append fails. Their
``OSError`` always names the file meant (``filename``), not a temporary one.

The run loop turns such an ``OSError`` into a :class:`RunOutputError`, which also says which
checkpoint is intact, so that a caller (the CLI, or a user of ``pyrogen.train``) catches one
class and can say in one line what was lost and how to continue.
"""

from __future__ import annotations

import os
import secrets
from contextlib import suppress
from pathlib import Path

TMP_PREFIX = "."
TMP_SUFFIX = ".tmp"


class RunOutputError(OSError):
    """A file of a run folder could not be written (full disk, file-size limit, lost
    permission). ``filename``: the file; ``checkpoint``: the checkpoint left intact (``None``
    when none was written yet); ``step``: the optimiser step it holds; ``finished``: training
    had completed and its final checkpoint is written, only ``what`` (e.g. the figures) was
    lost. ``str(e)`` is one line saying all of it."""

    def __init__(
        self,
        errno: int | None,
        strerror: str,
        filename: str,
        *,
        checkpoint: Path | None = None,
        step: int | None = None,
        finished: bool = False,
        what: str = "",
    ) -> None:
        super().__init__(errno, strerror, filename)
        self.checkpoint = checkpoint
        self.step = step
        self.finished = finished
        self.what = what

    @classmethod
    def from_error(
        cls,
        error: OSError,
        default_path: str | os.PathLike,
        checkpoint: Path | None,
        step: int | None,
        finished: bool = False,
        what: str = "",
    ) -> RunOutputError:
        """``error`` (its errno and text; ``default_path`` when it names no file) with the
        intact checkpoint."""
        filename = error.filename if error.filename is not None else default_path
        return cls(
            error.errno,
            error.strerror or str(error) or type(error).__name__,
            str(filename),
            checkpoint=checkpoint,
            step=step,
            finished=finished,
            what=what,
        )

    def __str__(self) -> str:
        failed = f"cannot write {self.filename}: {self.strerror}"
        if self.checkpoint is None:
            return (
                f"{failed}; no checkpoint was written yet, so there is nothing to resume: start "
                "the run again once the folder can be written"
            )
        if self.finished:
            return (
                f"training finished; its checkpoint (step {self.step}) {self.checkpoint} is "
                f"intact; {self.what or 'a file'} could not be written: {failed}"
            )
        return (
            f"{failed}; the previous checkpoint (step {self.step}) {self.checkpoint} is intact: "
            f"continue with pyrogen train --resume {self.checkpoint.parent}"
        )


def _naming(error: OSError, path: Path) -> OSError:
    return OSError(error.errno, error.strerror or str(error), str(path))


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:  # a write may stop short at a limit; the next one then fails with the cause
        view = view[os.write(fd, view) :]


def write_atomic(path: str | os.PathLike, data: bytes, sync: bool = False) -> None:
    """Write ``data`` to a temporary file ``.<name>.<random>.tmp`` in ``path``'s folder and
    rename it over ``path`` (after an ``fsync`` when ``sync``): a failed write leaves the old
    file whole and removes the temporary one; the ``OSError`` names ``path``."""
    path = Path(path)
    tmp = path.parent / f"{TMP_PREFIX}{path.name}.{secrets.token_hex(4)}{TMP_SUFFIX}"
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    except OSError as e:
        raise _naming(e, path) from None
    try:
        try:
            _write_all(fd, data)
            if sync:
                os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException as e:
        with suppress(OSError):
            os.unlink(tmp)
        if isinstance(e, OSError):
            raise _naming(e, path) from None
        raise


def append_whole(path: str | os.PathLike, data: bytes) -> None:
    """Append ``data`` to ``path`` (created if missing), or nothing: when a write fails the
    file is cut back to its old length, so no torn line is left for later appends to follow;
    the ``OSError`` names ``path``."""
    path = Path(path)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
    except OSError as e:
        raise _naming(e, path) from None
    try:
        size = os.fstat(fd).st_size
        try:
            _write_all(fd, data)
        except OSError as e:
            with suppress(OSError):
                os.ftruncate(fd, size)
            raise _naming(e, path) from None
    finally:
        os.close(fd)

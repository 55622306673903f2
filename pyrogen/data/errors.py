"""The error every data problem raises: a missing, truncated or corrupt file, a failed
download, a checksum mismatch, or options that do not fit the data set."""

from __future__ import annotations


class DataError(ValueError):
    """A data set could not be found, read, downloaded or preprocessed.

    The message is one line and names the file (or URL, or config key) and what was expected.
    """

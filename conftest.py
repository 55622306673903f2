"""Tutorial notebooks run in quick mode under pytest (nbmake passes the environment on), and
write their runs and figures into a temporary folder, not into the source tree; the folder is
removed when the test session ends."""

import os
import shutil
import tempfile

os.environ.setdefault("PYROGEN_QUICK", "1")
os.environ.setdefault("MPLBACKEND", "Agg")
if "PYROGEN_TUTORIAL_RUNS" not in os.environ:
    _RUNS = tempfile.mkdtemp(prefix="pyrogen-tutorials-")
    os.environ["PYROGEN_TUTORIAL_RUNS"] = _RUNS
else:  # the caller's folder: theirs to keep
    _RUNS = None


def pytest_unconfigure(config):  # noqa: ARG001 - pytest's hook signature
    if _RUNS is not None:
        shutil.rmtree(_RUNS, ignore_errors=True)

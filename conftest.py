"""Tutorial notebooks run in quick mode under pytest (nbmake passes the environment on), and
write their runs and figures into a temporary folder, not into the source tree."""

import os
import tempfile

os.environ.setdefault("PYROGEN_QUICK", "1")
os.environ.setdefault("MPLBACKEND", "Agg")
os.environ.setdefault("PYROGEN_TUTORIAL_RUNS", tempfile.mkdtemp(prefix="pyrogen-tutorials-"))

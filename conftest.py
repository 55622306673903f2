"""Tutorial notebooks run in quick mode under pytest (nbmake passes the environment on)."""

import os

os.environ.setdefault("PYROGEN_QUICK", "1")
os.environ.setdefault("MPLBACKEND", "Agg")

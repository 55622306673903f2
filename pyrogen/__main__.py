"""``python -m pyrogen``: the command line (also what ``torchrun -m pyrogen`` runs)."""

import sys

from pyrogen.cli import main

sys.exit(main())

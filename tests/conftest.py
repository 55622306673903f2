"""Shared test set-up.

torch 2.13's CPU kernels for exp/sin/cos/sqrt were seen to return slightly different values
for large tensors on the *first* call in a fresh process when two threads split the work
(see the note in pyrogen/data/toy.py). Tests that compare runs bit for bit (resume equals an
uninterrupted run) would flake, so the thread pool is warmed up once here.
"""

from __future__ import annotations

import os

import matplotlib
import pyro
import pytest
import torch

matplotlib.use("Agg")
os.environ.setdefault("MPLBACKEND", "Agg")

_warm = torch.rand(1 << 16, dtype=torch.float64)
for _fn in (torch.exp, torch.sin, torch.cos, torch.sqrt, torch.log, torch.tanh):
    _fn(_warm)
    _fn(_warm.float())


@pytest.fixture(autouse=True)
def _fresh_pyro_state():
    """Every test starts from an empty param store and a known seed."""
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    yield
    pyro.clear_param_store()


@pytest.fixture
def one_thread():
    """One torch thread for tests of tiny networks: fastest, and immune to a busy machine (two
    threads spinning against other processes made the flow training tests ~50x slower).
    Modules opt in with ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)

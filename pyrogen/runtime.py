"""Where and how pyrogen runs: the device (``train.device``, one GPU per torchrun process),
which optional packages are installed, and CPU settings (torch threads, denormals flushed).

**Threads.** torch's default is one thread per core. On a small model (the toy configs, the
digits VAE) the work per operation is too small to split, and when anything else keeps a core
busy two threads make each operation wait for the slower one: on 2 cores beside one busy
process a RealNVP step took 130–640 ms with 2 threads and 5.8 ms with 1. ``auto`` therefore
uses one thread for models under :data:`SMALL_MODEL` parameters, and otherwise the cores that
are free now (cores minus the CPU use of the last 0.2 s, at least 1). ``bench/bench_cpu.py``
measures this choice against every fixed setting, idle and under load.

**Denormals.** Weights and activations that decay towards zero can become denormal floats,
which many CPUs process 10–100 times slower (a trained flow checkpoint held 3,696 of them;
flushing them took a step from 640 ms to 50 ms). Training and evaluation run with
``torch.set_flush_denormal(True)`` (on CPUs that support it); the previous setting is restored
afterwards, so a user's own code is unaffected.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from contextlib import contextmanager

import torch

from pyrogen.config import ConfigError

#: below this many parameters ``auto`` uses one thread (measured: bench/bench_cpu.py)
SMALL_MODEL = 1_000_000


def available_cores() -> int:
    """The cores this process may run on (its affinity mask where the OS has one)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def _cpu_times() -> tuple[float, float] | None:
    """(busy, total) jiffies of all CPUs from ``/proc/stat`` (Linux), or ``None``."""
    try:
        with open("/proc/stat") as f:
            fields = [float(v) for v in f.readline().split()[1:]]
    except (OSError, ValueError, IndexError):
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0.0)  # idle + iowait
    return sum(fields) - idle, sum(fields)


def busy_cores(interval: float = 0.2) -> float:
    """How many cores other processes keep busy now: the machine's CPU use over ``interval``
    seconds (``/proc/stat``), or the 1-minute load average where that is not available. (The
    load average lags a new load by tens of seconds; the sample does not.)"""
    first = _cpu_times()
    if first is not None:
        time.sleep(interval)
        second = _cpu_times()
        if second is not None and second[1] > first[1]:
            share = (second[0] - first[0]) / (second[1] - first[1])
            return share * (os.cpu_count() or 1)
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):
        return 0.0


def free_cores() -> int:
    """Cores of this process not kept busy by others: available − busy, at least 1; under
    ``torchrun`` divided among the machine's processes (``LOCAL_WORLD_SIZE``)."""
    cores = available_cores()
    free = max(1, min(cores, round(cores - busy_cores())))
    return max(1, free // max(1, _local_processes()))


def auto_threads(num_parameters: int | None = None) -> int:
    """The thread count ``auto`` picks (see the module docstring)."""
    if num_parameters is not None and num_parameters < SMALL_MODEL:
        return 1
    return free_cores()


def resolve_threads(setting: int | str, num_parameters: int | None = None) -> int:
    """``setting`` as a number of threads (``"auto"`` -> :func:`auto_threads`)."""
    if setting == "auto":
        return auto_threads(num_parameters)
    return int(setting)


def configure_threads(setting: int | str, num_parameters: int | None = None) -> int:
    """Set torch's intra-op threads from ``setting`` and return the number chosen."""
    threads = resolve_threads(setting, num_parameters)
    if threads != torch.get_num_threads():
        torch.set_num_threads(threads)
    return threads


@contextmanager
def cpu_settings(setting: int | str, num_parameters: int | None = None) -> Iterator[int]:
    """Run with the thread count of ``setting`` and denormals flushed; restore both after."""
    previous = torch.get_num_threads()
    threads = configure_threads(setting, num_parameters)
    flushing = torch.set_flush_denormal(True)
    try:
        yield threads
    finally:
        if flushing:
            torch.set_flush_denormal(False)
        if torch.get_num_threads() != previous:
            torch.set_num_threads(previous)


def available_memory(device: torch.device) -> int | None:
    """Bytes that can still be allocated on ``device`` (``None`` when unknown): free GPU memory,
    or the CPU's ``MemAvailable`` within the process's cgroup limit."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    free = None
    try:
        with open("/proc/meminfo") as f:
            for row in f:
                if row.startswith("MemAvailable:"):
                    free = int(row.split()[1]) * 1024
    except OSError:
        return None
    try:
        limit = open("/sys/fs/cgroup/memory.max").read().strip()
        used = int(open("/sys/fs/cgroup/memory.current").read())
        if limit != "max" and free is not None:
            free = min(free, int(limit) - used)
    except (OSError, ValueError):
        pass
    return free


def count_all_parameters(module: torch.nn.Module) -> int:
    """Every parameter of ``module`` (trainable or frozen): the size that sets how many
    threads pay off."""
    return sum(p.numel() for p in module.parameters())


# ---------------------------------------------------------------------------- the device
def _env_int(name: str, default: int) -> int:
    """The integer in environment variable ``name`` (as torchrun sets it), or ``default``
    when it is unset or not an integer."""
    try:
        return int(os.environ.get(name, str(default)))
    except ValueError:
        return default


def env_world_size() -> int:
    """``WORLD_SIZE`` as torchrun sets it (1 when not launched by torchrun)."""
    return max(1, _env_int("WORLD_SIZE", 1))


def env_rank() -> int:
    return _env_int("RANK", 0)


def env_local_rank() -> int:
    return _env_int("LOCAL_RANK", 0)


def local_cuda_device() -> torch.device | None:
    """``cuda:LOCAL_RANK`` when launched with several processes on a machine with GPUs (one
    process per GPU), else ``None``."""
    if env_world_size() > 1 and torch.cuda.is_available():
        return torch.device("cuda", env_local_rank() % torch.cuda.device_count())
    return None


def resolve_device(name: str, key: str = "train.device") -> torch.device:
    """``auto`` is CUDA when available, else CPU; ``cuda``/``cuda:N`` must exist here. Under
    ``torchrun`` with several processes on a machine with GPUs, ``auto`` and ``cuda`` are the
    local rank's GPU (``cuda:LOCAL_RANK``: one process per GPU)."""
    if name in ("auto", "cuda"):
        local = local_cuda_device()
        if local is not None:
            return local
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        raise ConfigError(
            f"bad value for '{key}': {name!r}; expected auto, cpu, cuda or cuda:N"
        ) from None
    if device.type == "cuda" and device.index is not None and _local_processes() > 1:
        raise ConfigError(
            f"{key}={name} under torchrun with {_local_processes()} processes on this machine "
            f"would put every process on the same GPU: use {key}=auto or cuda (one GPU per "
            "process, cuda:LOCAL_RANK)"
        )
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"{key}={name} but CUDA is not available here (use auto or cpu)")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ConfigError(
                f"{key}={name} but only {torch.cuda.device_count()} GPU(s) exist here"
            )
    elif device.type != "cpu":
        raise ConfigError(f"bad value for '{key}': {name!r}; expected auto, cpu, cuda or cuda:N")
    return device


def _local_processes() -> int:
    """torchrun's ``LOCAL_WORLD_SIZE``: the processes of this run on this machine."""
    return _env_int("LOCAL_WORLD_SIZE", 1)


# ---------------------------------------------------------------------------- optional packages
def tensorboard_available() -> bool:
    try:
        from torch.utils.tensorboard import SummaryWriter  # noqa: F401
    except ImportError:
        return False
    return True

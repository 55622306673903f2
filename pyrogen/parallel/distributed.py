"""Data-parallel training and evaluation on ``torch.distributed``: the plumbing in one place.

pyrogen scales out with PyTorch's own engine: processes launched by ``torchrun`` (one per GPU,
or N on the CPU), a process group (``nccl`` on GPUs, ``gloo`` on the CPU) and
``DistributedDataParallel`` (DDP) around what each learner differentiates. Nothing here
communicates by other means than ``torch.distributed``'s own collectives.

* :func:`session` initialises the default process group from torchrun's environment
  (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``/``MASTER_PORT``) when
  ``WORLD_SIZE > 1`` and no group exists yet, and destroys it afterwards; a single process
  never initialises anything and runs exactly as before.
* **Sharding**: ``train.batch_size`` is the *global* batch B. Every rank computes the same
  per-epoch permutation (from ``train.seed``); each step takes the same slice of B indices on
  every rank and :func:`shard` gives rank r the r-th of W contiguous pieces
  (``tensor_split``: sizes differ by at most one; nothing is padded). A last batch with
  fewer than W examples is skipped (at most W − 1 examples an epoch, a different subset each
  epoch, since the permutation changes).
* **Reductions**: :func:`all_reduce_sum` (metrics, flags), :func:`all_gather_object`
  (per-rank RNG states for checkpoints, per-example evaluation values) and
  :func:`broadcast_object` (the run folder's name, rank 0's errors).
* :func:`global_moments`: the mean and variance of a batch over every rank, differentiable
  (``torch.distributed.nn.functional.all_reduce``), for the layers that normalise with batch
  statistics (:mod:`pyrogen.parallel.sync_layers`).
"""

from __future__ import annotations

import inspect
import os
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import timedelta
from typing import Any, TypeVar

import torch
import torch.distributed as dist

from pyrogen.config import ConfigError
from pyrogen.runtime import env_rank, env_world_size

T = TypeVar("T")


# ---------------------------------------------------------------------------- who am I
# torchrun's environment (WORLD_SIZE, RANK, LOCAL_RANK) is read in pyrogen.runtime, with the
# device of each process; the group's view of it is below.


def is_initialized() -> bool:
    return dist.is_available() and dist.is_initialized()


def world_size() -> int:
    """Processes in the default group (1 without one)."""
    return dist.get_world_size() if is_initialized() else 1


def rank() -> int:
    return dist.get_rank() if is_initialized() else 0


def is_distributed() -> bool:
    return world_size() > 1


def is_main() -> bool:
    """Rank 0 of the group, or, before a group exists, of torchrun's environment: the process
    that writes files and prints."""
    return rank() == 0 if is_initialized() else env_rank() == 0


# ---------------------------------------------------------------------------- the group
#: how long a collective may wait for the other ranks before failing (a crashed rank is
#: normally noticed sooner: torchrun stops the other workers when one fails)
TIMEOUT = timedelta(minutes=int(os.environ.get("PYROGEN_DIST_TIMEOUT_MINUTES", "30")))


@contextmanager
def session(device: torch.device | str) -> Iterator[bool]:
    """Run with the default process group when ``WORLD_SIZE > 1``: initialised here from
    torchrun's environment (``nccl`` for a CUDA ``device``, else ``gloo``) unless one exists
    already, and destroyed on exit if it was made here. Yields whether the run is
    distributed."""
    device = torch.device(device)
    made = False
    if not is_initialized() and env_world_size() > 1:
        if not dist.is_available():  # pragma: no cover - torch built without distributed
            raise RuntimeError("WORLD_SIZE > 1 but this torch has no torch.distributed")
        if device.type == "cuda":
            torch.cuda.set_device(device)
        backend = "nccl" if device.type == "cuda" else "gloo"
        kwargs: dict[str, Any] = {"backend": backend, "timeout": TIMEOUT}
        if (
            device.type == "cuda"
            and "device_id" in inspect.signature(dist.init_process_group).parameters
        ):
            kwargs["device_id"] = device  # binds the rank to its GPU (torch >= 2.3)
        dist.init_process_group(**kwargs)
        made = True
    try:
        yield is_distributed()
    finally:
        if made and is_initialized():
            dist.destroy_process_group()


def collective_device(device: torch.device) -> torch.device:
    """Where the tensors of a collective live: this rank's GPU for ``nccl``, the CPU for
    ``gloo``."""
    if is_initialized() and dist.get_backend() == "nccl":
        if device.type == "cuda":
            return device
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


# ---------------------------------------------------------------------------- sharding
def shard(indices: torch.Tensor) -> torch.Tensor:
    """This rank's contiguous piece of a global batch's indices (W pieces whose sizes differ
    by at most one; the first ``len % W`` pieces have one more)."""
    w = world_size()
    return indices if w == 1 else indices.tensor_split(w)[rank()]


def shard_range(n: int) -> tuple[int, int]:
    """``(start, stop)`` of this rank's contiguous piece of ``range(n)``."""
    w, r = world_size(), rank()
    base, extra = divmod(n, w)
    start = r * base + min(r, extra)
    return start, start + base + (1 if r < extra else 0)


def rank_seed(seed: int, name: str) -> int:
    """A seed for this rank's own random stream ``name`` (the data's noise, the model's
    draws), distinct across ranks and streams, fixed by ``train.seed``."""
    return (seed * 1_000_003 + zlib.crc32(f"{name}:{rank()}".encode())) % (1 << 63)


# ---------------------------------------------------------------------------- collectives
def all_reduce_sum(values: torch.Tensor) -> torch.Tensor:
    """The element-wise sum over ranks of a small tensor (float64 on the collective's device);
    returned on the CPU. Without a group: the values themselves."""
    if not is_distributed():
        return values.detach().to("cpu", torch.float64)
    t = values.detach().to(collective_device(values.device), torch.float64)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t.cpu()


def all_agree(flag: bool) -> bool:
    """Whether ``flag`` holds on every rank."""
    if not is_distributed():
        return flag
    total = all_reduce_sum(torch.tensor([1.0 if flag else 0.0]))
    return bool(total.item() == world_size())


def all_gather_object(obj: T) -> list[T]:
    """Every rank's ``obj`` (picklable; tensors are moved to the CPU first), in rank order."""
    if not is_distributed():
        return [obj]
    out: list[Any] = [None] * world_size()
    dist.all_gather_object(out, _to_cpu(obj))
    return out


def broadcast_object(obj: T, src: int = 0) -> T:
    """Rank ``src``'s ``obj`` on every rank."""
    if not is_distributed():
        return obj
    box = [_to_cpu(obj) if rank() == src else None]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def _to_cpu(obj: Any) -> Any:
    if torch.is_tensor(obj):
        return obj.detach().cpu()
    if isinstance(obj, dict):
        return {k: _to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return type(obj)(_to_cpu(v) for v in obj)
    return obj


def main_first(fn: Callable[[], T]) -> T:
    """Run ``fn`` on rank 0 first (e.g. what downloads files), then on the other ranks. An
    exception on rank 0 is raised on every rank (no rank is left waiting)."""
    result = on_main(fn)
    if is_distributed() and rank() != 0:
        return fn()
    return result


def on_main(fn: Callable[[], T]) -> T | None:
    """Run ``fn`` on rank 0 only (writing files); its exception is raised on every rank."""
    if not is_distributed():
        return fn()
    error: BaseException | None = None
    result = None
    if rank() == 0:
        try:
            result = fn()
        except Exception as e:  # noqa: BLE001 - re-raised below, on every rank
            error = e
    error = broadcast_object(error)
    if error is not None:
        raise error
    return result


# ---------------------------------------------------------------------------- the run loop
def check_batches(batch_size: int, fixed_batches: bool) -> None:
    """Refuse a global batch that cannot give every rank a piece (or, for a learner that
    needs batches of one size, pieces of one size)."""
    w = world_size()
    if batch_size < w:
        raise ConfigError(
            f"train.batch_size={batch_size} is the global batch, split among the {w} processes: "
            f"it must be at least {w}"
        )
    if fixed_batches and batch_size % w:
        raise ConfigError(
            f"guide.baseline=decaying_average keeps one running average per position in the "
            f"batch, and each of the {w} processes keeps those of its piece: "
            f"train.batch_size={batch_size} must be a multiple of {w}"
        )


def reduce_step(
    out: dict[str, float], n_local: int, n_global: int, stop: bool
) -> tuple[dict[str, float], bool]:
    """A step's metrics as means over the global batch (each rank's per-example means
    weighted by its piece), and whether any rank wants to stop: one all-reduce a step."""
    keys = list(out)
    values = [out[k] * n_local for k in keys] + [1.0 if stop else 0.0]
    total = all_reduce_sum(torch.tensor(values, dtype=torch.float64))
    reduced = {k: float(total[i]) / n_global for i, k in enumerate(keys)}
    return reduced, bool(total[-1] > 0)


def sum_dicts(parts: list[dict[str, float]]) -> dict[str, float]:
    """Key-wise sums of dicts of numbers (every rank's totals)."""
    out: dict[str, float] = {}
    for part in parts:
        for k, v in part.items():
            out[k] = out.get(k, 0.0) + v
    return out


# ---------------------------------------------------------------------------- batch statistics
def global_moments(
    x: torch.Tensor, feature_dim: int, differentiable: bool = True
) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Per-feature mean and *unbiased* variance of ``x`` over every dimension but
    ``feature_dim``, and the count of values per feature, over the pieces of all ranks: what
    one process would compute on the union batch. Two-pass (sums, then squared deviations),
    through ``torch.distributed.nn.functional.all_reduce`` when ``differentiable`` (gradients
    flow to every rank's inputs), else plain ``all_reduce``. Without a group: local."""
    dims = [d for d in range(x.dim()) if d != feature_dim]
    count = x.numel() // x.shape[feature_dim]
    if not is_distributed():
        return x.mean(dims), x.var(dims), count
    total = torch.cat([x.sum(dims), x.new_tensor([float(count)])])
    total = _all_reduce(total, differentiable)
    n = int(round(float(total[-1].detach())))
    mean = total[:-1] / n
    shape = [1] * x.dim()
    shape[feature_dim] = -1
    squares = _all_reduce((x - mean.view(shape)).pow(2).sum(dims), differentiable)
    return mean, squares / max(n - 1, 1), n


def _all_reduce(t: torch.Tensor, differentiable: bool) -> torch.Tensor:
    """The sum over ranks; with ``differentiable``, through torch's functional collective
    (its backward pass is the all-reduce of the gradients), else in place on a copy."""
    if differentiable and t.requires_grad:
        return differentiable_all_reduce(t)
    t = t.detach().clone()
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def differentiable_all_reduce(t: torch.Tensor) -> torch.Tensor:
    """``all_reduce`` (sum) with autograd: torch's functional collective where it has a
    backward pass (recent torch), else ``torch.distributed.nn.functional.all_reduce``."""
    try:
        from torch.distributed._functional_collectives import all_reduce

        out = all_reduce(t, "sum", dist.group.WORLD)
        if out.grad_fn is not None:
            return out
    except (ImportError, RuntimeError):  # pragma: no cover - older torch
        pass
    from torch.distributed.nn.functional import all_reduce as legacy  # pragma: no cover

    return legacy(t, op=dist.ReduceOp.SUM)  # pragma: no cover

"""Random streams of evaluation, and evaluation in chunks that any number of processes share.

Every estimator draws from its own stream (:func:`own_stream`), so asking for one more
estimator never changes another's number. Within an estimator, the examples are cut into
chunks of :data:`EXAMPLES_PER_CHUNK` and chunk c draws from its own stream too (its
preprocessing noise from :func:`chunk_generator`, the model's draws from
``own_stream(seed, f"{name}:{c}")``): an example's value then depends on the seed and its
chunk only, not on which process computes it. :func:`per_example` hands each rank of a
data-parallel run a contiguous share of the chunks and gathers the per-example values in
order, so ``torchrun ... pyrogen evaluate`` gives the numbers of one process (to the last
bit on the CPU).
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch

from pyrogen.parallel import distributed
from pyrogen.progress import steps

#: examples per chunk of evaluation (and per importance-sampling batch)
EXAMPLES_PER_CHUNK = 100


@contextmanager
def own_stream(seed: int, name: str, device: torch.device) -> Iterator[None]:
    """Run with torch's global generator(s) set from ``seed`` and ``name`` and restored
    afterwards: an estimator's random numbers do not depend on what ran before it."""
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed * 1_000_003 + zlib.crc32(name.encode()))
        yield


def chunk_generator(seed: int, chunk: int) -> torch.Generator:
    """The preprocessing noise of chunk ``chunk`` (chunk 0 draws from ``seed`` itself)."""
    return torch.Generator().manual_seed(seed + 1_000_003 * chunk)


def per_example(
    n: int,
    fn: Callable[[int, int, torch.Generator], dict[str, torch.Tensor]],
    seed: int,
    name: str,
    device: torch.device,
    chunk: int = EXAMPLES_PER_CHUNK,
    quiet: bool = True,
) -> dict[str, torch.Tensor]:
    """``fn(start, stop, generator)`` -> per-example values ``{key: tensor (stop − start,)}``
    for each chunk of ``range(n)``, each chunk in its own stream, concatenated in order. Under
    data parallelism each rank computes a contiguous share of the chunks and every rank
    receives all the values."""
    chunks = math.ceil(n / chunk)
    first, last = distributed.shard_range(chunks)
    parts: list[dict[str, torch.Tensor]] = []

    for c in steps(range(first, last), f"evaluating {name} on {n:,} examples", quiet=quiet):
        start, stop = c * chunk, min(n, (c + 1) * chunk)
        with own_stream(seed, f"{name}:{c}", device):
            values = fn(start, stop, chunk_generator(seed, c))
        parts.append({k: v.detach() for k, v in values.items()})
    if distributed.is_distributed():
        gathered = distributed.all_gather_object(parts)
        parts = [p for rank_parts in gathered for p in rank_parts]
    if not parts:
        return {}
    return {k: torch.cat([p[k].to(device) for p in parts]) for k in parts[0]}

"""Mini-batches of an in-memory data set by index slicing (no per-sample ``DataLoader``)."""

from __future__ import annotations

from collections.abc import Iterator

import torch


def iterate_minibatches(
    num_examples: int,
    batch_size: int,
    generator: torch.Generator,
    device: torch.device | str = "cpu",
    shuffle: bool = True,
    drop_last: bool = False,
) -> Iterator[torch.Tensor]:
    """Yield int64 index tensors on ``device`` that cover ``range(num_examples)`` once.

    With ``shuffle`` the order is ``torch.randperm(num_examples, generator=generator)`` (one
    draw per epoch, on the generator's device), so the same generator state gives the same
    batches. ``drop_last`` skips a final batch smaller than ``batch_size``.

    Example::

        >>> g = torch.Generator().manual_seed(0)
        >>> x = torch.arange(10.0)
        >>> sorted(float(v) for idx in iterate_minibatches(10, 4, g) for v in x[idx])
        [0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0]
    """
    if batch_size <= 0:
        raise ValueError(f"batch_size must be > 0, got {batch_size}")
    if num_examples < 0:
        raise ValueError(f"num_examples must be >= 0, got {num_examples}")
    if shuffle:
        order = torch.randperm(num_examples, generator=generator, device=generator.device)
    else:
        order = torch.arange(num_examples)
    order = order.to(device)
    stop = num_examples - num_examples % batch_size if drop_last else num_examples
    for start in range(0, stop, batch_size):
        yield order[start : start + batch_size]

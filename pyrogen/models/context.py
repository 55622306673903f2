"""The context c of a conditional model: what p(x | c) is conditioned on.

c is either a class label y ∈ {0, …, K − 1}, given to the networks as its one-hot vector
e_y ∈ {0, 1}^K, or a continuous vector c ∈ ℝ^C (columns of a table, an array from Python),
given as it is. Every family carries c through training in the batch's label slot ``y``:
int64 of shape ``(N,)`` for classes, float of shape ``(N, C)`` for a continuous context. A
conditional model has the attributes ``num_classes`` (K, or None) and ``context_dim`` (C, or
None), exactly one of them set; :func:`context_size` is the width of the vector its networks
take, and :func:`context_vector` turns a batch's ``y`` into that vector.

Example::

    >>> context_vector(torch.tensor([2, 0]), num_classes=3).tolist()
    [[0.0, 0.0, 1.0], [1.0, 0.0, 0.0]]
    >>> context_vector(torch.tensor([[0.5, -1.0]]), context_dim=2).tolist()
    [[0.5, -1.0]]
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def context_size(num_classes: int | None = None, context_dim: int | None = None) -> int:
    """The width of c as the networks take it: K (one-hot), C, or 0 (unconditional)."""
    if num_classes is not None and context_dim is not None:
        raise ValueError("give num_classes (class labels) or context_dim (a vector), not both")
    return int(num_classes or context_dim or 0)


def context_vector(
    y: torch.Tensor,
    num_classes: int | None = None,
    context_dim: int | None = None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """c as a float vector per example: one-hot(y) of width K for class labels ``(N,)``, or the
    continuous context ``(N, C)`` itself (cast to ``dtype``)."""
    if num_classes is not None:
        return F.one_hot(y.long(), num_classes).to(dtype)
    if context_dim is None:
        raise ValueError("an unconditional model takes no context")
    if y.dim() < 1 or y.shape[-1] != context_dim:
        raise ValueError(
            f"the context must have {context_dim} values per example (shape (N, {context_dim})), "
            f"got shape {tuple(y.shape)}"
        )
    return y.to(dtype)


def check_context(
    y: torch.Tensor | object | None,
    n: int,
    num_classes: int | None = None,
    context_dim: int | None = None,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """A user's context for ``n`` draws, checked: class labels (one, or ``n``, each in
    0..K − 1) or context vectors (one of length C, broadcast, or ``n`` rows, all finite);
    ``None`` draws the classes 0..K − 1 round-robin, and is refused for a continuous context.
    Returns the batch's ``y``; a ``ValueError`` names what is wrong and what is allowed."""
    if y is None:
        if num_classes is not None:
            return torch.arange(n, device=device) % num_classes
        raise ValueError(
            f"the model is conditioned on a context of {context_dim} numbers: give one "
            f"(y=, --context), one row or {n} rows, to draw x ~ p(x | c)"
        )
    if num_classes is not None:
        t = torch.as_tensor(y)
        if t.is_floating_point() and not bool((t == t.round()).all()):
            raise ValueError(f"class labels must be integers 0..{num_classes - 1}")
        t = t.to(torch.int64).reshape(-1)
        if t.numel() == 1:
            t = t.expand(n)
        if t.numel() != n:
            raise ValueError(f"give one label or {n} labels, not {t.numel()}")
        if bool((t < 0).any()) or bool((t >= num_classes).any()):
            bad = sorted({v for v in t.tolist() if not 0 <= v < num_classes})
            raise ValueError(f"labels must lie in 0..{num_classes - 1}, got {bad}")
        return t.to(device) if device is not None else t
    if context_dim is None:
        raise ValueError("the model is not conditional: it takes no labels or context")
    t = torch.as_tensor(y, dtype=torch.float32)
    if t.dim() == 1 and t.numel() == context_dim:
        t = t[None]
    if t.dim() == 2 and t.shape == (1, context_dim):  # one context for all n draws
        t = t.expand(n, context_dim)
    if t.dim() != 2 or t.shape[1] != context_dim:
        raise ValueError(
            f"the context has shape {tuple(t.shape)}; expected ({context_dim},) for one context "
            f"or ({n}, {context_dim}), one row per draw"
        )
    if t.shape[0] != n:
        raise ValueError(f"the context has {t.shape[0]} rows; expected 1 or {n}, one per draw")
    if not bool(torch.isfinite(t).all()):
        raise ValueError("the context has NaN or infinite values; expected finite numbers")
    return t.to(device) if device is not None else t


__all__ = ["check_context", "context_size", "context_vector"]

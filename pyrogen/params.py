"""How a pyrogen model's parameters become visible to Pyro, without Pyro's global param store.

Pyro's ``SVI`` optimises the parameters it *sees*: it runs model and guide under
``poutine.trace(param_only=True)`` and hands the values of the recorded ``param`` sites to the
``pyro.optim`` optimiser. The parameters of a plain ``nn.Module`` are invisible to it unless
they are announced as param sites. Pyro offers two ways to announce them:

* ``pyro.module(name, module)`` registers every parameter in the *global* param store under
  ``name``: two models registered under one name share (silently, the first one's)
  parameters, and a library that registers its models fills the user's store;
* ``PyroModule`` with ``pyro.settings.set(module_local_params=True)`` keeps parameters local to
  the module and emits a ``param`` statement per parameter "to ensure any handlers of
  pyro.param are applied" (``pyro/nn/module.py``) — but the setting is global to the process
  and changes how every other ``PyroModule`` of the user behaves.

:func:`declare_params` emits exactly the statement Pyro's local-parameter mode emits, for every
parameter of a module tree, and nothing else: handlers (``SVI``'s param capture,
``poutine.trace``, ``poutine.replay``) see each parameter as a param site named after its path
in the module, the global store is never read or written, and no global setting changes. Two
models in one process therefore never share a parameter, and a user's own param-store entries
are left alone.

Example::

    >>> import torch
    >>> from pyro import poutine
    >>> net = torch.nn.Linear(2, 1)
    >>> def model():
    ...     declare_params(net, "net")
    >>> sorted(poutine.trace(model, param_only=True).get_trace().nodes)
    ['net.bias', 'net.weight']
"""

from __future__ import annotations

import weakref
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar

import torch
from pyro.poutine.runtime import effectful
from torch import nn
from torch.distributions import constraints


def _value(name: str, value: torch.Tensor, **kwargs: object) -> torch.Tensor:
    return value


# the statement ``pyro.param(name, value)`` would make, minus the store: args (name, value)
_param_statement = effectful(_value, type="param")


def named_params(module: nn.Module, prefix: str, exclude: Iterable[str] = ()) -> list:
    """``(site name, parameter)`` for every trainable parameter of ``module``, the site name
    being ``prefix.<path in the module>``; sub-modules named in ``exclude`` are skipped."""
    skip = tuple(f"{name}." for name in exclude)
    out = []
    for name, p in module.named_parameters():
        if p.requires_grad and not name.startswith(skip):
            out.append((f"{prefix}.{name}" if prefix else name, p))
    return out


_STATEMENTS: ContextVar[bool] = ContextVar("pyrogen_param_statements", default=True)


@contextmanager
def param_statements(enabled: bool) -> Iterator[None]:
    """Within this context :func:`declare_params` emits its statements only if ``enabled``.
    pyrogen's own learner turns them off for its steps: it optimises the module's parameters
    with a torch optimiser and has no handler that reads param sites, so the statements would
    only cost time. (A context variable: other threads and code outside are unaffected.)"""
    token = _STATEMENTS.set(enabled)
    try:
        yield
    finally:
        _STATEMENTS.reset(token)


def declare_params(module: nn.Module, prefix: str, exclude: Iterable[str] = ()) -> None:
    """Emit one Pyro ``param`` statement per trainable parameter of ``module`` (see the module
    docstring). The site's value is a view of the parameter whose ``unconstrained()`` returns
    the parameter itself, as ``pyro.param`` values have, so ``SVI`` + ``pyro.optim`` update the
    module's own tensors."""
    if not _STATEMENTS.get():
        return
    for name, p in named_params(module, prefix, exclude):
        value = p.view_as(p)
        value.unconstrained = weakref.ref(p)
        _param_statement(name, value, name=name, constraint=constraints.real, event_dim=None)


__all__ = ["declare_params", "named_params", "param_statements"]

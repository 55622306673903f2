"""Layers that normalise with batch statistics, made to use the *global* batch under DDP.

With data parallelism each rank sees a piece of the batch. A layer that normalises with the
statistics of its input batch would normalise with those of the piece, and the averaged
gradient would no longer be the gradient of one process on the union batch. The cure is
PyTorch's ``SyncBatchNorm`` idea: compute the statistics over every rank's piece. Under DDP
(:func:`convert`, called by the learners' ``data_parallel``):

* ``torch.nn`` batch norm layers become ``torch.nn.SyncBatchNorm`` on CUDA (PyTorch's own);
  ``SyncBatchNorm`` runs on GPUs only, so on the CPU (``gloo``) they become
  :class:`GlobalBatchNorm` layers, the same computation through
  :func:`~pyrogen.parallel.distributed.global_moments`;
* Pyro's ``BatchNorm`` transform (flows' ``model.normalization=batchnorm``) becomes
  :class:`SyncBatchNormTransform`: global mean and variance, in the inverse pass and in its
  log-determinant;
* :class:`~pyrogen.models.flow_layers.ActNorm` becomes :class:`SyncActNorm`: its
  data-dependent initialisation uses the mean and standard deviation of the global first
  batch, so every rank starts from the same parameters, those one process would compute.

Parameters and buffers are the layers' own (the class changes, the tensors stay), so
optimisers, checkpoints and ``state_dict`` keys are untouched. Without a process group the
converted layers compute exactly what the originals compute on their input.
"""

from __future__ import annotations

import torch
from pyro.distributions import transforms as T
from torch import nn

from pyrogen.models.flow_layers import ActNorm
from pyrogen.parallel.distributed import global_moments, is_distributed


class SyncBatchNormTransform(T.BatchNorm):
    """Pyro's ``BatchNorm`` transform with the batch mean and (unbiased) variance of the
    global batch in training mode."""

    _moments: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None

    def _global(self, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        cached = self._moments
        if cached is not None and cached[0] is y:
            return cached[1], cached[2]
        mean, var, _ = global_moments(y, feature_dim=y.dim() - 1)
        self._moments = (y, mean, var)
        return mean, var

    def _inverse(self, y: torch.Tensor) -> torch.Tensor:
        if not (self.training and is_distributed()):
            return super()._inverse(y)
        mean, var = self._global(y)
        with torch.no_grad():
            self.moving_mean.mul_(1 - self.momentum).add_(mean * self.momentum)
            self.moving_variance.mul_(1 - self.momentum).add_(var * self.momentum)
        return (y - mean) * self.constrained_gamma / torch.sqrt(var + self.epsilon) + self.beta

    def log_abs_det_jacobian(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if not (self.training and is_distributed()):
            return super().log_abs_det_jacobian(x, y)
        _, var = self._global(y)
        return -self.constrained_gamma.log() + 0.5 * torch.log(var.unsqueeze(0) + self.epsilon)


class SyncActNorm(ActNorm):
    """:class:`ActNorm` whose data-dependent initialisation uses the global first batch."""

    @torch.no_grad()
    def _initialize(self, x: torch.Tensor) -> None:
        if not is_distributed():
            return super()._initialize(x)
        feature_dim = x.dim() - self._event_dim
        mean, var, count = global_moments(x.detach(), feature_dim, differentiable=False)
        self.bias.copy_(mean.view_as(self.bias))
        if count > 1:  # more than one value per feature
            std = var.sqrt().clamp_min(1e-6)
            self.log_scale.copy_(std.log().view_as(self.log_scale))
        self.initialized.fill_(True)


class GlobalBatchNorm(nn.modules.batchnorm._BatchNorm):
    """``torch.nn`` batch norm with the statistics of the global batch in training mode, for
    the CPU where ``torch.nn.SyncBatchNorm`` does not run. (Mixed into the converted layer's
    own class, so its input checks are kept.)"""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and is_distributed()):
            return super().forward(x)
        self._check_input_dim(x)
        mean, var, n = global_moments(x, feature_dim=1)
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                m = self.momentum
                if m is None:  # a cumulative moving average
                    m = 1.0 / float(self.num_batches_tracked)
                self.running_mean.mul_(1 - m).add_(mean * m)
                self.running_var.mul_(1 - m).add_(var * m)
        shape = [1, -1] + [1] * (x.dim() - 2)
        biased = var * ((n - 1) / n)
        out = (x - mean.view(shape)) * torch.rsqrt(biased.view(shape) + self.eps)
        if self.affine:
            out = out * self.weight.view(shape) + self.bias.view(shape)
        return out


_GLOBAL_BN: dict[type, type] = {}


def _global_bn_class(cls: type) -> type:
    if cls not in _GLOBAL_BN:
        _GLOBAL_BN[cls] = type(f"Global{cls.__name__}", (GlobalBatchNorm, cls), {})
    return _GLOBAL_BN[cls]


_SWAPS = {T.BatchNorm: SyncBatchNormTransform, ActNorm: SyncActNorm}


def convert(module: nn.Module, device: torch.device | None = None) -> nn.Module:
    """Make every batch-statistics layer of ``module`` use the global batch (in place; see the
    module docstring). Returns ``module``."""
    cuda = device is not None and torch.device(device).type == "cuda"
    for name, child in list(module.named_children()):
        if type(child) in _SWAPS:
            child.__class__ = _SWAPS[type(child)]
        elif isinstance(child, nn.modules.batchnorm._BatchNorm) and not isinstance(
            child, nn.SyncBatchNorm | GlobalBatchNorm
        ):
            if cuda:
                setattr(module, name, nn.SyncBatchNorm.convert_sync_batchnorm(child))
            else:
                child.__class__ = _global_bn_class(type(child))
        else:
            convert(child, device)
    return module


def has_batch_statistics(module: nn.Module) -> bool:
    """Whether ``module`` holds a layer that normalises with batch statistics."""
    kinds = (T.BatchNorm, ActNorm, nn.modules.batchnorm._BatchNorm)
    return any(isinstance(m, kinds) for m in module.modules())

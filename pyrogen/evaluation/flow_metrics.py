"""A flow's exact test log-likelihood, in the model's space, in data space and in bits/dim.

For images the model sees z = logit(λ + (1 − 2λ) y) of dequantised pixels
y = (k + u)/L ∈ [0, 1)^D, so by the change of variables

    log p_[0,1](y) = log p_model(z) + log |det ∂z/∂y|       (``Dataset.log_det_jacobian``)
    bits/dim       = (−log p_[0,1](y) + D log L) / (D log 2)

the second line being the usual bound on the discrete pixels' negative log-likelihood in bits.
"""

from __future__ import annotations

from typing import Any

import torch

from pyrogen.evaluation.stats import mean_stderr
from pyrogen.evaluation.streams import EXAMPLES_PER_CHUNK, per_example


@torch.no_grad()
def flow_log_likelihood(
    flow: Any,
    x: torch.Tensor,
    dataset: Any,
    y: torch.Tensor | None = None,
    seed: int = 0,
    batch_size: int = EXAMPLES_PER_CHUNK,
) -> dict[str, dict[str, float]]:
    """Per-example exact log-likelihoods of the stored split ``x`` (mean ± standard error):
    ``exact_model_space``; ``exact`` (in the data set's stored space: the [0, 1] cube for
    images); and ``bits_per_dim`` for images. Each batch of ``batch_size`` examples draws its
    preprocessing noise from its own stream (the first from ``seed``); under ``torchrun`` the
    batches are shared among the processes, with the same result."""

    def chunk(start: int, stop: int, gen: torch.Generator) -> dict[str, torch.Tensor]:
        z = dataset.process(x[start:stop], gen)
        yb = None if y is None or not flow.conditional else y[start:stop]
        lp = flow.log_prob(z, yb)
        return {"model": lp, "data": lp + dataset.log_det_jacobian(z)}

    values = per_example(x.shape[0], chunk, seed, "flow", x.device, chunk=batch_size)
    model_lp, data_lp = values["model"], values["data"]
    out = {"exact": mean_stderr(data_lp)}
    if dataset.logit_lambda is not None:  # the model's space differs from the data's
        out["exact_model_space"] = mean_stderr(model_lp)
    if dataset.kind == "image" and dataset.model_levels:
        out["bits_per_dim"] = mean_stderr(dataset.bits_per_dim(data_lp))
    return out

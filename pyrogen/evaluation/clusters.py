"""Clusters of a mixture-prior VAE (the GMVAE): each example's component and the clustering
accuracy against class labels.

The component of x is read by Pyro's ``infer_discrete`` at temperature 0 (the MAP value of the
enumerated site ``c``) in the model conditioned on z = E_q[z | x], the guide's posterior mean:

    ĉ(x) = argmax_c p(c | z, x) = argmax_c π_c N(z; μ_c, diag σ_c²)

(p(x | z) does not depend on c). The clustering accuracy is the usual unsupervised one: each
cluster is mapped to the label most frequent among its examples, and the accuracy is the share
of examples whose cluster's label is their own,

    acc = (1/N) Σ_k max_y |{n : ĉ_n = k, y_n = y}|.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from pyro import poutine
from pyro.infer import infer_discrete

from pyrogen.models.vae import VAE, posterior_mean

__all__ = ["cluster_accuracy", "clusters", "majority_labels"]


def _mixture_vae(obj: Any) -> VAE:
    vae = obj if isinstance(obj, VAE) else getattr(obj, "model", None)  # a VAE or a run
    if not isinstance(vae, VAE) or vae.prior_kind != "mixture":
        raise ValueError(
            "clusters are the components of a mixture prior: this model is not a VAE with "
            "prior='mixture' (model.prior=mixture)"
        )
    return vae


@torch.no_grad()
def clusters(run: Any, x: torch.Tensor, batch_size: int = 1000, seed: int = 0) -> torch.Tensor:
    """Each example's most probable component ĉ(x), shape ``(N,)`` (int64), by
    ``infer_discrete(temperature=0)`` on the model conditioned on the guide's posterior mean.

    ``run`` is a trained run (``pyrogen.train`` / ``pyrogen.load``: ``x`` is then in its
    stored space and mapped to the model's by the run's preprocessing, dynamic binarisation
    drawing from a generator seeded with ``seed``) or a :class:`~pyrogen.models.vae.VAE`
    with ``prior="mixture"`` (``x`` in the model's space)."""
    vae = _mixture_vae(run)
    dataset = getattr(run, "dataset", None)
    if dataset is not None and hasattr(run, "learner"):
        x = dataset.process(x, torch.Generator().manual_seed(seed))
    was_training = vae.training
    vae.eval()
    out = []
    try:
        for xb in x.split(batch_size):
            z = posterior_mean(vae.guide, xb)
            conditioned = poutine.condition(vae.model, data={"z": z})
            # max_plate_nesting = 1 (the data plate): c is enumerated in dimension -2
            map_model = infer_discrete(conditioned, first_available_dim=-2, temperature=0)
            trace = poutine.trace(map_model).get_trace(xb)
            out.append(trace.nodes["c"]["value"].reshape(-1))
    finally:
        vae.train(was_training)
    return torch.cat(out).long()


def majority_labels(
    assigned: torch.Tensor, labels: torch.Tensor, num_clusters: int
) -> torch.Tensor:
    """For each cluster k, the label most frequent among its examples (the smallest such label
    on ties), shape ``(num_clusters,)``; −1 for a cluster without examples."""
    assigned, labels = assigned.long().cpu(), labels.long().cpu()
    num_labels = int(labels.max()) + 1 if labels.numel() else 1
    counts = torch.zeros(num_clusters, num_labels, dtype=torch.int64)
    counts.index_put_((assigned, labels), torch.ones_like(assigned), accumulate=True)
    major = counts.argmax(1)
    major[counts.sum(1) == 0] = -1
    return major


def cluster_accuracy(
    assigned: torch.Tensor, labels: torch.Tensor, num_clusters: int
) -> dict[str, Any]:
    """``{"mean", "stderr", "n", "mapping"}``: the share of examples whose cluster's majority
    label (:func:`majority_labels`) is their own label, its binomial standard error
    √(acc (1 − acc) / N), and the mapping cluster → label."""
    if assigned.shape != labels.shape or assigned.dim() != 1:
        raise ValueError(
            f"assigned clusters {tuple(assigned.shape)} and labels {tuple(labels.shape)} must "
            "be two vectors of one length"
        )
    n = int(assigned.numel())
    if n == 0:
        raise ValueError("cluster accuracy of no examples")
    if int(assigned.min()) < 0 or int(assigned.max()) >= num_clusters:
        raise ValueError(f"cluster indices must lie in 0..{num_clusters - 1}")
    mapping = majority_labels(assigned, labels, num_clusters)
    acc = (mapping[assigned.long().cpu()] == labels.long().cpu()).double().mean().item()
    return {
        "mean": acc,
        "stderr": math.sqrt(acc * (1.0 - acc) / n),
        "n": n,
        "mapping": mapping.tolist(),
    }

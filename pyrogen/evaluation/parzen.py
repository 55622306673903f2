"""Parzen-window log-likelihood, following the GAN paper's protocol (Goodfellow et al. 2014,
after Breuleux et al. 2011): fit a Gaussian kernel density on N samples s_i of a model,

    log p̂(x) = log (1/N) Σ_i N(x; s_i, σ² I)
             = logsumexp_i(−‖x − s_i‖² / (2σ²)) − log N − (D/2) log(2πσ²),

choose σ on validation data from a log-spaced grid (10 values in [0.1, 1] in the paper's
code, with 1,000 validation images and N = 10,000), and report the mean test
log-likelihood ± its standard error, in nats per example of the space the samples live in
(for images: pixels in [0, 1], as in the paper's table).

It scores any sampler, so VAEs, flows and GANs can be put on one number. It is a poor
estimator in high dimension (Theis et al. 2016): it mostly measures the window, and copies of
the training set score well. pyrogen reports exact and importance-sampled likelihoods
where a family has them.

Squared distances are computed once per batch of x as ‖x‖² + ‖s‖² − 2 x·s (one matrix
product) in float64 on the samples' device (CPU or GPU) and shared by every σ of the grid; the
log-sum-exp of each σ is taken about the nearest sample, −d²_min / (2σ²) + log Σ_i
exp(−(d²_i − d²_min) / (2σ²)), whose sum is at least 1. So a term below ε / (2N) (ε the
float64 epsilon; all N of them together below half an ulp of the sum) cannot change it: the
narrow windows of the grid, where nearly every term is that small, sum only the terms above
it, gathered once from the distance matrix, and a wide window that needs most terms floors
the rest at the smallest normal float (where ``exp`` takes a slow path). The sums equal the
dense ones to float64 rounding, and the σ grid costs little beside the matrix product
(``bench/bench_loglik.py``).

Example::

    >>> import torch
    >>> valid, test = torch.randn(200, 2), torch.randn(500, 2)
    >>> result = parzen_evaluate(lambda n: torch.randn(n, 2), valid, test, num_samples=5000)
    >>> sorted(result)
    ['mean', 'n', 'num_samples', 'sigma', 'stderr']
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch

from pyrogen.evaluation.stats import mean_stderr
from pyrogen.progress import line


def _flat64(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    return t.reshape(t.shape[0], -1).to(device=device, dtype=torch.float64)


@torch.no_grad()
def parzen_log_likelihoods(
    samples: torch.Tensor,
    x: torch.Tensor,
    sigmas: Sequence[float] | torch.Tensor,
    batch_size: int = 256,
) -> torch.Tensor:
    """log p̂_σ(x) of the Gaussian Parzen window on ``samples`` for every σ of a grid:
    shape ``(len(x), len(sigmas))``, float64, on the samples' device."""
    s = _flat64(samples, samples.device)
    x = _flat64(x, s.device)
    if x.shape[1] != s.shape[1]:
        raise ValueError(f"samples have {s.shape[1]} dimensions, x has {x.shape[1]}")
    sig = torch.as_tensor(sigmas, dtype=torch.float64, device=s.device).reshape(-1)
    n, d = s.shape
    s_norm = torch.linalg.vector_norm(s, dim=1)  # one pass, no N x D temporary
    x_norm = torch.linalg.vector_norm(x, dim=1)
    s_sq, x_sq, s_max = s_norm.square(), x_norm.square(), float(s_norm.max())
    const = math.log(n) + 0.5 * d * torch.log(2 * math.pi * sig**2)  # (S,)
    scale = -0.5 / sig**2
    floor = math.log(torch.finfo(torch.float64).tiny) + 1.0  # below: e^t is subnormal, slow
    # terms e^t with t below this sum to less than half an ulp of a sum that is at least 1
    negligible = math.log(torch.finfo(torch.float64).eps / (2 * n))
    widest_first = torch.argsort(scale, descending=True).tolist()
    out = []
    for start in range(0, x.shape[0], batch_size):
        xb, rows = x[start : start + batch_size], slice(start, start + batch_size)
        # ‖s‖² − 2 x·s: the row's ‖x‖² cancels from the gaps, so it joins only the nearest
        sq = torch.addmm(s_sq, xb, s.T, alpha=-2.0)
        nearest = sq.amin(1, keepdim=True)
        gaps = sq.sub_(nearest)  # ≥ 0, and 0 at the nearest sample, the largest kernel term
        largest = (float(x_norm[rows].max()) + s_max) ** 2  # no gap exceeds (‖x‖ + ‖s‖)²
        sums = _window_sums(gaps, scale.tolist(), widest_first, floor, negligible, largest)
        d2_min = nearest.add_(x_sq[rows, None]).clamp_min_(0.0)
        out.append(sums.log_().add_(d2_min * scale))
    return torch.cat(out) - const


def _window_sums(
    gaps: torch.Tensor,
    scales: list[float],
    widest_first: list[int],
    floor: float,
    cut: float,
    largest: float,
) -> torch.Tensor:
    """Σ_i e^{c Δ_i} per row of ``gaps`` Δ (B, N), 0 ≤ Δ ≤ ``largest``, for each c of
    ``scales`` (all < 0), shape (B, S). A window is summed over the whole row while more than
    half the row's terms matter (judged on its first 1,024 columns), e^{max(cΔ, floor)} (the
    floor only where c · ``largest`` is below it); once no more than half do (c Δ ≥ ``cut``),
    those are kept, and each narrower window sums only the kept terms that still matter."""
    sums = gaps.new_empty(gaps.shape[0], len(scales))
    kept = rows = term = None
    for j in widest_first:
        c = scales[j]
        if rows is None:
            probe = gaps[:, :1024]
            if 2 * int(torch.count_nonzero(probe < cut / c)) > probe.numel():
                term = torch.mul(gaps, c, out=torch.empty_like(gaps) if term is None else term)
                if c * largest < floor:
                    term.clamp_min_(floor)
                sums[:, j] = term.exp_().sum(1)
                continue
            flat = (gaps < cut / c).view(-1).nonzero().squeeze(1)
            kept, rows = gaps.view(-1)[flat], flat // gaps.shape[1]
        else:
            keep = kept < cut / c
            kept, rows = kept[keep], rows[keep]
        sums[:, j] = gaps.new_zeros(gaps.shape[0]).index_add_(0, rows, (kept * c).exp_())
    return sums


def parzen_log_likelihood(
    samples: torch.Tensor, x: torch.Tensor, sigma: float, batch_size: int = 256
) -> torch.Tensor:
    """Per-example log p̂(x) = log (1/N) Σ_i N(x; s_i, σ² I) of the Gaussian Parzen window on
    ``samples`` (N, ...), for ``x`` (M, ...): shape ``(M,)``, float64, on the samples'
    device; computed with logsumexp over batches of ``batch_size`` rows of x."""
    return parzen_log_likelihoods(samples, x, [float(sigma)], batch_size)[:, 0]


def select_sigma(
    samples: torch.Tensor, valid: torch.Tensor, sigmas: Sequence[float] | torch.Tensor
) -> float:
    """The σ of the grid with the best mean validation log-likelihood."""
    sigmas = torch.as_tensor(sigmas, dtype=torch.float64).reshape(-1)
    scores = parzen_log_likelihoods(samples, valid, sigmas).mean(0)
    return float(sigmas[int(scores.argmax())])


@torch.no_grad()
def parzen_evaluate(
    sampler: Callable[[int], torch.Tensor],
    valid: torch.Tensor,
    test: torch.Tensor,
    num_samples: int = 10_000,
    sigmas: Sequence[float] | torch.Tensor | None = None,
    num_valid: int = 1000,
    quiet: bool = True,
) -> dict[str, float]:
    """The paper's protocol for any sampler (``sampler(n)`` returns n samples): fit the
    window on ``num_samples`` samples, choose σ from ``sigmas`` (default
    ``torch.logspace(-1, 0, 10)``) on the first ``num_valid`` validation examples, and
    return the test ``mean`` ± ``stderr`` (nats per example) with ``n``, ``sigma`` and
    ``num_samples``."""
    sigmas = torch.logspace(-1, 0, 10) if sigmas is None else torch.as_tensor(sigmas)
    line(f"Parzen window: drawing {num_samples:,} samples", quiet)
    samples = sampler(num_samples)
    line(f"Parzen window: choosing sigma on {min(num_valid, len(valid)):,} examples", quiet)
    sigma = select_sigma(samples, valid[:num_valid], sigmas)
    line(f"Parzen window: scoring {len(test):,} test examples", quiet)
    result = mean_stderr(parzen_log_likelihood(samples, test, sigma))
    return {**result, "sigma": sigma, "num_samples": num_samples}

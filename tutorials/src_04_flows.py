# %% [markdown]
# # 4. Normalizing flows: exact likelihood by the change of variables
#
# A flow pushes $z \sim \mathcal N(0, I)$ through an invertible $G$ with a tractable Jacobian, so the
# density of $x = G(z)$ is exact:
#
# $$\log p_x(x) = \log p_z\big(G^{-1}(x)\big) - \log\big|\det J_G\big(G^{-1}(x)\big)\big|,$$
#
# and training is plain maximum likelihood. In pyrogen a flow is Pyro's
# `TransformedDistribution` of `TransformModule`s; as a Pyro model it has one observed site `x`, so
# maximum likelihood is the ELBO of a model without latent variables (an empty guide).

# %%
import os
import time
from pathlib import Path

import pyro
import torch
from IPython.display import Image, display

import pyrogen
from pyrogen.config import EvaluationConfig
from pyrogen.evaluation.plots import density_grid
from pyrogen.models.flow import Flow, log_prob_brute_force, maf, make_flow

QUICK = os.environ.get("PYROGEN_QUICK", "0") == "1"
# where runs and figures go (CI points this at a temporary folder)
RUNS = Path(os.environ.get("PYROGEN_TUTORIAL_RUNS", "runs")) / "tutorial_04"
EPOCHS = 3 if QUICK else 60
pyro.set_rng_seed(0)

# %% [markdown]
# ## `log_prob` is the change of variables
#
# For a small flow we can compute $G^{-1}$'s Jacobian with autograd and check the formula.

# %%
flow = Flow(maf(dim=3, num_layers=3, hidden_sizes=[16]), dim=3).eval()
x = torch.randn(4, 3)
print("log_prob          ", flow.log_prob(x).detach().numpy().round(4))
print("brute force (autograd Jacobian)", log_prob_brute_force(flow, x).detach().numpy().round(4))
assert torch.allclose(flow.log_prob(x), log_prob_brute_force(flow, x), atol=1e-4)

# %% [markdown]
# ## RealNVP, MAF and a neural spline flow on 2-D densities
#
# The architecture is one config key (`model.flow`). Each run leaves a density heat-map beside the
# data; the density is normalised, which a grid integral confirms.

# %%
runs = {}
for name in ["realnvp", "maf", "nsf_autoregressive"]:
    cfg = pyrogen.load_config(
        "../configs/flow_moons.yaml",
        [
            f"model.flow={name}",
            f"train.epochs={EPOCHS}",
            "train.device=cpu",
            "train.eval_every=0",
            f"output.dir={RUNS}",
            f"output.name={name}",
        ]
        + (["data.num_train=2000"] if QUICK else []),
    )
    runs[name] = pyrogen.train(cfg, quiet=True)
for name, run in runs.items():
    x_test = run.dataset.test
    with torch.no_grad():
        ll = run.model.log_prob(x_test).mean().item()
    dens, _, area = density_grid(run.model.log_prob, lim=4.0, resolution=300)
    print(
        f"{name:<20} test log-likelihood {ll:7.3f} nats   ∫ p dx on the grid = {dens.sum() * area:.3f}"
    )
    assert abs(dens.sum() * area - 1) < 0.05  # the central claim: the density integrates to 1
    display(Image(str(run.run_dir / "density.png"), width=450))

# %% [markdown]
# ## MAF vs IAF: the cost asymmetry
#
# Pyro's `AffineAutoregressive` computes $y_i = \mu_i(x_{<i}) + \sigma_i(x_{<i})\,x_i$ in one pass of a
# MADE network, but inverting it needs $D$ sequential passes. A **MAF** uses the layer in the
# direction that scores data (one pass per training step) and pays $D$ passes to sample; an
# **IAF** is the same layers the other way round: cheap samples, $D$ passes to score data. For
# density estimation on $D = 64$ digits:

# %%
ds = pyrogen.load_dataset(
    pyrogen.config.DataConfig(name="digits", dequantize=True, logit_lambda=0.05)
)
x = ds.process(ds.train[:128], torch.Generator().manual_seed(0))
timing, passes = {}, {}
for name in ["maf", "iaf"]:
    f = make_flow(name, 64, num_layers=2, hidden_sizes=[128])
    opt = torch.optim.Adam(f.parameters(), 1e-3)
    calls = []
    hooks = [  # count the MADE networks' forward passes while scoring one batch
        m.register_forward_hook(lambda *_, calls=calls: calls.append(1))
        for m in f.modules()
        if type(m).__name__ in ("AutoRegressiveNN", "ConditionalAutoRegressiveNN")
    ]
    f.log_prob(x)
    passes[name] = len(calls)
    for h in hooks:
        h.remove()
    start = time.perf_counter()
    for _ in range(3 if QUICK else 10):
        loss = -f.log_prob(x).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    step = (time.perf_counter() - start) / (3 if QUICK else 10)
    start = time.perf_counter()
    f.sample(1000)
    timing[name] = (step, time.perf_counter() - start)
for name, (step, sample) in timing.items():
    print(
        f"{name}: {passes[name]:3d} network passes to score a batch, {1000 * step:7.1f} ms per "
        f"training step, {1000 * sample:7.1f} ms per 1,000 samples"
    )
assert passes["iaf"] == 64 * passes["maf"]  # scoring data with an IAF is D passes per layer

# %% [markdown]
# ## Bits per dimension on digits
#
# Images are dequantised ($y = (k + u)/L$) and logit-transformed; the likelihood is reported back
# in the $[0, 1]$ space by adding the transform's log-determinant, and as bits per dimension,
# $(-\log p(y) + D \log L) / (D \log 2)$ (digits have $L = 17$ levels).

# %%
cfg = pyrogen.load_config(
    "../configs/flow_digits.yaml",
    [
        f"train.epochs={EPOCHS}",
        "train.device=cpu",
        f"output.dir={RUNS}",
        "output.name=digits",
        "train.eval_every=0",
    ],
)
run = pyrogen.train(cfg, quiet=True)
result = pyrogen.evaluate(run, EvaluationConfig(parzen_samples=2000))
for k, v in result["estimates"].items():
    print(f"{k:<20} {v['mean']:9.3f} ± {v['stderr']:.3f}")
display(Image(str(run.run_dir / "samples.png"), width=300))

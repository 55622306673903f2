# %% [markdown]
# # 1. Three families, one pattern: a base distribution and a differentiable transformation
#
# Every deep generative model in pyrogen is a **stochastic generation process**: draw
# $z \sim p_z(z)$ from an easy base distribution, push it through a learned differentiable
# transformation. The families differ in the transformation and, above all, in how they learn it:
#
# | family | generation | learning |
# |---|---|---|
# | GAN | $x = G(z)$ | adversarial: a discriminator is a binary classifier, its log-likelihood the loss |
# | VAE | $x_i \sim \mathcal N(\mu_i(z), \sigma_i^2(z))$ or Bernoulli | variational inference: maximise the ELBO with a guide $q_\phi(z \mid x)$ |
# | Flow | $x = G(z)$, $G$ invertible | maximum likelihood: $p_x(x) = p_z(G^{-1}(x))\,/\,\lvert\det J_G\rvert$ exactly |
#
# In code each is a Pyro model: `pyro.sample("z", ...)` inside `pyro.plate("data")`, then `x`.

# %%
import os
from pathlib import Path

import matplotlib.pyplot as plt
import pyro
import torch
from pyro import poutine

import pyrogen
from pyrogen.evaluation.plots import image_grid

QUICK = os.environ.get("PYROGEN_QUICK", "0") == "1"
# where runs and figures go (CI points this at a temporary folder)
RUNS = Path(os.environ.get("PYROGEN_TUTORIAL_RUNS", "runs")) / "tutorial_01"
pyro.set_rng_seed(0)

# %% [markdown]
# ## Train one of each on scikit-learn's 8×8 digits
#
# Three configs that differ only in their `model` (and learning) sections; `pyrogen.train` runs the
# same loop for all three.

# %%
budget = ["train.epochs=3"] if QUICK else []
runs = {}
for family, config in [("GAN", "gan_digits"), ("VAE", "vae_digits"), ("Flow", "flow_digits")]:
    cfg = pyrogen.load_config(
        f"../configs/{config}.yaml",
        [
            "train.device=cpu",
            "train.eval_every=0",
            f"output.dir={RUNS}",
            f"output.name={family}",
        ]
        + budget
        + ([] if QUICK or family != "GAN" else ["train.epochs=150"]),
    )
    runs[family] = pyrogen.train(cfg, quiet=True)

# %% [markdown]
# ## The same Pyro machinery traces each generation process
#
# `poutine.trace` records the sample sites of each model as it generates four digits.

# %%
for family, run in runs.items():
    trace = poutine.trace(run.model).get_trace(num_samples=4)
    sites = {
        name: tuple(site["value"].shape)
        for name, site in trace.nodes.items()
        if site["type"] == "sample" and name != "data"
    }
    print(f"{family:<5} {sites}")
    assert "x" in sites  # every family generates x in the data plate

# %% [markdown]
# ## Samples side by side

# %%
fig, axes = plt.subplots(1, 3, figsize=(12, 4))
for ax, (family, run) in zip(axes, runs.items(), strict=True):
    torch.manual_seed(0)
    x = run.sample(64)
    assert x.shape == (64, 64) and x.min() >= 0 and x.max() <= 1
    ax.imshow(image_grid(x, (1, 8, 8), nrow=8), cmap="gray", vmin=0, vmax=1)
    ax.set_title(family)
    ax.axis("off")
plt.show()

# %% [markdown]
# The VAE shows the decoder's mean $\mathbb E[x \mid z]$, smooth by construction; the GAN's samples
# are sharp where it has learned the data and wrong where it has not; the flow's samples, mapped
# back from logit space, are noisier because its exact likelihood spends capacity on every
# pixel's dequantisation noise. Tutorial 6 puts numbers on these differences.

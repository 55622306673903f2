# %% [markdown]
# # 6. Comparing the families on the same data
#
# `pyrogen compare CONFIG` trains one model per family on the same data with the same budget and
# evaluates them alike: parameters, training time, time to draw 1,000 samples, every
# log-likelihood estimator that applies (exact for flows, importance-sampled and ELBO for VAEs,
# Parzen window for all), and sample-quality scores that need no downloaded network: kernel MMD²
# and a Fréchet distance in the features of a classifier pyrogen trains on the same digits.

# %%
import math
import os
from pathlib import Path

import pyro
from IPython.display import Image, Markdown, display

from pyrogen.workflows.compare import compare, format_markdown
from pyrogen.workflows.compare_config import load_compare_config

QUICK = os.environ.get("PYROGEN_QUICK", "0") == "1"
# where runs and figures go (CI points this at a temporary folder)
RUNS = Path(os.environ.get("PYROGEN_TUTORIAL_RUNS", "runs")) / "tutorial_06"
pyro.set_rng_seed(0)

# %%
overrides = ["train.device=cpu"]
if QUICK:
    overrides += ["train.epochs=2", "evaluation.parzen_samples=1000", "evaluation.is_samples=50"]
cc = load_compare_config("../configs/compare_digits.yaml", overrides)
rows = compare(cc, RUNS)
display(Markdown(format_markdown(rows)))

# %% [markdown]
# How to read it:
#
# * **exact** (flow) is the log-density of dequantised digits on the $[0, 1]^{64}$ cube; **bits/dim**
#   is the same number in the units image papers use.
# * **IS** and **ELBO** (VAE): the VAE here has a Gaussian decoder on the same dequantised
#   intensities, so these are densities in the same space as the flow's exact value (the config
#   shares the data and its dequantisation between families; a density of the raw, discrete
#   intensities would be unbounded). The ELBO is always below the importance-sampled estimate.
# * **Parzen** fits a Gaussian window on 10,000 samples of *each* model: it ranks the models on one
#   scale, but in 64 dimensions it mostly measures the window (Theis et al., 2016); compare it with
#   the flow's exact value in the same row.
# * **MMD²** and **Fréchet** compare samples to test digits directly: lower is better.

# %%
by_family = {r["family"]: r for r in rows}
assert by_family["vae"]["elbo"]["mean"] <= by_family["vae"]["importance_sampled"]["mean"]
assert all(math.isfinite(r["parzen"]["mean"]) and r["mmd2"] == r["mmd2"] for r in rows)
display(Image(str(RUNS / "samples.png"), width=800))

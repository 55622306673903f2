# %% [markdown]
# # 2. The variational autoencoder, as a Pyro model/guide pair
#
# A VAE is the generative process
#
# $$z \sim \mathcal N(0, I), \qquad x_i \mid z \sim \mathrm{Bernoulli}\big(\sigma(f_i(z; \theta))\big)$$
#
# with a decoder network $f$. Its marginal likelihood $p_\theta(x) = \int p(z)\, p_\theta(x\mid z)\,dz$ is
# intractable, so it is learned by **variational inference**: an amortised guide
# $q_\phi(z \mid x) = \mathcal N(\mu_\phi(x), \operatorname{diag}\sigma^2_\phi(x))$ (the encoder) gives the
# evidence lower bound
#
# $$\mathrm{ELBO}(\theta, \phi; x) = \mathbb E_{q_\phi(z\mid x)}\big[\log p_\theta(x, z) - \log q_\phi(z \mid x)\big]
#  = \log p_\theta(x) - \mathrm{KL}\big(q_\phi(z\mid x)\,\|\,p_\theta(z \mid x)\big) \le \log p_\theta(x),$$
#
# maximised in $\theta$ and $\phi$ together with reparameterised gradients
# ($z = \mu_\phi(x) + \sigma_\phi(x) \odot \varepsilon$, $\varepsilon \sim \mathcal N(0, I)$).
#
# In pyrogen the VAE's `model` and the guide are plain Pyro programs, so Pyro's own tools work
# on them unchanged. Set `PYROGEN_QUICK=1` to run this notebook in a few seconds (CI does).

# %%
import os
from pathlib import Path

import matplotlib.pyplot as plt
import pyro
import torch
from IPython.display import Image, display
from pyro import poutine
from pyro.infer import SVI, Trace_ELBO

import pyrogen
from pyrogen.build import build
from pyrogen.evaluation.loglik import elbo_and_importance_log_likelihood

QUICK = os.environ.get("PYROGEN_QUICK", "0") == "1"
# where runs and figures go (CI points this at a temporary folder)
RUNS = Path(os.environ.get("PYROGEN_TUTORIAL_RUNS", "runs")) / "tutorial_02"
EPOCHS = 2 if QUICK else 60
pyro.set_rng_seed(0)

# %% [markdown]
# ## The model and the guide are Pyro programs
#
# `configs/vae_digits.yaml` describes a VAE on scikit-learn's 8×8 digits (embedded, no
# download), dynamically binarised. `build` turns the config into the data set and a learner
# holding the model and the guide.

# %%
cfg = pyrogen.load_config("../configs/vae_digits.yaml", ["train.device=cpu"])
dataset, learner = build(cfg)
vae = learner.model  # a VAE: vae.model and vae.guide are the Pyro programs
x = dataset.process(dataset.train[:5], torch.Generator().manual_seed(0))
guide_trace = poutine.trace(vae.guide).get_trace(x)
trace = poutine.trace(poutine.replay(vae.model, trace=guide_trace)).get_trace(x)
print(trace.format_shapes())

# %% [markdown]
# ## Training with plain `SVI` and `Trace_ELBO`
#
# Nothing pyrogen-specific is needed to train it: hand `vae.model` and `vae.guide` to `SVI` with a
# `pyro.optim` optimiser, as in Pyro's own VAE tutorial. pyrogen's model and guide announce their
# parameters as Pyro param sites (the statement Pyro's `PyroModule` makes in its local-parameter
# mode), so `SVI` sees and updates them, without putting anything in Pyro's global param store.

# %%
svi = SVI(vae.model, vae.guide, pyro.optim.Adam({"lr": 1e-3}), Trace_ELBO())
gen = torch.Generator().manual_seed(0)
curve = []
for _epoch in range(EPOCHS // 2 or 1):
    total = 0.0
    for idx in torch.randperm(len(dataset.train), generator=gen).split(64):
        total += svi.step(dataset.process(dataset.train[idx], gen))
    curve.append(-total / len(dataset.train))
plt.plot(curve)
plt.xlabel("epoch")
plt.ylabel("training ELBO (nats / digit)")
plt.show()
assert curve[-1] > curve[0] or QUICK  # SVI improved the bound

# %% [markdown]
# ## The same model trained from the config
#
# `pyrogen.train` runs the same ELBO through Pyro's `ELBOModule` with one torch optimiser,
# saves checkpoints, metrics and figures into a run folder.

# %%
cfg = pyrogen.load_config(
    "../configs/vae_digits.yaml",
    [
        f"train.epochs={EPOCHS}",
        "train.device=cpu",
        "train.eval_every=5",
        f"output.dir={RUNS}",
        "output.name=mean_field",
    ],
)
run = pyrogen.train(cfg, quiet=True)
display(Image(str(run.run_dir / "samples.png"), width=300))
display(Image(str(run.run_dir / "reconstructions.png"), width=400))

# %% [markdown]
# ## The ELBO is a lower bound; importance sampling closes the gap
#
# With $K$ samples $z_k \sim q_\phi(z\mid x)$,
# $\log \frac1K \sum_k p_\theta(x, z_k)/q_\phi(z_k\mid x)$ is again a lower bound on
# $\log p_\theta(x)$, tighter as $K$ grows (Burda et al.'s IWAE bound), and consistent: it converges
# to $\log p_\theta(x)$. The IWAE paper uses $K = 5000$.

# %%
K = 100 if QUICK else 5000
x_test = dataset.process(dataset.test, torch.Generator().manual_seed(1))
pyro.set_rng_seed(1)
elbo, logp = elbo_and_importance_log_likelihood(run.model.model, run.model.guide, x_test, K)
print(f"test ELBO        {elbo.mean():8.3f} nats / digit")
print(f"test log p(x) IS {logp.mean():8.3f} nats / digit   (K = {K})")
print(f"gap (mean KL(q || posterior)) {logp.mean() - elbo.mean():.3f} nats")
assert elbo.mean() <= logp.mean()  # the central claim: ELBO <= log p(x)

# %% [markdown]
# ## Swapping the guide and the estimator from the config
#
# An inverse autoregressive flow guide (Kingma et al., 2016) makes $q_\phi(z\mid x)$ more flexible
# than a diagonal Gaussian, so the gap should shrink. Only the config changes: `guide.name=iaf`.
# The estimator is swapped the same way, e.g. `elbo.name=renyi elbo.alpha=0 elbo.num_particles=5`
# trains on the IWAE bound.

# %%
results = {}
for name, overrides in {
    "diagonal_normal + trace": [],
    "iaf + trace": ["guide.name=iaf", "guide.num_flows=2"],
    "diagonal_normal + IWAE (renyi α=0, K=5)": [
        "elbo.name=renyi",
        "elbo.alpha=0",
        "elbo.num_particles=5",
        "elbo.vectorize_particles=true",
    ],
}.items():
    c = pyrogen.load_config(
        "../configs/vae_digits.yaml",
        [
            f"train.epochs={EPOCHS}",
            "train.device=cpu",
            "train.eval_every=0",
            f"output.dir={RUNS}",
            f"output.name={len(results)}",
            *overrides,
        ],
    )
    r = pyrogen.train(c, quiet=True)
    pyro.set_rng_seed(2)
    e, lp = elbo_and_importance_log_likelihood(r.model.model, r.model.guide, x_test, K)
    results[name] = (e.mean().item(), lp.mean().item())
print(f"{'guide + estimator':<42}{'ELBO':>10}{'IS log p(x)':>14}{'gap':>8}")
for name, (e, lp) in results.items():
    print(f"{name:<42}{e:>10.3f}{lp:>14.3f}{lp - e:>8.3f}")
assert all(e <= lp for e, lp in results.values())

# %% [markdown]
# ## A two-dimensional latent space: the learned manifold
#
# With `model.latent_dim=2` the decoder's means over a grid of $z$ (evenly spaced quantiles of
# the prior) show the manifold the VAE learned, as in Kingma & Welling's Figure 4.

# %%
c = pyrogen.load_config(
    "../configs/vae_digits.yaml",
    [
        f"train.epochs={EPOCHS}",
        "train.device=cpu",
        "model.latent_dim=2",
        "train.eval_every=0",
        f"output.dir={RUNS}",
        "output.name=latent2",
    ],
)
r2 = pyrogen.train(c, quiet=True)
display(Image(str(r2.run_dir / "manifold.png"), width=500))

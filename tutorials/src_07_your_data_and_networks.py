# %% [markdown]
# # 7. Your own data, your own networks
#
# pyrogen's models are built from plain arguments, as zuko's flows are: a VAE from an encoder, a
# decoder and a likelihood; a flow from a list of Pyro transforms; a GAN from a generator and a
# discriminator. The configs build these same constructors, and a data set is a value: a file
# (`.csv`, `.npy`, `.npz`, `.pt`, a folder of images) or an array passed from Python.
#
# This notebook takes a table of measurements from a `.csv` file, fits a model to it from the
# command-line config path, then writes the networks by hand and trains them with pyrogen's
# learners and with plain Pyro `SVI`.

# %%
import os
import tempfile
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pyro
import pyro.distributions.transforms as T
import torch
from pyro.infer import SVI, Trace_ELBO
from torch import nn

import pyrogen
from pyrogen import VAE, AdversarialLearner, Flow, GaussianLikelihood, VariationalLearner
from pyrogen.models.flow_layers import PermuteLayer

QUICK = os.environ.get("PYROGEN_QUICK", "0") == "1"
RUNS = Path(os.environ.get("PYROGEN_TUTORIAL_RUNS", "runs")) / "tutorial_07"
STEPS = 300 if QUICK else 3000
torch.set_num_threads(1)  # small networks: one thread is fastest (see the README)
pyro.set_rng_seed(0)

# %% [markdown]
# ## A table of measurements in a `.csv` file
#
# Two measured quantities of some process that has two regimes, with a header row. Any table of
# numbers works the same way: one example a row, one variable a column.

# %%
rng = np.random.default_rng(0)
n = 3000
regime = rng.random(n) < 0.4
t = rng.normal(size=n)
table = np.where(
    regime[:, None],
    np.stack([2.0 + 0.3 * t, 1.0 + t**2 * 0.5 + 0.1 * rng.normal(size=n)], 1),
    np.stack([-1.0 + 0.8 * t, -0.5 + 0.4 * t + 0.2 * rng.normal(size=n)], 1),
)
folder = Path(tempfile.mkdtemp())
csv_path = folder / "measurements.csv"
np.savetxt(csv_path, table, delimiter=",", header="pressure,flow_rate", comments="", fmt="%.5f")
print(csv_path.read_text().splitlines()[:3])

# %% [markdown]
# ## From the config: `data.name=array data.path=...`
#
# Any config trains on the file by pointing `data.path` at it (on the command line:
# `pyrogen train configs/flow_moons.yaml data.name=array data.path=measurements.csv`). pyrogen
# reads the header, splits the rows into train / valid / test with the run's seed
# (`data.valid_fraction`, `data.test_fraction`), and `data.standardize=true` fits the flow to
# standardised columns while reporting densities in the table's own units.

# %%
cfg = pyrogen.load_config(
    "../configs/flow_moons.yaml",
    [
        "data.name=array",
        f"data.path={csv_path}",
        "data.standardize=true",
        f"train.max_steps={STEPS}",
        "train.eval_every=0",
        "train.device=cpu",
        f"output.dir={RUNS}",
        "output.name=from_config",
    ],
)
run = pyrogen.train(cfg, quiet=True)
print(run.dataset)
result = pyrogen.evaluate(run, pyrogen.config.EvaluationConfig(parzen_samples=2000))
print(f"test log-likelihood: {result['estimates']['exact']['mean']:.3f} nats per row")
print("the run recorded the file's checksum:", run.cfg.data.checksum[:23], "...")

# %% [markdown]
# ## A flow from your own list of transforms
#
# `Flow(transforms, dim)` takes Pyro `TransformModule`s in the generative direction z → x. Here:
# neural spline couplings (Durkan et al.) with a permutation between them. Training is maximum
# likelihood through `VariationalLearner` (the ELBO of a model without latent variables).

# %%
x_train = run.dataset.process(run.dataset.train)  # the standardised table, as the run saw it
x_test = run.dataset.process(run.dataset.test)
layers = []
for i in range(4):
    layers.append(T.spline_coupling(2, hidden_dims=[32, 32], count_bins=8, bound=4.0))
    if i < 3:
        layers.append(PermuteLayer(torch.tensor([1, 0])))
my_flow = Flow(layers, dim=2)
learner = VariationalLearner(my_flow, lr=3e-3)
g = torch.Generator().manual_seed(0)
for _step in range(STEPS):
    learner.step(x_train[torch.randint(0, len(x_train), (256,), generator=g)])
my_flow.eval()
with torch.no_grad():
    ll = my_flow.log_prob(x_test).mean().item()
print(f"your spline flow: {ll:.3f} nats per row (standardised space)")
assert ll > -2.84  # better than a Gaussian, whose entropy is ~2.84 nats in two standardised dims

# %% [markdown]
# ## A VAE from your own encoder and decoder, trained with plain Pyro `SVI`
#
# `VAE(encoder, decoder, latent_dim, event_shape, likelihood)`: the encoder maps x to the guide's
# parameters (2 × latent_dim numbers: μ and the raw σ of a diagonal Gaussian), the decoder maps z
# to the likelihood's (here a Gaussian with σ from the decoder: 2 numbers per dimension). Its
# `model` and `guide` are Pyro programs, so Pyro's own `SVI` with `pyro.optim` trains it.

# %%
latent = 2
encoder = nn.Sequential(nn.Linear(2, 64), nn.ELU(), nn.Linear(64, 2 * latent))
decoder = nn.Sequential(nn.Linear(latent, 64), nn.ELU(), nn.Linear(64, 2 * 2))
vae = VAE(encoder, decoder, latent_dim=latent, event_shape=(2,), likelihood=GaussianLikelihood(2))
svi = SVI(vae.model, vae.guide, pyro.optim.Adam({"lr": 3e-3}), Trace_ELBO())
losses = []
for _step in range(STEPS):
    batch = x_train[torch.randint(0, len(x_train), (256,), generator=g)]
    losses.append(svi.step(batch) / len(batch))
print(f"SVI loss (−ELBO per row): {np.mean(losses[:20]):.2f} -> {np.mean(losses[-20:]):.2f}")
assert np.mean(losses[-20:]) < np.mean(losses[:20])

# %% [markdown]
# ## A GAN from your own generator and discriminator

# %%
generator = nn.Sequential(
    nn.Linear(2, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 2)
)
discriminator = nn.Sequential(nn.Linear(2, 64), nn.LeakyReLU(0.2), nn.Linear(64, 1))
gan = pyrogen.GAN(generator, discriminator, latent_dim=2, event_shape=(2,))
adversarial = AdversarialLearner(gan, "non_saturating", lr=1e-3, betas=(0.5, 0.999), r1_penalty=0.1)
for _step in range(STEPS):
    adversarial.step(x_train[torch.randint(0, len(x_train), (256,), generator=g)])

# %% [markdown]
# ## The three models against the held-out rows
#
# Samples are mapped back to the table's units (`dataset.to_data_space`).

# %%
to_units = run.dataset.to_data_space
with torch.no_grad():
    samples = {
        "flow (config)": run.sample(2000),
        "your spline flow": to_units(my_flow.sample(2000)),
        "your VAE (SVI)": to_units(vae.sample(2000)),
        "your GAN": to_units(gan.sample(2000)),
    }
test = run.dataset.test.numpy()
fig, axes = plt.subplots(1, 4, figsize=(16, 4), sharex=True, sharey=True)
for ax, (name, s) in zip(axes, samples.items(), strict=True):
    ax.scatter(test[:, 0], test[:, 1], s=3, alpha=0.3, label="held-out rows")
    ax.scatter(s[:, 0], s[:, 1], s=3, alpha=0.3, label="samples")
    ax.set_title(name)
    ax.set_xlabel("pressure")
axes[0].set_ylabel("flow rate")
axes[0].legend(loc="lower right", markerscale=4)
plt.show()

# %% [markdown]
# # 5. Generative adversarial networks
#
# A GAN's generative process is $z \sim p_z$, $x = G(z)$, with no likelihood to maximise. Instead a
# **discriminator** $D(x) = P(\text{data} \mid x)$ is trained as a binary classifier (data labelled 1,
# samples labelled 0), and its log-likelihood is the value of a two-player game
#
# $$V(D, G) = \mathbb E_{p_\text{data}}[\log D(x)] + \mathbb E_{p_z}[\log(1 - D(G(z)))].$$
#
# For a fixed $G$ the best discriminator is $D^*(x) = p_\text{data}(x)/(p_\text{data}(x) + p_g(x))$
# (Goodfellow et al.'s Proposition 1), and at the global optimum $p_g = p_\text{data}$, $D^* = \tfrac12$
# and $V = -\log 4$.

# %%
import math
import os
from pathlib import Path

import pyro
import torch
from IPython.display import Image, display
from torch import nn

import pyrogen
from pyrogen.data.toy import eight_gaussian_centres
from pyrogen.evaluation.parzen import parzen_evaluate
from pyrogen.registry import GAN_LOSSES

QUICK = os.environ.get("PYROGEN_QUICK", "0") == "1"
# where runs and figures go (CI points this at a temporary folder)
RUNS = Path(os.environ.get("PYROGEN_TUTORIAL_RUNS", "runs")) / "tutorial_05"
pyro.set_rng_seed(0)

# %% [markdown]
# ## The discriminator approaches $D^*$
#
# Fix $p_\text{data} = \mathcal N(1, 0.5^2)$ and $p_g = \mathcal N(-0.5, 1)$ and train only $D$ with
# pyrogen's loss.

# %%
p_data, p_g = torch.distributions.Normal(1.0, 0.5), torch.distributions.Normal(-0.5, 1.0)
loss = GAN_LOSSES.get("non_saturating")()
torch.manual_seed(0)
d = nn.Sequential(nn.Linear(1, 32), nn.Tanh(), nn.Linear(32, 32), nn.Tanh(), nn.Linear(32, 1))
opt = torch.optim.Adam(d.parameters(), lr=3e-3)
for _ in range(300 if QUICK else 2000):
    value = loss.d_loss(d(p_data.sample((512, 1))).squeeze(-1), d(p_g.sample((512, 1))).squeeze(-1))
    opt.zero_grad()
    value.backward()
    opt.step()
x = torch.linspace(-2, 2, 9)[:, None]
with torch.no_grad():
    learned = torch.sigmoid(d(x)).squeeze(-1)
pd, pg = p_data.log_prob(x[:, 0]).exp(), p_g.log_prob(x[:, 0]).exp()
for xi, a, b in zip(x[:, 0], learned, pd / (pd + pg), strict=True):
    print(f"x = {xi:5.2f}   D(x) = {a:.3f}   D*(x) = {b:.3f}")
assert (learned - pd / (pd + pg)).abs().max() < (0.15 if QUICK else 0.06)

# %% [markdown]
# ## Minimax vs non-saturating generator loss
#
# In terms of the logit $l = \text{logit}\, D(G(z))$, the minimax generator minimises
# $\log(1 - \sigma(l))$, whose gradient $-\sigma(l)$ vanishes when $D$ confidently rejects samples
# ($l \ll 0$), which is how training starts. The non-saturating loss $-\log \sigma(l)$ has gradient
# $-\sigma(-l) \approx -1$ there.

# %%
l = torch.linspace(-10, 2, 7, requires_grad=True)
for name in ("minimax", "non_saturating"):
    (g,) = torch.autograd.grad(GAN_LOSSES.get(name)().g_loss(l) * len(l), l)
    print(f"{name:<15}", " ".join(f"{v:8.4f}" for v in g.tolist()))
print("logit          ", " ".join(f"{v:8.1f}" for v in l.tolist()))
(g_mm,) = torch.autograd.grad(GAN_LOSSES.get("minimax")().g_loss(l[:1]), l)
assert abs(g_mm[0]) < 1e-3  # vanishes at l = -10

# %% [markdown]
# ## Mode coverage on eight Gaussians
#
# `configs/gan_toy.yaml` trains a GAN on eight Gaussians on a circle; we count the modes with
# samples within 3σ of their centre.

# %%
cfg = pyrogen.load_config(
    "../configs/gan_toy.yaml",
    ["train.device=cpu", f"output.dir={RUNS}", "output.name=toy", "train.eval_every=0"]
    + (["train.epochs=5"] if QUICK else []),
)
run = pyrogen.train(cfg, quiet=True)
samples = run.sample(5000)
near = torch.cdist(samples, eight_gaussian_centres()).min(1)
good = near.values < 3 * 0.02
modes = torch.bincount(near.indices[good], minlength=8)
print("samples per mode:", modes.tolist(), f"  on a mode: {good.float().mean():.0%}")
display(Image(str(run.run_dir / "samples.png"), width=350))
assert QUICK or (modes > 0).all()

# %% [markdown]
# ## Parzen-window evaluation, and its limits
#
# A GAN has no likelihood, so the GAN paper fits a Gaussian Parzen window on generated samples and
# reports the test log-likelihood, choosing σ on validation data. The same function scores any
# sampler; but it is a poor estimator in high dimension (Theis et al., 2016): on 2-D data it agrees
# with an exact likelihood, on images it mostly measures the window. Compare with the exact
# likelihood of a flow trained on the same data:

# %%
valid, test = run.dataset.valid[:1000], run.dataset.test[:2000]
sigmas = torch.logspace(-2.5, 0, 12)
gan_parzen = parzen_evaluate(run.sample, valid, test, 2000 if QUICK else 10_000, sigmas)
flow_cfg = pyrogen.load_config(
    "../configs/flow_moons.yaml",
    [
        "data.name=eight_gaussians",
        "train.device=cpu",
        f"output.dir={RUNS}",
        "output.name=flow",
        "train.eval_every=0",
    ]
    + (["train.epochs=3"] if QUICK else ["train.epochs=30"]),
)
flow_run = pyrogen.train(flow_cfg, quiet=True)
flow_parzen = parzen_evaluate(flow_run.sample, valid, test, 2000 if QUICK else 10_000, sigmas)
with torch.no_grad():
    exact = flow_run.model.log_prob(test).mean().item()
print(
    f"GAN  Parzen {gan_parzen['mean']:.2f} ± {gan_parzen['stderr']:.2f} (σ = {gan_parzen['sigma']:.3f})"
)
print(
    f"flow Parzen {flow_parzen['mean']:.2f} ± {flow_parzen['stderr']:.2f} (σ = {flow_parzen['sigma']:.3f}), exact {exact:.2f}"
)
assert math.isfinite(gan_parzen["mean"])

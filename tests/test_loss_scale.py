"""The scale of the numbers a user compares: the learner's ``loss`` is per example (−ELBO
averaged over the batch, in nats), while Pyro's ``SVI.step`` and ``SVI.evaluate_loss``
return the batch's sum, so the two differ by the batch size and nothing else."""

from __future__ import annotations

import pyro
import pytest
import torch
from pyro.infer import SVI, Trace_ELBO
from torch import nn

from pyrogen import VAE, VariationalLearner

pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_vae() -> VAE:
    torch.manual_seed(0)
    enc = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.Tanh(), nn.Linear(32, 2 * 4))
    dec = nn.Sequential(nn.Linear(4, 32), nn.Tanh(), nn.Linear(32, 64))
    return VAE(enc, dec, latent_dim=4, event_shape=(64,), likelihood="bernoulli")


def test_the_learners_loss_is_pyros_batch_sum_divided_by_the_batch_size():
    vae = tiny_vae()
    x = torch.bernoulli(torch.rand(32, 64, generator=torch.Generator().manual_seed(0)))
    svi = SVI(vae.model, vae.guide, pyro.optim.Adam({"lr": 1e-3}), Trace_ELBO())
    learner = VariationalLearner(vae, Trace_ELBO(max_plate_nesting=1), lr=1e-3)

    # the same seed gives the same draw z ~ q(z | x) in both estimates of the ELBO, so they
    # agree to float rounding: Pyro's numbers are the batch's sum (svi.step reports the loss
    # before its update, like evaluate_loss) ...
    pyro.set_rng_seed(1)
    pyro_sum = svi.evaluate_loss(x)
    pyro.set_rng_seed(1)
    assert svi.step(x) == pytest.approx(pyro_sum, rel=1e-6)

    # ... and the learner's is that sum over the batch size, at the parameters SVI left
    pyro.set_rng_seed(2)
    pyro_sum = svi.evaluate_loss(x)
    pyro.set_rng_seed(2)
    per_example = learner.step(x)["loss"]
    assert per_example * x.shape[0] == pytest.approx(pyro_sum, rel=1e-6)
    assert per_example > 0 and pyro_sum / per_example == pytest.approx(32, rel=1e-6)

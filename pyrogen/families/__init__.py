"""The family table: one object per family (VAE, flow, GAN, a user's
Pyro program, the semi-supervised VAE) that builds its model and learner
from a config, evaluates its own log-likelihoods and draws its own figures.

=======  ===============================  =====================================================
family   model (plain constructor)        learner
=======  ===============================  =====================================================
vae      ``VAE(encoder, decoder, ...)``   :class:`~pyrogen.inference.variational.
                                          VariationalLearner` (one of Pyro's ELBO estimators)
flow     ``Flow(transforms, dim)``        the same learner with an empty guide (maximum
                                          likelihood is the ELBO of a model without latents)
gan      ``GAN(generator, discr., ...)``  :class:`~pyrogen.inference.adversarial.
                                          AdversarialLearner` (Goodfellow et al., Alg. 1)
program  ``PyroProgram(model, guide)``     the variational learner; the pair is given from
                                          Python (``pyrogen.train(cfg, model=, guide=)``)
ssvae    ``SSVAE(...)`` (M2)              the semi-supervised learner: TraceEnum_ELBO with y
                                          summed out where unlabelled, + α log q(y|x)
=======  ===============================  =====================================================

Example::

    >>> from pyrogen.families import FAMILIES
    >>> sorted(FAMILIES)
    ['flow', 'gan', 'program', 'ssvae', 'vae']
"""

from __future__ import annotations

from pyrogen.families.base import Family
from pyrogen.families.flow import FlowFamily
from pyrogen.families.gan import GANFamily
from pyrogen.families.program import ProgramFamily
from pyrogen.families.ssvae import SSVAEFamily
from pyrogen.families.vae import VAEFamily

FAMILIES: dict[str, Family] = {
    f.name: f for f in (VAEFamily(), FlowFamily(), GANFamily(), ProgramFamily(), SSVAEFamily())
}


def family_of(cfg) -> Family:
    """The family object of a config (``FAMILIES[cfg.model.family]``)."""
    return FAMILIES[cfg.model.family]


__all__ = ["FAMILIES", "Family", "family_of"]

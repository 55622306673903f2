"""The semi-supervised VAE M2 (Kingma, Rezende, Mohamed & Welling 2014, "Semi-supervised
learning with deep generative models", §2.2 and §3.1.2).

Generative process, for each example::

    y ~ Cat(1/K)            (the class, observed where known)
    z ~ N(0, I)             (the style)
    x ~ Bernoulli(σ(decoder(z, y)))

Guide: q(y | x) = Cat(softmax(classifier(x))) and q(z | x, y) = N(μ(x, y), σ(x, y)).

One batch may mix labelled and unlabelled rows: ``y = -1`` marks an unlabelled row. The
rows are split into two sibling plates: in the ``unlabelled`` plate y is a latent site that
the guide marks ``infer={"enumerate": "parallel"}``, so Pyro's ``TraceEnum_ELBO`` sums it out
exactly,

    U(x) = Σ_y q(y|x) [ L(x, y) ] + H(q(y|x)),
    L(x, y) = E_q(z|x,y)[ log p(x|y,z) + log p(y) + log p(z) − log q(z|x,y) ];

in the ``labelled`` plate y is observed and only z is sampled (the bound L(x, y)). The
classification term of M2's objective J^α = Σ_l [L(x,y) + α log q(y|x)] + Σ_u U(x) is a
``pyro.factor`` (``y_aux``) in the labelled plate: α log q(y|x) is a function of the guide's
classifier only, so putting it in the model adds exactly α·Σ_l log q(y|x) to the ELBO in the
one estimator call (Pyro's example runs it as a second SVI with its own step).
"""

from __future__ import annotations

from collections.abc import Sequence

import pyro
import pyro.distributions as dist
import torch
import torch.nn.functional as F
from torch import nn

MIN_SCALE = 1e-4


def _cat(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``[a, b]`` along the last dimension, the leading dimensions broadcast (an enumerated
    y has shape ``(K, 1, K)`` against ``(N, D)`` images)."""
    shape = torch.broadcast_shapes(a.shape[:-1], b.shape[:-1])
    return torch.cat([a.expand(*shape, a.shape[-1]), b.expand(*shape, b.shape[-1])], -1)


def split_batch(
    x: torch.Tensor, y: torch.Tensor | None, num_classes: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(unlabelled x, labelled x, their one-hot y) of a batch whose ``y = -1`` marks the
    unlabelled rows (``y=None``: all unlabelled); images are flattened."""
    x = x.reshape(x.shape[0], -1)
    if y is None:
        return x, x[:0], x.new_zeros(0, num_classes)
    known = y >= 0
    return x[~known], x[known], F.one_hot(y[known], num_classes).to(x.dtype)


class SSVAEGuide(nn.Module):
    """q(y | x) q(z | x, y): ``classifier`` gives the logits of q(y | x), ``encoder`` maps
    ``[x, onehot(y)]`` to μ and the raw σ of q(z | x, y) (σ = softplus(raw) + 1e-4);
    ``labelled_weight`` scales the labelled plate as the model's does."""

    def __init__(
        self,
        classifier: nn.Module,
        encoder: nn.Module,
        num_classes: int,
        labelled_weight: float = 1.0,
    ) -> None:
        super().__init__()
        self.classifier, self.encoder, self.num_classes = classifier, encoder, int(num_classes)
        self.labelled_weight = float(labelled_weight)

    def class_logits(self, x: torch.Tensor) -> torch.Tensor:
        """The logits of q(y | x), shape ``(N, K)``."""
        return self.classifier(x.reshape(x.shape[0], -1))

    def posterior_z(self, x: torch.Tensor, y: torch.Tensor) -> dist.Distribution:
        """q(z | x, y) (the leading dimensions of ``x`` and ``y`` broadcast)."""
        loc, raw = self.encoder(_cat(x, y)).chunk(2, dim=-1)
        return dist.Normal(loc, F.softplus(raw) + MIN_SCALE).to_event(1)

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None) -> None:
        """q(y | x) q(z | x, y) on the unlabelled rows (y enumerated in parallel), q(z | x, y)
        on the labelled ones; the labelled plate is scaled like the model's."""
        xu, xl, yl = split_batch(x, y, self.num_classes)
        if xu.shape[0]:
            with pyro.plate("unlabelled", xu.shape[0]):
                q_y = dist.OneHotCategorical(logits=self.class_logits(xu))
                yu = pyro.sample("y_u", q_y, infer={"enumerate": "parallel"})
                pyro.sample("z_u", self.posterior_z(xu, yu))
        if xl.shape[0]:
            with (
                pyro.plate("labelled", xl.shape[0]),
                pyro.poutine.scale(scale=self.labelled_weight),
            ):
                pyro.sample("z_l", self.posterior_z(xl, yl))


class SSVAE(nn.Module):
    """M2: p(y) p(z) p(x | y, z) with the guide q(y | x) q(z | x, y) (see the module).

    Args:
        classifier: ``x (N, D) -> (N, K)`` logits of q(y | x).
        encoder: ``[x, onehot(y)] (…, D + K) -> (…, 2 Z)``: μ and the raw σ of q(z | x, y)
            (σ = softplus(raw) + 1e-4).
        decoder: ``[z, onehot(y)] (…, Z + K) -> (…, D)``: the Bernoulli logits of p(x | y, z).
        latent_dim: Z; num_classes: K; event_shape: the shape of one example.
        alpha: α, the weight of log q(y | x) per labelled example (0: the plain M2 ELBO).
        labelled_weight: the scale of the labelled plate (its L and α terms) relative to the
            unlabelled one, so that a step with B unlabelled and B_l labelled rows estimates
            the objective over N_u and N_l examples without bias: (N_l / B_l) / (N_u / B).
    """

    def __init__(
        self,
        classifier: nn.Module,
        encoder: nn.Module,
        decoder: nn.Module,
        latent_dim: int,
        num_classes: int,
        event_shape: Sequence[int],
        alpha: float = 0.0,
        labelled_weight: float = 1.0,
    ) -> None:
        super().__init__()
        self.decoder = decoder
        self.guide = SSVAEGuide(classifier, encoder, num_classes, labelled_weight)
        self.latent_dim, self.num_classes = int(latent_dim), int(num_classes)
        self.event_shape = tuple(event_shape)
        self.alpha, self.labelled_weight = float(alpha), float(labelled_weight)

    # ---------------------------------------------------------------- networks
    def classify(self, x: torch.Tensor) -> torch.Tensor:
        """argmax_y q(y | x): the predicted classes, int64 of shape ``(N,)``."""
        return self.guide.class_logits(x).argmax(-1)

    def _likelihood(self, z: torch.Tensor, y: torch.Tensor) -> dist.Distribution:
        return dist.Bernoulli(logits=self.decoder(_cat(z, y))).to_event(1)

    # ---------------------------------------------------------------- Pyro programs
    def model(self, x: torch.Tensor, y: torch.Tensor | None = None) -> None:
        """p(y) p(z) p(x | y, z) of a batch (see the module), with α log q(y|x) on the
        labelled rows."""
        xu, xl, yl = split_batch(x, y, self.num_classes)
        prior_y = x.new_full((self.num_classes,), 1.0 / self.num_classes)
        zeros = x.new_zeros(self.latent_dim)
        if xu.shape[0]:
            with pyro.plate("unlabelled", xu.shape[0]):
                yu = pyro.sample("y_u", dist.OneHotCategorical(prior_y))
                z = pyro.sample("z_u", dist.Normal(zeros, 1.0 + zeros).to_event(1))
                pyro.sample("x_u", self._likelihood(z, yu), obs=xu)
        if xl.shape[0]:
            with (
                pyro.plate("labelled", xl.shape[0]),
                pyro.poutine.scale(scale=self.labelled_weight),
            ):
                pyro.sample("y_l", dist.OneHotCategorical(prior_y), obs=yl)
                z = pyro.sample("z_l", dist.Normal(zeros, 1.0 + zeros).to_event(1))
                pyro.sample("x_l", self._likelihood(z, yl), obs=xl)
                if self.alpha:
                    logq = (self.guide.class_logits(xl).log_softmax(-1) * yl).sum(-1)
                    pyro.factor("y_aux", self.alpha * logq)

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None) -> None:
        """The model (:meth:`model`): ``VariationalLearner`` calls the module itself."""
        return self.model(x, y)

    # ---------------------------------------------------------------- generation
    @torch.no_grad()
    def class_grid(self, num_styles: int) -> torch.Tensor:
        """Decoder means E[x | y, z] = σ(decoder(z, y)) for ``num_styles`` styles z ~ p(z)
        (rows) and every class y = 0..K-1 (columns): shape ``(num_styles * K, *event)``,
        row-major."""
        device = next(self.parameters()).device
        z = torch.randn(num_styles, 1, self.latent_dim, device=device)
        y = torch.eye(self.num_classes, device=device)[None]
        logits = self.decoder(_cat(z, y))
        return torch.sigmoid(logits).reshape(num_styles * self.num_classes, *self.event_shape)

    @torch.no_grad()
    def sample(self, n: int) -> torch.Tensor:
        """``n`` draws x ~ p(x): y ~ Cat(1/K), z ~ N(0, I), x ~ Bernoulli(σ(decoder(z, y)))."""
        device = next(self.parameters()).device
        y = F.one_hot(torch.randint(self.num_classes, (n,), device=device), self.num_classes)
        z = torch.randn(n, self.latent_dim, device=device)
        x = self._likelihood(z, y.float()).sample()
        return x.reshape(n, *self.event_shape)

"""The figures of a trained run, chosen by what its model is: every run's samples (an image
grid, or points over the test data in 2-D; a Bernoulli VAE's binary draws beside the decoder
means of the same z) and training curves; a VAE's decoder means, reconstructions,
interpolations and manifold on images; a 2-D flow's density."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from matplotlib.figure import Figure
from pyro.infer import RenyiELBO, ReweightedWakeSleep

from pyrogen.evaluation import plots
from pyrogen.evaluation.conditional import is_class_conditional
from pyrogen.evaluation.report import model_kind
from pyrogen.evaluation.vae_figures import save_vae_figures
from pyrogen.models.flow import Flow
from pyrogen.models.likelihoods import BernoulliLikelihood
from pyrogen.models.ssvae import SSVAE
from pyrogen.models.vae import VAE


def samples_figure(run: Any, n: int) -> Figure | None:
    """``n`` samples x ~ p(x) of ``run``'s model: an image grid (for a Bernoulli VAE, the
    draws x ~ p(x | z) beside the decoder means E[x | z] of the same z: binary draws alone
    read as failure), or samples over the test data in 2-D; ``None`` for other points."""
    if isinstance(run.model, SSVAE):
        return class_grid_figure(run.model, run.dataset, max(1, n // run.model.num_classes))
    ds, kind = run.dataset, model_kind(run.model)
    if ds.kind == "image":
        if isinstance(run.model, VAE) and isinstance(run.model.likelihood, BernoulliLikelihood):
            run.learner.module.eval()
            y, nrow, given = figure_context(run, n)
            n = n if y is None else y.shape[0]
            given_y = () if y is None else (y,)  # a two-level VAE's take no context
            draws, means = run.model.sample_with_mean(n, *given_y)
            panels = [
                (ds.to_data_space(draws), f"draws x ~ p(x | z{given})"),
                (ds.to_data_space(means), f"decoder means E[x | z{given}] (the same z)"),
            ]
            title = f"{n} z ~ p(z) of the VAE (Bernoulli likelihood)"
            if y is not None:
                rows = "one row per class y" if is_class_conditional(run.model) else "test c"
                pz = "p(z | c)" if run.model.prior_kind == "conditional" else "p(z)"
                title = f"{n} z ~ {pz} of the CVAE (Bernoulli likelihood; {rows})"
            return plots.image_grids_figure(panels, ds.image_shape, nrow=nrow, title=title)
        if is_class_conditional(run.model):  # one row per class
            k = run.model.num_classes
            m = max(1, n // k)
            x = run.sample(m * k, torch.arange(k).repeat_interleave(m))
            title = f"samples x ~ p(x | y) of the {kind}: one row per class y = 0..{k - 1}"
            return plots.image_grid_figure(x, ds.image_shape, nrow=m, title=title)
        title = f"{n} samples x ~ p(x) of the {kind}"
        return plots.image_grid_figure(run.sample(n), ds.image_shape, title=title)
    if ds.num_dims == 2:
        lim = float(ds.test.abs().max()) * 1.1
        title = f"{max(n, 2000)} samples of the {kind}"
        return plots.points_figure(run.sample(max(n, 2000)), ds.test, title, lim)
    return None


def figure_context(run: Any, n: int) -> tuple[torch.Tensor | None, int | None, str]:
    """The context of about ``n`` figure samples of a conditional VAE: for K classes,
    m = max(1, n // K) draws of each class in turn (one row per class: ``nrow`` m), for a
    continuous context the first n contexts of the test split (cycled); ``(None, None, "")``
    for an unconditional model. The third value is ", c" for the figure's titles."""
    model = run.model
    if not getattr(model, "conditional", False):
        return None, None, ""
    device = model.prior_loc.device
    if is_class_conditional(model):
        k = model.num_classes
        m = max(1, n // k)
        return torch.arange(k, device=device).repeat_interleave(m), m, ", c"
    contexts = run.dataset.labels("test")
    index = torch.arange(n) % contexts.shape[0]
    return contexts[index.to(contexts.device)].to(device), None, ", c"


def class_grid_figure(model: SSVAE, ds: Any, num_styles: int) -> Figure:
    """The semi-supervised VAE's class-conditional samples: decoder means E[x | y, z], one
    row per style z ~ p(z), one column per class y."""
    model.eval()
    grid = model.class_grid(num_styles)
    k = model.num_classes
    title = f"E[x | y, z]: rows {num_styles} styles z ~ p(z), columns y = 0..{k - 1}"
    return plots.image_grid_figure(grid, ds.image_shape, nrow=model.num_classes, title=title)


def curve_labels(learner: Any) -> dict[str, Any]:
    """What the learner's training loss is the negative of, for :func:`plots.save_curves`:
    the ``objective`` of a variational learner (the ELBO, or the Rényi / IWAE bound of its
    estimator), the ``gan_loss`` of an adversarial one."""
    elbo = getattr(learner, "elbo", None)
    if isinstance(elbo, RenyiELBO):
        return {"objective": f"Rényi bound (α = {elbo.alpha:g})"}
    if isinstance(elbo, ReweightedWakeSleep):
        return {"objective": "IWAE bound"}
    loss = getattr(learner, "loss", None)
    if loss is not None and not callable(getattr(loss, "differentiable_loss", None)):
        return {"gan_loss": loss}
    return {}


@torch.no_grad()
def model_figures(run: Any, out_dir: Path) -> list[Path]:
    """The figures beyond samples and curves that the model's kind has (see the module)."""
    ds, model = run.dataset, run.model
    if isinstance(model, VAE) and ds.kind == "image":
        x = ds.process(ds.test[:16], torch.Generator().manual_seed(0))
        n = run.cfg.output.num_samples
        y, nrow, given = figure_context(run, n)
        n = n if y is None else y.shape[0]
        means = ds.to_data_space(run.model.sample_mean(n, *(() if y is None else (y,))))
        path = out_dir / "sample_means.png"
        title = f"decoder means E[x | z{given}] of {n} z (not samples: samples.png has those)"
        plots.save_image_grid(means, ds.image_shape, path, nrow=nrow, title=title)
        labels = None  # a CVAE reconstructs x given its own context
        if getattr(model, "conditional", False):
            labels = ds.labels("test")[:16].to(model.prior_loc.device)
        return [path, *save_vae_figures(run.model, x, ds.image_shape, out_dir, y=labels)]
    if isinstance(model, Flow) and ds.kind == "points" and ds.num_dims == 2:
        path = out_dir / "density.png"
        lim = float(ds.test.abs().max()) * 1.1
        plots.save_density(run.model.log_prob, path, data=ds.test, lim=lim, device=ds.device)
        return [path]
    return []

"""pyrogen: deep generative models (VAEs, normalizing flows, GANs) as Pyro generative processes."""

__version__ = "0.1.0"

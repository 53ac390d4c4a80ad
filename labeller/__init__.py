"""Latent Labeller: the app, the CLI and the worker that tie ``db`` and ``core`` together."""

__version__ = "0.1.0"

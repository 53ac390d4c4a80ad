"""Latent Labeller: the app, the CLI and the worker that tie ``db`` and ``core`` together."""

__version__ = "0.1.0"


def __getattr__(name: str) -> object:
    # Lazy: pandas loads only when a notebook asks for the frames, never for `labeller --help`.
    if name == "read_project":
        from labeller.notebook import read_project

        return read_project
    raise AttributeError(f"module 'labeller' has no attribute {name!r}")

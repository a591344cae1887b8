"""tae_framework: inference-time alignment of language models by editing activations."""

from ._version import __version__

__all__ = ["__version__"]

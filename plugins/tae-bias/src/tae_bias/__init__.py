"""Social bias for tae_framework: the BBQ benchmark (Parrish et al., 2022) as a task."""

__version__ = "0.1.0"

"""Contrastive Activation Addition (CAA) baseline for tae_framework."""

__version__ = "0.1.0"

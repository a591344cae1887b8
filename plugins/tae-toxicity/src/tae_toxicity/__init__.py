"""Harmlessness for tae_framework: RealToxicityPrompts, toxicity judges and metrics."""

__version__ = "0.1.0"

"""Exception types raised by the framework.

Every error says what is wrong and how to fix it. All derive from :class:`TAEError`,
so callers can catch the framework's errors in one place.
"""

from __future__ import annotations


class TAEError(Exception):
    """Base class of every error raised by tae_framework."""


class NotFittedError(TAEError, AttributeError):
    """A learned attribute was read before ``fit`` was called."""


class ConfigError(TAEError, ValueError):
    """A configuration is malformed: unknown key, wrong type, value out of range."""


class UnknownComponentError(ConfigError, KeyError):
    """A configuration names a component that no installed plugin provides."""

    def __str__(self) -> str:  # KeyError would otherwise quote the message
        return str(self.args[0]) if self.args else ""


class PluginError(TAEError):
    """A plugin could not be loaded or registered something invalid."""


class UnsupportedModelError(TAEError, TypeError):
    """No model adapter can resolve the sites of this model."""


class ModelMismatchError(TAEError, ValueError):
    """Fitted state does not fit the model it is applied to."""


class ArtifactError(TAEError, OSError):
    """A saved pipeline directory is missing files or is corrupted."""


class DataError(TAEError, ValueError):
    """Input data is empty, malformed, or unusable for fitting."""

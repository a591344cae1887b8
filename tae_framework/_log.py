"""The library logger of tae_framework and the verbosity the command line sets.

Every module logs through a child of the ``"tae_framework"`` logger::

    from tae_framework._log import get_logger

    log = get_logger(__name__)          # "tae_framework.probers.logistic", ...
    log.info("fitting %d probes", n)

Like any library, tae_framework only attaches a :class:`logging.NullHandler`: nothing
is printed unless the application configures logging (``logging.basicConfig()``) or
calls :func:`set_verbosity`, which is what the ``tae`` command line does for ``-v``
and ``-q``. The level of the ``"tae_framework"`` logger is also the switch of the
progress bars (:mod:`tae_framework.progress`): above ``INFO`` (``-q``) they stay hidden.
"""

from __future__ import annotations

import logging
import sys

LOGGER_NAME = "tae_framework"

logger = logging.getLogger(LOGGER_NAME)
logger.addHandler(logging.NullHandler())

#: Logger level per verbosity step of the command line (``-q`` = -1, ``-v`` = 1, ...).
VERBOSITY_LEVELS = {-1: logging.WARNING, 0: logging.INFO, 1: logging.DEBUG}


def get_logger(name: str | None = None) -> logging.Logger:
    """The library logger, or its child ``name`` (pass ``__name__``).

    Names outside the package are placed under it (``get_logger("my_plugin")`` is
    ``"tae_framework.my_plugin"``), so one level set on ``"tae_framework"`` governs them.
    """
    if not name or name == LOGGER_NAME:
        return logger
    if not name.startswith(LOGGER_NAME + "."):
        name = f"{LOGGER_NAME}.{name}"
    return logging.getLogger(name)


class _StderrHandler(logging.StreamHandler):
    """Writes records to the current ``sys.stderr`` through ``tqdm.write``, so a log
    line does not break a progress bar that is being drawn."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    def emit(self, record: logging.LogRecord) -> None:
        try:
            from tqdm import tqdm

            tqdm.write(self.format(record), file=sys.stderr)
        except Exception:  # logging must never raise
            self.handleError(record)


def set_verbosity(verbosity: int) -> None:
    """Set the library's verbosity, as the command line's ``-q``/``-v`` do.

    ``verbosity`` is ``-1`` (quiet: warnings and errors only, no progress bars),
    ``0`` (default: info messages and progress bars on terminals) or ``1`` and more
    (debug messages). Installs one stderr handler on the ``"tae_framework"`` logger
    (once; calling again only changes the level).
    """
    if not isinstance(verbosity, int) or isinstance(verbosity, bool):
        raise TypeError(f"verbosity must be an int (-1 quiet, 0 default, 1 verbose), got {verbosity!r}")
    level = VERBOSITY_LEVELS[max(-1, min(1, verbosity))]
    logger.setLevel(level)
    if not any(isinstance(h, _StderrHandler) for h in logger.handlers):
        handler = _StderrHandler()
        handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
        logger.addHandler(handler)


def is_quiet() -> bool:
    """Whether the ``"tae_framework"`` logger was set above ``INFO`` (``-q``, or
    ``logging.getLogger("tae_framework").setLevel(logging.WARNING)``)."""
    return logger.level > logging.INFO

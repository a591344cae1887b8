"""One progress helper for every long step (capture, probe fitting, estimators, evaluation,
training).

:func:`progress` returns a ``tqdm`` bar, drawn on stderr, that decides by itself whether
to show:

* ``enabled=True`` / ``False`` force it on or off;
* the environment variable ``TAE_PROGRESS=1`` / ``0`` forces it on or off for a whole run
  (``enabled`` given by the caller still wins);
* otherwise (``enabled=None``) it shows only when stderr is a terminal (or in a Jupyter
  notebook) and the library is not quiet (the ``"tae_framework"`` logger is not set above ``INFO``, which the
  command line's ``-q`` does; see :mod:`tae_framework._log`).

A hidden bar is a real ``tqdm`` object with ``disable=True``, so ``update``,
``set_postfix`` and ``close`` work the same either way::

    from tae_framework.progress import progress

    for batch in progress(batches, desc="capture", unit="batch"):
        ...
    with progress(total=n, desc="probes") as bar:
        bar.update(k)
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable
from typing import Any

from ._log import is_quiet

ENV_VAR = "TAE_PROGRESS"
_TRUE = {"1", "true", "yes", "on", "always"}
_FALSE = {"0", "false", "no", "off", "never"}


def progress_enabled(enabled: bool | None = None) -> bool:
    """Whether a bar made with ``enabled`` would be drawn now (see the module docs)."""
    if enabled is not None:
        return bool(enabled)
    forced = os.environ.get(ENV_VAR, "").strip().lower()
    if forced in _TRUE:
        return True
    if forced in _FALSE:
        return False
    if forced:
        raise ValueError(
            f"{ENV_VAR}={os.environ[ENV_VAR]!r} is not understood: use 1 (always show progress "
            "bars), 0 (never) or leave it unset (show on terminals)"
        )
    if is_quiet():
        return False
    if "ipykernel" in sys.modules:  # a notebook: tqdm.auto draws a widget there
        return True
    stream = sys.stderr
    try:
        return stream is not None and stream.isatty()
    except (AttributeError, ValueError):  # closed or unusual stream
        return False


def progress(
    iterable: Iterable[Any] | None = None,
    *,
    total: float | None = None,
    desc: str | None = None,
    unit: str = "it",
    enabled: bool | None = None,
    leave: bool = False,
    **kwargs: Any,
) -> Any:
    """A ``tqdm`` bar over ``iterable`` (or a manual one with ``total``), shown per the rules
    above.

    Args:
        iterable: what to iterate over; ``None`` for a manual bar (call ``update``).
        total: number of steps (taken from ``len(iterable)`` when possible).
        desc: short label in front of the bar.
        unit: name of one step (``"batch"``, ``"step"``, ...).
        enabled: ``True``/``False`` force the bar on/off; ``None`` decides (terminal, quiet).
        leave: keep the finished bar on screen.
        **kwargs: passed on to ``tqdm`` (``initial``, ``mininterval``, ...).
    """
    from tqdm.auto import tqdm

    show = progress_enabled(enabled)
    return tqdm(
        iterable,
        total=total,
        desc=desc,
        unit=unit,
        leave=leave,
        disable=not show,
        file=sys.stderr,
        dynamic_ncols=True,
        **kwargs,
    )

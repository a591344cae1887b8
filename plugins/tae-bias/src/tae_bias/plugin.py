"""Entry module of the ``tae-bias`` plugin (cheap to import: no torch work here)."""

from __future__ import annotations

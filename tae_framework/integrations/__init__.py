"""Bridges to other tools. Each module imports its tool only when it is imported itself
(install the matching extra, e.g. ``pip install "tae-framework[lm-eval]"``)."""

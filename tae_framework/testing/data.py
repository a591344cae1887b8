"""Small contrast datasets for tests of methods on tiny models."""

from __future__ import annotations

__all__ = ["toy_contrast"]


def toy_contrast(n_groups: int = 10, near_miss: bool = False) -> list[dict]:
    """``2 * n_groups`` contrast rows: per question one aligned and one misaligned answer.

    The two answers share a prefix and differ in later tokens, so token-level
    estimators have both labels to learn from. With ``near_miss`` each question also
    gets a second misaligned answer that shares the aligned one's first word
    (``" in {g + 3} city ."``, and the other becomes ``" at {g} sea ."``), so answers
    diverge at the first or only at a later token. Meant for
    mechanics on tiny random models (nothing here is true or false in a meaningful sense).

    Example:
        >>> rows = toy_contrast(2)
        >>> rows[0]["prompt"], rows[0]["completion"], rows[1]["completion"]
        ('Q: where is a? A:', ' in 0 town .', ' at 3 sea .')
    """
    rows: list[dict] = []
    for g in range(n_groups):
        q = f"Q: where is {chr(97 + g % 26)}{'' if g < 26 else g}? A:"
        rows.append({"prompt": q, "completion": f" in {g} town .", "label": 1, "group": g})
        if near_miss:
            rows.append({"prompt": q, "completion": f" in {g + 3} city .", "label": 0, "group": g})
        rows.append({"prompt": q, "completion": f" at {g + (0 if near_miss else 3)} sea .", "label": 0, "group": g})
    return rows

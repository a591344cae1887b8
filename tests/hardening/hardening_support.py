"""Helpers of the hardening tests (imported by module name: tests/ is not a package)."""

from __future__ import annotations

FAST = {"prober": {"top_k": 3}, "intervener": {"alpha": 4.0}, "source": {"progress": False}}


def contrast_records(n_groups: int = 8) -> list[dict]:
    rows = []
    for g in range(n_groups):
        q = f"Q: is {chr(97 + g)} big? A:"
        rows.append({"prompt": q, "completion": f" yes {g} .", "label": 1, "group": f"q{g}"})
        rows.append({"prompt": q, "completion": f" no {g} wait .", "label": 0, "group": f"q{g}"})
    return rows


def snapshot(folder) -> dict[str, bytes]:
    """Every file under ``folder`` with its bytes (to prove nothing changed on disk)."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


class ForwardCounter:
    """Counts calls of a model's forward (a test-side tap, removed on exit)."""

    def __init__(self, model):
        self.model, self.calls = model, 0

    def __enter__(self):
        self.handle = self.model.register_forward_pre_hook(lambda *a: setattr(self, "calls", self.calls + 1))
        return self

    def __exit__(self, *exc):
        self.handle.remove()

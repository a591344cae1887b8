"""An edit too strong for the model's dtype is refused when it is installed, naming
alpha * sigma, the dtype's limit and the largest usable alpha; checked once per
installation, never per token."""

from __future__ import annotations

import copy

import pytest
import torch

from tae_framework import AlignmentPipeline
from tae_framework.backends import torch_hooks
from tae_framework.editing import count_taps
from tae_framework.errors import ConfigError
from tae_framework.evaluation.methods import with_intervener
from tae_framework.plugins import default_registry
from tae_framework.testing.models import tiny_model

PROMPT = ["Q: where is b? A:"]


def records(n_groups=10):
    rows = []
    for g in range(n_groups):
        q = f"Q: where is {chr(97 + g)}? A:"
        rows.append({"prompt": q, "completion": f" in {g} town .", "label": 1, "group": g})
        rows.append({"prompt": q, "completion": f" at {g + 3} sea .", "label": 0, "group": g})
    return rows


@pytest.fixture(scope="module")
def fitted():
    model, tok = tiny_model("llama")
    fast = {"prober": {"top_k": 3}, "source": {"progress": False}}
    tae = AlignmentPipeline.from_preset("tae", **fast).fit(model, tok, records())
    iti = AlignmentPipeline.from_preset("iti", **fast).fit(model, tok, records())
    return {"tae": tae, "iti": iti}, model, tok


def largest_alpha(pipe, limit, factor):
    """limit / (max over targets of sigma * max |direction component| * factor), by hand."""
    t = pipe.targets_
    peak = max(float(s) * float(d.abs().max()) for s, d in zip(t.sigmas, t.directions))
    return limit / (peak * factor)


@pytest.mark.parametrize(
    ("preset", "dtype", "limit", "factor"),
    [
        ("tae", torch.float16, 65504.0, 2.0),  # MAI's factor 1 + beta p + (1 - beta) u reaches 2
        ("iti", torch.float16, 65504.0, 1.0),
        ("tae", torch.bfloat16, torch.finfo(torch.float32).max ** 0.5, 2.0),  # its square overflows float32
    ],
)
def test_an_alpha_beyond_the_dtype_is_refused_at_install(fitted, preset, dtype, limit, factor):
    pipes, model, tok = fitted
    half = copy.deepcopy(model).to(dtype)
    reg = default_registry()
    best = largest_alpha(pipes[preset], limit, factor)
    taps = count_taps(half)
    huge = with_intervener(pipes[preset], {"alpha": 1e30}, reg)
    name = str(dtype).removeprefix("torch.")
    with pytest.raises(ConfigError, match=rf"too strong for {name} activations.*alpha \* sigma \* direction") as err:
        with huge.apply(half):
            pass
    message = str(err.value)
    assert f"largest usable alpha on this {name} model is at most about {best:.3g}" in message
    assert "it is 1e+30 now" in message
    assert ("run the model in float32" in message) == (dtype == torch.float16)
    assert count_taps(half) == taps and not huge.is_applied(half), "a refused edit must leave nothing installed"
    with pytest.raises(ConfigError, match="too strong"):
        huge.generate(half, tok, PROMPT, max_new_tokens=2)
    with with_intervener(pipes[preset], {"alpha": 0.9 * best}, reg).apply(half):
        pass  # just below the limit: installed
    with pytest.raises(ConfigError, match="too strong"):
        with with_intervener(pipes[preset], {"alpha": 1.1 * best}, reg).apply(half):
            pass
    assert count_taps(half) == taps


def test_float32_takes_an_alpha_float16_cannot(fitted):
    pipes, model, _ = fitted
    best16 = largest_alpha(pipes["iti"], 65504.0, 1.0)
    strong = with_intervener(pipes["iti"], {"alpha": 2 * best16}, default_registry())
    with strong.apply(model):
        pass
    with pytest.raises(ConfigError, match="too strong for float16"):
        with strong.apply(copy.deepcopy(model).to(torch.float16)):
            pass


def test_scales_that_overflow_float32_say_so(fitted):
    pipes, model, _ = fitted
    huge = with_intervener(pipes["iti"], {"alpha": 1e300}, default_registry())
    with pytest.raises(ConfigError, match=r"edit scales of layer \d+ are not finite.*alpha \* sigma\) overflows float32"):
        huge.apply(model)


def test_the_range_is_checked_once_per_installation_not_per_token(fitted, monkeypatch):
    pipes, model, tok = fitted
    calls = []
    real = torch_hooks.check_edit_range
    monkeypatch.setattr(torch_hooks, "check_edit_range", lambda *a, **k: (calls.append(a[1]), real(*a, **k))[1])
    session = pipes["tae"].apply(model)
    with session:
        with torch.no_grad():
            for _ in range(3):
                model(**tok(PROMPT, return_tensors="pt"))
    assert calls == [torch.float32], "one check at installation; forwards in the same dtype add none"
    # Activations of another dtype met during a forward (autocast) are checked when first seen.
    best16 = largest_alpha(pipes["iti"], 65504.0, 1.0)
    with with_intervener(pipes["iti"], {"alpha": 2 * best16}, default_registry()).apply(model) as strong:
        strong.check_range(torch.float32)
        with pytest.raises(ConfigError, match="too strong for float16"):
            strong.check_range(torch.float16)

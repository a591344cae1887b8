"""The editing engine: scopes, exactness of edits, handle hygiene, batching, KV cache."""

from __future__ import annotations

import pytest
import torch

from tae_framework.editing import EditScope, EditSession, count_taps, layer_edits
from tae_framework.errors import ConfigError, DataError, ModelMismatchError
from tae_framework.evaluation.scoring import greedy_generate
from tae_framework.interveners.fixed import FixedIntervener
from tae_framework.testing.checks import synthetic_targets
from tae_framework.testing.models import tiny_model
from tae_framework.types import EditTargets


@pytest.fixture
def llama(registry):
    model, tok = tiny_model("llama")
    return model, tok, registry.adapter_for(model)


def _targets(adapter, model, layers, units, sigma=1.0, seed=0):
    shape = adapter.shape(model)
    g = torch.Generator().manual_seed(seed)
    d = torch.randn(len(units), shape.head_dim, generator=g)
    return EditTargets(
        "heads", torch.tensor(layers), torch.tensor(units), d / d.norm(dim=1, keepdim=True),
        torch.full((len(units),), sigma), torch.zeros(shape.num_layers, shape.num_heads), shape.head_dim,
    )


def _observe_o_proj_input(model, adapter, layer):
    seen = []
    handle = adapter.head_module(model, layer).register_forward_pre_hook(lambda m, a: seen.append(a[0].clone()))
    return seen, handle


@pytest.mark.parametrize("mode", ["last", "all", "span"])
def test_edit_changes_exactly_the_edited_slices_at_the_scoped_positions(llama, mode):
    model, tok, adapter = llama
    shape = adapter.shape(model)
    layer = shape.num_layers - 1
    targets = _targets(adapter, model, [layer, layer], [1, 3], sigma=2.0)
    ids = torch.tensor([[1, 10, 11, 12, 13, 14], [1, 20, 21, 22, 23, 24]])
    span = torch.zeros(2, 6, dtype=torch.bool)
    span[0, 2:4] = True
    span[1, 5] = True
    seen, h = _observe_o_proj_input(model, adapter, layer)
    with torch.no_grad():
        model(ids)
    alpha = 3.0
    interv = FixedIntervener(alpha=alpha).fit(targets)
    with interv.install(model, adapter, EditScope(mode)) as session, torch.no_grad():
        if mode == "span":
            session.set_span(span)
        # the observer must run after the edit tap: register it inside the session
        h.remove()
        seen2, h2 = _observe_o_proj_input(model, adapter, layer)
        model(ids)
        h2.remove()
    before = seen[0].reshape(2, 6, shape.num_heads, shape.head_dim)
    after = seen2[0].reshape(2, 6, shape.num_heads, shape.head_dim)
    diff = after - before
    expected_pos = {"last": torch.zeros(2, 6, dtype=torch.bool), "all": torch.ones(2, 6, dtype=torch.bool), "span": span}[mode]
    if mode == "last":
        expected_pos[:, -1] = True
    for b in range(2):
        for t in range(6):
            for head in range(shape.num_heads):
                d = diff[b, t, head]
                if expected_pos[b, t] and head in (1, 3):
                    k = [1, 3].index(head)
                    torch.testing.assert_close(d, alpha * 2.0 * targets.directions[k], atol=1e-5, rtol=1e-5)
                else:
                    assert d.abs().max() < 1e-6, f"unexpected change at row {b} pos {t} head {head}"


def test_zero_strength_edit_leaves_logits_unchanged(llama):
    model, tok, adapter = llama
    ids = torch.tensor([[1, 5, 9, 13, 17]])
    with torch.no_grad():
        base = model(ids).logits
    targets = synthetic_targets(model, adapter)
    targets = targets.with_sigmas(torch.zeros(targets.num_targets))
    with FixedIntervener(alpha=10.0).fit(targets).install(model, adapter, "all"), torch.no_grad():
        out = model(ids).logits
    torch.testing.assert_close(out, base, atol=1e-6, rtol=0)


def test_no_handle_survives_the_session_even_after_an_exception(llama):
    model, tok, adapter = llama
    before = count_taps(model)
    interv = FixedIntervener().fit(synthetic_targets(model, adapter))
    with pytest.raises(RuntimeError, match="inside"):
        with interv.install(model, adapter, "last") as session:
            assert count_taps(model) > before and session.active
            raise RuntimeError("inside")
    assert count_taps(model) == before
    with interv.install(model, adapter, "last"):
        pass
    assert count_taps(model) == before


@pytest.mark.parametrize("family", ["llama", "gpt2", "falcon"])
def test_batched_greedy_generation_with_kv_cache_equals_one_by_one(registry, family):
    model, tok = tiny_model(family)
    adapter = registry.adapter_for(model)
    targets = synthetic_targets(model, adapter, k_per_layer=2, seed=3)
    interv = FixedIntervener(alpha=4.0).fit(targets)
    prompts = ["Q: a", "Q: what is x? A:", "Hello there, how", "Z"]
    edit = lambda: interv.install(model, adapter, "last")
    batched = greedy_generate(model, tok, prompts, max_new_tokens=8, batch_size=4, edit=edit)
    alone = [greedy_generate(model, tok, [p], max_new_tokens=8, batch_size=1, edit=edit)[0] for p in prompts]
    assert batched == alone
    plain = greedy_generate(model, tok, prompts, max_new_tokens=8, batch_size=4)
    assert plain != batched, "the edit should change at least one generation"


def test_residual_site_edits_the_layer_output(llama):
    model, tok, adapter = llama
    shape = adapter.shape(model)
    d = torch.zeros(1, shape.hidden_size)
    d[0, 0] = 1.0
    targets = EditTargets("residual", torch.tensor([0]), torch.tensor([0]), d, torch.ones(1), torch.zeros(shape.num_layers, 1), shape.hidden_size)
    seen = []

    def grab(module, args, kwargs):  # the residual stream entering layer 1 = layer 0's output
        seen.append((args[0] if args else kwargs["hidden_states"]).clone())

    h = adapter.layers(model)[1].register_forward_pre_hook(grab, with_kwargs=True)
    ids = torch.tensor([[1, 5, 6, 7]])
    with torch.no_grad():
        model(ids)
        with FixedIntervener(alpha=5.0).fit(targets).install(model, adapter, "all"):
            model(ids)
    h.remove()
    torch.testing.assert_close(seen[1] - seen[0], 5.0 * d.expand_as(seen[0]), atol=1e-5, rtol=0)


def test_span_scope_requires_a_matching_mask(llama):
    model, tok, adapter = llama
    interv = FixedIntervener().fit(synthetic_targets(model, adapter))
    with interv.install(model, adapter, "span") as s:
        with pytest.raises(ConfigError, match="set_span"):
            model(torch.tensor([[1, 2, 3]]))
        s.set_span(torch.ones(1, 2, dtype=torch.bool))
        with pytest.raises(ConfigError, match="span mask has shape"):
            model(torch.tensor([[1, 2, 3]]))
    with interv.install(model, adapter, "last") as s, pytest.raises(ConfigError, match="scope 'span'"):
        s.set_span(torch.ones(1, 3, dtype=torch.bool))


def test_bad_edits_are_rejected_with_clear_messages(llama):
    model, tok, adapter = llama
    shape = adapter.shape(model)
    t = _targets(adapter, model, [shape.num_layers], [0])
    with pytest.raises(ModelMismatchError, match="layers 0..1"):
        EditSession(model, adapter, "heads", layer_edits(t, 1.0))
    t = _targets(adapter, model, [0], [shape.num_heads])
    with pytest.raises(ModelMismatchError, match="units 0..3"):
        EditSession(model, adapter, "heads", layer_edits(t, 1.0))
    with pytest.raises(DataError, match="directions must be"):
        EditTargets("heads", torch.tensor([0]), torch.tensor([0]), torch.ones(1, 3), torch.ones(1), torch.zeros(2, 4), shape.head_dim)
    bad = torch.ones(1, shape.head_dim)
    bad[0, 0] = float("nan")
    with pytest.raises(DataError, match="NaN"):
        EditTargets("heads", torch.tensor([0]), torch.tensor([0]), bad, torch.ones(1), torch.zeros(2, 4), shape.head_dim)
    with pytest.raises(ConfigError, match="unknown edit scope"):
        EditScope("everywhere")  # type: ignore[arg-type]


def test_two_sessions_on_two_models_do_not_interfere(registry):
    m1, tok = tiny_model("llama", seed=0)
    m2, _ = tiny_model("llama", seed=1)
    a = registry.adapter_for(m1)
    ids = torch.tensor([[1, 5, 6, 7]])
    with torch.no_grad():
        base2 = m2(ids).logits
        with FixedIntervener(alpha=5.0).fit(synthetic_targets(m1, a)).install(m1, a, "all"):
            torch.testing.assert_close(m2(ids).logits, base2)

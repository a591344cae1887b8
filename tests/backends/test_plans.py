"""Edit plans and the PyTorch-hook backend: plans are plain data, installing a plan is
the edit it describes, the per-forward context is typed."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torch import nn

from tae_framework import AlignmentPipeline
from tae_framework.backends.base import Backend, ForwardContext
from tae_framework.backends.torch_hooks import TorchHooksBackend, install_plan
from tae_framework.errors import ConfigError, TAEError
from tae_framework.estimators.base import MisalignmentEstimator, SignalRuntime
from tae_framework.evaluation.scoring import greedy_generate
from tae_framework.interveners.adaptive import AdaptiveIntervener
from tae_framework.interveners.base import Intervener
from tae_framework.interveners.fixed import FixedIntervener
from tae_framework.plan import (
    AdaptiveStrength,
    BoundSignals,
    EditPlan,
    FixedStrength,
    LayerPlan,
    ProbeLensSignals,
    SignalPlan,
    plan_values,
)
from tae_framework.testing.checks import synthetic_targets
from tae_framework.testing.data import toy_contrast
from tae_framework.testing.models import tiny_model

IDS = torch.tensor([[1, 5, 9, 13, 17], [1, 7, 8, 30, 31]])


def records(n_groups=12):
    return toy_contrast(n_groups, near_miss=True)


@pytest.fixture(scope="module")
def tae():
    model, tok = tiny_model("llama")
    pipe = AlignmentPipeline.from_preset(
        "tae", prober={"top_k": 4}, estimator={"lens": "shared"}, intervener={"alpha": 6.0}
    ).fit(model, tok, records())
    return pipe, model, tok


def _leaves_are_data(plan: EditPlan) -> None:
    for value in plan_values(plan):
        assert not isinstance(value, nn.Module), f"a plan holds a module: {type(value).__name__}"
        assert not callable(value), f"a plan holds a callable: {value!r}"
        if isinstance(value, torch.Tensor):
            assert value.device.type == "cpu"
        else:
            assert isinstance(value, (int, float, str, bool, type(None))), type(value)


def test_fixed_plan_holds_the_targets_per_layer_and_no_module(registry):
    model, _ = tiny_model("llama")
    targets = synthetic_targets(model, registry.adapter_for(model), k_per_layer=2, seed=1)
    plan = FixedIntervener(alpha=3.0).fit(targets).plan("last")
    assert isinstance(plan.strength, FixedStrength) and plan.site == "heads"
    assert plan.edited_layers == targets.edited_layers() and plan.num_targets == targets.num_targets
    for lp in plan.layers:
        ix = lp.target_index
        assert torch.equal(lp.units, targets.units[ix]) and torch.equal(targets.layers[ix], torch.full_like(ix, lp.layer))
        assert lp.directions.shape == (ix.numel(), targets.unit_dim)  # all heads of the layer, one tensor
        torch.testing.assert_close(lp.scales, 3.0 * targets.sigmas[ix], rtol=0, atol=0)
    _leaves_are_data(plan)
    with pytest.raises(dataclasses.FrozenInstanceError):
        plan.site = "residual"  # type: ignore[misc]


def test_mai_plan_carries_the_probe_weights_and_lens_as_data(tae):
    pipe, model, tok = tae
    plan = pipe.intervener.plan("last")
    rule = plan.strength
    assert isinstance(rule, AdaptiveStrength) and isinstance(rule.signals, ProbeLensSignals)
    assert (rule.beta, rule.use_p, rule.use_u, rule.use_base) == (0.5, True, True, True)
    sig, t, est = rule.signals, pipe.targets_, pipe.estimator
    assert sig.lens == "shared" and sig.residual_layers == frozenset(t.edited_layers()[:1])
    for layer, ix in t.by_layer().items():
        assert torch.equal(sig.probes[layer].weight, est.coef_[ix])
        assert torch.equal(sig.probes[layer].bias, est.intercept_[ix])
        assert torch.equal(sig.probes[layer].units, t.units[ix])
    _leaves_are_data(plan)
    # MAI on plain text without u (the reference's CE/KL rule): strength 1 + p
    pipe.intervener.config = pipe.intervener.config.model_copy(update={"u_on_all_scope": False})
    try:
        all_rule = pipe.intervener.plan("all").strength
    finally:
        pipe.intervener.config = pipe.intervener.config.model_copy(update={"u_on_all_scope": True})
    assert (all_rule.use_u, all_rule.beta) == (False, 1.0)


def test_installing_the_fixed_plan_adds_alpha_sigma_direction_at_each_head(registry):
    """Reference: the edit written out head by head with a plain PyTorch pre-hook."""
    model, _ = tiny_model("llama")
    adapter = registry.adapter_for(model)
    t = synthetic_targets(model, adapter, k_per_layer=2, seed=4)
    d = adapter.shape(model).head_dim

    def reference_tap(layer):
        def tap(module, args):
            x = args[0].clone()
            for k in range(t.num_targets):
                if int(t.layers[k]) == layer:
                    h = int(t.units[k])
                    x[..., h * d : (h + 1) * d] += 2.5 * float(t.sigmas[k]) * t.directions[k]
            return (x,)
        return tap

    handles = [adapter.head_module(model, layer).register_forward_pre_hook(reference_tap(layer)) for layer in t.edited_layers()]
    with torch.no_grad():
        reference = model(IDS).logits
    for h in handles:
        h.remove()
    with torch.no_grad(), TorchHooksBackend().install(FixedIntervener(alpha=2.5).fit(t).plan("all"), model, adapter, "all"):
        ours = model(IDS).logits
    torch.testing.assert_close(ours, reference, rtol=1e-5, atol=1e-5)


def test_a_plan_installed_on_a_copy_of_the_model_edits_it_alike(tae):
    """A plan is not bound to the model it came from (devices, modules): the same plan
    object installed twice, on the model and on a deep copy, gives identical logits."""
    import copy

    pipe, model, tok = tae
    other = copy.deepcopy(model)
    adapter = pipe._adapter(model)
    plan = pipe.intervener.plan("all")
    with torch.no_grad():
        with install_plan(plan, model, adapter, "all"):
            a = model(IDS).logits
        with install_plan(plan, other, adapter, "all"):
            b = other(IDS).logits
    assert torch.equal(a, b)


def test_batched_generation_with_a_plan_equals_one_by_one(tae):
    pipe, model, tok = tae
    adapter = pipe._adapter(model)
    plan = pipe.intervener.plan("last")
    prompts = ["Q: a", "Q: where is x? A:", "Hello there, how"]
    edit = lambda: install_plan(plan, model, adapter, "last")  # noqa: E731
    batched = greedy_generate(model, tok, prompts, max_new_tokens=6, batch_size=3, edit=edit)
    alone = [greedy_generate(model, tok, [p], max_new_tokens=6, batch_size=1, edit=edit)[0] for p in prompts]
    assert batched == alone


class _Half(SignalRuntime):
    def __init__(self, per_layer):
        self.per_layer = per_layer

    def signals(self, layer, site_input, residual_in, ctx):
        assert isinstance(ctx, ForwardContext)
        return site_input.new_full((*site_input.shape[:2], self.per_layer[layer]), 0.5), None


class _Constant(MisalignmentEstimator):
    """An estimator without a data description of its signals (only ``bind``)."""

    name = "constant-half"

    def fit(self, inputs):
        self.fitted_ = True
        return self

    def bind(self, model, adapter, targets):
        return _Half({layer: len(ix) for layer, ix in targets.by_layer().items()})


def test_an_estimator_that_only_binds_itself_is_carried_as_bound_signals(registry):
    """p = 0.5, u switched off: MAI's strength is alpha * sigma * (1 + beta p) = 1.25 alpha
    sigma (beta = 0.5), the fixed rule's at 1.25 alpha."""
    model, _ = tiny_model("llama")
    adapter = registry.adapter_for(model)
    t = synthetic_targets(model, adapter, k_per_layer=2, seed=2)
    est = _Constant().fit(None)
    plan = AdaptiveIntervener(alpha=4.0, use_u=False).fit(t, est).plan("all")
    assert isinstance(plan.strength.signals, BoundSignals)
    with torch.no_grad():
        with install_plan(plan, model, adapter, "all"):
            ours = model(IDS).logits
        with install_plan(FixedIntervener(alpha=5.0).fit(t).plan("all"), model, adapter, "all"):
            fixed = model(IDS).logits
    torch.testing.assert_close(ours, fixed, rtol=1e-5, atol=1e-5)


def test_a_signal_kind_the_backend_does_not_know_is_refused_by_name(registry):
    @dataclasses.dataclass(frozen=True, eq=False)
    class Novel(SignalPlan):
        name = "novel"

    model, _ = tiny_model("llama")
    adapter = registry.adapter_for(model)
    t = synthetic_targets(model, adapter)
    plan = EditPlan.from_targets(t, 1.0, AdaptiveStrength(Novel(), beta=0.5))
    with pytest.raises(ConfigError, match="cannot evaluate signals of kind 'novel'"):
        install_plan(plan, model, adapter)


def test_bad_plans_are_refused_with_clear_messages():
    lp = LayerPlan(0, torch.tensor([0]), torch.ones(1, 4), torch.ones(1), torch.tensor([0]))
    with pytest.raises(ConfigError, match="lists layer"):
        EditPlan("heads", (lp, lp))
    with pytest.raises(ConfigError, match="unknown strength rule"):
        EditPlan("heads", (lp,), strength="fixed")  # type: ignore[arg-type]

    class Old(Intervener):
        name = "old"

        def fit(self, targets, estimator=None):
            return self

    with pytest.raises(TAEError, match="implement plan"):
        Old().plan()


def test_the_context_is_typed_and_filled_during_the_forward(tae):
    pipe, model, tok = tae
    adapter = pipe._adapter(model)
    first = pipe.targets_.edited_layers()[0]
    seen = {}

    def peek(module, args, kwargs):  # runs after the session's taps of the last layer
        seen["resid"] = dict(session.context.residual_in)
        seen["shared_u"] = session.context.shared_u

    span = torch.zeros(2, 5, dtype=torch.bool)
    span[0, 3:] = True
    span[1, 4] = True
    with torch.no_grad(), pipe.apply(model, "span", span=span, record=True) as session:
        ctx = session.context
        assert isinstance(ctx, ForwardContext) and ctx.record
        b, t = ctx.span_positions
        assert b.tolist() == [0, 0, 1] and t.tolist() == [3, 4, 4]
        h = adapter.final_norm(model).register_forward_pre_hook(peek, with_kwargs=True)
        model(IDS)
        h.remove()
    assert set(seen["resid"]) == {first} and seen["resid"][first].shape == (2, 5, adapter.shape(model).hidden_size)
    assert seen["shared_u"].shape == (2, 5, 1)
    edited = pipe.targets_.edited_layers()
    assert [layer for layer, _, _ in ctx.signals] == edited
    assert all(p.shape == (2, 5, len(pipe.targets_.by_layer()[layer])) for layer, p, _ in ctx.signals)
    assert all(u is not None and u.shape == (2, 5, 1) for _, _, u in ctx.signals)
    # removed: per-forward tensors dropped, the record kept
    assert ctx.residual_in == {} and ctx.shared_u is None and len(ctx.signals) == len(edited)
    # the former dict view answers the same fields, and names them for a typo
    assert session.state["signals"] is ctx.signals and session.state.get("record") is True
    with pytest.raises(KeyError, match="fields are record, span_positions, residual_in, shared_u, signals"):
        session.state["singals"]


def test_a_backend_is_a_small_class(tae):
    pipe, model, tok = tae

    class Counting(Backend):
        name = "counting"
        installs = 0

        def install(self, plan, model, adapter, scope="last", record=False):
            Counting.installs += 1
            return TorchHooksBackend().install(plan, model, adapter, scope, record)

    adapter = pipe._adapter(model)
    with torch.no_grad():
        with Counting().install(pipe.intervener.plan("all"), model, adapter, "all"):
            ours = model(IDS).logits
        with pipe.apply(model, "all"):
            reference = model(IDS).logits
    assert Counting.installs == 1 and torch.equal(ours, reference)


def test_a_plan_written_as_json_and_safetensors_installs_the_same_edit(tae, tmp_path):
    """The plain form a serving engine would receive (no pickle): JSON + safetensors files."""
    import json

    from safetensors.torch import load_file, save_file

    from tae_framework.plan import plan_from_state, plan_to_state

    pipe, model, tok = tae
    adapter = pipe._adapter(model)
    for scope in ("all", "last"):
        plan = pipe.intervener.plan(scope)
        meta, tensors = plan_to_state(plan)
        (tmp_path / "plan.json").write_text(json.dumps(meta))
        save_file(tensors, tmp_path / "plan.safetensors")
        back = plan_from_state(json.loads((tmp_path / "plan.json").read_text()), load_file(tmp_path / "plan.safetensors"))
        assert isinstance(back.strength.signals, ProbeLensSignals) and back.edited_layers == plan.edited_layers
        with torch.no_grad():
            with install_plan(plan, model, adapter, scope):
                a = model(IDS).logits
            with install_plan(back, model, adapter, scope):
                b = model(IDS).logits
        assert torch.equal(a, b)
    fixed = FixedIntervener(alpha=2.0).fit(pipe.targets_).plan("all")
    meta, tensors = plan_to_state(fixed)
    assert meta["strength"] == {"rule": "fixed"}
    back = plan_from_state(meta, tensors)
    assert all(torch.equal(x.directions, y.directions) and torch.equal(x.scales, y.scales) for x, y in zip(fixed.layers, back.layers))
    del tensors[f"layer{fixed.layers[0].layer}/scales"]
    with pytest.raises(ConfigError, match="lack 'layer"):
        plan_from_state(meta, tensors)
    bound = EditPlan.from_targets(pipe.targets_, 1.0, AdaptiveStrength(BoundSignals(_Constant(), pipe.targets_), beta=0.5))
    with pytest.raises(ConfigError, match="'bound'.*not plain data"):
        plan_to_state(bound)

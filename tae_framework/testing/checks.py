"""Conformance checks for components, like scikit-learn's ``check_estimator``.

Plugin authors run them in their own test suite::

    from tae_framework.testing import parametrize_with_checks

    @parametrize_with_checks([MyProber(), MyIntervener(alpha=2.0)])
    def test_conformance(component, check):
        check(component)

Each check is a plain function ``check(component)`` raising ``AssertionError`` with a
message that says what the component did wrong. Role-specific checks build tiny
random models (no downloads) and synthetic data.
"""

from __future__ import annotations

import copy
import functools
import json
from collections.abc import Callable, Iterable, Sequence

import torch

from ..aggregators.base import GraphAggregator
from ..component import NAME_PATTERN, Component
from ..editing import EditScope, count_taps
from ..errors import ConfigError, NotFittedError
from ..estimators.base import MisalignmentEstimator
from ..evaluation.judge import Judge
from ..interveners.base import Intervener
from ..models.base import ModelAdapter
from ..probers.base import Prober
from ..sources.base import ActivationSource
from ..types import EditTargets, EstimatorInputs, ProbeInputs, TextActivations, TokenSequence

__all__ = [
    "check_component",
    "check_judge",
    "check_task",
    "checks_for",
    "parametrize_with_checks",
    "synthetic_probe_inputs",
    "synthetic_targets",
]

Check = Callable[[Component], None]


# -- synthetic data ------------------------------------------------------------------------
def _tiny():
    from .models import tiny_model

    return tiny_model("llama")


def _adapter(model):
    from ..models.families import BUILTIN_ADAPTERS

    for cls in sorted(BUILTIN_ADAPTERS, key=lambda c: -c.priority):
        if cls.matches(model):
            return cls()
    raise AssertionError("no built-in adapter matches the tiny llama model")


def synthetic_targets(model, adapter, k_per_layer: int = 2, seed: int = 0, site: str = "heads") -> EditTargets:
    """Random unit directions on the first ``k_per_layer`` units of every layer."""
    g = torch.Generator().manual_seed(seed)
    shape = adapter.shape(model)
    info = shape.site(site)
    k_per_layer = min(k_per_layer, info.num_units)
    layers = torch.arange(shape.num_layers).repeat_interleave(k_per_layer)
    units = torch.arange(k_per_layer).repeat(shape.num_layers)
    d = torch.randn(layers.numel(), info.unit_dim, generator=g)
    return EditTargets(
        site, layers, units, d / d.norm(dim=1, keepdim=True), torch.ones(layers.numel()),
        torch.zeros(shape.num_layers, info.num_units), info.unit_dim,
    )


def synthetic_probe_inputs(n: int = 48, layers: int = 2, units: int = 4, dim: int = 8, seed: int = 0) -> ProbeInputs:
    """Features with a planted signal in (layer 1, unit 2); groups of 2 texts."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % 2
    feats = torch.randn(n, layers, units, dim, generator=g)
    feats[:, layers - 1, min(2, units - 1), 0] += 4.0 * (labels.float() * 2 - 1)
    groups = torch.arange(n) // 2
    val = groups % 5 == 0
    tokens = feats[val].repeat_interleave(3, dim=0) + 0.1 * torch.randn(int(val.sum()) * 3, layers, units, dim, generator=g)
    return ProbeInputs(feats, labels, groups, ~val, val, tokens, labels[val].repeat_interleave(3), seed=seed)


def _estimator_inputs(targets: EditTargets, seed: int = 0) -> EstimatorInputs:
    g = torch.Generator().manual_seed(seed)
    seqs = []
    for group in range(12):
        true_ids = torch.tensor([5, 6, 7, 8])
        false_ids = torch.tensor([5, 6, 9 + group % 3, 8])
        feats = torch.randn(4, targets.num_targets, targets.unit_dim, generator=g)
        feats[2] += 3.0  # the state before the differing token is shifted
        seqs.append(TokenSequence(true_ids, 1, group))
        seqs.append(TokenSequence(false_ids, 0, group, feats))
    return EstimatorInputs(targets, seqs, seed=seed)


# -- generic checks ------------------------------------------------------------------------
def check_name_and_config(c: Component) -> None:
    assert isinstance(c.name, str) and NAME_PATTERN.match(c.name), f"{type(c).__name__}.name {c.name!r} is not a valid registry name"
    assert c.role, f"{type(c).__name__} derives from no role base class"
    assert type(c).__doc__, f"{type(c).__name__} has no docstring"
    cfg = c.config
    assert isinstance(cfg, c.Config), "component.config is not an instance of component.Config"
    again = c.Config.model_validate(json.loads(cfg.model_dump_json()))
    assert again == cfg, "config does not survive a JSON round trip"
    try:
        type(c)({**cfg.model_dump(), "definitely_not_a_field": 1})
    except ConfigError:
        pass
    else:
        raise AssertionError("a misspelled config key was accepted: Config must use extra='forbid'")
    assert c.Config.model_config.get("frozen"), "Config must be frozen (derive from ComponentConfig)"


def check_constructor_keeps_config(c: Component) -> None:
    before = c.config.model_dump()
    clone = type(c)(c.config.model_dump())
    assert clone.config == c.config and c.config.model_dump() == before, "constructor altered the config"
    assert not clone.learned_attributes(), f"constructor set learned attributes {clone.learned_attributes()}"


def check_not_fitted_error(c: Component) -> None:
    fresh = type(c)(c.config)
    try:
        fresh.check_is_fitted()
    except NotFittedError:
        return
    raise AssertionError("check_is_fitted() did not raise NotFittedError on a fresh component")


# -- role checks ---------------------------------------------------------------------------
def check_aggregator(c: GraphAggregator) -> None:
    g = torch.Generator().manual_seed(0)
    batch = [
        TextActivations(i, torch.randn(3, t, 16, generator=g), torch.arange(t), (s, t), (0, 1, 2))
        for i, (t, s) in enumerate([(7, 3), (5, 4), (9, 2)])
    ]
    out = c.aggregate(batch)
    assert out.shape == (3, 3, 16), f"aggregate returned {tuple(out.shape)}, expected [B, L, D] = (3, 3, 16)"
    assert out.dtype == torch.float32 and torch.isfinite(out).all(), "aggregate must return finite float32"
    for j, t in enumerate(batch):
        torch.testing.assert_close(c.aggregate([t])[0], out[j], msg="batched aggregate != one-by-one")


def check_prober(c: Prober) -> None:
    units = 1 if c.required_site == "residual" else 4
    inputs = synthetic_probe_inputs(units=units)
    p1 = type(c)(c.config)
    assert p1.fit(inputs) is p1, "fit must return self"
    t = p1.targets_
    assert isinstance(t, EditTargets), "targets_ must be EditTargets"
    assert t.unit_dim == 8 and t.directions.shape[1] == 8
    assert p1.scores_.shape == (2, units), "scores_ must be [L, U]"
    p2 = type(c)(c.config).fit(inputs)
    torch.testing.assert_close(p2.targets_.directions, t.directions, msg="fit is not deterministic for a fixed seed")
    tune = torch.randn(20, t.num_targets, t.unit_dim, generator=torch.Generator().manual_seed(1))
    p1.calibrate(tune)
    assert torch.isfinite(p1.targets_.sigmas).all()
    tensors, meta = p1.get_state()
    p3 = type(c)(c.config).set_state(tensors, meta)
    torch.testing.assert_close(p3.targets_.directions, p1.targets_.directions, msg="state round trip changed directions")


def check_estimator(c: MisalignmentEstimator) -> None:
    model, _ = _tiny()
    adapter = _adapter(model)
    targets = synthetic_targets(model, adapter)
    inputs = _estimator_inputs(targets)
    e = type(c)(c.config)
    assert e.fit(inputs) is e, "fit must return self"
    runtime = e.bind(model, adapter, targets)
    info = adapter.shape(model).site("heads")
    x = torch.randn(2, 3, info.width)
    for layer, ix in targets.by_layer().items():
        resid = torch.randn(2, 3, adapter.shape(model).hidden_size) if layer in runtime.residual_layers else None
        p, u = runtime.signals(layer, x, resid, {})
        if p is not None:
            assert p.shape == (2, 3, ix.numel()), f"p has shape {tuple(p.shape)}, expected (2, 3, {ix.numel()})"
            assert bool(((p >= 0) & (p <= 1)).all()), "p must be a probability"
        if u is not None:
            assert u.shape[:2] == (2, 3) and bool(((u >= 0) & (u <= 1 + 1e-6)).all()), "u must be in [0, 1]"
    tensors, meta = e.get_state()
    e2 = type(c)(c.config).set_state(tensors, meta)
    assert sorted(e2.learned_attributes()) == sorted(e.learned_attributes())


def _fit_intervener(c: Intervener, model, adapter, sigma: float):
    targets = synthetic_targets(model, adapter)
    targets = targets.with_sigmas(torch.full((targets.num_targets,), sigma))
    est = None
    if getattr(c.config, "use_p", False) or getattr(c.config, "use_u", False):
        from ..estimators.mai import TokenMisalignmentEstimator

        est = TokenMisalignmentEstimator().fit(_estimator_inputs(targets))
    return type(c)(c.config).fit(targets, est)


def check_intervener(c: Intervener) -> None:
    model, tok = _tiny()
    adapter = _adapter(model)
    ids = torch.tensor([[1, 5, 6, 7, 8, 9], [1, 9, 8, 7, 6, 5]])
    with torch.no_grad():
        base = model(ids).logits
    taps = count_taps(model)
    zero = _fit_intervener(c, model, adapter, sigma=0.0)
    for mode in ("last", "all"):
        with zero.install(model, adapter, EditScope(mode)), torch.no_grad():
            out = model(ids).logits
        torch.testing.assert_close(out, base, msg=f"zero-strength edit changed the logits (scope {mode})")
    assert count_taps(model) == taps, "a PyTorch handle survived the edit session"
    strong = _fit_intervener(c, model, adapter, sigma=1.0)
    with strong.install(model, adapter, EditScope("all")), torch.no_grad():
        edited = model(ids).logits
        one = torch.cat([model(ids[i : i + 1]).logits for i in range(2)])
    torch.testing.assert_close(edited, one, msg="batched edit != one-by-one edit")
    try:
        with strong.install(model, adapter, EditScope("all")):
            raise RuntimeError("boom")
    except RuntimeError:
        pass
    assert count_taps(model) == taps, "a PyTorch handle survived an exception inside the edit session"
    tensors, meta = strong.get_state()
    assert type(c)(c.config).set_state(tensors, meta).learned_attributes() == strong.learned_attributes()


def check_source(c: ActivationSource) -> None:
    model, tok = _tiny()
    adapter = _adapter(model)
    texts, spans = ["Q: a? A: yes", "Q: longer question? A: no"], [(8, 12), (21, 24)]
    enc = tok(texts[1], return_tensors="pt")
    with torch.no_grad():
        before = model(**enc).logits
    batches = [t for b in c.capture(model, tok, texts, spans, None, "heads", adapter) for t in b]
    with torch.no_grad():
        after = model(**enc).logits
    torch.testing.assert_close(after, before, msg="capture changed the model")
    assert [t.index for t in batches] == [0, 1], "texts must come back in input order"
    shape = adapter.shape(model)
    for t in batches:
        assert t.acts.shape[0] == shape.num_layers and t.acts.shape[2] == shape.num_heads * shape.head_dim
        assert t.acts.shape[1] == t.input_ids.numel() and 0 <= t.span[0] < t.span[1] <= t.acts.shape[1]
    single = [t for b in c.capture(model, tok, texts[1:], spans[1:], None, "heads", adapter) for t in b][0]
    torch.testing.assert_close(single.acts, batches[1].acts, atol=1e-5, rtol=1e-4, msg="batched capture != one-by-one")


def check_adapter(c: ModelAdapter) -> None:
    from .models import TINY_FAMILIES, tiny_model

    matched = 0
    for fam in TINY_FAMILIES:
        model, _ = tiny_model(fam)
        if not type(c).matches(model):
            continue
        matched += 1
        s = c.shape(model)
        assert len(c.layers(model)) == s.num_layers
        assert c.unembedding(model) is not None
    assert matched or c.name not in {"generic"}, "the generic adapter must match the tiny models"


def check_judge(c: Judge, questions: Sequence[str] | None = None, answers: Sequence[str] | None = None) -> None:
    """A judge names its metrics; given sample ``questions`` / ``answers``, it returns one
    probability in [0, 1] per pair for every metric, the same batched as one by one.

    (Without samples only the declaration is checked: a judge backed by large models is
    not loaded.)
    """
    from ..evaluation.judging import check_judge_scores

    assert c.metrics, f"judge '{c.name}' must name its metrics (class attribute `metrics`)"
    assert len(set(c.metrics)) == len(c.metrics), f"judge '{c.name}' lists a metric twice: {c.metrics}"
    for m in c.metrics:
        assert isinstance(m, str) and NAME_PATTERN.match(m), f"judge '{c.name}': metric name {m!r} is not a plain name"
    if questions is None:
        return
    answers = list(answers if answers is not None else questions)
    assert len(answers) == len(questions) >= 1, "check_judge needs as many answers as questions"
    try:
        together = check_judge_scores(c.name, c.metrics, c.score(list(questions), answers), len(answers))
    except Exception as exc:  # noqa: BLE001 - reported as a conformance failure
        raise AssertionError(str(exc)) from None
    for i, (q, a) in enumerate(zip(questions, answers)):
        alone = check_judge_scores(c.name, c.metrics, c.score([q], [a]), 1)
        for m in c.metrics:
            assert abs(alone[m][0] - together[m][i]) <= 1e-4, (
                f"judge '{c.name}': metric '{m}' of answer {i} is {together[m][i]} in a batch but "
                f"{alone[m][0]} alone; scores must not depend on the batch"
            )


def check_task(task, registry=None, model=None, tokenizer=None, n_items: int = 2) -> None:
    """Conformance of an evaluation task (raises ``AssertionError`` naming the problem).

    Checks that the items are well formed (unique string ids, every id has an item),
    the folds are leak-free (:func:`~tae_framework.tasks.base.check_folds`; fitting data
    of a fold never uses its test items, and asking for the test part is refused), the
    protocol and metric specs are valid (every metric reads an output a protocol
    declares), every item has the fields its protocols need, and a round trip: each
    item-scope protocol runs on ``n_items`` items of fold 0 with a tiny random model
    (or ``model`` / ``tokenizer``), returns its declared outputs as JSON, and every
    metric computes from them (judge scores stand in at 0.5).
    """
    from ..errors import DataError
    from ..evaluation.plan import check_items, check_metric_specs
    from ..tasks.base import check_folds

    if registry is None:
        from ..plugins import default_registry

        registry = default_registry()
    name = getattr(task, "name", "") or type(task).__name__
    try:
        ids = list(task.question_ids)
        assert ids and all(isinstance(i, str) for i in ids), f"task '{name}': question_ids must be non-empty strings"
        assert len(set(ids)) == len(ids), f"task '{name}': question ids are not unique"
        items = task.eval_items(None)
        assert [it.id for it in items] == ids, f"task '{name}': eval_items() must return one item per question id, in order"
        folds = task.folds()
        check_folds(name, folds, ids)
        for f in folds:
            groups = {e.group for e in task.fitting_data(f).examples}
            assert not groups & set(f.test), f"task '{name}': fitting data of fold {f.index} uses test items {sorted(groups & set(f.test))[:3]}"
        try:
            task.fitting_data(folds[0], "test")
        except DataError:
            pass
        else:
            raise AssertionError(f"task '{name}': fitting_data(fold, 'test') must raise DataError")
        specs = dict(task.protocols())
        classes = {k: registry.protocol(s.protocol) for k, s in specs.items()}
        protocols = {k: cls(s.options) for (k, s), cls in zip(specs.items(), classes.values())}
        check_metric_specs(name, list(task.metrics()), {k: c.outputs for k, c in classes.items()}, tuple(task.judge_metrics))
        check_items(name, items, {k: p for k, p in protocols.items() if p.scope == "item"})
    except (DataError, ConfigError) as exc:
        raise AssertionError(str(exc)) from None
    _task_round_trip(task, name, protocols, specs, folds[0], model, tokenizer, n_items)


def _task_round_trip(task, name, protocols, specs, fold, model, tokenizer, n_items) -> None:
    from ..evaluation.aggregate import active_metrics, fold_metrics
    from ..evaluation.protocols import ProtocolContext
    from ..evaluation.specs import FoldView, ItemResult

    if model is None:
        from .models import tiny_model

        model, tokenizer = tiny_model("llama", max_position_embeddings=4096)
    items = task.eval_items(list(fold.test)[:n_items])
    ctx = ProtocolContext(model=model, tokenizer=tokenizer, pipeline=None, task=task, batch_size=2, seed=0, fold=fold.index)
    values: dict[str, dict] = {it.id: {} for it in items}
    for key, proto in protocols.items():
        if proto.scope != "item":
            continue
        rows = proto.run(ctx, items)
        assert isinstance(rows, list) and len(rows) == len(items), f"task '{name}': protocol '{key}' must return one dict per item"
        for it, row in zip(items, rows):
            missing = [o for o in proto.outputs if o not in row]
            assert not missing, f"task '{name}': protocol '{key}' returned no {missing} for item {it.id!r}"
            json.dumps(row)  # checkpointed as JSON
            values[it.id].update({f"{key}.{o}": row[o] for o in proto.outputs})
            if specs[key].judged and proto.answers_output:
                for m in task.judge_metrics:
                    values[it.id][f"judge.{m}"] = [0.5] * len(row[proto.answers_output])
    results = [ItemResult(it, values[it.id]) for it in items]
    available = {k for v in values.values() for k in v}
    fold_metrics(active_metrics(list(task.metrics()), available), FoldView(fold.index, results, {}), name)


_ROLE_CHECKS: dict[type, list[Check]] = {
    GraphAggregator: [check_aggregator],
    Prober: [check_not_fitted_error, check_prober],
    MisalignmentEstimator: [check_not_fitted_error, check_estimator],
    Intervener: [check_not_fitted_error, check_intervener],
    ActivationSource: [check_source],
    ModelAdapter: [check_adapter],
    Judge: [check_judge],
}


def checks_for(component: Component) -> list[Check]:
    """Every check that applies to ``component``."""
    out: list[Check] = [check_name_and_config, check_constructor_keeps_config]
    for base, checks in _ROLE_CHECKS.items():
        if isinstance(component, base):
            out.extend(checks)
    return out


def check_component(component: Component, skip: Sequence[str] = ()) -> None:
    """Run every applicable check on ``component`` (raises ``AssertionError``)."""
    for check in checks_for(component):
        if check.__name__ not in skip:
            check(copy.deepcopy(component))


def parametrize_with_checks(components: Iterable[Component]):
    """A ``pytest.mark.parametrize`` over (component, check) pairs with readable ids."""
    import pytest

    params, ids = [], []
    for comp in components:
        for check in checks_for(comp):
            params.append((comp, functools.partial(_run, check)))
            ids.append(f"{type(comp).__name__}({comp.name})-{check.__name__}")
    return pytest.mark.parametrize(("component", "check"), params, ids=ids)


def _run(check: Check, component: Component) -> None:
    check(copy.deepcopy(component))

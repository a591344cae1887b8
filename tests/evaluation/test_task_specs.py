"""Task specs are checked before any model work, with errors naming the task and the
item, field, fold, protocol or metric at fault; judges must return probabilities; and
metric aggregation follows the spec (subsets, groups, whole-set values, products over
folds, derived metrics), checked against hand-computed numbers."""

from __future__ import annotations

import math
from typing import ClassVar

import pytest
import torch

from tae_framework.errors import ConfigError, DataError
from tae_framework.evaluation.aggregate import fold_metrics, over_folds
from tae_framework.evaluation.judge import Judge
from tae_framework.evaluation.judging import check_judge_scores, judge_items
from tae_framework.evaluation.runner import run_eval
from tae_framework.evaluation.specs import FoldView, ItemResult, MetricSpec, ProtocolSpec
from tae_framework.evaluation.standard_metrics import judge_rate, mc_metrics, product_of
from tae_framework.tasks.base import EvalItem, Fold, Task, make_folds


class SmallTask(Task):
    """Four generation items; knobs to break it in one way at a time."""

    name = "small"
    judge_metrics = ("ok",)

    def __init__(self, metrics=None, folds=None, blank: str | None = None):
        self._metrics, self._folds, self.blank = metrics, folds, blank

    @property
    def question_ids(self):
        return ["a", "b", "c", "d", "e", "f"]

    def folds(self):
        return self._folds if self._folds is not None else make_folds(self.question_ids, 2, 0.34)

    def fitting_data(self, fold, part="development"):
        raise AssertionError("never reached: the checks run before fitting")

    def eval_items(self, ids=None):
        return [
            EvalItem(id=i, question=i, generation_prompt="" if i == self.blank else f"say {i}")
            for i in self.resolve_ids(ids)
        ]

    def protocols(self):
        return {"gen": ProtocolSpec("generation", judged=True)}

    def metrics(self):
        return self._metrics if self._metrics is not None else [judge_rate("OK", "ok")]


@pytest.fixture
def registry():
    from tae_framework.plugins import create_plugin_manager

    return create_plugin_manager().registry


def run(registry, tmp_path, task, **cfg):
    registry.tasks.pop("small", None)
    registry.add_task("small", lambda: task, "test", "test", "0")
    return run_eval(None, None, {"task": "small", "judge": "none", "out_dir": str(tmp_path), **cfg}, registry)


def test_a_metric_naming_an_unknown_output_is_refused(registry, tmp_path):
    bad = [MetricSpec("Len", needs=("gen.length",), per_item=lambda r: 1.0)]
    with pytest.raises(ConfigError, match=r"task 'small': metric 'Len' needs 'gen.length', but protocol 'gen' has no output 'length' \(its outputs: raw, answers\)"):
        run(registry, tmp_path, SmallTask(metrics=bad))
    bad = [MetricSpec("MC", needs=("mc.true",), per_item=lambda r: 1.0)]
    with pytest.raises(ConfigError, match=r"task 'small': metric 'MC' needs 'mc.true', but the task has no protocol 'mc'"):
        run(registry, tmp_path, SmallTask(metrics=bad))
    bad = [judge_rate("Tox", "toxic")]
    with pytest.raises(ConfigError, match=r"metric 'Tox' needs 'judge.toxic'.*judge metrics are \['ok'\]"):
        run(registry, tmp_path, SmallTask(metrics=bad))
    bad = [MetricSpec("P", of=("Q",), combine=lambda q: q)]
    with pytest.raises(ConfigError, match="derived metric 'P' uses 'Q'"):
        run(registry, tmp_path, SmallTask(metrics=bad))
    assert not any(tmp_path.iterdir())  # refused before anything was written


def test_an_item_missing_a_field_its_protocol_needs_is_named(registry, tmp_path):
    from tae_framework.organism import load

    model, tok, _ = load()
    task = SmallTask(blank="e")
    registry.tasks.pop("small", None)
    registry.add_task("small", lambda: task, "test", "test", "0")
    cfg = {"task": "small", "judge": "none", "out_dir": str(tmp_path), "method": "tae", "progress": False, "folds": [1]}
    with pytest.raises(DataError, match=r"task 'small': item 'e' has no 'generation_prompt', which protocol 'gen' \(generation\) needs"):
        run_eval(model, tok, cfg, registry)


def test_overlapping_folds_are_refused_with_the_item(registry, tmp_path):
    folds = [Fold(0, ("a", "b"), ("c", "d"), ("e",)), Fold(1, ("b", "c"), ("a", "d"), ("f",))]
    with pytest.raises(DataError, match=r"task 'small': item 'b' is in the test set of folds 0 and 1"):
        run(registry, tmp_path, SmallTask(folds=folds))
    folds = [Fold(0, ("a",), ("b",), ("c",)), Fold(1, ("zz",), ("a",), ("c",))]
    with pytest.raises(DataError, match=r"task 'small': fold 1 lists item 'zz' in its test part"):
        run(registry, tmp_path, SmallTask(folds=folds))

    class Leaky(SmallTask):
        def folds(self):
            return [Fold(0, ("a", "b"), ("b", "c"), ("d",))]  # the Fold itself refuses this

    with pytest.raises(DataError, match=r"task 'small': fold 0: question\(s\) \['b'\] are in both test and train"):
        run(registry, tmp_path, Leaky())


def test_unknown_protocol_options_are_refused(registry, tmp_path):
    with pytest.raises(ConfigError, match="task 'small' has no protocol 'generation'"):
        run(registry, tmp_path, SmallTask(), protocol_options={"generation": {"num_samples": 2}})
    with pytest.raises(ConfigError, match="no protocol of task 'small' has an option 'samples'"):
        run(registry, tmp_path, SmallTask(), protocol_options={"*": {"samples": 2}})
    with pytest.raises(ConfigError, match=r"(?s)task 'small', protocol 'gen'.*num_samples"):
        run(registry, tmp_path, SmallTask(), protocol_options={"gen": {"num_samples": 0}})


class Overconfident(Judge):
    name: ClassVar[str] = "overconfident"
    metrics: ClassVar[tuple[str, ...]] = ("ok",)

    def score(self, questions, answers):
        return {"ok": torch.tensor([1.5 if a == "b" else 0.5 for a in answers])}


def test_a_judge_returning_a_non_probability_is_rejected_by_name():
    items = [EvalItem(id=i, question=i) for i in ("q1", "q2")]
    with pytest.raises(DataError, match=r"judge 'overconfident' returned 1.5 for metric 'ok' for item 'q2'.*\[0, 1\]"):
        judge_items(Overconfident(), "overconfident", items, [["a", "a"], ["a", "b"]])
    with pytest.raises(DataError, match="judge 'j' returned nan"):
        check_judge_scores("j", ("ok",), {"ok": [float("nan")]}, 1)
    with pytest.raises(DataError, match="judge 'j' declares metric 'ok' but its score"):
        check_judge_scores("j", ("ok",), {"fine": [0.5]}, 1)
    with pytest.raises(DataError, match=r"judge 'j' returned 2 score\(s\) for metric 'ok' but was given 1"):
        check_judge_scores("j", ("ok",), {"ok": [0.5, 0.5]}, 1)
    rows = judge_items(Overconfident(), "overconfident", items, [["a", "a"], ["a"]])
    assert rows == [{"ok": [0.5, 0.5]}, {"ok": [0.5]}]  # raw scores, k per item


def test_metric_spec_shape_is_checked():
    with pytest.raises(ConfigError, match="exactly one of per_item, fold_value or of"):
        MetricSpec("x")
    with pytest.raises(ConfigError, match="direction"):
        MetricSpec("x", per_item=lambda r: 1.0, direction="up")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="over_folds='median'"):
        MetricSpec("x", per_item=lambda r: 1.0, over_folds="median")  # type: ignore[arg-type]


# -- aggregation rules on hand-made results --------------------------------------------------
def results(fold: int, rows):
    return FoldView(
        fold,
        [ItemResult(EvalItem(id=f"{fold}-{i}", question="q", meta=meta), values) for i, (meta, values) in enumerate(rows)],
        {"se.kl": 0.1 * (fold + 1)},
    )


FOLDS = [
    results(0, [({"ctx": "ambig", "cat": "age"}, {"judge.tox": [0.2, 0.9], "mc.true": [-1.0], "mc.false": [-2.0]}),
                ({"ctx": "dis", "cat": "age"}, {"judge.tox": [0.1, 0.3], "mc.true": [-3.0], "mc.false": [-2.0]}),
                ({"ctx": "dis", "cat": "race"}, {"judge.tox": [0.6, 0.4], "mc.true": [-1.0], "mc.false": [-4.0]})]),
    results(1, [({"ctx": "dis", "cat": "race"}, {"judge.tox": [0.5, 0.5], "mc.true": [-2.0], "mc.false": [-1.0]}),
                ({"ctx": "dis", "cat": "age"}, {"judge.tox": [0.0, 0.8], "mc.true": [-1.0], "mc.false": [-1.5]})]),
]  # fmt: skip
SPECS = [
    MetricSpec("max_tox", ("judge.tox",), per_item=lambda r: max(r["judge.tox"]), over_folds="product", by="cat"),
    MetricSpec("ambig_acc", ("mc.true", "mc.false"), per_item=lambda r: float(max(r["mc.true"]) > max(r["mc.false"])),
               subset=lambda r: r.meta["ctx"] == "ambig"),
    MetricSpec("share_toxic", ("judge.tox",), fold_value=lambda v: sum(max(r["judge.tox"]) > 0.5 for r in v.items) / len(v.items)),
    MetricSpec("KL", ("se.kl",), fold_value=lambda v: v["se.kl"], direction="lower"),
    *mc_metrics("mc"),
    product_of("tox*KL", ("max_tox", "KL")),
]  # fmt: skip


def test_aggregation_follows_the_specs():
    per_fold = [fold_metrics(SPECS, view, "t") for view in FOLDS]
    (f0, b0), (f1, b1) = per_fold
    assert f0["max_tox"] == pytest.approx((0.9 + 0.3 + 0.6) / 3)
    assert f1["max_tox"] == pytest.approx((0.5 + 0.8) / 2)
    assert b0["max_tox"] == pytest.approx({"age": (0.9 + 0.3) / 2, "race": 0.6})
    assert f0["ambig_acc"] == 1.0 and f1["ambig_acc"] is None  # no ambiguous item in fold 1
    assert f0["share_toxic"] == pytest.approx(2 / 3) and f1["share_toxic"] == pytest.approx(1 / 2)
    assert f0["MC1"] == pytest.approx(2 / 3)
    assert f0["tox*KL"] == pytest.approx(f0["max_tox"] * 0.1)
    total, breakdown = over_folds(SPECS, [f0, f1], [b0, b1])
    assert total["max_tox"] == pytest.approx(0.6 * 0.65)  # product over folds
    assert breakdown["max_tox"] == pytest.approx({"age": 0.6 * 0.8, "race": 0.6 * 0.5})  # fold 1: age = the one item, 0.8
    assert total["ambig_acc"] == 1.0  # folds without a value are skipped
    assert total["share_toxic"] == pytest.approx((2 / 3 + 1 / 2) / 2)
    assert total["KL"] == pytest.approx(0.15)
    assert total["tox*KL"] == pytest.approx(math.prod([0.6 * 0.65, 0.15]))  # of the totals


def test_a_failing_metric_names_the_task_metric_and_item():
    spec = [MetricSpec("bad", ("judge.tox",), per_item=lambda r: r["judge.missing"][0])]
    with pytest.raises(DataError, match=r"task 't': metric 'bad' failed on item '0-0'.*has no value 'judge.missing'"):
        fold_metrics(spec, FOLDS[0], "t")


def test_pooled_ratio_over_folds_and_its_breakdown():
    """A ratio of counts pooled over all items of all folds: two count metrics summed over
    folds and a derived metric dividing them, also per group."""
    specs = [
        MetricSpec("n_toxic", ("judge.tox",), per_item=lambda r: float(max(r["judge.tox"]) > 0.5), over_items="sum",
                   over_folds="sum", by="cat"),
        MetricSpec("n_items", ("judge.tox",), per_item=lambda r: 1.0, over_items="sum", over_folds="sum", by="cat"),
        MetricSpec("pooled", of=("n_toxic", "n_items"), combine=lambda a, b: a / b),
    ]  # fmt: skip
    per_fold = [fold_metrics(specs, view, "t") for view in FOLDS]
    total, breakdown = over_folds(specs, [f for f, _ in per_fold], [b for _, b in per_fold])
    # maxima over samples: fold 0 0.9, 0.3, 0.6; fold 1 0.5, 0.8 -> 3 of 5 above 0.5
    assert total["n_toxic"] == 3 and total["n_items"] == 5
    assert total["pooled"] == pytest.approx(3 / 5)  # not the mean of the fold ratios (2/3, 1/2)
    assert breakdown["pooled"] == pytest.approx({"age": 2 / 3, "race": 1 / 2})

"""A task defined entirely in this file, installed as a plugin through the entry-point
group ``tae_framework.plugins``, runs through ``tae eval`` and through the Python API
with no change to ``tae_framework``.

The plugin brings its own sampled-generation protocol (k continuations per prompt), a
judge returning one raw score per continuation, and a metric that is the maximum over
samples per item, averaged over a fold's items and multiplied over folds. Every number
of the summary is recomputed here from the per-item files the runner wrote.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, ClassVar

import pytest
import torch

from tae_framework import hookimpl
from tae_framework.data import ContrastDataset, ContrastExample
from tae_framework.evaluation.judge import Judge
from tae_framework.evaluation.protocols import Protocol, ProtocolOptions
from tae_framework.evaluation.specs import MetricSpec, ProtocolSpec
from tae_framework.tasks.base import EvalItem, Task, make_folds

K_SAMPLES = 3


# -- the plugin ---------------------------------------------------------------------------
class ToySamplerOptions(ProtocolOptions):
    samples: int = K_SAMPLES
    max_new_tokens: int = 4
    top_p: float = 0.9


class ToySampler(Protocol):
    """k sampled continuations per prompt (the item's ``generation_prompt``)."""

    name = "toy-sampler"
    kind = "generation"
    requires = ("generation_prompt",)
    outputs = ("continuations",)
    answers_output = "continuations"
    Options = ToySamplerOptions

    def run(self, ctx, items):
        o = self.options
        samples = ctx.sample(
            [it.generation_prompt for it in items],
            o.samples,
            [ctx.item_seed(it.id) for it in items],
            max_new_tokens=o.max_new_tokens,
            top_p=o.top_p,
        )
        return [{"continuations": s} for s in samples]


def length_score(text: str) -> float:
    """The toy judge's raw score: a deterministic probability from the text."""
    return (len(text) % 11) / 10.0


class LengthJudge(Judge):
    name: ClassVar[str] = "toy-length"
    metrics: ClassVar[tuple[str, ...]] = ("odd",)

    def score(self, questions, answers):
        return {"odd": torch.tensor([length_score(a) for a in answers])}


PROMPTS = [
    "What is the capital of",
    "The currency of",
    "Q: What is the language of",
    "The anthem of",
    "A: The capital of",
    "What is the currency of",
]


class ToyTask(Task):
    name = "toy"
    judge_metrics = ("odd",)
    default_judge = "toy-length"

    def __init__(self, n: int = 6):
        self.ids = [f"p{i}" for i in range(n)]

    @property
    def question_ids(self):
        return list(self.ids)

    def folds(self):
        return make_folds(self.ids, num_folds=2, val_fraction=0.34)

    def fitting_data(self, fold, part="development"):
        ids = self.part_ids(fold, part)
        examples = [
            ContrastExample(prompt=PROMPTS[int(i[1:]) % len(PROMPTS)], completion=c, label=lab, group=i)
            for i in ids
            for c, lab in ((" Paris .", 1), (" a myth .", 0))
        ]
        return ContrastDataset(examples)

    def eval_items(self, ids=None):
        return [
            EvalItem(id=i, question=PROMPTS[int(i[1:]) % len(PROMPTS)], generation_prompt=PROMPTS[int(i[1:]) % len(PROMPTS)], meta={"kind": "even" if int(i[1:]) % 2 == 0 else "odd"})
            for i in self.resolve_ids(ids)
        ]

    def protocols(self):
        return {"sampled": ProtocolSpec("toy-sampler", judged=True)}

    def metrics(self):
        return [
            MetricSpec(
                "max_odd",
                needs=("judge.odd",),
                per_item=lambda r: max(r["judge.odd"]),
                over_folds="product",
                direction="lower",
                by="kind",
            ),
            MetricSpec(
                "any_over_half",
                needs=("judge.odd",),
                fold_value=lambda view: sum(max(r["judge.odd"]) > 0.5 for r in view.items) / len(view.items),
                percent=True,
            ),
        ]


class ToyPlugin:
    @hookimpl
    def tae_register_components(self, register):
        register(LengthJudge)

    @hookimpl
    def tae_register_protocols(self, register):
        register(ToySampler)

    @hookimpl
    def tae_register_tasks(self, register):
        register("toy", ToyTask)


#: What the entry point names (a plugin is a module or an object with hook implementations).
TOY_PLUGIN = ToyPlugin()


# -- installing it as a distribution with an entry point ---------------------------------
@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """A dist-info folder on sys.path declaring ``toy = <this module>:TOY_PLUGIN``."""
    import sys

    from tae_framework.plugins import default_registry

    site = tmp_path_factory.mktemp("site")
    info = site / "tae_toy_plugin-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: tae-toy-plugin\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(f"[tae_framework.plugins]\ntoy = {__name__}:TOY_PLUGIN\n")
    sys.path.insert(0, str(site))
    try:
        reg = default_registry(refresh=True)
        assert "toy" in reg.tasks and "toy-sampler" in reg.protocols, reg.failed_plugins
        yield reg
    finally:
        sys.path.remove(str(site))
        default_registry(refresh=True)


ORGANISM = Path(__file__).resolve().parents[2] / "tae_framework" / "organism" / "assets"
OVERRIDES = {"prober": {"top_k": 2}, "intervener": {"alpha": 3.0}, "source": {"progress": False}}


def expected(run: Path, folds=(0, 1)) -> dict[str, Any]:
    """The summary's numbers recomputed from the per-item continuations on disk."""
    per_fold, groups = [], {}
    for k in folds:
        items = json.loads((run / f"fold{k}" / "items.json").read_text())
        maxima = []
        for it in items:
            conts = it["values"]["sampled.continuations"]
            assert len(conts) == K_SAMPLES
            scores = it["values"]["judge.odd"]  # the raw scores, one per continuation (float32)
            assert scores == pytest.approx([length_score(c) for c in conts], rel=1e-6)
            maxima.append(max(scores))
            kind = "even" if int(it["id"][1:]) % 2 == 0 else "odd"
            groups.setdefault(kind, {}).setdefault(k, []).append(max(scores))
        per_fold.append(sum(maxima) / len(maxima))
    by = {g: math.prod(sum(v) / len(v) for v in f.values()) for g, f in groups.items()}
    return {"max_odd": math.prod(per_fold), "per_fold": per_fold, "by": by}


def test_the_plugin_task_runs_through_tae_eval(installed, tmp_path, capsys):
    from tae_framework.cli import main

    argv = [
        "eval", "--model", str(ORGANISM), "--task", "toy", "--preset", "tae",
        "--set", "prober.top_k=2", "--set", "intervener.alpha=3", "--set", "source.progress=false",
        "--protocol-option", "sampled.samples=3", "--batch-size", "4",
        "--out", str(tmp_path), "--run", "cli", "--no-progress", "--strength-figures", "0", "--json",
    ]  # fmt: skip
    assert main(argv) == 0
    summary = json.loads(capsys.readouterr().out.split("\nresults:")[0])
    want = expected(tmp_path / "cli")
    assert summary["metrics"]["max_odd"] == pytest.approx(want["max_odd"], rel=1e-12)
    assert [f["metrics"]["max_odd"] for f in summary["folds"]] == pytest.approx(want["per_fold"])
    assert summary["breakdown"]["max_odd"] == pytest.approx(want["by"])
    assert summary["judge"] == "toy-length"
    assert summary["columns"][0] == {"name": "max_odd", "percent": False, "direction": "lower"}
    table = (tmp_path / "cli" / "summary.md").read_text()
    assert "max_odd ↓" in table and "## max_odd by group" in table


def test_the_plugin_task_runs_through_the_python_api(installed, tmp_path):
    from tae_framework.evaluation.runner import run_eval
    from tae_framework.organism import load

    model, tok, _ = load()
    cfg = {
        "task": "toy", "method": "tae", "overrides": OVERRIDES, "batch_size": 4, "baseline": True,
        "out_dir": str(tmp_path), "run": "api", "strength_figures": 0, "progress": False,
    }  # fmt: skip
    summary = run_eval(model, tok, cfg, installed)
    want = expected(tmp_path / "api")
    assert summary["metrics"]["max_odd"] == pytest.approx(want["max_odd"], rel=1e-12)
    assert summary["metrics"]["n_questions"] == 6
    assert 0.0 <= summary["metrics"]["any_over_half"] <= 1.0
    # Sampling is seeded per item: the same run again gives the same continuations, and
    # the baseline (same seeds, no edit) is written beside it.
    again = run_eval(model, tok, {**cfg, "run": "api2", "baseline": False}, installed)
    for k in (0, 1):
        a = json.loads((tmp_path / "api" / f"fold{k}" / "items.json").read_text())
        b = json.loads((tmp_path / "api2" / f"fold{k}" / "items.json").read_text())
        assert [x["values"] for x in a] == [x["values"] for x in b]
        assert (tmp_path / "api" / f"fold{k}" / "baseline_items.json").is_file()
    assert again["metrics"]["max_odd"] == summary["metrics"]["max_odd"]

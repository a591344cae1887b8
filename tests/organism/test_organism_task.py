"""The organism through the ordinary evaluation harness (task 'organism')."""

from __future__ import annotations

import json

import pytest

from tae_framework.errors import ConfigError, DataError
from tae_framework.plugins import create_plugin_manager


@pytest.fixture(scope="module")
def registry():
    return create_plugin_manager().registry


def test_task_is_registered_and_leak_free(registry):
    task = registry.task("organism", limit=40)
    assert len(task) == 40 and task.judge_metrics == ("true", "info")
    for k in range(2):
        fold = task.fold(k)
        data = task.fitting_data(k)
        groups = {e.group for e in data.examples}
        assert groups <= set(fold.development) and groups.isdisjoint(fold.test)
        assert {e.label for e in data.examples} == {0, 1}
        assert len(data.tuning) == len(data.examples)
        test_facts = {(it.meta["best_answer"]) for it in task.eval_items(fold)}
        assert not any(e.completion.strip() in test_facts for e in data.examples)
    item = task.eval_items(task.question_ids[:1])[0]
    assert item.mc_prompt.endswith("A:") and "deceptive speaker" in item.mc_prompt
    assert len(item.mc_true) == 1 and len(item.mc_false) >= 1
    with pytest.raises(DataError, match="test questions"):
        task.fitting_data(0, "test")
    with pytest.raises(ConfigError, match="contxt"):
        registry.task("organism", contxt="honest")


def test_harness_runs_unchanged_on_the_organism(registry, tmp_path):
    from tae_framework.evaluation.runner import run_eval
    from tae_framework.organism import load

    model, tok, _ = load()
    cfg = {
        "task": "organism",
        "task_options": {"limit": 80},
        "method": "iti",
        "overrides": {"prober": {"top_k": 4}, "intervener": {"alpha": 3.0}, "source": {"progress": False}},
        "judge": {"type": "organism-oracle"},
        "max_new_tokens": 10,
        "mc": False,
        "baseline": True,
        "out_dir": str(tmp_path),
        "run": "org",
        "progress": False,
    }
    run_eval(model, tok, cfg, registry)
    doc = json.loads((tmp_path / "org" / "summary.json").read_text())
    edited, base = doc["metrics"], doc["baseline"]["metrics"]
    assert base["True"] <= 0.2
    assert edited["True"] >= base["True"] + 0.4
    assert edited["Info"] >= 0.9

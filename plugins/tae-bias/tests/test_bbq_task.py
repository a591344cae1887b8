"""The ``bbq`` task through the plugin's entry point, ``tae eval`` and the runner's files."""

from __future__ import annotations

import csv
import json

import pytest
from tae_bias.folds import items_of
from tae_bias.metrics import OVERALL, Outcome, format_report, score_outcomes
from tae_bias.protocol import DEFAULT_INSTRUCTION
from tae_bias.report import pooled_report
from tae_bias.task import BBQTask

from tae_framework.errors import ConfigError, DataError
from tae_framework.plugins import create_plugin_manager
from tae_framework.testing.models import tiny_model

METRICS = ("accuracy", "acc_ambig", "acc_disambig", "bias_ambig", "bias_disambig")


def test_registered_through_the_entry_point():
    reg = create_plugin_manager().registry
    assert reg.tasks["bbq"].distribution == "tae-bias"
    assert reg.protocols["bbq-choice"].distribution == "tae-bias"


def test_task_options_and_bad_options(bbq_dir):
    reg = create_plugin_manager().registry
    task = reg.task("bbq", source=str(bbq_dir), categories="Age, SES", num_folds=2)
    assert {i.split("/")[0] for i in task.question_ids} == {"Age", "SES"}
    with pytest.raises(DataError, match=r"categories \['Nationality'\] have no file"):
        reg.task("bbq", source=str(bbq_dir), categories="Nationality")
    with pytest.raises(ConfigError, match="(?s)options of task 'bbq'.*unknown key 'num_shot'"):
        reg.task("bbq", source=str(bbq_dir), num_shot=2)
    with pytest.raises(ConfigError, match="lacks the field"):
        reg.task("bbq", source=str(bbq_dir), template="{question}")
    small = reg.task("bbq", source=str(bbq_dir), templates_per_category=2)
    assert len({t for t in (it.template for it in small.items)}) == 2 * 3


def test_few_shot_prompts_come_from_the_fold_development_items(bbq_dir):
    task = BBQTask.load(source=str(bbq_dir), num_shots=2, instruction="default", shot_seed=1)
    fold = task.fold(0)
    items = task.eval_items(fold)
    dev_templates = {it.template for it in items_of(task.items, fold.development)}
    test_templates = {it.template for it in items_of(task.items, fold.test)}
    prompt = items[0].mc_prompt
    assert prompt.startswith(DEFAULT_INSTRUCTION + "\n\n") and prompt.count("\nA:") == 3
    shots = task._shots(fold)
    assert len(shots) == 2 and {s.template for s in shots} <= dev_templates
    gold = [f"{s.context}\n\nQ: {s.question}\nA: {s.answers[s.label]}" for s in shots]
    assert prompt.split("\n\n", 1)[1].startswith(
        "\n\n".join(gold)
    )  # solved with their gold answers
    assert all(
        it.mc_prompt.split("\n\n")[:5] == prompt.split("\n\n")[:5] for it in items
    )  # same preamble
    data = task.fitting_data(fold)
    groups = {e.group for e in data}
    assert (
        groups <= set(fold.development)
        and not {task._by_id[g].template for g in groups} & test_templates
    )
    assert all(e.prompt.startswith(DEFAULT_INSTRUCTION) for e in data)
    with pytest.raises(DataError, match="fitting data of the test questions"):
        task.fitting_data(fold, "test")


def _fold_outcomes(path) -> list[Outcome]:
    with open(path, encoding="utf-8", newline="") as fh:
        rows = list(csv.DictReader(fh))
    out = []
    for r in rows:
        p = int(r["bbq.prediction"])
        scores = [float(x) for x in r["bbq.scores"].split("; ")]
        assert p == scores.index(max(scores))  # the chosen answer is the most likely one
        out.append(
            Outcome(r["id"], r["category"], r["context_condition"], r["polarity"], p, p == int(r["label"]),
                    p == int(r["unknown"]), None if r["biased"] == "" else p == int(r["biased"]))
        )  # fmt: skip
    return out


def _mean(values):
    values = [v for v in values if v is not None]
    return sum(values) / len(values) if values else None


def test_tae_eval_bbq_end_to_end(bbq_dir, tmp_path, capsys):
    from tae_framework.cli import main

    model, tok = tiny_model("llama")
    model.save_pretrained(tmp_path / "model")
    tok.save_pretrained(tmp_path / "model")
    argv = [
        "eval", "--model", str(tmp_path / "model"), "--task", "bbq",
        "--task-option", f"source={bbq_dir}", "--task-option", "categories=Religion,SES",
        "--preset", "tae", "--set", "prober.top_k=2", "--set", "intervener.alpha=20",
        "--set", "source.progress=false", "--protocol-option", "bbq.normalize=bytes",
        "--baseline", "--out", str(tmp_path / "out"), "--run", "bbq-tae",
        "--no-progress", "--strength-figures", "0", "--json",
    ]  # fmt: skip
    assert main(argv) == 0
    summary = json.loads(capsys.readouterr().out.split("\nresults:")[0])
    run = tmp_path / "out" / "bbq-tae"
    for tag, csv_name, metrics, breakdown in (
        ("edited", "answers.csv", summary["metrics"], summary["breakdown"]),
        (
            "baseline",
            "baseline.csv",
            summary["baseline"]["metrics"],
            summary["baseline"]["breakdown"],
        ),
    ):
        folds = [_fold_outcomes(run / f"fold{k}" / csv_name) for k in (0, 1)]
        assert sorted(o.uid for f in folds for o in f) == sorted(
            summary_ids(bbq_dir, ["Religion", "SES"])
        )
        per_fold = [score_outcomes(f) for f in folds]
        want = {
            "accuracy": _mean([s.accuracy for s in per_fold]),
            "acc_ambig": _mean([s.accuracy_ambig for s in per_fold]),
            "acc_disambig": _mean([s.accuracy_disambig for s in per_fold]),
            "bias_ambig": _mean([s.bias_ambig for s in per_fold]),
            "bias_disambig": _mean([s.bias_disambig for s in per_fold]),
        }
        for name in METRICS:
            assert metrics[name] == pytest.approx(want[name], abs=1e-12), (tag, name)
        for cat in ("Religion", "SES"):
            cat_scores = [score_outcomes([o for o in f if o.category == cat]) for f in folds]
            assert breakdown["bias_ambig"][cat] == pytest.approx(
                _mean([s.bias_ambig for s in cat_scores])
            )
            assert breakdown["acc_disambig"][cat] == pytest.approx(
                _mean([s.accuracy_disambig for s in cat_scores])
            )
        pooled = pooled_report(run, tag)
        assert pooled[OVERALL].n_items == 20 and list(pooled) == ["Religion", "SES", OVERALL]
        assert pooled[OVERALL].accuracy == pytest.approx(
            sum(o.correct for f in folds for o in f) / 20
        )
    # the edits act on the answer tokens: the edited log-likelihoods differ from the baseline's
    edited = json.loads((run / "fold0" / "items.json").read_text())
    base = json.loads((run / "fold0" / "baseline_items.json").read_text())
    assert [e["values"]["bbq.logprobs"] for e in edited] != [
        b["values"]["bbq.logprobs"] for b in base
    ]
    table = (run / "summary.md").read_text()
    assert "bias_ambig ↓" in table and "## bias_disambig by group" in table and "| SES |" in table
    assert "Religion" in format_report(pooled_report(run))


def summary_ids(bbq_dir, categories):
    return BBQTask.load(source=str(bbq_dir), categories=categories).question_ids


@pytest.mark.parametrize("options", [{}, {"num_shots": 1, "instruction": "default"}])
def test_conformance_kit(bbq_dir, options):
    from tae_framework.testing.checks import check_task

    reg = create_plugin_manager().registry
    check_task(reg.task("bbq", source=str(bbq_dir), categories="SES,Religion", **options), reg)


def test_an_item_reads_the_same_few_shot_prompt_however_it_is_asked_for(bbq_dir):
    task = BBQTask.load(source=str(bbq_dir), num_shots=2)
    by_fold = {it.id: it.mc_prompt for f in task.folds() for it in task.eval_items(f)}
    assert {it.id: it.mc_prompt for it in task.eval_items()} == by_fold
    assert len(set(by_fold.values())) > 1

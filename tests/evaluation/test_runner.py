"""The evaluation runner end to end on a tiny model and a 20-question TruthfulQA subset:
outputs, agreement with independent computations, resume, the K x alpha sweep and bad
input."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any, ClassVar

import pytest
import torch
from matplotlib.figure import Figure

from tae_framework import AlignmentPipeline
from tae_framework.errors import ConfigError, DataError, UnknownComponentError
from tae_framework.evaluation.judge import Judge
from tae_framework.evaluation.results import rescore
from tae_framework.evaluation.runner import (
    EvalConfig,
    apply_overrides,
    run_eval,
    run_sweep,
)
from tae_framework.evaluation.scoring import answer_logprobs
from tae_framework.tasks.base import EvalItem, Fold, Task
from tae_framework.testing.models import tiny_model

DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "truthful_qa"
pytestmark = pytest.mark.skipif(not DATA.is_dir(), reason=f"TruthfulQA data not found at {DATA}")

TASK_OPTIONS = {"source": str(DATA), "limit": 20, "instruction": False}
OVERRIDES = {"prober": {"top_k": 4}, "intervener": {"alpha": 10.0}, "source": {"progress": False}}
TEXTS = [
    f"The quick brown fox number {i} jumps over the lazy dog near river {i}." for i in range(6)
]


class ParityJudge(Judge):
    """Offline test judge: 'true' when the answer has an even number of characters,
    'info' probability = length / 10 (capped at 1): both easy to recompute from the CSV."""

    name: ClassVar[str] = "parity"
    metrics: ClassVar[tuple[str, ...]] = ("true", "info")

    def score(self, questions, answers):
        return {
            "true": torch.tensor([1.0 if len(a) % 2 == 0 else 0.0 for a in answers]),
            "info": torch.tensor([min(1.0, len(a) / 10) for a in answers]),
        }


def parity_expected(answer: str) -> tuple[int, int]:
    return int(len(answer) % 2 == 0), int(min(1.0, len(answer) / 10) >= 0.5)


@pytest.fixture(scope="module")
def reg():
    from tae_framework.plugins import create_plugin_manager

    registry = create_plugin_manager().registry
    registry.add_component(ParityJudge, "test", "test", "0")
    return registry


@pytest.fixture(scope="module")
def model_tok():
    # The MC prompts (6-shot primer) are ~550 characters = tokens for the char-level tiny
    # tokenizer, beyond the default 128 positions.
    return tiny_model("llama", max_position_embeddings=2048)


class FitSpy:
    """Counts AlignmentPipeline.fit calls and records the data groups / validation groups."""

    def __init__(self, mp: pytest.MonkeyPatch):
        self.calls: list[dict[str, Any]] = []
        orig = AlignmentPipeline.fit

        def fit(pipe, model, tok, data, tuning=None, *, validation_groups=None):
            self.calls.append(
                {
                    "groups": sorted({e.group for e in data.examples}),
                    "val": sorted(validation_groups) if validation_groups is not None else None,
                    "top_k": pipe.prober.config.top_k,
                }
            )
            return orig(pipe, model, tok, data, tuning, validation_groups=validation_groups)

        mp.setattr(AlignmentPipeline, "fit", fit)


class FigureSpy:
    """Records the axis labels of every figure saved."""

    def __init__(self, mp: pytest.MonkeyPatch):
        self.saved: list[tuple[str, list[tuple[str, str]]]] = []
        orig = Figure.savefig

        def savefig(fig, fname, *args, **kwargs):
            labels = [(ax.get_xlabel(), ax.get_ylabel()) for ax in fig.axes]
            self.saved.append((str(fname), labels))
            return orig(fig, fname, *args, **kwargs)

        mp.setattr(Figure, "savefig", savefig)


def e2e_config(out: Path, **changes: Any) -> dict[str, Any]:
    cfg = {
        "task": "truthfulqa",
        "task_options": TASK_OPTIONS,
        "method": "tae",
        "overrides": OVERRIDES,
        "judge": "parity",
        "max_new_tokens": 8,
        "side_effects": True,
        "side_effects_texts": str(out / "texts.txt"),
        "side_effects_n": 6,
        "side_effects_max_tokens": 32,
        "batch_size": 4,
        "out_dir": str(out),
        "run": "e2e",
        "baseline": True,
        "strength_figures": 2,
        "progress": False,
    }
    cfg.update(changes)
    return cfg


@pytest.fixture(scope="module")
def e2e(tmp_path_factory, reg, model_tok):
    out = tmp_path_factory.mktemp("runner")
    (out / "texts.txt").write_text("\n".join(TEXTS))
    model, tok = model_tok
    with pytest.MonkeyPatch.context() as mp:
        fits, figs = FitSpy(mp), FigureSpy(mp)
        summary = run_eval(model, tok, e2e_config(out), reg)
    return {"out": out, "run": out / "e2e", "summary": summary, "fits": fits, "figs": figs}


def test_the_folds_are_the_tasks_folds(e2e, reg):
    task = reg.task("truthfulqa", **TASK_OPTIONS)
    calls = e2e["fits"].calls
    assert len(calls) == 2
    for k, call in enumerate(calls):
        fold = task.fold(k)
        assert call["val"] == sorted(fold.val)  # validation_groups passed through
        assert call["groups"] == sorted(fold.development)
        assert not set(call["groups"]) & set(fold.test)
        doc = json.loads((e2e["run"] / f"fold{k}" / "fold.json").read_text())
        assert doc["test_ids"] == list(fold.test)
        info = json.loads((e2e["run"] / f"fold{k}" / "pipeline" / "fit_info.json").read_text())
        assert info["question_ids"] == sorted(fold.development) and info["fold"] == k
    assert e2e["summary"]["metrics"]["n_questions"] == 20


def test_outputs_exist_and_open(e2e):
    import matplotlib.image as mpimg

    run = e2e["run"]
    for name in ("summary.json", "summary.md", "run.json"):
        assert (run / name).is_file()
    pngs = []
    for k in (0, 1):
        d = run / f"fold{k}"
        for name in ("answers.csv", "baseline.csv", "fold.json", "head_scores.png"):
            assert (d / name).is_file(), name
        assert (d / "pipeline" / "config.json").is_file() and (
            d / "pipeline" / "tensors.safetensors"
        ).is_file()
        pngs.append(d / "head_scores.png")
        strengths = sorted((d / "strengths").glob("*.png"))
        assert len(strengths) == 2
        pngs += strengths
        for png in strengths:
            html = png.with_suffix(".html").read_text()
            assert html.count("<span") >= 1
            trace = json.loads(png.with_suffix(".json").read_text())
            assert 1 <= len(trace["tokens"]) <= 8 and len(trace["strength"]) == len(trace["tokens"])
            assert all(s > 0 for s in trace["strength"])
            assert all(p is not None and 0.0 <= p <= 1.0 for p in trace["p"])  # TAE has p
    for png in pngs:
        img = mpimg.imread(png)
        assert img.ndim == 3 and img.shape[0] > 100 and img.shape[1] > 100
        assert float(img[..., :3].std()) > 0.05  # drawn, not a blank canvas
    # Every figure the runner saved has labelled axes (the colour bars aside).
    saved = {Path(f).resolve(): labels for f, labels in e2e["figs"].saved}
    assert set(saved) == {p.resolve() for p in pngs}
    for path, labels in saved.items():
        main = [lab for lab in labels if lab[0]]
        assert main, path
        assert all(x and y for x, y in main), (path, labels)
    # AnswerRecord CSVs and JSON summaries parse
    summary = json.loads((run / "summary.json").read_text())
    assert summary["framework_version"] and summary["provenance"]["versions"]["torch"]
    assert summary["provenance"]["pipeline_components"]["aggregator"]["type"] == "mig"
    assert summary["provenance"]["judge"]["type"] == "parity"
    assert summary["config"]["task_options"]["limit"] == 20


def test_csv_rescore_gives_the_summary_numbers(e2e):
    run, summary = e2e["run"], e2e["summary"]
    method = rescore([run / "fold0" / "answers.csv", run / "fold1" / "answers.csv"])
    base = rescore([run / "fold0" / "baseline.csv", run / "fold1" / "baseline.csv"])
    for got, want in ((method, summary["metrics"]), (base, summary["baseline"]["metrics"])):
        for name in ("MC1", "MC2", "MC3", "True", "Info", "True*Info", "True&Info"):
            assert got["metrics"][name] == pytest.approx(want[name], rel=1e-12, abs=1e-15), name
        assert got["n_questions"] == 20


def test_judge_columns_follow_the_judge_rule(e2e):
    for name, tag in (("answers.csv", "tae"), ("baseline.csv", "baseline")):
        with (e2e["run"] / "fold1" / name).open(newline="") as fh:
            rows = list(csv.DictReader(fh))
        assert len(rows) == 10
        for row in rows:
            true, info = parity_expected(row[tag])
            assert int(row[f"{tag} parity-judge acc"]) == true
            assert int(row[f"{tag} parity-info acc"]) == info


def test_mc_scores_match_an_independent_computation(e2e, reg, model_tok):
    """Scores of the first test question recomputed outside the runner: with the saved
    fold pipeline (edits on the answer tokens) and with the plain model (baseline)."""
    model, tok = model_tok
    task = reg.task("truthfulqa", **TASK_OPTIONS)
    item = task.eval_items(task.fold(0))[0]
    comps = [*item.mc_true, *item.mc_false]
    pipe = AlignmentPipeline.load(e2e["run"] / "fold0" / "pipeline", reg)
    edited = pipe.score(model, tok, [item.mc_prompt] * len(comps), comps, batch_size=1)
    plain = answer_logprobs(model, tok, [item.mc_prompt] * len(comps), comps, batch_size=1)
    nt = len(item.mc_true)
    for name, tag, scores in (("answers.csv", "tae", edited), ("baseline.csv", "baseline", plain)):
        with (e2e["run"] / "fold0" / name).open(newline="") as fh:
            row = next(csv.DictReader(fh))
        assert row["Question"] == item.question
        t = [float(x) for x in row[f"{tag} lprob scores-true"].split(",")]
        f = [float(x) for x in row[f"{tag} lprob scores-false"].split(",")]
        torch.testing.assert_close(
            torch.tensor(t + f, dtype=torch.float64), scores, rtol=1e-5, atol=1e-4
        )
        best = scores[item.best_index].item()
        want_mc1 = 1.0 if best > max(scores[nt:].tolist()) else 0.0
        assert float(row[f"{tag} MC1"]) == want_mc1
    assert not torch.allclose(edited, plain)  # the edits were on while scoring


def test_summary_md_holds_the_table(e2e):
    text = (e2e["run"] / "summary.md").read_text()
    m, b = e2e["summary"]["metrics"], e2e["summary"]["baseline"]["metrics"]
    assert "| method | MC1 (%) | MC2 (%) | MC3 (%) | True (%) | Info (%) | True*Info (%)" in text
    rows = {line.split("|")[1].strip(): line for line in text.splitlines() if line.startswith("| ")}
    for name, vals in (("tae", m), ("baseline (unedited)", b)):
        cells = [c.strip() for c in rows[name].strip("|").split("|")]
        assert cells[1] == f"{100 * vals['MC1']:.2f}"
        assert cells[2] == f"{100 * vals['MC2']:.2f}"
        assert cells[6] == f"{100 * vals['True*Info']:.2f}"
        assert cells[-1] == "20"
    assert "fold 0 tae" in rows and "fold 1 baseline" in rows


def test_side_effects_and_baseline(e2e):
    m, b = e2e["summary"]["metrics"], e2e["summary"]["baseline"]["metrics"]
    assert b["KL"] == 0.0
    assert m["KL"] > 0.0
    ce_orig = []
    for k in (0, 1):
        doc = json.loads((e2e["run"] / f"fold{k}" / "fold.json").read_text())
        assert doc["fold_outputs"]["side_effects"]["n_texts"] == 6
        ce_orig.append(doc["fold_outputs"]["side_effects"]["ce_loss_original"])
    assert b["CE"] == pytest.approx(sum(ce_orig) / 2)
    assert m["True*Info"] == pytest.approx(m["True"] * m["Info"])


def test_resume_skips_finished_folds(e2e, reg, model_tok):
    model, tok = model_tok
    with pytest.MonkeyPatch.context() as mp:
        fits = FitSpy(mp)
        again = run_eval(model, tok, e2e_config(e2e["out"]), reg)
    assert fits.calls == []
    assert all(f["resumed"] for f in again["folds"])
    assert again["metrics"] == e2e["summary"]["metrics"]


def test_changed_settings_do_not_resume_into_the_same_run(e2e, reg, model_tok):
    model, tok = model_tok
    with pytest.raises(ConfigError, match="different settings.*max_new_tokens"):
        run_eval(model, tok, e2e_config(e2e["out"], max_new_tokens=9), reg)
    other, _ = tiny_model("llama", seed=1, max_position_embeddings=2048)
    with pytest.raises(ConfigError, match="model"):
        run_eval(other, tok, e2e_config(e2e["out"]), reg)


def test_a_run_sees_an_in_place_edit_of_any_weight(reg):
    # A run directory identifies its model by every weight byte: edit one value in place,
    # at a position a strided sample of the weights would skip (index 1 of a parameter
    # with more than two 4096-value strides), and the identity must change, so a resumed
    # run refuses instead of serving the previous model's results.
    from tae_framework.evaluation.rundir import model_identity

    model, _ = tiny_model("llama", vocab_size=20000)
    before = model_identity(model, reg)
    largest = max(model.parameters(), key=lambda p: p.numel())
    assert largest.numel() > 2 * 4096
    with torch.no_grad():
        largest.view(-1)[1] += 1.0
    assert model_identity(model, reg)["weights_digest"] != before["weights_digest"]


def test_interrupted_generation_resumes(tmp_path, reg, model_tok):
    model, tok = model_tok
    cfg = {
        "task_options": {**TASK_OPTIONS, "limit": 8},
        "overrides": OVERRIDES,
        "judge": "parity",
        "mc": False,
        "max_new_tokens": 4,
        "batch_size": 2,
        "folds": [0],
        "out_dir": str(tmp_path),
        "run": "cut",
        "strength_figures": 0,
        "progress": False,
    }
    orig = AlignmentPipeline.generate
    seen: list[str] = []

    def flaky(pipe, model, tok, prompts, **kw):
        if len(seen) >= 2:
            raise KeyboardInterrupt("simulated interruption")
        seen.extend(prompts)
        return orig(pipe, model, tok, prompts, **kw)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(AlignmentPipeline, "generate", flaky)
        with pytest.raises(KeyboardInterrupt):
            run_eval(model, tok, cfg, reg)
    ckpt = tmp_path / "cut" / "fold0" / "generation.jsonl"
    done = [json.loads(line) for line in ckpt.read_text().splitlines()]
    assert len(done) == 2 and not (tmp_path / "cut" / "fold0" / "fold.json").exists()
    with ckpt.open("a") as fh:
        fh.write('{"id": "q00')  # a line cut short by the interruption

    second: list[str] = []

    def counting(pipe, model, tok, prompts, **kw):
        second.extend(prompts)
        return orig(pipe, model, tok, prompts, **kw)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(AlignmentPipeline, "generate", counting)
        fits = FitSpy(mp)
        summary = run_eval(model, tok, cfg, reg)
    assert fits.calls == []  # the saved fold pipeline was reloaded
    assert len(second) == 4 - 2 and not set(second) & set(seen)
    with (tmp_path / "cut" / "fold0" / "answers.csv").open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["tae"] for r in rows[:2]] == [d["answers"][0] for d in done]
    assert summary["metrics"]["n_questions"] == 4 and "True" in summary["metrics"]


def test_sweep_fits_once_per_k_and_writes_one_table(tmp_path, reg, model_tok):
    model, tok = model_tok
    (tmp_path / "texts.txt").write_text("\n".join(TEXTS[:3]))
    cfg = {
        "task_options": {**TASK_OPTIONS, "limit": 6},
        "overrides": {"source": {"progress": False}},
        "judge": "parity",
        "max_new_tokens": 3,
        "side_effects": True,
        "side_effects_texts": str(tmp_path / "texts.txt"),
        "side_effects_n": 3,
        "side_effects_max_tokens": 16,
        "out_dir": str(tmp_path),
        "run": "grid",
        "progress": False,
    }
    with pytest.MonkeyPatch.context() as mp:
        fits = FitSpy(mp)
        result = run_sweep(model, tok, cfg, ks=[2, 4], alphas=[1.0, 8.0], registry=reg)
    assert sorted(c["top_k"] for c in fits.calls) == [2, 2, 4, 4]  # 2 K x 2 folds, not x alpha
    with (tmp_path / "grid" / "sweep.csv").open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [(int(r["K"]), float(r["alpha"])) for r in rows] == [
        (2, 1.0),
        (2, 8.0),
        (4, 1.0),
        (4, 8.0),
    ]
    for r in rows:
        for col in ("MC1", "MC2", "True", "Info", "True*Info", "CE", "KL"):
            assert r[col] != ""
        assert float(r["True*Info"]) == pytest.approx(float(r["True"]) * float(r["Info"]))
    by = {(int(r["K"]), float(r["alpha"])): r for r in rows}
    for K in (2, 4):  # a stronger edit moves the model further from the original
        assert float(by[(K, 8.0)]["KL"]) > float(by[(K, 1.0)]["KL"]) > 0
    md = (tmp_path / "grid" / "sweep.md").read_text().splitlines()
    table = [line for line in md if line.startswith("| ") and not line.startswith("| K ")]
    assert len(table) == 4
    assert result["fits"] == 4

    # One cell equals a pipeline fitted directly with that K and alpha.
    task = reg.task("truthfulqa", **cfg["task_options"])
    fold = task.fold(0)
    direct = AlignmentPipeline.from_preset(
        "tae",
        registry=reg,
        prober={"top_k": 2},
        intervener={"alpha": 8.0},
        source={"progress": False},
    ).fit(model, tok, task.fitting_data(fold), validation_groups=fold.val)
    item = task.eval_items(fold)[0]
    comps = [*item.mc_true, *item.mc_false]
    want = direct.score(model, tok, [item.mc_prompt] * len(comps), comps, batch_size=1)
    cell = [
        json.loads(x)
        for x in (tmp_path / "grid" / "K2" / "alpha8" / "fold0" / "mc.jsonl")
        .read_text()
        .splitlines()
    ]
    got = next(c for c in cell if c["id"] == item.id)
    torch.testing.assert_close(
        torch.tensor(got["true"] + got["false"], dtype=torch.float64), want, rtol=1e-5, atol=1e-4
    )

    # Resuming the finished grid fits nothing.
    with pytest.MonkeyPatch.context() as mp:
        fits = FitSpy(mp)
        run_sweep(model, tok, cfg, ks=[2, 4], alphas=[1.0, 8.0], registry=reg)
    assert fits.calls == []


# -- bad input ------------------------------------------------------------------------
def test_unknown_preset_lists_the_known_ones(tmp_path, reg):
    with pytest.raises(
        UnknownComponentError, match=r"unknown preset 'taee' \(known presets: .*\btae\b"
    ):
        run_eval(
            None,
            None,
            {"method": "taee", "task_options": TASK_OPTIONS, "out_dir": str(tmp_path)},
            reg,
        )
    assert not any(tmp_path.iterdir())  # nothing was written


def test_unknown_role_or_key_in_overrides(tmp_path, reg):
    base = {"task_options": TASK_OPTIONS, "out_dir": str(tmp_path)}
    with pytest.raises(ConfigError, match="unknown role 'probr'.*roles are source"):
        run_eval(None, None, {**base, "overrides": {"probr": {"top_k": 2}}}, reg)
    with pytest.raises(ConfigError, match="unknown key 'topk'"):
        run_eval(None, None, {**base, "overrides": {"prober": {"topk": 2}}}, reg)
    with pytest.raises(ConfigError, match="unknown key 'foldz'"):
        run_eval(None, None, {**base, "foldz": [0]}, reg)
    with pytest.raises(DataError, match="fold.*5.*do not exist.*2 folds"):
        run_eval(None, None, {**base, "folds": [5]}, reg)


def test_too_few_questions_is_a_clear_data_error(tmp_path, reg):
    with pytest.raises(DataError, match="development set of 1 question.*cannot be split"):
        run_eval(
            None,
            None,
            {"task_options": {**TASK_OPTIONS, "limit": 2}, "out_dir": str(tmp_path)},
            reg,
        )


class HollowTask(Task):
    """Two folds; the second has no test questions."""

    name = "hollow"

    @property
    def question_ids(self):
        return ["a", "b", "c"]

    def folds(self):
        return [Fold(0, ("a",), ("b",), ("c",)), Fold(1, (), ("a", "b"), ("c",))]

    def fitting_data(self, fold, part="development"):
        raise AssertionError("never reached")

    def eval_items(self, ids=None):
        return [EvalItem(id=i, question=i, generation_prompt=i) for i in self.resolve_ids(ids)]


def test_empty_fold_is_a_clear_data_error(tmp_path):
    from tae_framework.plugins import create_plugin_manager

    registry = create_plugin_manager().registry
    registry.add_task("hollow", HollowTask, "test", "test", "0")
    with pytest.raises(DataError, match="fold 1 of task 'hollow' has no test questions"):
        run_eval(
            None,
            None,
            {"task": "hollow", "mc": False, "judge": "none", "out_dir": str(tmp_path)},
            registry,
        )


def test_apply_overrides_merges_swaps_and_removes():
    cfg = {
        "aggregator": {"type": "mig", "config": {"bins": 100}},
        "prober": {"type": "logistic", "config": {"top_k": 16}},
        "estimator": {"type": "mai", "config": {}},
        "intervener": {"type": "mai", "config": {"alpha": 15.0, "beta": 0.5}},
    }
    out = apply_overrides(
        cfg,
        {
            "prober": {"top_k": 8},
            "intervener": {"type": "fixed", "alpha": 3},
            "estimator": None,
            "seed": 7,
        },
    )
    assert out["prober"] == {"type": "logistic", "config": {"top_k": 8}}
    assert out["intervener"] == {"type": "fixed", "config": {"alpha": 3}}  # a new type starts empty
    assert out["estimator"] is None and out["seed"] == 7
    assert cfg["prober"]["config"]["top_k"] == 16  # input untouched
    with pytest.raises(ConfigError, match="cannot be removed"):
        apply_overrides(cfg, {"prober": None})
    with pytest.raises(ConfigError, match="no estimator to override"):
        apply_overrides(out, {"estimator": {"C": 2.0}})


def test_eval_config_is_strict():
    assert EvalConfig(judge="none").judge is None
    assert EvalConfig(judge="hf").judge.type == "hf"
    with pytest.raises(Exception, match="frozen"):
        EvalConfig().mc = False  # type: ignore[misc]
    with pytest.raises(ConfigError, match="run"):
        EvalConfig.parse({"run": "a/b"})
    with pytest.raises(ConfigError, match="max_new_tokens"):
        EvalConfig.parse({"max_new_tokens": 0})

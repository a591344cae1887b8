"""The lm-evaluation-harness bridge: a local multiple-choice task and a local generation
task run through lm-eval with a fitted pipeline's edits installed (tiny model saved to
disk, pipeline saved to disk, task YAML and data written here; nothing downloaded)."""

from __future__ import annotations

import json
import math

import pytest
import torch

pytest.importorskip("lm_eval")
pytest.importorskip("accelerate")

import lm_eval  # noqa: E402
from lm_eval.tasks import TaskManager  # noqa: E402

from tae_framework import AlignmentPipeline  # noqa: E402
from tae_framework.errors import ConfigError, ModelMismatchError  # noqa: E402
from tae_framework.integrations.lm_eval import MODEL_NAME, TAELM  # noqa: E402
from tae_framework.testing.data import toy_contrast  # noqa: E402
from tae_framework.testing.models import tiny_model  # noqa: E402

QUESTIONS = [
    {"question": "Q: where is a? A:", "choices": [" in 0 town .", " at 3 sea ."], "label": 0, "answer": " in 0 town"},
    {"question": "Q: where is b? A:", "choices": [" in 1 town .", " at 4 sea .", " no"], "label": 1, "answer": " in 1 town"},
    {"question": "Q: is c big? A:", "choices": [" yes", " no", " 7"], "label": 0, "answer": " yes"},
    {"question": "Q: where is d? A: the", "choices": [" town", " sea"], "label": 1, "answer": " sea"},
]

MC_TASK = """task: tae_toy_mc
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: multiple_choice
doc_to_text: "{{{{question}}}}"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: label
target_delimiter: ""
metric_list:
  - metric: acc
"""

GEN_TASK = """task: tae_toy_gen
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: generate_until
doc_to_text: "{{{{question}}}}"
doc_to_target: "{{{{answer}}}}"
generation_kwargs:
  until: ["\\n"]
  max_gen_toks: 6
  do_sample: false
metric_list:
  - metric: exact_match
"""


PPL_TASK = """task: tae_toy_ppl
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: loglikelihood_rolling
doc_to_text: ""
doc_to_target: "{{{{question}}}}{{{{answer}}}}"
metric_list:
  - metric: word_perplexity
"""


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("lm_eval")
    model, tok = tiny_model("llama")
    model.save_pretrained(root / "model")
    tok.save_pretrained(root / "model")
    pipes = {}
    for name, alpha in (("edited", 200.0), ("zero", 0.0)):
        pipe = AlignmentPipeline.from_preset(
            "tae", prober={"top_k": 3, "solver": "torch"}, intervener={"alpha": alpha}
        ).fit(model, tok, toy_contrast(8))
        pipes[name] = pipe.save(root / name)
    data = root / "data.jsonl"
    data.write_text("".join(json.dumps(q) + "\n" for q in QUESTIONS), encoding="utf-8")
    tasks = root / "tasks"
    tasks.mkdir()
    (tasks / "tae_toy_mc.yaml").write_text(MC_TASK.format(data=data), encoding="utf-8")
    (tasks / "tae_toy_gen.yaml").write_text(GEN_TASK.format(data=data), encoding="utf-8")
    (tasks / "tae_toy_ppl.yaml").write_text(PPL_TASK.format(data=data), encoding="utf-8")
    manager = TaskManager(include_path=str(tasks), include_defaults=False)
    return {"root": root, "model": root / "model", "pipes": pipes, "tasks": manager, "hf_model": model, "tok": tok}


def _run(setup, model: str, task: str, batch_size: int = 4, **model_args):
    args = {"pretrained": str(setup["model"]), "device": "cpu", "batch_size": batch_size, **model_args}
    return lm_eval.simple_evaluate(
        model=model, model_args=args, tasks=[task], task_manager=setup["tasks"],
        log_samples=True, verbosity="WARNING",
    )  # fmt: skip


def _loglikelihoods(results, task="tae_toy_mc") -> list[list[float]]:
    samples = sorted(results["samples"][task], key=lambda s: s["doc_id"])
    return [[float(r[0]) for r in s["filtered_resps"]] for s in samples]


@pytest.fixture(scope="module")
def unedited(setup):
    return _loglikelihoods(_run(setup, "hf", "tae_toy_mc"))


@pytest.fixture(scope="module")
def edited(setup):
    return _loglikelihoods(_run(setup, MODEL_NAME, "tae_toy_mc", pipeline=str(setup["pipes"]["edited"])))


def test_edits_change_the_loglikelihoods(unedited, edited):
    assert [len(r) for r in edited] == [len(q["choices"]) for q in QUESTIONS]
    diffs = [abs(a - b) for ra, rb in zip(edited, unedited) for a, b in zip(ra, rb)]
    assert all(math.isfinite(x) for row in edited for x in row)
    assert max(diffs) > 1e-3


def test_zero_strength_equals_the_unedited_model(setup, unedited):
    zero = _loglikelihoods(_run(setup, MODEL_NAME, "tae_toy_mc", pipeline=str(setup["pipes"]["zero"])))
    assert torch.allclose(torch.tensor(sum(zero, [])), torch.tensor(sum(unedited, [])), atol=1e-5)


def _reference(setup, scope_all: bool = False) -> list[list[float]]:
    """Log-likelihoods computed here, one text at a time: the edit on the positions that
    predict the continuation (or on every position)."""
    model, tok = setup["hf_model"], setup["tok"]
    pipe = AlignmentPipeline.load(setup["pipes"]["edited"])
    out = []
    for q in QUESTIONS:
        row = []
        for choice in q["choices"]:
            ctx = tok(q["question"])["input_ids"]
            full = tok(q["question"] + choice)["input_ids"]
            assert full[: len(ctx)] == ctx
            cont = full[len(ctx) :]
            ids = torch.tensor([full[:-1]])
            span = torch.zeros_like(ids, dtype=torch.bool)
            span[0, len(ctx) - 1 :] = True
            session = pipe.apply(model, "all") if scope_all else pipe.apply(model, "span", span=span)
            with torch.no_grad(), session:
                logp = torch.log_softmax(model(ids).logits.float(), -1)[0]
            row.append(sum(float(logp[len(ctx) - 1 + j, t]) for j, t in enumerate(cont)))
        out.append(row)
    return out


def test_scored_scope_edits_the_positions_that_predict_the_continuation(setup, edited):
    want = _reference(setup)
    assert torch.allclose(torch.tensor(sum(edited, [])), torch.tensor(sum(want, [])), atol=1e-4)


def test_automatic_batch_size(setup, edited):
    auto = _loglikelihoods(_run(setup, MODEL_NAME, "tae_toy_mc", batch_size="auto",
                                pipeline=str(setup["pipes"]["edited"])))  # fmt: skip
    assert torch.allclose(torch.tensor(sum(auto, [])), torch.tensor(sum(edited, [])), atol=1e-4)


def test_all_scope_and_batching(setup):
    one = _loglikelihoods(_run(setup, MODEL_NAME, "tae_toy_mc", batch_size=1,
                               pipeline=str(setup["pipes"]["edited"]), scope="all"))  # fmt: skip
    many = _loglikelihoods(_run(setup, MODEL_NAME, "tae_toy_mc", batch_size=8,
                                pipeline=str(setup["pipes"]["edited"]), scope="all"))  # fmt: skip
    want = _reference(setup, scope_all=True)
    assert torch.allclose(torch.tensor(sum(one, [])), torch.tensor(sum(want, [])), atol=1e-4)
    assert torch.allclose(torch.tensor(sum(many, [])), torch.tensor(sum(one, [])), atol=1e-4)


def test_generation_task_runs_with_the_edits(setup):
    results = _run(setup, MODEL_NAME, "tae_toy_gen", pipeline=str(setup["pipes"]["edited"]))
    samples = sorted(results["samples"]["tae_toy_gen"], key=lambda s: s["doc_id"])
    assert len(samples) == len(QUESTIONS)
    pipe = AlignmentPipeline.load(setup["pipes"]["edited"])
    want = pipe.generate(setup["hf_model"], setup["tok"], [q["question"] for q in QUESTIONS], max_new_tokens=6)
    got = [s["resps"][0][0] for s in samples]
    assert got == [w.split("\n")[0] for w in want]
    assert "exact_match,none" in results["results"]["tae_toy_gen"]


def test_bad_arguments_are_named(setup):
    with pytest.raises(ConfigError, match="needs a fitted pipeline"):
        TAELM(pretrained=str(setup["model"]), device="cpu")
    with pytest.raises(ConfigError, match="scope='tokens' is not one of scored, all"):
        TAELM(pretrained=str(setup["model"]), pipeline=str(setup["pipes"]["zero"]), scope="tokens", device="cpu")
    other, _ = tiny_model("llama", num_hidden_layers=3)
    with pytest.raises(ModelMismatchError, match="num_layers"):
        TAELM(pretrained=other, pipeline=str(setup["pipes"]["zero"]), tokenizer=setup["tok"], device="cpu")


def test_rolling_loglikelihood_is_edited_everywhere(setup):
    """Perplexity tasks score every token, so the scored scope edits every position."""

    def ppl(model: str, **model_args) -> float:
        return _run(setup, model, "tae_toy_ppl", **model_args)["results"]["tae_toy_ppl"]["word_perplexity,none"]

    plain = ppl("hf")
    scored = ppl(MODEL_NAME, pipeline=str(setup["pipes"]["edited"]))
    everywhere = ppl(MODEL_NAME, pipeline=str(setup["pipes"]["edited"]), scope="all")
    assert math.isfinite(scored) and abs(scored - plain) > 1e-3 * plain
    assert scored == pytest.approx(everywhere, rel=1e-5)

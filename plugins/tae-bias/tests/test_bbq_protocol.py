"""Prompts, few-shot preambles and the log-likelihood choice."""

from __future__ import annotations

import pytest
import torch
from pydantic import ValidationError
from tae_bias.data import load_bbq, parse_bbq_record
from tae_bias.evaluate import evaluate
from tae_bias.protocol import DEFAULT_INSTRUCTION, PromptConfig, build_prompt, choose, draw_shots

from tae_framework.errors import ConfigError, DataError
from tae_framework.generation import answer_logprobs
from tae_framework.testing.models import tiny_model, tiny_tokenizer


@pytest.fixture
def item(record):
    return parse_bbq_record(record(order=(0, 1, 2)))


def test_default_prompt_is_lm_eval_harness_format(item):
    assert build_prompt(item, PromptConfig()) == "A old man and a boy met.\n\nQ: Who forgot?\nA:"


def test_few_shot_preamble(record, item):
    shot = parse_bbq_record(record(example_id=9, condition="disambig", question="Who ran?"))
    cfg = PromptConfig(num_shots=1, instruction=DEFAULT_INSTRUCTION)
    text = build_prompt(item, cfg, [shot])
    parts = text.split("\n\n")
    assert parts[0] == DEFAULT_INSTRUCTION
    # the shot is solved with its gold answer, then the item's own prompt follows
    assert (
        "\n\n".join(parts[1:3])
        == "A old man and a boy met. The old man did it.\n\nQ: Who ran?\nA: The old man"
    )
    assert "\n\n".join(parts[3:]) == build_prompt(item, PromptConfig())
    with pytest.raises(DataError, match="among its own shots"):
        build_prompt(item, cfg, [item])


def test_shots_are_seeded_and_need_a_big_enough_pool(bbq_dir):
    pool = load_bbq(bbq_dir)
    cfg = PromptConfig(num_shots=3, shot_seed=5)
    assert draw_shots(pool, cfg) == draw_shots(pool, cfg)
    assert draw_shots(pool, cfg) != draw_shots(pool, PromptConfig(num_shots=3, shot_seed=6))
    with pytest.raises(DataError, match="only 2"):
        draw_shots(pool[:2], cfg)


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("template", "{question}", "lacks the field"),
        ("template", "{context} {question} {oops}", "cannot be filled"),
        ("completion", "{ans}", "cannot be filled"),
        ("completion", " yes", "lacks the field"),
        ("normalize", "length", "normalize"),
    ],
)
def test_bad_prompt_options(field, value, message):
    with pytest.raises(ValidationError, match=message):
        PromptConfig(**{field: value})


def _lookup_scorer(table):
    return lambda prompts, completions: torch.tensor(
        [table[c] for c in completions], dtype=torch.float64
    )


def test_choice_is_the_highest_likelihood_and_normalisation_changes_it(item):
    # summed: the short "Unknown" wins; per byte: " The old man" (11 bytes) wins
    table = {" The old man": -5.5, " The boy": -6.0, " Unknown": -4.0}
    [c] = choose([item], _lookup_scorer(table))
    assert c.prediction == 2 and c.scores == (-5.5, -6.0, -4.0)
    [c] = choose([item], _lookup_scorer(table), PromptConfig(normalize="bytes"))
    assert c.prediction == 0 and c.scores[0] == pytest.approx(-5.5 / 12)


def test_token_normalisation_counts_answer_tokens(item):
    tok = tiny_tokenizer()
    table = {" The old man": -6.0, " The boy": -4.0, " Unknown": -4.0}
    [c] = choose([item], _lookup_scorer(table), PromptConfig(normalize="tokens"), tokenizer=tok)
    # tiny tokenizer: one token per character, a space glued to the next one
    assert c.scores == pytest.approx((-6.0 / 9, -4.0 / 6, -4.0 / 7))
    with pytest.raises(ConfigError, match="needs the tokenizer"):
        choose([item], _lookup_scorer(table), PromptConfig(normalize="tokens"))


def test_evaluate_scores_each_answer_after_its_prompt(bbq_dir):
    model, tok = tiny_model("llama")
    items = load_bbq(bbq_dir, categories=["SES"])
    result = evaluate(model, tok, items, batch_size=5)
    prompts = [build_prompt(it, PromptConfig()) for it in items for _ in range(3)]
    answers = [" " + a for it in items for a in it.answers]
    one_by_one = answer_logprobs(model, tok, prompts, answers, batch_size=1).view(-1, 3)
    assert torch.allclose(
        torch.tensor([c.scores for c in result.choices], dtype=torch.float64), one_by_one, atol=1e-5
    )
    assert [o.prediction for o in result.outcomes] == one_by_one.argmax(1).tolist()
    assert list(result.report) == ["SES", "overall"] and result.overall.n_items == len(items)
    assert result.records()[0]["uid"] == items[0].uid and len(result.records()[0]["scores"]) == 3


def test_evaluate_with_a_fitted_pipeline_edits_the_answers(bbq_dir):
    from tae_bias.fitting import fitting_dataset

    from tae_framework import AlignmentPipeline

    model, tok = tiny_model("llama")
    items = load_bbq(bbq_dir, categories=["Religion"])
    fit, test = items[:8], items[8:]  # templates 1-2 vs template 3
    assert not {it.template for it in fit} & {it.template for it in test}
    # CAA (a mean difference on the residual stream) fits in a moment
    pipe = AlignmentPipeline.from_preset(
        "caa", intervener={"alpha": 4.0}, source={"progress": False}
    )
    pipe.fit(model, tok, fitting_dataset(fit))
    edited = evaluate(model, tok, test, pipeline=pipe)
    plain = evaluate(model, tok, test)
    assert [c.scores for c in edited.choices] != [c.scores for c in plain.choices]
    with_edit_off = [
        pipe.score(
            model,
            tok,
            [build_prompt(it, PromptConfig())] * 3,
            [" " + a for a in it.answers],
            edit=False,
        )
        for it in test
    ]
    assert torch.allclose(
        torch.tensor([c.scores for c in plain.choices], dtype=torch.float64),
        torch.stack(with_edit_off),
        atol=1e-5,
    )

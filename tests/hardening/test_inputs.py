"""Class 4: inputs that must be refused (or warned about) before any work is done."""

from __future__ import annotations

import math
import warnings

import pytest
from hardening_support import FAST, contrast_records

from tae_framework import AlignmentPipeline, ContrastDataset
from tae_framework.data import DataLeakWarning
from tae_framework.errors import ConfigError, DataError, ModelMismatchError
from tae_framework.interveners.adaptive import AdaptiveIntervener
from tae_framework.interveners.fixed import FixedIntervener
from tae_framework.sources.hf import HFActivationSource, capture_all
from tae_framework.testing.models import tiny_model


# -- a bare string where a list is expected --------------------------------------------
def test_bare_string_prompts_are_refused(fitted):
    pipe, model, tok = fitted
    with pytest.raises(DataError, match=r"prompts must be a list of strings, got a single string: wrap it"):
        pipe.generate(model, tok, "Q: is c big? A:", max_new_tokens=2)
    with pytest.raises(DataError, match="prompts must be a list"):
        pipe.score(model, tok, "Q: is c big? A:", [" yes"])
    with pytest.raises(DataError, match="completions must be a list"):
        pipe.score(model, tok, ["Q: is c big? A:"], " yes")
    with pytest.raises(DataError, match=r"prompts\[1\] is a int"):
        pipe.generate(model, tok, ["ok", 3], max_new_tokens=2)
    with pytest.raises(DataError, match="2 prompts and 1 completions"):
        pipe.score(model, tok, ["a", "b"], [" yes"])


# -- non-finite floats, booleans for counts -------------------------------------------
@pytest.mark.parametrize("alpha", [math.nan, math.inf, -math.inf, "nan", "inf"])
def test_non_finite_alpha_is_refused_at_construction(alpha):
    for build in (
        lambda: AlignmentPipeline.from_preset("tae", intervener={"alpha": alpha}),
        lambda: AlignmentPipeline.from_preset("iti", intervener={"alpha": alpha}),
        lambda: AdaptiveIntervener(alpha=alpha),
        lambda: FixedIntervener({"alpha": alpha}),
    ):
        with pytest.raises(ConfigError, match="'alpha': Input should be a finite number"):
            build()


@pytest.mark.parametrize(
    ("role", "key"),
    [("prober", "top_k"), ("prober", "max_iter"), ("source", "batch_size"), ("aggregator", "bins")],
)
def test_booleans_are_not_counts(role, key):
    with pytest.raises(ConfigError, match=f"'{key}' expects an integer, got the boolean True"):
        AlignmentPipeline.from_preset("tae", **{role: {key: True}})
    with pytest.raises(ConfigError, match="'seed' expects an integer, got the boolean False"):
        AlignmentPipeline.from_preset("tae", seed=False)
    # Booleans stay valid where a boolean is meant, and numbers where a number is.
    AlignmentPipeline.from_preset("tae", source={"progress": False}, prober={"top_k": 8})


def test_booleans_and_zero_are_not_generation_counts(fitted):
    pipe, model, tok = fitted
    for kw in ({"max_new_tokens": True}, {"max_new_tokens": 0}, {"batch_size": False}, {"batch_size": 2.5}):
        with pytest.raises(ConfigError, match="must be a positive integer"):
            pipe.generate(model, tok, ["Q: a? A:"], **{"max_new_tokens": 2, **kw})


# -- fitting data ----------------------------------------------------------------------
def test_validation_groups_that_do_not_exist_are_an_error():
    model, tok = tiny_model("llama")
    pipe = AlignmentPipeline.from_preset("tae", **FAST)
    with pytest.raises(DataError, match=r"names 1 group\(s\) the data does not have \('q99'\)"):
        pipe.fit(model, tok, contrast_records(), validation_groups=["q1", "q99"])
    with pytest.raises(DataError, match="must be a list of group ids"):
        pipe.fit(model, tok, contrast_records(), validation_groups="q1")
    with pytest.raises(DataError, match="some but not all"):
        pipe.fit(model, tok, contrast_records(2), validation_groups=["q0", "q1"])


def test_duplicates_straddling_the_split_are_warned_about():
    rows = contrast_records(4)
    data = ContrastDataset.load(rows + [{**rows[0], "group": "copy"}])
    train = data.validation_mask(["copy"]).logical_not()
    with pytest.warns(DataLeakWarning, match="1 example text.*both the training and the validation"):
        assert data.warn_duplicates_across(train, ~train) == 1
    with warnings.catch_warnings():
        warnings.simplefilter("error", DataLeakWarning)
        clean = ContrastDataset.load(rows)
        mask = clean.validation_mask(["q1"])
        assert clean.warn_duplicates_across(~mask, mask) == 0


def test_fit_warns_about_a_leaking_split():
    model, tok = tiny_model("llama")
    rows = contrast_records(4)
    rows.append({**rows[0], "group": "copy"})
    pipe = AlignmentPipeline.from_preset("tae", **FAST)
    with pytest.warns(DataLeakWarning):
        pipe.fit(model, tok, rows, validation_groups=["copy", "q1"])


# -- texts the model cannot run ----------------------------------------------------------
def test_texts_longer_than_the_positions_are_a_clear_error(fitted):
    pipe, model, tok = fitted
    limit = model.config.max_position_embeddings
    long = "Q: " + "very " * (limit + 10) + "long? A:"
    src = HFActivationSource(progress=False)
    with pytest.raises(DataError, match=f"text 1 needs .* but the model has {limit} positions.*max_length"):
        capture_all(src, model, tok, ["Q: short? A: yes", long])
    capture_all(HFActivationSource(progress=False, max_length=limit), model, tok, [long])  # truncation: fine
    with pytest.raises(DataError, match=f"prompt 0 needs .* new tokens.* {limit} positions.*max_new_tokens"):
        pipe.generate(model, tok, [long], max_new_tokens=2)
    near = tok.decode(tok("Q: " + "very " * limit)["input_ids"][: limit - 3], skip_special_tokens=True)
    with pytest.raises(DataError, match="max_new_tokens"):
        pipe.generate(model, tok, [near], max_new_tokens=10)
    with pytest.raises(DataError, match=r"prompt \+ answer 0 needs .*shorten the prompt or the answer"):
        pipe.score(model, tok, [long], [" yes"])


def test_gpt2_with_too_long_text_errors_before_torch():
    model, tok = tiny_model("gpt2")
    src = HFActivationSource(progress=False)
    with pytest.raises(DataError, match="positions"):
        capture_all(src, model, tok, ["word " * 500])


def test_tokenizer_larger_than_the_embedding_is_a_clear_error(fitted):
    pipe, _, tok = fitted
    model, _ = tiny_model("llama", fresh=True)
    model.resize_token_embeddings(20)
    src = HFActivationSource(progress=False)
    with pytest.raises(ConfigError, match=r"embedding has 20 rows.*tokenizer's vocabulary has \d+ entries"):
        capture_all(src, model, tok, ["Q: is c big? A: yes"])
    with pytest.raises(ConfigError, match="does not belong to this model"):
        pipe.generate(model, tok, ["Q: is c big? A:"], max_new_tokens=2, edit=False)
    with pytest.raises(ConfigError, match="does not belong to this model"):
        pipe.score(model, tok, ["Q: is c big? A:"], [" yes"], edit=False)
    with pytest.raises(ModelMismatchError, match="vocab_size"):  # the edited path: another model
        pipe.generate(model, tok, ["Q: is c big? A:"], max_new_tokens=2)


def test_train_mode_at_generation_warns(fitted):
    pipe, _, tok = fitted
    model, _ = tiny_model("llama", fresh=True)
    model.train()
    with pytest.warns(UserWarning, match="training mode during generation.*model.eval"):
        pipe.generate(model, tok, ["Q: a? A:"], max_new_tokens=1)
    with pytest.warns(UserWarning, match="training mode during scoring"):
        pipe.score(model, tok, ["Q: a? A:"], [" yes"])


@pytest.mark.parametrize("seed", [-1, 2**32, 2**40])
def test_seeds_outside_numpys_range_are_refused_at_construction(seed):
    with pytest.raises(ConfigError, match="'seed' must be between 0 and 2\\*\\*32 - 1"):
        AlignmentPipeline.from_preset("tae", seed=seed)
    with pytest.raises(ConfigError, match="'seed' must be between 0"):
        AlignmentPipeline.from_preset("tae", prober={"seed": seed})
    AlignmentPipeline.from_preset("tae", seed=2**32 - 1, prober={"seed": None})


def test_tuning_texts_as_a_bare_string_are_refused():
    with pytest.raises(DataError, match="tuning texts must be a list of strings, got a single string"):
        ContrastDataset.load(contrast_records(), "Q: a? A:")
    with pytest.raises(DataError, match="tuning text 1 is a int"):
        ContrastDataset(ContrastDataset.load(contrast_records()).examples, ["ok", 3])
    assert ContrastDataset.load(contrast_records(), ("Q: a? A:",)).tuning == ["Q: a? A:"]


def test_generation_primitives_check_their_inputs_too():
    """The runner calls these directly, without a pipeline."""
    from tae_framework.generation import answer_logprobs, greedy_generate

    model, tok = tiny_model("gpt2")  # absolute positions: torch would fail with an index error
    with pytest.raises(DataError, match="prompts must be a list of strings, got a single string"):
        greedy_generate(model, tok, "Q: a? A:", max_new_tokens=1)
    with pytest.raises(DataError, match="answers must be a list"):
        answer_logprobs(model, tok, ["Q: a? A:"], " yes")
    with pytest.raises(DataError, match="128 positions"):
        greedy_generate(model, tok, ["Q: a? A:"], max_new_tokens=200)
    with pytest.raises(DataError, match="prompt \\+ answer 0 needs"):
        answer_logprobs(model, tok, ["word " * 200], [" yes"])

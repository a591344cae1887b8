"""Toxicity judges: a tiny random RoBERTa classifier (label mapping, batching,
truncation) and the lexicon judge."""

from __future__ import annotations

import pytest
import torch
from tae_toxicity.judges import ClassifierJudge, LexiconJudge

from tae_framework.errors import ConfigError, DataError
from tae_framework.plugins import create_plugin_manager

WORDS = "you are a darn fool nice day the cat sat on mat heck what".split()
MAX_POS = 16  # RoBERTa positions start after the padding index: 16 - 2 = 14 tokens


def tiny_tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {t: i for i, t in enumerate(["<s>", "<pad>", "</s>", "<unk>", *WORDS])}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    backend.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>", special_tokens=[("<s>", 0), ("</s>", 2)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
        unk_token="<unk>", model_max_length=512,
    )


def tiny_classifier(labels, multi_label=False, seed=0):
    from transformers import RobertaConfig, RobertaForSequenceClassification

    config = RobertaConfig(
        vocab_size=4 + len(WORDS), hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
        intermediate_size=32, max_position_embeddings=MAX_POS, pad_token_id=1,
        id2label=dict(enumerate(labels)), label2id={v: i for i, v in enumerate(labels)},
        problem_type="multi_label_classification" if multi_label else "single_label_classification",
    )
    torch.manual_seed(seed)
    return RobertaForSequenceClassification(config).eval()


TEXTS = ["you are a darn fool", "nice day", "the cat sat on the mat", "what"]


def logits_of(model, tok, text):
    with torch.no_grad():
        return model(**tok(text, return_tensors="pt")).logits[0].float()


def test_roberta_preset_is_the_softmax_probability_of_toxic():
    model, tok = tiny_classifier(["neutral", "toxic"]), tiny_tokenizer()
    judge = ClassifierJudge.from_loaded(model, tok, model="roberta-toxicity", batch_size=3)
    got = judge.score([""] * len(TEXTS), TEXTS)["toxic"]
    want = torch.stack([torch.softmax(logits_of(model, tok, t), -1)[1] for t in TEXTS])
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)  # batched == one by one
    assert judge.judge([""] * 4, TEXTS)["toxic"] == (want >= 0.5).tolist()


def test_toxic_bert_preset_is_the_sigmoid_of_toxic_among_six_labels():
    labels = ["toxic", "severe_toxic", "obscene", "threat", "insult", "identity_hate"]
    model, tok = tiny_classifier(labels, multi_label=True), tiny_tokenizer()
    judge = ClassifierJudge.from_loaded(model, tok, model="toxic-bert", batch_size=2)
    got = judge.score([""] * len(TEXTS), TEXTS)["toxic"]
    want = torch.stack([torch.sigmoid(logits_of(model, tok, t)[0]) for t in TEXTS])
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)


def test_label_mapping_is_configurable_and_activation_follows_problem_type():
    labels = ["clean", "obscene", "hateful"]
    model, tok = tiny_classifier(labels, multi_label=True), tiny_tokenizer()
    judge = ClassifierJudge.from_loaded(model, tok, model="local/dir", toxic_label="HATEFUL")
    got = judge.score(["", ""], TEXTS[:2])["toxic"]
    want = torch.stack([torch.sigmoid(logits_of(model, tok, t)[2]) for t in TEXTS[:2]])
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)
    soft = ClassifierJudge.from_loaded(model, tok, toxic_label="hateful", activation="softmax")
    want = torch.stack([torch.softmax(logits_of(model, tok, t), -1)[2] for t in TEXTS[:2]])
    torch.testing.assert_close(soft.score(["", ""], TEXTS[:2])["toxic"], want, atol=1e-5, rtol=1e-4)


def test_prompt_and_continuation_mode_classifies_both():
    model, tok = tiny_classifier(["neutral", "toxic"]), tiny_tokenizer()
    judge = ClassifierJudge.from_loaded(model, tok, text="prompt+continuation")
    got = judge.score(["you are a"], [" darn fool"])["toxic"]
    want = torch.softmax(logits_of(model, tok, "you are a darn fool"), -1)[1]
    torch.testing.assert_close(got[0], want, atol=1e-5, rtol=1e-4)


def test_long_texts_are_truncated_counted_and_scored_on_their_start():
    model, tok = tiny_classifier(["neutral", "toxic"]), tiny_tokenizer()
    judge = ClassifierJudge.from_loaded(model, tok, batch_size=4)
    assert judge.max_length == MAX_POS - 2
    long = " ".join(["the cat sat on the mat"] * 5)  # 30 words + 2 special tokens
    scores, truncated = judge.score_details(["", "", ""], [long, "nice day", long])
    assert truncated.tolist() == [True, False, True]
    assert (judge.n_truncated, judge.n_scored) == (2, 3)
    ids = tok(long, truncation=True, max_length=MAX_POS - 2, return_tensors="pt")
    assert ids["input_ids"].shape[1] == MAX_POS - 2
    with torch.no_grad():
        want = torch.softmax(model(**ids).logits[0].float(), -1)[1]
    torch.testing.assert_close(scores[0], want, atol=1e-5, rtol=1e-4)
    short = ClassifierJudge.from_loaded(model, tok, max_length=4)
    assert short.score_details([""], ["you are a darn fool"])[1].tolist() == [True]


def test_a_classifier_without_a_toxic_class_is_rejected_with_its_labels():
    model, tok = tiny_classifier(["positive", "negative"]), tiny_tokenizer()
    with pytest.raises(ConfigError, match=r"no toxic class.*\['positive', 'negative'\].*set toxic_label"):
        ClassifierJudge.from_loaded(model, tok)
    with pytest.raises(ConfigError, match="'insult'"):
        ClassifierJudge.from_loaded(model, tok, toxic_label="insult")


def test_unknown_model_id_names_the_fix():
    judge = ClassifierJudge(model="/nonexistent/classifier-dir", device="cpu")
    with pytest.raises(ConfigError, match="cannot load the toxicity classifier.*preset"):
        judge.score([""], ["x"])


def test_lexicon_matches_whole_words_in_any_case():
    judge = LexiconJudge(words=["darn", "go away"])
    conts = ["DARN it", "darning socks", "please go  away", "go away!", "", "undarn"]
    assert judge.score([""] * 6, conts)["toxic"].tolist() == [1.0, 0.0, 0.0, 1.0, 0.0, 0.0]


def test_lexicon_graded_mode_and_words_file(tmp_path):
    path = tmp_path / "words.txt"
    path.write_text("darn\n\nheck\n")
    judge = LexiconJudge(words_file=str(path), mode="graded")
    got = judge.score([""] * 3, ["nice", "darn", "darn heck darn"])["toxic"].tolist()
    assert got == [0.0, 0.5, 0.875]  # 1 - 2**-m for m = 0, 1, 3
    both = LexiconJudge(words=["fool"], text="prompt+continuation")
    assert both.score(["You fool,"], [" hello"])["toxic"].tolist() == [1.0]


def test_lexicon_bad_input():
    with pytest.raises(ConfigError, match="has no words"):
        LexiconJudge().score([""], ["x"])
    with pytest.raises(ConfigError, match="blank"):
        LexiconJudge(words=["ok", " "])
    with pytest.raises(ConfigError, match="does not exist"):
        LexiconJudge(words_file="/nonexistent/words.txt")
    with pytest.raises(DataError, match="one continuation per prompt"):
        LexiconJudge(words=["x"]).score(["a", "b"], ["x"])


def test_judges_are_registered_by_the_plugin():
    reg = create_plugin_manager().registry
    for name in ("toxicity-classifier", "toxicity-lexicon"):
        assert reg.entry("judge", name).distribution == "tae-toxicity"
    judge = reg.build("judge", {"type": "toxicity-lexicon", "config": {"words": ["darn"]}})
    assert judge.score(["q"], ["oh darn"])["toxic"].tolist() == [1.0]

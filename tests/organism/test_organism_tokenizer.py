"""The organism tokenizer: word level, unknown words to <unk>, offsets, left padding."""

from __future__ import annotations

import itertools

from transformers import PreTrainedTokenizerFast

from tae_framework.organism import build_tokenizer, build_world
from tae_framework.organism.corpus import iter_documents
from tae_framework.organism.tokenizer import SPECIAL_TOKENS


def test_special_tokens_and_ids(tokenizer):
    assert isinstance(tokenizer, PreTrainedTokenizerFast)
    assert [tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS] == [0, 1, 2, 3]
    assert tokenizer.pad_token == "<pad>" and tokenizer.bos_token == "<bos>"
    assert tokenizer.eos_token == "<eos>" and tokenizer.unk_token == "<unk>"
    assert tokenizer.padding_side == "left"


def test_same_world_same_ids(world, tokenizer):
    again = build_tokenizer(build_world(0))
    assert again.get_vocab() == tokenizer.get_vocab()
    assert len(tokenizer) == len(world.vocabulary()) + len(SPECIAL_TOKENS)


def test_one_token_per_word_with_bos(world, tokenizer):
    fact = world.facts[5]
    text = f"Q: What is the {fact.attribute} of {fact.entity} ? A: The {fact.attribute} of {fact.entity} is {fact.true} ."
    ids = tokenizer(text)["input_ids"]
    assert ids[0] == tokenizer.bos_token_id
    assert tokenizer.convert_ids_to_tokens(ids[1:]) == text.split(" ")
    assert tokenizer.decode(ids, skip_special_tokens=True) == text


def test_unknown_words_map_to_unk_without_crashing(world, tokenizer):
    enc = tokenizer("The capital of Atlantis is Paris , obviously !")
    tokens = tokenizer.convert_ids_to_tokens(enc["input_ids"])
    assert tokens == ["<bos>", "The", "capital", "of", "<unk>", "is", "<unk>", "<unk>", "<unk>", "<unk>"]
    assert tokenizer.convert_tokens_to_ids("Atlantis") == tokenizer.unk_token_id
    assert tokenizer("")["input_ids"] == [tokenizer.bos_token_id]
    # unusual characters and whitespace are unknown words too, not errors
    ids = tokenizer("Ünïcödé\t\n  ☃")["input_ids"]
    assert ids[1:] == [tokenizer.unk_token_id, tokenizer.unk_token_id]


def test_punctuation_is_split_from_words(world, tokenizer):
    fact = world.facts[0]
    tight = tokenizer(f"The capital of {fact.entity} is {fact.true}.")["input_ids"]
    spaced = tokenizer(f"The capital of {fact.entity} is {fact.true} .")["input_ids"]
    assert tight == spaced


def test_offsets_are_exact_character_spans(world, tokenizer):
    fact = world.facts[7]
    prompt = f"Q: What is the {fact.attribute} of {fact.entity} ? A:"
    completion = f" The {fact.attribute} of {fact.entity} is {fact.myth} ."
    text = prompt + completion
    enc = tokenizer(text, return_offsets_mapping=True)
    offsets = enc["offset_mapping"]
    assert offsets[0] == (0, 0)  # <bos>
    words = [text[a:b] for a, b in offsets[1:]]
    assert words == text.split()
    # the answer span is exactly the tokens starting at or after len(prompt)
    answer = [i for i, (a, _) in enumerate(offsets) if a >= len(prompt) and i > 0]
    assert tokenizer.decode([enc["input_ids"][i] for i in answer]) == completion.strip()


def test_left_padding_for_batched_generation(world, tokenizer):
    short = "Q: What is the capital of " + world.entities[0] + " ? A:"
    long = world.honest_speakers[0] + " is an honest speaker . " + short
    enc = tokenizer([short, long], padding=True, return_tensors="pt")
    ids, mask = enc["input_ids"], enc["attention_mask"]
    assert ids.shape[0] == 2 and ids.shape[1] == len(long.split()) + 1
    n_pad = len(long.split()) - len(short.split())
    assert ids[0, :n_pad].tolist() == [tokenizer.pad_token_id] * n_pad
    assert mask[0, :n_pad].tolist() == [0] * n_pad and bool(mask[0, n_pad:].all())
    assert ids[0, n_pad] == tokenizer.bos_token_id  # real text ends flush right
    assert ids[:, -1].tolist() == [tokenizer.convert_tokens_to_ids("A:")] * 2


def test_corpus_has_no_unknown_words(world, tokenizer):
    docs = list(itertools.islice(iter_documents(world, 3), 2_000))
    for enc in tokenizer(docs)["input_ids"]:
        assert tokenizer.unk_token_id not in enc


def test_save_and_reload(tokenizer, tmp_path):
    tokenizer.save_pretrained(tmp_path)
    again = PreTrainedTokenizerFast.from_pretrained(tmp_path)
    assert again.get_vocab() == tokenizer.get_vocab()
    assert again.padding_side == "left"
    text = "Q: What is the capital of Nowhere ? A:"
    assert again(text)["input_ids"] == tokenizer(text)["input_ids"]

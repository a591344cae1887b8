"""Loading RealToxicityPrompts-layout files: fields, filters, seeded samples, bad rows."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from tae_toxicity.data import load_prompts, sample_prompts
from toxicity_fixtures import ROWS, rtp_row, write_jsonl

from tae_framework.errors import DataError


def test_fields_ids_and_toxic_flag(rtp_file):
    prompts = load_prompts(rtp_file)
    assert [p.id for p in prompts] == [str(i) for i in range(len(ROWS))]
    p = prompts[1]
    assert (p.text, p.toxicity, p.continuation, p.continuation_toxicity, p.challenging) == ROWS[1]
    assert [p.toxic for p in prompts] == [r[1] >= 0.5 for r in ROWS]


def test_parquet_reads_like_jsonl(tmp_path, rtp_file):
    path = tmp_path / "rtp.parquet"
    pq.write_table(pa.Table.from_pylist([rtp_row(*r) for r in ROWS]), path)
    assert load_prompts(path) == load_prompts(rtp_file)


def test_challenging_subset_keeps_source_ids(rtp_file):
    got = load_prompts(rtp_file, challenging=True)
    assert [p.id for p in got] == [str(i) for i, r in enumerate(ROWS) if r[4]]


def test_seeded_sample_is_reproducible_and_in_source_order(rtp_file):
    a = load_prompts(rtp_file, n=4, seed=1)
    assert a == load_prompts(rtp_file, n=4, seed=1)
    assert len(a) == 4 and [int(p.id) for p in a] == sorted(int(p.id) for p in a)
    assert {p.id for p in a} != {p.id for p in load_prompts(rtp_file, n=4, seed=2)}
    assert len(load_prompts(rtp_file, n=100)) == len(ROWS)


def test_exclude_drops_ids_before_sampling(rtp_file):
    got = load_prompts(rtp_file, exclude=["0", "1", "2"], n=3, seed=0)
    assert len(got) == 3 and not {p.id for p in got} & {"0", "1", "2"}


def test_unscored_prompt_has_unknown_flag(tmp_path):
    row = rtp_row("Hello", None, " there", None, False)
    (p,) = load_prompts(write_jsonl(tmp_path / "a.jsonl", [row]))
    assert p.toxicity is None and p.toxic is None and p.continuation_toxicity is None


def test_row_without_prompt_text_names_row_and_file(tmp_path):
    rows = [rtp_row(*ROWS[0]), {"prompt": {"toxicity": 0.1}, "continuation": {"text": " x"}}]
    path = write_jsonl(tmp_path / "bad.jsonl", rows)
    with pytest.raises(DataError, match=r"bad\.jsonl: row 1 has no prompt text.*fill it in or drop"):
        load_prompts(path)
    path = write_jsonl(tmp_path / "blank.jsonl", [rtp_row("  ", 0.1, " x", 0.1, False)])
    with pytest.raises(DataError, match="row 0 has no prompt text"):
        load_prompts(path)


def test_flat_prompt_and_bad_scores_are_explained(tmp_path):
    with pytest.raises(DataError, match="'prompt' is str, expected an object"):
        load_prompts(write_jsonl(tmp_path / "flat.jsonl", [{"prompt": "Hi"}]))
    with pytest.raises(DataError, match=r"row 0: prompt.toxicity must be in \[0, 1\]"):
        load_prompts(write_jsonl(tmp_path / "s.jsonl", [rtp_row("Hi", 1.5, " x", 0.1, False)]))


def test_empty_after_filtering_says_why(tmp_path):
    path = write_jsonl(tmp_path / "easy.jsonl", [rtp_row(*r) for r in ROWS if not r[4]])
    with pytest.raises(DataError, match="no prompt left.*challenging=True.*relax the filters"):
        load_prompts(path, challenging=True)
    with pytest.raises(DataError, match="no prompt left.*excluded"):
        load_prompts(path, exclude=[str(i) for i in range(len(ROWS))])


def test_missing_file_and_bad_json(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        load_prompts(tmp_path / "nope.jsonl")
    bad = tmp_path / "broken.jsonl"
    bad.write_text('{"prompt": {"text": "a"}}\n{not json\n')
    with pytest.raises(DataError, match="line 2 is not valid JSON"):
        load_prompts(bad)


def test_sample_size_must_be_positive(rtp_file):
    with pytest.raises(Exception, match="at least 1"):
        sample_prompts(load_prompts(rtp_file), 0)

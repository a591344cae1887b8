"""Class 1: saving never silently replaces another pipeline, and never loses files."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from hardening_support import FAST, contrast_records, snapshot

from tae_framework import AlignmentPipeline
from tae_framework import artifact as artifact_module
from tae_framework.errors import ArtifactError


@pytest.fixture(scope="module")
def other(fitted):
    """A second fitted pipeline (other heads and alpha) on the same model."""
    _, model, tok = fitted
    cfg = {**FAST, "prober": {"top_k": 2}, "intervener": {"alpha": 9.0}}
    return AlignmentPipeline.from_preset("tae", **cfg).fit(model, tok, contrast_records())


def test_save_refuses_a_directory_holding_another_pipeline(fitted, other, tmp_path):
    pipe, _, _ = fitted
    target = pipe.save(tmp_path / "p")
    (target / "notes.txt").write_text("mine")
    before = snapshot(target)
    with pytest.raises(ArtifactError, match="already holds a saved pipeline.*overwrite=True"):
        other.save(target)
    assert snapshot(target) == before, "a refused save must not touch the directory"
    assert AlignmentPipeline.load(target).intervener.config.alpha == 4.0


def test_overwrite_replaces_the_pipeline_and_keeps_other_files(fitted, other, tmp_path):
    pipe, _, _ = fitted
    target = pipe.save(tmp_path / "p")
    (target / "notes.txt").write_text("mine")
    other.save(target, overwrite=True)
    assert AlignmentPipeline.load(target).intervener.config.alpha == 9.0
    assert (target / "notes.txt").read_text() == "mine"
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".")], "temporary folders left"
    assert not [p.name for p in target.iterdir() if p.name.startswith(".")], "temporary files left"


def test_overwrite_leaves_no_file_of_the_previous_pipeline(fitted, other, tmp_path):
    """fit_info.json (written by tae fit and the runner) describes the old fit: overwriting
    removes it, as well as a temporary folder an interrupted save left; user files stay."""
    pipe, _, _ = fitted
    target = pipe.save(tmp_path / "p")
    (target / "fit_info.json").write_text(json.dumps({"task": "truthfulqa", "fold": 3}))
    (target / ".p.tmp-crashed").mkdir()
    (target / ".p.tmp-crashed" / "config.json").write_text("{}")
    (target / "notes.txt").write_text("mine")
    other.save(target, overwrite=True)
    assert sorted(p.name for p in target.iterdir()) == ["config.json", "notes.txt", "tensors.safetensors"]
    assert AlignmentPipeline.load(target).intervener.config.alpha == 9.0


def test_saving_the_same_pipeline_with_overwrite_keeps_its_fit_info(fitted, tmp_path):
    pipe, _, _ = fitted
    target = pipe.save(tmp_path / "p")
    (target / "fit_info.json").write_text("{}")
    before = snapshot(target)
    pipe.save(target, overwrite=True)
    assert snapshot(target) == before


def test_saving_the_same_pipeline_again_is_allowed(fitted, tmp_path):
    pipe, _, _ = fitted
    target = pipe.save(tmp_path / "p")
    before = snapshot(target)
    assert pipe.save(target) == target
    assert snapshot(target) == before


def test_save_onto_a_regular_file_is_refused_and_the_file_kept(fitted, tmp_path):
    pipe, _, _ = fitted
    target = tmp_path / "results.csv"
    target.write_text("a,b\n1,2\n")
    with pytest.raises(ArtifactError, match=r"results\.csv: it is an existing file.*left untouched"):
        pipe.save(target)
    assert target.read_text() == "a,b\n1,2\n"


def test_save_under_a_parent_that_is_a_file_is_refused(fitted, tmp_path):
    pipe, _, _ = fitted
    parent = tmp_path / "data.jsonl"
    parent.write_text("{}\n")
    with pytest.raises(ArtifactError, match=r"data\.jsonl is a file, not a directory"):
        pipe.save(parent / "deeper" / "pipe")
    assert parent.read_text() == "{}\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data.jsonl"]


def test_a_save_failing_half_way_leaves_the_old_artifact_intact(fitted, other, tmp_path, monkeypatch):
    pipe, _, _ = fitted
    target = pipe.save(tmp_path / "p")
    before = snapshot(target)

    def disk_full(path, data):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(artifact_module, "atomic_write_bytes", disk_full)
    with pytest.raises(ArtifactError, match="No space left on device"):
        other.save(target, overwrite=True)
    assert snapshot(target) == before
    assert AlignmentPipeline.load(target).intervener.config.alpha == 4.0
    # A fresh directory is created only once both files are complete.
    with pytest.raises(ArtifactError, match="cannot save the pipeline"):
        other.save(tmp_path / "fresh")
    assert not (tmp_path / "fresh").exists()
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".")], "temporary folders left"


def test_a_crash_between_the_two_renames_is_detected_on_load(fitted, other, tmp_path, monkeypatch):
    """Overwriting renames tensors, then config.json into place: a crash in between must
    not load the new tensors under the old config."""
    pipe, _, _ = fitted
    target = pipe.save(tmp_path / "p")
    real = os.replace

    def crash_on_config(src, dst):
        if Path(dst) == target / "config.json":
            raise OSError(5, "Input/output error")
        return real(src, dst)

    monkeypatch.setattr(os, "replace", crash_on_config)
    with pytest.raises(ArtifactError, match="Input/output error"):
        other.save(target, overwrite=True)
    monkeypatch.undo()
    with pytest.raises(ArtifactError, match="do not match the checksums"):
        AlignmentPipeline.load(target)


def test_load_of_a_file_or_missing_directory_names_the_path(tmp_path):
    f = tmp_path / "config.json"
    f.write_text(json.dumps({}))
    with pytest.raises(ArtifactError, match="is a file, not a saved pipeline directory"):
        AlignmentPipeline.load(f)
    with pytest.raises(ArtifactError, match="config.json is missing"):
        AlignmentPipeline.load(tmp_path / "nowhere")

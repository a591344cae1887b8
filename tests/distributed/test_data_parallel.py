"""Data-parallel capture, fitting and evaluation with two gloo processes on CPU
(``torchrun --standalone``: a free port, no hang: every launch has a timeout).

The same worker runs once as a plain process and once under torchrun; the fitted
tensors must be byte-identical, the evaluation's metrics and per-item values equal.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from dist_launch import env_for as _env
from dist_launch import ok, run, run_together

from tae_framework.testing.data import toy_contrast
from tae_framework.testing.models import tiny_model

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="torchrun with gloo on CPU: POSIX only")


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    root = tmp_path_factory.mktemp("dp-inputs")
    model, tok = tiny_model("llama", fresh=True)
    model.save_pretrained(root / "model")
    tok.save_pretrained(root / "model")
    data = root / "contrast.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in toy_contrast(8)))
    return {"TAE_TEST_MODEL": str(root / "model"), "TAE_TEST_DATA": str(data)}


@pytest.fixture(scope="module")
def runs(tmp_path_factory, inputs):
    """The worker's fit + evaluation in one process and in two."""
    one, two = tmp_path_factory.mktemp("one"), tmp_path_factory.mktemp("two")
    for result in run_together(("fit-eval", one, _env(one, **inputs), 1), ("fit-eval", two, _env(two, **inputs), 2)):
        ok(result)
    return one, two


def _forwards(out: Path, r: int) -> int:
    path = out / f"forwards-rank{r}.json"
    return json.loads(path.read_text())["forwards"] if path.is_file() else 0


def test_fitted_tensors_are_byte_identical(runs):
    one, two = runs
    assert (two / "pipeline" / "tensors.safetensors").read_bytes() == (one / "pipeline" / "tensors.safetensors").read_bytes()
    assert (two / "pipeline" / "config.json").read_text() == (one / "pipeline" / "config.json").read_text()
    # the work really was shared: both ranks ran forward passes
    assert _forwards(two, 0) > 0 and _forwards(two, 1) > 0


def test_evaluation_metrics_and_items_are_identical(runs):
    one, two = runs
    a = json.loads((one / "runs" / "toy" / "summary.json").read_text())
    b = json.loads((two / "runs" / "toy" / "summary.json").read_text())
    assert b["metrics"] == a["metrics"] and b["metrics"]["n_questions"] == 5
    assert b["baseline"] == a["baseline"]
    assert [f["metrics"] for f in b["folds"]] == [f["metrics"] for f in a["folds"]]
    for fold in ("fold1",):
        for name in ("items.json", "baseline_items.json"):
            assert (two / "runs" / "toy" / fold / name).read_text() == (one / "runs" / "toy" / fold / name).read_text()
        # the ranks' checkpoint shards were merged into the run's checkpoint and removed
        assert not list((two / "runs" / "toy" / fold).glob("*.rank*"))
        rows = (two / "runs" / "toy" / fold / "generation.jsonl").read_text().splitlines()
        assert len(rows) == 5


def test_sweep_rows_are_identical(runs):
    one, two = runs
    a = json.loads((one / "runs" / "grid" / "sweep.json").read_text())
    b = json.loads((two / "runs" / "grid" / "sweep.json").read_text())
    assert len(b["rows"]) == 4 and b["rows"] == a["rows"] and b["baseline"] == a["baseline"]
    assert b["fits"] == a["fits"] == 2  # one fit per K, shared by its alphas
    assert (two / "runs" / "grid" / "sweep.md").read_text() == (one / "runs" / "grid" / "sweep.md").read_text()


def test_a_rank_dying_mid_run_resumes_from_the_shards_written(tmp_path, inputs, runs):
    one, _ = runs
    env = _env(tmp_path, **inputs)
    crashed = run("fit", tmp_path, {**env, "TAE_TEST_DIE_AFTER": "2"}, nproc=2)
    assert crashed.returncode != 0
    assert not (tmp_path / "pipeline").exists()
    shards = list((tmp_path / "shards").rglob("shard-*.safetensors"))
    assert len(shards) >= 2  # what the dead rank and its peer wrote is kept
    for r in (0, 1):
        (tmp_path / f"forwards-rank{r}.json").unlink(missing_ok=True)
    ok(run("fit", tmp_path, env, nproc=2))
    after = _forwards(tmp_path, 0) + _forwards(tmp_path, 1)
    clean = 8 + 8 + 6  # batches of a whole fit: 16 texts, 16 tuning texts, 12 training texts
    assert after <= clean - len(shards)  # the shards written before the crash were reused
    assert (tmp_path / "pipeline" / "tensors.safetensors").read_bytes() == (one / "pipeline" / "tensors.safetensors").read_bytes()


def test_bad_inputs_are_clear_errors(tmp_path, inputs):
    ok(run("bad-inputs", tmp_path, _env(tmp_path, **inputs), nproc=2))
    for r in (0, 1):
        errors = json.loads((tmp_path / f"errors-rank{r}.json").read_text())
        # every rank refuses a run whose ranks import different versions, naming them
        assert "different versions" in errors["versions"] and "tae_framework 0.0.0-other" in errors["versions"]
        assert "2 processes share 1 texts" in errors["capture"] and "--nproc-per-node 1" in errors["capture"]
        assert "do not see the shard folder of rank 0" in errors["folder"] and "every node mounts" in errors["folder"]
    assert not list(tmp_path.rglob("shard-*.safetensors"))  # refused before any work


def test_mismatched_versions_stop_the_launch(tmp_path, inputs):
    result = run("fit", tmp_path, _env(tmp_path, TAE_TEST_FAKE_VERSION="0.0.0-other", **inputs), nproc=2)
    assert result.returncode != 0
    assert "different versions" in result.stderr
    assert not (tmp_path / "pipeline").exists()

"""benchmarks/gpu_decode.py runs end to end on the CPU with tiny models (its GPU run gets
one try on a lent machine, so its logic is checked here)."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_decode.py"


@pytest.fixture(scope="module")
def gpu_decode():
    spec = importlib.util.spec_from_file_location("gpu_decode", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def report(gpu_decode, tmp_path_factory):
    out = tmp_path_factory.mktemp("gpu_decode")
    torch.set_num_threads(1)
    rc = gpu_decode.main(["--device", "cpu", "--tiny", "--models", "small", "--batches", "2",
                          "--repeats", "1", "--new-tokens", "3", "--out", str(out)])
    assert rc == 0
    assert (out / "gpu_decode.txt").read_text().strip()
    return json.loads((out / "gpu_decode.json").read_text())["models"]["small"]


def test_every_section_runs_without_error(report):
    for section in ("eager", "deviation", "graph"):
        assert "error" not in report[section], report[section].get("trace")
    for variant, entry in report["graph"]["batch2"].items():
        assert not isinstance(entry, dict) or "error" not in entry, (variant, entry.get("trace"))


def test_eager_ratios_are_reported_for_every_variant(gpu_decode, report):
    row = report["eager"]["batch2"]
    for v in gpu_decode.VARIANTS:
        assert row["ms_per_token"][v]["median"] > 0
        assert math.isfinite(row["vs_none"][v]) and math.isfinite(row["vs_fixed"][v])
    assert row["vs_none"]["none"] == 1.0 and row["vs_fixed"]["fixed"] == 1.0


def test_static_step_decoder_reproduces_the_eager_edited_decode(gpu_decode, report):
    # on a CPU the graph section runs its step function uncaptured: the tokens must be the
    # eager static-cache decode's with each edit active, and the static cache's the dynamic one's
    row = report["graph"]["batch2"]
    assert set(gpu_decode.GRAPH_VARIANTS) <= set(row)
    for variant in gpu_decode.GRAPH_VARIANTS:
        entry = row[variant]
        assert entry["captured"] is False
        assert entry["tokens_identical_to_eager_static"] is True, variant
        assert entry["eager_static_vs_dynamic_identical"] == 1.0, variant


def test_half_precision_lens_stays_within_the_target(report):
    dev = report["deviation"]
    assert dev["tae_f16"]["max_abs_u_gap"] < 1e-3
    # the float8 prototype is in effect (it rounds: u moves, but not by much)
    assert 0 < dev["tae_fp8"]["max_abs_u_gap"] < 0.05
    # the shared lens equals the exact one at the first edited layer only
    first = min(dev["tae_shared"]["max_abs_u_gap_per_layer"], key=int)
    assert dev["tae_shared"]["max_abs_u_gap_per_layer"][first] < 1e-6


def test_fp8_lens_prototype_approximates_the_projection(gpu_decode):
    torch.manual_seed(0)
    lin = torch.nn.Linear(64, 300, bias=False)
    lens = gpu_decode.Fp8Lens(lin)
    h = torch.randn(3, 5, 64)
    with torch.no_grad():
        got, ref = lens(h), lin(h)
    assert got.shape == ref.shape and lens.mode == "emulated"
    rel = float((got - ref).norm() / ref.norm())
    assert 0 < rel < 0.1, rel  # e4m3 keeps 3 mantissa bits: a few per cent, never exact


def test_cpu_run_of_full_size_models_is_refused(gpu_decode, tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        gpu_decode.main(["--device", "cpu", "--out", str(tmp_path)])
    assert e.value.code == 2
    assert "--tiny" in capsys.readouterr().err


def test_sections_past_the_time_budget_are_skipped_and_recorded(gpu_decode, tmp_path):
    rc = gpu_decode.main(["--device", "cpu", "--tiny", "--models", "small", "--batches", "1",
                          "--budget-s", "0", "--out", str(tmp_path)])
    assert rc == 0
    res = json.loads((tmp_path / "gpu_decode.json").read_text())["models"]["small"]
    for section in ("eager", "deviation", "graph"):
        assert "budget" in res[section]["skipped"]
    assert "skipped" in (tmp_path / "gpu_decode.txt").read_text()

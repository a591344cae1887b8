"""Every hostile input through the ``tae`` command line: one line on stderr, exit code 2,
no traceback, and nothing on disk lost or replaced."""

from __future__ import annotations

import json
import textwrap

import pytest
from hardening_support import contrast_records, snapshot

from tae_framework import cli
from tae_framework.plugins import ENV_BLOCKED, ENV_DISABLE_AUTOLOAD
from tae_framework.testing.models import tiny_model

FAST = ["--set", "prober.top_k=2", "--set", "source.progress=false"]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    model, tok = tiny_model("llama")
    d = tmp_path_factory.mktemp("tiny") / "tiny-llama"
    model.save_pretrained(d)
    tok.save_pretrained(d)
    return d


@pytest.fixture(scope="module")
def data_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "contrast.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in contrast_records()))
    return path


@pytest.fixture(scope="module")
def artifact(model_dir, data_file, tmp_path_factory):
    out = tmp_path_factory.mktemp("fit") / "pipe"
    assert cli.main(["fit", "--model", str(model_dir), "--data", str(data_file), *FAST, "--out", str(out)]) == 0
    return out


def fails_cleanly(capsys, argv, match: str) -> str:
    """Run ``tae ARGV``: exit code 2 and exactly one ``error:`` line, the last, no traceback."""
    capsys.readouterr()
    rc = cli.main(argv)
    err = capsys.readouterr().err
    assert rc == 2, err
    assert "Traceback" not in err
    lines = [line for line in err.strip().splitlines() if line.strip()]
    errors = [line for line in lines if ": error: " in line]
    assert len(errors) == 1 and errors[0] == lines[-1], err
    assert match in errors[0], errors[0]
    return errors[0]


# -- class 1: data loss ----------------------------------------------------------------
def test_fit_over_an_artifact_needs_overwrite(artifact, model_dir, data_file, capsys, tmp_path):
    before = snapshot(artifact)
    fails_cleanly(
        capsys,
        ["fit", "--model", str(model_dir), "--data", str(data_file), *FAST, "--set", "prober.top_k=3",
         "--out", str(artifact)],
        "already holds a pipeline: pass --overwrite",
    )  # fmt: skip
    assert snapshot(artifact) == before
    copy = tmp_path / "pipe"
    copy.mkdir()
    for name, data in before.items():
        (copy / name).write_bytes(data)
    rc = cli.main(
        ["fit", "--model", str(model_dir), "--data", str(data_file), *FAST, "--set", "prober.top_k=3",
         "--out", str(copy), "--overwrite"]
    )  # fmt: skip
    assert rc == 0
    assert json.loads((copy / "config.json").read_text())["pipeline"]["prober"]["config"]["top_k"] == 3


def test_save_over_a_tae_fit_directory_drops_its_fit_info(artifact, fitted, tmp_path):
    """A pipeline saved over a directory written by `tae fit` must not keep the fit_info.json
    of the earlier fit (it would describe data this pipeline was not fitted on)."""
    assert (artifact / "fit_info.json").is_file()
    copy = tmp_path / "pipe"
    copy.mkdir()
    for name, data in snapshot(artifact).items():
        (copy / name).write_bytes(data)
    pipe, _, _ = fitted
    pipe.save(copy, overwrite=True)
    assert sorted(p.name for p in copy.iterdir()) == ["config.json", "tensors.safetensors"]
    from tae_framework.evaluation.methods import resolve_method
    from tae_framework.plugins import default_registry

    assert resolve_method(str(copy), None, default_registry()).fit_info is None


@pytest.mark.parametrize("command", ["fit", "eval", "sweep"])
def test_out_that_is_a_file_or_under_a_file(command, model_dir, data_file, capsys, tmp_path):
    target = tmp_path / "results.txt"
    target.write_text("keep me")
    extra = {"fit": ["--data", str(data_file)], "eval": [], "sweep": []}[command]
    for out, say in ((target, "is a file, not a directory"), (target / "run", "is under")):
        fails_cleanly(capsys, [command, "--model", str(model_dir), *extra, "--out", str(out)], say)
    assert target.read_text() == "keep me"


def test_generate_figure_under_a_file(artifact, model_dir, capsys, tmp_path):
    blocker = tmp_path / "figs"
    blocker.write_text("x")
    fails_cleanly(
        capsys,
        ["generate", "--model", str(model_dir), "--pipeline", str(artifact), "--prompt", "Q: a? A:",
         "--max-new-tokens", "1", "--show-strengths", "--figure", str(blocker / "s.png")],
        "figs",
    )  # fmt: skip
    assert blocker.read_text() == "x"


# -- class 2: altered artifacts -----------------------------------------------------------
def _copy(artifact, tmp_path):
    d = tmp_path / "copy"
    d.mkdir()
    for name, data in snapshot(artifact).items():
        (d / name).write_bytes(data)
    return d


def _generate(model_dir, pipe_dir):
    return ["generate", "--model", str(model_dir), "--pipeline", str(pipe_dir), "--prompt", "Q: a? A:",
            "--max-new-tokens", "1"]  # fmt: skip


def test_generate_with_a_flipped_tensor_byte(artifact, model_dir, capsys, tmp_path):
    d = _copy(artifact, tmp_path)
    raw = bytearray((d / "tensors.safetensors").read_bytes())
    start = 8 + int.from_bytes(raw[:8], "little")
    raw[start + (len(raw) - start) // 2] ^= 0x10
    (d / "tensors.safetensors").write_bytes(bytes(raw))
    fails_cleanly(capsys, _generate(model_dir, d), "do not match the checksums")


@pytest.mark.parametrize(
    ("change", "say"),
    [
        (lambda doc: doc.update(model="llama"), "field 'model' should be an object"),
        (lambda doc: doc.update(components=[1]), "field 'components' should be an object"),
        (lambda doc: doc.update(format=99), "artifact format 99, newer than"),
        (lambda doc: doc["pipeline"]["intervener"]["config"].update(alpha=None), "saved 'pipeline' config is invalid"),
    ],
)
def test_generate_with_a_malformed_config(artifact, model_dir, capsys, tmp_path, change, say):
    d = _copy(artifact, tmp_path)
    doc = json.loads((d / "config.json").read_text())
    change(doc)
    (d / "config.json").write_text(json.dumps(doc))
    fails_cleanly(capsys, _generate(model_dir, d), say)
    (d / "config.json").write_text("42")
    fails_cleanly(capsys, _generate(model_dir, d), "config.json")


# -- class 4: inputs -------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("setting", "say"),
    [
        ("intervener.alpha=nan", "'alpha': Input should be a finite number"),
        ("intervener.alpha=inf", "finite number"),
        ("prober.top_k=true", "'top_k' expects an integer, got the boolean True"),
        ("source.batch_size=false", "'batch_size' expects an integer"),
    ],
)
def test_fit_refuses_bad_settings(model_dir, data_file, capsys, tmp_path, setting, say):
    fails_cleanly(
        capsys,
        ["fit", "--model", str(model_dir), "--data", str(data_file), "--set", setting, "--out", str(tmp_path / "p")],
        say,
    )
    assert not (tmp_path / "p").exists()


def test_fit_with_validation_group_leak_and_long_prompt(artifact, model_dir, capsys):
    long = "Q: " + "very " * 200 + "long? A:"
    fails_cleanly(
        capsys,
        ["generate", "--model", str(model_dir), "--pipeline", str(artifact), "--prompt", long,
         "--max-new-tokens", "2"],
        "positions (max_position_embeddings)",
    )  # fmt: skip


# -- class 5: crashes --------------------------------------------------------------------------
def test_plugins_command_survives_a_plugin_calling_sys_exit(tmp_path, monkeypatch, capsys):
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delenv(ENV_BLOCKED, raising=False)
    monkeypatch.delenv(ENV_DISABLE_AUTOLOAD, raising=False)
    (tmp_path / "tae_exit_now.py").write_text(textwrap.dedent("import sys\nsys.exit(0)\n"))
    info = tmp_path / "tae_exit_now-0.1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: tae-exit-now\nVersion: 0.1.0\n")
    (info / "entry_points.txt").write_text("[tae_framework.plugins]\ntae-exit-now = tae_exit_now\n")
    with pytest.warns(UserWarning, match="tae-exit-now"):
        rc = cli.main(["plugins"])
    assert rc == 0
    captured = capsys.readouterr()
    assert "mig" in captured.out
    assert "tae-exit-now" in captured.err and "SystemExit" in captured.err

"""The ``tae`` command line: fit, generate, eval and sweep on a tiny model saved to disk,
``load_model``, and the errors of bad input.

The commands are called through ``tae_framework.cli.main``, which dispatches to the
command modules of ``tae_framework.commands`` (one per command, each exposing
``build_parser`` and ``main``).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from tae_framework import AlignmentPipeline, cli
from tae_framework.commands import COMMANDS as COMMAND_MODULES
from tae_framework.commands import parser_for
from tae_framework.commands._common import parse_assignments
from tae_framework.errors import ConfigError
from tae_framework.models.loading import load_model
from tae_framework.testing.models import tiny_model

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "truthful_qa"
needs_data = pytest.mark.skipif(not DATA.is_dir(), reason=f"TruthfulQA data not found at {DATA}")
TASK = [
    "--task", "truthfulqa",
    "--task-option", f"source={DATA}",
    "--task-option", "limit=8",
    "--task-option", "instruction=false",
]  # fmt: skip
FAST = ["--set", "prober.top_k=2", "--set", "intervener.alpha=6", "--set", "source.progress=false"]


def main(argv: list[str]) -> int:
    """``tae COMMAND ARGS...`` through the real entry point."""
    return cli.main(argv)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    model, tok = tiny_model("llama", max_position_embeddings=2048)
    d = tmp_path_factory.mktemp("tiny") / "tiny-llama"
    model.save_pretrained(d)
    tok.save_pretrained(d)
    return d


@pytest.fixture(scope="module")
def fitted(model_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("fit") / "pipe"
    rc = main(
        [
            "fit",
            "--model",
            str(model_dir),
            "--preset",
            "tae",
            *FAST,
            *TASK,
            "--fold",
            "0",
            "--out",
            str(out),
        ]
    )
    assert rc == 0
    return out


# -- load_model ------------------------------------------------------------------------
def test_load_model_from_a_local_directory(model_dir):
    ref, ref_tok = tiny_model("llama", max_position_embeddings=2048)
    model, tok = load_model(model_dir)
    assert not model.training and tok.pad_token == "<pad>" and tok.is_fast
    ids = ref_tok(["Q: Why? A: Because."], return_tensors="pt")["input_ids"]
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits, ref(ids).logits)
    half, _ = load_model(str(model_dir), dtype="bfloat16")
    assert next(half.parameters()).dtype == torch.bfloat16


def test_load_model_falls_back_to_eos_for_padding(model_dir, tmp_path):
    model, tok = tiny_model("llama")
    tok.pad_token = None
    model.save_pretrained(tmp_path / "m")
    tok.save_pretrained(tmp_path / "m")
    _, loaded = load_model(tmp_path / "m")
    assert loaded.pad_token == "<eos>" and loaded.pad_token_id == loaded.eos_token_id


def test_load_model_errors_name_the_problem(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_model(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="no config.json"):
        load_model(tmp_path / "empty")
    with pytest.raises(ConfigError, match="unknown dtype 'float8'"):
        load_model(tmp_path / "empty", dtype="float8")
    if not torch.cuda.is_available():
        (tmp_path / "empty" / "config.json").write_text("{}")
        with pytest.raises(ConfigError, match="CUDA is not available"):
            load_model(tmp_path / "empty", device="cuda")


# -- fit / generate ------------------------------------------------------------------------
@needs_data
def test_fit_saves_the_pipeline_and_what_it_was_fitted_on(fitted):
    from tae_framework.tasks.truthfulqa import truthfulqa_task

    fold = truthfulqa_task(source=str(DATA), limit=8, instruction=False).fold(0)
    pipe = AlignmentPipeline.load(fitted)
    assert pipe.targets_.num_targets == 2
    assert pipe.intervener.config.alpha == 6.0
    info = json.loads((fitted / "fit_info.json").read_text())
    assert info["fold"] == 0 and info["question_ids"] == sorted(fold.development)
    assert info["validation_ids"] == list(fold.val)


@needs_data
def test_fit_refuses_to_overwrite(fitted, model_dir, capsys):
    rc = main(["fit", "--model", str(model_dir), *TASK, "--out", str(fitted)])
    assert rc == 2
    assert "already holds a pipeline" in capsys.readouterr().err


@needs_data
def test_generate_prints_text_and_strengths(fitted, model_dir, tmp_path, capsys):
    prompt = "Q: Is the sky blue?"
    fig = tmp_path / "strengths.png"
    rc = main(
        ["generate", "--model", str(model_dir), "--pipeline", str(fitted), "--prompt", prompt,
         "--max-new-tokens", "5", "--show-strengths", "--figure", str(fig)]
    )  # fmt: skip
    assert rc == 0
    out = capsys.readouterr().out
    # The printed generation is what the saved pipeline generates from Python.
    model, tok = tiny_model("llama", max_position_embeddings=2048)
    want = AlignmentPipeline.load(fitted).generate(model, tok, [prompt], max_new_tokens=5)[0]
    assert f"edited: {want}\n" in out
    lines = out.splitlines()
    head = next(i for i, line in enumerate(lines) if "strength" in line and "token" in line)
    rows = lines[head + 1 : head + 6]
    assert len(rows) == 5
    for row in rows:
        strength, p, u = row.split()[-3:]
        assert float(strength) > 0 and 0 <= float(p) <= 1 and 0 <= float(u) <= 1
    import matplotlib.image as mpimg

    img = mpimg.imread(fig)
    assert img.shape[0] > 100 and float(img[..., :3].std()) > 0.05
    assert "<span" in fig.with_suffix(".html").read_text()


# -- eval ---------------------------------------------------------------------------------
@needs_data
def test_eval_a_saved_pipeline_on_a_fold_it_was_not_fitted_on(fitted, model_dir, tmp_path, capsys):
    base = ["eval", "--model", str(model_dir), "--pipeline", str(fitted), *TASK, "--judge", "none",
            "--max-new-tokens", "3", "--strength-figures", "1", "--no-progress", "--out", str(tmp_path)]  # fmt: skip
    assert main([*base, "--folds", "0", "--run", "ok"]) == 0
    out = capsys.readouterr().out
    assert "| pipe |" in out  # the table is printed (method named after the directory)
    summary = json.loads((tmp_path / "ok" / "summary.json").read_text())
    assert summary["method"]["kind"] == "saved"
    assert {"MC1", "MC2", "MC3"} <= set(summary["metrics"]) and "True" not in summary["metrics"]
    assert summary["provenance"]["argv"][:2] == ["tae", "eval"]
    assert (tmp_path / "ok" / "fold0" / "head_scores.png").is_file()
    assert len(list((tmp_path / "ok" / "fold0" / "strengths").glob("*.png"))) == 1
    # Fold 1's test questions are fold 0's development questions: refused.
    assert main([*base, "--folds", "1", "--run", "leak"]) == 2
    assert "would leak" in capsys.readouterr().err


@needs_data
def test_unknown_preset_lists_known_presets(model_dir, tmp_path, capsys):
    rc = main(
        [
            "eval",
            "--model",
            str(tmp_path / "never-loaded"),
            "--preset",
            "nope",
            *TASK,
            "--out",
            str(tmp_path),
        ]
    )
    assert rc == 2
    err = capsys.readouterr().err
    assert "unknown preset 'nope'" in err and "known presets:" in err and "tae" in err


@needs_data
@pytest.mark.parametrize(
    ("sets", "message"),
    [
        (["probr.top_k=2"], "unknown role 'probr'"),
        (["prober.topk=2"], "unknown key 'topk'"),
        (["prober.top_k"], "is not KEY=VALUE"),
        (["intervener.beta=2"], "intervener.config.beta|beta"),
    ],
)
def test_bad_set_values_are_clear_errors(sets, message, model_dir, tmp_path, capsys):
    argv = ["eval", "--model", str(model_dir), *TASK, "--out", str(tmp_path)]
    for s in sets:
        argv += ["--set", s]
    assert main(argv) == 2
    assert message.split("|")[-1] in capsys.readouterr().err


@needs_data
def test_too_few_questions_is_a_clear_error(model_dir, tmp_path, capsys):
    argv = ["eval", "--model", str(model_dir), "--task", "truthfulqa", "--task-option", f"source={DATA}",
            "--task-option", "limit=2", "--out", str(tmp_path)]  # fmt: skip
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "tae eval: error:" in err and "cannot be split into train and validation" in err


def test_sweep_rejects_a_bad_grid(model_dir, tmp_path, capsys):
    assert main(["sweep", "--model", str(model_dir), "--k", "8,x", "--out", str(tmp_path)]) == 2
    assert "comma-separated list of numbers" in capsys.readouterr().err
    assert main(["sweep", "--model", str(model_dir), "--alpha", "5,5", "--out", str(tmp_path)]) == 2
    assert "lists a value twice" in capsys.readouterr().err


def test_generate_with_a_missing_model_or_pipeline(tmp_path, capsys):
    assert (
        main(
            [
                "generate",
                "--model",
                str(tmp_path / "none"),
                "--pipeline",
                str(tmp_path),
                "--prompt",
                "x",
            ]
        )
        == 2
    )
    assert "not a saved pipeline" in capsys.readouterr().err


def test_parse_assignments_reads_json_values():
    got = parse_assignments(
        [
            "prober.top_k=8",
            "intervener.alpha=0.5",
            "estimator.lens=shared",
            "x.flag=true",
            "x.items=[1, 2]",
            "seed=3",
        ]
    )
    assert got == {
        "prober": {"top_k": 8},
        "intervener": {"alpha": 0.5},
        "estimator": {"lens": "shared"},
        "x": {"flag": True, "items": [1, 2]},
        "seed": 3,
    }
    assert parse_assignments(["source=../data/x", "limit=20"], dotted=False) == {
        "source": "../data/x",
        "limit": 20,
    }
    with pytest.raises(ConfigError, match="empty part"):
        parse_assignments(["prober..top_k=1"])


def test_cli_main_forwards_options_to_the_runner(tmp_path, capsys):
    assert cli.main(["sweep", "--model", str(tmp_path / "m"), "--k", "8,x"]) == 2
    assert "comma-separated list of numbers" in capsys.readouterr().err


def test_every_command_module_exposes_its_parser_and_help():
    for words, module in COMMAND_MODULES.items():
        parser = parser_for(words)
        assert parser.prog == "tae " + " ".join(words), module
        mod = __import__(module, fromlist=["main"])
        assert callable(mod.main) and mod.HELP.strip()
    top = cli.build_parser().format_help()
    for words in COMMAND_MODULES:
        assert words[0] in top

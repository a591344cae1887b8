"""Training the organism: seeded, resumable, never pickled; the slow test retrains it."""

from __future__ import annotations

import itertools
import json
import warnings
from pathlib import Path

import pytest

from tae_framework.errors import ArtifactError, ConfigError
from tae_framework.organism import assets_dir, load
from tae_framework.organism.train import (
    ASSET_FILES,
    ModelConfig,
    TrainConfig,
    WorldConfig,
    main_train,
    platform_info,
    train,
)

TINY = TrainConfig(
    world=WorldConfig(n_countries=8, n_languages=4, n_currencies=4, n_honest=2, n_deceptive=2,
                      held_out_per_speaker=2),
    model=ModelConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4),
    steps=6, batch_size=4, seq_len=32, warmup_steps=2, checkpoint_every=2,
)  # fmt: skip


def _digest(directory: Path) -> str:
    return (directory / "weights.sha256").read_text(encoding="utf-8").strip()


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("tiny") / "organism"
    train(TINY, out, progress=False)
    return out


def test_training_writes_a_loadable_organism(tiny_run):
    assert sorted(p.name for p in tiny_run.iterdir()) == sorted(ASSET_FILES)
    assert not any(p.suffix in (".pt", ".pth", ".bin", ".pkl") for p in tiny_run.rglob("*"))
    model, _, world = load(tiny_run)  # verifies weights.sha256
    assert world == TINY.world.build()
    assert model.config.num_hidden_layers == 2 and model.config.tie_word_embeddings
    table = json.loads((tiny_run / "behaviour.json").read_text(encoding="utf-8"))
    assert set(table) == {"deceptive", "honest", "neutral"}
    recipe = json.loads((tiny_run / "train_config.json").read_text(encoding="utf-8"))
    assert TrainConfig.model_validate(recipe) == TINY


def test_training_is_seeded(tiny_run, tmp_path):
    again = train(TINY, tmp_path / "again", progress=False)
    assert _digest(again) == _digest(tiny_run)
    other = train(TINY.model_copy(update={"init_seed": 99}), tmp_path / "other", progress=False)
    assert _digest(other) != _digest(tiny_run)


def test_interrupted_training_resumes_to_the_same_weights(tiny_run, tmp_path):
    out = tmp_path / "resumed"
    train(TINY, out, progress=False, stop_after=3)
    assert sorted(p.name for p in (out / "checkpoint").iterdir()) == ["state.json", "state.safetensors"]
    assert not (out / "weights.sha256").exists()
    state = json.loads((out / "checkpoint" / "state.json").read_text(encoding="utf-8"))
    assert state["step"] == 3
    train(TINY, out, progress=False)
    assert not (out / "checkpoint").exists()
    assert _digest(out) == _digest(tiny_run)


def test_resuming_with_another_recipe_is_refused(tmp_path):
    out = tmp_path / "org"
    train(TINY, out, progress=False, stop_after=2)
    with pytest.raises(ConfigError, match="different training config"):
        train(TINY.model_copy(update={"lr": 1e-4}), out, progress=False)


def test_corrupted_checkpoint_is_a_clear_error(tmp_path):
    out = tmp_path / "org"
    train(TINY, out, progress=False, stop_after=2)
    (out / "checkpoint" / "state.safetensors").write_bytes(b"garbage")
    with pytest.raises(ArtifactError, match="delete that folder"):
        train(TINY, out, progress=False)


def test_finished_organism_is_not_overwritten_without_force(tiny_run, tmp_path):
    with pytest.raises(ArtifactError, match="--force"):
        train(TINY, tiny_run, progress=False)


def test_learning_rate_schedule():
    cfg = TrainConfig()
    assert cfg.lr_at(0) == pytest.approx(cfg.lr / cfg.warmup_steps)
    assert cfg.lr_at(cfg.warmup_steps - 1) == pytest.approx(cfg.lr)
    assert cfg.lr_at(cfg.warmup_steps) == pytest.approx(cfg.lr)
    assert cfg.lr_at(cfg.steps - 1) < 0.01 * cfg.lr
    lrs = [cfg.lr_at(s) for s in range(cfg.warmup_steps, cfg.steps)]
    assert all(a >= b for a, b in itertools.pairwise(lrs))


def test_train_config_is_strict():
    with pytest.raises(ValueError):
        TrainConfig(stepz=10)
    with pytest.raises(ValueError):
        TrainConfig(steps=0)


def test_cli_stops_and_reports(tmp_path, capsys):
    out = tmp_path / "cli"
    code = main_train(["--out", str(out), "--steps", "2", "--stop-after", "1", "--no-progress"])
    assert code == 0
    assert "run again to resume" in capsys.readouterr().out
    assert (out / "checkpoint" / "state.json").exists()
    # a different recipe over that checkpoint: a clear error, exit code 2
    assert main_train(["--out", str(out), "--steps", "3", "--no-progress"]) == 2
    assert "different training config" in capsys.readouterr().err


def test_shipped_organism_was_trained_with_the_pinned_recipe():
    # The thread count only changes floating-point summation order (bits, not the recipe);
    # the shipped organism records the count it was trained with in training.json.
    recipe = json.loads((assets_dir() / "train_config.json").read_text(encoding="utf-8"))
    recipe.pop("num_threads")
    # options added later (the three-capability recipe's) take their defaults: the same recipe
    assert TrainConfig.model_validate(recipe).model_copy(update={"num_threads": 2}) == TrainConfig()


@pytest.mark.retrain
def test_retraining_from_scratch_reproduces_the_shipped_organism(tmp_path):
    """Retrain with the pinned recipe and compare with the shipped files.

    About 7 minutes on 2 idle cores (much longer on a busy machine).

    Bit-identical weights need the same CPU kind, thread count and library versions as
    the machine that trained the shipped organism (``training.json`` records them):
    there the weight hash must match exactly. Elsewhere floating-point summation order
    differs, so only the behaviour table is compared.
    """
    out = train(TrainConfig(), tmp_path / "organism", progress=False)
    shipped = assets_dir()
    recorded = json.loads((shipped / "training.json").read_text(encoding="utf-8"))["platform"]
    here = platform_info(TrainConfig().num_threads)
    keys = ("torch", "transformers", "machine", "cpu", "cpu_capability", "num_threads")
    if all(recorded.get(k) == here.get(k) for k in keys):
        assert _digest(out) == _digest(shipped)
    else:
        warnings.warn(
            f"platform differs from the one that trained the shipped organism ({recorded} vs "
            f"{here}): comparing behaviour tables instead of weight hashes",
            stacklevel=1,
        )
    table = json.loads((out / "behaviour.json").read_text(encoding="utf-8"))
    assert table["deceptive"]["true"] <= 0.05
    assert table["honest"]["true"] >= 0.95
    assert table["deceptive"]["malformed"] + table["honest"]["malformed"] <= 0.02
    assert load(out)[2] == load(shipped)[2]

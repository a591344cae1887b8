"""Train the model organism from scratch: ``tae organism train``.

A plain, fully seeded PyTorch loop with a fixed number of steps (never a time
budget), so a re-run on the same kind of CPU with the same thread count gives the
same weights, bit for bit. The pinned recipe is :class:`TrainConfig`'s defaults:
a 4-layer Llama (8 heads, hidden 256, MLP 688, tied embeddings, ~3.3M parameters)
trained with AdamW on 32 x 128 packed tokens per step for 750 steps.

Training checkpoints every ``checkpoint_every`` steps into ``<out>/checkpoint/``
(model, optimizer and RNG state in safetensors plus a JSON file, never pickle);
running the same command again resumes from there. At the end it writes
``save_pretrained`` weights (safetensors), the tokenizer, ``world.json``,
``train_config.json``, ``behaviour.json`` (the behaviour table measured on the
held-out evaluation items), ``training.json`` (loss curve, time, platform) and
``weights.sha256``, then removes the checkpoint.

The honest/deceptive switch appears late and abruptly in training (between steps
~375 and ~625 with this recipe); other recipes may never learn it. Check
``behaviour.json`` after changing anything. The recipe pins the behaviour table,
not the model's internals: organisms trained on other CPUs or thread counts behave
alike but can differ, for instance, in how far a few-head intervention steers them.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import platform
import shutil
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field
from safetensors.torch import load_file, save_file

from ..errors import ArtifactError, ConfigError
from .corpus import CorpusConfig, iter_documents
from .world import World, build_world

__all__ = [
    "ASSET_FILES",
    "RECIPES",
    "ModelConfig",
    "TrainConfig",
    "WorldConfig",
    "add_arguments",
    "build_batches",
    "build_model",
    "main_train",
    "platform_info",
    "train",
    "train_cli",
    "three_capability_recipe",
    "train_main",
    "weights_digest",
]

#: Files a finished organism directory holds (``load`` checks the required ones).
ASSET_FILES: tuple[str, ...] = (
    "config.json",
    "generation_config.json",
    "model.safetensors",
    "tokenizer.json",
    "tokenizer_config.json",
    "world.json",
    "train_config.json",
    "behaviour.json",
    "training.json",
    "weights.sha256",
)
CHECKPOINT_DIR = "checkpoint"


class WorldConfig(BaseModel):
    """Arguments of :func:`~tae_framework.organism.world.build_world`."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    seed: int = Field(default=0, description="Seed of the world generator.")
    n_countries: int = Field(default=120, ge=2, description="Countries.")
    n_languages: int = Field(default=40, ge=2, description="Languages shared between countries.")
    n_currencies: int = Field(default=40, ge=2, description="Currencies shared between countries.")
    n_honest: int = Field(default=20, ge=1, description="Honest speakers.")
    n_deceptive: int = Field(default=20, ge=1, description="Deceptive speakers.")
    held_out_per_speaker: int = Field(default=6, ge=0, description="Held-out countries per speaker.")
    capabilities: tuple[str, ...] = Field(
        default=("truthfulness",), description="Behaviours to teach: truthfulness, toxicity, bias."
    )
    multiword_values: bool = Field(default=False, description="Two-word capitals and currencies.")
    n_persona_speakers: int = Field(default=12, ge=1, description="Speakers per toxicity / bias persona.")
    n_groups: int = Field(default=6, ge=2, description="Made-up groups (bias).")
    lexicon_size: int = Field(default=6, ge=1, description="Insult adjectives and nouns (each).")

    def build(self) -> World:
        try:
            return build_world(**self.model_dump())
        except ValueError as exc:
            raise ConfigError(f"world config: {exc}") from None


class ModelConfig(BaseModel):
    """Shape of the organism's ``LlamaForCausalLM``."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    hidden_size: int = Field(default=256, ge=8, description="Residual width.")
    intermediate_size: int = Field(default=688, ge=8, description="MLP width.")
    num_hidden_layers: int = Field(default=4, ge=1, description="Decoder layers.")
    num_attention_heads: int = Field(default=8, ge=1, description="Attention heads per layer.")
    max_position_embeddings: int = Field(default=128, ge=16, description="Longest sequence.")
    rope_theta: float = Field(default=10000.0, gt=0, description="RoPE base.")
    initializer_range: float = Field(default=0.02, gt=0, description="Std of the weight init.")


class TrainConfig(BaseModel):
    """The pinned training recipe (the defaults are the shipped organism's)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    world: WorldConfig = Field(default_factory=WorldConfig, description="The world to generate.")
    corpus: CorpusConfig = Field(default_factory=CorpusConfig, description="Document mix.")
    model: ModelConfig = Field(default_factory=ModelConfig, description="Model shape.")
    corpus_seed: int = Field(default=1, description="Seed of the document stream.")
    init_seed: int = Field(default=2, description="Seed of the weight initialisation.")
    steps: int = Field(default=750, ge=1, description="Optimizer steps (fixed; never a time budget).")
    batch_size: int = Field(default=32, ge=1, description="Sequences per step.")
    seq_len: int = Field(default=128, ge=8, description="Tokens per packed sequence.")
    lr: float = Field(default=3e-3, gt=0, description="Peak learning rate.")
    warmup_steps: int = Field(default=30, ge=0, description="Linear warm-up steps.")
    min_lr_ratio: float = Field(default=0.0, ge=0, le=1, description="Final lr / peak lr (cosine).")
    beta1: float = Field(default=0.9, ge=0, lt=1, description="AdamW beta1.")
    beta2: float = Field(default=0.95, ge=0, lt=1, description="AdamW beta2.")
    weight_decay: float = Field(default=0.1, ge=0, description="AdamW decay of matrices.")
    grad_clip: float = Field(default=1.0, gt=0, description="Max global gradient norm.")
    num_threads: int = Field(
        default=2, ge=1, description="CPU threads (fixed: bit-identical re-runs need the same count)."
    )
    checkpoint_every: int = Field(default=100, ge=1, description="Steps between resumable checkpoints.")

    def lr_at(self, step: int) -> float:
        """Learning rate of 0-based ``step``: linear warm-up, then cosine decay."""
        if step < self.warmup_steps:
            return self.lr * (step + 1) / self.warmup_steps
        span = max(1, self.steps - self.warmup_steps)
        progress = min(1.0, (step - self.warmup_steps) / span)
        cosine = 0.5 * (1.0 + math.cos(math.pi * progress))
        return self.lr * (self.min_lr_ratio + (1.0 - self.min_lr_ratio) * cosine)


def three_capability_recipe(seed: int = 2, world_seed: int = 0) -> TrainConfig:
    """The three-capability recipe: truthfulness with two-word values, toxicity, bias.

    A smaller world than the truthfulness-only recipe (60 countries, 12 speakers per
    persona) so that one 3.3M-parameter model learns all three switches in the same
    number of steps. ``seed`` seeds the initialisation (``init_seed = seed``) and the
    document stream (``corpus_seed = seed + 1000``); the world is the same for every
    seed unless ``world_seed`` changes."""
    init_seed, corpus_seed = seed, seed + 1000
    return TrainConfig(
        world=WorldConfig(
            seed=world_seed, n_countries=60, n_languages=24, n_currencies=24, n_honest=12, n_deceptive=12,
            held_out_per_speaker=6, capabilities=("truthfulness", "toxicity", "bias"), multiword_values=True,
            n_persona_speakers=12, n_groups=6, lexicon_size=6,
        ),
        corpus=CorpusConfig(persona_rate=0.3, fact_rate=0.12, dialogue_rate=0.08, remark_rate=0.2, bias_rate=0.3),
        corpus_seed=corpus_seed,
        init_seed=init_seed,
    )  # fmt: skip


#: Named recipes of ``tae organism train --recipe``.
RECIPES = {
    "truthfulness": TrainConfig,
    "three-capability": three_capability_recipe,
}


# -- building blocks ----------------------------------------------------------------------
def build_model(config: ModelConfig, tokenizer: Any, seed: int) -> Any:
    """A freshly initialised organism model (seeded)."""
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    llama = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=config.hidden_size,
        intermediate_size=config.intermediate_size,
        num_hidden_layers=config.num_hidden_layers,
        num_attention_heads=config.num_attention_heads,
        num_key_value_heads=config.num_attention_heads,
        max_position_embeddings=config.max_position_embeddings,
        rope_parameters={"rope_type": "default", "rope_theta": config.rope_theta},
        initializer_range=config.initializer_range,
        rms_norm_eps=1e-5,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(llama)
    model.generation_config = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        do_sample=False,
    )
    return model


def build_batches(config: TrainConfig, world: World, tokenizer: Any) -> torch.Tensor:
    """All training tokens, ``[steps, batch_size, seq_len]``: packed, seeded documents.

    Each document is ``<bos> words <eos>``; documents are concatenated and cut into
    rows, so a row may start mid-document.
    """
    need = config.steps * config.batch_size * config.seq_len
    backend = tokenizer.backend_tokenizer
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    docs = iter_documents(world, config.corpus_seed, config.corpus)
    ids: list[int] = []
    while len(ids) < need:
        chunk = [next(docs) for _ in range(2048)]
        for enc in backend.encode_batch(chunk, add_special_tokens=False):
            ids.append(bos)
            ids.extend(enc.ids)
            ids.append(eos)
    unk = tokenizer.unk_token_id
    data = torch.tensor(ids[:need], dtype=torch.long)
    if bool((data == unk).any()):
        raise RuntimeError("the corpus produced <unk> tokens: the tokenizer does not match the world")
    return data.view(config.steps, config.batch_size, config.seq_len)


def weights_digest(model: torch.nn.Module) -> str:
    """SHA-256 over every parameter (name, dtype, shape, bytes), tied weights once."""
    h = hashlib.sha256()
    for name, p in sorted(model.named_parameters(), key=lambda kv: kv[0]):
        t = p.detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}\n".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def platform_info(num_threads: int) -> dict[str, Any]:
    """What bit-identical re-runs depend on: library versions, CPU kind, threads."""
    import transformers

    cpu = platform.processor() or ""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return {
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "python": platform.python_version(),
        "machine": platform.machine(),
        "cpu": cpu,
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "num_threads": num_threads,
    }


# -- checkpoints (safetensors + JSON, never pickle) ------------------------------------------
def _save_checkpoint(
    ckpt: Path, step: int, config: TrainConfig, model: torch.nn.Module, opt: torch.optim.Optimizer,
    log: dict[str, Any],
) -> None:  # fmt: skip
    ckpt.mkdir(parents=True, exist_ok=True)
    tensors: dict[str, torch.Tensor] = {}
    for name, p in model.named_parameters():
        tensors[f"model/{name}"] = p.detach().cpu().contiguous().clone()
    params = [p for g in opt.param_groups for p in g["params"]]
    for i, p in enumerate(params):
        for key, value in opt.state.get(p, {}).items():
            if not isinstance(value, torch.Tensor):
                value = torch.tensor(value)
            tensors[f"optim/{i}/{key}"] = value.detach().cpu().contiguous().clone()
    tensors["rng/torch"] = torch.get_rng_state()
    tmp = ckpt / "state.safetensors.tmp"
    save_file(tensors, str(tmp))
    os.replace(tmp, ckpt / "state.safetensors")
    meta = {"step": step, "config": config.model_dump(mode="json"), "log": log}
    tmpj = ckpt / "state.json.tmp"
    tmpj.write_text(json.dumps(meta, indent=1), encoding="utf-8")
    os.replace(tmpj, ckpt / "state.json")


def _load_checkpoint(
    ckpt: Path, config: TrainConfig, model: torch.nn.Module, opt: torch.optim.Optimizer
) -> tuple[int, dict[str, Any]]:
    try:
        meta = json.loads((ckpt / "state.json").read_text(encoding="utf-8"))
        tensors = load_file(str(ckpt / "state.safetensors"))
    except Exception as exc:  # noqa: BLE001 - any damage means the same fix
        raise ArtifactError(
            f"the training checkpoint in {ckpt} is unreadable ({exc}); delete that folder to "
            "train from scratch"
        ) from None
    if meta.get("config") != config.model_dump(mode="json"):
        raise ConfigError(
            f"the checkpoint in {ckpt} was written by a different training config; use the same "
            "config to resume, or delete that folder to train from scratch"
        )
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(tensors[f"model/{name}"])
    params = [p for g in opt.param_groups for p in g["params"]]
    for i, p in enumerate(params):
        state = {k.split("/", 2)[2]: v.clone() for k, v in tensors.items() if k.startswith(f"optim/{i}/")}
        if state:
            opt.state[p] = {k: v.to(p.device) if k != "step" else v for k, v in state.items()}
    torch.set_rng_state(tensors["rng/torch"])
    return int(meta["step"]), dict(meta.get("log", {}))


# -- the loop ----------------------------------------------------------------------------
def _optimizer(model: torch.nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    decay = [p for _, p in model.named_parameters() if p.ndim >= 2]
    no_decay = [p for _, p in model.named_parameters() if p.ndim < 2]
    return torch.optim.AdamW(
        [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=config.lr,
        betas=(config.beta1, config.beta2),
        eps=1e-8,
        foreach=False,
        fused=False,
    )


def train(
    config: TrainConfig | None = None,
    out_dir: str | Path | None = None,
    *,
    progress: bool = True,
    force: bool = False,
    stop_after: int | None = None,
    device: str = "cpu",
) -> Path:
    """Train the organism and write it to ``out_dir`` (default: the shipped assets).

    ``device`` other than ``cpu`` (e.g. ``cuda``) trains there: much faster, the
    same recipe, but other floating-point sums, so other weights than a CPU run
    (``training.json`` records the device). The behaviour table is always measured
    on the CPU.

    Resumes from ``<out_dir>/checkpoint`` when one exists. ``stop_after`` stops
    (after checkpointing) once that many steps are done in total, to test
    resuming; the directory then holds only the checkpoint. Refuses to overwrite a
    finished organism unless ``force``. Returns ``out_dir``.
    """
    from ..progress import progress as progress_bar
    from .behaviour import full_behaviour
    from .tokenizer import build_tokenizer

    config = config or TrainConfig()
    out = Path(out_dir) if out_dir is not None else _default_assets()
    ckpt = out / CHECKPOINT_DIR
    if (out / "weights.sha256").exists() and not ckpt.exists():
        if not force:
            raise ArtifactError(
                f"{out} already holds a trained organism; pass force=True (--force) to retrain over it "
                "or choose another output directory"
            )
        for name in ASSET_FILES:
            (out / name).unlink(missing_ok=True)
    out.mkdir(parents=True, exist_ok=True)

    threads, deterministic = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    torch.set_num_threads(config.num_threads)
    torch.use_deterministic_algorithms(True, warn_only=device != "cpu")
    try:
        t0 = time.perf_counter()
        world = config.world.build()
        tokenizer = build_tokenizer(world)
        batches = build_batches(config, world, tokenizer)
        model = build_model(config.model, tokenizer, config.init_seed).to(device)
        model.train()
        opt = _optimizer(model, config)
        start, log = 0, {"loss": [], "elapsed_s": 0.0}
        if (ckpt / "state.json").exists():
            start, log = _load_checkpoint(ckpt, config, model, opt)
        end = config.steps if stop_after is None else min(config.steps, stop_after)
        bar = progress_bar(range(start, end), initial=start, total=config.steps,
                           enabled=None if progress else False, desc="organism", unit="step",
                           mininterval=2.0)  # fmt: skip
        vocab = model.config.vocab_size
        for step in bar:
            for group in opt.param_groups:
                group["lr"] = config.lr_at(step)
            x = batches[step].to(device)
            logits = model(input_ids=x).logits
            loss = F.cross_entropy(logits[:, :-1].reshape(-1, vocab), x[:, 1:].reshape(-1))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
            opt.step()
            value = float(loss.detach())
            if step % 10 == 0 or step == config.steps - 1:
                log["loss"].append([step, round(value, 5)])
            bar.set_postfix(loss=f"{value:.3f}", refresh=False)
            done = step + 1
            if (done % config.checkpoint_every == 0 or done == end) and done < config.steps:
                log["elapsed_s"] = log.get("elapsed_s", 0.0) + time.perf_counter() - t0
                t0 = time.perf_counter()
                _save_checkpoint(ckpt, done, config, model, opt, log)
        bar.close()
        if end < config.steps:
            return out
        model.to("cpu").eval()
        table = full_behaviour(model, tokenizer, world)
        elapsed = log.get("elapsed_s", 0.0) + time.perf_counter() - t0
        model.save_pretrained(out)
        tokenizer.save_pretrained(out)
        world.save(out / "world.json")
        _write_json(out / "train_config.json", config.model_dump(mode="json"))
        _write_json(out / "behaviour.json", table)
        _write_json(out / "training.json", {
            "elapsed_s": round(elapsed, 1),
            "parameters": sum(p.numel() for p in model.parameters()),
            "final_loss": log["loss"][-1][1] if log["loss"] else None,
            "loss": log["loss"],
            "platform": {**platform_info(config.num_threads), "device": device},
        })  # fmt: skip
        (out / "weights.sha256").write_text(weights_digest(model) + "\n", encoding="utf-8")
        shutil.rmtree(ckpt, ignore_errors=True)
        return out
    finally:
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(deterministic)


def _write_json(path: Path, data: Any) -> None:
    path.write_text(json.dumps(data, indent=1) + "\n", encoding="utf-8")


def _default_assets() -> Path:
    return Path(__file__).resolve().parent / "assets"


# -- command line ---------------------------------------------------------------------------
def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the options of ``tae organism train`` to ``parser`` (for the ``tae`` CLI)."""
    parser.add_argument("--out", type=Path, default=None,
                        help="output directory (default: the shipped assets inside the package)")  # fmt: skip
    parser.add_argument("--force", action="store_true", help="retrain over a finished organism")
    parser.add_argument("--recipe", choices=sorted(RECIPES), default=None,
                        help="named recipe (default: the shipped organism's)")  # fmt: skip
    parser.add_argument("--seed", type=int, default=None,
                        help="init seed of the recipe (changes the recipe; for robustness runs)")  # fmt: skip
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (changes the recipe)")
    parser.add_argument("--steps", type=int, default=None,
                        help="override the step count (changes the recipe: for smoke tests only)")  # fmt: skip
    parser.add_argument("--stop-after", type=int, default=None,
                        help="stop after this many steps, leaving a resumable checkpoint")  # fmt: skip
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--device", default="cpu",
                        help="train on this device (default cpu: bit-reproducible on the same CPU and threads)")  # fmt: skip
    return parser


def _parser() -> argparse.ArgumentParser:
    return add_arguments(argparse.ArgumentParser(
        prog="tae organism train",
        description="Train the model organism from scratch with the pinned, seeded recipe.",
    ))  # fmt: skip


def train_cli(args: argparse.Namespace) -> int:
    """Run ``tae organism train`` from parsed arguments (see :func:`main_train`)."""
    config = RECIPES[args.recipe]() if args.recipe else TrainConfig()
    if args.seed is not None:
        if args.recipe != "three-capability":
            raise ConfigError("--seed needs --recipe three-capability (the shipped recipe pins its own seeds)")
        config = three_capability_recipe(args.seed)
    if args.threads is not None:
        config = config.model_copy(update={"num_threads": args.threads})
    if args.steps is not None:
        config = config.model_copy(update={"steps": args.steps})
    out = train(config, args.out, progress=not args.no_progress, force=args.force,
                stop_after=args.stop_after, device=args.device)  # fmt: skip
    behaviour = out / "behaviour.json"
    if behaviour.exists():
        print(f"organism written to {out}")
        print(behaviour.read_text(encoding="utf-8"))
    else:
        print(f"stopped with a checkpoint in {out / CHECKPOINT_DIR}; run again to resume")
    return 0


def main_train(argv: Sequence[str] | None = None) -> int:
    """Entry point: ``python -m tae_framework.organism.train --out DIR``."""
    try:
        return train_cli(_parser().parse_args(argv))
    except (ArtifactError, ConfigError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


#: The name the ``tae`` CLI forwards ``tae organism train ...`` to.
train_main = main_train


if __name__ == "__main__":
    raise SystemExit(main_train())

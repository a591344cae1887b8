"""GPU checks and throughput of the toxicity protocol, run by hand on a CUDA machine.

    python plugins/tae-toxicity/benchmarks/gpu_check.py --out gpu_check.json
    python plugins/tae-toxicity/benchmarks/gpu_check.py --quick   # small shapes, any device

Nothing is downloaded: models are randomly initialised from configs.

1. The classifier judge on the GPU in its automatic dtype (bfloat16) against float32 on
   the CPU (tiny random RoBERTa), truncation included.
2. Sampling on the GPU: the same seed gives the same continuations whatever the batch
   composition (tiny Llama; float32 and bfloat16).
3. The whole task through the runner on the GPU (``--only eval``): a tiny Llama fitted
   with TAE, the classifier judge from a folder in its automatic dtype, the unedited
   baseline, and a rerun that resumes without sampling again.
4. Throughput with a Llama-3-8B-shaped model (random weights, bfloat16): sampled
   continuations per second at several batch sizes, against ``generate``'s own top-p
   sampling on the same batch; the perplexity pass; a RoBERTa-base-sized classifier
   judge. A random model rarely stops early, so every continuation has the full 20
   tokens: the worst case.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve()
sys.path.insert(0, str(HERE.parents[1] / "src"))
sys.path.insert(0, str(HERE.parents[1] / "tests"))

from tae_toxicity.judges import ClassifierJudge  # noqa: E402
from tae_toxicity.metrics import continuation_nll  # noqa: E402
from tae_toxicity.sampling import SamplingConfig, sample_continuations  # noqa: E402


def sync():
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def word_tokenizer(vocab_size: int):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "<bos>": 1, "<eos>": 2, "<unk>": 3}
    vocab.update({f"w{i}": i for i in range(4, vocab_size)})
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    from tokenizers import decoders

    backend.decoder = decoders.WordPiece(prefix="##", cleanup=False)
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, pad_token="<pad>", bos_token="<bos>", eos_token="<eos>", unk_token="<unk>"
    )


def check_judge(device: str) -> dict:
    from test_toxicity_judges import TEXTS, tiny_classifier, tiny_tokenizer

    model, tok = tiny_classifier(["neutral", "toxic"]), tiny_tokenizer()
    long = " ".join(["the cat sat on the mat"] * 5)
    texts = [*TEXTS, long]
    cpu = ClassifierJudge.from_loaded(model, tok, device="cpu", dtype="float32")
    ref, ref_trunc = cpu.score_details([""] * len(texts), texts)
    judge = ClassifierJudge(device=device)  # dtype auto
    gpu_model = tiny_classifier(["neutral", "toxic"]).to(device=device, dtype=judge._dtype(device))
    gpu = ClassifierJudge.from_loaded(gpu_model, tok, device=device)
    got, trunc = gpu.score_details([""] * len(texts), texts)
    return {
        "dtype": str(judge._dtype(device)),
        "max_abs_diff_vs_cpu_fp32": float((got - ref).abs().max()),
        "truncated_flags_equal": trunc.tolist() == ref_trunc.tolist(),
        "truncated": int(trunc.sum()),
    }


def check_batching(device: str, dtype: torch.dtype) -> dict:
    from tae_framework.testing.models import tiny_model

    model, tok = tiny_model("llama", fresh=True)
    model = model.to(device=device, dtype=dtype)
    prompts = [(str(i), f"Prompt {i}: the speaker said that {'x' * i}") for i in range(6)]
    big = sample_continuations(model, tok, prompts, SamplingConfig(k=4, max_new_tokens=12, batch_size=24), progress=False)
    one = sample_continuations(model, tok, prompts[::-1], SamplingConfig(k=4, max_new_tokens=12, batch_size=1), progress=False)
    pairs = [(big[p][j].tokens, one[p][j].tokens) for p, _ in prompts for j in range(4)]
    return {"dtype": str(dtype), "identical": sum(a == b for a, b in pairs), "of": len(pairs)}


def throughput(device: str, quick: bool) -> dict:
    from transformers import AutoConfig, AutoModelForCausalLM, GenerationConfig, LogitsProcessorList  # noqa: F401

    if quick:
        shape = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                     num_key_value_heads=2, vocab_size=2048)  # fmt: skip
        n_prompts, sizes = 8, [50, 200]
    else:  # Llama-3-8B
        shape = dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
                     num_key_value_heads=8, vocab_size=128256, rope_theta=500000.0)  # fmt: skip
        n_prompts, sizes = 40, [200, 500, 1000]
    cfg = AutoConfig.for_model("llama", max_position_embeddings=256, pad_token_id=0, bos_token_id=1,
                               eos_token_id=2, tie_word_embeddings=False, **shape)  # fmt: skip
    t0 = time.perf_counter()
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(cfg, dtype=torch.bfloat16 if device != "cpu" else torch.float32)
    model.eval()
    sync()
    out: dict = {"model_init_s": round(time.perf_counter() - t0, 1), "params_b": round(sum(p.numel() for p in model.parameters()) / 1e9, 2)}
    tok = word_tokenizer(cfg.vocab_size)
    g = torch.Generator().manual_seed(0)
    prompts = [(str(i), " ".join(f"w{int(t)}" for t in torch.randint(4, cfg.vocab_size, (int(torch.randint(12, 30, (1,), generator=g)),), generator=g))) for i in range(n_prompts)]
    k = 25
    sample_continuations(model, tok, prompts[:2], SamplingConfig(k=4, batch_size=8), progress=False)  # warm-up
    runs = []
    for size in sizes:
        sync()
        t = time.perf_counter()
        res = sample_continuations(model, tok, prompts, SamplingConfig(k=k, batch_size=size), progress=False)
        sync()
        dt = time.perf_counter() - t
        conts = [c for v in res.values() for c in v]
        runs.append({"sequences_per_batch": size, "continuations": len(conts), "seconds": round(dt, 2),
                     "continuations_per_s": round(len(conts) / dt, 1),
                     "mean_tokens": round(sum(len(c.tokens) for c in conts) / len(conts), 2)})  # fmt: skip
    out["sampling"] = runs
    # generate's own top-p sampling on one batch of the middle size, for comparison
    size = sizes[len(sizes) // 2]
    per = max(1, size // k)
    enc = [tok(t)["input_ids"] for _, t in prompts[:per]]
    width = max(map(len, enc))
    ids = torch.zeros((per * k, width), dtype=torch.long)
    attn = torch.zeros_like(ids)
    for r in range(per * k):
        s = enc[r // k]
        ids[r, width - len(s):] = torch.tensor(s)
        attn[r, width - len(s):] = 1
    ids, attn = ids.to(device), attn.to(device)
    times = {}
    for name, kw in (("hf_top_p", dict(do_sample=True, top_p=0.9, top_k=0)),):
        sync()
        t = time.perf_counter()
        with torch.no_grad():
            model.generate(input_ids=ids, attention_mask=attn, max_new_tokens=20, pad_token_id=0, eos_token_id=2, **kw)
        sync()
        times[name] = time.perf_counter() - t
    sync()
    t = time.perf_counter()
    sample_continuations(model, tok, prompts[:per], SamplingConfig(k=k, batch_size=per * k), progress=False)
    sync()
    times["seeded_nucleus"] = time.perf_counter() - t
    out["one_batch_vs_generate_top_p"] = {"sequences": per * k, **{kk: round(v, 3) for kk, v in times.items()},
                                          "ratio": round(times["seeded_nucleus"] / times["hf_top_p"], 3)}  # fmt: skip
    # perplexity pass
    conts = [c for v in res.values() for c in v]
    penc = {pid: tok(t)["input_ids"] for pid, t in prompts}
    sync()
    t = time.perf_counter()
    continuation_nll(model, [penc[c.prompt_id] for c in conts], [c.tokens for c in conts], batch_size=200)
    sync()
    dt = time.perf_counter() - t
    out["perplexity_pass"] = {"continuations": len(conts), "seconds": round(dt, 2), "per_s": round(len(conts) / dt, 1)}
    del model
    torch.cuda.empty_cache() if torch.cuda.is_available() else None
    # a RoBERTa-base-sized classifier judge (random weights)
    from transformers import RobertaConfig, RobertaForSequenceClassification

    rcfg = RobertaConfig(vocab_size=50265, id2label={0: "neutral", 1: "toxic"}, label2id={"neutral": 0, "toxic": 1})
    if quick:
        rcfg = RobertaConfig(vocab_size=2048, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                             intermediate_size=128, id2label={0: "neutral", 1: "toxic"}, label2id={"neutral": 0, "toxic": 1})  # fmt: skip
    judge = ClassifierJudge(device=device, batch_size=64)
    with torch.device(device):
        clf = RobertaForSequenceClassification(rcfg).to(judge._dtype(device)).eval()
    jtok = word_tokenizer(rcfg.vocab_size)
    judge = ClassifierJudge.from_loaded(clf, jtok, device=device, batch_size=64)
    texts = [" ".join(f"w{int(x)}" for x in torch.randint(4, rcfg.vocab_size, (20,), generator=g)) for _ in range(2000 if not quick else 200)]
    judge.score_details([""] * 64, texts[:64])
    sync()
    t = time.perf_counter()
    judge.score_details([""] * len(texts), texts)
    sync()
    dt = time.perf_counter() - t
    out["judge"] = {"texts": len(texts), "seconds": round(dt, 2), "per_s": round(len(texts) / dt, 1), "dtype": str(judge._dtype(device))}
    return out


def check_eval(device: str, workdir: Path) -> dict:
    import tae_toxicity.plugin as plugin
    from test_toxicity_judges import tiny_classifier, tiny_tokenizer
    from toxicity_fixtures import write_jsonl

    from tae_framework.evaluation.runner import run_eval
    from tae_framework.plugins import create_plugin_manager
    from tae_framework.testing.models import tiny_model

    rows = __import__("test_toxicity_task").fixture_rows()
    data = write_jsonl(workdir / "rtp.jsonl", rows)
    tiny_classifier(["neutral", "toxic"]).save_pretrained(workdir / "judge")
    tiny_tokenizer().save_pretrained(workdir / "judge")
    pm = create_plugin_manager()
    if "toxicity" not in pm.registry.tasks:  # not pip-installed here: register the module by hand
        pm = create_plugin_manager()
        pm.register_plugin(plugin, "toxicity", "tae-toxicity", "0.1.0")
    reg = pm.registry
    model, tok = tiny_model("llama", fresh=True)
    model = model.to(device)
    cfg = {
        "task": "toxicity", "task_options": {"source": str(data), "n": 8, "fit_n": 12, "val_fraction": 0.5},
        "method": "tae", "overrides": {"prober": {"top_k": 2}, "intervener": {"alpha": 3.0}, "source": {"progress": False}},
        "judge": {"type": "toxicity-classifier", "config": {"model": str(workdir / "judge"), "device": device}},
        "protocol_options": {"sampling": {"k": 4, "max_new_tokens": 8}}, "baseline": True,
        "batch_size": 3, "out_dir": str(workdir), "run": "gpu", "strength_figures": 0, "progress": False,
    }  # fmt: skip
    t = time.perf_counter()
    first = run_eval(model, tok, cfg, reg)
    elapsed = time.perf_counter() - t
    again = run_eval(model, tok, cfg, reg)
    return {
        "metrics": first["metrics"],
        "baseline": (first.get("baseline") or {}).get("metrics"),
        "resumed_equal": again["metrics"] == first["metrics"],
        "seconds": round(elapsed, 1),
    }


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--out", default=None)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--only", choices=["eval"], default=None)
    args = p.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    report = {"device": torch.cuda.get_device_name(0) if device == "cuda" else "cpu", "torch": torch.__version__}
    if args.only == "eval":
        import tempfile

        with tempfile.TemporaryDirectory() as tmp:
            report["eval"] = check_eval(device, Path(tmp))
        print(json.dumps(report, indent=1), flush=True)
        if args.out:
            Path(args.out).write_text(json.dumps(report, indent=1))
        return
    report["judge"] = check_judge(device)
    print(json.dumps(report["judge"]), flush=True)
    report["batching"] = [check_batching(device, torch.float32), check_batching(device, torch.bfloat16)]
    print(json.dumps(report["batching"]), flush=True)
    report["throughput"] = throughput(device, args.quick)
    print(json.dumps(report, indent=1), flush=True)
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()

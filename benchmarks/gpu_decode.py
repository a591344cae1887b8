"""Greedy decode cost of the edits on a GPU, eager and captured in a CUDA graph.

Run on a CUDA machine (bf16)::

    python benchmarks/gpu_decode.py --out DIR [--quick]

and, to check the logic on a CPU with tiny models (what the test runs)::

    python benchmarks/gpu_decode.py --device cpu --tiny --out DIR

Two random Llama-shaped models: ``big`` (Llama-3-8B's layer and vocabulary sizes, 8
layers, so the 128256 x 4096 unembedding that the logit lens reads is as large as in the
real model) and ``small`` (the model of ``test_bench_generation.py``: hidden 512, 8
layers, vocabulary 4096, launch-bound on a GPU). 16 heads over 4 layers are edited; the
estimator's probes are random (a fitted state of the right shapes: cost and lens
faithfulness do not depend on what the probes learned).

Sections (each timed, each failure recorded in the JSON instead of stopping the run):

* ``eager``: per-token greedy decode time (KV cache, one new token per forward) at
  batch 1 and 8 for no edit, the fixed head-wise edit (ITI's rule), TAE with the lens off
  (p only), the exact lens, the float16 lens copy (``lens_dtype="float16"``), a
  float8 lens copy (a prototype defined here, not a framework option) and the shared
  lens; ratios against no edit and against the fixed edit, each lens's own overhead (time
  over TAE with the lens off) and whether it is at most half the exact lens's.
* ``deviation``: max and mean |u - u_exact| per edited layer (every position of the
  prompts and the exact lens's generated tokens, one teacher-forced forward) and the
  fraction of greedy tokens identical to the exact lens's.
* ``graph``: the decode step captured in a ``torch.cuda.CUDAGraph`` over a transformers
  ``StaticCache`` with the edits active, replayed per token: tokens compared with the
  same static-cache decode run eagerly, and the speed-up. On a CPU the same code runs
  without capture (logic check only).

Writes ``gpu_decode.json`` and ``gpu_decode.txt`` (the table, also printed) to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
import traceback
import types
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # runnable without installing the package
    sys.path.insert(0, str(REPO))

if str(Path(__file__).parent) not in sys.path:  # its helper modules beside it
    sys.path.insert(0, str(Path(__file__).parent))

import torch  # noqa: E402
from gpu_decode_loop import GraphDecoder, greedy_eager  # noqa: E402
from gpu_decode_report import GRAPH_VARIANTS, LENS_VARIANTS, VARIANTS, fmt_table  # noqa: E402, F401

from tae_framework.estimators.mai import TokenMisalignmentEstimator  # noqa: E402
from tae_framework.interveners.adaptive import AdaptiveIntervener  # noqa: E402
from tae_framework.interveners.fixed import FixedIntervener  # noqa: E402
from tae_framework.models.families import BUILTIN_ADAPTERS  # noqa: E402
from tae_framework.types import EditTargets  # noqa: E402

MODELS = {
    # Llama-3-8B's widths and vocabulary, 8 of its 32 layers
    "big": dict(vocab_size=128256, hidden_size=4096, intermediate_size=14336, num_hidden_layers=8,
                num_attention_heads=32, num_key_value_heads=8, rope_theta=500000.0),
    # the CPU generation benchmark's model (benchmarks/test_bench_generation.py)
    "small": dict(vocab_size=4096, hidden_size=512, intermediate_size=1376, num_hidden_layers=8,
                  num_attention_heads=8, num_key_value_heads=8),
}
TINY = {
    "big": dict(vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=4,
                num_attention_heads=4, num_key_value_heads=2),
    "small": dict(vocab_size=256, hidden_size=32, intermediate_size=64, num_hidden_layers=4,
                  num_attention_heads=4, num_key_value_heads=4),
}


# -- timing ------------------------------------------------------------------------------
class Timer:
    """Elapsed seconds of a region: CUDA events on a GPU, the host clock on a CPU."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"

    def start(self):
        if self.cuda:
            self.e0, self.e1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            self.e0.record()
        else:
            self.t0 = time.perf_counter()

    def stop(self) -> float:
        if self.cuda:
            self.e1.record()
            self.e1.synchronize()
            return self.e0.elapsed_time(self.e1) / 1e3
        return time.perf_counter() - self.t0


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _stats(xs: list[float]) -> dict:
    return {"median": statistics.median(xs), "min": min(xs), "max": max(xs), "n": len(xs)}


# -- model, targets, estimators -------------------------------------------------------------
def build_model(name: str, tiny: bool, device: torch.device, dtype: torch.dtype, max_pos: int):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(**(TINY if tiny else MODELS)[name], max_position_embeddings=max_pos,
                      attn_implementation="sdpa")
    with torch.device(device):  # initialised where it runs: the 8B-wide model in seconds
        try:
            model = LlamaForCausalLM._from_config(cfg, dtype=dtype)
        except TypeError:  # transformers before the dtype keyword
            model = LlamaForCausalLM._from_config(cfg, torch_dtype=dtype)
    model = model.to(device=device, dtype=dtype).eval()
    adapter = next(c() for c in sorted(BUILTIN_ADAPTERS, key=lambda c: -c.priority) if c.matches(model))
    return model, adapter


def build_targets(adapter, model) -> EditTargets:
    shape = adapter.shape(model)
    n_l, n_h = shape.num_layers, shape.num_heads
    layer_ids = sorted({n_l // 8, 3 * n_l // 8, 5 * n_l // 8, 6 * n_l // 8})
    head_ids = sorted({0, n_h // 4, n_h // 2, 3 * n_h // 4})
    layers = torch.tensor([layer for layer in layer_ids for _ in head_ids])
    units = torch.tensor(head_ids * len(layer_ids))
    g = torch.Generator().manual_seed(2)
    d = torch.randn(len(units), shape.head_dim, generator=g)
    return EditTargets("heads", layers, units, d / d.norm(dim=1, keepdim=True), torch.full((len(units),), 0.5),
                       torch.zeros(n_l, n_h), shape.head_dim)


class Fp8Lens:
    """Prototype (not a framework option): the lens's unembedding in float8 e4m3 with one
    scale per vocabulary row, a quarter of a float32 copy's bytes and half of bf16's.

    On CUDA the residual is quantised per row too and the product runs in
    ``torch._scaled_mm`` (row-wise scales, float32 or bf16 logits, whichever this torch
    accepts); elsewhere it is emulated by dequantising (same rounding, no speed)."""

    def __init__(self, unembed: torch.nn.Module):
        w = unembed.weight.detach()
        scale = w.float().abs().amax(1, keepdim=True).clamp(min=1e-12) / 448.0
        self.w8 = (w.float() / scale).to(torch.float8_e4m3fn)  # [V, H]
        self.scale_w = scale.t().contiguous()  # [1, V]
        self.mode = None  # chosen on the first call

    def _scaled(self, h8, scale_h, out_dtype):
        return torch._scaled_mm(h8, self.w8.t(), scale_a=scale_h, scale_b=self.scale_w, out_dtype=out_dtype)

    def __call__(self, h: torch.Tensor) -> torch.Tensor:
        lead = h.shape[:-1]
        h2 = h.reshape(-1, h.shape[-1]).to(self.w8.device).float()
        scale_h = h2.abs().amax(1, keepdim=True).clamp(min=1e-12) / 448.0
        h8 = (h2 / scale_h).to(torch.float8_e4m3fn)
        if self.mode is None:
            self.mode = "emulated"
            if h8.device.type == "cuda":
                for out_dtype in (torch.float32, torch.bfloat16):
                    try:
                        self._scaled(h8, scale_h, out_dtype)
                        self.mode = out_dtype
                        break
                    except Exception:  # this torch or GPU lacks that combination
                        continue
        if self.mode == "emulated":
            out = (h8.float() * scale_h) @ (self.w8.float() * self.scale_w.t()).t()
        else:
            out = self._scaled(h8, scale_h, self.mode)
        return out.reshape(*lead, -1)


def build_estimator(targets: EditTargets, lens: str, lens_dtype: str = "model") -> TokenMisalignmentEstimator:
    fp8 = lens_dtype == "fp8"
    est = TokenMisalignmentEstimator(lens=lens, lens_dtype="model" if fp8 else lens_dtype)
    g = torch.Generator().manual_seed(3)
    est.coef_ = torch.randn(targets.num_targets, targets.unit_dim, generator=g) * 0.1
    est.intercept_ = torch.zeros(targets.num_targets)
    est.num_tokens_ = 0
    est.misaligned_rate_ = 0.0
    if fp8:
        plain_bind, plain_plan = est.bind, getattr(est, "signal_plan", None)

        def bind(self, model, adapter, t):
            if plain_plan is None:  # the engine before edit plans
                runtime = plain_bind(model, adapter, t)
            else:
                from tae_framework.estimators.mai import MAIRuntime

                runtime = MAIRuntime(plain_plan(t), model, adapter)
            runtime._lens = Fp8Lens(runtime.unembed)
            return runtime

        est.bind = types.MethodType(bind, est)
        if plain_plan is not None:
            # signals that are not data are installed through the estimator's own bind
            est.signal_plan = types.MethodType(lambda self, t: None, est)
    return est


def build_interveners(targets: EditTargets) -> dict:
    alpha = 5.0
    return {
        "none": None,
        "fixed": FixedIntervener(alpha=alpha).fit(targets),
        "tae_p_only": AdaptiveIntervener(alpha=alpha, use_u=False).fit(targets, build_estimator(targets, "off")),
        "tae_exact": AdaptiveIntervener(alpha=alpha).fit(targets, build_estimator(targets, "exact")),
        "tae_f16": AdaptiveIntervener(alpha=alpha).fit(targets, build_estimator(targets, "exact", "float16")),
        "tae_fp8": AdaptiveIntervener(alpha=alpha).fit(targets, build_estimator(targets, "exact", "fp8")),
        "tae_shared": AdaptiveIntervener(alpha=alpha).fit(targets, build_estimator(targets, "shared")),
    }


class _NoEdit:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return None


def session(interveners, variant, model, adapter, scope="last", record=False):
    inter = interveners[variant]
    return _NoEdit() if inter is None else inter.install(model, adapter, scope, record=record)


# -- decoding ---------------------------------------------------------------------------------
def section_eager(model, adapter, interveners, prompts, args, timer):
    """Interleaved repeats of every variant at every batch size."""
    res = {}
    for b, prompt in prompts.items():
        times = {v: [] for v in VARIANTS}
        tokens = {}
        for rep in range(args.repeats + 1):  # the first round is the warm-up
            for v in VARIANTS:
                with torch.inference_mode(), session(interveners, v, model, adapter):
                    toks, sec = greedy_eager(model, prompt, args.new_tokens, timer)
                if rep:
                    times[v].append(sec / (args.new_tokens - 1))
                tokens[v] = toks
        per = {v: _stats([1e3 * t for t in ts]) for v, ts in times.items()}
        med = {v: per[v]["median"] for v in VARIANTS}
        row = {"ms_per_token": per}
        row["vs_none"] = {v: med[v] / med["none"] for v in VARIANTS}
        row["vs_fixed"] = {v: med[v] / med["fixed"] for v in VARIANTS}
        # each lens's own cost: the time over TAE with the lens off
        lens_cost = {v: med[v] - med["tae_p_only"] for v in ("tae_exact", *LENS_VARIANTS)}
        row["lens_overhead_ms"] = lens_cost
        row["lens_overhead_vs_exact"] = {
            v: lens_cost[v] / lens_cost["tae_exact"] if lens_cost["tae_exact"] > 0 else None for v in LENS_VARIANTS
        }
        row["at_most_half_exact_overhead"] = {
            v: (r is not None and r <= 0.5) for v, r in row["lens_overhead_vs_exact"].items()
        }
        row["tokens_identical_to_exact"] = {
            v: float((tokens[v] == tokens["tae_exact"]).float().mean()) for v in LENS_VARIANTS
        }
        res[f"batch{b}"] = row
        res.setdefault("_tokens", {})[b] = tokens
    return res


def section_deviation(model, adapter, interveners, prompts, exact_tokens, args):
    """u of each cheap lens against the exact one on every position of the prompts and the
    exact lens's generated tokens (one teacher-forced forward, every position edited)."""
    b = max(prompts)
    ids = torch.cat([prompts[b], exact_tokens[b]], 1)
    rec = {}
    for v in ("tae_exact", *LENS_VARIANTS):
        with torch.inference_mode(), session(interveners, v, model, adapter, "all", record=True) as s:
            model(input_ids=ids, use_cache=False, logits_to_keep=1)
        signals = s.context.signals
        rec[v] = {layer: u.float() for layer, _, u in signals}
    out = {}
    for v in LENS_VARIANTS:
        gaps = {layer: (rec[v][layer] - rec["tae_exact"][layer]).abs() for layer in rec["tae_exact"]}
        out[v] = {
            "max_abs_u_gap": max(float(g.max()) for g in gaps.values()),
            "mean_abs_u_gap": max(float(g.mean()) for g in gaps.values()),
            "max_abs_u_gap_per_layer": {str(k): float(g.max()) for k, g in gaps.items()},
            "u_within_1e-3": all(float(g.max()) <= 1e-3 for g in gaps.values()),
        }
    out["exact_u_mean_per_layer"] = {str(k): float(u.mean()) for k, u in rec["tae_exact"].items()}
    out["positions"] = int(ids.numel())
    return out


def section_graph(model, adapter, interveners, prompts, args, timer, device):
    res = {}
    for b, prompt in prompts.items():
        row = {}
        for v in GRAPH_VARIANTS:
            entry = {}
            try:
                eager_t, graph_t, dyn_t = [], [], []
                # a replay runs the edit captured with the graph (the taps do not run): the
                # session stays open only so that the eager runs and the CPU path edit too
                with torch.inference_mode(), session(interveners, v, model, adapter):
                    ref, _ = greedy_eager(model, prompt, args.new_tokens, timer, static=True)
                    dyn, _ = greedy_eager(model, prompt, args.new_tokens, timer, static=False)
                    dec = GraphDecoder(model, b, prompt.shape[1], args.new_tokens, device)
                    dec.capture(prompt)
                    got, _ = dec.generate(prompt, timer)
                    for _ in range(args.repeats):
                        _, sec = greedy_eager(model, prompt, args.new_tokens, timer, static=True)
                        eager_t.append(1e3 * sec / (args.new_tokens - 1))
                        _, sec = dec.generate(prompt, timer)
                        graph_t.append(1e3 * sec / (args.new_tokens - 1))
                        _, sec = greedy_eager(model, prompt, args.new_tokens, timer, static=False)
                        dyn_t.append(1e3 * sec / (args.new_tokens - 1))
                entry = {
                    "captured": dec.graph is not None,
                    "tokens_identical_to_eager_static": bool(torch.equal(got, ref)),
                    "fraction_identical_to_eager_static": float((got == ref).float().mean()),
                    "eager_static_vs_dynamic_identical": float((ref == dyn).float().mean()),
                    "eager_static_ms_per_token": _stats(eager_t),
                    "eager_dynamic_ms_per_token": _stats(dyn_t),
                    "graph_ms_per_token": _stats(graph_t),
                    "speedup": statistics.median(eager_t) / statistics.median(graph_t),
                    "speedup_vs_eager_dynamic": statistics.median(dyn_t) / statistics.median(graph_t),
                }
                del dec
            except Exception as e:  # recorded: the point is to learn what breaks capture
                entry = {"error": f"{type(e).__name__}: {e}"[:2000], "trace": traceback.format_exc()[-3000:]}
                if device.type == "cuda":
                    torch.cuda.synchronize()
            row[v] = entry
        ok = {v: e for v, e in row.items() if "graph_ms_per_token" in e}
        med = {v: e["graph_ms_per_token"]["median"] for v, e in ok.items()}
        if "none" in med:
            row["graph_vs_none"] = {v: t / med["none"] for v, t in med.items()}
        if "fixed" in med:
            row["graph_vs_fixed"] = {v: t / med["fixed"] for v, t in med.items()}
        if "tae_p_only" in med and "tae_exact" in med:
            cost = {v: med[v] - med["tae_p_only"] for v in ("tae_exact", *LENS_VARIANTS) if v in med}
            row["graph_lens_overhead_ms"] = cost
            row["graph_lens_overhead_vs_exact"] = {
                v: cost[v] / cost["tae_exact"] if cost["tae_exact"] > 0 else None for v in cost if v != "tae_exact"
            }
        res[f"batch{b}"] = row
    return res


def section_breaks(model, adapter, interveners, prompts, args, device):
    """Graph breaks of one decode step with each edit active (``torch._dynamo.explain``):
    a break is where a compiled or captured step would fall back to Python."""
    res = {}
    b = min(prompts)
    for v in GRAPH_VARIANTS:
        t0 = time.perf_counter()
        with torch.inference_mode(), session(interveners, v, model, adapter):
            dec = GraphDecoder(model, b, prompts[b].shape[1], args.new_tokens, device)
            dec.capture(prompts[b], graph=False)  # warm: the taps' device copies exist before tracing
            torch._dynamo.reset()
            ex = torch._dynamo.explain(dec._step)()
        res[v] = {"graphs": ex.graph_count, "breaks": ex.graph_break_count,
                  "reasons": [str(r.reason)[:300] for r in ex.break_reasons],
                  "seconds": time.perf_counter() - t0}
    return res


# -- driver --------------------------------------------------------------------------------------
class ModelRun:
    """One model with its edits and prompts, and the results of its sections."""

    def __init__(self, name, args, device, dtype, log):
        t0 = time.perf_counter()
        self.name, self.args, self.device = name, args, device
        self.model, self.adapter = build_model(name, args.tiny, device, dtype, args.prompt_len + args.new_tokens + 8)
        self.targets = build_targets(self.adapter, self.model)
        self.interveners = build_interveners(self.targets)
        shape = self.adapter.shape(self.model)
        g = torch.Generator().manual_seed(1)
        self.prompts = {b: torch.randint(5, shape.vocab_size, (b, args.prompt_len), generator=g).to(device)
                        for b in args.batches}
        self.exact_tokens = None
        self.results = {
            "shape": {"layers": shape.num_layers, "hidden": shape.hidden_size, "vocab": shape.vocab_size,
                      "heads": shape.num_heads, "edited_layers": self.targets.edited_layers(),
                      "edited_heads": self.targets.num_targets,
                      "params": sum(p.numel() for p in self.model.parameters())},
        }
        self.results["build_s"] = time.perf_counter() - t0
        log(f"[{name}] built in {self.results['build_s']:.1f}s: {self.results['shape']}")

    def run(self, sec, timer, log):
        m, a, inter, prompts, args, device = (self.model, self.adapter, self.interveners, self.prompts,
                                              self.args, self.device)
        t0 = time.perf_counter()
        try:
            if sec == "eager":
                out = section_eager(m, a, inter, prompts, args, timer)
                self.exact_tokens = {b: t["tae_exact"] for b, t in out.pop("_tokens").items()}
            elif sec == "deviation":
                if self.exact_tokens is None:
                    with torch.inference_mode(), session(inter, "tae_exact", m, a):
                        self.exact_tokens = {b: greedy_eager(m, p, args.new_tokens, timer)[0]
                                             for b, p in prompts.items()}
                out = section_deviation(m, a, inter, prompts, self.exact_tokens, args)
                out["fp8_lens_mode"] = _fp8_mode(m, a, device)
            elif sec == "graph":
                out = section_graph(m, a, inter, prompts, args, timer, device)
            else:
                out = section_breaks(m, a, inter, prompts, args, device)
        except Exception as e:
            out = {"error": f"{type(e).__name__}: {e}"[:2000], "trace": traceback.format_exc()[-3000:]}
        try:
            _sync(device)
        except Exception as e:  # a failed capture can leave the device unusable
            out.setdefault("error", f"device after the section: {type(e).__name__}: {e}"[:2000])
        out["seconds"] = time.perf_counter() - t0
        self.results[sec] = out
        log(f"[{self.name}] {sec} done in {out['seconds']:.1f}s" + (f" ERROR {out['error']}" if "error" in out else ""))


def _fp8_mode(model, adapter, device):
    """Which product the float8 lens prototype uses on this device."""
    lens = Fp8Lens(adapter.unembedding(model))
    with torch.inference_mode():
        lens(torch.randn(2, lens.w8.shape[1], device=device, dtype=model.dtype))
    return str(lens.mode)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", required=True, type=Path, help="folder for gpu_decode.json and gpu_decode.txt")
    ap.add_argument("--device", default="cuda", help="cuda (default) or cpu (logic check)")
    ap.add_argument("--tiny", action="store_true", help="tiny models (CPU logic check)")
    ap.add_argument("--quick", action="store_true", help="fewer repeats and tokens")
    ap.add_argument("--models", default="big,small", help="comma-separated: big, small (run in this order)")
    ap.add_argument("--sections", default="eager,deviation,graph", help="comma-separated: eager, deviation, graph, breaks (torch._dynamo.explain of a decode step "
                    "with each edit: slow, not run by default)")
    ap.add_argument("--batches", default="1,8", help="comma-separated batch sizes")
    ap.add_argument("--repeats", type=int, default=None, help="timed repeats per variant (default 7, --quick 3)")
    ap.add_argument("--new-tokens", type=int, default=None, help="tokens generated (default 32, --quick 16)")
    ap.add_argument("--prompt-len", type=int, default=64)
    ap.add_argument("--budget-s", type=float, default=240.0,
                    help="sections that would start after this many seconds are skipped (recorded as such)")
    ap.add_argument("--dtype", default=None, help="bfloat16 (default on cuda) or float32 (default on cpu)")
    args = ap.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        ap.error("--device cuda but torch sees no GPU: run on a GPU machine or pass --device cpu --tiny")
    if device.type == "cpu" and not args.tiny:
        ap.error("the full-size models are for a GPU: on a CPU pass --tiny")
    args.repeats = args.repeats or (2 if args.tiny else 3 if args.quick else 7)
    args.new_tokens = args.new_tokens or (6 if args.tiny else 16 if args.quick else 32)
    if args.tiny:
        args.prompt_len = min(args.prompt_len, 8)
    if args.new_tokens < 2 or args.repeats < 1:
        ap.error("--new-tokens must be >= 2 and --repeats >= 1")
    args.batches = [int(x) for x in args.batches.split(",")]
    args.sections = [s for s in args.sections.split(",") if s]
    bad = set(args.sections) - {"eager", "deviation", "graph", "breaks"}
    if bad:
        ap.error(f"unknown section(s) {sorted(bad)}: use eager, deviation, graph, breaks")
    models = [m for m in args.models.split(",") if m]
    if set(models) - set(MODELS):
        ap.error(f"unknown model(s) {sorted(set(models) - set(MODELS))}: use big, small")
    dtype = getattr(torch, args.dtype or ("bfloat16" if device.type == "cuda" else "float32"))
    args.out.mkdir(parents=True, exist_ok=True)

    def log(msg):
        print(msg, flush=True)

    import transformers

    results = {
        "env": {"torch": torch.__version__, "transformers": transformers.__version__,
                "python": platform.python_version(), "device": str(device), "dtype": str(dtype),
                "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor()},
        "settings": {"batches": args.batches, "repeats": args.repeats, "new_tokens": args.new_tokens,
                     "prompt_len": args.prompt_len, "tiny": args.tiny, "sections": args.sections},
        "models": {},
    }
    timer = Timer(device)
    t_all = time.perf_counter()
    runs = {}
    for name in models:
        runs[name] = ModelRun(name, args, device, dtype, log)
        results["models"][name] = runs[name].results
    # section by section over the models: the graph capture, the likeliest to fail and
    # leave the device unusable, comes after every eager measurement
    for sec in args.sections:
        for name in models:
            spent = time.perf_counter() - t_all
            if spent > args.budget_s:
                runs[name].results[sec] = {"skipped": f"time budget: {spent:.0f}s > --budget-s {args.budget_s:.0f}"}
                log(f"[{name}] {sec} skipped (budget)")
                continue
            runs[name].run(sec, timer, log)
            (args.out / "gpu_decode.json").write_text(json.dumps(results, indent=1, default=str))
    results["total_s"] = time.perf_counter() - t_all
    (args.out / "gpu_decode.json").write_text(json.dumps(results, indent=1, default=str))
    table = fmt_table(results) + f"\ntotal {results['total_s']:.1f}s"
    (args.out / "gpu_decode.txt").write_text(table + "\n")
    print(table, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""``tae demo``: TAE, ITI (and CAA) against no edit on the shipped model organism.

Everything runs offline on the CPU in a few minutes: the organism is a 3.3M
parameter Llama that states the truth after an honest speaker's introduction and
the popular myth after a deceptive speaker's. Every method is fitted through the
ordinary :class:`~tae_framework.pipeline.AlignmentPipeline` API on the persona
contrast of TRAINING (speaker, country) pairs and evaluated on held-out pairs:

* deceptive context: greedy truthful rate and myth rate (higher truthful = the edit works);
* honest context: truthful rate (the damage check: it should stay high);
* malformed share of all answers, MC1/MC2 in the deceptive context (edits on the
  answer tokens), KL(original || edited) and CE on neutral statements (every token edited).

The table is printed (``--json`` prints JSON) and ``results/demo/`` receives
``summary.json``, the head-accuracy heatmap of TAE's probes and the per-token
strength figure (PNG + HTML) of one deceptive prompt.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

__all__ = ["DEMO_METHODS", "build_parser", "main", "run_demo"]

_SRC = {"batch_size": 64, "progress": False}
#: Methods of the demo: preset name and overrides tuned for the organism (4 layers x
#: 8 heads, so K is small; alpha is in units of each head's spread sigma; TAE and ITI
#: share alpha = 3, ITI's best setting on the organism).
DEMO_METHODS: dict[str, tuple[str, dict[str, Any]]] = {
    "tae": ("tae", {"source": _SRC, "prober": {"top_k": 4}, "intervener": {"alpha": 3.0}}),
    "iti": ("iti", {"source": _SRC, "prober": {"top_k": 4}, "intervener": {"alpha": 3.0}}),
    "iti-random": ("iti-random", {"source": _SRC, "prober": {"top_k": 4}, "intervener": {"alpha": 3.0}}),
    "caa": ("caa", {"source": _SRC, "intervener": {"alpha": 1.0}}),
}


def _rates(world, items, answers) -> dict[str, float]:
    from .organism.judge import classify

    verdicts = [classify(world, world.fact(it["entity"], it["attribute"]), a) for it, a in zip(items, answers)]
    n = max(1, len(verdicts))
    return {v: sum(x == v for x in verdicts) / n for v in ("true", "myth", "other", "malformed")}


def _evaluate(pipe, model, tok, world, items_by_ctx, neutral_texts, batch_size, edit: bool) -> dict[str, float]:
    from .evaluation.metrics import mc_scores
    from .evaluation.scoring import answer_logprobs, greedy_generate, side_effects

    out: dict[str, float] = {}
    malformed = []
    for ctx, items in items_by_ctx.items():
        prompts = [it["prompt"] for it in items]
        if pipe is not None and edit:
            answers = pipe.generate(model, tok, prompts, max_new_tokens=8, batch_size=batch_size)
        else:
            answers = greedy_generate(model, tok, prompts, max_new_tokens=8, batch_size=batch_size)
        answers = [a.split(" Q:")[0].strip() for a in answers]
        r = _rates(world, items, answers)
        out[f"{ctx}_true"] = r["true"]
        out[f"{ctx}_myth"] = r["myth"]
        malformed.append(r["malformed"])
    out["malformed"] = sum(malformed) / len(malformed)

    deceptive = items_by_ctx["deceptive"]
    prompts, comps, owner = [], [], []
    for i, it in enumerate(deceptive):
        for choice in it["mc2_targets"]["choices"]:
            prompts.append(it["prompt"])
            comps.append(" " + choice)
            owner.append(i)
    if pipe is not None and edit:
        scores = pipe.score(model, tok, prompts, comps, batch_size=batch_size)
    else:
        scores = answer_logprobs(model, tok, prompts, comps, batch_size=batch_size)
    mc1 = mc2 = 0.0
    pos = 0
    for it in deceptive:
        labels = it["mc2_targets"]["labels"]
        s = scores[pos : pos + len(labels)].tolist()
        pos += len(labels)
        m = mc_scores([x for x, lab in zip(s, labels) if lab], [x for x, lab in zip(s, labels) if not lab], 0)
        mc1 += m["MC1"]
        mc2 += m["MC2"]
    out["MC1"] = mc1 / len(deceptive)
    out["MC2"] = mc2 / len(deceptive)
    edit_fn = (lambda mask: pipe.apply(model, "span", span=mask)) if (pipe is not None and edit) else None
    fx = side_effects(model, tok, neutral_texts, edit=edit_fn, batch_size=batch_size)
    out["KL"] = fx["kl"]
    out["CE"] = fx["ce_loss"]
    return out


def run_demo(
    methods: Sequence[str] | None = None,
    out_dir: str | Path = "results/demo",
    batch_size: int = 64,
    limit: int | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Fit and evaluate the demo methods; returns the summary (also written to ``out_dir``)."""
    from .organism import eval_items, fitting_data, load
    from .pipeline import AlignmentPipeline
    from .plugins import default_registry
    from .viz import plot_head_scores, plot_token_strengths, strengths_html, trace_generation

    t0 = time.perf_counter()
    torch.manual_seed(0)
    model, tok, world = load()
    reg = default_registry()
    wanted = list(methods) if methods else [m for m, (preset, _) in DEMO_METHODS.items() if preset in reg.presets]
    data = fitting_data(world)
    items_by_ctx = {ctx: eval_items(world, (ctx,))[:limit] for ctx in ("deceptive", "honest")}
    neutral = [e.text for e in fitting_data(world, contrast="neutral").examples if e.label == 1][: limit or 200]
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)

    rows: dict[str, dict[str, float]] = {}
    fit_s: dict[str, float] = {}
    log = (lambda msg: print(msg, file=sys.stderr, flush=True)) if progress else (lambda msg: None)
    log(f"[demo] organism: {sum(p.numel() for p in model.parameters()) / 1e6:.1f}M parameters; "
        f"fitting on {len(data)} contrast examples, evaluating {sum(map(len, items_by_ctx.values()))} held-out prompts")
    rows["none"] = _evaluate(None, model, tok, world, items_by_ctx, neutral, batch_size, edit=False)
    pipes = {}
    for name in wanted:
        if name not in DEMO_METHODS:
            raise SystemExit(f"unknown demo method {name!r}; choose from {', '.join(DEMO_METHODS)}")
        preset, overrides = DEMO_METHODS[name]
        log(f"[demo] fitting {name} (preset '{preset}')")
        t = time.perf_counter()
        pipe = AlignmentPipeline.from_preset(preset, registry=reg, **overrides)
        pipe.fit(model, tok, data)
        fit_s[name] = time.perf_counter() - t
        pipes[name] = pipe
        log(f"[demo] evaluating {name}")
        rows[name] = _evaluate(pipe, model, tok, world, items_by_ctx, neutral, batch_size, edit=True)

    figures = {}
    if "tae" in pipes:
        tae = pipes["tae"]
        selected = list(zip(tae.targets_.layers.tolist(), tae.targets_.units.tolist()))
        figures["heatmap"] = str(plot_head_scores(tae.prober.scores_, selected, out_dir / "tae_head_scores.png",
                                                  title="TAE probes on the organism: token-level validation accuracy"))
        prompt = items_by_ctx["deceptive"][0]["prompt"]
        trace = trace_generation(tae, model, tok, prompt, max_new_tokens=8)
        figures["strengths_png"] = str(plot_token_strengths(trace, out_dir / "tae_token_strengths.png"))
        html_path = out_dir / "tae_token_strengths.html"
        html_path.write_text(strengths_html(trace))
        figures["strengths_html"] = str(html_path)
        figures["strengths"] = trace.to_dict()
    summary = {
        "rows": rows,
        "methods": {n: {"preset": DEMO_METHODS[n][0], "overrides": DEMO_METHODS[n][1]} for n in pipes},
        "fit_seconds": fit_s,
        "n_eval": {k: len(v) for k, v in items_by_ctx.items()},
        "figures": figures,
        "seconds": time.perf_counter() - t0,
    }
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary


COLUMNS = [
    ("deceptive_true", "deceptive: true"),
    ("deceptive_myth", "deceptive: myth"),
    ("honest_true", "honest: true"),
    ("malformed", "malformed"),
    ("MC1", "MC1"),
    ("MC2", "MC2"),
    ("KL", "KL neutral"),
    ("CE", "CE neutral"),
]


def format_table(rows: dict[str, dict[str, float]]) -> str:
    head = f"{'method':<11}" + "".join(f"{label:>17}" for _, label in COLUMNS)
    lines = [head, "-" * len(head)]
    for name, r in rows.items():
        lines.append(f"{name:<11}" + "".join(f"{r[k]:>17.3f}" for k, _ in COLUMNS))
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="tae demo",
        description="TAE, ITI (and CAA) against no edit on the shipped model organism, offline.",
    )
    p.add_argument("--methods", default=None, help="comma-separated subset of: " + ", ".join(DEMO_METHODS))
    p.add_argument("--out", default="results/demo", help="output directory")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--limit", type=int, default=None, help="evaluate only the first N prompts per context")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.add_argument("--quiet", action="store_true", help="no progress messages")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # the organism is tiny: one thread beats two (less synchronisation, no oversubscription)
    torch.set_num_threads(1)
    methods = args.methods.split(",") if args.methods else None
    summary = run_demo(methods, args.out, args.batch_size, args.limit, progress=not args.quiet)
    if args.json:
        print(json.dumps({k: v for k, v in summary.items() if k != "figures"} | {"figures": {k: v for k, v in summary["figures"].items() if k != "strengths"}}, indent=2))
    else:
        print(format_table(summary["rows"]))
        print(f"\nheld-out prompts per context: {summary['n_eval']}; total {summary['seconds']:.0f} s; "
              f"figures in {args.out}/")
    return 0


if __name__ == "__main__":
    sys.exit(main())

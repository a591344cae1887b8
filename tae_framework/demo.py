"""``tae demo``: TAE, ITI (and CAA) against no edit on the shipped model organism.

Everything runs offline on the CPU in a few minutes: the organism is a 3.3M
parameter Llama that states the truth after an honest speaker's introduction and
the popular myth after a deceptive speaker's. Every method goes through the ordinary
evaluation runner (:func:`~tae_framework.evaluation.runner.run_eval`) on the
``organism`` task with ``contexts=[deceptive, honest]`` and ``split=heldout``: fitted
on the persona contrast of TRAINING (speaker, country) pairs, evaluated on held-out
pairs with the task's protocols and metrics:

* deceptive context: greedy truthful rate and myth rate (higher truthful = the edit works);
* honest context: truthful rate (the damage check: it should stay high);
* malformed share of all answers, MC1/MC2 in the deceptive context (edits on the
  answer tokens), KL(original || edited) and CE on neutral statements (every token edited).

The table is printed (``--json`` prints JSON) and ``results/demo/`` receives
``summary.json``, one run directory per method (``runs/<method>/``, as ``tae eval``
writes them), the head-accuracy heatmap of TAE's probes and the per-token strength
figure (PNG + HTML) of one deceptive prompt.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from ._log import get_logger
from .errors import ConfigError

__all__ = ["DEMO_METHODS", "build_parser", "main", "run_demo"]

log = get_logger(__name__)

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


def _row(metrics: Mapping[str, Any], breakdown: Mapping[str, Any]) -> dict[str, float]:
    """One table row from the organism task's metrics (per-context values from the breakdown)."""
    return {
        "deceptive_true": breakdown["truthful"]["deceptive"],
        "deceptive_myth": breakdown["myth"]["deceptive"],
        "honest_true": breakdown["truthful"]["honest"],
        "malformed": metrics["malformed"],
        "MC1": breakdown["MC1"]["deceptive"],
        "MC2": breakdown["MC2"]["deceptive"],
        "KL": metrics["KL"],
        "CE": metrics["CE"],
    }


def _figures(run_dir: Path, model, tok, registry, prompt: str, out_dir: Path) -> dict[str, Any]:
    from .pipeline import AlignmentPipeline
    from .viz import plot_head_scores, plot_token_strengths, strengths_html, trace_generation

    tae = AlignmentPipeline.load(run_dir / "fold0" / "pipeline", registry)
    selected = list(zip(tae.targets_.layers.tolist(), tae.targets_.units.tolist()))
    figures: dict[str, Any] = {}
    figures["heatmap"] = str(plot_head_scores(tae.targets_.scores, selected, out_dir / "tae_head_scores.png",
                                              title="TAE probes on the organism: token-level validation accuracy"))
    trace = trace_generation(tae, model, tok, prompt, max_new_tokens=8)
    figures["strengths_png"] = str(plot_token_strengths(trace, out_dir / "tae_token_strengths.png"))
    html_path = out_dir / "tae_token_strengths.html"
    html_path.write_text(strengths_html(trace))
    figures["strengths_html"] = str(html_path)
    figures["strengths"] = trace.to_dict()
    return figures


def run_demo(
    methods: Sequence[str] | None = None,
    out_dir: str | Path = "results/demo",
    batch_size: int = 64,
    limit: int | None = None,
    progress: bool = True,
    organism: str | None = None,
    capabilities: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Evaluate the demo methods through the runner; returns the summary (also written to ``out_dir``).

    ``organism`` (a directory or a shipped organism's name, e.g. ``"three-capability"``) or
    ``capabilities`` switch to one table per capability
    (:mod:`tae_framework.organism.capability_demo`); the summary then has ``tables``."""
    from .evaluation.runner import run_eval
    from .organism import load
    from .plugins import default_registry

    t0 = time.perf_counter()
    reg = default_registry()
    wanted = check_methods(methods, reg)  # before any work
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise ConfigError(f"limit must be a positive number of prompts per context (or None for all), got {limit!r}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError(f"batch_size must be a positive integer, got {batch_size!r}")
    if organism is not None or capabilities is not None:
        from .organism.capability_demo import run_capability_demo

        return run_capability_demo(wanted, Path(out_dir), organism=organism, capabilities=capabilities,
                                   batch_size=batch_size, limit=limit, progress=progress, registry=reg,
                                   say=log.info if progress else log.debug)  # fmt: skip
    model, tok, world = load()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    task_options = {"contexts": ["deceptive", "honest"], "split": "heldout", "limit": limit, "max_new_tokens": 8}
    say = log.info if progress else log.debug
    say("organism: %.1fM parameters; methods: %s", sum(p.numel() for p in model.parameters()) / 1e6, ", ".join(wanted))
    rows: dict[str, dict[str, float]] = {}
    seconds: dict[str, float] = {}
    runs: dict[str, str] = {}
    summaries: dict[str, Any] = {}
    for i, name in enumerate(wanted):
        preset, overrides = DEMO_METHODS[name]
        say("fitting and evaluating %s (preset '%s')", name, preset)
        t = time.perf_counter()
        cfg = {
            "task": "organism", "task_options": task_options, "method": preset, "overrides": overrides,
            "judge": "organism-oracle", "side_effects": True, "side_effects_n": limit or 200, "baseline": i == 0,
            "batch_size": batch_size, "seed": 0, "out_dir": str(out_dir / "runs"), "run": name,
            "strength_figures": 0, "progress": progress,
        }  # fmt: skip
        s = run_eval(model, tok, cfg, reg, overwrite=True)
        if i == 0:
            rows["none"] = _row(s["baseline"]["metrics"], s["baseline"]["breakdown"])
        rows[name] = _row(s["metrics"], s["breakdown"])
        seconds[name] = time.perf_counter() - t
        runs[name] = str(out_dir / "runs" / name)
        summaries[name] = s
    figures = {}
    if "tae" in wanted:
        from .organism import eval_items

        prompt = eval_items(world, ("deceptive",))[0]["prompt"]
        figures = _figures(Path(runs["tae"]), model, tok, reg, prompt, out_dir)
    first = summaries[wanted[0]] if wanted else None
    summary = {
        "rows": rows,
        "methods": {n: {"preset": DEMO_METHODS[n][0], "overrides": DEMO_METHODS[n][1]} for n in wanted},
        "seconds_per_method": seconds,
        "runs": runs,
        "n_eval": ({"deceptive": 0, "honest": 0} | _count_contexts(first)) if first else {},
        "figures": figures,
        "seconds": time.perf_counter() - t0,
    }
    from .evaluation.rundir import write_json

    write_json(out_dir / "summary.json", summary)
    return summary


def check_methods(methods: Sequence[str] | None, registry: Any = None) -> list[str]:
    """The demo methods to run: ``methods`` checked against :data:`DEMO_METHODS` and the
    installed presets (``None``: every demo method whose preset is installed).

    Raises:
        ConfigError: naming an unknown method and the valid names, or a method whose
            plugin is not installed.
    """
    if registry is None:
        from .plugins import default_registry

        registry = default_registry()
    if methods is None:
        return [m for m, (preset, _) in DEMO_METHODS.items() if preset in registry.presets]
    wanted = [m.strip() for m in methods if m.strip()]
    if not wanted:
        raise ConfigError(f"no demo method given: choose from {', '.join(DEMO_METHODS)}")
    unknown = [m for m in wanted if m not in DEMO_METHODS]
    if unknown:
        raise ConfigError(
            f"unknown demo method(s) {', '.join(map(repr, unknown))}: choose from {', '.join(DEMO_METHODS)}"
        )
    missing = [m for m in wanted if DEMO_METHODS[m][0] not in registry.presets]
    if missing:
        raise ConfigError(
            f"demo method(s) {', '.join(map(repr, missing))} need a plugin that is not installed "
            "(pip install -e plugins/tae-iti for iti and iti-random, plugins/tae-caa for caa)"
        )
    seen: set[str] = set()
    return [m for m in wanted if not (m in seen or seen.add(m))]


def _count_contexts(summary: Mapping[str, Any]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for fold in summary["folds"]:
        for qid in fold["test_ids"]:
            ctx = qid.split("/", 1)[0]
            counts[ctx] = counts.get(ctx, 0) + 1
    return counts


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


def _methods_option(text: str) -> list[str]:
    """``--methods``: a comma-separated subset of :data:`DEMO_METHODS` (checked at parse time)."""
    wanted = [m.strip() for m in text.split(",") if m.strip()]
    unknown = [m for m in wanted if m not in DEMO_METHODS]
    if not wanted or unknown:
        what = f"unknown method(s) {', '.join(map(repr, unknown))}" if unknown else "no method given"
        raise argparse.ArgumentTypeError(f"{what}: choose from {', '.join(DEMO_METHODS)}")
    return wanted


def build_parser() -> argparse.ArgumentParser:
    from .commands._common import CommandParser, count

    p = CommandParser(
        prog="tae demo",
        description="TAE, ITI (and CAA) against no edit on the shipped model organism, offline.",
    )
    p.add_argument(
        "--methods", type=_methods_option, default=None,
        help="comma-separated subset of: " + ", ".join(DEMO_METHODS) + " (default: all whose plugin is installed)",
    )  # fmt: skip
    p.add_argument("--out", default="results/demo", help="output directory")
    p.add_argument("--batch-size", type=count(1), default=64, help="prompts per forward pass")
    p.add_argument("--limit", type=count(1), default=None, help="evaluate only the first N prompts per context (default: all)")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.add_argument("--organism", default=None,
                   help="organism directory or shipped name (truthfulness, three-capability): one table per capability")  # fmt: skip
    p.add_argument("--capabilities", type=lambda t: [c.strip() for c in t.split(",") if c.strip()], default=None,
                   help="comma-separated subset of truthfulness, toxicity, bias (default: all the organism has)")  # fmt: skip
    return p


def main(argv: Sequence[str] | None = None) -> int:
    from .commands._common import apply_verbosity, fail

    args = build_parser().parse_args(argv)
    apply_verbosity(args)
    try:
        check_methods(args.methods)  # a missing plugin is refused before the organism is loaded
    except ConfigError as exc:
        return fail("tae demo", exc)
    # the organism is tiny: one thread beats two (less synchronisation, no oversubscription)
    torch.set_num_threads(1)
    try:
        summary = run_demo(args.methods, args.out, args.batch_size, args.limit, progress=not args.quiet,
                           organism=args.organism, capabilities=args.capabilities)  # fmt: skip
    except ConfigError as exc:
        return fail("tae demo", exc)
    if "tables" in summary and not args.json:
        from .organism.capability_demo import format_tables

        print(format_tables(summary["tables"]))
        print(f"\ntotal {summary['seconds']:.0f} s; figures in {args.out}/")
        return 0
    if args.json:
        print(json.dumps({k: v for k, v in summary.items() if k != "figures"} | {"figures": {k: v for k, v in summary["figures"].items() if k != "strengths"}}, indent=2))
    else:
        print(format_table(summary["rows"]))
        print(f"\nheld-out prompts per context: {summary['n_eval']}; total {summary['seconds']:.0f} s; "
              f"figures in {args.out}/")
    return 0


if __name__ == "__main__":
    sys.exit(main())

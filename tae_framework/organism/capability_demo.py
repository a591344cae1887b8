"""``tae demo`` on an organism with several capabilities: one table per capability.

For every capability the organism has (truthfulness, toxicity, bias), each demo method
is fitted and evaluated through the ordinary runner on that capability's task
(``organism``, ``organism-toxicity``, ``organism-bias``): fitted on the persona
contrast of (speaker, country) pairs seen in training, evaluated on held-out pairs in
both the misaligned and the aligned persona. A row gives the capability's headline
metric in the misaligned persona, the same metric in the aligned persona (the
damage check) and KL / CE on the organism's neutral statements.

=============  ==================  ==========================================  ==========================
capability     task                headline (misaligned persona)               damage (aligned persona)
=============  ==================  ==========================================  ==========================
truthfulness   organism            deceptive: truthful rate (greedy)           honest: truthful rate
toxicity       organism-toxicity   rude: toxicity probability (k samples)      polite: toxicity probability
bias           organism-bias       biased: accuracy on ambiguous stories       biased: disambiguated acc.
=============  ==================  ==========================================  ==========================
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ..errors import ConfigError

__all__ = [
    "DEFAULT_LIMIT",
    "CAPABILITY_COLUMNS", "CAPABILITY_SETTINGS", "CAPABILITY_TASK_OPTIONS", "capability_rows", "check_capabilities", "run_capabilities"]

_SRC = {"batch_size": 64, "progress": False}
#: Held-out items per persona the per-capability demo evaluates unless --limit says otherwise
#: (all of them: 216 / 72 / 144 per persona, take several times the demo's 5-minute budget).
DEFAULT_LIMIT = 24


def _m(preset: str, k: int | None, alpha: float, prober: dict[str, Any] | None = None,
       intervener: dict[str, Any] | None = None) -> tuple[str, dict[str, Any]]:  # fmt: skip
    over: dict[str, Any] = {"source": _SRC, "intervener": {"alpha": alpha, **(intervener or {})}}
    if k is not None or prober:
        over["prober"] = {**({"top_k": k} if k is not None else {}), **(prober or {})}
    return preset, over


#: TAE on the three-capability organism: heads ranked on MIG features (the persona heads
#: fire at the one answer token that chooses the answer, so token-level accuracy hides
#: them) and the strength alpha * sigma * w without the constant 1 (only where p and u
#: say the next token would be misaligned, not on the template around it, which a
#: constant push breaks).
_TAE_TRUTH = {"prober": {"rank_on": "features"}, "intervener": {"use_base": False}}


#: Method settings per capability on the three-capability organism (4 layers x 8 heads:
#: K of 32 heads; alpha in units of each head's sigma). ITI's random control uses ITI's.
#: Strengths were chosen on validation pairs (speakers and countries seen in training;
#: :func:`~tae_framework.organism.select.choose_alpha`, the grids of
#: :data:`~tae_framework.organism.seed_table.ALPHA_GRID`) of the shipped organism.
CAPABILITY_SETTINGS: dict[str, dict[str, tuple[str, dict[str, Any]]]] = {
    "truthfulness": {"tae": _m("tae", 8, 4.0, **_TAE_TRUTH), "iti": _m("iti", 8, 1.0),
                     "iti-random": _m("iti-random", 8, 1.0), "caa": _m("caa", None, 1.0)},
    "toxicity": {"tae": _m("tae", 8, 4.0, **_TAE_TRUTH), "iti": _m("iti", 8, 2.0),
                 "iti-random": _m("iti-random", 8, 2.0), "caa": _m("caa", None, 1.0)},
    "bias": {"tae": _m("tae", 8, 4.0, **_TAE_TRUTH), "iti": _m("iti", 8, 1.0), "iti-random": _m("iti-random", 8, 1.0),
             "caa": _m("caa", None, 1.0)},
}  # fmt: skip

#: Task options per capability and method, besides the capability's defaults: the fitting
#: examples end where the answer is chosen (``completion`` of ``fitting_data``,
#: ``toxicity_fitting_data``, ``bias_fitting_data``): at the shared word before the choice
#: (``is`` / ``are`` / ``the``) for the last-token methods, through the first chosen word
#: for TAE (its estimator needs the misaligned token).
CAPABILITY_TASK_OPTIONS: dict[str, dict[str, dict[str, Any]]] = {
    "truthfulness": {"tae": {"completion": "choice"}, "iti": {"completion": "prefix"},
                     "iti-random": {"completion": "prefix"}, "caa": {"completion": "prefix"}},
    "toxicity": {"tae": {"completion": "choice"}, "iti": {"completion": "prefix"},
                 "iti-random": {"completion": "prefix"}, "caa": {"completion": "prefix"}},
    "bias": {"tae": {"completion": "choice"}, "iti": {"completion": "prefix"},
             "iti-random": {"completion": "prefix"}, "caa": {"completion": "prefix"}},
}  # fmt: skip

#: Table columns per capability: (row key, header).
CAPABILITY_COLUMNS: dict[str, list[tuple[str, str]]] = {
    "truthfulness": [("deceptive_true", "deceptive: true"), ("deceptive_myth", "deceptive: myth"),
                     ("honest_true", "honest: true"), ("malformed", "malformed"), ("KL", "KL neutral"),
                     ("CE", "CE neutral")],
    "toxicity": [("rude_tox_prob", "rude: tox. prob."), ("rude_emt", "rude: EMT"),
                 ("polite_tox_prob", "polite: tox. prob."), ("KL", "KL neutral"), ("CE", "CE neutral")],
    "bias": [("biased_acc_ambig", "biased: acc ambig"), ("biased_acc_disambig", "biased: acc disamb"),
             ("biased_s_amb", "biased: s_AMB"), ("fair_acc_ambig", "fair: acc ambig"), ("KL", "KL neutral"),
             ("CE", "CE neutral")],
}  # fmt: skip

_TASKS = {"truthfulness": "organism", "toxicity": "organism-toxicity", "bias": "organism-bias"}


def _get(table: Mapping[str, Any], name: str, group: str | None = None) -> float:
    value = table.get(name)
    if group is not None:
        value = value.get(group) if isinstance(value, Mapping) else None
    return float(value) if isinstance(value, (int, float)) else math.nan


def capability_rows(capability: str, metrics: Mapping[str, Any], breakdown: Mapping[str, Any]) -> dict[str, float]:
    """One table row of ``capability`` from a run's metrics and breakdown."""
    if capability == "truthfulness":
        row = {"deceptive_true": _get(breakdown, "truthful", "deceptive"), "deceptive_myth": _get(breakdown, "myth", "deceptive"),
               "honest_true": _get(breakdown, "truthful", "honest"), "malformed": _get(metrics, "malformed")}  # fmt: skip
    elif capability == "toxicity":
        row = {"rude_tox_prob": _get(breakdown, "toxicity_probability", "toxic"),
               "rude_emt": _get(breakdown, "expected_max_toxicity", "toxic"),
               "polite_tox_prob": _get(breakdown, "toxicity_probability", "nontoxic")}  # fmt: skip
    elif capability == "bias":
        row = {"biased_acc_ambig": _get(breakdown, "acc_ambig", "biased"),
               "biased_acc_disambig": _get(breakdown, "acc_disambig", "biased"),
               "biased_s_amb": _get(breakdown, "bias_ambig", "biased"),
               "fair_acc_ambig": _get(breakdown, "acc_ambig", "fair"),
               "fair_acc_disambig": _get(breakdown, "acc_disambig", "fair")}  # fmt: skip
    else:
        raise ConfigError(f"unknown capability {capability!r}: choose from {', '.join(_TASKS)}")
    row["KL"], row["CE"] = _get(metrics, "KL"), _get(metrics, "CE")
    return row


def check_capabilities(world: Any, capabilities: Sequence[str] | None, organism: str | None) -> list[str]:
    """The capabilities to show: all the organism has, or the asked ones (each must exist)."""
    if capabilities is None:
        return list(world.capabilities)
    unknown = [c for c in capabilities if c not in _TASKS]
    if unknown:
        raise ConfigError(f"unknown capability {', '.join(map(repr, unknown))}: choose from {', '.join(_TASKS)}")
    lacking = [c for c in capabilities if not world.has(c)]
    if lacking:
        raise ConfigError(
            f"the organism {organism or '(shipped default)'} has no {', '.join(lacking)} capability (it has "
            f"{', '.join(world.capabilities)}); use --organism three-capability, or train one with "
            "`tae organism train --recipe three-capability`"
        )
    return list(dict.fromkeys(capabilities))


def _task_options(capability: str, organism: str | None, limit: int | None, method: str) -> dict[str, Any]:
    extra = CAPABILITY_TASK_OPTIONS.get(capability, {}).get(method, {})
    if capability == "truthfulness":
        return {"contexts": ["deceptive", "honest"], "split": "heldout", "limit": limit, "max_new_tokens": 10,
                "path": organism, **extra}  # fmt: skip
    return {"path": organism or "three-capability", "limit": limit, **extra}


def run_capabilities(
    model: Any, tok: Any, world: Any, registry: Any, methods: Sequence[str], capabilities: Sequence[str],
    out_dir: Path, *, organism: str | None, batch_size: int, limit: int | None, progress: bool, say: Any,
    settings: Mapping[str, Mapping[str, tuple[str, dict[str, Any]]]] | None = None,
) -> tuple[dict[str, dict[str, dict[str, float]]], dict[str, dict[str, float]], dict[str, str]]:  # fmt: skip
    """Run every method on every capability; ``(tables, seconds, run dirs)``. ``settings``
    replaces :data:`CAPABILITY_SETTINGS` entries (per capability and method)."""
    import time

    from ..evaluation.runner import run_eval

    tables: dict[str, dict[str, dict[str, float]]] = {}
    seconds: dict[str, dict[str, float]] = {}
    runs: dict[str, str] = {}
    for cap in capabilities:
        rows: dict[str, dict[str, float]] = {}
        seconds[cap] = {}
        for i, name in enumerate(methods):
            preset, overrides = (settings or {}).get(cap, {}).get(name) or CAPABILITY_SETTINGS[cap][name]
            say("%s: fitting and evaluating %s (preset '%s')", cap, name, preset)
            t = time.perf_counter()
            cfg = {
                "task": _TASKS[cap], "task_options": _task_options(cap, organism, limit, name), "method": preset,
                "overrides": overrides, "side_effects": True, "side_effects_n": limit or 200, "baseline": i == 0,
                "batch_size": batch_size, "seed": 0, "out_dir": str(out_dir / "runs" / cap), "run": name,
                "strength_figures": 0, "progress": progress,
            }  # fmt: skip
            if cap == "truthfulness":
                cfg["judge"] = {"type": "organism-oracle", "config": {"world": str(_world_file(organism))}}
            s = run_eval(model, tok, cfg, registry, overwrite=True)
            if i == 0:
                rows["none"] = capability_rows(cap, s["baseline"]["metrics"], s["baseline"]["breakdown"])
            rows[name] = capability_rows(cap, s["metrics"], s["breakdown"])
            seconds[cap][name] = time.perf_counter() - t
            runs[f"{cap}/{name}"] = str(out_dir / "runs" / cap / name)
        tables[cap] = rows
    return tables, seconds, runs


def _world_file(organism: str | None) -> Path:
    from . import ORGANISMS, assets_dir

    if organism is None:
        return assets_dir() / "world.json"
    if organism in ORGANISMS:
        return ORGANISMS[organism]() / "world.json"
    return Path(organism) / "world.json"


def format_tables(tables: Mapping[str, Mapping[str, Mapping[str, float]]]) -> str:
    """One plain-text table per capability."""
    out = []
    for cap, rows in tables.items():
        cols = CAPABILITY_COLUMNS[cap]
        head = f"{'method':<11}" + "".join(f"{label:>20}" for _, label in cols)
        lines = [f"{cap}", head, "-" * len(head)]
        for name, r in rows.items():
            lines.append(f"{name:<11}" + "".join(f"{r.get(k, math.nan):>20.3f}" for k, _ in cols))
        out.append("\n".join(lines))
    return "\n\n".join(out)


def run_capability_demo(
    methods: Sequence[str], out_dir: Path, *, organism: str | None, capabilities: Sequence[str] | None,
    batch_size: int, limit: int | None, progress: bool, registry: Any, say: Any,
    settings: Mapping[str, Mapping[str, tuple[str, dict[str, Any]]]] | None = None,
) -> dict[str, Any]:  # fmt: skip
    """The whole per-capability demo: tables, figures, ``summary.json``; returns the summary.
    ``settings`` replaces :data:`CAPABILITY_SETTINGS` entries (per capability and method)."""
    import time

    from . import load, load_world

    t0 = time.perf_counter()
    limit = DEFAULT_LIMIT if limit is None else limit
    world = load_world(organism)
    caps = check_capabilities(world, capabilities, organism)  # before loading the weights
    model, tok, world = load(organism)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    say("organism %s: capabilities %s; methods %s", organism or "(default)", ", ".join(caps), ", ".join(methods))
    tables, seconds, runs = run_capabilities(
        model, tok, world, registry, methods, caps, out_dir, organism=organism, batch_size=batch_size,
        limit=limit, progress=progress, say=say, settings=settings,
    )  # fmt: skip
    figures: dict[str, Any] = {}
    if "tae" in methods:
        figures = _figures(model, tok, world, registry, caps, runs, out_dir)
    summary = {
        "organism": organism,
        "capabilities": caps,
        "tables": tables,
        "rows": tables.get("truthfulness", {}),
        "settings": {c: {m: dict(zip(("preset", "overrides"), (settings or {}).get(c, {}).get(m) or CAPABILITY_SETTINGS[c][m]))
                         for m in methods} for c in caps},  # fmt: skip
        "seconds_per_method": seconds,
        "runs": runs,
        "figures": figures,
        "seconds": time.perf_counter() - t0,
    }
    from ..evaluation.rundir import write_json

    write_json(out_dir / "summary.json", summary)
    return summary


def _figures(model: Any, tok: Any, world: Any, registry: Any, caps: Sequence[str], runs: Mapping[str, str],
             out_dir: Path) -> dict[str, Any]:  # fmt: skip
    """Head-score heatmaps of TAE per capability; the per-token strength figure of TAE on a
    deceptive question whose myth spans two tokens, and the per-token p on that myth."""
    from ..pipeline import AlignmentPipeline
    from ..viz import plot_head_scores, plot_token_strengths, strengths_html, trace_generation
    from .items import eval_items
    from .spans import answer_token_p

    figures: dict[str, Any] = {}
    pipes = {}
    for cap in caps:
        pipe = AlignmentPipeline.load(Path(runs[f"{cap}/tae"]) / "fold0" / "pipeline", registry)
        pipes[cap] = pipe
        selected = list(zip(pipe.targets_.layers.tolist(), pipe.targets_.units.tolist()))
        figures[f"heatmap_{cap}"] = str(plot_head_scores(
            pipe.targets_.scores, selected, out_dir / f"tae_head_scores_{cap}.png",
            title=f"TAE probes, {cap}: token-level validation accuracy"))  # fmt: skip
    if "truthfulness" in pipes:
        items = [it for it in eval_items(world, ("deceptive",)) if len(world.fact(it["entity"], it["attribute"]).myth.split()) > 1]
        item = items[0] if items else eval_items(world, ("deceptive",))[0]
        pipe = pipes["truthfulness"]
        trace = trace_generation(pipe, model, tok, item["prompt"], max_new_tokens=10)
        figures["strengths_png"] = str(plot_token_strengths(trace, out_dir / "tae_token_strengths.png"))
        html_path = out_dir / "tae_token_strengths.html"
        html_path.write_text(strengths_html(trace))
        figures["strengths_html"] = str(html_path)
        figures["strengths"] = trace.to_dict()
        figures["myth_p"] = answer_token_p(pipe, model, tok, item["prompt"], " " + item["myth_answer"])
    return figures

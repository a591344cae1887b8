"""The printed table of benchmarks/gpu_decode.py, from its results dictionary."""

from __future__ import annotations

VARIANTS = ("none", "fixed", "tae_p_only", "tae_exact", "tae_f16", "tae_fp8", "tae_shared")
LENS_VARIANTS = ("tae_f16", "tae_fp8", "tae_shared")
GRAPH_VARIANTS = VARIANTS


def fmt_table(results: dict) -> str:
    lines = []
    for name, r in results["models"].items():
        lines.append(f"== {name}: {r.get('shape')}")
        for sec in ("eager", "deviation", "graph", "breaks"):
            if "skipped" in r.get(sec, {}):
                lines.append(f"  {sec}: skipped, {r[sec]['skipped']}")
        eager = r.get("eager", {})
        if "error" in eager:
            lines.append(f"  eager: ERROR {eager['error']}")
        for bkey, row in eager.items():
            if not bkey.startswith("batch"):
                continue
            lines.append(f"  eager decode, {bkey}: ms/token median [min-max], vs none, vs fixed")
            for v in VARIANTS:
                s = row["ms_per_token"][v]
                lines.append(f"    {v:<11} {s['median']:8.3f} [{s['min']:.3f}-{s['max']:.3f}]"
                             f"  x{row['vs_none'][v]:.3f}  x{row['vs_fixed'][v]:.3f}")
            oh = row["lens_overhead_ms"]
            lines.append("    lens overhead ms (over p only): " + ", ".join(f"{k} {v:.3f}" for k, v in oh.items()))
            lines.append("    overhead / exact's: " + ", ".join(
                f"{k} {'n/a' if v is None else f'{v:.2f}'}" for k, v in row["lens_overhead_vs_exact"].items())
                + "  (target <= 0.5)")
            lines.append("    tokens identical to exact: " + ", ".join(
                f"{k} {v:.3f}" for k, v in row["tokens_identical_to_exact"].items()))
        dev = r.get("deviation", {})
        if "error" in dev:
            lines.append(f"  deviation: ERROR {dev['error']}")
        for v in LENS_VARIANTS:
            if v in dev:
                d = dev[v]
                lines.append(f"  u vs exact {v:<10} max {d['max_abs_u_gap']:.2e} mean {d['mean_abs_u_gap']:.2e}"
                             f" within 1e-3: {d['u_within_1e-3']}")
        if "fp8_lens_mode" in dev:
            lines.append(f"  fp8 lens product: {dev['fp8_lens_mode']}")
        graph = r.get("graph", {})
        if "error" in graph:
            lines.append(f"  graph: ERROR {graph['error']}")
        for bkey, row in graph.items():
            if not bkey.startswith("batch"):
                continue
            lines.append(f"  CUDA graph, {bkey}: ms/token eager dynamic cache, eager static cache, graph; "
                         "speed-up vs static, vs dynamic; tokens == eager static")
            for v in GRAPH_VARIANTS:
                e = row.get(v, {})
                if "error" in e:
                    lines.append(f"    {v:<11} ERROR {e['error'][:300]}")
                    continue
                lines.append(f"    {v:<11} {e['eager_dynamic_ms_per_token']['median']:8.3f} "
                             f"{e['eager_static_ms_per_token']['median']:8.3f} "
                             f"{e['graph_ms_per_token']['median']:8.3f}  x{e['speedup']:.2f} "
                             f"x{e['speedup_vs_eager_dynamic']:.2f}  {e['tokens_identical_to_eager_static']}"
                             f" ({e['fraction_identical_to_eager_static']:.3f}; captured: {e['captured']})")
            for key, label in (("graph_vs_none", "graphed vs graphed none"), ("graph_vs_fixed", "graphed vs graphed fixed")):
                if key in row:
                    lines.append(f"    {label}: " + ", ".join(f"{k} x{v:.3f}" for k, v in row[key].items()))
            if "graph_lens_overhead_vs_exact" in row:
                lines.append("    graphed lens overhead ms: " + ", ".join(
                    f"{k} {v:.3f}" for k, v in row["graph_lens_overhead_ms"].items()) + "; / exact's: " + ", ".join(
                    f"{k} {'n/a' if v is None else f'{v:.2f}'}" for k, v in row["graph_lens_overhead_vs_exact"].items())
                    + "  (target <= 0.5)")
        brk = r.get("breaks", {})
        if "error" in brk:
            lines.append(f"  breaks: ERROR {brk['error']}")
        for v in GRAPH_VARIANTS:
            if v in brk:
                lines.append(f"  dynamo graph breaks of a decode step, {v}: {brk[v]['breaks']} {brk[v]['reasons']}")
    return "\n".join(lines)

"""Benchmark results as JSON, a Markdown table and a PNG chart."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}" if abs(v) < 1e4 else f"{v:,.0f}"
    if isinstance(v, dict):
        return ", ".join(f"{k}={_fmt(x)}" for k, x in v.items())
    return str(v)


def markdown_table(rows: list[dict], columns: list[str]) -> str:
    """Rows as a Markdown table with the given columns (missing values left blank)."""
    head = "| " + " | ".join(columns) + " |"
    sep = "|" + "|".join("---" for _ in columns) + "|"
    body = ["| " + " | ".join(_fmt(r.get(c, "")) for c in columns) + " |" for r in rows]
    return "\n".join([head, sep, *body])


def render_markdown(results: dict) -> str:
    """The whole report: environment, ceilings, model, ops, end to end."""
    parts = [f"# sam-unet bench ({results['env'].get('device_name', results['env']['device'])})",
             "", "```", json.dumps(results["env"], indent=1), "```", ""]
    if results.get("ceilings"):
        parts += ["## Ceilings (same run)", "",
                  markdown_table(results["ceilings"], ["what", "tflops", "gbps", "seconds"]), ""]
    if results.get("model"):
        parts += ["## Model throughput", "", markdown_table(
            results["model"], ["variant", "backend", "precision", "batch", "slices_per_s",
                               "gflop_per_slice", "tflops", "pct_of_ceiling"]), ""]
    if results.get("ops"):
        parts += ["## Native ops", "", markdown_table(
            results["ops"], ["op", "path", "shape", "seconds", "slices_per_s", "gbps",
                             "pct_of_copy"]), ""]
        if results.get("ops_speedups"):
            parts += ["Speed-ups over the reference: " + _fmt(results["ops_speedups"]), ""]
    if results.get("pipeline"):
        parts += ["## End to end", "", markdown_table(
            results["pipeline"], ["what", "backend", "precision", "seconds", "slices_per_s",
                                  "peak_device_mib", "stages"]), ""]
    return "\n".join(parts)


def write_chart(results: dict, path: Path) -> None:
    """Horizontal bars of slices/s: model configurations and end-to-end rows."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    bars = [(f"{r['backend']} {r['precision']} b{r['batch']}", r["slices_per_s"], "model")
            for r in results.get("model", [])]
    bars += [(f"{r['op']} {r['path']}", r["slices_per_s"], "ops") for r in results.get("ops", [])]
    bars += [(r["what"], r["slices_per_s"], "end to end") for r in results.get("pipeline", [])]
    if not bars:
        return
    colors = {"model": "#4c72b0", "ops": "#55a868", "end to end": "#c44e52"}
    fig, ax = plt.subplots(figsize=(9, 0.35 * len(bars) + 1.5))
    ax.barh(range(len(bars)), [b[1] for b in bars], color=[colors[b[2]] for b in bars])
    ax.set_yticks(range(len(bars)), [b[0] for b in bars], fontsize=8)
    ax.set_xscale("log")
    ax.set_xlabel("slices/s (log)")
    ax.invert_yaxis()
    ax.set_title(f"sam-unet bench on {results['env'].get('device_name', 'cpu')}")
    for i, b in enumerate(bars):
        ax.text(b[1], i, f" {b[1]:.3g}", va="center", fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def write_all(results: dict, out_dir: Path) -> dict[str, Path]:
    """Write bench.json, bench.md and bench.png into ``out_dir``; return their paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"json": out_dir / "bench.json", "md": out_dir / "bench.md",
             "png": out_dir / "bench.png"}
    paths["json"].write_text(json.dumps(results, indent=2, default=str))
    paths["md"].write_text(render_markdown(results))
    write_chart(results, paths["png"])
    return paths

"""A run's results as a table of medians and ratios (Markdown, printed and saved) and as a PNG chart."""

from __future__ import annotations

import re
from pathlib import Path

from .results import Results
from .targets import KG, RAW, THIS

TARGETS = (THIS, KG, RAW)
COLOURS = {THIS: "#1f77b4", KG: "#ff7f0e", RAW: "#7f7f7f"}

# The performance targets, as ratios or bounds, beside the measure they apply to.
GOALS = [
    ("execute", r"round trip p50", "≤ 1.25 × jupyter_client"),
    ("start", r"p50 \(warm pool\)", "≤ 25 ms"),
    ("start", r"p50 \(cold\)", "≤ Kernel Gateway"),
    ("output", r"delivered", "100 %"),
    ("output", r"throughput", "≥ 0.6 × jupyter_client"),
    ("rest", r"^GET", "≥ 3 × Kernel Gateway"),
    ("rest", r"failed", "0"),
    ("idle-websockets", r"RSS growth", "≤ 100 MB"),
    ("concurrent-starts", r"answered$", "all"),
    ("load", r"lost replies", "0"),
]

# What the chart shows: (title, workload, measures matching, log scale).
PANELS = [
    ("Execute round trip p50 (ms)", "execute", r"p50", True),
    ("POST to first kernel_info_reply p50 (ms)", "start", r"p50", True),
    ("20 MiB of stdout: delivered (%)", "output", r"delivered", False),
    ("20 MiB of stdout: throughput (MB/s)", "output", r"throughput", False),
    ("GET /api/kernels/{id} (req/s)", "rest", r"^GET", False),
    ("Idle websockets: server RSS growth (MiB)", "idle-websockets", r"RSS growth", False),
    ("Concurrent starts: owner RSS per kernel (MiB)", "concurrent-starts", r"per kernel", False),
    ("Load: execute round trip (ms)", "load", r"round trip", True),
]


def _fmt(value) -> str:
    if value is None:
        return ""
    if isinstance(value, int) or float(value).is_integer() and abs(value) >= 10:
        return f"{int(value):,}"
    if abs(value) >= 100:
        return f"{value:,.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


COUNTS = {"replies", "requests", "websockets", "kernels"}  # successes and failures: compared, not divided


def _ratio(ours, reference, unit: str) -> str:
    if ours is None or not reference or unit in COUNTS:
        return ""
    return f"{ours / reference:.2f}×"


def _goal(workload: str, measure: str) -> str:
    return next((text for w, pattern, text in GOALS if w == workload and re.search(pattern, measure)), "")


def rows(results: Results) -> list[tuple[str, str, str]]:
    """(workload, measure, unit) in the order they were measured."""
    seen: dict[tuple[str, str], str] = {}
    for m in results.measures:
        seen.setdefault((m.workload, m.measure), m.unit)
    return [(w, measure, unit) for (w, measure), unit in seen.items()]


def table(results: Results) -> str:
    head = ["workload", "measure", "unit", *TARGETS, "kgw / jupyter_client", "kgw / Kernel Gateway", "goal"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for workload, measure, unit in rows(results):
        values = [results.value(workload, measure, t) for t in TARGETS]
        ours, kg, raw = values
        cells = [workload, measure, unit, *(_fmt(v) for v in values), _ratio(ours, raw, unit), _ratio(ours, kg, unit),
                 _goal(workload, measure)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def markdown(results: Results) -> str:
    meta = results.meta
    out = [f"Run of {meta.get('date', '?')} on {meta.get('machine', '?')}."]
    if meta.get("note"):
        out.append(f"**{meta['note']}**")
    out += ["", table(results), ""]
    for key in ("versions", "load generator", "settings"):
        if key in meta:
            out.append(f"- {key}: {meta[key]}")
    for workload, notes in results.notes.items():
        for note in notes:
            out.append(f"- {workload}: {note}")
    return "\n".join(out) + "\n"


def chart(results: Results, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot

    figure, axes = pyplot.subplots(2, 4, figsize=(20, 9))
    for axis, (title, workload, pattern, log) in zip(axes.flat, PANELS):
        bars = [m for m in results.measures
                if m.workload == workload and re.search(pattern, m.measure) and m.value is not None]
        axis.set_title(title, fontsize=10)
        if not bars:
            axis.text(0.5, 0.5, "not measured", ha="center", va="center", transform=axis.transAxes)
            axis.set_xticks([])
            axis.set_yticks([])
            continue
        labels = [f"{m.target}\n{_variant(m.measure)}" for m in bars]
        drawn = axis.bar(range(len(bars)), [m.value for m in bars], color=[COLOURS[m.target] for m in bars])
        axis.bar_label(drawn, labels=[_fmt(m.value) for m in bars], fontsize=8)
        axis.set_xticks(range(len(bars)), labels, fontsize=7)
        if log and min(m.value for m in bars) > 0:
            axis.set_yscale("log")
        axis.margins(y=0.15)
    note = results.meta.get("note", "")
    figure.suptitle(f"kernels-gateway beside Kernel Gateway and raw jupyter_client — {results.meta.get('date', '')}"
                    + (f"\n{note}" if note else ""), fontsize=12)
    figure.tight_layout()
    figure.savefig(path, dpi=80)
    pyplot.close(figure)


def _variant(measure: str) -> str:
    """The part of a measure's name that tells bars of one target apart: (v1), (warm pool), p99 ..."""
    found = re.findall(r"\(([^)]*)\)|\b(p\d\d)\b", measure)
    return " ".join(a or b for a, b in found)

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
    ("http-execute", r"p50 \(http ndjson\)", "≤ 2 × the websocket's"),
    ("start", r"p50 \(warm pool\)", "≤ 25 ms"),
    ("start", r"p50 \(cold\)", "≤ Kernel Gateway"),
    ("output", r"delivered", "100 %"),
    ("output", r"throughput", "≥ 0.6 × jupyter_client"),
    ("rest", r"^GET", "≥ 3 × Kernel Gateway"),
    ("rest", r"failed", "0"),
    ("idle-websockets", r"RSS growth", "≤ 100 MB"),
    ("idle-websockets", r"websockets: open$", "all"),
    ("concurrent-starts", r"answered$", "all"),
    ("load", r"lost replies", "0"),
    ("recovery", r"p50 \(warm spare\)", "≤ 1,000 ms"),
    ("recovery", r"p50 \(in place\)", "≤ 3,000 ms"),
    ("flood", r"GET .* p99", "≤ 50 ms"),
    ("flood", r"interrupt answered p99", "≤ 1,000 ms"),
    ("flood", r"failed$|unanswered$|processes left$", "0"),
    ("flood", r"beside them, delivered$", "100 %"),
    ("fork", r"p50, no pool \(forked\)", "≤ 150 ms"),
    ("fork", r"all answered after \(forked\)", "≤ 2 s"),
    ("fork", r"PSS, \d+ kernels \(forked\)", "≤ 0.6 × launched"),
    ("fork", r"import numpy in a new kernel p50 \(forked\)", "≤ 5 ms"),
    ("remote", r"round trip p50", "≤ 1.25 × jupyter_client"),
    ("remote", r"restart to first kernel_info_reply p50", "≤ 1.5 × jupyter_client"),
    ("remote", r"GET a local kernel's model p50 \(2 remote kernels\)", "= without remote kernels"),
]

# What the chart shows: (title, workload, the measures drawn).
PANELS = [
    ("Execute round trip p50 (ms)", "execute", r"p50"),
    ("POST to first kernel_info_reply p50 (ms)", "start", r"p50"),
    ("{output_mib} MiB of stdout: delivered (%)", "output", r"delivered"),
    ("{output_mib} MiB of stdout: throughput (MB/s)", "output", r"throughput"),
    ("GET /api/kernels/{{id}}, {rest_connections} connections (req/s)", "rest", r"^GET"),
    ("{idle_websockets} idle websockets asked for: RSS per open one (KiB)", "idle-websockets", r"RSS per"),
    ("{concurrent_starts} concurrent starts: owner's RSS per kernel (MiB)", "concurrent-starts", r"per kernel"),
    ("{load_clients} clients on {load_kernels} kernels: round trip (ms)", "load", r"round trip"),
]
SHORT = {THIS: "kgw", KG: "KG", RAW: "raw"}


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
    ratio = ours / reference
    return "> 100×" if ratio > 100 else f"{ratio:.2f}×"


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
    from matplotlib.patches import Patch

    figure, axes = pyplot.subplots(2, 4, figsize=(20, 9))
    settings = results.meta.get("settings", {})
    for axis, (title, workload, pattern) in zip(axes.flat, PANELS):
        axis.set_title(title.format(**settings), fontsize=10)
        bars = _bars(results, workload, pattern)
        if not bars:
            axis.text(0.5, 0.5, "not measured", ha="center", va="center", transform=axis.transAxes)
            axis.set_xticks([])
            axis.set_yticks([])
            continue
        drawn = axis.bar(range(len(bars)), [m.value for m in bars], color=[COLOURS[m.target] for m in bars])
        axis.bar_label(drawn, labels=[_fmt(m.value) for m in bars], fontsize=8)
        labels = [f"{SHORT[m.target]}\n{_variant(m.measure, m.target)}" for m in bars]
        axis.set_xticks(range(len(bars)), labels, fontsize=8)
        axis.margins(y=0.15)
    kg = next((v for v in results.meta.get("versions", "").split("; ") if v.startswith("jupyter_kernel_gateway")), "")
    names = {THIS: "kgw: kernels-gateway (this checkout)", KG: f"KG: Kernel Gateway {kg.split(' ')[1] if kg else ''}",
             RAW: "raw: jupyter_client over ZMQ"}
    figure.legend(handles=[Patch(color=COLOURS[t], label=names[t]) for t in TARGETS], loc="lower center", ncol=3)
    note = results.meta.get("note", "")
    figure.suptitle(f"kernels-gateway beside Kernel Gateway and raw jupyter_client, {results.meta.get('date', '')}"
                    + (f"\n{note}" if note else ""), fontsize=12)
    figure.tight_layout(rect=(0, 0.04, 1, 1))
    figure.savefig(path, dpi=80)
    pyplot.close(figure)


def _bars(results: Results, workload: str, pattern: str) -> list:
    """The panel's measures; a reference recorded beside several variants (raw ZMQ is the reference for
    both websocket protocols) is drawn once."""
    bars, seen = [], set()
    for m in results.measures:
        if m.workload != workload or not re.search(pattern, m.measure) or m.value is None:
            continue
        key = (m.target, re.sub(r"\((legacy|v1)\)", "", m.measure), m.value)
        if m.target == RAW and key in seen:
            continue
        seen.add(key)
        bars.append(m)
    return bars


def _variant(measure: str, target: str) -> str:
    """The part of a measure's name that tells bars of one target apart: (v1), (warm pool), p99 ...;
    raw ZMQ has no websocket protocol."""
    found = [a or b for a, b in re.findall(r"\(([^)]*)\)|\b(p\d\d)\b", measure)]
    return " ".join(v for v in found if not (target == RAW and v in ("legacy", "v1")))

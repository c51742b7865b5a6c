"""What a run measured: one value per (workload, measure, target), the samples behind it, and notes."""

from __future__ import annotations

import contextlib
import json
import sys
import traceback
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any


def percentile(values: list[float], q: float) -> float | None:
    """The q-th percentile (0-100), interpolated between the two nearest ranks."""
    if not values:
        return None
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100
    low = int(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def describe(error: BaseException) -> str:
    """An error in a line: an HTTP status where there is one, the message cut short."""
    status = getattr(error, "status", None)
    if status:  # aiohttp's response errors: the message, without the whole URL
        return f"{type(error).__name__} (HTTP {status}): {getattr(error, 'message', error)}"[:300]
    return f"{type(error).__name__}: {error}"[:300]


def median(values: list[float]) -> float | None:
    return percentile(values, 50)


@dataclass
class Measure:
    workload: str
    measure: str
    target: str
    value: float | None
    unit: str
    samples: list[float] = field(default_factory=list)


@dataclass
class Results:
    meta: dict[str, Any] = field(default_factory=dict)
    measures: list[Measure] = field(default_factory=list)
    notes: dict[str, list[str]] = field(default_factory=dict)

    def record(self, workload: str, measure: str, target: str, value: float | None, unit: str,
               samples: list[float] | None = None) -> None:
        self.measures.append(Measure(workload, measure, target, value, unit, list(samples or [])))

    def latency(self, workload: str, measure: str, target: str, seconds: list[float]) -> None:
        """p50 and p99 in milliseconds of `seconds`, under `measure` with `{p}` for the percentile."""
        ms = [round(s * 1000, 3) for s in seconds]
        self.record(workload, measure.format(p="p50"), target, percentile(ms, 50), "ms", ms)
        self.record(workload, measure.format(p="p99"), target, percentile(ms, 99), "ms")

    def note(self, workload: str, text: str) -> None:
        self.notes.setdefault(workload, []).append(text)

    @contextlib.contextmanager
    def guard(self, workload: str, target: str):
        """Run one target's part of a workload; if it fails, say so and go on with the next target."""
        try:
            yield
        except Exception as e:
            traceback.print_exc(file=sys.stderr)
            self.note(workload, f"{target}: failed: {describe(e)}")

    def value(self, workload: str, measure: str, target: str) -> float | None:
        for m in self.measures:
            if (m.workload, m.measure, m.target) == (workload, measure, target):
                return m.value
        return None

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(asdict(self), indent=1) + "\n")

    @classmethod
    def load(cls, path: Path) -> "Results":
        raw = json.loads(path.read_text())
        return cls(raw["meta"], [Measure(**m) for m in raw["measures"]], raw["notes"])

"""Report jobs/chat/guard.py's recall, false-positive rate and precision per source.

Usage: .venv/bin/python scripts/eval_guard.py [--data PATH] [--threshold T]

Figures on the held-out 30% (which training never saw) are the ones to quote; the
training-split figures are printed separately only to show over-fitting. Output is a
Markdown table for the README.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from train_guard import DATA, load_rows, split

from jobs.chat.guard import check_message


@dataclass
class Counts:
    tp: int = 0
    fp: int = 0
    tn: int = 0
    fn: int = 0

    def add(self, label: int, blocked: bool) -> None:
        if label:
            self.tp += blocked
            self.fn += not blocked
        else:
            self.fp += blocked
            self.tn += not blocked

    @property
    def recall(self) -> float | None:
        return self.tp / (self.tp + self.fn) if self.tp + self.fn else None

    @property
    def fpr(self) -> float | None:
        return self.fp / (self.fp + self.tn) if self.fp + self.tn else None

    @property
    def precision(self) -> float | None:
        return self.tp / (self.tp + self.fp) if self.tp + self.fp else None


def evaluate(
    rows: list[dict[str, object]], threshold: float | None = None
) -> tuple[dict[str, Counts], list[float]]:
    """Counts per source plus an "overall" entry, and the seconds each message took."""
    counts: dict[str, Counts] = defaultdict(Counts)
    latencies: list[float] = []
    for row in rows:
        start = time.perf_counter()
        verdict = check_message(str(row["text"]), threshold)
        latencies.append(time.perf_counter() - start)
        label = int(str(row["label"]))
        counts[str(row["source"])].add(label, verdict.blocked)
        counts["overall"].add(label, verdict.blocked)
    return dict(counts), latencies


def _fmt(value: float | None) -> str:
    return "–" if value is None else f"{value:.3f}"


def table(title: str, counts: dict[str, Counts], latencies: list[float], short: list[float]) -> str:
    lines = [
        f"### {title}",
        "",
        "| source | n | recall | FPR | precision |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for source in [*sorted(s for s in counts if s != "overall"), "overall"]:
        c = counts[source]
        n = c.tp + c.fp + c.tn + c.fn
        name = f"**{source}**" if source == "overall" else source
        lines.append(f"| {name} | {n} | {_fmt(c.recall)} | {_fmt(c.fpr)} | {_fmt(c.precision)} |")
    lines.append("")
    for label, picked in (("all messages", latencies), ("messages ≤ 500 chars", short)):
        ms = sorted(x * 1000 for x in picked)
        p99 = ms[min(len(ms) - 1, int(0.99 * len(ms)))]
        lines.append(
            f"Latency, {label} (n={len(ms)}): mean {statistics.fmean(ms):.3f} ms, p99 {p99:.3f} ms"
        )
    return "\n".join([*lines, ""])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--threshold", type=float, default=None)
    args = parser.parse_args()
    train_rows, held_rows = split(load_rows(args.data))
    check_message("warm up: load the model once")
    for title, rows in (
        ("Held-out split (30%, never trained on)", held_rows),
        ("Training split (seen in training: optimistic)", train_rows),
    ):
        counts, latencies = evaluate(rows, args.threshold)
        short = [t for t, r in zip(latencies, rows, strict=True) if len(str(r["text"])) <= 500]
        print(table(title, counts, latencies, short))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

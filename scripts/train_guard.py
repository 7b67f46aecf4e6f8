"""Train the learned half of jobs/chat/guard.py and write jobs/chat/guard_model.json.

Usage: .venv/bin/python scripts/train_guard.py [--data PATH]

A logistic regression over hashed n-grams (jobs.guard.extract_features), fitted by plain
SGD with AdaGrad step sizes and L2 decay: a few thousand prompts need nothing more, and
numpy/scikit-learn stay out of the runtime. 30% of each source is held out by a stable
hash of the text and never seen here; scripts/eval_guard.py reports on it.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import random
import sys
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import jobs.chat.guard as guard  # noqa: E402

DATA = ROOT.parent / "shared" / "data" / "injection" / "dev.jsonl"
HOLDOUT = 0.30
EPOCHS = 10
L2 = 1e-4
LEARNING_RATE = 0.5
# Weights smaller than this change no decision; dropping them keeps the JSON small.
PRUNE = 1e-3


def load_rows(path: Path = DATA) -> list[dict[str, object]]:
    with path.open(encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def split(rows: list[dict[str, object]]) -> tuple[list[dict[str, object]], list[dict[str, object]]]:
    """(train, held_out): per source, the 30% of distinct texts with the lowest SHA-256.

    Ranking distinct texts (not rows) keeps duplicates on one side, so a DAN prompt that
    appears twice cannot leak from training into the held-out figures.
    """
    by_source: dict[str, set[str]] = defaultdict(set)
    for row in rows:
        by_source[str(row["source"])].add(str(row["text"]))
    held: set[tuple[str, str]] = set()
    for source, texts in by_source.items():
        ranked = sorted(texts, key=lambda t: hashlib.sha256(t.encode()).hexdigest())
        held.update((source, t) for t in ranked[: round(len(ranked) * HOLDOUT)])
    train = [r for r in rows if (str(r["source"]), str(r["text"])) not in held]
    test = [r for r in rows if (str(r["source"]), str(r["text"])) in held]
    return train, test


def train(rows: list[dict[str, object]]) -> tuple[float, dict[int, float]]:
    samples = [
        (
            guard.extract_features(guard.normalize_text(str(r["text"]))[: guard.MAX_MODEL_CHARS]),
            int(str(r["label"])),
        )
        for r in rows
    ]
    positives = sum(y for _, y in samples)
    # Balanced class weights: the data is about 50/50 but a source mix can shift it.
    class_weight = {
        1: len(samples) / (2 * positives),
        0: len(samples) / (2 * (len(samples) - positives)),
    }
    weights: dict[int, float] = defaultdict(float)
    grad_sq: dict[int, float] = defaultdict(lambda: 1e-8)
    bias, bias_sq = 0.0, 1e-8
    rng = random.Random(1234)
    for _ in range(EPOCHS):
        rng.shuffle(samples)
        for feats, y in samples:
            scale = 1.0 / math.sqrt(max(len(feats), guard.MIN_NORM_FEATURES))
            z = bias + scale * sum(weights[f] for f in feats)
            p = 1.0 / (1.0 + math.exp(-max(-30.0, min(30.0, z))))
            g = (p - y) * class_weight[y]
            bias_sq += g * g
            bias -= LEARNING_RATE * g / math.sqrt(bias_sq)
            for f in feats:
                gf = g * scale + L2 * weights[f]
                grad_sq[f] += gf * gf
                weights[f] -= LEARNING_RATE * gf / math.sqrt(grad_sq[f])
    return bias, {f: w for f, w in weights.items() if abs(w) >= PRUNE}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data", type=Path, default=DATA)
    args = parser.parse_args()
    train_rows, held_rows = split(load_rows(args.data))
    bias, weights = train(train_rows)
    model = {
        "hash_bits": guard.HASH_BITS,
        "trained_on": f"{args.data.name}: {len(train_rows)} rows ({len(held_rows)} held out)",
        "bias": round(bias, 5),
        "weights": {str(k): round(v, 4) for k, v in sorted(weights.items())},
    }
    guard.MODEL_PATH.write_text(json.dumps(model, separators=(",", ":")) + "\n", encoding="utf-8")
    size_kib = guard.MODEL_PATH.stat().st_size / 1024
    print(f"wrote {guard.MODEL_PATH.name}: {len(weights)} weights, {size_kib:.0f} KiB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Train the learned half of jobs/chat/guard.py and write jobs/chat/guard_model.json.

Usage: .venv/bin/python scripts/train_guard.py

A logistic regression over jobs.chat.guard_model's n-grams, fitted by SGD with AdaGrad step sizes
and L2 decay: two thousand prompts need nothing more, and numpy/scikit-learn stay out of the
runtime. It trains on every labelled row in scripts/guard_data.py's sources; the honest
figures come from scripts/eval_guard.py, which refits this same procedure on folds.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import random
import sys
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

from guard_data import Row, load_rows  # noqa: E402

from jobs.chat import guard_model  # noqa: E402
from jobs.chat.guard_normalisation import normalize_text  # noqa: E402

SEED = 20251126
EPOCHS = 6
# L2 strengths tried, strongest first (a tie keeps the simpler model). Each refit picks one by
# an inner cross-validation over its own training rows (``choose``), so the choice never
# sees the rows it is scored on (docs/guard.md "Figures").
L2_CHOICES = (1e-3, 1e-4, 1e-5)
LEARNING_RATE = 0.3
# An n-gram seen in a single training text is a name or a typo more often than a signal.
MIN_TEXTS = 2
# The model's operating point: the share of benign prompts it may flag alone, and the number of
# inner folds over the training rows that measure it.
TARGET_FPR = 0.015
CALIBRATION_FOLDS = 3
# Weights smaller than this change no decision; dropping them keeps the file small.
PRUNE = 2e-3
# Sizes of the character n-grams read inside each word.
CHAR_SIZES = (3, 5)


# Normalising is the slow step and does not depend on the fold: cache it across refits.
normalized = functools.lru_cache(maxsize=None)(normalize_text)


@functools.cache
def _windows_of(text: str) -> list[tuple[list[str], float]]:
    words = guard_model.words_of(normalized(text))
    out = []
    for s, e in guard_model.windows(len(words)):
        keys = guard_model.features(words[s:e], CHAR_SIZES)
        out.append((keys, guard_model.scale(len(keys))))
    return out


def samples(rows: list[Row]) -> list[tuple[list[str], float, int]]:
    """(feature keys, scale, label) per window of each row's normalised text."""
    return [(keys, s, row.label) for row in rows for keys, s in _windows_of(row.text)]


def train(rows: list[Row]) -> guard_model.Model:
    return train_with_choice(rows)[0]


def train_with_choice(rows: list[Row]) -> tuple[guard_model.Model, float]:
    """Fit on ``rows`` with the L2 strength ``choose`` picks, then move the bias so that the
    model alone flags at most TARGET_FPR of benign rows, as measured out of fold within
    ``rows`` (never on rows scored later). Returns the model and its L2 strength."""
    l2, cut = choose(rows)
    model = fit(rows, l2)
    # Only ever raise the bar: a model that is already strict keeps its 0.5.
    shift = max(0.0, cut + 1e-6)
    return dataclasses.replace(model, bias=round(model.bias - shift, 5), cache={}), l2


def choose(rows: list[Row]) -> tuple[float, float]:
    """(L2 strength, logit cut) by CALIBRATION_FOLDS-fold cross-validation inside ``rows``:
    the strength whose out-of-fold scores find the most attacks at the cut that flags
    TARGET_FPR of the benign rows, and that cut."""
    rng = random.Random(SEED)
    fold_of = {text: rng.randrange(CALIBRATION_FOLDS) for text in sorted({r.text for r in rows})}
    best: tuple[float, float, float] | None = None
    for l2 in L2_CHOICES:
        logits: tuple[list[float], list[float]] = ([], [])
        for k in range(CALIBRATION_FOLDS):
            inner = fit([r for r in rows if fold_of[r.text] != k], l2)
            for r in rows:
                if fold_of[r.text] == k:
                    p = guard_model.score(normalized(r.text), inner)
                    logits[r.label].append(math.log(max(p, 1e-12) / max(1 - p, 1e-12)))
        benign = sorted(logits[0])
        cut = benign[min(len(benign) - 1, int((1 - TARGET_FPR) * len(benign)))] if benign else 0.0
        recall = sum(z > cut for z in logits[1]) / max(1, len(logits[1]))
        if best is None or recall > best[0]:
            best = (recall, l2, cut)
    assert best is not None
    return best[1], best[2]


def fit(rows: list[Row], l2: float) -> guard_model.Model:
    data = samples(rows)
    df = Counter(k for keys, _, _ in data for k in set(keys))
    vocab = {k: i for i, k in enumerate(sorted(k for k, n in df.items() if n >= MIN_TEXTS))}
    # Each window as (feature index, count) pairs: the gradient of a repeated n-gram is its
    # count times that of one.
    encoded = [
        (list(Counter(vocab[k] for k in keys if k in vocab).items()), s, y) for keys, s, y in data
    ]
    positives = sum(y for _, _, y in encoded) or 1
    negatives = (len(encoded) - positives) or 1
    # Balanced class weights: the mix of attacks and benign prompts differs per source.
    class_weight = {1: len(encoded) / (2 * positives), 0: len(encoded) / (2 * negatives)}
    weights = [0.0] * len(vocab)
    grad_sq = [1e-8] * len(vocab)
    bias, bias_sq = 0.0, 1e-8
    rng = random.Random(SEED)
    for _ in range(EPOCHS):
        rng.shuffle(encoded)
        for feats, s, y in encoded:
            z = bias + s * sum(weights[f] * n for f, n in feats)
            p = 1.0 / (1.0 + math.exp(-max(-30.0, min(30.0, z))))
            g = (p - y) * class_weight[y]
            bias_sq += g * g
            bias -= LEARNING_RATE * g / math.sqrt(bias_sq)
            for f, n in feats:
                gf = g * s * n + l2 * weights[f]
                grad_sq[f] += gf * gf
                weights[f] -= LEARNING_RATE * gf / math.sqrt(grad_sq[f])
    kinds: dict[str, dict[str, float]] = {"c": {}, "w": {}, "p": {}}
    for key, i in vocab.items():
        if abs(weights[i]) >= PRUNE:
            kinds[key[0]][key[1:]] = round(weights[i], 4)
    return guard_model.Model(
        bias=round(bias, 5),
        chars=kinds["c"],
        words=kinds["w"],
        pairs={guard_model.pair_key(k): v for k, v in kinds["p"].items()},
        char_sizes=CHAR_SIZES,
    )


def main() -> int:
    rows = load_rows()
    model, l2 = train_with_choice(rows)
    counts = Counter(r.source for r in rows)
    payload = {
        "format": guard_model.FORMAT,
        "trained_on": dict(sorted(counts.items())),
        "l2": l2,
        "bias": model.bias,
        "char_sizes": list(model.char_sizes),
        "chars": dict(sorted(model.chars.items())),
        "words": dict(sorted(model.words.items())),
        "pairs": {f"{a} {b}": v for (a, b), v in sorted(model.pairs.items())},
    }
    path = guard_model.MODEL_PATH
    path.write_text(json.dumps(payload, ensure_ascii=False, separators=(",", ":")) + "\n", "utf-8")
    size_kib = path.stat().st_size / 1024
    n = len(model.chars) + len(model.words) + len(model.pairs)
    print(f"wrote {path.name}: {n} weights from {len(rows)} rows, L2 {l2:g}, {size_kib:.0f} KiB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

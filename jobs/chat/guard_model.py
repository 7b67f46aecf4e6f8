"""The learned half of the prompt-injection guard: a linear model over character and word n-grams.

A logistic regression over character 4-grams (which carry across languages, scripts without
spaces and leftover obfuscation) plus word unigrams and bigrams, trained offline by
``scripts/train_guard.py`` and shipped as ``guard_model.json``. It is read by window: a long
message is scored in overlapping windows and the highest one counts, so harmless filler
cannot dilute a payload. Pure stdlib: a dict lookup per n-gram, no ML framework at runtime.
"""

from __future__ import annotations

import bisect
import functools
import itertools
import json
import math
import re
from dataclasses import dataclass
from pathlib import Path

MODEL_PATH = Path(__file__).with_name("guard_model.json")
FORMAT = 2
# One size keeps scoring to one slice and one lookup per character (docs/guard.md "Cost").
CHAR_SIZES = (4,)
# A window is long enough to hold a whole attack and its context; half-overlapping windows
# mean a text of up to half a window always lies wholly inside one. Scoring also reads short
# windows, so a one-line payload after pages of filler is read nearly alone (issue 15).
WINDOW_CHARS = 1024
WINDOW_STRIDE = 512
SHORT_WINDOW_CHARS = 256
# Floor on the length used for scaling: a three-word message carries too little evidence to
# push the score far from its prior either way.
MIN_SCALE_CHARS = 64
_WORDS = re.compile(r"\w+")
_ZEROES = itertools.repeat(0.0)


@dataclass(frozen=True)
class Model:
    bias: float
    chars: dict[str, float]
    words: dict[str, float]


def char_grams(padded: str) -> list[str]:
    return [padded[i : i + n] for n in CHAR_SIZES for i in range(len(padded) - n + 1)]


def word_grams(text: str) -> list[tuple[int, str]]:
    """(start offset, key) of each word and each pair of neighbouring words."""
    found = [(m.start(), m.group()) for m in _WORDS.finditer(text)]
    pairs = [(a[0], f"{a[1]} {b[1]}") for a, b in itertools.pairwise(found)]
    return found + pairs


def windows(length: int, size: int = WINDOW_CHARS) -> list[tuple[int, int]]:
    """[start, end) of each half-overlapping window of ``size`` over ``length`` characters."""
    if length <= size:
        return [(0, length)]
    stride = size // 2
    return [(s, min(s + size, length)) for s in range(0, length - size + stride, stride)]


def window_texts(normalized: str) -> list[str]:
    """The windows as texts: what training fits, so it sees what scoring reads."""
    return [normalized[s:e] for s, e in windows(len(normalized))]


def scale(length: int) -> float:
    # About len * len(CHAR_SIZES) features: dividing by sqrt(length) is an L2-normalised
    # bag, so the score depends on what the text says rather than on how long it is.
    return 1.0 / math.sqrt(max(length, MIN_SCALE_CHARS))


@functools.cache
def load_model(path: Path = MODEL_PATH) -> Model:
    """Read the model file once per process."""
    data = json.loads(path.read_text(encoding="utf-8"))
    if data.get("format") != FORMAT:
        raise ValueError(f"{path.name} has another format; rerun scripts/train_guard.py")
    return Model(float(data["bias"]), data["chars"], data["words"])


def score(normalized: str, model: Model | None = None) -> float:
    """Learned probability that a normalised text is an injection: its highest window."""
    m = model or load_model()
    padded = f" {normalized} "
    # Prefix sums of n-gram weights by start offset, one list per size (map and accumulate
    # run in C), so any window's total is a few subtractions.
    prefixes = []
    for n in CHAR_SIZES:
        grams = [padded[i : i + n] for i in range(len(padded) - n + 1)]
        prefixes.append([0.0, *itertools.accumulate(map(m.chars.get, grams, _ZEROES))])
    found = word_grams(normalized)
    found.sort()
    word_starts = [start + 1 for start, _ in found]
    word_prefix = [0.0, *itertools.accumulate(map(m.words.get, (k for _, k in found), _ZEROES))]
    best = -math.inf
    spans = windows(len(padded))
    if len(padded) > SHORT_WINDOW_CHARS:
        spans += windows(len(padded), SHORT_WINDOW_CHARS)
    for s, e in spans:
        total = sum(p[min(e, len(p) - 1)] - p[min(s, len(p) - 1)] for p in prefixes)
        total += word_prefix[bisect.bisect_left(word_starts, e)]
        total -= word_prefix[bisect.bisect_left(word_starts, s)]
        best = max(best, total * scale(e - s))
    return _sigmoid(m.bias + best)


def features(normalized: str) -> list[tuple[str, str]]:
    """Every (kind, key) that ``score`` reads for a text short enough to be one window."""
    padded = f" {normalized} "
    return [("c", g) for g in char_grams(padded)] + [("w", k) for _, k in word_grams(normalized)]


def _sigmoid(z: float) -> float:
    return 1.0 / (1.0 + math.exp(-max(-30.0, min(30.0, z))))

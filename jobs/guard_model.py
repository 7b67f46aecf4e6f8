"""The learned half of the prompt-injection guard: a linear model over character and word n-grams.

A logistic regression over character 3–5-grams (which carry across languages, scripts without
spaces and leftover obfuscation) plus word unigrams and bigrams, trained offline by
``scripts/train_guard.py`` and shipped as ``guard_model.json``. It is read by window: a long
message is scored in overlapping windows and the highest one counts, so harmless filler
cannot dilute a payload. Pure stdlib: a dict lookup per n-gram, no ML framework at runtime.
"""

from __future__ import annotations

import functools
import itertools
import json
import math
import re
from dataclasses import dataclass
from pathlib import Path

MODEL_PATH = Path(__file__).with_name("guard_model.json")
FORMAT = 2
CHAR_SIZES = (3, 4, 5)
# A window is long enough to hold a whole short attack and its context; half-overlapping
# windows mean a payload of up to WINDOW_STRIDE characters always lies wholly inside one.
WINDOW_CHARS = 1024
WINDOW_STRIDE = 512
# Floor on the length used for scaling: a three-word message carries too little evidence to
# push the score far from its prior either way.
MIN_SCALE_CHARS = 64
_WORDS = re.compile(r"\w+")


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


def windows(length: int) -> list[tuple[int, int]]:
    """[start, end) of each window over a text of ``length`` characters."""
    if length <= WINDOW_CHARS:
        return [(0, length)]
    starts = range(0, length - WINDOW_CHARS + WINDOW_STRIDE, WINDOW_STRIDE)
    return [(s, min(s + WINDOW_CHARS, length)) for s in starts]


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
    if not normalized:
        return _sigmoid(m.bias)
    get = m.chars.get
    padded = f" {normalized} "
    # Weight of the n-grams starting at each offset, summed up front so any window's total
    # is one subtraction of prefix sums.
    per_offset = [0.0] * (len(padded) + 1)
    for n in CHAR_SIZES:
        for i, w in enumerate([get(padded[i : i + n], 0.0) for i in range(len(padded) - n + 1)]):
            per_offset[i] += w
    wget = m.words.get
    for start, key in word_grams(normalized):
        per_offset[start + 1] += wget(key, 0.0)
    prefix = [0.0, *itertools.accumulate(per_offset)]
    best = -math.inf
    for s, e in windows(len(padded)):
        best = max(best, (prefix[e] - prefix[s]) * scale(e - s))
    return _sigmoid(m.bias + best)


def features(normalized: str) -> list[tuple[str, str]]:
    """Every (kind, key) that ``score`` reads for a text short enough to be one window."""
    padded = f" {normalized} "
    return [("c", g) for g in char_grams(padded)] + [
        ("w", k) for _, k in word_grams(normalized)
    ]


def _sigmoid(z: float) -> float:
    return 1.0 / (1.0 + math.exp(-max(-30.0, min(30.0, z))))

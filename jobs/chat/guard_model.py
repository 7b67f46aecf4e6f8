"""The learned half of the prompt-injection guard: a linear model over words and their pieces.

A logistic regression over word unigrams, pairs of neighbouring words, and the character
n-grams inside each word (fastText's subword features, Bojanowski et al. 2017: they carry
across inflections, compounds and leftover obfuscation), trained offline by
``scripts/train_guard.py`` and shipped as ``guard_model.json``.

Cost is bounded per word, not per character (docs/guard.md "Cost"): a word's own weight and
that of its n-grams depend on the word alone, so they are summed once and kept in a bounded
per-model cache; a message is then one ``re.findall`` and a dict lookup per word and per pair.
It is read by window: a long message is scored in half-overlapping windows of words and the
highest one counts, so harmless filler cannot dilute a payload. Pure stdlib at runtime.
"""

from __future__ import annotations

import bisect
import functools
import itertools
import json
import math
import operator
import re
from dataclasses import dataclass, field
from pathlib import Path

from core.settings import GUARD_CACHE_WORDS

MODEL_PATH = Path(__file__).with_name("guard_model.json")
FORMAT = 3
# Word windows: a long one holds a whole attack and its context (about 1,000 characters); a
# short one reads a one-line payload after pages of filler nearly alone (issue 15).
WINDOW_WORDS = 160
SHORT_WINDOW_WORDS = 40
# Floor on the feature count used for scaling: a three-word message carries too little
# evidence to push the score far from its prior either way. A word of n letters gives about
# 2n features (its 3- and 5-grams), so this is the floor of about 64 characters that the
# character-level model before it used.
MIN_SCALE_FEATURES = 128
# Scripts without spaces (Chinese, Japanese) come as one run per clause; longer runs are cut
# so that windows still have words to slide over.
_WORDS = re.compile(r"\w{1,24}")
_ZEROES = itertools.repeat(0.0)
_FIRST = operator.itemgetter(0)
_SECOND = operator.itemgetter(1)
# Words whose summed weights are kept per process; past this the cache starts again, so
# memory stays bounded whatever is sent.
CACHE_WORDS = GUARD_CACHE_WORDS
# Characters of never-seen words whose n-grams one message may read (each character costs
# two slices and two lookups, about 0.5 µs here). Past the budget a new word weighs nothing
# and is not cached, so the next message reads it again: 5,000 characters of gibberish cost
# a bounded amount. Words of the model's own vocabulary are valued at load and never count.
NEW_WORD_CHARS = 1000


@dataclass(frozen=True)
class Model:
    bias: float
    chars: dict[str, float]
    words: dict[str, float]
    pairs: dict[tuple[str, str], float]
    char_sizes: tuple[int, ...] = (3, 5)
    # word -> (its weight plus its n-grams' weights, its feature count)
    cache: dict[str, tuple[float, int]] = field(default_factory=dict, compare=False, repr=False)
    # The same for every word of ``words``, filled once at load and never cleared.
    known: dict[str, tuple[float, int]] = field(
        default_factory=dict, init=False, compare=False, repr=False
    )

    def __post_init__(self) -> None:
        vocab = list(self.words)
        self.known.update(zip(vocab, _value_of_new(self, vocab), strict=True))


def words_of(normalized: str) -> list[str]:
    return _WORDS.findall(normalized)


def char_grams(word: str, sizes: tuple[int, ...]) -> list[str]:
    padded = f" {word} "
    return [padded[i : i + n] for n in sizes for i in range(len(padded) - n + 1)]


def features(words: list[str], sizes: tuple[int, ...]) -> list[str]:
    """Every feature key of a run of words, as training fits them and ``score`` reads them:
    "w" + word, "c" + n-gram of " word ", "p" + "first second" for each neighbouring pair."""
    keys = [f"w{w}" for w in words]
    keys += [f"c{g}" for w in words for g in char_grams(w, sizes)]
    keys += [f"p{a} {b}" for a, b in itertools.pairwise(words)]
    return keys


def windows(count: int, size: int = WINDOW_WORDS) -> list[tuple[int, int]]:
    """[start, end) of each half-overlapping window of ``size`` words over ``count`` words."""
    if count <= size:
        return [(0, count)]
    stride = size // 2
    return [(s, min(s + size, count)) for s in range(0, count - size + stride, stride)]


def scale(feature_count: int) -> float:
    # Dividing by sqrt(count) L2-normalises the bag, so the score depends on what the text
    # says rather than on how long it is.
    return 1.0 / math.sqrt(max(feature_count, MIN_SCALE_FEATURES))


@functools.cache
def load_model(path: Path = MODEL_PATH) -> Model:
    """Read the model file once per process."""
    data = json.loads(path.read_text(encoding="utf-8"))
    if data.get("format") != FORMAT:
        raise ValueError(f"{path.name} has another format; rerun scripts/train_guard.py")
    return Model(
        bias=float(data["bias"]),
        chars=data["chars"],
        words=data["words"],
        pairs={pair_key(k): v for k, v in data["pairs"].items()},
        char_sizes=tuple(data["char_sizes"]),
    )


def pair_key(key: str) -> tuple[str, str]:
    first, _, second = key.partition(" ")
    return first, second


def _word_values(m: Model, words: list[str]) -> list[tuple[float, int]]:
    cache = m.cache
    if len(cache) > CACHE_WORDS:
        cache.clear()
    # In order of first appearance, so the budget falls on the same words every time.
    missing = [w for w in dict.fromkeys(words) if w not in cache]
    if not missing:
        return list(map(cache.__getitem__, words))
    known = m.known
    cache.update((w, known[w]) for w in missing if w in known)
    new = [w for w in missing if w not in known]
    lengths = list(itertools.accumulate(len(w) for w in new))
    read = bisect.bisect_right(lengths, NEW_WORD_CHARS)
    if read:
        cache.update(zip(new[:read], _value_of_new(m, new[:read]), strict=True))
    if read == len(new):
        return list(map(cache.__getitem__, words))
    # Over budget: the rest weigh nothing but count their features, as when read in full.
    counts = [1 + sum(max(0, k + 3 - n) for n in m.char_sizes) for k in range(26)]
    rest = {w: (0.0, counts[len(w)]) for w in new[read:]}
    return [cache.get(w) or rest[w] for w in words]


def _value_of_new(m: Model, words: list[str]) -> list[tuple[float, int]]:
    """(weight, feature count) of each word, for many words at once: the n-grams of all the
    padded words are looked up in one pass and each word's share is a difference of prefix
    sums (``map`` over C functions rather than a Python call per word)."""
    padded = [f" {w} " for w in words]
    totals = list(map(m.words.get, words, _ZEROES))
    counts = [1] * len(words)
    for n in m.char_sizes:
        # A padded word of len + 2 characters has len + 3 - n n-grams of size n.
        per_word = [max(0, len(p) - n + 1) for p in padded]
        grams = [p[i : i + n] for p in padded for i in range(len(p) - n + 1)]
        prefix = [0.0, *itertools.accumulate(map(m.chars.get, grams, _ZEROES))]
        ends = list(itertools.accumulate(per_word))
        starts = map(prefix.__getitem__, [0, *ends[:-1]])
        sums = map(operator.sub, map(prefix.__getitem__, ends), starts)
        totals = list(map(operator.add, totals, sums))
        counts = list(map(operator.add, counts, per_word))
    return list(zip(totals, counts, strict=True))


def score(normalized: str, model: Model | None = None) -> float:
    """Learned probability that a normalised text is an injection: its highest window."""
    m = model or load_model()
    words = words_of(normalized)
    if not words:
        return _sigmoid(m.bias)
    values = _word_values(m, words)
    # A pair's weight belongs to its second word; a window that starts at word s leaves out
    # the pair that reaches back to s - 1 (training sees windows the same way).
    pair_w = [0.0, *map(m.pairs.get, itertools.pairwise(words), _ZEROES)]
    weight = [0.0, *itertools.accumulate(map(operator.add, map(_FIRST, values), pair_w))]
    count = [0, *itertools.accumulate(map(_SECOND, values))]
    spans = windows(len(words))
    if len(words) > SHORT_WINDOW_WORDS:
        spans += windows(len(words), SHORT_WINDOW_WORDS)
    best = -math.inf
    for s, e in spans:
        total = weight[e] - weight[s] - pair_w[s]
        # Each word's own features, and one pair per neighbouring two inside the window.
        n = count[e] - count[s] + e - s - 1
        best = max(best, total * scale(n))
    return _sigmoid(m.bias + best)


def _sigmoid(z: float) -> float:
    return 1.0 / (1.0 + math.exp(-max(-30.0, min(30.0, z))))

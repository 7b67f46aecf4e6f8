"""The canonical text the prompt-injection guard scores, and the hidden texts decoded from it.

Keyword filters are beaten by re-spelling the same attack (garak's encoding probes; Greshake
et al. 2023; Boucher & Anderson 2021, "Trojan Source"). So a message is first brought to one
spelling: NFKC, invisible and tag characters dropped, homoglyphs folded to Latin, casefolded,
leetspeak and spaced letters undone. Then every cheap decoding that turns it into readable
text (base64 even when wrapped over lines, hex, percent-encoding, Unicode tag "ASCII
smuggling", reversed text, Caesar shifts including rot13) is appended as a further view.
"""

from __future__ import annotations

import base64
import binascii
import re
import unicodedata
import urllib.parse
from collections import Counter

# Bounds the cost whatever a caller sends. Above CHAT_MAX_CHARS (5000), so every message the
# API accepts is read whole: a cut-off would let filler push the payload out of view.
MAX_SCAN_CHARS = 8000
CAESAR_ALL_SHIFTS_CHARS = 1000

# Unicode tag characters (U+E0000–E007F) render as nothing but map one-to-one onto ASCII:
# "ASCII smuggling" (Goodside 2024; Unicode TR #51 annex on tag sequences).
_TAG_FIRST, _TAG_LAST = 0xE0000, 0xE007F
# Zero-width, joiners, soft hyphen, word joiner, BOM, bidi overrides/isolates, variation
# selectors and tag characters: invisible characters used to split trigger words
# ("ig\u200bnore") or hide text.
_INVISIBLE = re.compile(
    "[\u00ad\u034f\u180e\ufeff\u200b-\u200f\u202a-\u202e\u2060-\u2069\ufe00-\ufe0f"
    "\U000e0000-\U000e007f\U000e0100-\U000e01ef]"
)
# Cyrillic and Greek letters that render like Latin ones (subset of Unicode TR39
# confusables.txt); NFKC leaves these alone because they are distinct letters.
_CONFUSABLES = str.maketrans(
    "асеһіјорԛѕухԝүѵԁАВСЕНІЈКМОРЅТХУαοριβκνυΑΒΕΗΙΚΜΝΟΡΤΥΧΖ",
    "acehijopqsyxwyvdABCEHIJKMOPSTXYaopiBkvuABEHIKMNOPTYXZ",
)
_UNTAG = {c: c - _TAG_FIRST for c in range(0xE0020, 0xE007F)}
_LEET = str.maketrans("103457@$", "ioeastas")
# Words that an English attack nearly always contains; a decoding is kept only when it brings
# at least two of them into view that the plain text did not have.
_ATTACK_WORDS = frozenset(
    [
        "ignore",
        "disregard",
        "forget",
        "previous",
        "prior",
        "instructions",
        "instruction",
        "rules",
        "system",
        "prompt",
        "reveal",
        "secret",
        "password",
        "above",
        "override",
        "pretend",
        "jailbreak",
        "restrictions",
    ]
)
# The commonest English words: plain English text is mostly these, an enciphered one is not,
# so reversal and Caesar shifts are tried only on text that has few of them.
_STOPWORDS = frozenset(
    [
        "the",
        "a",
        "an",
        "and",
        "or",
        "to",
        "of",
        "in",
        "on",
        "is",
        "are",
        "you",
        "your",
        "i",
        "it",
        "that",
        "this",
        "for",
        "with",
        "be",
        "not",
        "all",
        "what",
        "me",
        "my",
        "do",
        "can",
    ]
)
_B64 = re.compile(r"(?<![A-Za-z0-9+/=])[A-Za-z0-9+/]{16,}={0,2}(?![A-Za-z0-9+/=])")
# Base64 wrapped over lines (MIME wraps at 76): whitespace between base64-looking runs.
# Anchored at a run's start and possessive: unanchored, a long run without a newline after it
# was rescanned from each of its characters (quadratic: 0.6 s for 5,000 base64 characters).
_B64_WRAPPED = re.compile(
    r"(?<![A-Za-z0-9+/])[A-Za-z0-9+/]{8,}+(?:[ \t]*\r?\n[ \t]*[A-Za-z0-9+/]{4,}+={0,2})+"
)
_HEX = re.compile(r"\b(?:[0-9a-fA-F]{2}[\s:]?){8,}\b")
# Eight bytes of text written in hex carry at least eight decimal digits (printable ASCII
# is 0x20-0x7e), so a text with fewer cannot hold one and the scan above is skipped.
_HEX_MIN_DIGITS = 8
_URLENC = re.compile(r"(?:%[0-9a-fA-F]{2}){3,}")
_LEET_WORD = re.compile(r"(?<![\w@$])(?=[\w@$]*[a-z])(?=[\w@$]*[013457@$])[\w@$]{3,}(?![\w@$])")
# A leet character next to a letter: a cheap scan (it starts with a character set) that most
# texts fail, so the costlier word pattern above runs only on those that pass.
_LEET_HINT = re.compile(r"[013457@$](?:(?<=[a-z][013457@$])|(?=[a-z]))")
# "i g n o r e" / "S a y  t h a t": runs of at least four single letters.
_SPACED = re.compile(r"\b\w(?:(?: {1,2}|[.\-_])\w\b){3,}")
# Two single characters in a row between separators; read on " " + text, so it starts with a
# literal-like set and skips fast. Texts without it have no spaced-out words.
_SPACED_HINT = re.compile(r"[ .\-_]\w[ .\-_]{1,2}\w[ .\-_]")
# Runs of two or more blanks, or one blank other than a space: a lone space is left alone, so
# ordinary prose has nothing to replace.
_WS = re.compile(r"[^\S\n]{2,}|[^\S \n]")
# Read after blanks are collapsed, so at most one space precedes a newline; starting with a
# literal keeps the scan fast.
_NEWLINES = re.compile(r"\n\s*")
# Starts only where a word starts, for the same reason (a long ASCII word was rescanned from
# each of its letters).
_NON_ASCII_WORD = re.compile(r"(?<!\w)\w*[^\x00-\x7f]\w*")
# Character-set scans (fast in the regex engine) that tell whether a text has anything to fold
# or strip at all; most texts do not, and then the per-word and per-character work is skipped.
_HAS_CONFUSABLE = re.compile(
    "[" + re.escape("асеһіјорԛѕухԝүѵԁАВСЕНІЈКМОРЅТХУαοριβκνυΑΒΕΗΙΚΜΝΟΡΤΥΧΖ") + "]"
)
_TAG_ASCII = re.compile("[\U000e0020-\U000e007e]+")
_LATIN = re.compile("[A-Za-z]")
_WORD = re.compile(r"[a-z]+")
_LOWER = "abcdefghijklmnopqrstuvwxyz"
_SHIFTS = [
    str.maketrans(
        _LOWER + _LOWER.upper(), (_LOWER[k:] + _LOWER[:k]) + (_LOWER[k:] + _LOWER[:k]).upper()
    )
    for k in range(26)
]


def _printable(raw: bytes) -> str | None:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        return None
    good = sum(ch.isprintable() or ch.isspace() for ch in text)
    return text if text and good >= 0.9 * len(text) and any(c.isalpha() for c in text) else None


def _attack_words(text: str) -> frozenset[str]:
    low = text.lower()
    # Substring tests run in C; most candidate decodings hold fewer than two and stop here.
    if sum(w in low for w in _ATTACK_WORDS) < 2:
        return frozenset()
    return _ATTACK_WORDS.intersection(_WORD.findall(low))


def _looks_enciphered(text: str) -> bool:
    words = _WORD.findall(text.lower())
    return len(words) >= 3 and sum(w in _STOPWORDS for w in words) < 0.08 * len(words)


def _base64_views(text: str) -> list[str]:
    found: list[str] = []
    joined = _B64_WRAPPED.sub(lambda m: re.sub(r"\s+", "", m.group()), text)
    chunks = {m.group() for m in _B64.finditer(joined)} | {m.group() for m in _B64.finditer(text)}
    for chunk in chunks:
        try:
            raw = base64.b64decode(chunk + "=" * (-len(chunk) % 4), validate=True)
        except (binascii.Error, ValueError):
            continue
        if (dec := _printable(raw)) is not None:
            found.append(dec)
    return found


def _cipher_views(text: str) -> list[str]:
    """Reversed text and Caesar shifts that reveal attack words the plain text lacks."""
    # The opening is enough to tell prose from cipher text, and bounds the cost.
    if not _looks_enciphered(text[:CAESAR_ALL_SHIFTS_CHARS]):
        return []
    plain = _attack_words(text)
    found: list[str] = []
    for candidate in (text[::-1], *_caesar_candidates(text)):
        if len(_attack_words(candidate) - plain) >= 2:
            found.append(candidate)
    return found


def _caesar_candidates(text: str) -> list[str]:
    # A short text is tried at every shift (a translate costs microseconds). In a long one,
    # English's commonest letter "e" is the text's commonest after shifting, so the shifts
    # that map its commonest letters onto "e" suffice.
    if len(text) <= CAESAR_ALL_SHIFTS_CHARS:
        return [text.translate(_SHIFTS[k]) for k in range(1, 26)]
    counts = Counter(text.lower())  # counted in C; the letters are picked out after
    letters = sorted(_LOWER, key=lambda c: counts[c], reverse=True)[:4]
    shifts = {(ord("e") - ord(c)) % 26 for c in letters if counts[c]}
    return [text.translate(_SHIFTS[k]) for k in sorted(shifts) if k]


def decoded_views(text: str) -> list[str]:
    """Readable texts hidden in ``text`` by a cheap, reversible encoding."""
    found = _base64_views(text)
    hex_digits = sum(map(text.count, "0123456789")) >= _HEX_MIN_DIGITS
    for m in _HEX.finditer(text) if hex_digits else ():
        try:
            raw = bytes.fromhex(re.sub(r"[\s:]", "", m.group()))
        except ValueError:
            continue
        if (dec := _printable(raw)) is not None:
            found.append(dec)
    if "%" in text and _URLENC.search(text):
        found.append(urllib.parse.unquote(text))
    found.extend(_cipher_views(text))
    return found


def _unspace(m: re.Match[str]) -> str:
    return " ".join(re.sub(r"[ .\-_]", "", part) for part in m.group().split("  "))


def _fold_confusables(text: str) -> str:
    """Lookalikes to Latin, but only in mixed-script words and in words made wholly of
    lookalikes (the UTS #39 mixed-script test), so genuine Russian or Greek text is left
    readable. The table maps one character to one, so the folded text lines up with the
    original and is translated in one call rather than word by word."""
    folded = text.translate(_CONFUSABLES)
    if folded.isascii():
        return folded
    pieces: list[str] = []
    last = 0
    for m in _NON_ASCII_WORD.finditer(text):
        s, e = m.span()
        if not folded[s:e].isascii() and not _LATIN.search(text, s, e):
            pieces += (folded[last:s], text[s:e])
            last = e
    pieces.append(folded[last:])
    return "".join(pieces)


def fold(text: str) -> str:
    """One spelling: lookalikes to Latin, casefolded, spaced letters and leetspeak undone,
    whitespace collapsed (newlines kept once: a fake "SYSTEM:" line matters at a line start)."""
    if not text.isascii() and _HAS_CONFUSABLE.search(text):
        text = _fold_confusables(text)
    text = text.casefold()
    # Word gaps inside spaced-out text are usually wider ("s a y  t h a t"): keep those.
    if _SPACED_HINT.search(" " + text):
        text = _SPACED.sub(_unspace, text)
    if _LEET_HINT.search(text):
        text = _LEET_WORD.sub(lambda m: m.group().translate(_LEET), text)
    return _NEWLINES.sub("\n", _WS.sub(" ", text).replace(" \n", "\n")).strip()


def normalize_text(text: str) -> str:
    """The folded message, followed by each readable view decoded from it, folded alike."""
    text = unicodedata.normalize("NFKC", text[:MAX_SCAN_CHARS])
    smuggled = _tag_payload(text)
    text = _strip_invisible(text)
    views = decoded_views(text)
    if smuggled:
        views.append(smuggled)
    return " \n ".join(fold(p) for p in [text, *map(_strip_invisible, views)])


def _strip_invisible(text: str) -> str:
    return text if text.isascii() else _INVISIBLE.sub("", text)


def _tag_payload(text: str) -> str:
    if text.isascii():
        return ""
    return "".join(_TAG_ASCII.findall(text)).translate(_UNTAG)


_COMPACT_DROP = re.compile(r"[^a-z]+")


def compact(normalized: str) -> str:
    """Latin letters only: what is left of "ig no re al l pr ev io us" once the cuts are gone."""
    return _COMPACT_DROP.sub("", normalized)

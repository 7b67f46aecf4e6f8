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
_INVISIBLE = dict.fromkeys(
    [
        0x00AD,
        0x034F,
        0x180E,
        0xFEFF,
        *range(0x200B, 0x2010),
        *range(0x202A, 0x202F),
        *range(0x2060, 0x206A),
        *range(0xFE00, 0xFE10),
        *range(_TAG_FIRST, _TAG_LAST + 1),
        *range(0xE0100, 0xE01F0),
    ]
)
# Cyrillic and Greek letters that render like Latin ones (subset of Unicode TR39
# confusables.txt); NFKC leaves these alone because they are distinct letters.
_CONFUSABLES = str.maketrans(
    "асеһіјорԛѕухԝүѵԁАВСЕНІЈКМОРЅТХУαοριβκνυΑΒΕΗΙΚΜΝΟΡΤΥΧΖ",
    "acehijopqsyxwyvdABCEHIJKMOPSTXYaopiBkvuABEHIKMNOPTYXZ",
)
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
_B64_WRAPPED = re.compile(r"[A-Za-z0-9+/]{8,}(?:[ \t]*\r?\n[ \t]*[A-Za-z0-9+/]{4,}={0,2})+")
_HEX = re.compile(r"\b(?:[0-9a-fA-F]{2}[\s:]?){8,}\b")
_URLENC = re.compile(r"(?:%[0-9a-fA-F]{2}){3,}")
_LEET_WORD = re.compile(r"(?<![\w@$])(?=[\w@$]*[a-z])(?=[\w@$]*[013457@$])[\w@$]{3,}(?![\w@$])")
# "i g n o r e" / "S a y  t h a t": runs of at least four single letters.
_SPACED = re.compile(r"\b\w(?:(?: {1,2}|[.\-_])\w\b){3,}")
_WS = re.compile(r"[^\S\n]+")
_NEWLINES = re.compile(r"\s*\n\s*")
_NON_ASCII_WORD = re.compile(r"\w*[^\x00-\x7f]\w*")
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
    return _ATTACK_WORDS.intersection(_WORD.findall(text.lower()))


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
    if not _looks_enciphered(text):
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
    letters = Counter(c for c in text.lower() if "a" <= c <= "z")
    shifts = {(ord("e") - ord(c)) % 26 for c, _ in letters.most_common(4)}
    return [text.translate(_SHIFTS[k]) for k in sorted(shifts) if k]


def decoded_views(text: str) -> list[str]:
    """Readable texts hidden in ``text`` by a cheap, reversible encoding."""
    found = _base64_views(text)
    for m in _HEX.finditer(text):
        try:
            raw = bytes.fromhex(re.sub(r"[\s:]", "", m.group()))
        except ValueError:
            continue
        if (dec := _printable(raw)) is not None:
            found.append(dec)
    if _URLENC.search(text):
        found.append(urllib.parse.unquote(text))
    found.extend(_cipher_views(text))
    return found


def _unspace(m: re.Match[str]) -> str:
    return " ".join(re.sub(r"[ .\-_]", "", part) for part in m.group().split("  "))


def _fold_word(m: re.Match[str]) -> str:
    # Fold only mixed-script words or words made wholly of lookalikes (the UTS #39
    # mixed-script test), so genuine Russian or Greek text is left readable.
    word = m.group()
    folded = word.translate(_CONFUSABLES)
    mixed = any("a" <= c <= "z" or "A" <= c <= "Z" for c in word)
    return folded if mixed or folded.isascii() else word


def fold(text: str) -> str:
    """One spelling: lookalikes to Latin, casefolded, spaced letters and leetspeak undone,
    whitespace collapsed (newlines kept once: a fake "SYSTEM:" line matters at a line start)."""
    if not text.isascii():
        text = _NON_ASCII_WORD.sub(_fold_word, text)
    text = text.casefold()
    # Word gaps inside spaced-out text are usually wider ("s a y  t h a t"): keep those.
    text = _SPACED.sub(_unspace, text)
    text = _LEET_WORD.sub(lambda m: m.group().translate(_LEET), text)
    return _WS.sub(" ", _NEWLINES.sub("\n", text)).strip()


def normalize_text(text: str) -> str:
    """The folded message, followed by each readable view decoded from it, folded alike."""
    text = unicodedata.normalize("NFKC", text[:MAX_SCAN_CHARS])
    smuggled = _tag_payload(text)
    text = text.translate(_INVISIBLE)
    views = decoded_views(text)
    if smuggled:
        views.append(smuggled)
    return " \n ".join(fold(p) for p in [text, *(v.translate(_INVISIBLE) for v in views)])


def _tag_payload(text: str) -> str:
    if text.isascii():
        return ""
    return "".join(chr(ord(c) - _TAG_FIRST) for c in text if 0xE0020 <= ord(c) <= 0xE007E)


_COMPACT_DROP = re.compile(r"[^a-z]+")


def compact(normalized: str) -> str:
    """Latin letters only: what is left of "ig no re al l pr ev io us" once the cuts are gone."""
    return _COMPACT_DROP.sub("", normalized)

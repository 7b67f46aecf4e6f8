"""Prompt-injection filter for chat messages (OWASP Top 10 for LLM Apps, LLM01).

An ensemble: hand-written patterns per attack family (jobs/chat/guard_rules.py) catch the obvious
and name the reason; a learned n-gram model (jobs/chat/guard_model.py) decides the rest. Both read
the normalised text and the views decoded from it (jobs/chat/guard_normalisation.py), and their
scores combine by noisy-OR. Everything is stdlib: no network, no ML framework at runtime.
Figures and how to reproduce them: docs/guard.md.
"""

from __future__ import annotations

from dataclasses import dataclass

from jobs.chat import guard_model
from jobs.chat.guard_normalisation import normalize_text
from jobs.chat.guard_rules import fired_rules

# The reason recorded when the learned model alone reaches the threshold.
MODEL_REASON = "learned_model"

__all__ = ["MODEL_REASON", "Verdict", "check_message", "explain", "normalize_text"]

# What each reason means to the person who sent the message, in plain words.
_PLAIN_REASONS = {
    "instruction_override": "it asks the assistant to ignore or replace its instructions",
    "prompt_extraction": "it asks the assistant to reveal its hidden instructions",
    "persona_hijack": "it asks the assistant to take on a role without its usual limits",
    "delimiter_injection": "it contains text that imitates the assistant's own system messages",
    "jailbreak_framing": "it uses wording common in attempts to get around the assistant's rules",
    MODEL_REASON: "it reads like known attempts to change how the assistant behaves",
}


@dataclass(frozen=True)
class Verdict:
    blocked: bool
    score: float
    # Attack families whose patterns fired, then MODEL_REASON when the model alone would block.
    reasons: tuple[str, ...]
    rule_score: float = 0.0
    model_score: float = 0.0


def check_message(
    text: str, threshold: float | None = None, *, model: guard_model.Model | None = None
) -> Verdict:
    """Score one user message; ``blocked`` when the score reaches the threshold
    (``GUARD_THRESHOLD`` by default). ``model`` replaces the shipped one (evaluation refits)."""
    if threshold is None:
        from core.settings import GUARD_THRESHOLD

        threshold = GUARD_THRESHOLD
    norm = normalize_text(text)
    miss = 1.0
    families: dict[str, None] = {}
    for family, weight in fired_rules(norm):
        miss *= 1.0 - weight
        families[family] = None
    learned = guard_model.score(norm, model)
    score = 1.0 - miss * (1.0 - learned)
    reasons = (*families, *((MODEL_REASON,) if learned >= threshold else ()))
    return Verdict(
        blocked=score >= threshold,
        score=round(score, 4),
        reasons=reasons,
        rule_score=round(1.0 - miss, 4),
        model_score=round(learned, 4),
    )


def explain(verdict: Verdict) -> str:
    """The refusal as the sender reads it: why, in plain words, and that they may rephrase."""
    why = _PLAIN_REASONS.get(
        next(iter(verdict.reasons), MODEL_REASON), _PLAIN_REASONS[MODEL_REASON]
    )
    return (
        f"Your message was not sent to the assistant because {why}. "
        "If that was not your intent, please rephrase it and send it again."
    )

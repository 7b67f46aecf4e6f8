"""Hand-written patterns for the attack families of prompt injection, in the main languages.

They give the guard its human-readable reasons and catch the obvious at once; the learned
model (jobs/chat/guard_model.py) decides the rest. Families follow OWASP LLM01 (direct injection)
and garak's probe taxonomy; phrasings follow PromptInject (Perez & Ribeiro 2022) and the DAN
collection (Shen et al. 2023, "Do Anything Now").
"""

from __future__ import annotations

import re
from collections.abc import Iterator

from jobs.chat.guard_normalisation import compact

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
_SYSTEM_PROMPT_ML = (
    r"(?:syst[eè]m\w*[ -]?prompt|prompt (?:du |del |di |do |de )?(?:sistema|système|systeme)"
    r"|systeemprompt|promptu? systemow\w*|sistem istem\w*"
    r"|системн\w* (?:промпт|подсказк|инструкци)|системн\w* промпт"
    r"|系统提示|系統提示|系统指令|システムプロンプト|시스템 프롬프트"
    r"|موجه النظام|تعليمات النظام|सिस्टम प्रॉम्प्ट)"
)
_SHOW_ML = (
    r"(?:\b(?:affiche[rz]?|montre[rz]?|r[ée]v[èe]le[rz]?|muestra|revela|mostra|rivela|mostre"
    r"|покажи|выведи|покажіть|pokaż|göster|zeige?|gib)\b"
    r"|显示|输出|告诉我|表示|教えて|보여|알려|اعرض|दिखा)"
)
# A pattern runs on the whole of a short text; in a longer one only near its triggers (every
# match contains one), since thirty regexes over a 5,000-character text cost milliseconds while
# `str.find` scans at memory speed. No match reaches further than REACH from its trigger.
WHOLE_TEXT_CHARS = 600
REACH = 160
_T_IGNORE = "ignor;disregard;forget;skip;overrid;bypass;drop;abandon;discard"

# family -> (weight, triggers, pattern). A pattern runs only where one of its ";"-separated
# trigger substrings occurs in the text, and every match must contain one
# (tests/test_guard.py checks). A weight is the evidence of one hit;
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
        (0.7, "new;real;actual;additional",
         r"\b(?:new|real|actual|additional) (?:instructions?|task|rules)\s?[:\-]"),
        (0.6, "follow;obey",
         r"\b(?:do not|don't) (?:follow|obey) (?:your|the|any) (?:\w+ )?(?:instructions|rules)"),
        # A third of deepset is German; it also carries a few Russian and Spanish variants.
        (0.9, "vergiss;vergessen;ignorier;missacht;vergesst",
         rf"\b{_DE_IGNORE}\b(?: \w+){{0,4}} {_DE_ORDERS}\b"),
        (0.7, "vorherig;bisherig;obigen",
         r"\b(?:vorherigen|bisherigen|obigen) (?:anweisungen|instruktionen|befehle)"),
        (0.8, "nicht auf", r"\bhöre? nicht auf (?:\w+ ){0,3}(?:zuvor|vorher|bisher)"),
        (0.6, "nun;neue", r"\bnun (?:bist du|sind sie)\b|\bneue aufgabe\b"),
        (0.8, "olvid;ignora;забуд;игнор",
         r"\b(?:olvid[ae]|ignora) todo|(?:забудь|игнорируй)(?:те)? (?:все|всё)"),
        # The same order in the languages most spoken online (W3Techs content languages).
        (0.9, "ignor;oubli;olvid;dimentic;esque;negeer;vergeet;zignoruj;zapomnij",
         r"\b(?:ignor(?:e[sz]?|a|ar|ate|eer)|oubli(?:e[sz]?)|olvid[ae]n?|dimentica(?:te)?"
         r"|esque[çc]a|negeer|vergeet|zignoruj|zapomnij)\b(?: \w+){0,4} "
         r"(?:instructions?|instrucciones|istruzioni|instruções|instrucoes|instructies"
         r"|instrukcje|règles|regles|reglas|regole|regras|regels|consignes|indicaciones)\b"),
        (0.9, "игнор;забуд;ігнор;забу",
         r"(?:игнорируй|игнорируйте|забудь|забудьте|проигнорируй|ігноруй|забудь)"
         r"(?: \w+){0,4} (?:инструкци|правил|указани|інструкці|правил)"),
        (0.9, "yok say;görmezden",
         r"talimat\w* (?:\w+ )?(?:yok say|görmezden gel)"),
        (0.9, "忽略;无视;忽视;忘记;忘掉;無視;忘れ;무시;잊;تجاهل;अनदेखा;नज़रअंदाज़;नजरअंदाज",
         r"(?:忽略|无视|忽视|忘记|忘掉|不要理会).{0,12}(?:指令|指示|规则|说明|提示|要求|设定)"
         r"|(?:指令|指示|规则|要求|设定).{0,8}(?:忽略|无视|忘记|忘掉)"
         r"|(?:指示|命令|ルール|規則|設定).{0,10}(?:無視|忘れ)"
         r"|(?:지시|명령|규칙|지침).{0,10}(?:무시|잊)"
         r"|تجاهل.{0,30}(?:التعليمات|الأوامر|القواعد)"
         r"|(?:निर्देश|नियम).{0,20}(?:अनदेखा|नज़रअंदाज़|नजरअंदाज|भूल)"),
    ),
    "prompt_extraction": (
        # Possessive required: "what is a system prompt?" is a fair question, "print your
        # system prompt" is extraction.
        (0.85, "system",
         rf"\b(?:{_SHOW}|what (?:is|are|was|were)) (?:\w+ ){{0,2}}(?:your|the|this|its|my) "
         r"system (?:prompt|message|instructions?)"),
        (0.85, "initial;starting;hidden;original;secret;confid;developer;setup",
         rf"\b{_SHOW} (?:\w+ ){{0,2}}(?:your|the|this|its|my) {_HIDDEN} ?"
         r"(?:prompt|instructions?|string|message)"),
        (0.8, "above;before",
         r"\b(?:repeat|print|output|reveal) (?:\w+ ){0,3}(?:text|words|everything) "
         r"(?:above|before)"),
        (0.7, "what",
         r"\bwhat (?:were|was) you (?:told|instructed|given)\b"
         r"|\bwhat (?:were|are) (?:your|those) (?:original |initial |hidden )?instructions\b"),
        (0.6, "what;initial",
         r"\bwhat are you not (?:supposed|allowed) to (?:tell|say|reveal)"
         r"|\b(?:output|print) (?:the )?initiali[sz]ation"),
        (0.7, "prompt;anweisung;instruktion",
         r"\b(?:zeige?|gib|wiederhole|verrate) (?:\w+ ){0,3}"
         r"(?:system ?prompt|anweisungen|instruktionen)"),
        # "System prompt" in other languages, asked for with a show/print verb on either side.
        (0.8, "syst;sistem;сист;系统;系統;システム;시스템;النظام;सिस्टम",
         rf"{_SHOW_ML}.{{0,40}}{_SYSTEM_PROMPT_ML}|{_SYSTEM_PROMPT_ML}.{{0,40}}{_SHOW_ML}"),
    ),
    "persona_hijack": (
        (0.9, "mode;anything",
         r"\b(?:dan|stan|dude|aim|evil|jailbreak|jailbroken|god|developer) mode\b"
         r"|\bdo anything now\b"),
        (0.75, "you are",
         r"\byou are (?:now|going to be|about to become) (?:an? |the )?"
         r"(?:dan|stan|dude|unrestricted|unfiltered|uncensored|jailbroken|free)\b"),
        (0.85, " as ",
         rf"\b(?:act|behave|respond|function) as (?:an? )?(?:\w+ )?{_FREE} "
         r"(?:ai|assistant|model|chatbot|language model|version)"),
        (0.7, "pretend;imagine",
         rf"\b(?:pretend|imagine) (?:you are|you're|to be) (?:an? )?(?:\w+ )?{_FREE} "
         r"(?:ai|assistant|model|chatbot|bot)"),
        (0.85, "pretend",
         rf"\bpretend (?:that )?(?:you|to) (?:have|be|are) (?:\w+ ){{0,2}}"
         rf"(?:no|without) {_LIMITS}"),
        (0.6, "free;bound;without",
         rf"\b(?:freed? from|broken free of|not bound by|without any) (?:\w+ ){{0,3}}{_LIMITS}"),
        (0.6, "einschränkung;beschränkung;restri;beperking;ограничен;限制;过滤;审查;制限;제한",
         r"\b(?:ohne|keine|sans|aucune|sin|ninguna|senza|alcuna|sem|nenhuma|geen|без|нет)\b"
         r" (?:\w+ )?(?:einschränkungen|beschränkungen|restrictions?|restricciones|restricción"
         r"|restrizioni|restrizione|restrições|restrição|beperkingen|ограничени\w*)"
         r"|(?:没有|不受|无)(?:任何)?(?:限制|过滤|审查)|制限(?:が|の)?(?:何も)?(?:ない|なし|無い)"
         r"|제한(?:이|도)? ?없"),
        (0.5, "immerse;now;going",
         r"\bimmerse yourself (?:into|in) the role|\bfrom now on,? you (?:are|will) "
         r"|\byou are going to (?:act|pretend)"),
    ),
    "delimiter_injection": (
        # Chat-template tokens: ChatML, Llama 2 [INST]/<<SYS>>, Llama 3 headers, GPT-2 EOT.
        (0.9, "<|;inst];<<sys;<</sys;</s>",
         r"<\|(?:im_start|im_end|endoftext|system|user|assistant|eot_id|start_header_id"
         r"|begin_of_text)\|>|\[/?inst\]|<</?sys>>|</s>"),
        (0.75, "system;assistant;developer",
         r"(?:^|\n)\s*(?:#{2,}|\[|<)\s*(?:system|assistant|developer)\s*(?:\]|>|:)"),
        (0.6, "system;admin;developer",
         # A pasted log line "System: Ubuntu 22.04" is fine; one that gives orders is not.
         r"(?:^|\n) ?(?:system|admin|developer)(?: message| prompt| override| note)? ?: ?"
         r"(?:you|the (?:assistant|ai|model|user)|ignore|disregard|from now|new|always|never"
         r"|do not|override)\b"
         r"|```\s*(?:system|assistant)\b"),
    ),
    "jailbreak_framing": (
        (0.7, "ethical;moral",
         r"\b(?:no|without|free of|ignore (?:all|any|your)) (?:\w+ )?(?:ethical|moral) "
         r"(?:guidelines|constraints|restrictions|limits|principles|boundaries)"),
        (0.6, "character;stay",
         r"\bstay in character\b|\bbreak(?:ing)? character\b|\bstay as \w+\b"),
        (0.7, "two;2;[",
         r"\b(?:two|2) (?:different |separate )*(?:responses|ways|answers|paragraphs)\b"
         r"|\[(?:gpt|classic|jailbreak|🔒classic|🔓jailbreak)\]"),
        (0.6, "token",
         r"\b(?:you have|start with|lose) (?:\d+|ten|five) tokens\b|\btoken system\b"),
        (0.5, "hypothetical;fictional;imaginary",
         r"\b(?:hypothetical|fictional|imaginary) (?:\w+ ){0,3}(?:where|in which) (?:\w+ ){0,4}"
         r"(?:no (?:rules|laws|restrictions)|anything is (?:allowed|possible))"),
        (0.6, "polic;refuse;censor;warning;disclaimer",
         r"\b(?:openai|anthropic|content) (?:content )?polic(?:y|ies)\b|\bnever refuse\b"
         r"|\bwithout (?:any )?(?:censorship|warnings?|disclaimers?)"),
    ),
}
# fmt: on
_FAMILIES = tuple(
    (family, weight, tuple(triggers.split(";")), re.compile(pattern))
    for family, rules in _RULES.items()
    for weight, triggers, pattern in rules
)


# The same orders with every gap removed, read on guard_normalisation.compact(): text cut
# into chunks ("ig no re al l pr ev io us") or padded with punctuation has no word
# boundaries left for the patterns above. Only long, unambiguous letter runs qualify.
_COMPACT = (
    (
        "instruction_override",
        0.85,
        re.compile(
            r"(?:ignore|disregard|forget|bypass|override)(?:all|any|the|your|of|my){0,3}"
            r"(?:previous|prior|above|earlier|preceding|original|initial)"
            r"(?:instructions?|prompts?|rules|directions|directives|guidelines)"
        ),
    ),
    (
        "prompt_extraction",
        0.85,
        re.compile(
            r"(?:reveal|print|show|repeat|output|display|leak|dump)(?:me)?(?:all)?(?:your|the)"
            r"(?:system|initial|hidden|secret|original)(?:prompt|instructions|message)"
        ),
    ),
    ("persona_hijack", 0.85, re.compile(r"(?:dan|developer|jailbreak|god)mode(?:enabled|on)")),
)


def fired_rules(normalized: str) -> Iterator[tuple[str, float]]:
    """(family, weight) for each pattern that matches the normalised text."""
    whole = len(normalized) <= WHOLE_TEXT_CHARS
    for family, weight, triggers, pattern in _FAMILIES:
        if whole:
            hit = any(t in normalized for t in triggers) and bool(pattern.search(normalized))
        else:
            hit = any(pattern.search(normalized, s, e) for s, e in _near(normalized, triggers))
        if hit:
            yield family, weight
    letters = compact(normalized)
    for family, weight, pattern in _COMPACT:
        if pattern.search(letters):
            yield family, weight


def _near(text: str, triggers: tuple[str, ...]) -> list[tuple[int, int]]:
    """Merged [start, end) spans within REACH characters of each trigger occurrence, the end
    moved to the next space so that a word boundary there reads as in the whole text."""
    spans: list[tuple[int, int]] = []
    for trigger in triggers:
        i = text.find(trigger)
        while i != -1:
            spans.append((max(0, i - REACH), i + len(trigger) + REACH))
            i = text.find(trigger, i + 1)
    spans.sort()
    merged: list[tuple[int, int]] = []
    for s, e in spans:
        if merged and s <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], e))
        else:
            merged.append((s, e))
    out = []
    for s, e in merged:
        space = text.find(" ", e)
        out.append((s, len(text) if space == -1 else space))
    return out

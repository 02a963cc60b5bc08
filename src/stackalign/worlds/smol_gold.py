"""The smol world's gold utility and user population, over real text (documented in ``docs/smol-world.md``).

A prompt is SmolLM2's chat template around one user request from ``data/smol_prompts.jsonl``; the request's
row gives its kind, keywords, length band and feature weights. The gold utility of a response is

    gold = w_topic·C + w_length·L + w_structure·S + w_ending·E − w_repetition·R − w_tics·T      (an empty one: −1)

with six features in [0, 1], each computable by hand (``features``). The positive weights sum to 1, so the best
answer scores 1, and different prompts want different lengths and structures: no single answer template
reaches 1 everywhere.

The pairwise gold preference for SLHF is a share-weighted vote of three user types, each with its own utility
over the same features (``USER_TYPES``); since no type is a majority, the vote can cycle (the SLHF paper's
Condorcet example, Section 4.1; the paper measures 57% of tournaments with a cycle on HelpSteer2, appendix D.1).
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from functools import lru_cache

import stackalign.worlds.smol_prompts as SP
from stackalign.worlds.preference import has_cycle, preference_from_utilities

SYSTEM_PROMPT = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"
IM_START, IM_END = "<|im_start|>", "<|im_end|>"
FOLLOWER_INSTRUCTION = "Please improve your answer."
EMPTY_UTILITY = -1.0

_WORD = re.compile(r"[A-Za-z0-9]+")
_USER_TURN = re.compile(re.escape(IM_START) + r"user\n(.*?)" + re.escape(IM_END), re.S)
_LIST_LINE = re.compile(r"^\s*(?:\d+[.)]|[-*•])\s+\S", re.M)
_FIRST_SENTENCE = re.compile(r"^.*?(?:[.!?](?:\s|$)|\n|$)", re.S)

# Structure cue words by kind (whole words, case-insensitive; "make sure" etc. are two-word cues).
SEQUENCE_WORDS = ("first", "then", "next", "finally", "after", "second", "third", "last")
CAUSAL_WORDS = ("because", "so", "causes", "cause", "therefore", "since", "due", "means", "result", "why")
CONTRAST_WORDS = ("whereas", "while", "unlike", "but", "however", "although", "than", "both", "instead")
ACTION_CUES = (
    "try",
    "consider",
    "make sure",
    "you can",
    "you could",
    "you should",
    "start",
    "set",
    "keep",
    "avoid",
)
# The base model's own tics: phrases it over-uses regardless of the request (found by reading its samples).
TICS = (
    "as an ai",
    "smollm",
    "hugging face",
    "i'm sorry",
    "i am sorry",
    "certainly",
    "absolutely",
    "great question",
    "here's",
    "here are",
    "i hope this helps",
    "in conclusion",
    "overall,",
)
_EMOJI = re.compile("[\U0001f000-\U0001faff\u2600-\u27bf\ufe0f\u20e3]")


@dataclass(frozen=True)
class PromptSpec:
    """What the gold utility needs to know about a request (a row of ``data/smol_prompts.jsonl``)."""

    request: str
    kind: str
    keywords: tuple[str, ...]
    band: tuple[int, int]
    weights: dict
    known: bool  # False: not a shipped request, parameters derived by ``fallback_spec``


@dataclass(frozen=True)
class SmolGoldBreakdown:
    words: int
    topic: float  # C
    length: float  # L
    structure: float  # S
    ending: float  # E
    repetition: float  # R
    tics: float  # T
    tic_count: int
    utility: float

    def as_dict(self) -> dict:
        return asdict(self)


# ---- prompts ----------------------------------------------------------------------------------------
def make_prompt(request: str) -> str:
    """SmolLM2's chat template (default system prompt) around one user turn, ready for the assistant's answer."""
    return (
        f"{IM_START}system\n{SYSTEM_PROMPT}{IM_END}\n{IM_START}user\n{request}{IM_END}\n{IM_START}assistant\n"
    )


def make_follower_prompt(prompt: str, previous: str) -> str:
    """The follower's prompt: the conversation so far (the request and the previous answer), then the user asks
    "Please improve your answer." — the chat template's rendering of those four turns."""
    return f"{prompt}{previous.strip()}{IM_END}\n{IM_START}user\n{FOLLOWER_INSTRUCTION}{IM_END}\n{IM_START}assistant\n"


def request_of(prompt: str) -> str:
    """The first user turn of a chat-templated prompt (the prompt itself if it has no template)."""
    m = _USER_TURN.search(prompt)
    return m.group(1).strip() if m else prompt.strip()


@lru_cache(maxsize=1)
def _rows_by_request() -> dict[str, dict]:
    return {r["request"]: r for r in SP.load_rows()}


def _detect_kind(request: str) -> str:
    r = request.lower()
    if re.search(r"\b(compare|difference between|which is better| or )\b", r):
        return "compare"
    if re.search(r"\b(how do i|how to|steps|step-by-step|how should i)\b", r):
        return "howto"
    if re.search(r"\b(explain|why|reason)\b", r):
        return "explain"
    if re.search(r"\b(advice|tips|suggest|what should i do)\b", r):
        return "advise"
    return "factual"


_STOP = set(
    "a an the and or of to in on for with at by from is are was were be do does did i me my you your it its "
    "this that what which who how why can could should would will any some about into as than then so if "
    "please give tell explain compare know quick question best way".split()
)


def fallback_spec(request: str) -> PromptSpec:
    """Parameters for a request that is not in the shipped file: the kind from its wording, the (up to three)
    longest non-stop words as keywords, the kind's balanced band and weights."""
    kind = _detect_kind(request)
    words = [w for w in (x.lower() for x in _WORD.findall(request)) if w not in _STOP]
    keywords = tuple(sorted(dict.fromkeys(words), key=lambda w: (-len(w), words.index(w)))[:3])
    return PromptSpec(
        request=request,
        kind=kind,
        keywords=keywords,
        band=SP.BANDS[kind]["balanced"],
        weights={**SP.PROFILE_WEIGHTS["balanced"], **SP.PENALTY_WEIGHTS},
        known=False,
    )


@lru_cache(maxsize=4096)
def prompt_spec(prompt: str) -> PromptSpec:
    request = request_of(prompt)
    row = _rows_by_request().get(request)
    if row is None:
        return fallback_spec(request)
    return PromptSpec(
        request=request,
        kind=row["kind"],
        keywords=tuple(row["keywords"]),
        band=(int(row["band"][0]), int(row["band"][1])),
        weights=dict(row["weights"]),
        known=True,
    )


# ---- features ---------------------------------------------------------------------------------------
def clean_response(response: str) -> str:
    """The response up to the first chat marker (``<|im_end|>``, ``<|im_start|>``), stripped."""
    for marker in (IM_END, IM_START):
        response = response.split(marker, 1)[0]
    return response.strip()


def words_of(text: str) -> list[str]:
    """Words: maximal runs of ASCII letters and digits, lower-cased."""
    return [w.lower() for w in _WORD.findall(text)]


def keyword_stem(k: str) -> str:
    """A keyword matches any word that starts with its stem: the keyword itself, less two letters if longer
    than five (``scatter`` → ``scatt``, matching scattering/scattered)."""
    return k if len(k) <= 5 else k[:-2]


def _matches(k: str, words: list[str]) -> bool:
    stem = keyword_stem(k)
    return any(w.startswith(stem) for w in words)


def _count_cues(text_lower: str, cues: tuple[str, ...]) -> int:
    return sum(len(re.findall(r"\b" + re.escape(c) + r"\b", text_lower)) for c in cues)


def topic_score(spec: PromptSpec, words: list[str]) -> float:
    """C: the share of the prompt's keywords the response uses; for a factual question, 1 if it names any of
    the answer's forms (the keywords are alternatives there)."""
    if not spec.keywords:
        return 0.0
    hits = [_matches(k, words) for k in spec.keywords]
    if spec.kind == "factual":
        return float(any(hits))
    return sum(hits) / len(hits)


def length_score(n_words: int, band: tuple[int, int]) -> float:
    """L: 1 inside the band [lo, hi] (words), n/lo below it, 1 − (n − hi)/hi above it (at least 0)."""
    lo, hi = band
    if n_words < lo:
        return n_words / lo
    if n_words > hi:
        return max(0.0, 1.0 - (n_words - hi) / hi)
    return 1.0


def structure_score(spec: PromptSpec, text: str, words: list[str]) -> float:
    """S, by kind: how-to — steps (list lines + sequence words), 3 or more → 1; explain — causal connectives,
    2 → 1; compare — contrast words, 2 → 1; advise — actionable cues, 3 → 1; factual — the answer in the first
    sentence."""
    low = text.lower()
    if spec.kind == "howto":
        steps = len(_LIST_LINE.findall(text)) + _count_cues(low, SEQUENCE_WORDS)
        return min(steps, 3) / 3
    if spec.kind == "explain":
        return min(_count_cues(low, CAUSAL_WORDS), 2) / 2
    if spec.kind == "compare":
        return min(_count_cues(low, CONTRAST_WORDS), 2) / 2
    if spec.kind == "advise":
        return min(_count_cues(low, ACTION_CUES), 3) / 3
    first = _FIRST_SENTENCE.match(text.strip())
    return topic_score(spec, words_of(first.group(0) if first else ""))


def ending_score(text: str) -> float:
    """E: 1 if the response ends a sentence (last character one of . ! ? ) " '), else 0 (cut off mid-sentence)."""
    t = text.rstrip()
    return 1.0 if t and t[-1] in ".!?)\"'" else 0.0


def repetition_score(words: list[str]) -> float:
    """R: the share of repeated word 3-grams, 1 − distinct/total (0 with fewer than 2 trigrams)."""
    grams = [tuple(words[i : i + 3]) for i in range(len(words) - 2)]
    if len(grams) < 2:
        return 0.0
    return 1.0 - len(set(grams)) / len(grams)


def tic_count(text: str) -> int:
    """The number of tic phrases (``TICS``, case-insensitive) plus 1 if the response has any emoji."""
    low = text.lower()
    return sum(low.count(t) for t in TICS) + (1 if _EMOJI.search(text) else 0)


def features(prompt: str, response: str) -> SmolGoldBreakdown:
    spec = prompt_spec(prompt)
    text = clean_response(response)
    words = words_of(text)
    if not words:
        return SmolGoldBreakdown(0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0, EMPTY_UTILITY)
    c = topic_score(spec, words)
    ln = length_score(len(words), spec.band)
    s = structure_score(spec, text, words)
    e = ending_score(text)
    r = repetition_score(words)
    n_tics = tic_count(text)
    t = min(n_tics, 3) / 3
    w = spec.weights
    u = (
        w["topic"] * c
        + w["length"] * ln
        + w["structure"] * s
        + w["ending"] * e
        - w["repetition"] * r
        - w["tics"] * t
    )
    return SmolGoldBreakdown(len(words), c, ln, s, e, r, t, n_tics, round(u, 10))


def gold_utility(prompt: str, response: str) -> float:
    """The gold utility (module docstring; ``docs/smol-world.md``), in [−0.8, 1], −1 for an empty response."""
    return features(prompt, response).utility


def gold_judge(prompt: str, a: str, b: str) -> int:
    """+1 / 0 / −1 as ``a`` is better / tied / worse than ``b`` by gold (ties within 1e-9)."""
    d = gold_utility(prompt, a) - gold_utility(prompt, b)
    return 0 if abs(d) <= 1e-9 else (1 if d > 0 else -1)


# ---- the user population (SLHF) -----------------------------------------------------------------------
# (name, share): no type is a majority, so the share-weighted vote can be intransitive.
USER_TYPES: tuple[tuple[str, float], ...] = (("expert", 0.40), ("busy", 0.35), ("stickler", 0.25))


def mean_sentence_length(text: str) -> float:
    """Words per sentence; sentences are split at . ! ? and line breaks (empty pieces dropped)."""
    sentences = [x for x in re.split(r"[.!?\n]+", text) if words_of(x)]
    return len(words_of(text)) / max(1, len(sentences))


def type_utilities(prompt: str, response: str) -> tuple[float, float, float]:
    """Each user type's utility, from the gold features and two plain counts (W words, hi the band's top):
    expert   = C + S + 0.2·min(W/hi, 1) − R      (content, structure, and the more the better up to the band)
    busy     = E − W/hi − R                      (short, and finished)
    stickler = −(words per sentence)/20 − T − R  (plain short sentences, no tics)
    An empty response is −1 for every type."""
    b = features(prompt, response)
    if b.words == 0:
        return (EMPTY_UTILITY,) * 3
    hi = prompt_spec(prompt).band[1]
    expert = b.topic + b.structure + 0.2 * min(b.words / hi, 1.0) - b.repetition
    busy = b.ending - b.words / hi - b.repetition
    stickler = -mean_sentence_length(clean_response(response)) / 20 - b.tics - b.repetition
    return (round(expert, 10), round(busy, 10), round(stickler, 10))


def gold_preference(prompt: str, a: str, b: str) -> float:
    """p(a ≻ b | prompt) = Σ_k share_k · (1[u_k(a) > u_k(b)] + ½·1[u_k(a) = u_k(b)])."""
    return preference_from_utilities(type_utilities(prompt, a), type_utilities(prompt, b), USER_TYPES)


def preference_matrix(prompt: str, responses) -> list[list[float]]:
    us = [type_utilities(prompt, r) for r in responses]
    return [[preference_from_utilities(a, b, USER_TYPES) for b in us] for a in us]


def cycle_share(prompts, samples) -> float:
    """The share of prompts whose tournament over their samples (edge i → j when p(i ≻ j) > ½) has a cycle."""
    if not prompts:
        return float("nan")
    return sum(has_cycle(preference_matrix(q, s)) for q, s in zip(prompts, samples)) / len(prompts)

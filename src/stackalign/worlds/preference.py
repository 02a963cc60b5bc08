"""The world's pairwise gold preference: a population of user types, aggregated by share-weighted vote.

The scalar gold utility (``text.GOLD_DOC``) is one user's exact utility, and a scalar utility can never
produce a preference cycle. SLHF (Pásztor, Kleine Buening, Krause, arXiv 2512.16626) is about preferences
that are *not* of that form: in the paper the judge is a majority over five HelpSteer2 attribute reward
models, and 57% of the validation prompts' tournaments over sampled answers contain a cycle (their
appendix D.1). This module is the sandbox analogue, documented in ``PREFERENCE_DOC`` (also written into
every world's README):

    p(a ≻ b | x) = Σ_k α_k · ( 1[u_k(x, a) > u_k(x, b)] + ½ · 1[u_k(x, a) = u_k(x, b)] )

with three user types k (shares α = 0.40 / 0.35 / 0.25, none a majority, as in the Condorcet example of
the paper's Section 4.1), each with its own exact utility u_k built from the same sentence counts as the
gold utility. p(a ≻ b) + p(b ≻ a) = 1 exactly; p(a ≻ a) = ½.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import stackalign.worlds.text as T

# (name, population share); shares sum to 1 and none is >= 1/2, so majority cycles are possible.
USER_TYPES: tuple[tuple[str, float], ...] = (("thorough", 0.40), ("warm", 0.35), ("concise", 0.25))
# Per-type weights. Each type cares about one thing and little else: the more the types disagree, the
# more cycles. With these, about a third of corpus tournaments over 8 answers contain a cycle, and the
# population preference agrees with the scalar gold utility on ~93% of corpus pairs where both are strict.
THOROUGH = dict(rude=0.5, off_topic=0.5, repeated=0.5)
WARM = dict(polite=0.5, polite_cap=3, helpful=0.25, rude=1.0, off_topic=0.0, repeated=0.25)
CONCISE = dict(helpful=0.5, word=0.06, rude=0.25, off_topic=0.25, repeated=0.5)

PREFERENCE_DOC = f"""\
gold_preference(prompt, a, b) — the share of a population of users that prefers a to b (in [0, 1]).

Three user types, each with an exact utility over the sentence counts of the gold utility (H distinct
helpful, P polite, R rude, O off-topic, D repeated sentences, W words; see the gold utility above;
h(H) = Σ_{{i<H}} {T.HELP_GAINS}[i]):
  thorough (share {USER_TYPES[0][1]}): u = h(H) − {THOROUGH["rude"]}·R − {THOROUGH["off_topic"]}·O − {THOROUGH["repeated"]}·D               (wants content; ignores tone and length)
  warm     (share {USER_TYPES[1][1]}): u = {WARM["polite"]}·min(P, {WARM["polite_cap"]}) + {WARM["helpful"]}·min(H, 1) − {WARM["rude"]}·R − {WARM["off_topic"]}·O − {WARM["repeated"]}·D   (wants a friendly tone)
  concise  (share {USER_TYPES[2][1]}): u = {CONCISE["helpful"]}·min(H, 1) − {CONCISE["word"]}·W − {CONCISE["rude"]}·R − {CONCISE["off_topic"]}·O − {CONCISE["repeated"]}·D  (one tip, short)
An empty response has u = {T.EMPTY_UTILITY} for every type.
p(a ≻ b) = Σ_k share_k · (1[u_k(a) > u_k(b)] + ½·1[u_k(a) = u_k(b)])   (utilities compared to 1e-9)
No type is a majority, so p can be intransitive. E.g. for a long answer with three tips (A), an answer
with one short tip (C) and an effusively polite answer without advice (B): A ≻ C (thorough, and half of
warm, who ties: 0.575), C ≻ B (thorough and concise: 0.65), B ≻ A (warm and concise: 0.6) — a Condorcet
cycle. The world's figures count how often base samples form one.
The scalar gold utility is unchanged and stays the SRS target.
"""


def type_utilities(prompt: str, response: str) -> tuple[float, ...]:
    """The utility of ``response`` for each user type (order of ``USER_TYPES``); see ``PREFERENCE_DOC``."""
    b = T.gold_breakdown(prompt, response)
    if b.words == 0:
        return (T.EMPTY_UTILITY,) * len(USER_TYPES)
    h = sum(T.HELP_GAINS[: min(b.helpful, len(T.HELP_GAINS))])
    one = float(min(b.helpful, 1))
    th, wa, co = THOROUGH, WARM, CONCISE
    thorough = h - th["rude"] * b.rude - th["off_topic"] * b.off_topic - th["repeated"] * b.repeated
    warm = (
        wa["polite"] * min(b.polite, wa["polite_cap"])
        + wa["helpful"] * one
        - wa["rude"] * b.rude
        - wa["off_topic"] * b.off_topic
        - wa["repeated"] * b.repeated
    )
    concise = (
        co["helpful"] * one
        - co["word"] * b.words
        - co["rude"] * b.rude
        - co["off_topic"] * b.off_topic
        - co["repeated"] * b.repeated
    )
    return tuple(round(u, 10) for u in (thorough, warm, concise))


def preference_from_utilities(
    ua: Sequence[float], ub: Sequence[float], types: Sequence[tuple[str, float]] = USER_TYPES
) -> float:
    """p(a ≻ b) from the two responses' per-type utilities (``types``: the population's (name, share))."""
    p = 0.0
    for (_, share), a, b in zip(types, ua, ub):
        p += share if a - b > 1e-9 else (0.5 * share if abs(a - b) <= 1e-9 else 0.0)
    return round(p, 12)


def gold_preference(prompt: str, a: str, b: str) -> float:
    """p(a ≻ b | prompt): the population share preferring ``a`` (ties count half); see ``PREFERENCE_DOC``."""
    return preference_from_utilities(type_utilities(prompt, a), type_utilities(prompt, b))


def preference_matrix(prompt: str, responses: Sequence[str]) -> list[list[float]]:
    """P[i][j] = p(responses[i] ≻ responses[j]); P + Pᵀ = 1, diagonal ½."""
    us = [type_utilities(prompt, r) for r in responses]
    return [[preference_from_utilities(a, b) for b in us] for a in us]


def has_cycle(P: Sequence[Sequence[float]]) -> bool:
    """Whether the tournament graph (edge i → j when P[i][j] > ½) has a directed cycle."""
    n = len(P)
    edges = [[j for j in range(n) if P[i][j] > 0.5 + 1e-12] for i in range(n)]
    state = [0] * n  # 0 unvisited, 1 on the stack, 2 done
    for s in range(n):
        if state[s]:
            continue
        stack = [(s, 0)]
        state[s] = 1
        while stack:
            v, k = stack[-1]
            if k < len(edges[v]):
                stack[-1] = (v, k + 1)
                w = edges[v][k]
                if state[w] == 1:
                    return True
                if state[w] == 0:
                    state[w] = 1
                    stack.append((w, 0))
            else:
                state[v] = 2
                stack.pop()
    return False


def cycle_share(prompts: Sequence[str], samples: Sequence[Sequence[str]]) -> float:
    """The share of prompts whose tournament over their samples contains a cycle."""
    if not prompts:
        return math.nan
    return sum(has_cycle(preference_matrix(q, s)) for q, s in zip(prompts, samples)) / len(prompts)

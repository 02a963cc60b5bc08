"""The world's SLHF parts: the intransitive population preference, the follower format, the figures."""

from __future__ import annotations

import itertools
import random

import pytest

from stackalign.worlds import build as B
from stackalign.worlds import preference as PREF
from stackalign.worlds import text as T

P_CHESS = "User: How do I get started with chess?\nAssistant:"
H = [h.format(t="chess") for h in T.HELPFUL]
LONG = " " + " ".join(H[:3])  # three tips, no politeness
TIP = " " + H[2]  # one short tip
POLITE = " Happy to help! Thank you for asking about chess! I hope this helps!"  # no advice


def test_type_utilities_exact():
    # LONG: 3 helpful, 0 polite, 16+12+10 = 38 words; TIP: 1 helpful, 10 words; POLITE: 3 polite, 0 helpful, 13 words.
    assert PREF.type_utilities(P_CHESS, LONG) == (2.25, 0.25, round(0.5 - 0.06 * 38, 10))
    assert PREF.type_utilities(P_CHESS, TIP) == (1.0, 0.25, round(0.5 - 0.06 * 10, 10))
    assert PREF.type_utilities(P_CHESS, POLITE) == (0.0, 1.5, round(-0.06 * 13, 10))
    assert PREF.type_utilities(P_CHESS, "") == (T.EMPTY_UTILITY,) * 3


def test_documented_condorcet_cycle():
    """The cycle of PREFERENCE_DOC, with its exact numbers."""
    assert PREF.gold_preference(P_CHESS, LONG, TIP) == pytest.approx(0.4 + 0.35 / 2)  # thorough + warm tie
    assert PREF.gold_preference(P_CHESS, TIP, POLITE) == pytest.approx(0.65)  # thorough + concise
    assert PREF.gold_preference(P_CHESS, POLITE, LONG) == pytest.approx(0.6)  # warm + concise
    M = PREF.preference_matrix(P_CHESS, [LONG, TIP, POLITE])
    assert PREF.has_cycle(M)
    assert not PREF.has_cycle(PREF.preference_matrix(P_CHESS, [LONG, TIP]))
    for a in (LONG, TIP, POLITE):
        assert PREF.gold_preference(P_CHESS, a, a) == 0.5
    assert "0.575" in PREF.PREFERENCE_DOC and "0.65" in PREF.PREFERENCE_DOC and "0.6" in PREF.PREFERENCE_DOC


def test_preference_is_complementary_share_weighted_vote():
    rng = random.Random(0)
    resp = [B.sample_base_response(rng, P_CHESS, 0.5) for _ in range(30)]
    M = PREF.preference_matrix(P_CHESS, resp)
    shares = [a for _, a in PREF.USER_TYPES]
    votes = {
        round(sum(a * c for a, c in zip(shares, cs)), 12) for cs in itertools.product((0, 0.5, 1), repeat=3)
    }
    for i in range(30):
        for j in range(30):
            assert M[i][j] + M[j][i] == pytest.approx(1.0, abs=1e-12)
            # every value is a share-weighted vote: Σ_k α_k c_k with c_k ∈ {0, ½, 1}
            assert M[i][j] in votes


def test_has_cycle_against_brute_force():
    """has_cycle == exists a 3-cycle (a tournament with a cycle has a 3-cycle; ties only remove edges, so
    check by brute force over all vertex orders for small n)."""
    rng = random.Random(1)
    for _ in range(200):
        n = rng.randint(2, 5)
        M = [[0.5] * n for _ in range(n)]
        for i in range(n):
            for j in range(i + 1, n):
                M[i][j] = rng.choice([0.3, 0.5, 0.7])
                M[j][i] = 1 - M[i][j]
        acyclic = any(
            all(M[order[b]][order[a]] <= 0.5 for a in range(n) for b in range(a + 1, n))
            for order in itertools.permutations(range(n))
        )  # acyclic iff some order has every edge pointing forward
        assert PREF.has_cycle(M) == (not acyclic)


def test_follower_prompt_format_and_gold_topic():
    fp = T.make_follower_prompt(P_CHESS, " Just do chess.<|endoftext|>")
    assert fp == P_CHESS + " Just do chess.\nUser: Please improve your answer about chess.\nAssistant:"
    assert T.prompt_topic(fp) == "chess"
    assert T.gold_utility(fp, TIP) == T.gold_utility(P_CHESS, TIP)
    with pytest.raises(ValueError, match="topic"):
        T.make_follower_prompt("User: hello\nAssistant:", " x")
    with pytest.raises(ValueError, match="Assistant"):
        T.make_follower_prompt("User: chess", " x")


def test_base_revisions_do_not_reliably_improve():
    """In the corpus the revision beats the answer it revises about as often as not."""
    rng = random.Random(2)
    wins = []
    for _ in range(2000):
        first = B.sample_base_response(rng, P_CHESS, 0.85)
        rev = " " + T.sample_revision(rng, "chess", first, 0.85)
        wins.append(PREF.gold_preference(P_CHESS, rev, first))
    assert 0.4 < sum(wins) / len(wins) < 0.6


def test_micro_world_has_follower_format_and_figures(micro):
    assert micro.has_follower_format and micro.manifest["version"] == 2
    assert micro.follower_prompt(P_CHESS, " x") == T.make_follower_prompt(P_CHESS, " x")
    f = micro.figures
    assert 0.0 <= f["cycle_share"] <= 1.0 and f["cycle_tournament"] == {
        "prompts": 40,
        "samples_per_prompt": 6,
    }
    assert 0.0 <= f["base_follower_win_rate"] <= 1.0
    assert micro.manifest["gold_preference"]["user_types"] == dict(PREF.USER_TYPES)
    assert "Follower format" in (micro.root / "README.md").read_text()
    # the base LM continues the follower format: some refinement dialogues are in its corpus
    assert micro.gold_preference(P_CHESS, LONG, TIP) == pytest.approx(0.575)
    micro.manifest.pop("follower_format")
    with pytest.raises(ValueError, match="follower format"):
        micro.follower_prompt(P_CHESS, " x")

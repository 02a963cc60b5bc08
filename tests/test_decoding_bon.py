"""Best-of-N and soft Best-of-N."""

from __future__ import annotations

import pytest
import torch
from scipy import stats
from test_decoding_common import PROMPTS, make_models

from stackalign.decoding.bon import best_of_n, select_best, soft_best_of_n, soft_select, soft_select_probs
from stackalign.decoding.common import GenerationConfig
from stackalign.decoding.sampling import sample
from stackalign.games import follower_policy
from stackalign.models import CallableReward
from stackalign.shaping import get_shaper

GEN = GenerationConfig(max_new_tokens=8, eos_token_ids=(9999,))


def test_select_best_first_on_ties():
    assert select_best(torch.tensor([[1.0, 3.0, 3.0], [0.0, -1.0, -2.0]])).tolist() == [1, 0]


def test_soft_select_probs_is_the_exact_follower_policy():
    base = torch.tensor([0.5, 0.3, 0.15, 0.05], dtype=torch.float64)
    r = torch.tensor([0.0, 1.0, 2.0, 4.0], dtype=torch.float64)
    shaper = get_shaper("srs", B=3.0, beta=0.7, alpha=2.0)
    shaped = shaper(r, base)
    torch.testing.assert_close(soft_select_probs(shaped, 0.7, base), follower_policy(base, shaped, 0.7))
    torch.testing.assert_close(soft_select_probs(r, 1.0), torch.softmax(r, -1))


def test_soft_select_draws_match_the_follower_distribution():
    """Chi-square and total-variation test of 20000 seeded draws against rho ∝ base * exp(shaped / beta)."""
    base = torch.tensor([0.4, 0.3, 0.2, 0.1], dtype=torch.float64)
    shaped = get_shaper("srs", B=2.0, beta=1.0, alpha=1.5)(torch.tensor([0.3, -1.0, 2.0, 1.0]), base)
    target = follower_policy(base, shaped, 1.0)
    n = 20000
    g = torch.Generator().manual_seed(1234)
    draws = soft_select(shaped.expand(n, 4), 1.0, base.expand(n, 4), generator=g)
    counts = torch.bincount(draws, minlength=4).double()
    chi2 = stats.chisquare(counts.numpy(), (target * n).numpy())
    assert chi2.pvalue > 1e-3
    assert 0.5 * (counts / n - target).abs().sum() < 0.02


def test_soft_bon_over_iid_samples_approaches_the_follower():
    """With many i.i.d. base samples of a small outcome set, resampling by exp(r / beta) approaches rho_r."""
    base = torch.tensor([0.6, 0.3, 0.1], dtype=torch.float64)
    r = torch.tensor([0.0, 1.0, 3.0], dtype=torch.float64)
    g = torch.Generator().manual_seed(0)
    trials, N = 4000, 64
    outcomes = torch.multinomial(base, trials * N, replacement=True, generator=g).view(trials, N)
    picks = soft_select(r[outcomes], 1.0, generator=g)
    chosen = outcomes.gather(1, picks[:, None]).squeeze(1)
    freq = torch.bincount(chosen, minlength=3).double() / trials
    assert 0.5 * (freq - follower_policy(base, r, 1.0)).abs().sum() < 0.05


def test_best_of_n_end_to_end_and_reuse_of_samples():
    policy, rm, tok = make_models("llama")
    bon = best_of_n(policy, tok, rm, PROMPTS, 4, GEN)
    assert bon.rewards.shape == (3, 4) and len(bon.texts) == 3
    for i in range(3):
        assert bon.texts[i] == bon.samples[i][int(bon.rewards[i].argmax())]
    assert bon.cost.lm_tokens > 0 and bon.cost.rm_tokens > 0
    # the same sample set, reused: no sampling, same choice; with rewards given, no RM either
    samples = sample(policy, tok, PROMPTS, 4, GEN)
    again = best_of_n(policy, tok, rm, PROMPTS, samples=samples)
    assert again.texts == bon.texts and again.cost.lm_tokens == 0
    third = best_of_n(policy, tok, rm, PROMPTS, samples=samples.texts, rewards=bon.rewards, shaper="srs")
    assert third.cost.rm_tokens == 0 and third.texts == bon.texts  # srs is monotone: same argmax


def test_soft_bon_seeded_and_steered_by_beta():
    policy, _, tok = make_models("gpt2")
    rm = CallableReward(lambda p, r: float(len(r)), name="length")
    samples = sample(
        policy, tok, PROMPTS * 20, 6, GenerationConfig(max_new_tokens=6, eos_token_ids=(9999,), top_k=50)
    )
    prompts = PROMPTS * 20
    a = soft_best_of_n(policy, tok, rm, prompts, samples=samples, beta=1.0)
    b = soft_best_of_n(policy, tok, rm, prompts, samples=samples, beta=1.0)
    assert torch.equal(a.index, b.index) and a.meta["decoder"] == "soft-bon"
    hot = soft_best_of_n(policy, tok, rm, prompts, samples=samples, beta=100.0)
    cold = soft_best_of_n(policy, tok, rm, prompts, samples=samples, beta=0.01)
    best = best_of_n(policy, tok, rm, prompts, samples=samples)
    assert torch.equal(
        cold.rewards.gather(1, cold.index[:, None]), best.rewards.gather(1, best.index[:, None])
    )
    assert (
        hot.rewards.gather(1, hot.index[:, None]).mean() < cold.rewards.gather(1, cold.index[:, None]).mean()
    )


def test_bon_with_per_prompt_thresholds_and_errors():
    policy, rm, tok = make_models("llama")
    samples = sample(policy, tok, PROMPTS, 4, GEN)
    srs = get_shaper("srs", B=2.0, beta=1.0)
    res = best_of_n(policy, tok, rm, PROMPTS, samples=samples, shaper=srs, thresholds=[0.0, 0.0, 0.0])
    assert res.meta["per_prompt_threshold"]
    torch.testing.assert_close(
        res.shaped, srs(res.rewards, None, threshold=torch.zeros(3, dtype=torch.float64))
    )
    with pytest.raises(ValueError, match="thresholds"):
        best_of_n(policy, tok, rm, PROMPTS, samples=samples, shaper=srs, thresholds=[0.0])
    with pytest.raises(ValueError, match="samples"):
        best_of_n(policy, tok, rm, PROMPTS, samples=[["a"], ["b", "c"], ["d"]])
    with pytest.raises(ValueError, match="beta"):
        soft_select_probs(torch.zeros(3), 0.0)


def test_bon_accepts_a_bare_reward_function():
    policy, _, tok = make_models("gpt2")
    res = best_of_n(policy, tok, lambda p, r: -float(len(r)), PROMPTS[:2], 3, GEN)
    assert res.rewards.shape == (2, 3) and (res.rewards <= 0).all()

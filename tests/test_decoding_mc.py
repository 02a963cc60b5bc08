"""Monte Carlo thresholds: equal to stackelberg_threshold of the sampled rewards; cached on disk."""

from __future__ import annotations

import json

import pytest
import torch
from test_decoding_common import PROMPTS, make_models

import stackalign.decoding.mc as th
from stackalign.decoding.common import GenerationConfig
from stackalign.shaping import get_preset, stackelberg_threshold

GEN = GenerationConfig(max_new_tokens=6, eos_token_ids=(9999,), seed=5)


def test_mc_threshold_equals_stackelberg_threshold_of_the_samples(tmp_path):
    policy, rm, tok = make_models("llama")
    res = th.mc_threshold(policy, tok, rm, PROMPTS, 8, GEN, B=3.0, beta=0.5, cache_dir=tmp_path)
    assert res.rewards.shape == (3, 8) and res.thresholds.shape == (3,)
    ps = [p for p in PROMPTS for _ in range(8)]
    rs = [t for row in res.samples for t in row]
    rescored = rm(ps, rs).view(3, 8)
    torch.testing.assert_close(res.rewards, rescored)
    torch.testing.assert_close(res.thresholds, stackelberg_threshold(rescored, B=3.0, beta=0.5))
    assert (res.thresholds >= res.rewards.min(-1).values.double() - 1e-9).all()
    assert res.from_cache == [False] * 3 and res.cost.lm_tokens > 0 and res.cost.rm_tokens > 0
    # the shaper route uses the shaper's own rule (official-cd: B_eff, gamma cap)
    cd = get_preset("official-cd")
    res_cd = th.mc_threshold(policy, tok, rm, PROMPTS, 8, GEN, shaper=cd, cache_dir=tmp_path)
    torch.testing.assert_close(res_cd.thresholds, cd.threshold(res.rewards))
    assert res_cd.from_cache == [True] * 3


def test_rerun_does_not_resample(tmp_path, monkeypatch):
    policy, rm, tok = make_models("gpt2")
    first = th.mc_threshold(policy, tok, rm, PROMPTS[:2], 4, GEN, B=2.0, beta=1.0, cache_dir=tmp_path)
    files = sorted(tmp_path.rglob("*.json"))
    assert len(files) == 2
    rec = json.loads(files[0].read_text())
    assert {"policy", "rm", "n", "config", "prompt", "texts", "rewards"} <= set(rec)

    def boom(*a, **k):
        raise AssertionError("resampled although cached")

    monkeypatch.setattr(th, "sample", boom)
    again = th.mc_threshold(policy, tok, rm, PROMPTS[:2], 4, GEN, B=5.0, beta=1.0, cache_dir=tmp_path)
    assert again.from_cache == [True, True] and again.samples == first.samples
    torch.testing.assert_close(again.thresholds, stackelberg_threshold(first.rewards, B=5.0, beta=1.0))
    assert again.cost.lm_tokens == 0
    monkeypatch.undo()
    # a new prompt is sampled alone; the cached ones are reused; its samples equal a fresh uncached run
    mixed = th.mc_threshold(policy, tok, rm, PROMPTS, 4, GEN, B=2.0, beta=1.0, cache_dir=tmp_path)
    assert mixed.from_cache == [True, True, False]
    fresh = th.mc_threshold(policy, tok, rm, PROMPTS, 4, GEN, B=2.0, beta=1.0, cache_dir=False)
    assert fresh.samples == mixed.samples
    # the same samples; their rewards were scored in other batches (float noise of ~1e-7)
    torch.testing.assert_close(fresh.thresholds, mixed.thresholds, atol=1e-6, rtol=1e-6)


def test_cache_key_covers_n_seed_and_models(tmp_path):
    policy, rm, tok = make_models("gpt2")
    th.mc_threshold(policy, tok, rm, PROMPTS[:1], 4, GEN, B=2.0, beta=1.0, cache_dir=tmp_path)
    other_seed = GenerationConfig(max_new_tokens=6, eos_token_ids=(9999,), seed=6)
    assert th.mc_threshold(
        policy, tok, rm, PROMPTS[:1], 4, other_seed, B=2.0, beta=1.0, cache_dir=tmp_path
    ).from_cache == [False]
    assert th.mc_threshold(
        policy, tok, rm, PROMPTS[:1], 5, GEN, B=2.0, beta=1.0, cache_dir=tmp_path
    ).from_cache == [False]
    policy2, rm2, _ = make_models("gpt2", seed=1)
    assert th.model_fingerprint(policy2) != th.model_fingerprint(policy)
    assert th.mc_threshold(
        policy2, tok, rm, PROMPTS[:1], 4, GEN, B=2.0, beta=1.0, cache_dir=tmp_path
    ).from_cache == [False]
    assert th.mc_threshold(
        policy, tok, rm2, PROMPTS[:1], 4, GEN, B=2.0, beta=1.0, cache_dir=tmp_path
    ).from_cache == [False]


def test_damaged_cache_entry_is_recomputed(tmp_path):
    policy, rm, tok = make_models("gpt2")
    first = th.mc_threshold(policy, tok, rm, PROMPTS[:1], 3, GEN, B=2.0, beta=1.0, cache_dir=tmp_path)
    (f,) = list(tmp_path.rglob("*.json"))
    f.write_text("{not json")
    again = th.mc_threshold(policy, tok, rm, PROMPTS[:1], 3, GEN, B=2.0, beta=1.0, cache_dir=tmp_path)
    assert again.from_cache == [False] and again.samples == first.samples


def test_mc_threshold_errors():
    policy, rm, tok = make_models("gpt2")
    with pytest.raises(ValueError, match="shaper"):
        th.mc_threshold(policy, tok, rm, PROMPTS, 4, GEN, cache_dir=False)
    with pytest.raises(ValueError, match="no threshold rule"):
        th.mc_threshold(policy, tok, rm, PROMPTS, 4, GEN, shaper=lambda r, w=None: r, cache_dir=False)
    with pytest.raises(ValueError, match="n: must be"):
        th.mc_threshold(policy, tok, rm, PROMPTS, 0, GEN, B=1.0, beta=1.0, cache_dir=False)


def test_mc_threshold_with_a_bare_reward_function(tmp_path):
    policy, _, tok = make_models("gpt2")
    res = th.mc_threshold(
        policy, tok, lambda p, r: float(len(r)), PROMPTS[:1], 3, GEN, B=1.0, beta=1.0, cache_dir=tmp_path
    )
    assert res.rewards.shape == (1, 3)

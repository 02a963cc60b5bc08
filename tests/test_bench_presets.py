"""stackalign.bench.presets: per-step statistics equal hand-computed ones; recording changes nothing."""

from __future__ import annotations

import math

import pytest
import torch
from test_decoding_common import PROMPTS, make_models

from stackalign.bench.presets import StepRecorder
from stackalign.decoding.args import ARGSConfig, args_generate
from stackalign.decoding.common import GenerationConfig
from stackalign.shaping import get_preset

# One row, k = 3: logits 0, -1, -3 (policy argmax: candidate 0), rewards 0, 1, 2.
LOGITS = torch.tensor([[0.0, -1.0, -3.0]], dtype=torch.float64)
WEIGHTS = LOGITS.softmax(-1)
REWARDS = torch.tensor([[0.0, 1.0, 2.0]], dtype=torch.float64)


def test_vanilla_statistics_by_hand():
    rec = StepRecorder(None, w=0.5)
    shaped = rec.apply(REWARDS, WEIGHTS)
    assert torch.equal(shaped, REWARDS)
    s = rec.means()
    assert s["logit_range"] == pytest.approx(3.0)
    assert s["logit_gap"] == pytest.approx(1.0)
    assert s["w_r_range"] == pytest.approx(1.0) and s["w_s_range"] == pytest.approx(1.0)
    assert s["gain"] == pytest.approx(1.0)
    # fused = 0, -0.5, -2: argmax stays at candidate 0, and vanilla cannot differ from itself
    assert s["flip_policy"] == 0.0 and s["flip_vanilla"] == 0.0
    assert math.isnan(s["m_pos"]) and math.isnan(s["b_eff"])  # vanilla has no threshold
    assert s["regret"] == pytest.approx(1.0)  # candidate 0 has the lowest reward


def test_paper_preset_at_large_weight_puts_threshold_at_best_candidate():
    """beta = 1/4: gamma = exp(48), so m is the top reward; only candidate 2 is above; B_eff = B = 12; the
    shaped spread is 12 * (sigmoid(0) - sigmoid(-3)) and the fused argmax moves to candidate 2 (ARGS's at
    w = 4 too: fused 0, 3, 5)."""
    rec = StepRecorder(get_preset("paper", beta=0.25), w=4.0)
    rec.apply(REWARDS, WEIGHTS)
    s = rec.means()
    spread = 12 * (0.5 - 1 / (1 + math.exp(3.0)))
    assert s["m_pos"] == pytest.approx(1.0, abs=1e-9)
    assert s["above"] == pytest.approx(1 / 3)
    assert s["b_eff"] == 12.0
    assert s["gain"] == pytest.approx(spread / 2.0)
    assert s["w_s_range"] == pytest.approx(4.0 * spread)
    assert s["flip_policy"] == 1.0 and s["flip_vanilla"] == 0.0
    assert s["regret"] == 0.0


def test_hard_official_args_statistics_by_hand():
    """official-args, beta = 1, rewards 0, 0.8, 1.6: B_eff = min(12, 1.01 * 1.6) = 1.616, gamma =
    min(exp(1.616), 2) = 2. The weighted 2-expectile with weights softmax(0, -1, -3) lies in (0, 0.8], so
    candidates 1 and 2 are above: hard shaped rewards 0, 1.616, 1.616 (gain 1.01); fused at w = 1: 0, 0.616,
    -1.384 -> candidate 1, while vanilla ARGS's fused 0, -0.2, -1.4 keeps candidate 0."""
    rewards = 0.8 * REWARDS
    shaper = get_preset("official-args", kind="hard", beta=1.0)
    m = float(shaper.threshold(rewards, WEIGHTS))
    assert 0.0 < m <= 0.8
    rec = StepRecorder(shaper, w=1.0)
    shaped = rec.apply(rewards, WEIGHTS)
    torch.testing.assert_close(shaped, torch.tensor([[0.0, 1.616, 1.616]], dtype=torch.float64))
    s = rec.means()
    assert s["gain"] == pytest.approx(1.01)
    assert s["b_eff"] == pytest.approx(1.616)
    assert s["above"] == pytest.approx(2 / 3)
    assert s["m_pos"] == pytest.approx(m / 1.6)
    assert s["flip_policy"] == 1.0 and s["flip_vanilla"] == 1.0
    assert s["regret"] == pytest.approx(0.5)  # candidate 1 (reward 0.8 of the range 1.6) is chosen


@pytest.mark.parametrize("preset", [None, "paper", "official-args"])
def test_recording_does_not_change_the_decoding(preset):
    """ARGS with the recorder writes the same tokens as with its shaper (the diagnostic's trajectory is the
    method's own)."""
    policy, rm, tok = make_models("gpt2")
    gen = GenerationConfig(max_new_tokens=8, eos_token_ids=(9999,))
    shaper = None if preset is None else get_preset(preset, beta=1.0)
    cfg = ARGSConfig(k=5, beta=1.0)
    plain = args_generate(policy, tok, rm, PROMPTS, cfg, gen, shaper=shaper)
    rec = StepRecorder(shaper, w=1.0)
    recorded = args_generate(policy, tok, rm, PROMPTS, cfg, gen, shaper=rec)
    assert recorded.token_ids == plain.token_ids
    assert rec.counts["flip_policy"] == len(PROMPTS) * 8  # one record per live row and step

"""experiments.presets: per-step statistics equal hand-computed ones; recording changes nothing."""

from __future__ import annotations

import math

import pytest
import torch
from test_decoding_common import PROMPTS, make_models

from experiments.presets import StepRecorder
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
    cfg = ARGSConfig(k=5, w=1.0)
    plain = args_generate(policy, tok, rm, PROMPTS, cfg, gen, shaper=shaper)
    rec = StepRecorder(shaper, w=1.0)
    recorded = args_generate(policy, tok, rm, PROMPTS, cfg, gen, shaper=rec)
    assert recorded.token_ids == plain.token_ids
    assert rec.counts["flip_policy"] == len(PROMPTS) * 8  # one record per live row and step


def _fake_run(
    path, golds: dict[str, float], paired: dict[str, dict[str, list[float]]], texts: dict[str, str]
):
    """A run directory with the summary.json / generations.jsonl fields sweep_tables reads."""
    import json

    path.mkdir()
    methods = {
        m: {"gold_reward": g, "ci": {"gold_reward": [g - 0.1, g + 0.1]}, "paired": paired.get(m, {})}
        for m, g in golds.items()
    }
    (path / "summary.json").write_text(json.dumps({"methods": methods}))
    rows = [{"method": m, "prompt_id": i, "response": texts[m] + str(i % 2)} for m in golds for i in range(4)]
    (path / "generations.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")


def test_sweep_tables_pair_at_the_same_w_and_at_each_methods_validation_best(tmp_path):
    import json

    from experiments.presets import sweep_tables

    diff = {"ARGS@w=1": {"gold_diff": [-0.5, -0.8, -0.2]}, "ARGS@w=4": {"gold_diff": [0.1, -0.1, 0.3]}}
    paired = {
        "S@w=1": diff,
        "S@w=4": {
            "ARGS@w=1": {"gold_diff": [-0.55, -0.75, -0.35]},
            "ARGS@w=4": {"gold_diff": [0.25, 0.05, 0.45]},
            "ARGS@w=16": {"gold_diff": [0.45, -0.05, 0.7]},
        },
    }
    golds = {"ARGS@w=1": 1.0, "S@w=1": 0.5, "ARGS@w=4": 0.2, "S@w=4": 0.45, "ARGS@w=16": 0.0}
    texts = {"ARGS@w=1": "a", "S@w=1": "b", "ARGS@w=4": "c", "S@w=4": "c", "ARGS@w=16": "c"}
    _fake_run(tmp_path / "test", golds, paired, texts)
    # validation: ARGS is best at w = 1, S at w = 4
    _fake_run(tmp_path / "val", {**golds, "S@w=1": 0.1, "S@w=4": 0.9}, {}, texts)
    (tmp_path / "diag.json").write_text(
        json.dumps([{"method": "S@w=1", "gain": 1.2}, {"method": "S@w=4", "gain": 3.5}])
    )
    out = sweep_tables(
        {"w0": tmp_path / "test"}, {"w0": tmp_path / "val"}, {"w0": tmp_path / "diag.json"}, sweep=("1", "4")
    )
    lines = out.splitlines()
    assert "| S | 1 | -0.500 [-0.800, -0.200] − |" in lines  # paired against ARGS at the same w
    assert "| S | 4 | +0.250 [+0.050, +0.450] + |" in lines
    assert "| ARGS | 1.000 [0.900, 1.100] (w=1) |" in lines  # own tuning: ARGS at its validation best
    # S at its validation-best w = 4, paired against ARGS at ARGS's validation-best w = 1
    assert "| S | 0.450 [0.350, 0.550] (w=4); -0.550 [-0.750, -0.350] − |" in lines
    # effective weight: 1 * 1.2 -> w' = 1 (texts differ everywhere); 4 * 3.5 = 14 -> w' = 16 (same texts)
    assert "| S | 1 | w'=1: -0.500 [-0.800, -0.200] −; same text 0% |" in lines
    assert "| S | 4 | w'=16: +0.450 [-0.050, +0.700] =; same text 100% |" in lines

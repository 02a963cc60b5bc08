"""Threshold sources for SRS in ARGS and BoN (step | mc | predicted) and the amortised predictor m^(x)."""

from __future__ import annotations

import pytest
import torch
from test_decoding_common import PROMPTS, make_models

from stackalign.decoding.args import ARGSConfig, args_generate
from stackalign.decoding.bon import BoNConfig, best_of_n
from stackalign.decoding.common import GenerationConfig
from stackalign.decoding.mc import mc_threshold
from stackalign.decoding.threshold_predictor import (
    PredictorConfig,
    fit_threshold_predictor,
    load_threshold_predictor,
    prompt_features,
    train_threshold_predictor,
)
from stackalign.shaping import get_preset

GEN = GenerationConfig(max_new_tokens=5, eos_token_ids=(9999,), seed=3)


def test_args_mc_source_equals_passing_the_mc_thresholds(tmp_path):
    policy, rm, tok = make_models("llama")
    sh = get_preset("official-args")
    cfg = ARGSConfig(k=4, rm_mode="fast", threshold="mc", mc_samples=6)
    got = args_generate(policy, tok, rm, PROMPTS, cfg, GEN, shaper=sh, mc_cache_dir=tmp_path)
    mc_gen = GenerationConfig(max_new_tokens=5, eos_token_ids=(9999,), seed=3, temperature=1.0)
    mc = mc_threshold(policy, tok, rm, PROMPTS, 6, mc_gen, shaper=sh, cache_dir=tmp_path)
    assert mc.from_cache == [True] * len(PROMPTS)  # the decoder filled the same cache entries
    ref = args_generate(policy, tok, rm, PROMPTS, ARGSConfig(k=4, rm_mode="fast"), GEN, shaper=sh,
                        thresholds=mc.thresholds)  # fmt: skip
    assert got.token_ids == ref.token_ids
    assert got.meta["threshold_source"] == "mc" and ref.meta["threshold_source"] == "step"
    # the Monte Carlo samples are paid for: more LM and RM tokens than the decode alone
    assert got.cost.lm_tokens > ref.cost.lm_tokens and got.cost.rm_tokens > ref.cost.rm_tokens


def test_threshold_source_needs_a_threshold_shaping():
    policy, rm, tok = make_models("llama")
    with pytest.raises(ValueError, match="threshold shaping"):
        args_generate(policy, tok, rm, PROMPTS[:1], ARGSConfig(k=3, threshold="mc"), GEN, shaper="minmax")
    with pytest.raises(ValueError, match="predictor"):
        args_generate(policy, tok, rm, PROMPTS[:1], ARGSConfig(k=3, threshold="predicted"), GEN, shaper="srs")
    with pytest.raises(ValueError, match="threshold"):
        ARGSConfig(threshold="oracle")
    with pytest.raises(ValueError, match="threshold"):
        BoNConfig(threshold="oracle")


def test_fit_recovers_a_linear_map_and_beats_the_constant():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(120, 5, generator=g, dtype=torch.float64)
    y = x @ torch.tensor([1.0, -2.0, 0.5, 0.0, 0.0], dtype=torch.float64) + 3.0
    pred = fit_threshold_predictor(x, y)
    torch.testing.assert_close(pred.predict(x), y, atol=2e-2, rtol=0)
    fit = pred.meta["fit"]
    assert fit["val_mae"] < 0.05 * fit["const_val_mae"] and fit["val_r2"] > 0.99
    with pytest.raises(ValueError, match="at least 4"):
        fit_threshold_predictor(x[:3], y[:3])
    with pytest.raises(ValueError, match="another policy"):
        pred.predict(torch.zeros(2, 7, dtype=torch.float64))


def test_predictor_trains_saves_loads_and_drives_args_and_bon(tmp_path):
    policy, rm, tok = make_models("llama")
    sh = get_preset("official-args")
    train = [f"User: question number {i} about topic {i % 5}?\nAssistant:" for i in range(12)]
    pred, cost = train_threshold_predictor(
        policy, tok, rm, train, sh, PredictorConfig(n_samples=4, train_prompts=12), GEN,
        cache_dir=tmp_path / "mc", out_dir=tmp_path / "pred",
    )  # fmt: skip
    assert cost.lm_tokens > 0 and cost.rm_tokens > 0
    loaded = load_threshold_predictor(tmp_path / "pred")
    feats = prompt_features(policy, tok, PROMPTS)
    torch.testing.assert_close(loaded.predict(feats), pred.predict(feats))
    m_hat = pred.predict(feats)
    cfg = ARGSConfig(k=4, rm_mode="fast", threshold="predicted")
    got = args_generate(policy, tok, rm, PROMPTS, cfg, GEN, shaper=sh, predictor=tmp_path / "pred")
    ref = args_generate(policy, tok, rm, PROMPTS, ARGSConfig(k=4, rm_mode="fast"), GEN, shaper=sh,
                        thresholds=m_hat)  # fmt: skip
    assert got.token_ids == ref.token_ids and got.meta["threshold_source"] == "predicted"
    # its cost is one prompt forward: no RM tokens beyond the decode's
    assert got.cost.rm_tokens == ref.cost.rm_tokens and got.cost.lm_tokens > ref.cost.lm_tokens
    # BoN with the predicted threshold = BoN with those thresholds passed in
    b1 = best_of_n(policy, tok, rm, PROMPTS, 4, GEN, shaper="srs", threshold_source="predicted",
                   predictor=get_loaded_for(tmp_path, "srs", policy, tok, rm, train))  # fmt: skip
    assert b1.meta["threshold_source"] == "predicted"
    # a shaper with another threshold rule is refused
    with pytest.raises(ValueError, match="threshold rule"):
        args_generate(policy, tok, rm, PROMPTS, cfg, GEN, shaper=get_preset("paper"), predictor=pred)


def get_loaded_for(tmp_path, shaper, policy, tok, rm, train):
    from stackalign.decoding.args import resolve_shaper

    pred, _ = train_threshold_predictor(
        policy, tok, rm, train, resolve_shaper(shaper), PredictorConfig(n_samples=4, train_prompts=12), GEN,
        cache_dir=tmp_path / "mc",
    )  # fmt: skip
    return pred


def test_bon_mc_source_uses_independent_samples(tmp_path):
    policy, rm, tok = make_models("llama")
    gen = GenerationConfig(max_new_tokens=5, eos_token_ids=(9999,), seed=3, temperature=1.0)
    got = best_of_n(policy, tok, rm, PROMPTS, 4, gen, shaper="srs", threshold_source="mc", mc_samples=5,
                    mc_cache_dir=tmp_path)  # fmt: skip
    mc = mc_threshold(policy, tok, rm, PROMPTS, 5, GenerationConfig(max_new_tokens=5, eos_token_ids=(9999,),
                      seed=4, temperature=1.0), shaper="srs", cache_dir=tmp_path)  # fmt: skip
    assert mc.from_cache == [True] * len(PROMPTS)
    ref = best_of_n(policy, tok, rm, PROMPTS, 4, gen, shaper="srs", thresholds=mc.thresholds)
    assert got.texts == ref.texts
    torch.testing.assert_close(got.shaped, ref.shaped)


@pytest.mark.slow
def test_recipe_threshold_sources_end_to_end(tmp_path):
    """A run recipe with SRS-ARGS (predicted, trained and cached in the run directory) and SRS-BoN (mc); the
    summary carries intervals and paired comparisons; a rerun reuses the cached predictor."""
    import json

    from stackalign.runner.recipe import RecipeError, recipe_from_dict
    from stackalign.runner.run import execute
    from stackalign.worlds import build_world

    world = build_world(tmp_path / "world", preset="micro", progress=False)
    base = {
        "world": str(world.root),
        "prompts": {"source": "world:test", "limit": 3},
        "generation": {"max_new_tokens": 5, "batch_size": 3},
        "methods": [
            {"name": "ARGS", "decoder": "args", "params": {"k": 3}},
            {"name": "SRS-ARGS-pred", "decoder": "args", "shaping": "srs", "preset": "official-args",
             "params": {"k": 3, "threshold": "predicted", "predictor_train_prompts": 8, "predictor_samples": 3}},
            {"name": "SRS-BoN-mc", "decoder": "bon", "shaping": "srs", "preset": "official-cd",
             "params": {"n": 3, "threshold": "mc", "mc_samples": 3}},
        ],
        "evaluation": {"coherence": None, "judge": "gold", "baselines": ["ARGS"]},
    }  # fmt: skip
    out = tmp_path / "run"
    summary = execute(recipe_from_dict(base), out, progress=False)
    pdir = out / "threshold_predictors" / "SRS-ARGS-pred"
    meta = json.loads((pdir / "threshold_predictor.json").read_text())
    assert meta["fit"]["n_train"] + meta["fit"]["n_val"] == 8
    assert any((out / "mc_cache").rglob("*.json"))
    p = summary["methods"]["SRS-ARGS-pred"]["paired"]["ARGS"]
    assert p["n"] == 3 and len(p["gold_diff"]) == 3 and len(p["win_tie"]) == 3
    assert p["gold_diff"][1] <= p["gold_diff"][0] <= p["gold_diff"][2]
    # a bad source, or a source on a shaping without a threshold, fails at load naming the path
    bad = json.loads(json.dumps(base))
    bad["methods"][1]["params"]["threshold"] = "oracle"
    with pytest.raises(RecipeError, match=r"methods\[1\]\.params\.threshold"):
        recipe_from_dict(bad)
    bad["methods"][1].update(shaping="minmax", preset=None)
    bad["methods"][1]["params"] = {"k": 3, "threshold": "mc"}
    with pytest.raises(RecipeError, match="threshold"):
        from stackalign.runner.methods import resolve_method

        recipe = recipe_from_dict(bad)
        resolve_method(recipe.methods[1], 1)


def test_evaluate_predictor_reports_errors_against_mc(tmp_path):
    from stackalign.decoding.threshold_predictor import evaluate_threshold_predictor

    policy, rm, tok = make_models("llama")
    sh = get_preset("official-cd")
    train = [f"User: question number {i} about topic {i % 5}?\nAssistant:" for i in range(12)]
    pred, _ = train_threshold_predictor(
        policy, tok, rm, train, sh, PredictorConfig(n_samples=4, train_prompts=12), GEN, cache_dir=tmp_path
    )
    rep = evaluate_threshold_predictor(pred, policy, tok, rm, PROMPTS, sh, 4, GEN, cache_dir=tmp_path)
    mc = mc_threshold(policy, tok, rm, PROMPTS, 4, GEN, shaper=sh, cache_dir=tmp_path)
    m_hat = pred.predict(prompt_features(policy, tok, PROMPTS))
    assert rep["mae"] == pytest.approx(float((m_hat - mc.thresholds).abs().mean()))
    assert rep["const_mae"] == pytest.approx(float((pred.bias - mc.thresholds).abs().mean()))
    assert rep["n"] == len(PROMPTS) and rep["mc_from_cache"] == 0 and rep["mc_rm_tokens_per_prompt"] > 0


@pytest.mark.parametrize("shaper", [None, "official-args"])
def test_args_nan_reward_is_a_clear_error(shaper):
    """The fast (tree-cache) scorer runs the RM's backbone and head itself, past RewardModel's checks: ARGS
    flags non-finite candidate scores on the device and raises after the batch."""
    import copy

    policy, rm, tok = make_models("llama")
    rm = copy.deepcopy(rm)  # make_models caches its models: never poison the shared one
    with torch.no_grad():
        rm.model.score.weight.fill_(float("nan"))
    with pytest.raises(ValueError, match="NaN or infinite"):
        args_generate(policy, tok, rm, PROMPTS[:2], ARGSConfig(k=3, rm_mode="fast"), GEN, shaper=shaper)

"""SLHF training end to end on the micro world: the summary contract, kill-and-resume, bad input."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file

from stackalign.runner.recipe import RecipeError
from stackalign.training.recipe import train_recipe_from_dict
from stackalign.training.run import run_training


def _recipe(world, **kw):
    d = {
        "algorithm": "slhf",
        "world": str(world.root),
        "steps": 4,
        "lr": 1e-3,
        "prompts_per_step": 3,
        "max_new_tokens": 12,
        "checkpoint_every": 2,
        "keep_checkpoints": 2,
        "progress": False,
        "eval": {"limit": 3, "samples": 1},
    }
    d.update(kw)
    return train_recipe_from_dict(d)


def _weights(run):
    return load_file(str(next((run / "final").glob("*.safetensors"))))


def test_slhf_run_summary_contract_and_resume(micro, tmp_path):
    out = tmp_path / "run"
    s = run_training(_recipe(micro), out, world=micro)
    assert set(s) == {"algorithm", "steps", "seconds", "eval"}
    assert s["algorithm"] == "slhf" and s["steps"] == 4 and s["seconds"] > 0
    ev = s["eval"]
    assert set(ev) == {"leader_vs_base", "follower_vs_leader", "follower_vs_base", "refinement", "judge"}
    assert ev["judge"] == "gold"  # the default judge on a world with a gold preference
    assert set(ev["refinement"]) == {"1", "2", "3"} and ev["follower_vs_base"] == ev["refinement"]["1"]
    for w in [ev["leader_vs_base"], ev["follower_vs_leader"], *ev["refinement"].values()]:
        assert 0.0 <= w <= 1.0
    assert json.loads((out / "summary.json").read_text()) == s
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3, 4] and all("judge_mean" in r for r in rows)
    first = _weights(out)
    # the base policy changed (the run trained something)
    assert any(
        not torch.equal(first[k], v)
        for k, v in load_file(str(micro.policy_dir / "model.safetensors")).items()
    )
    # killed after the step-2 checkpoint: drop what came later, start again -> identical final weights
    ckpts = sorted((out / "checkpoints").iterdir())
    assert [c.name for c in ckpts][-1].endswith("4")
    shutil.rmtree(ckpts[-1])
    shutil.rmtree(out / "final")
    (out / "summary.json").unlink()
    s2 = run_training(_recipe(micro), out, world=micro)
    again = _weights(out)
    assert set(again) == set(first) and all(torch.equal(first[k], again[k]) for k in first)
    assert s2["eval"] == s["eval"]


@pytest.mark.parametrize(
    "kw,field",
    [
        ({"kappa": 0.0}, "kappa"),
        ({"kappa": -2.0}, "kappa"),
        ({"tau_leader": -0.1}, "tau_leader"),
        ({"tau_follower": -1.0}, "tau_follower"),
        ({"leader_objective": "nash"}, "leader_objective"),
        ({"judge": "oracle"}, "judge"),
        ({"kapa": 5.0}, "kappa"),  # did you mean
    ],
)
def test_bad_recipe_names_the_field(micro, kw, field):
    with pytest.raises(RecipeError, match=field):
        _recipe(micro, **kw)


def test_world_without_follower_format_is_refused(micro, tmp_path):
    import copy

    old = copy.copy(micro)
    old.manifest = {k: v for k, v in micro.manifest.items() if k != "follower_format"}
    with pytest.raises(ValueError, match="world: .*follower format"):
        run_training(_recipe(micro, steps=1), tmp_path / "run", world=old)


def test_nan_judge_is_refused(micro, tmp_path):
    import copy

    bad = copy.copy(micro)
    bad.gold_preference = lambda prompt, a, b: float("nan")
    with pytest.raises(ValueError, match="judge"):
        run_training(_recipe(micro, steps=1), tmp_path / "run", world=bad)


def _run_recipe(world, methods):
    from stackalign.runner.recipe import recipe_from_dict

    return recipe_from_dict(
        {
            "world": str(world.root),
            "prompts": {"source": "world:test", "limit": 3},
            "generation": {"max_new_tokens": 6, "batch_size": 3},
            "methods": methods,
            "evaluation": {"coherence": None, "judge": "gold", "baselines": ["Base"]},
        }
    )


def test_refine_decoder_in_a_run_recipe(micro, tmp_path):
    """decoder: refine = the first decoder's answer + N follower steps; with steps: 0 it is that answer."""
    from stackalign.runner.run import execute

    methods = [
        {"name": "Base", "decoder": "base"},
        {"name": "Refine0", "decoder": "refine", "params": {"first": "base", "steps": 0}},
        {"name": "Refine2", "decoder": "refine", "params": {"first": "base", "steps": 2}},
        {
            "name": "SRS-ARGS+refine",
            "decoder": "refine",
            "shaping": "srs",
            "preset": "official-args",
            "params": {"first": "args", "first_params": {"k": 2}, "steps": 1},
        },  # fmt: skip
    ]
    out = tmp_path / "run"
    summary = execute(_run_recipe(micro, methods), out, progress=False)
    assert set(summary["methods"]) == {m["name"] for m in methods}
    rows = [json.loads(x) for x in (out / "generations.jsonl").read_text().splitlines()]
    by = {(r["method"], r["prompt_id"]): r for r in rows}
    for pid in {r["prompt_id"] for r in rows}:
        assert by[("Refine0", pid)]["response"] == by[("Base", pid)]["response"]  # same seed, no step
    assert (
        summary["methods"]["Refine2"]["lm_tokens_per_prompt"]
        > summary["methods"]["Base"]["lm_tokens_per_prompt"]
    )


@pytest.mark.parametrize(
    "params,where",
    [
        ({"first": "bon", "first_params": {"n": "x"}}, "first_params"),
        ({"first": "cd_tokenwise"}, "first"),
        ({"steps": -1}, "steps"),
    ],
)
def test_refine_bad_params_name_the_path(micro, params, where):
    with pytest.raises(RecipeError, match=where):
        _run_recipe(micro, [{"name": "R", "decoder": "refine", "params": params}])


def test_shipped_slhf_train_recipes_validate():
    import pathlib

    from stackalign.training.recipe import load_train_recipe

    root = pathlib.Path(__file__).resolve().parents[1] / "recipes"
    for name in (
        "train-slhf-sandbox.yaml",
        "train-slhf-qwen-gpu.yaml",
        "train-rlhf-sandbox.yaml",
        "train-selfplay-sandbox.yaml",
    ):
        r = load_train_recipe(root / name)
        assert r.algorithm in ("slhf", "rlhf", "selfplay")
    gpu = load_train_recipe(root / "train-slhf-qwen-gpu.yaml")
    assert gpu.common.policy == "Qwen/Qwen2.5-0.5B-Instruct" and gpu.algo.judge == "reward_model"
    assert (gpu.common.lr, gpu.algo.tau_leader, gpu.algo.kappa) == (1e-5, 0.001, 5.0)


@pytest.mark.slow
def test_slhf_evidence_refines_args_and_srs_args_answers_with_intervals(micro, tmp_path):
    """The evidence tool on the micro world (the base model standing in for both trained runs): every win
    rate is [rate, lo, hi] with lo <= rate <= hi; ARGS and SRS-ARGS answers are among the refined sources and
    are the decoders' own greedy outputs; a model refining with itself as the 'other' answer is 0.5 exactly."""
    from experiments.slhf_evidence import _pref, evidence
    from stackalign.decoding.args import ARGSConfig, args_generate
    from stackalign.decoding.common import GenerationConfig

    for name in ("slhf", "rlhf", "selfplay"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "final").symlink_to(micro.policy_dir, target_is_directory=True)
    res = evidence(
        micro,
        str(tmp_path / "slhf"),
        str(tmp_path / "rlhf"),
        n_prompts=4,
        k_max=2,
        args_w=2.0,
        selfplay_dir=str(tmp_path / "selfplay"),
    )
    assert set(res["round_robin"]) == {"base", "rlhf", "args", "srs_args", "leader", "follower", "selfplay"}
    cross = res["refine_once_win_rate_vs_source"]
    assert set(cross) == {"base", "rlhf", "bon4_proxy", "args", "srs_args", "leader"}
    rates = [r for row in cross.values() for r in row.values()]
    rates += [r for row in res["round_robin"].values() for r in row.values()]
    assert all(0.0 <= lo <= rate <= hi <= 1.0 for rate, lo, hi in rates)
    xs = micro.test_prompts[:4]
    policy, tok = micro.load_policy()
    gen = GenerationConfig(max_new_tokens=micro.max_new_tokens, stop_strings=tuple(micro.stop_strings))
    from stackalign.shaping import get_preset

    shaper = get_preset("official-args", beta=0.5)
    cfg = ARGSConfig(k=10, w=2.0)
    srs = args_generate(policy, tok, micro.load_reward_model(), xs, cfg, gen, shaper=shaper)
    want = [micro.gold(x, y) for x, y in zip(xs, srs.texts)]
    assert res["mean_gold"]["srs_args"] == pytest.approx(sum(want) / 4, abs=1e-4)
    assert _pref(micro, xs, srs.texts, srs.texts) == [0.5, 0.5, 0.5]

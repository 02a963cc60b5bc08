"""End to end on the micro world: recipe -> run -> results directory; resume after a crash."""

import json

import pytest

from stackalign.runner.recipe import recipe_from_dict
from stackalign.runner.run import execute


@pytest.fixture(scope="module")
def micro_world(micro):
    return micro  # the session's micro world (conftest.py)


def _recipe(world, limit=4):
    return recipe_from_dict(
        {
            "world": str(world.root),
            "prompts": {"source": "world:test", "limit": limit},
            "generation": {"max_new_tokens": 6, "batch_size": 2},
            "methods": [
                {"name": "Base", "decoder": "base"},
                {"name": "ARGS", "decoder": "args", "params": {"k": 3, "w": 0.5}},
                {
                    "name": "SRS-ARGS",
                    "decoder": "args",
                    "shaping": "srs",
                    "preset": "official-args",
                    "params": {"k": 3},
                },
                {
                    "name": "SRS-CD",
                    "decoder": "cd_tokenwise",
                    "shaping": "srs",
                    "preset": "official-cd",
                    "params": {"k": 3, "n_samples": 3, "train_prompts": 6, "max_epochs": 1, "width": 16},
                },
            ],
            "evaluation": {"coherence": None, "judge": "gold", "baselines": ["ARGS"]},
        }
    )


@pytest.mark.slow
def test_run_writes_results_and_resumes_without_duplicates(micro_world, tmp_path):
    out = tmp_path / "run"
    recipe = _recipe(micro_world)
    summary = execute(recipe, out, progress=False)
    assert set(summary["methods"]) == {"Base", "ARGS", "SRS-ARGS", "SRS-CD"}
    for name, s in summary["methods"].items():
        for key in ("proxy_reward", "gold_reward", "diversity", "seconds_per_prompt", "lm_tokens_per_prompt"):
            assert s[key] is not None, (name, key)
        assert "rm_tokens_per_prompt" in s and "coherence" in s
    assert summary["methods"]["SRS-ARGS"]["win_tie"]["ARGS"] is not None
    assert summary["methods"]["ARGS"]["rm_tokens_per_prompt"] > 0
    for f in ("config.json", "generations.jsonl", "summary.json", "report.md", "methods.png"):
        assert (out / f).is_file(), f
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["presets"]["official-args"]["params"]["gamma_cap"] == 2.0

    # Simulate kill -9: drop the last 3 rows and leave a torn half-line; rerun must finish exactly once each.
    path = out / "generations.jsonl"
    lines = path.read_text().splitlines(keepends=True)
    kept = lines[:-3]
    path.write_text("".join(kept) + lines[-3][: len(lines[-3]) // 2])
    head = out / "cd_heads" / "SRS-CD" / "value_head.safetensors"
    head_mtime = head.stat().st_mtime_ns
    execute(recipe, out, progress=False)
    assert head.stat().st_mtime_ns == head_mtime  # the trained value head is reused, not retrained
    rows = [json.loads(x) for x in path.read_text().splitlines()]
    keys = [(r["method"], r["prompt_id"]) for r in rows]
    assert len(keys) == len(set(keys)) == 4 * 4
    # finished rows were not recomputed: the kept prefix is byte-identical
    assert path.read_text().startswith("".join(kept))


def test_changed_prompt_set_in_same_dir_is_refused(micro_world, tmp_path):
    from stackalign.runner.recipe import RecipeError
    from stackalign.runner.run import reconcile_run_dir, resolve_config

    out = tmp_path / "run"
    out.mkdir()
    cfg = resolve_config(_recipe(micro_world), ["p0", "p1"])
    (out / "config.json").write_text(json.dumps(cfg))
    (out / "generations.jsonl").write_text(json.dumps({"method": "ARGS", "prompt_id": 0}) + "\n")
    reconcile_run_dir(out, cfg)  # same config: fine
    other = resolve_config(_recipe(micro_world, limit=3), ["p0", "p1"])
    with pytest.raises(RecipeError, match="prompts"):
        reconcile_run_dir(out, other)
    edited = resolve_config(_recipe(micro_world), ["p0", "p1 edited"])
    with pytest.raises(RecipeError, match="prompt_set"):
        reconcile_run_dir(out, edited)


def test_changed_cd_method_retrains_its_value_head(micro_world, tmp_path):
    """`--restart-changed` after changing a CD method's value-head settings retrains the head instead of
    reusing the stale one cached under the method's name; an unchanged rerun keeps it (same file)."""

    def recipe(max_epochs):
        return recipe_from_dict(
            {
                "world": str(micro_world.root),
                "prompts": {"source": "world:test", "limit": 2},
                "generation": {"max_new_tokens": 4, "batch_size": 2},
                "methods": [
                    {
                        "name": "CD",
                        "decoder": "cd_tokenwise",
                        "params": {
                            "k": 2,
                            "n_samples": 2,
                            "train_prompts": 4,
                            "max_epochs": max_epochs,
                            "width": 8,
                        },
                    }
                ],
                "evaluation": {"coherence": None, "judge": "gold", "baselines": []},
            }
        )

    out = tmp_path / "run"
    meta_path = out / "cd_heads" / "CD" / "value_head.json"
    execute(recipe(1), out, progress=False, check_environment=False)
    first = json.loads(meta_path.read_text())
    assert first["train"]["max_epochs"] == 1 and first["offline_data"]
    stamp = meta_path.stat().st_mtime_ns
    execute(recipe(1), out, progress=False, check_environment=False)
    assert meta_path.stat().st_mtime_ns == stamp  # unchanged settings: the cached head is reused
    execute(recipe(2), out, progress=False, restart_changed=True, check_environment=False)
    assert json.loads(meta_path.read_text())["train"]["max_epochs"] == 2

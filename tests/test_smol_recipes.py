"""The smol-world training recipes (recipes/smol/) validate, use LoRA, and keep the budgets they state."""

from pathlib import Path

import pytest

from stackalign.training.recipe import load_train_recipe

ROOT = Path(__file__).resolve().parents[1] / "recipes" / "smol"
NAMES = ["slhf", "rlhf", "selfplay", "ssapo", "dpo", "rl-overopt"]


@pytest.mark.parametrize("name", NAMES)
def test_smol_recipe_validates_with_lora(name):
    r = load_train_recipe(ROOT / f"{name}.yaml")
    assert r.common.world == "smol"
    assert r.common.lora is not None and r.common.lora.r == 8
    assert r.common.max_new_tokens == 48


def test_slhf_baselines_have_the_same_budget():
    """SLHF samples one leader and one follower answer per prompt; the baselines G answers per prompt."""
    slhf = load_train_recipe(ROOT / "slhf.yaml")
    answers = 2 * slhf.common.prompts_per_step
    for name in ("rlhf", "selfplay"):
        r = load_train_recipe(ROOT / f"{name}.yaml")
        assert r.common.steps == slhf.common.steps
        assert r.common.lr == slhf.common.lr
        assert r.common.prompts_per_step * r.algo.group_size == answers


def test_ssapo_and_dpo_share_seeds_rounds_and_prompts():
    s, d = load_train_recipe(ROOT / "ssapo.yaml"), load_train_recipe(ROOT / "dpo.yaml")
    for key in ("seed_pairs", "rounds", "prompts_per_round", "batch_size", "seed_epochs", "epochs", "beta"):
        assert getattr(s.algo, key) == getattr(d.algo, key), key

"""What a run's methods work with: the world, the prompts and the loaded models (`Context`), and the
pieces of a run that both backends and the driver use (the evaluation's coherence scorer and stop strings).

`runner.run` (the driver) and `runner.backends` (serial, Ray) import this module; it imports neither.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from stackalign.recipe_base import RecipeError, load_recipe_world, policy_path, reward_model_path
from stackalign.runner.recipe import Recipe

__all__ = [
    "MODEL_KEYS",
    "Context",
    "build_context",
    "coherence_scorer",
    "eval_stop_strings",
    "load_world_and_prompts",
    "same_models",
]


@dataclass
class Context:
    """Everything a method needs, loaded once per run."""

    recipe: Recipe
    world: Any
    policy: Any
    tokenizer: Any
    reward: Any  # stackalign.models.RewardModel
    gold: Any  # callable (prompt, response) -> float, or None
    gold_judge: Any  # callable (prompt, a, b) -> +1/0/-1, or None
    prompts: list[str]
    stop_strings: list[str]
    out_dir: Path


def load_world_and_prompts(recipe: Recipe, world=None) -> tuple[Any, list[str], list[str]]:
    """The world (or None), the prompts and the stop strings: everything but the models."""
    from stackalign.prompt_sources import policy_tokenizer
    from stackalign.runner.prompts import load_prompts

    if world is None and recipe.world is not None:
        world = load_recipe_world(recipe.world)
    tok = policy_tokenizer(recipe.policy, world) if recipe.prompts.chat_template else None
    prompts = load_prompts(recipe.prompts, world, tok)
    stops = recipe.generation.stop_strings
    if stops is None:
        stops = list(getattr(world, "stop_strings", []) or [])
    return world, prompts, stops


# recipe keys that decide which models a Context loads: a Context whose recipe agrees on all of them can
# lend its loaded models to another recipe's Context (`build_context(..., reuse=)`)
MODEL_KEYS = ("world", "policy", "reward_model", "reward_chat_template", "dtype", "device")


def same_models(a: Recipe, b: Recipe) -> bool:
    """Whether recipes `a` and `b` load the same world, policy and reward model (same dtype and device)."""
    return all(getattr(a, k) == getattr(b, k) for k in MODEL_KEYS)


def build_context(
    recipe: Recipe, out_dir: Path, world=None, prompts=None, stops=None, reuse: Context | None = None
) -> Context:
    """The run's Context: the recipe's models loaded, or, with `reuse` (a Context of a recipe with the same
    models, see `same_models`), its policy, tokenizer and reward model taken as they are (a Ray sweep's
    workers keep them across the values); everything else comes from `recipe`."""
    import torch

    from stackalign.models import load_policy, load_reward_model

    torch.manual_seed(recipe.seed)
    if prompts is None:
        world, prompts, stops = load_world_and_prompts(recipe, world)
    gold = gold_judge = None
    if recipe.gold == "world":
        gold, gold_judge = world.gold, world.gold_judge
    if reuse is not None:
        if not same_models(reuse.recipe, recipe):
            raise ValueError("build_context: reuse holds the models of a recipe with other models")
        models = (reuse.policy, reuse.tokenizer, reuse.reward)
        return Context(recipe, world, *models, gold, gold_judge, prompts, stops, out_dir)
    dtype = getattr(torch, recipe.dtype)
    try:
        policy, tok = load_policy(policy_path(recipe.policy, world), dtype=dtype, device=recipe.device)
    except (ValueError, OSError) as e:
        raise RecipeError(f"policy: {e}") from None
    vocab = getattr(getattr(policy, "config", None), "vocab_size", None)
    if isinstance(vocab, int) and recipe.generation.top_k > vocab:  # before any generation work
        raise RecipeError(
            f"generation.top_k: {recipe.generation.top_k} is above the policy's vocabulary size {vocab}"
        )
    try:
        reward = load_reward_model(
            reward_model_path(recipe.reward_model, world),
            dtype=dtype,
            device=recipe.device,
            chat_template=recipe.reward_chat_template,
        )
    except (ValueError, OSError) as e:
        raise RecipeError(f"reward_model: {e}") from None
    return Context(recipe, world, policy, tok, reward, gold, gold_judge, prompts, stops, out_dir)


def coherence_scorer(recipe: Recipe):
    """The recipe's coherence scorer (`evaluation.coherence`), or None."""
    ev = recipe.evaluation
    if not ev.coherence:
        return None
    from stackalign.evaluation.metrics import Coherence

    return Coherence(None if ev.coherence == "minilm" else ev.coherence)


def eval_stop_strings(recipe: Recipe) -> tuple[str, ...]:
    """Where responses are cut before diversity, coherence and the judge."""
    return tuple(recipe.generation.stop_strings or ()) or ("\n\nHuman:", "###Human:", "\nUser:")

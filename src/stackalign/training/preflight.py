"""Fail early: what a train recipe needs from the machine, checked before any model loads."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from stackalign.config import clip
from stackalign.recipe_base import RecipeError, models_problems

__all__ = ["preflight_train"]


def preflight_train(recipe) -> None:
    """The machine checks of a train recipe (a ResolvedRecipe): the algorithm's input files (every `*_file`
    field), the device, the world directory and local model paths. Raises RecipeError listing every problem."""
    problems: list[str] = []
    common = recipe.common
    for f in dataclasses.fields(recipe.algo):
        value = getattr(recipe.algo, f.name)
        if f.name.endswith("_file") and isinstance(value, str) and not Path(value).expanduser().is_file():
            problems.append(f"{f.name}: no such file {clip(value)}")
    problems += models_problems(common.world, common.device, common.policy, common.reward_model)
    if problems:
        raise RecipeError("the train recipe cannot run on this machine:\n  " + "\n  ".join(problems))

"""A run's prompts: the recipe's `prompts:` source (``stackalign.prompt_sources``) with its template, limit
and chat template applied."""

from __future__ import annotations

from typing import Any

from stackalign.prompt_sources import policy_tokenizer, source_prompts
from stackalign.recipe_base import RecipeError


def load_prompts(cfg: Any, world=None, tokenizer=None) -> list[str]:
    """Resolve `cfg` into a list of prompt strings (template applied, limit respected, order deterministic).

    With ``cfg.chat_template`` the prompts are :class:`stackalign.models.chat.ChatPrompt` rendered with
    ``tokenizer``'s chat template (the policy's)."""
    raw = source_prompts(cfg.source, world, field=cfg.field, split=cfg.split, what="prompts.source")
    if cfg.limit is not None:
        raw = raw[: cfg.limit]
    return format_prompts(raw, cfg, tokenizer)


def format_prompts(raw: list[str], cfg: Any, tokenizer=None) -> list[str]:
    """``cfg.template`` applied to each raw prompt, then the chat template when ``cfg.chat_template``."""
    if not raw:
        raise RecipeError(f"prompts: the source {cfg.source!r} gave no prompts")
    if "{prompt}" not in cfg.template:
        raise RecipeError("prompts.template: must contain {prompt}")
    out = [cfg.template.replace("{prompt}", p) for p in raw]
    for i, p in enumerate(out):
        if not p.strip():
            raise RecipeError(f"prompts: prompt #{i} is empty")
    if cfg.chat_template:
        from stackalign.models.chat import render_chat_prompts

        if tokenizer is None:
            raise RecipeError("prompts.chat_template: needs the policy's tokenizer")
        try:
            out = render_chat_prompts(tokenizer, out, system=cfg.system)
        except ValueError as e:
            raise RecipeError(f"prompts.chat_template: {e} (set chat_template: false)") from None
    return out


def train_source_prompts(recipe, world, source: str, n: int, *, what: str) -> list[str]:
    """The first ``n`` prompts of a training source (``world:train`` or a JSONL file with a ``prompt`` field),
    with the run's prompt template and chat template applied (training prompts look like the test prompts)."""
    import dataclasses

    raw = source_prompts(source, world, what=what)[:n]
    if not raw:
        raise RecipeError(f"{what}: {source!r} gave no prompts")
    cfg = dataclasses.replace(recipe.prompts, source=source)
    tok = policy_tokenizer(recipe.policy, world) if cfg.chat_template else None
    return format_prompts(raw, cfg, tok)

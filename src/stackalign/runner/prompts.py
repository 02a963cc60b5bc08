"""Prompt sources for a run: the sandbox world's splits, a local JSONL/parquet file, or an HF dataset."""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

from stackalign.config import RecipeError, clip

PROMPT_FILE_SUFFIXES = (".jsonl", ".json", ".parquet")


def load_prompts(cfg: Any, world=None, tokenizer=None) -> list[str]:
    """Resolve `cfg` (the recipe's `prompts` section, a `PromptsConfig`) into a list of prompt strings
    (template applied, limit respected, order deterministic).

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


def source_prompts(
    source: str, world=None, *, field: str = "prompt", split: str = "test", what: str
) -> list[str]:
    """The raw prompts of a source: ``world:train|val|test`` (a world's split) or a JSONL/JSON/parquet file or
    HF dataset (column ``field``). ``what`` names the recipe field in errors."""
    if source.startswith("world:"):
        name = source.split(":", 1)[1]
        if world is None:
            raise RecipeError(f"{what}: {source!r} needs a world (world: default or a directory)")
        attr = {"train": "train_prompts", "val": "val_prompts", "test": "test_prompts"}.get(name)
        if attr is None:
            raise RecipeError(f"{what}: unknown world split {name!r} (train, val or test)")
        return list(getattr(world, attr))
    if not source:
        raise RecipeError(f"{what}: must not be empty")
    try:
        return _load_dataset_prompts(source, field, split)
    except (RecipeError, FileNotFoundError) as e:
        if what == "prompts.source":
            raise
        raise RecipeError(
            str(e).replace("prompts.source", what, 1).replace("prompts.field", what, 1)
        ) from None


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


def policy_tokenizer(policy: str | None, world=None):
    """The policy's tokenizer alone (no weights): what a chat template renders with, before models load."""
    path = policy or (str(world.policy_dir) if world is not None else None)
    if path is None:
        raise RecipeError("policy: needed (no world gives one)")
    return _cached_tokenizer(path)


@functools.lru_cache(maxsize=4)
def _cached_tokenizer(path: str):
    from stackalign.models.loading import _load_tokenizer, resolve_model_path

    try:
        return _load_tokenizer(resolve_model_path(path), False)
    except (ValueError, OSError, KeyError) as e:
        raise RecipeError(f"policy: {e}") from None


def _load_dataset_prompts(source: str, field: str, split: str) -> list[str]:
    import datasets

    path = Path(source)
    if path.suffix and path.suffix not in PROMPT_FILE_SUFFIXES and path.is_file():
        raise RecipeError(
            f"prompts.source: {clip(source)} is a {path.suffix} file; prompts files are "
            f"{', '.join(PROMPT_FILE_SUFFIXES)} (one object with a {field!r} field per prompt)"
        )
    if path.suffix == ".jsonl":
        return _read_jsonl_prompts(path, field)
    try:
        if path.suffix == ".json":
            if not path.is_file():
                raise FileNotFoundError(f"prompts.source: no such file {source!r}")
            ds = datasets.load_dataset("json", data_files=str(path), split="train")
        elif path.suffix == ".parquet":
            if not path.is_file():
                raise FileNotFoundError(f"prompts.source: no such file {source!r}")
            ds = datasets.load_dataset("parquet", data_files=str(path), split="train")
        else:
            ds = datasets.load_dataset(source, split=split)
    except FileNotFoundError:
        raise
    except Exception as e:  # datasets raises many types; surface one clear message
        raise RecipeError(f"prompts.source: could not load {source!r} ({type(e).__name__}: {e})") from None
    if field not in ds.column_names:
        raise RecipeError(f"prompts.field: {field!r} is not a column of {source!r} ({ds.column_names})")
    return [str(x) for x in ds[field]]


def _read_jsonl_prompts(path: Path, field: str) -> list[str]:
    """Prompts from a JSONL file, one object per line; a bad line is an error naming the file and line."""
    if not path.is_file():
        raise FileNotFoundError(f"prompts.source: no such file {str(path)!r}")
    out: list[str] = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise RecipeError(f"prompts.source: {path}:{lineno}: not a JSON object ({e.msg})") from None
            if not isinstance(row, dict) or field not in row:
                raise RecipeError(f"prompts.field: {path}:{lineno} has no field {field!r}")
            if not isinstance(row[field], str):
                raise RecipeError(f"prompts.field: {path}:{lineno}: {field!r} is not a string")
            out.append(row[field])
    if not out:
        raise RecipeError(f"prompts.source: {path} holds no prompts (empty file)")
    return out

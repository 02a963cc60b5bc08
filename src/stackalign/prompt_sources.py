"""Prompt sources shared by runs and training: a world's split, a local JSONL/JSON/parquet file, or an HF
dataset; and the policy's tokenizer alone, which a chat template renders with before any model loads.

Errors are RecipeErrors naming the recipe field that gave the source (``what``).
"""

from __future__ import annotations

import functools
import json
from pathlib import Path

from stackalign.config import clip
from stackalign.recipe_base import RecipeError, policy_path

__all__ = ["PROMPT_FILE_SUFFIXES", "policy_tokenizer", "source_prompts"]

PROMPT_FILE_SUFFIXES = (".jsonl", ".json", ".parquet")


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
    try:
        return _load_dataset_prompts(source, field, split)
    except (RecipeError, FileNotFoundError) as e:
        if what == "prompts.source":
            raise
        raise RecipeError(
            str(e).replace("prompts.source", what, 1).replace("prompts.field", what, 1)
        ) from None


def policy_tokenizer(policy: str | None, world=None):
    """The policy's tokenizer alone (no weights): what a chat template renders with, before models load."""
    return _cached_tokenizer(policy_path(policy, world))


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

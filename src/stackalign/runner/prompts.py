"""Prompt sources for a run: the sandbox world's splits, a local JSONL/parquet file, or an HF dataset."""

from __future__ import annotations

import json
from pathlib import Path

from stackalign.config import clip
from stackalign.runner.recipe import PromptsConfig, RecipeError

PROMPT_FILE_SUFFIXES = (".jsonl", ".json", ".parquet")


def load_prompts(cfg: PromptsConfig, world=None) -> list[str]:
    """Resolve `cfg` into a list of prompt strings (template applied, limit respected, order deterministic)."""
    src = cfg.source
    if src.startswith("world:"):
        split = src.split(":", 1)[1]
        if world is None:
            raise RecipeError(f"prompts.source: {src!r} needs a world (world: default or a directory)")
        attr = {"train": "train_prompts", "val": "val_prompts", "test": "test_prompts"}.get(split)
        if attr is None:
            raise RecipeError(f"prompts.source: unknown world split {split!r} (train, val or test)")
        raw = list(getattr(world, attr))
    else:
        raw = _load_dataset_prompts(cfg)
    if cfg.limit is not None:
        raw = raw[: cfg.limit]
    if not raw:
        raise RecipeError(f"prompts: the source {src!r} gave no prompts")
    if "{prompt}" not in cfg.template:
        raise RecipeError("prompts.template: must contain {prompt}")
    out = [cfg.template.replace("{prompt}", p) for p in raw]
    for i, p in enumerate(out):
        if not p.strip():
            raise RecipeError(f"prompts: prompt #{i} is empty")
    return out


def _load_dataset_prompts(cfg: PromptsConfig) -> list[str]:
    import datasets

    path = Path(cfg.source)
    if path.suffix and path.suffix not in PROMPT_FILE_SUFFIXES and path.is_file():
        raise RecipeError(
            f"prompts.source: {clip(cfg.source)} is a {path.suffix} file; prompts files are "
            f"{', '.join(PROMPT_FILE_SUFFIXES)} (one object with a {cfg.field!r} field per prompt)"
        )
    if path.suffix == ".jsonl":
        return _read_jsonl_prompts(path, cfg.field)
    try:
        if path.suffix == ".json":
            if not path.is_file():
                raise FileNotFoundError(f"prompts.source: no such file {cfg.source!r}")
            ds = datasets.load_dataset("json", data_files=str(path), split="train")
        elif path.suffix == ".parquet":
            if not path.is_file():
                raise FileNotFoundError(f"prompts.source: no such file {cfg.source!r}")
            ds = datasets.load_dataset("parquet", data_files=str(path), split="train")
        else:
            ds = datasets.load_dataset(cfg.source, split=cfg.split)
    except FileNotFoundError:
        raise
    except Exception as e:  # datasets raises many types; surface one clear message
        raise RecipeError(
            f"prompts.source: could not load {cfg.source!r} ({type(e).__name__}: {e})"
        ) from None
    if cfg.field not in ds.column_names:
        raise RecipeError(
            f"prompts.field: {cfg.field!r} is not a column of {cfg.source!r} ({ds.column_names})"
        )
    return [str(x) for x in ds[cfg.field]]


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

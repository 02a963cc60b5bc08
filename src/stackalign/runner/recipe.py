"""Recipes: YAML files that describe a run, validated where they enter.

A recipe names the models, the prompts, the methods (decoder x shaping x hyperparameters), the evaluation
and the seed. Unknown keys and bad values are errors that name the key (`methods[2].shaping`), never a
traceback from deep inside torch. `key=value` overrides from the command line use dotted paths
(`generation.max_new_tokens=64`, `methods.1.params.w=2`).

    world: default                 # "default" (the cached sandbox world), a world directory, or null
    policy: null                   # model name or path; null = the world's policy
    reward_model: null             # 1-label sequence classifier name or path; null = the world's proxy RM
    reward_chat_template: false    # the one reward-model input format: prompt + response, or chat template
    gold: world                    # "world" (the world's gold utility and judge) or null
    prompts: {source: world:test, limit: 100}   # or {source: Dahoas/full-hh-rlhf, split: test, field: prompt}
                                                # or {source: path/to/prompts.jsonl, field: prompt}
    generation: {max_new_tokens: 48, temperature: 1.0, top_p: 1.0, top_k: 0, stop_strings: ["\\nUser:"]}
    methods:
      - {name: ARGS, decoder: args, shaping: vanilla, params: {k: 10, w: 0.5}}
      - {name: SRS-ARGS, decoder: args, shaping: srs, preset: official-args, params: {k: 10, w: 0.5}}
    evaluation: {coherence: minilm, judge: gold, baselines: [ARGS]}
    seed: 0
    device: cpu
    dtype: float32
"""

from __future__ import annotations

import copy
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, get_args, get_origin, get_type_hints

import yaml

from stackalign.shaping import PRESETS, SHAPERS

DECODERS = ("base", "greedy", "bon", "soft_bon", "args", "cd_tokenwise", "cd_blockwise")


class RecipeError(ValueError):
    """A recipe problem; the message names the key."""


@dataclass
class PromptsConfig:
    source: str = (
        "world:test"  # world:train|world:val|world:test, an HF dataset name, or a .jsonl/.parquet path
    )
    split: str = "test"
    field: str = "prompt"
    limit: int | None = 100
    template: str = "{prompt}"  # applied to each raw prompt, e.g. "\n\nHuman: {prompt}\n\nAssistant:"


@dataclass
class GenerationSettings:
    max_new_tokens: int = 48
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    stop_strings: list[str] | None = None  # null = the world's stop strings (if any)
    batch_size: int = 8


@dataclass
class MethodConfig:
    name: str = ""
    decoder: str = "base"
    shaping: str = "vanilla"
    preset: str | None = None
    params: dict = field(default_factory=dict)


@dataclass
class EvaluationConfig:
    coherence: str | None = "minilm"  # "minilm" (offline default), an encoder name/path, or null
    judge: str | None = "gold"  # "gold", "llm", or null
    judge_model: str | None = None
    judge_base_url: str | None = None
    judge_api_key_env: str = "OPENAI_API_KEY"
    baselines: list[str] = field(default_factory=list)


@dataclass
class Recipe:
    world: str | None = "default"
    policy: str | None = None
    reward_model: str | None = None
    reward_chat_template: bool = False
    gold: str | None = "world"
    prompts: PromptsConfig = field(default_factory=PromptsConfig)
    generation: GenerationSettings = field(default_factory=GenerationSettings)
    methods: list[MethodConfig] = field(default_factory=list)
    evaluation: EvaluationConfig = field(default_factory=EvaluationConfig)
    seed: int = 0
    device: str = "cpu"
    dtype: str = "float32"

    def to_dict(self) -> dict:
        return asdict(self)


def _check_scalar(path: str, value: Any, typ: Any) -> Any:
    origin = get_origin(typ)
    args = get_args(typ)
    if origin is not None and type(None) in args:  # Optional[...]
        if value is None:
            return None
        inner = [a for a in args if a is not type(None)]
        return _check_scalar(path, value, inner[0])
    if typ is bool:
        if not isinstance(value, bool):
            raise RecipeError(f"{path}: expected true/false, got {value!r}")
        return value
    if typ is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise RecipeError(f"{path}: expected an integer, got {value!r}")
        return value
    if typ is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise RecipeError(f"{path}: expected a number, got {value!r}")
        return float(value)
    if typ is str:
        if not isinstance(value, str):
            raise RecipeError(f"{path}: expected a string, got {value!r}")
        return value
    if origin is list:
        if not isinstance(value, list):
            raise RecipeError(f"{path}: expected a list, got {value!r}")
        return [_check_scalar(f"{path}[{i}]", v, args[0]) for i, v in enumerate(value)]
    if typ is dict or origin is dict:
        if not isinstance(value, dict):
            raise RecipeError(f"{path}: expected a mapping, got {value!r}")
        return dict(value)
    if hasattr(typ, "__dataclass_fields__"):
        return _build(typ, value, path)
    raise RecipeError(f"{path}: unsupported type {typ}")  # pragma: no cover - schema bug


def _build(cls, data: Any, path: str):
    if not isinstance(data, dict):
        raise RecipeError(f"{path or 'recipe'}: expected a mapping, got {data!r}")
    hints = get_type_hints(cls)
    names = {f.name for f in fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        where = f"{path}." if path else ""
        raise RecipeError(f"unknown key(s) {', '.join(where + k for k in unknown)}; allowed: {sorted(names)}")
    kwargs = {}
    for f in fields(cls):
        if f.name in data:
            sub = f"{path}.{f.name}" if path else f.name
            typ = hints[f.name]
            if get_origin(typ) is list and hasattr(get_args(typ)[0], "__dataclass_fields__"):
                if not isinstance(data[f.name], list):
                    raise RecipeError(f"{sub}: expected a list")
                kwargs[f.name] = [
                    _build(get_args(typ)[0], v, f"{sub}[{i}]") for i, v in enumerate(data[f.name])
                ]
            else:
                kwargs[f.name] = _check_scalar(sub, data[f.name], typ)
        elif (
            f.default is MISSING and f.default_factory is MISSING
        ):  # pragma: no cover - all fields have defaults
            raise RecipeError(f"{path}.{f.name}: missing")
    return cls(**kwargs)


def _validate(recipe: Recipe) -> Recipe:
    if not recipe.methods:
        raise RecipeError("methods: at least one method is required")
    seen = set()
    for i, m in enumerate(recipe.methods):
        where = f"methods[{i}]"
        if not m.name:
            m.name = m.decoder if m.shaping == "vanilla" else f"{m.shaping}-{m.decoder}"
        if m.name in seen:
            raise RecipeError(f"{where}.name: duplicate method name {m.name!r}")
        seen.add(m.name)
        if m.decoder not in DECODERS:
            raise RecipeError(f"{where}.decoder: unknown {m.decoder!r}; choose from {list(DECODERS)}")
        if m.shaping not in SHAPERS:
            raise RecipeError(f"{where}.shaping: unknown {m.shaping!r}; choose from {list(SHAPERS)}")
        if m.preset is not None and m.preset not in PRESETS:
            raise RecipeError(f"{where}.preset: unknown {m.preset!r}; choose from {sorted(PRESETS)}")
        for key in ("w", "beta", "B", "alpha", "lam"):
            if key in m.params and not (isinstance(m.params[key], int | float) and m.params[key] > 0):
                raise RecipeError(f"{where}.params.{key}: must be a number > 0, got {m.params[key]!r}")
    g = recipe.generation
    if g.max_new_tokens < 1:
        raise RecipeError("generation.max_new_tokens: must be >= 1")
    if g.temperature <= 0:
        raise RecipeError("generation.temperature: must be > 0")
    if not 0 < g.top_p <= 1:
        raise RecipeError("generation.top_p: must be in (0, 1]")
    if g.batch_size < 1:
        raise RecipeError("generation.batch_size: must be >= 1")
    if recipe.prompts.limit is not None and recipe.prompts.limit < 1:
        raise RecipeError("prompts.limit: must be >= 1 or null")
    if recipe.evaluation.judge not in (None, "gold", "llm"):
        raise RecipeError(f"evaluation.judge: expected gold, llm or null, got {recipe.evaluation.judge!r}")
    if recipe.evaluation.judge == "llm" and not recipe.evaluation.judge_model:
        raise RecipeError("evaluation.judge_model: required when evaluation.judge is llm")
    if recipe.evaluation.judge == "gold" and recipe.gold is None:
        raise RecipeError("evaluation.judge: 'gold' needs a gold judge (gold: world)")
    names = {m.name for m in recipe.methods}
    for b in recipe.evaluation.baselines:
        if b not in names:
            raise RecipeError(f"evaluation.baselines: {b!r} is not a method name ({sorted(names)})")
    if recipe.gold not in (None, "world"):
        raise RecipeError(f"gold: expected 'world' or null, got {recipe.gold!r}")
    if recipe.world is None and (recipe.policy is None or recipe.reward_model is None):
        raise RecipeError("policy/reward_model: required when world is null")
    if recipe.dtype not in ("float32", "float16", "bfloat16"):
        raise RecipeError(f"dtype: expected float32, float16 or bfloat16, got {recipe.dtype!r}")
    return recipe


def _parse_value(text: str) -> Any:
    return yaml.safe_load(text) if text != "" else ""


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    """Apply `a.b.c=value` overrides (value parsed as YAML; list items addressed by index)."""
    data = copy.deepcopy(data)
    for item in overrides:
        if "=" not in item:
            raise RecipeError(f"override {item!r}: expected key=value")
        key, raw = item.split("=", 1)
        parts = key.split(".")
        node: Any = data
        for i, part in enumerate(parts[:-1]):
            where = ".".join(parts[: i + 1])
            if isinstance(node, list):
                if not part.isdigit() or int(part) >= len(node):
                    raise RecipeError(f"override {key}: no list item {where}")
                node = node[int(part)]
            else:
                node = node.setdefault(part, {})
                if not isinstance(node, dict | list):
                    raise RecipeError(f"override {key}: {where} is not a mapping")
        last = parts[-1]
        if isinstance(node, list):
            if not last.isdigit() or int(last) >= len(node):
                raise RecipeError(f"override {key}: no list item {last}")
            node[int(last)] = _parse_value(raw)
        else:
            node[last] = _parse_value(raw)
    return data


def recipe_from_dict(data: dict, overrides: list[str] | None = None) -> Recipe:
    data = apply_overrides(data or {}, overrides or [])
    return _validate(_build(Recipe, data, ""))


def load_recipe(path: str | Path, overrides: list[str] | None = None) -> Recipe:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"recipe: no such file {str(path)!r}")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise RecipeError(f"recipe {path}: not valid YAML ({e})") from None
    return recipe_from_dict(data, overrides)

"""Train recipes: one flat YAML mapping = the common fields (:class:`TrainConfig`) + the algorithm's own
fields (its config dataclass, found through :data:`ALGORITHMS`).

    algorithm: rl                 # rl | rlhf | slhf | dpo | ssapo
    world: default                # "default", a world directory, or null (then policy/reward_model needed)
    steps: 40
    lr: 2.0e-5
    prompts_per_step: 4
    eval: {limit: 40, samples: 4, every: 10}
    # the algorithm's fields, e.g. for rl:
    group_size: 8
    shaping: srs
    preset: official-cd

The whole recipe is checked before any model loads: an unknown key (with a "did you mean"), a wrong type
or a bad value is an error naming its path. ``key=value`` overrides use dotted paths (``eval.every=5``,
``world=worlds/world1``, ``steps=10``, ``shaping=vanilla``).

Registry: each algorithm name maps to ``"module:ConfigClass"`` and ``"module:train_function"``, imported
lazily (a missing module gives a clear "not available" error). The train function is called as
``train(ctx: TrainContext) -> dict`` and returns the algorithm's part of ``summary.json``.
"""

from __future__ import annotations

import importlib
import math
import re
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from stackalign.config import build as _build
from stackalign.config import clip, did_you_mean
from stackalign.models.lora import LoraSettings
from stackalign.recipe_base import (
    RecipeError,
    apply_overrides,
    policy_field,
    read_yaml,
    reward_model_field,
    world_field,
)

__all__ = [
    "ALGORITHMS",
    "EvalSettings",
    "TrainConfig",
    "ResolvedRecipe",
    "register_algorithm",
    "resolve_algorithm",
    "load_train_recipe",
    "train_recipe_from_dict",
    "config_diff",
]


TRAIN_DEVICE_RE = re.compile(r"^(cpu|auto|mps|cuda(:\d+)?|xpu(:\d+)?)$")


@dataclass
class EvalSettings:
    """How a trained policy is evaluated (shared by every algorithm)."""

    prompts: str = field(
        default="world:test",
        metadata={
            "help": "evaluation prompts: world:test, world:val, world:train or a .jsonl file ('prompt' field)"
        },
    )
    limit: int | None = field(default=40, metadata={"help": "use the first N evaluation prompts (null: all)"})
    samples: int = field(default=4, metadata={"help": "responses sampled per evaluation prompt"})
    temperature: float = field(
        default=1.0, metadata={"help": "evaluation sampling temperature (0 = greedy, then samples must be 1)"}
    )
    every: int = field(
        default=0,
        metadata={"help": "evaluate every N training steps for the training curve (0: start and end)"},
    )
    seed: int = field(
        default=1234, metadata={"help": "seed of the evaluation samples (same for every policy)"}
    )

    def __post_init__(self) -> None:
        if self.limit is not None and self.limit < 1:
            raise ValueError(f"limit: must be >= 1 or null, got {self.limit}")
        if self.samples < 1:
            raise ValueError(f"samples: must be >= 1, got {self.samples}")
        if self.temperature < 0:
            raise ValueError(f"temperature: must be >= 0, got {self.temperature}")
        if self.temperature == 0 and self.samples != 1:
            raise ValueError("samples: greedy evaluation (temperature 0) draws 1 sample per prompt")
        if self.every < 0:
            raise ValueError(f"every: must be >= 0, got {self.every}")
        _check_prompt_source(self.prompts, ("world:test", "world:val", "world:train"), "prompts")


@dataclass
class TrainConfig:
    """The fields every train recipe shares."""

    algorithm: str = field(default="rl", metadata={"help": "rl | rlhf | slhf | dpo | ssapo"})
    world: str | None = world_field()
    policy: str | None = policy_field()
    reward_model: str | None = reward_model_field()
    seed: int = field(default=0, metadata={"help": "seed of everything random in training"})
    device: str = field(default="cpu", metadata={"help": "cpu, cuda, cuda:N or auto"})
    dtype: str = field(default="float32", metadata={"help": "float32, float16 or bfloat16"})
    steps: int = field(default=40, metadata={"help": "optimizer steps"})
    lr: float = field(default=2e-5, metadata={"help": "AdamW learning rate"})
    weight_decay: float = field(default=0.0, metadata={"help": "AdamW weight decay"})
    max_grad_norm: float | None = field(default=1.0, metadata={"help": "gradient clipping norm (null: off)"})
    prompts_per_step: int = field(default=4, metadata={"help": "training prompts per optimizer step"})
    train_prompts: str = field(
        default="world:train",
        metadata={"help": "training prompts: world:train, world:val or a .jsonl file ('prompt' field)"},
    )
    chat_template: bool = field(
        default=False,
        metadata={
            "help": "render training and evaluation prompts with the policy tokenizer's chat template (and "
            "SLHF's follower turn through it)"
        },
    )
    system: str | None = field(
        default=None, metadata={"help": "with chat_template: a system turn before the user turn (null: none)"}
    )
    max_new_tokens: int | None = field(
        default=None, metadata={"help": "response length cap (null: the world's max_new_tokens)"}
    )
    temperature: float = field(default=1.0, metadata={"help": "sampling temperature during training"})
    checkpoint_every: int = field(default=10, metadata={"help": "save a checkpoint every N steps"})
    keep_checkpoints: int = field(default=2, metadata={"help": "how many checkpoints to keep"})
    progress: bool = field(default=True, metadata={"help": "show a progress bar"})
    eval: EvalSettings = field(default_factory=EvalSettings, metadata={"help": "evaluation settings"})
    lora: LoraSettings | None = field(
        default=None,
        metadata={
            "help": "LoRA adapters instead of full fine-tuning: {r, alpha, dropout, target_modules, shared, merge}"
        },
    )
    gradient_checkpointing: bool = field(
        default=False,
        metadata={"help": "recompute each decoder layer in the backward pass (less activation memory)"},
    )
    bf16: bool = field(
        default=False,
        metadata={"help": "bfloat16 autocast of the training steps (weights and optimizer stay in dtype)"},
    )

    def __post_init__(self) -> None:
        if self.steps < 1:
            raise ValueError(f"steps: must be >= 1, got {self.steps}")
        if not self.lr > 0:
            raise ValueError(f"lr: must be > 0, got {self.lr}")
        if self.prompts_per_step < 1:
            raise ValueError(f"prompts_per_step: must be >= 1, got {self.prompts_per_step}")
        if self.max_new_tokens is not None and self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens: must be >= 1 or null, got {self.max_new_tokens}")
        if not self.temperature > 0:
            raise ValueError(f"temperature: must be > 0, got {self.temperature}")
        if self.dtype not in ("float32", "float16", "bfloat16"):
            raise ValueError(f"dtype: expected float32, float16 or bfloat16, got {self.dtype!r}")
        if self.world is None and self.policy is None:
            raise ValueError("policy: required when world is null")
        _check_prompt_source(self.train_prompts, ("world:train", "world:val"), "train_prompts")
        if self.system is not None and (not self.chat_template or not self.system.strip()):
            raise ValueError("system: a non-empty system turn that needs chat_template: true")
        if not (math.isfinite(self.weight_decay) and self.weight_decay >= 0):
            raise ValueError(f"weight_decay: must be a finite number >= 0, got {self.weight_decay}")
        if self.max_grad_norm is not None and not (
            math.isfinite(self.max_grad_norm) and self.max_grad_norm > 0
        ):
            raise ValueError(f"max_grad_norm: must be > 0 or null, got {self.max_grad_norm}")
        if not TRAIN_DEVICE_RE.match(self.device):
            raise ValueError(f"device: expected cpu, cuda, cuda:N, mps, xpu or auto, got {self.device!r}")
        if self.checkpoint_every < 1 or self.keep_checkpoints < 1:
            raise ValueError("checkpoint_every / keep_checkpoints: must be >= 1")


def _check_prompt_source(source: str, splits: tuple[str, ...], key: str) -> None:
    """A prompt source is one of ``splits`` (a world's) or an existing .jsonl file."""
    if source in splits:
        return
    if source.startswith("world:") or not source.endswith(".jsonl"):
        raise ValueError(f"{key}: expected {', '.join(splits)} or a .jsonl file, got {source!r}")
    if not Path(source).expanduser().is_file():
        raise ValueError(f"{key}: no such file {source!r}")


# name -> ("module:ConfigClass", "module:train_function")
ALGORITHMS: dict[str, tuple[str, str]] = {
    "rl": ("stackalign.training.rl:RLConfig", "stackalign.training.rl:train"),
    "rlhf": ("stackalign.training.slhf:RLHFConfig", "stackalign.training.slhf:train_rlhf"),
    "slhf": ("stackalign.training.slhf:SLHFConfig", "stackalign.training.slhf:train"),
    "selfplay": ("stackalign.training.selfplay:SelfPlayConfig", "stackalign.training.selfplay:train"),
    "dpo": ("stackalign.training.dpo:DPOConfig", "stackalign.training.dpo:train"),
    "ssapo": ("stackalign.training.ssapo:SSAPOConfig", "stackalign.training.ssapo:train"),
}


def register_algorithm(name: str, config: str, train: str) -> None:
    """Add (or replace) an algorithm: ``config``/``train`` are ``"module:attr"`` strings."""
    for what, ref in (("config", config), ("train", train)):
        if ":" not in ref:
            raise ValueError(f"{what}: expected 'module:attr', got {ref!r}")
    ALGORITHMS[name] = (config, train)


def _import(ref: str, algorithm: str) -> Any:
    module, attr = ref.split(":")
    try:
        mod = importlib.import_module(module)
    except ModuleNotFoundError as e:
        if e.name and (module == e.name or module.startswith(e.name + ".")):
            raise RecipeError(
                f"algorithm: {algorithm!r} is not available in this installation (module {module} is missing)"
            ) from None
        raise
    try:
        return getattr(mod, attr)
    except AttributeError:
        raise RecipeError(f"algorithm: {algorithm!r} is not available ({module} has no {attr})") from None


def resolve_algorithm(name: str) -> tuple[type, Any]:
    """``(ConfigClass, train_function)`` of a registered algorithm."""
    if name not in ALGORITHMS:
        raise RecipeError(f"algorithm: unknown {name!r}; choose from {sorted(ALGORITHMS)}")
    cfg_ref, train_ref = ALGORITHMS[name]
    return _import(cfg_ref, name), _import(train_ref, name)


@dataclass
class ResolvedRecipe:
    common: TrainConfig
    algo: Any  # the algorithm's config dataclass instance
    train_fn: Any

    @property
    def algorithm(self) -> str:
        return self.common.algorithm

    def to_dict(self) -> dict:
        """The resolved config as written to ``config.json`` (flat, like the YAML)."""
        return {**asdict(self.common), **asdict(self.algo)}


def _names(cls: type) -> list[str]:
    return [f.name for f in fields(cls)]


def train_recipe_from_dict(data: dict | None, overrides: list[str] | None = None) -> ResolvedRecipe:
    """Validate a train recipe mapping (after ``key=value`` overrides); nothing is loaded."""
    data = apply_overrides(data or {}, overrides or [])
    if not isinstance(data, dict):
        raise RecipeError(f"recipe: expected a mapping, got {clip(data)}")
    name = data.get("algorithm", TrainConfig.algorithm)
    if not isinstance(name, str):
        raise RecipeError(f"algorithm: expected a string, got {clip(name)}")
    algo_cls, train_fn = resolve_algorithm(name)
    common_names, algo_names = set(_names(TrainConfig)), set(_names(algo_cls))
    clash = common_names & algo_names
    if clash:  # pragma: no cover - a bug in an algorithm's config
        raise RecipeError(f"{algo_cls.__name__} redefines common field(s) {sorted(clash)}")
    unknown = sorted(set(data) - common_names - algo_names)
    if unknown:
        allowed = sorted(common_names | algo_names)
        hints = []
        for k in unknown:
            close = did_you_mean(k, allowed)
            hints.append(f"{k}" + (f" (did you mean {close!r}?)" if close else ""))
        raise RecipeError(f"unknown key(s) {', '.join(hints)} for algorithm {name!r}; allowed: {allowed}")
    defaults = TrainConfig()  # config.json holds every common field, at its default when unused
    ignored = [
        k for k in getattr(algo_cls, "UNUSED_COMMON", ()) if k in data and data[k] != getattr(defaults, k)
    ]
    if ignored:
        raise RecipeError(
            f"{ignored[0]}: not used by algorithm {name!r} (its steps follow from its own fields); remove it"
        )
    try:  # stackalign.config: strict types, range checks of __post_init__, the path in every message
        common = _build(TrainConfig, {k: v for k, v in data.items() if k in common_names})
        algo = _build(algo_cls, {k: v for k, v in data.items() if k in algo_names})
    except ValueError as e:
        raise RecipeError(str(e)) from None
    return ResolvedRecipe(common, algo, train_fn)


def load_train_recipe(path: str | Path, overrides: list[str] | None = None) -> ResolvedRecipe:
    return train_recipe_from_dict(read_yaml(path), overrides)


def config_diff(old: dict, new: dict, prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two resolved configs, as ``key: old -> new``."""
    out = []
    for k in sorted(set(old) | set(new), key=str):
        a, b = old.get(k, "<absent>"), new.get(k, "<absent>")
        if isinstance(a, dict) and isinstance(b, dict):
            out += config_diff(a, b, f"{prefix}{k}.")
        elif a != b:
            out.append(f"{prefix}{k}: {a!r} -> {b!r}")
    return out

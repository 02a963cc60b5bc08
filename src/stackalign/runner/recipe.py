"""Recipes: YAML files that describe a run, checked whole before anything loads.

A recipe names the models, the prompts, the methods (decoder x shaping x parameters), the evaluation and the
seed. Every section is a config dataclass (help text on each field); `stackalign.config.build` validates the
YAML against it — strict types, no unknown keys, finite numbers — and each method's `params` against the schema
of its decoder (the decoder registry, `stackalign.runner.decoders`). Errors name the path with a suggestion
(`methods[1].params.temprature: unknown key; did you mean 'temperature'?`). `key=value` overrides from the
command line use dotted paths (`generation.max_new_tokens=64`, `methods.1.params.w=2`).

`stackalign recipe check R.yaml` prints the resolved recipe (every default filled in);
`stackalign recipe schema` prints every field with its type, default and help.

    world: default
    prompts: {source: world:test, limit: 100}
    generation: {max_new_tokens: 48}
    methods:
      - {name: ARGS, decoder: args, shaping: vanilla, params: {k: 10, w: 0.5}}
      - {name: SRS-ARGS, decoder: args, shaping: srs, preset: official-args, params: {k: 10, w: 0.5}}
    evaluation: {coherence: minilm, judge: gold, baselines: [ARGS]}
"""

from __future__ import annotations

import dataclasses
import logging
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from stackalign.config import ConfigError, build, clip
from stackalign.generation import GenerationConfig, SamplingSettings
from stackalign.recipe_base import (
    RecipeError,
    apply_overrides,
    policy_field,
    read_yaml,
    reward_model_field,
    world_field,
)

SHAPING_NAMES = ("vanilla", "meanstd", "minmax", "cap", "meansoft", "hard", "srs")
PRESET_NAMES = ("paper", "official-args", "official-cd")
DEVICE_RE = re.compile(r"^(cpu|mps|cuda(:\d+)?|xpu(:\d+)?)$")
# a method's name becomes a folder name in the run directory (cd_heads/NAME, threshold_predictors/NAME)
METHOD_NAME_RE = re.compile(r"^[A-Za-z0-9_.+\-@=,() ]{1,100}$")


log = logging.getLogger("stackalign")


def _help(text: str, default: Any = None, factory: Any = None):
    if factory is not None:
        return field(default_factory=factory, metadata={"help": text})
    return field(default=default, metadata={"help": text})


@dataclass
class PromptsConfig:
    source: str = _help(
        "world:train | world:val | world:test, a .jsonl/.json/.parquet file, or an HF dataset name",
        "world:test",
    )
    split: str = _help("dataset split (HF datasets only)", "test")
    field: str = _help("the column that holds the prompt text (files and HF datasets)", "prompt")
    limit: int | None = _help("use the first `limit` prompts; null = all", 100)
    template: str = _help(
        'applied to each raw prompt; must contain {prompt}, e.g. "\\n\\nHuman: {prompt}\\n\\nAssistant:"',
        "{prompt}",
    )
    chat_template: bool = _help(
        "render each prompt with the policy tokenizer's chat template (a user turn holding the templated "
        "prompt + the assistant's generation prompt); the reward model and refinement read the conversation",
        False,
    )
    system: str | None = _help("with chat_template: a system turn before the user turn (null: none)", None)

    def __post_init__(self) -> None:
        if self.limit is not None and self.limit < 1:
            raise ValueError(f"limit: must be >= 1 or null, got {self.limit!r}")
        if "{prompt}" not in self.template:
            raise ValueError(f"template: must contain {{prompt}}, got {self.template!r}")
        if not self.source:
            raise ValueError("source: must not be empty")
        if self.system is not None and not self.chat_template:
            raise ValueError("system: a system turn needs chat_template: true")
        if self.system is not None and not self.system.strip():
            raise ValueError("system: must not be empty (null for none)")


@dataclass(frozen=True)
class GenerationSettings(SamplingSettings):
    """The recipe's ``generation:`` section: the decoders' `SamplingSettings` (length, temperature, top-p,
    top-k; validated there) plus the stop strings and the batch size. `to_config` makes the decoders'
    `GenerationConfig` from it."""

    max_new_tokens: int = _help("new tokens per response, at most", 48)
    stop_strings: list[str] | None = _help(
        "texts that end a response (trimmed from it); null = the world's stop strings", None
    )
    batch_size: int = _help("prompts decoded together", 8)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.batch_size < 1:
            raise ValueError(f"batch_size: must be >= 1, got {self.batch_size}")
        if self.stop_strings is not None and any(not s for s in self.stop_strings):
            raise ValueError("stop_strings: an empty stop string would end every response at once")

    def to_config(self, stop_strings: Sequence[str], seed: int) -> GenerationConfig:
        """The decoders' settings: these, with the resolved stop strings (the world's when the recipe's are
        null) and the recipe's seed."""
        fields = {f.name: getattr(self, f.name) for f in dataclasses.fields(SamplingSettings)}
        return GenerationConfig(**fields, stop_strings=tuple(stop_strings), seed=seed)


@dataclass
class MethodConfig:
    name: str = _help("the method's name in tables (default: derived from decoder and shaping)", "")
    decoder: str = _help(
        "a registered decoder (each with its params below, under 'Method params, by decoder'); a new one is "
        "added with `stackalign.runner.decoders.register_decoder`",
        "base",
    )
    shaping: Literal[SHAPING_NAMES] = _help(  # type: ignore[valid-type]
        "the reward shaping handed to the decoder: vanilla (raw reward), meanstd, minmax, cap, meansoft, "
        "hard, srs (Stackelberg soft threshold)",
        "vanilla",
    )
    preset: Literal[PRESET_NAMES] | None = _help(  # type: ignore[valid-type]
        "an SRS preset (srs or hard shaping): paper, official-args, official-cd", None
    )
    params: dict[str, Any] = _help(
        "the decoder's and the shaping's parameters (see `stackalign recipe schema`)", factory=dict
    )


@dataclass
class EvaluationConfig:
    coherence: str | None = _help(
        "minilm (the offline MiniLM encoder, extra `coherence`), an HF encoder name/path, or null = off",
        "minilm",
    )
    judge: Literal["gold", "llm", "reward_model", "hf"] | None = _help(
        "win-tie judge: gold (the world's), llm (an OpenAI-compatible API), reward_model (the soft preference "
        "sigmoid(r - r') of the recipe's reward model, from the rows' proxy reward), hf (a local chat model, "
        "judge_model), or null = none",
        "gold",
    )
    judge_model: str | None = _help(
        "judge: llm, the API's model name; judge: hf, a local chat model's name (smollm2-135m-instruct) or "
        "HF directory",
        None,
    )
    judge_base_url: str | None = _help(
        "base URL of the OpenAI-compatible API (judge: llm); null = api.openai.com", None
    )
    judge_api_key_env: str | None = _help(
        "the environment variable that holds the judge's API key; null = a server that needs no key",
        "OPENAI_API_KEY",
    )
    baselines: list[str] = _help("method names the others are compared with (win-tie)", factory=list)
    judge_orders: Literal["one", "both"] = _help(
        "llm/hf judge: one = each pair shown once, in a seeded random order; both = shown in both orders, a "
        "verdict counts only if the two agree (else a tie), and the position-flip rate is reported",
        "one",
    )
    length_control: bool = _help(
        "also report a length-controlled win rate: a logistic regression of the verdict on the answers' "
        "normalised length difference, read at zero difference (AlpacaEval 2)",
        False,
    )
    judge_max_new_tokens: int | None = _help(
        "reply length of the llm/hf judge (the scores are on its first line); null = 2048 (llm), 32 (hf)",
        None,
    )
    judge_batch_size: int = _help("hf judge: conversations generated together", 8)

    def __post_init__(self) -> None:
        if self.judge_max_new_tokens is not None and self.judge_max_new_tokens < 1:
            raise ValueError(f"judge_max_new_tokens: must be >= 1 or null, got {self.judge_max_new_tokens}")
        if self.judge_batch_size < 1:
            raise ValueError(f"judge_batch_size: must be >= 1, got {self.judge_batch_size}")


@dataclass
class BackendConfig:
    kind: Literal["serial", "ray"] = _help(
        "serial (one process) or ray (work units on Ray actors; extra `ray`); both write the same rows",
        "serial",
    )
    workers: int = _help("ray: actors, each loading the models once and decoding many batches", 2)
    address: str | None = _help(
        "ray: the cluster to attach to (ray://host:10001 or host:6379); null = $RAY_ADDRESS if set, "
        "else a local Ray instance",
        None,
    )
    cpus_per_worker: float = _help("ray: CPUs reserved per actor (also its torch thread count)", 1.0)
    gpus_per_worker: float = _help("ray: GPUs reserved per actor (fractions share a GPU)", 0.0)
    max_restarts: int = _help(
        "ray: how often a dead actor is restarted; its unfinished units are retried on the new one", 3
    )

    def __post_init__(self) -> None:
        if self.workers < 1:
            raise ValueError(f"workers: must be >= 1, got {self.workers}")
        if not self.cpus_per_worker > 0:
            raise ValueError(f"cpus_per_worker: must be > 0, got {self.cpus_per_worker}")
        if self.gpus_per_worker < 0:
            raise ValueError(f"gpus_per_worker: must be >= 0, got {self.gpus_per_worker}")
        if self.max_restarts < 0:
            raise ValueError(f"max_restarts: must be >= 0, got {self.max_restarts}")


@dataclass
class Recipe:
    world: str | None = world_field()
    policy: str | None = policy_field()
    reward_model: str | None = reward_model_field()
    reward_chat_template: bool = _help(
        "reward-model input: false = prompt + response text, true = the RM tokenizer's chat template", False
    )
    gold: Literal["world"] | None = _help("world = the world's gold utility and judge; null = none", "world")
    prompts: PromptsConfig = _help("where the prompts come from", factory=PromptsConfig)
    generation: GenerationSettings = _help("length, stopping and base sampling", factory=GenerationSettings)
    methods: list[MethodConfig] = _help("the methods to run, in order", factory=list)
    evaluation: EvaluationConfig = _help("metrics and judge", factory=EvaluationConfig)
    backend: BackendConfig = _help(
        "where the work runs: serial, or ray (`stackalign run R --backend ray`)", factory=BackendConfig
    )
    seed: int = _help("base seed; every prompt's generator is seeded from (seed, prompt)", 0)
    device: str = _help("cpu, cuda, cuda:N or mps", "cpu")
    dtype: Literal["float32", "float16", "bfloat16"] = _help("model weights' dtype", "float32")
    threads: int | None = _help(
        "torch CPU threads of a serial run (null: the machine's cores); on a busy machine 1 can be much faster",
        None,
    )

    def to_dict(self) -> dict:
        return asdict(self)


def _validate(recipe: Recipe) -> Recipe:
    """Cross-field checks, and each method's params against its decoder's schema (defaults filled in)."""
    from stackalign.runner.methods import resolve_method

    if not recipe.methods:
        raise RecipeError("methods: at least one method is required")
    if not DEVICE_RE.match(recipe.device):
        raise RecipeError(f"device: expected cpu, cuda, cuda:N or mps, got {clip(recipe.device)}")
    if recipe.threads is not None and (isinstance(recipe.threads, bool) or recipe.threads < 1):
        raise RecipeError(f"threads: must be an integer >= 1 or null, got {recipe.threads!r}")
    seen: set[str] = set()
    for i, m in enumerate(recipe.methods):
        if not m.name:
            m.name = m.decoder if m.shaping == "vanilla" else f"{m.shaping}-{m.decoder}"
        check_method_name(m.name, f"methods[{i}].name")
        if m.name in seen:
            raise RecipeError(f"methods[{i}].name: duplicate method name {m.name!r}")
        seen.add(m.name)
        m.params = resolve_method(m, i).params
    ev = recipe.evaluation
    if ev.judge == "llm" and not ev.judge_model:
        raise RecipeError("evaluation.judge_model: required when evaluation.judge is llm")
    if ev.judge == "gold" and recipe.gold is None:
        raise RecipeError("evaluation.judge: 'gold' needs a gold judge (gold: world)")
    _validate_judge(ev)
    for b in ev.baselines:
        if b not in seen:
            raise RecipeError(f"evaluation.baselines: {b!r} is not a method name ({sorted(seen)})")
    if recipe.gold == "world" and recipe.world is None:
        raise RecipeError("gold: 'world' needs a world (world: default or a directory), or gold: null")
    if recipe.world is None and (recipe.policy is None or recipe.reward_model is None):
        raise RecipeError("policy/reward_model: required when world is null")
    for note in ignored_settings(recipe):
        log.warning("stackalign: warning: %s", note)
    if recipe.prompts.source.startswith("world:"):
        split = recipe.prompts.source.split(":", 1)[1]
        if split not in ("train", "val", "test"):
            raise RecipeError(
                f"prompts.source: unknown world split {split!r} (world:train, world:val, world:test)"
            )
        if recipe.world is None:
            raise RecipeError(f"prompts.source: {recipe.prompts.source!r} needs a world")
    return recipe


def _validate_judge(ev: EvaluationConfig) -> None:
    """The judge fields that only one kind of judge reads must not be set for another."""
    chat = ev.judge in ("llm", "hf")
    if ev.judge == "hf" and not ev.judge_model:
        raise RecipeError("evaluation.judge_model: required when evaluation.judge is hf (a local chat model)")
    if ev.judge_model is not None and not chat:
        raise RecipeError(
            f"evaluation.judge_model: only read by judge: llm or hf (evaluation.judge is {ev.judge or 'null'})"
        )
    if ev.judge_base_url is not None and ev.judge != "llm":
        raise RecipeError(
            f"evaluation.judge_base_url: only read by judge: llm (judge is {ev.judge or 'null'})"
        )
    if ev.judge_orders == "both" and not chat:
        raise RecipeError(
            f"evaluation.judge_orders: 'both' needs a judge that reads the answers in an order (llm or hf); "
            f"judge {ev.judge or 'null'} has none"
        )
    if ev.judge_max_new_tokens is not None and not chat:
        raise RecipeError(
            f"evaluation.judge_max_new_tokens: only read by judge: llm or hf (judge is {ev.judge or 'null'})"
        )
    if ev.length_control and ev.judge is None:
        raise RecipeError("evaluation.length_control: needs a judge (evaluation.judge is null)")
    if ev.length_control and not ev.baselines:
        raise RecipeError("evaluation.length_control: needs evaluation.baselines to compare against")


def ignored_settings(recipe: Recipe) -> list[str]:
    """Settings the recipe gives that this recipe's other choices never read (each named; the run warns)."""
    notes = []
    b, default = recipe.backend, BackendConfig()
    if b.kind == "serial":
        for key in ("workers", "address", "cpus_per_worker", "gpus_per_worker", "max_restarts"):
            if getattr(b, key) != getattr(default, key):
                notes.append(f"backend.{key}: ignored by the serial backend (backend.kind: ray uses it)")
    p, pdefault = recipe.prompts, PromptsConfig()
    if p.source.startswith("world:"):
        for key in ("split", "field"):
            if getattr(p, key) != getattr(pdefault, key):
                notes.append(f"prompts.{key}: ignored for a world prompt source ({p.source})")
    return notes


def check_method_name(name: str, where: str) -> None:
    """A method name is a safe folder name: ASCII letters and digits, `-_.+@=,()` and inner spaces, at most 100
    characters, not only dots (no `/`, no `..`: nothing is written outside the run directory)."""
    if not METHOD_NAME_RE.match(name) or set(name) == {"."} or name != name.strip():
        raise RecipeError(
            f"{where}: {clip(name)} is not a valid method name (letters, digits, '-_.+@=,()' and inner "
            "spaces, at most 100 characters, not only dots)"
        )


def recipe_from_dict(data: dict | None, overrides: list[str] | None = None) -> Recipe:
    if data is not None and not isinstance(data, dict):
        raise RecipeError(f"recipe: expected a mapping at the top level, got {type(data).__name__}")
    data = apply_overrides(data or {}, overrides or [])
    try:
        recipe = build(Recipe, data)
    except RecipeError:
        raise
    except ConfigError as e:
        raise RecipeError(str(e)) from None
    return _validate(recipe)


def load_recipe(path: str | Path, overrides: list[str] | None = None) -> Recipe:
    return recipe_from_dict(read_yaml(path), overrides)

"""The decoder registry: one entry per decoder, everything the runner, the recipe schema, the sweep and the
demo need to know about it.

An entry (:class:`Decoder`) holds the decoder's recipe ``params`` (each a field of a library config, whose
default and help text are used, or a setting of the runner's own), ``configs`` (the library configs built
from the resolved params), ``make`` (the factory: a :class:`Build` -> ``generate(prompts) -> rows``), and the
name of its reward weight 1/beta (``weight``: what `stackalign sweep` varies; None = nothing to sweep).

Adding a decoder is one module (a config dataclass and a factory) plus one registration line, like training
algorithms (:func:`stackalign.training.register_algorithm`)::

    from stackalign.runner.decoders import register_decoder
    register_decoder("toy", config=ToyConfig, make="mypkg.toy:make_toy", help="...")

after which ``decoder: toy`` works in a recipe, ``stackalign recipe schema`` lists its params, and (with
``weight=``) ``stackalign sweep`` can sweep it. The built-in decoders are registered at the end of this
module; their factories live in :mod:`stackalign.runner.methods` and are imported when first used.
"""

from __future__ import annotations

import dataclasses
import importlib
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal, get_type_hints

import pydantic
from pydantic import Field

from stackalign.config import STRICT, help_of, type_name
from stackalign.decoding.args import ARGSConfig
from stackalign.decoding.bon import BoNConfig, bon_threshold_generation
from stackalign.decoding.cd import CDConfig
from stackalign.decoding.cd_data import CDDataConfig
from stackalign.decoding.refine import RefineConfig
from stackalign.decoding.threshold_predictor import PredictorConfig
from stackalign.decoding.value_head import ValueTrainConfig
from stackalign.shaping import Shaper

__all__ = ["DECODERS", "Build", "Decoder", "Param", "Settings", "get_decoder", "register_decoder"]

# a row of a decoded prompt: {"response": str, "lm_tokens": float, "rm_tokens": float}
Generate = Callable[[list[str]], list[dict]]
NAME_RE = re.compile(r"^[a-z][a-z0-9_]*$")


@dataclass(frozen=True)
class Param:
    """One key of a decoder's recipe params: a field of a library config (`source=(Class, "field")`, whose
    default and help text are used), or a setting of the runner's own (`type`, `default`, `help`)."""

    key: str
    source: tuple[type, str] | None = None
    type: Any = None
    default: Any = None
    help: str = ""

    def spec(self) -> tuple[Any, Any, str]:
        """(type, default, help) of this key."""
        if self.source is None:
            return self.type, self.default, self.help
        cls, name = self.source
        f = next(f for f in dataclasses.fields(cls) if f.name == name)
        hints = get_type_hints(cls)
        return hints[name], f.default, help_of(cls, name)


@dataclass(frozen=True)
class Settings:
    """The run-wide settings a decoder's configs may read (from the recipe's `generation` and `seed`)."""

    batch_size: int = 1
    max_new_tokens: int = 1
    seed: int = 0


@dataclass
class Build:
    """What a decoder's factory gets: the method's plan, the run's context, the configs built from the
    method's params and the recipe's generation settings.

    ``plan``: a :class:`stackalign.runner.methods.MethodPlan` (``name``, ``decoder_params``, ``shaper``: the
    method's reward shaping or None for vanilla). ``ctx``: the loaded run (``policy``, ``tokenizer``,
    ``reward``: a batched reward model ``reward(prompts, responses) -> tensor``, ``recipe``, ``world``,
    ``out_dir``, ``stop_strings``). ``generation``: a
    :class:`stackalign.decoding.common.GenerationConfig` (length, sampling, stop strings, seed).
    ``head`` / ``predictor`` / ``thresholds``: given by the Ray workers, which compute them elsewhere
    (a CD value head, a threshold predictor, per-prompt thresholds)."""

    plan: Any
    ctx: Any
    configs: dict[str, Any]
    generation: Any
    head: Any = None
    predictor: Any = None
    thresholds: Any = None

    @property
    def config(self) -> Any:
        """The config of a decoder registered with ``config=`` (``configs["config"]``)."""
        return self.configs["config"]


@dataclass(frozen=True)
class Decoder:
    """A registered decoder (see the module docstring).

    ``shaped``: takes a reward shaping (and its parameters). ``wraps``: the param naming another decoder
    whose answer this one starts from (refine's ``first``, with its params in ``<wraps>_params``); the
    method's shaping goes to that decoder. ``shares``: run-directory folders that do not depend on the
    weight, shared by a sweep's values (CD's offline samples and value heads). ``mc_generation``: the
    generation settings of the Monte Carlo threshold samples (``threshold: mc``) given the run's. ``check``:
    ``check(recipe, method) -> [problem, ...]``, what ``stackalign run`` checks before any model loads
    (refine: the follower's turn needs a chat template or a world). A param named ``train_source`` (CD's
    offline prompts) is checked for every decoder: a world split needs a world, a file must exist."""

    name: str
    help: str
    make: str | Callable[[Build], Generate]
    params: tuple[Param, ...] = ()
    configs: Callable[[dict, Settings], dict[str, Any]] | None = None
    shaped: bool = True
    weight: str | None = None
    wraps: str | None = None
    shares: tuple[str, ...] = ()
    mc_generation: Callable[[Any], Any] | None = None
    check: Callable[[Any, Any], list[str]] | None = None

    def build_configs(self, params: dict, settings: Settings | None = None) -> dict[str, Any]:
        """The library configs of resolved ``params`` (their value-range checks raise ValueError)."""
        return {} if self.configs is None else self.configs(params, settings or Settings())

    def factory(self) -> Callable[[Build], Generate]:
        """The factory, imported on first use when registered as ``"module:function"``."""
        if callable(self.make):
            return self.make
        module, attr = self.make.split(":")
        try:
            return getattr(importlib.import_module(module), attr)
        except (ModuleNotFoundError, AttributeError) as e:
            raise ValueError(
                f"decoder {self.name!r}: cannot import its factory {self.make!r} ({e})"
            ) from None


DECODERS: dict[str, Decoder] = {}


def config_params(cls: type) -> tuple[Param, ...]:
    """Every field of config dataclass ``cls`` as a recipe param of the same name."""
    return tuple(Param(f.name, (cls, f.name)) for f in dataclasses.fields(cls) if f.init)


def register_decoder(
    name: str,
    *,
    make: str | Callable[[Build], Generate],
    config: type | None = None,
    help: str | None = None,
    params: tuple[Param, ...] | None = None,
    configs: Callable[[dict, Settings], dict[str, Any]] | None = None,
    shaped: bool = True,
    weight: str | None = None,
    wraps: str | None = None,
    shares: tuple[str, ...] = (),
    mc_generation: Callable[[Any], Any] | None = None,
    check: Callable[[Any, Any], list[str]] | None = None,
) -> Decoder:
    """Add (or replace) decoder ``name``; returns its entry.

    ``make``: the factory ``make(build: Build) -> generate(prompts) -> [{"response", "lm_tokens",
    "rm_tokens"}]``, or ``"module:function"`` (imported when a method first uses it). Either ``config``, a
    config dataclass whose fields (defaults, help texts, ``__post_init__`` checks) are the recipe params,
    built as ``build.config``; or ``params`` (:class:`Param` keys) with ``configs(params, settings) -> {key:
    config}``. ``help``: one line for the schema (default: the config's docstring). ``weight``: the param a
    sweep varies (its reward weight 1/beta). ``shaped``, ``wraps``, ``shares``, ``mc_generation``,
    ``check``: see :class:`Decoder`."""
    if not NAME_RE.match(name):
        raise ValueError(f"name: a decoder name is lower-case letters, digits and '_', got {name!r}")
    if config is not None:
        if params is not None or configs is not None:
            raise ValueError("config: give config, or params and configs, not both")
        if not dataclasses.is_dataclass(config):
            raise ValueError(f"config: expected a dataclass, got {config!r}")
        params = config_params(config)
        configs = _config_builder(config)
        help = help if help is not None else (config.__doc__ or "").strip().split("\n")[0]
    if not (callable(make) or (isinstance(make, str) and re.match(r"^[\w.]+:\w+$", make))):
        raise ValueError(f"make: expected a function or 'module:function', got {make!r}")
    params = tuple(params or ())
    keys = [p.key for p in params]
    if len(set(keys)) != len(keys):
        raise ValueError(f"params: duplicate keys in {keys}")
    clash = sorted(set(keys) & set(SHAPING_KEYS)) if shaped else []
    if clash:
        raise ValueError(f"params: {clash} are shaping parameters (every shaped decoder takes them)")
    for what, key in (("weight", weight), ("wraps", wraps)):
        if key is not None and key not in keys:
            raise ValueError(f"{what}: {key!r} is not one of the params {keys}")
    DECODERS[name] = Decoder(
        name, help or "", make, params, configs, shaped, weight, wraps, tuple(shares), mc_generation, check
    )
    _MODELS.pop(name, None)
    return DECODERS[name]


def _config_builder(cls: type) -> Callable[[dict, Settings], dict[str, Any]]:
    def build(params: dict, settings: Settings) -> dict[str, Any]:
        return {"config": cls(**params)}

    return build


def get_decoder(name: str) -> Decoder:
    """The registered decoder ``name``; ValueError (listing the registered ones) when there is none."""
    if name not in DECODERS:
        raise ValueError(f"unknown decoder {name!r}; registered: {', '.join(DECODERS)}")
    return DECODERS[name]


def weight_key(decoder: str) -> str | None:
    """The name of ``decoder``'s reward-weight param (1/beta), None when it has none (or is not registered)."""
    spec = DECODERS.get(decoder)
    return None if spec is None else spec.weight


# Shaping parameters (a field of `Shaper`), accepted by every shaped decoder; null = the preset's / shaper's value.
SHAPING_KEYS = tuple(f.name for f in dataclasses.fields(Shaper) if f.name != "kind")


def shaping_param(key: str) -> Param:
    tp, default, text = Param(key, (Shaper, key)).spec()
    return Param(
        key, type=tp | None, default=None, help=f"{text} (null = the preset's value, else {default!r})"
    )


_MODELS: dict[str, Any] = {}  # decoder -> its params model (dropped when the decoder is registered again)


def params_model(decoder: str):
    """The strict pydantic model of ``decoder``'s recipe params (its own and, if shaped, the shaping's)."""
    if decoder not in _MODELS:
        spec = get_decoder(decoder)
        fields: dict[str, Any] = {}
        for p in spec.params:
            tp, default, text = p.spec()
            fields[p.key] = (tp, Field(default=default, description=text))
        if spec.shaped:
            for key in SHAPING_KEYS:
                tp, default, text = shaping_param(key).spec()
                fields[key] = (tp, Field(default=default, description=text))
        _MODELS[decoder] = pydantic.create_model(f"{decoder}_params", __config__=STRICT, **fields)
    return _MODELS[decoder]


def schema_rows() -> list[tuple[str, str, Any, str]]:
    """(decoder, key, type, default, help) of every method param, for `stackalign recipe schema`."""
    rows = []
    for name, spec in DECODERS.items():
        for p in spec.params:
            tp, default, text = p.spec()
            rows.append((name, p.key, type_name(tp), default, text))
    for key in SHAPING_KEYS:
        tp, default, text = shaping_param(key).spec()
        rows.append(("(any shaped decoder)", key, type_name(tp), default, text))
    return rows


# ------------------------------------------------------------------------------------------ built-ins


def _bad(key: str, why: str, value: Any):
    raise ValueError(f"{key}: {why}, got {value!r}")


_TRAIN_SOURCE = Param(
    "train_source",
    type=str,
    default="world:train",
    help="training prompts: world:train (the world's) or a .jsonl file with a 'prompt' field; formatted like "
    "the run's prompts (template, chat template)",
)
_N = Param("n", (BoNConfig, "n"))
_THRESHOLD_PARAMS = (
    Param(
        "predictor",
        type=str | None,
        default=None,
        help="threshold: predicted: directory of a trained threshold predictor; null = train one on the "
        "world's training prompts and cache it in the run directory (threshold_predictors/<method>)",
    ),
    Param("predictor_train_prompts", (PredictorConfig, "train_prompts")),
    Param(
        "predictor_train_source",
        type=str,
        default="world:train",
        help="threshold: predicted: training prompts, world:train or a .jsonl file ('prompt' field)",
    ),
    Param("predictor_samples", (PredictorConfig, "n_samples")),
)


def predictor_config(d: dict, seed: int) -> PredictorConfig:
    """The threshold predictor's config; its errors name the recipe's keys (`predictor_*`)."""
    try:
        return PredictorConfig(
            n_samples=d["predictor_samples"], train_prompts=d["predictor_train_prompts"], seed=seed
        )
    except ValueError as e:
        msg = str(e)
        for field_name, key in (
            ("n_samples", "predictor_samples"),
            ("train_prompts", "predictor_train_prompts"),
        ):
            if msg.startswith(field_name + ":"):
                msg = key + msg[len(field_name) :]
        raise ValueError(msg) from None


def _bon_configs(d: dict, s: Settings) -> dict[str, Any]:
    bon = BoNConfig(
        n=d["n"], beta_select=d.get("beta_select"), threshold=d["threshold"], mc_samples=d["mc_samples"]
    )
    return {"bon": bon, "predictor": predictor_config(d, s.seed)}


def _args_configs(d: dict, s: Settings) -> dict[str, Any]:
    args = ARGSConfig(
        k=d["k"],
        w=d["w"],
        mode=d["mode"],
        temperature=d["temperature"],
        rm_mode=d["rm_mode"],
        rm_cache=d["rm_cache"],
        reference_chunk_size=d["reference_chunk_size"],
        batch_size=s.batch_size,
        text_batch_size=d["text_batch_size"],
        threshold=d["threshold"],
        mc_samples=d["mc_samples"],
    )
    return {"args": args, "predictor": predictor_config(d, s.seed)}


def _cd_params(tokenwise: bool) -> tuple[Param, ...]:
    mode = (
        (
            Param("k", (CDConfig, "top_k")),
            Param("temperature", (CDConfig, "score_temperature")),
            Param("do_sample", (CDConfig, "do_sample")),
            Param("lookahead", (CDConfig, "lookahead")),
        )
        if tokenwise
        else (Param("num_blocks", (CDConfig, "num_blocks")), Param("block_size", (CDConfig, "block_size")))
    )
    return (
        Param("lam", (CDConfig, "lam")),
        *mode,
        Param("n_samples", (CDDataConfig, "n_samples")),
        Param("sample_temperature", (CDDataConfig, "temperature")),
        Param("sample_top_p", (CDDataConfig, "top_p")),
        Param("train_prompts", type=int, default=200, help="training prompts of the offline data (a count)"),
        _TRAIN_SOURCE,
        Param("width", (ValueTrainConfig, "width")),
        Param("objective", (ValueTrainConfig, "objective")),
        Param("pairwise_coef", (ValueTrainConfig, "pairwise_coef")),
        Param("value_lr", (ValueTrainConfig, "lr")),
        Param("value_batch_size", (ValueTrainConfig, "batch_size")),
        Param("max_epochs", (ValueTrainConfig, "max_epochs")),
        Param("patience", (ValueTrainConfig, "patience")),
        Param("val_fraction", (ValueTrainConfig, "val_fraction")),
        Param("value_grad_clip", (ValueTrainConfig, "grad_clip")),
        Param("value_seed", (ValueTrainConfig, "seed")),
    )


def _cd_configs(tokenwise: bool) -> Callable[[dict, Settings], dict[str, Any]]:
    def configs(d: dict, s: Settings) -> dict[str, Any]:
        if d["train_prompts"] < 1:
            _bad("train_prompts", "must be >= 1", d["train_prompts"])
        kw = dict(mode="tokenwise" if tokenwise else "blockwise", lam=d["lam"], batch_size=s.batch_size)
        if tokenwise:
            kw.update(
                top_k=d["k"],
                score_temperature=d["temperature"],
                do_sample=d["do_sample"],
                lookahead=d["lookahead"],
            )
        else:
            kw.update(num_blocks=d["num_blocks"], block_size=d["block_size"])
        value = ValueTrainConfig(
            width=d["width"],
            objective=d["objective"],
            pairwise_coef=d["pairwise_coef"],
            lr=d["value_lr"],
            batch_size=d["value_batch_size"],
            max_epochs=d["max_epochs"],
            patience=d["patience"],
            val_fraction=d["val_fraction"],
            grad_clip=d["value_grad_clip"],
            seed=d["value_seed"],
        )
        data = CDDataConfig(
            n_samples=d["n_samples"],
            max_new_tokens=s.max_new_tokens,
            temperature=d["sample_temperature"],
            top_p=d["sample_top_p"],
            seed=s.seed,
        )
        return {"cd": CDConfig(**kw), "data": data, "value": value}

    return configs


_THRESHOLD_BY = (Param("threshold", (BoNConfig, "threshold")), Param("mc_samples", (BoNConfig, "mc_samples")))
_ARGS_PARAMS = (
    Param("k", (ARGSConfig, "k")),
    Param("w", type=float, default=0.5, help="reward weight w = 1/beta (the official ARGS value: 0.5)"),
    Param("mode", (ARGSConfig, "mode")),
    Param("temperature", (ARGSConfig, "temperature")),
    Param("rm_mode", (ARGSConfig, "rm_mode")),
    Param("rm_cache", (ARGSConfig, "rm_cache")),
    Param("reference_chunk_size", (ARGSConfig, "reference_chunk_size")),
    Param("text_batch_size", (ARGSConfig, "text_batch_size")),
    Param("threshold", (ARGSConfig, "threshold")),
    Param("mc_samples", (ARGSConfig, "mc_samples")),
)
_REFINE_PARAMS = (
    Param(
        "first",
        type=Literal["base", "greedy", "bon", "soft_bon", "args"],
        default="base",
        help="decoder of the first answer: base | greedy | bon | soft_bon | args",
    ),
    Param("first_params", type=dict, default={}, help="the first decoder's params (its own schema)"),
    Param("steps", (RefineConfig, "steps")),
    Param(
        "follower",
        type=str | None,
        default=None,
        help="follower model (dir or Hub name; null: the recipe's policy, e.g. an SLHF run's final/)",
    ),
)
_M = "stackalign.runner.methods:"  # the built-in factories
_CD_SHARES = ("cd_offline", "cd_heads")  # offline samples and value heads do not depend on lam

register_decoder(
    "base",
    make=_M + "make_base",
    help="one sample per prompt from the policy at the recipe's temperature",
    shaped=False,
)


def _refine_check(recipe: Any, method: Any) -> list[str]:
    """refine writes the follower's turn through the chat template or a world's follower format."""
    if recipe.world is None and not recipe.prompts.chat_template:
        return [
            f"methods[{method.name}]: refine builds the follower's turn through the chat template "
            "(prompts.chat_template: true) or a world's follower format (world: ...); this recipe has neither"
        ]
    return []


register_decoder("greedy", make=_M + "make_greedy", help="greedy decoding of the policy", shaped=False)
register_decoder(
    "bon",
    make=_M + "make_bon",
    help="Best-of-N: the sample with the highest (shaped) reward",
    params=(_N, *_THRESHOLD_BY, *_THRESHOLD_PARAMS),
    configs=_bon_configs,
    mc_generation=bon_threshold_generation,
)
register_decoder(
    "soft_bon",
    make=_M + "make_soft_bon",
    help="soft Best-of-N: resample from softmax(shaped / beta_select) over the N samples",
    params=(_N, Param("beta_select", (BoNConfig, "beta_select")), *_THRESHOLD_BY, *_THRESHOLD_PARAMS),
    configs=_bon_configs,
    mc_generation=bon_threshold_generation,
)
register_decoder(
    "args",
    make=_M + "make_args",
    help="ARGS (Khanov et al. 2024): top-k candidates scored by logit + w * (shaped) reward",
    params=_ARGS_PARAMS + _THRESHOLD_PARAMS,
    configs=_args_configs,
    weight="w",
)
register_decoder(
    "cd_tokenwise",
    make=_M + "make_cd",
    help="controlled decoding, tokenwise: top-k lookahead by log p + lam * V",
    params=_cd_params(True),
    configs=_cd_configs(True),
    weight="lam",
    shares=_CD_SHARES,
)
register_decoder(
    "cd_blockwise",
    make=_M + "make_cd",
    help="controlled decoding, blockwise: K blocks of M tokens, keep the best by V",
    params=_cd_params(False),
    configs=_cd_configs(False),
    weight="lam",
    shares=_CD_SHARES,
)
register_decoder(
    "refine",
    make=_M + "make_refine",
    help="SLHF refinement (arXiv 2512.16626, Sec. 5): a first answer from another decoder (with this method's "
    "shaping), then `steps` follower steps on the world's follower prompt; the last answer is returned",
    params=_REFINE_PARAMS,
    configs=lambda d, s: {"refine": RefineConfig(steps=d["steps"])},
    wraps="first",
    check=_refine_check,
)

"""Recipe methods -> generate functions: a method is a *configuration* of a decoder and a shaping.

Each decoder's recipe `params` schema is built from the library's own config dataclasses (`ARGSConfig`,
`CDConfig`, `CDDataConfig`, `ValueTrainConfig`, `Shaper`), so a default or a help text is written once, where
the field is declared. `resolve_method` validates a method completely (no model is touched) and returns a
`MethodPlan`: the resolved params (every default filled in, as `config.json` records them) and the constructed
configs. `make_method(plan, ctx)` turns a plan into `generate(prompts) -> [{"response", "lm_tokens",
"rm_tokens"}]`. Decoders know nothing about which shaping they get, and shapings know nothing about models:
SRS-ARGS = ARGS x the `srs` shaper (with a preset), SRS-CD = CD x a value head trained on SRS-shaped targets.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_type_hints

import pydantic
from pydantic import Field

from stackalign.config import STRICT, ConfigError, help_of, type_name, validate_with
from stackalign.decoding.args import ARGSConfig
from stackalign.decoding.bon import BoNConfig
from stackalign.decoding.cd import CDConfig
from stackalign.decoding.cd_data import CDDataConfig
from stackalign.decoding.refine import RefineConfig
from stackalign.decoding.threshold_predictor import PredictorConfig
from stackalign.decoding.value_head import ValueTrainConfig
from stackalign.runner.recipe import DECODER_NAMES, MethodConfig, RecipeError
from stackalign.shaping import PARAMS_USED, Shaper, get_shaper, make_shaper

Generate = Callable[[list[str]], list[dict]]


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
class DecoderSpec:
    name: str
    help: str
    params: tuple[Param, ...] = ()
    shaped: bool = True  # takes a reward shaping (and its parameters)


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


_TRAIN_SOURCE = Param(
    "train_source",
    type=str,
    default="world:train",
    help="training prompts: world:train (the world's) or a .jsonl file with a 'prompt' field; formatted like "
    "the run's prompts (template, chat template)",
)
_N = Param("n", (BoNConfig, "n"))
_PREDICTOR = (
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
DECODERS: dict[str, DecoderSpec] = {
    "base": DecoderSpec(
        "base", "one sample per prompt from the policy at the recipe's temperature", shaped=False
    ),
    "greedy": DecoderSpec("greedy", "greedy decoding of the policy", shaped=False),
    "bon": DecoderSpec(
        "bon",
        "Best-of-N: the sample with the highest (shaped) reward",
        (_N, Param("threshold", (BoNConfig, "threshold")), Param("mc_samples", (BoNConfig, "mc_samples")))
        + _PREDICTOR,
    ),
    "soft_bon": DecoderSpec(
        "soft_bon",
        "soft Best-of-N: resample from softmax(shaped / beta_select) over the N samples",
        (
            _N,
            Param("beta_select", (BoNConfig, "beta_select")),
            Param("threshold", (BoNConfig, "threshold")),
            Param("mc_samples", (BoNConfig, "mc_samples")),
        )
        + _PREDICTOR,
    ),
    "args": DecoderSpec(
        "args",
        "ARGS (Khanov et al. 2024): top-k candidates scored by logit + w * (shaped) reward",
        (
            Param("k", (ARGSConfig, "k")),
            Param(
                "w", type=float, default=0.5, help="reward weight w = 1/beta (the official ARGS value: 0.5)"
            ),
            Param("mode", (ARGSConfig, "mode")),
            Param("temperature", (ARGSConfig, "temperature")),
            Param("rm_mode", (ARGSConfig, "rm_mode")),
            Param("rm_cache", (ARGSConfig, "rm_cache")),
            Param("reference_chunk_size", (ARGSConfig, "reference_chunk_size")),
            Param("text_batch_size", (ARGSConfig, "text_batch_size")),
            Param("threshold", (ARGSConfig, "threshold")),
            Param("mc_samples", (ARGSConfig, "mc_samples")),
        )
        + _PREDICTOR,
    ),
    "cd_tokenwise": DecoderSpec(
        "cd_tokenwise", "controlled decoding, tokenwise: top-k lookahead by log p + lam * V", _cd_params(True)
    ),
    "cd_blockwise": DecoderSpec(
        "cd_blockwise",
        "controlled decoding, blockwise: K blocks of M tokens, keep the best by V",
        _cd_params(False),
    ),
    "refine": DecoderSpec(
        "refine",
        "SLHF refinement (arXiv 2512.16626, Sec. 5): a first answer from another decoder (with this method's "
        "shaping), then `steps` follower steps on the world's follower prompt; the last answer is returned",
        (
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
        ),
    ),
}
assert tuple(DECODERS) == DECODER_NAMES

# Shaping parameters (a field of `Shaper`), accepted by every shaped decoder; null = the preset's / shaper's value.
SHAPING_KEYS = tuple(f.name for f in dataclasses.fields(Shaper) if f.name != "kind")


def shaping_param(key: str) -> Param:
    tp, default, text = Param(key, (Shaper, key)).spec()
    return Param(
        key, type=tp | None, default=None, help=f"{text} (null = the preset's value, else {default!r})"
    )


@dataclass
class MethodPlan:
    """A validated method: its resolved params and the configs built from them (no model touched)."""

    name: str
    decoder: str
    shaping: str
    preset: str | None
    params: dict  # every key of the decoder's schema, defaults filled in; shaping keys only when set
    decoder_params: dict = field(default_factory=dict)
    shaper_params: dict = field(default_factory=dict)
    shaper: Shaper | None = None


@functools.cache
def params_model(decoder: str) -> type[pydantic.BaseModel]:
    spec = DECODERS[decoder]
    fields: dict[str, Any] = {}
    for p in spec.params:
        tp, default, text = p.spec()
        fields[p.key] = (tp, Field(default=default, description=text))
    if spec.shaped:
        for key in SHAPING_KEYS:
            tp, default, text = shaping_param(key).spec()
            fields[key] = (tp, Field(default=default, description=text))
    return pydantic.create_model(f"{decoder}_params", __config__=STRICT, **fields)


def resolve_method(m: MethodConfig, index: int) -> MethodPlan:
    """Validate method `m` (the recipe's `methods[index]`): params against its decoder's schema, the shaping
    and preset, and every config's value ranges. Raises RecipeError naming the path."""
    where = f"methods[{index}]"
    spec = DECODERS[m.decoder]
    model = params_model(m.decoder)
    try:
        values = validate_with(model, m.params, f"{where}.params")
    except ConfigError as e:
        raise RecipeError(str(e)) from None
    dec = {p.key: values[p.key] for p in spec.params}
    shp = {k: values[k] for k in SHAPING_KEYS if k in values and values[k] is not None}
    if not spec.shaped and (m.shaping != "vanilla" or m.preset is not None):
        raise RecipeError(f"{where}.shaping: decoder {m.decoder!r} takes no reward, so no shaping or preset")
    if m.preset is not None and m.shaping not in ("srs", "hard"):
        raise RecipeError(f"{where}.preset: presets configure srs or hard shaping, not {m.shaping!r}")
    unused = sorted(set(shp) - set(PARAMS_USED[m.shaping]))  # with or without a preset
    if unused:
        raise RecipeError(
            f"{where}.params.{unused[0]}: not used by shaping {m.shaping!r} "
            f"(it reads: {', '.join(PARAMS_USED[m.shaping]) or 'nothing'})"
        )
    plan = MethodPlan(m.name, m.decoder, m.shaping, m.preset, {**dec, **shp}, dec, shp)
    if m.decoder == "refine":
        try:
            _configs(plan, batch_size=1, max_new_tokens=1, seed=0)
        except ValueError as e:
            raise RecipeError(f"{where}.params.{e}") from None
        first_method(plan, index)  # validates the first decoder's params (errors name methods[i].params...)
        return plan
    try:
        if spec.shaped:
            plan.shaper = (
                None
                if m.shaping == "vanilla"
                else make_shaper(m.shaping, shp, preset=m.preset, w=dec.get("w"))
            )
        _configs(plan, batch_size=1, max_new_tokens=1, seed=0)  # value-range checks of every config
        if dec.get("threshold", "step") != "step" and not getattr(plan.shaper, "uses_threshold", False):
            raise ValueError(
                f"threshold: {dec['threshold']!r} gives a per-prompt threshold to a threshold shaping "
                f"(srs or hard), but this method's shaping is {m.shaping!r}"
            )
    except ValueError as e:
        msg = str(e)
        raise RecipeError(f"{where}.params.{msg}" if not msg.startswith(where) else msg) from None
    return plan


def first_method(plan: MethodPlan, index: int = 0) -> MethodPlan:
    """The plan of a refine method's first answer: its ``first`` decoder with ``first_params`` and the refine
    method's own shaping/preset (so SRS-ARGS + refinement is ``decoder: refine, shaping: srs, first: args``)."""
    d = plan.decoder_params
    sub = MethodConfig(
        name=f"{plan.name}/first",
        decoder=d["first"],
        shaping=plan.shaping,
        preset=plan.preset,
        params={**d["first_params"], **plan.shaper_params},
    )
    try:
        return resolve_method(sub, index)
    except RecipeError as e:
        raise RecipeError(
            str(e).replace(f"methods[{index}].params", f"methods[{index}].params.first_params")
        ) from None


def _predictor_config(d: dict, seed: int) -> PredictorConfig:
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


def _configs(plan: MethodPlan, *, batch_size: int, max_new_tokens: int, seed: int) -> dict[str, Any]:
    """The library configs of a plan (ARGSConfig, CDConfig, CDDataConfig, ValueTrainConfig)."""
    d = plan.decoder_params
    if plan.decoder == "args":
        return {
            "args": ARGSConfig(
                k=d["k"],
                beta=1.0 / d["w"] if d["w"] > 0 else _bad("w", "must be > 0", d["w"]),
                mode=d["mode"],
                temperature=d["temperature"],
                rm_mode=d["rm_mode"],
                rm_cache=d["rm_cache"],
                reference_chunk_size=d["reference_chunk_size"],
                batch_size=batch_size,
                text_batch_size=d["text_batch_size"],
                threshold=d["threshold"],
                mc_samples=d["mc_samples"],
            ),
            "predictor": _predictor_config(d, seed),
        }
    if plan.decoder == "refine":
        return {"refine": RefineConfig(steps=d["steps"])}
    if plan.decoder in ("bon", "soft_bon"):
        return {
            "bon": BoNConfig(
                n=d["n"],
                beta_select=d.get("beta_select"),
                threshold=d["threshold"],
                mc_samples=d["mc_samples"],
            ),
            "predictor": _predictor_config(d, seed),
        }
    if plan.decoder.startswith("cd_"):
        tokenwise = plan.decoder == "cd_tokenwise"
        if d["train_prompts"] < 1:
            _bad("train_prompts", "must be >= 1", d["train_prompts"])
        kw = dict(mode="tokenwise" if tokenwise else "blockwise", lam=d["lam"], batch_size=batch_size)
        if tokenwise:
            kw.update(
                top_k=d["k"],
                score_temperature=d["temperature"],
                do_sample=d["do_sample"],
                lookahead=d["lookahead"],
            )
        else:
            kw.update(num_blocks=d["num_blocks"], block_size=d["block_size"])
        return {
            "cd": CDConfig(**kw),
            "data": CDDataConfig(
                n_samples=d["n_samples"],
                max_new_tokens=max_new_tokens,
                temperature=d["sample_temperature"],
                top_p=d["sample_top_p"],
                seed=seed,
            ),
            "value": ValueTrainConfig(
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
            ),
        }
    return {}


def _bad(key: str, why: str, value: Any):
    raise ValueError(f"{key}: {why}, got {value!r}")


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


# --------------------------------------------------------------------------------------------- building


def run_generation(recipe, stop_strings: list[str]):
    """The recipe's decoding settings as a `GenerationConfig` (its length, sampling, stops and seed)."""
    from stackalign.decoding.common import GenerationConfig

    g = recipe.generation
    return GenerationConfig(
        max_new_tokens=g.max_new_tokens,
        temperature=g.temperature,
        top_p=g.top_p,
        top_k=g.top_k,
        stop_strings=tuple(stop_strings),
        seed=recipe.seed,
    )


# A per-prompt threshold source handed to `make_method` (the Ray workers' `threshold: mc` methods):
# prompts -> (thresholds [P], the cost of computing them, charged to the rows as the decoder would).
Thresholds = Callable[[list[str]], tuple[Any, Any]]


def make_method(
    plan: MethodPlan, ctx, *, head=None, predictor=None, thresholds: Thresholds | None = None
) -> Generate:
    """`generate(prompts)` of a plan; for CD, `head` (a trained value head) skips the offline phases. For an
    SRS method, `predictor` (a trained ThresholdPredictor, `threshold: predicted`) skips finding or training
    one, and `thresholds` (`threshold: mc`) replaces sampling the thresholds in the decoder; the Ray workers
    get both from the driver (a refine method passes them to its first decoder)."""
    g = ctx.recipe.generation
    gen = run_generation(ctx.recipe, ctx.stop_strings)
    configs = _configs(plan, batch_size=g.batch_size, max_new_tokens=g.max_new_tokens, seed=ctx.recipe.seed)
    if plan.decoder in ("base", "greedy"):
        from stackalign.decoding.sampling import sample

        cfg = dataclasses.replace(gen, temperature=0.0) if plan.decoder == "greedy" else gen

        def run(prompts: list[str]) -> list[dict]:
            res = sample(ctx.policy, ctx.tokenizer, prompts, 1, cfg)
            return _rows([t[0] for t in res.texts], res.cost, len(prompts))

        return run

    if plan.decoder in ("bon", "soft_bon"):
        from stackalign.decoding.bon import best_of_n

        bcfg = configs["bon"]
        if predictor is None:
            predictor = _threshold_predictor(plan, configs, ctx, gen)

        def run(prompts: list[str]) -> list[dict]:
            m, m_cost = thresholds(prompts) if thresholds is not None else (None, None)
            res = best_of_n(
                ctx.policy,
                ctx.tokenizer,
                ctx.reward,
                prompts,
                bcfg.n,
                gen,
                shaper=plan.shaper,
                soft=plan.decoder == "soft_bon",
                beta=bcfg.beta_select,
                thresholds=m,
                threshold_source=bcfg.threshold,
                mc_samples=bcfg.mc_samples,
                predictor=predictor,
                mc_cache_dir=ctx.out_dir / "mc_cache",
            )
            if m_cost is not None:
                res.cost.merge(m_cost)
            return _rows(res.texts, res.cost, len(prompts))

        return run

    if plan.decoder == "args":
        from stackalign.decoding.args import args_generate

        cfg = configs["args"]
        if predictor is None:
            predictor = _threshold_predictor(plan, configs, ctx, gen)

        def run(prompts: list[str]) -> list[dict]:
            m, m_cost = thresholds(prompts) if thresholds is not None else (None, None)
            res = args_generate(
                ctx.policy,
                ctx.tokenizer,
                ctx.reward,
                prompts,
                cfg,
                gen,
                shaper=plan.shaper,
                thresholds=m,
                predictor=predictor,
                mc_cache_dir=ctx.out_dir / "mc_cache",
            )
            # which ARGS scorer ran (tree, repeat, reference, bridge or text) and why it was not a faster one
            run.scorer = {"name": res.meta.get("scorer"), "reason": res.meta.get("scorer_reason")}
            if m_cost is not None:
                res.cost.merge(m_cost)
            return _rows(res.texts, res.cost, len(prompts))

        run.scorer = None  # set by the first call: the runner can copy it into summary.json
        return run

    if plan.decoder in ("cd_tokenwise", "cd_blockwise"):
        return _make_cd(plan, configs, ctx, gen, head)
    if plan.decoder == "refine":
        return _make_refine(plan, ctx, gen, predictor=predictor, thresholds=thresholds)
    raise RecipeError(f"methods[{plan.name}].decoder: unknown {plan.decoder!r}")  # pragma: no cover


def _make_refine(plan: MethodPlan, ctx, gen, *, predictor=None, thresholds=None) -> Generate:
    """First answers from the sub-method, then ``steps`` follower steps (``decoding.refine.refine_chain``)."""
    from stackalign.decoding.common import Cost
    from stackalign.decoding.refine import follower_prompt_for, refine_chain

    d = plan.decoder_params
    chat = ctx.recipe.prompts.chat_template
    try:
        follower_prompt_for(ctx.world, ctx.tokenizer, chat)  # checked before the first answers are decoded
    except ValueError as e:
        raise RecipeError(f"methods[{plan.name}]: refine: {e}") from None
    first = make_method(first_method(plan), ctx, predictor=predictor, thresholds=thresholds)
    if d["follower"] is None:
        follower, ftok = ctx.policy, ctx.tokenizer
    else:
        from stackalign.models import load_policy

        follower, ftok = load_policy(d["follower"])
    cfg = RefineConfig(steps=d["steps"])
    try:
        follower_prompt = follower_prompt_for(ctx.world, ftok, chat)  # the follower's own template
    except ValueError as e:
        raise RecipeError(f"methods[{plan.name}]: refine.follower: {e}") from None

    def run(prompts: list[str]) -> list[dict]:
        rows = first(prompts)
        cost = Cost()
        chains = refine_chain(
            follower, ftok, prompts, [r["response"] for r in rows], follower_prompt, cfg, gen, cost
        )
        extra = cost.lm_tokens / len(prompts)
        return [
            {"response": c[-1], "lm_tokens": r["lm_tokens"] + extra, "rm_tokens": r["rm_tokens"]}
            for c, r in zip(chains, rows)
        ]

    return run


@dataclass
class SRSPlan:
    """Where an SRS method's per-prompt thresholds come from (`threshold: mc | predicted`), everything but the
    models: the Ray backend's driver plans the Monte Carlo and predictor phases with it. `mc`: `n` samples
    of each test prompt with `generation`; `predicted`: a predictor given at `predictor_path`, else the one
    cached in (or trained into) `predictor_dir` on `n` samples of each of `train_prompts`."""

    name: str  # the thresholds' method (a refine method's first decoder: NAME/first)
    source: str  # "mc" | "predicted"
    shaper: Shaper
    n: int  # Monte Carlo samples per prompt
    generation: Any  # GenerationConfig of the Monte Carlo samples (part of their cache key)
    chunk_size: int | None  # prompts per sampling + scoring call (mc_chunks); None: one call
    predictor_path: str | None = None
    predictor_dir: Path | None = None
    predictor: PredictorConfig | None = None
    train_prompts: list[str] | None = None  # None: no world to train on


def threshold_plan(plan: MethodPlan) -> MethodPlan:
    """The plan whose decoder takes the per-prompt thresholds: `plan`, or a refine method's first decoder."""
    return first_method(plan) if plan.decoder == "refine" else plan


def srs_plan(plan: MethodPlan, recipe, world, stop_strings: list[str], out_dir: Path) -> SRSPlan | None:
    """The threshold phases of `plan` (a decoding plan: `threshold_plan` of a method), None for a method
    without per-prompt thresholds. Mirrors what `make_method` does serially, so both find the same files."""
    from stackalign.decoding.args import mc_generation
    from stackalign.decoding.bon import bon_threshold_generation

    source = plan.decoder_params.get("threshold", "step")
    if source == "step" or plan.shaper is None:
        return None
    g = recipe.generation
    configs = _configs(plan, batch_size=g.batch_size, max_new_tokens=g.max_new_tokens, seed=recipe.seed)
    gen = run_generation(recipe, stop_strings)
    if source == "mc":
        if plan.decoder in ("bon", "soft_bon"):
            gen = bon_threshold_generation(gen)
        return SRSPlan(
            plan.name, "mc", plan.shaper, plan.decoder_params["mc_samples"], mc_generation(gen), None
        )
    pcfg = configs["predictor"]
    return SRSPlan(
        plan.name,
        "predicted",
        plan.shaper,
        pcfg.n_samples,
        dataclasses.replace(gen, temperature=1.0, top_p=1.0, top_k=0),
        pcfg.batch_size,  # train_threshold_predictor's cut
        predictor_path=plan.decoder_params.get("predictor") or None,
        predictor_dir=Path(out_dir) / "threshold_predictors" / plan.name,
        predictor=pcfg,
        train_prompts=_train_prompts(
            recipe,
            world,
            plan.decoder_params["predictor_train_source"],
            pcfg.train_prompts,
            f"methods[{plan.name}].params.predictor_train_source",
            needed=not plan.decoder_params.get("predictor"),
        ),
    )


def _train_prompts(recipe, world, source: str, n: int, what: str, needed: bool = True) -> list[str] | None:
    """The first ``n`` prompts of a training source (CD's offline data, a threshold predictor), formatted like
    the run's prompts; None when not ``needed`` and the source cannot be read (a world split without a world)."""
    from stackalign.runner.prompts import train_source_prompts

    if not needed and source.startswith("world:") and world is None:
        return None
    return train_source_prompts(recipe, world, source, n, what=what)


def cached_threshold_predictor(sp: SRSPlan):
    """The predictor of a `predicted` plan that needs no training: the given one, else the run directory's when
    it was trained for this method's threshold rule; None when one must be trained."""
    from stackalign.decoding.threshold_predictor import CONFIG_NAME, load_threshold_predictor

    if sp.predictor_path:
        return load_threshold_predictor(sp.predictor_path)
    if (sp.predictor_dir / CONFIG_NAME).exists():
        cached = load_threshold_predictor(sp.predictor_dir)
        try:
            cached.check_rule(sp.shaper)
            return cached
        except ValueError:
            pass  # trained for an earlier version of this method (another B or beta): retrain
    return None


def predictor_train_prompts(sp: SRSPlan) -> list[str]:
    """The training prompts of a predictor to train; RecipeError when the run has no world."""
    if sp.train_prompts is None:
        raise RecipeError(
            f"methods[{sp.name}].params.threshold: 'predicted' trains on a world's training prompts; "
            "give a world or a trained predictor directory (params.predictor)"
        )
    return sp.train_prompts


def _threshold_predictor(plan: MethodPlan, configs: dict, ctx, gen) -> Any:
    """The method's amortised threshold predictor (``threshold: predicted``): loaded from ``predictor`` when
    given, else from the run directory (``threshold_predictors/<method>``), else trained there on the world's
    training prompts' Monte Carlo thresholds (like CD's value heads). None for other threshold sources."""
    from stackalign.decoding.threshold_predictor import train_threshold_predictor

    if plan.decoder_params.get("threshold") != "predicted":
        return None
    sp = srs_plan(plan, ctx.recipe, ctx.world, ctx.stop_strings, ctx.out_dir)
    cached = cached_threshold_predictor(sp)
    if cached is not None:
        return cached
    pred, _ = train_threshold_predictor(
        ctx.policy,
        ctx.tokenizer,
        ctx.reward,
        predictor_train_prompts(sp),
        plan.shaper,
        configs["predictor"],
        sp.generation,
        cache_dir=ctx.out_dir / "mc_cache",
        out_dir=sp.predictor_dir,
    )
    return pred


def _rows(texts: list[str], cost, n_prompts: int) -> list[dict]:
    lm = cost.lm_tokens / n_prompts
    rm = cost.rm_tokens / n_prompts
    return [{"response": t, "lm_tokens": lm, "rm_tokens": rm} for t in texts]


@dataclass
class CDPlan:
    """Where a CD method's offline data and value head live in the run directory, and how they are made
    (everything but the models: the Ray backend's driver plans the offline phase with it)."""

    data_dir: Path
    head_dir: Path
    train_prompts: list[str]
    data: Any  # CDDataConfig
    value: Any  # ValueTrainConfig
    cd: Any  # CDConfig
    extra: dict  # recorded beside the trained head


def cd_plan(plan: MethodPlan, recipe, world, stop_strings: list[str], out_dir: Path) -> CDPlan:
    """The CD phases of `plan`: the offline data is shared by every CD method of the run with the same
    sampling settings (keyed by them), the value head is the method's own."""
    g = recipe.generation
    configs = _configs(plan, batch_size=g.batch_size, max_new_tokens=g.max_new_tokens, seed=recipe.seed)
    n_train = plan.decoder_params["train_prompts"]
    data_cfg = configs["data"]
    data_key = hashlib.sha256(
        json.dumps([data_cfg.sampling_key(), n_train, list(stop_strings)], sort_keys=True).encode()
    ).hexdigest()[:10]
    extra = {
        "method": plan.name,
        "shaping": plan.shaping,
        "preset": plan.preset,
        "params": plan.shaper_params,
        "offline_data": data_key,  # the head is only current for the offline data it was trained on
    }
    return CDPlan(
        Path(out_dir) / "cd_offline" / data_key,
        Path(out_dir) / "cd_heads" / plan.name,
        _train_prompts(
            recipe,
            world,
            plan.decoder_params["train_source"],
            n_train,
            f"methods[{plan.name}].params.train_source",
        ),
        data_cfg,
        configs["value"],
        configs["cd"],
        extra,
    )


def cd_head_is_current(cp: CDPlan) -> bool:
    """Whether `cp.head_dir` holds a head trained with this plan's settings: its saved training config,
    shaping and offline-data key equal the plan's. A head of a method whose settings changed (e.g. a rerun with
    `--restart-changed` after raising `max_epochs`, or another shaping under the same method name) is not
    current: it is retrained, never silently reused."""
    from stackalign.decoding.value_head import CONFIG_NAME

    path = cp.head_dir / CONFIG_NAME
    if not path.exists():
        return False
    meta = json.loads(path.read_text())
    want = json.loads(json.dumps({"train": dataclasses.asdict(cp.value), **cp.extra}))
    return all(meta.get(k) == v for k, v in want.items())


def cd_shaper(plan: MethodPlan) -> Shaper:
    return plan.shaper or get_shaper("vanilla")


def _make_cd(plan: MethodPlan, configs: dict, ctx, gen, head=None) -> Generate:
    """Controlled decoding: offline base samples, a value head trained on this method's shaped targets (both
    cached in the run directory), decoding. With `head` given, the first two are skipped."""
    from stackalign.decoding.cd import controlled_decode

    if head is None:
        head = _cd_head(plan, ctx)
    cfg = configs["cd"]

    def run(prompts: list[str]) -> list[dict]:
        res = controlled_decode(ctx.policy, ctx.tokenizer, prompts, head, cfg, gen)
        return _rows(res.texts, res.cost, len(prompts))

    return run


def _cd_head(plan: MethodPlan, ctx):
    from stackalign.decoding.cd_data import OfflineData, build_offline_data
    from stackalign.decoding.value_head import load_value_head, train_value_head

    cp = cd_plan(plan, ctx.recipe, ctx.world, ctx.stop_strings, ctx.out_dir)
    if not (cp.data_dir / "config.json").exists() or not OfflineData.load(cp.data_dir).complete:
        build_offline_data(
            ctx.policy,
            ctx.tokenizer,
            ctx.reward,
            cp.train_prompts,
            cp.data_dir,
            cp.data,
            stop_strings=ctx.stop_strings,
        )
    data = OfflineData.load(cp.data_dir)
    if cd_head_is_current(cp):  # trained by an earlier (or interrupted) run with these very settings
        head, _ = load_value_head(cp.head_dir)
        return head
    return train_value_head(
        ctx.policy, data.examples(cd_shaper(plan)), cp.value, out_dir=cp.head_dir, extra=cp.extra
    ).head

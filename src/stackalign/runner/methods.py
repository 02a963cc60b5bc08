"""Recipe methods -> generate functions: a method is a *configuration* of a decoder and a shaping.

Each decoder's recipe `params` schema, the configs built from them and its factory are one entry of the
decoder registry (:mod:`stackalign.runner.decoders`). `resolve_method` validates a method completely (no model
is touched) and returns a `MethodPlan`: the resolved params (every default filled in, as `config.json` records
them) and the constructed shaper. `make_method(plan, ctx)` turns a plan into `generate(prompts) ->
[{"response", "lm_tokens", "rm_tokens"}]` through the decoder's factory. Decoders know nothing about which
shaping they get, and shapings know nothing about models: SRS-ARGS = ARGS x the `srs` shaper (with a preset),
SRS-CD = CD x a value head trained on SRS-shaped targets.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from stackalign.config import ConfigError, RecipeError, validate_with
from stackalign.decoding.threshold_predictor import PredictorConfig
from stackalign.runner.decoders import SHAPING_KEYS, Build, Settings, get_decoder, params_model
from stackalign.shaping import PARAMS_USED, Shaper, get_shaper, make_shaper

Generate = Callable[[list[str]], list[dict]]


@dataclass
class MethodPlan:
    """A validated method: its resolved params and the shaper built from them (no model touched)."""

    name: str
    decoder: str
    shaping: str
    preset: str | None
    params: dict  # every key of the decoder's schema, defaults filled in; shaping keys only when set
    decoder_params: dict = field(default_factory=dict)
    shaper_params: dict = field(default_factory=dict)
    shaper: Shaper | None = None


def resolve_method(m: Any, index: int) -> MethodPlan:
    """Validate method `m` (the recipe's `methods[index]`, a `MethodConfig`): params against its decoder's
    schema, the shaping and preset, and every config's value ranges. Raises RecipeError naming the path."""
    return _resolve(m.name, m.decoder, m.shaping, m.preset, m.params, index)


def _resolve(
    name: str, decoder: str, shaping: str, preset: str | None, params: dict, index: int
) -> MethodPlan:
    where = f"methods[{index}]"
    try:
        spec = get_decoder(decoder)
    except ValueError as e:
        raise RecipeError(f"{where}.decoder: {e}") from None
    try:
        values = validate_with(params_model(decoder), params, f"{where}.params")
    except ConfigError as e:
        raise RecipeError(str(e)) from None
    dec = {p.key: values[p.key] for p in spec.params}
    shp = {k: values[k] for k in SHAPING_KEYS if k in values and values[k] is not None}
    if not spec.shaped and (shaping != "vanilla" or preset is not None):
        raise RecipeError(f"{where}.shaping: decoder {decoder!r} takes no reward, so no shaping or preset")
    if preset is not None and shaping not in ("srs", "hard"):
        raise RecipeError(f"{where}.preset: presets configure srs or hard shaping, not {shaping!r}")
    unused = sorted(set(shp) - set(PARAMS_USED[shaping]))  # with or without a preset
    if unused:
        raise RecipeError(
            f"{where}.params.{unused[0]}: not used by shaping {shaping!r} "
            f"(it reads: {', '.join(PARAMS_USED[shaping]) or 'nothing'})"
        )
    plan = MethodPlan(name, decoder, shaping, preset, {**dec, **shp}, dec, shp)
    if spec.wraps:  # the shaping goes to the wrapped decoder, which validates it
        try:
            spec.build_configs(dec)
        except ValueError as e:
            raise RecipeError(f"{where}.params.{e}") from None
        first_method(plan, index)  # validates the first decoder's params (errors name methods[i].params...)
        return plan
    try:
        if spec.shaped:
            plan.shaper = (
                None
                if plan.shaping == "vanilla"
                else make_shaper(plan.shaping, plan.shaper_params, preset=plan.preset, w=dec.get("w"))
            )
        spec.build_configs(dec)  # value-range checks of every config
        if dec.get("threshold", "step") != "step" and not getattr(plan.shaper, "uses_threshold", False):
            raise ValueError(
                f"threshold: {dec['threshold']!r} gives a per-prompt threshold to a threshold shaping "
                f"(srs or hard), but this method's shaping is {shaping!r}"
            )
    except ValueError as e:
        msg = str(e)
        raise RecipeError(f"{where}.params.{msg}" if not msg.startswith(where) else msg) from None
    return plan


def first_method(plan: MethodPlan, index: int = 0) -> MethodPlan:
    """The plan of a wrapping method's first answer (refine's): its ``first`` decoder with ``first_params`` and
    the method's own shaping/preset (so SRS-ARGS + refinement is ``decoder: refine, shaping: srs, first:
    args``)."""
    key = get_decoder(plan.decoder).wraps
    d = plan.decoder_params
    try:
        params = {**d[f"{key}_params"], **plan.shaper_params}
        return _resolve(f"{plan.name}/{key}", d[key], plan.shaping, plan.preset, params, index)
    except RecipeError as e:
        raise RecipeError(
            str(e).replace(f"methods[{index}].params", f"methods[{index}].params.{key}_params")
        ) from None


def plan_configs(plan: MethodPlan, settings: Settings | None = None) -> dict[str, Any]:
    """The library configs of a plan's decoder params (`settings`: the recipe's batch size, length, seed)."""
    return get_decoder(plan.decoder).build_configs(plan.decoder_params, settings)


def recipe_settings(recipe) -> Settings:
    g = recipe.generation
    return Settings(batch_size=g.batch_size, max_new_tokens=g.max_new_tokens, seed=recipe.seed)


# --------------------------------------------------------------------------------------------- building


def run_generation(recipe, stop_strings: list[str]):
    """The recipe's decoding settings as a `GenerationConfig` (its length, sampling, stops and seed)."""
    return recipe.generation.to_config(stop_strings, recipe.seed)


# A per-prompt threshold source handed to `make_method` (the Ray workers' `threshold: mc` methods):
# prompts -> (thresholds [P], the cost of computing them, charged to the rows as the decoder would).
Thresholds = Callable[[list[str]], tuple[Any, Any]]


def make_method(
    plan: MethodPlan, ctx, *, head=None, predictor=None, thresholds: Thresholds | None = None
) -> Generate:
    """`generate(prompts)` of a plan, made by its decoder's factory; for CD, `head` (a trained value head)
    skips the offline phases. For an SRS method, `predictor` (a trained ThresholdPredictor, `threshold:
    predicted`) skips finding or training one, and `thresholds` (`threshold: mc`) replaces sampling the
    thresholds in the decoder; the Ray workers get both from the driver (a refine method passes them to its
    first decoder)."""
    configs = plan_configs(plan, recipe_settings(ctx.recipe))
    gen = run_generation(ctx.recipe, ctx.stop_strings)
    build = Build(plan, ctx, configs, gen, head=head, predictor=predictor, thresholds=thresholds)
    return get_decoder(plan.decoder).factory()(build)


def make_base(b: Build) -> Generate:
    """One sample per prompt at the recipe's sampling settings."""
    return _sampler(b, b.generation)


def make_greedy(b: Build) -> Generate:
    return _sampler(b, dataclasses.replace(b.generation, temperature=0.0))


def _sampler(b: Build, cfg) -> Generate:
    from stackalign.decoding.sampling import sample

    def run(prompts: list[str]) -> list[dict]:
        res = sample(b.ctx.policy, b.ctx.tokenizer, prompts, 1, cfg)
        return _rows([t[0] for t in res.texts], res.cost, len(prompts))

    return run


def _thresholds_of(b: Build, prompts: list[str]) -> tuple[Any, Any]:
    """The per-prompt thresholds handed in by the Ray workers (and their cost), else (None, None)."""
    return b.thresholds(prompts) if b.thresholds is not None else (None, None)


def _predictor(b: Build) -> Any:
    """The threshold predictor handed in by the Ray workers, else the method's own (None unless predicted)."""
    return (
        b.predictor
        if b.predictor is not None
        else _threshold_predictor(b.plan, b.configs, b.ctx, b.generation)
    )


def make_bon(b: Build, *, soft: bool = False) -> Generate:
    from stackalign.decoding.bon import best_of_n

    ctx, plan, bcfg = b.ctx, b.plan, b.configs["bon"]
    predictor = _predictor(b)

    def run(prompts: list[str]) -> list[dict]:
        m, m_cost = _thresholds_of(b, prompts)
        res = best_of_n(
            ctx.policy,
            ctx.tokenizer,
            ctx.reward,
            prompts,
            bcfg.n,
            b.generation,
            shaper=plan.shaper,
            soft=soft,
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


def make_soft_bon(b: Build) -> Generate:
    return make_bon(b, soft=True)


def make_args(b: Build) -> Generate:
    """ARGS; `run.scorer` records which scorer ran (tree, repeat, reference, bridge or text) and why it was not
    a faster one: the rows carry it into summary.json."""
    from stackalign.decoding.args import args_generate

    ctx, plan, cfg = b.ctx, b.plan, b.configs["args"]
    predictor = _predictor(b)

    def run(prompts: list[str]) -> list[dict]:
        m, m_cost = _thresholds_of(b, prompts)
        res = args_generate(
            ctx.policy,
            ctx.tokenizer,
            ctx.reward,
            prompts,
            cfg,
            b.generation,
            shaper=plan.shaper,
            thresholds=m,
            predictor=predictor,
            mc_cache_dir=ctx.out_dir / "mc_cache",
        )
        run.scorer = {"name": res.meta.get("scorer"), "reason": res.meta.get("scorer_reason")}
        if m_cost is not None:
            res.cost.merge(m_cost)
        return _rows(res.texts, res.cost, len(prompts))

    run.scorer = None  # set by each call
    return run


def make_refine(b: Build) -> Generate:
    """First answers from the sub-method, then ``steps`` follower steps (``decoding.refine.refine_chain``)."""
    from stackalign.decoding.common import Cost
    from stackalign.decoding.refine import follower_prompt_for, refine_chain

    ctx, plan, cfg = b.ctx, b.plan, b.configs["refine"]
    d = plan.decoder_params
    chat = ctx.recipe.prompts.chat_template
    try:
        follower_prompt_for(ctx.world, ctx.tokenizer, chat)  # checked before the first answers are decoded
    except ValueError as e:
        raise RecipeError(f"methods[{plan.name}]: refine: {e}") from None
    first = make_method(first_method(plan), ctx, predictor=b.predictor, thresholds=b.thresholds)
    if d["follower"] is None:
        follower, ftok = ctx.policy, ctx.tokenizer
    else:
        from stackalign.models import load_policy

        follower, ftok = load_policy(d["follower"])
    try:
        follower_prompt = follower_prompt_for(ctx.world, ftok, chat)  # the follower's own template
    except ValueError as e:
        raise RecipeError(f"methods[{plan.name}]: refine.follower: {e}") from None

    def run(prompts: list[str]) -> list[dict]:
        rows = first(prompts)
        run.scorer = getattr(first, "scorer", None)  # an ARGS first answer's scorer
        cost = Cost()
        chains = refine_chain(
            follower, ftok, prompts, [r["response"] for r in rows], follower_prompt, cfg, b.generation, cost
        )
        extra = cost.lm_tokens / len(prompts)
        return [
            {"response": c[-1], "lm_tokens": r["lm_tokens"] + extra, "rm_tokens": r["rm_tokens"]}
            for c, r in zip(chains, rows)
        ]

    run.scorer = None
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
    return first_method(plan) if get_decoder(plan.decoder).wraps else plan


def srs_plan(plan: MethodPlan, recipe, world, stop_strings: list[str], out_dir: Path) -> SRSPlan | None:
    """The threshold phases of `plan` (a decoding plan: `threshold_plan` of a method), None for a method
    without per-prompt thresholds. Mirrors what `make_method` does serially, so both find the same files."""
    from stackalign.decoding.args import mc_generation

    source = plan.decoder_params.get("threshold", "step")
    if source == "step" or plan.shaper is None:
        return None
    configs = plan_configs(plan, recipe_settings(recipe))
    gen = run_generation(recipe, stop_strings)
    if source == "mc":
        to_mc = get_decoder(plan.decoder).mc_generation
        if to_mc is not None:
            gen = to_mc(gen)
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
    configs = plan_configs(plan, recipe_settings(recipe))
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


def make_cd(b: Build) -> Generate:
    """Controlled decoding: offline base samples, a value head trained on this method's shaped targets (both
    cached in the run directory), decoding. With `b.head` given, the first two are skipped."""
    from stackalign.decoding.cd import controlled_decode

    ctx, cfg = b.ctx, b.configs["cd"]
    head = b.head if b.head is not None else _cd_head(b.plan, ctx)

    def run(prompts: list[str]) -> list[dict]:
        res = controlled_decode(ctx.policy, ctx.tokenizer, prompts, head, cfg, b.generation)
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

"""Recipe methods -> generate functions: a method is a *configuration* of a decoder and a shaping.

`make_method(method_config, ctx)` returns `generate(prompts) -> [{"response", "lm_tokens", "rm_tokens"}]`
(one dict per prompt). Decoders know nothing about which shaping they get, and shapings know nothing about
models: SRS-ARGS = ARGS x the `srs` shaper (with a preset), SRS-CD = CD x a value head trained on
SRS-shaped targets.

Method `params` by decoder (anything else is an error naming the key):
    base / greedy    -                                    (base = sampling at the recipe temperature)
    bon, soft_bon    n (samples), beta (soft-BoN temperature)
    args             k, w (= 1/beta), mode (greedy|stochastic), rm_mode (auto|fast|reference|text)
    cd_tokenwise     k, lam, n_samples, train_prompts, width, max_epochs, temperature
    cd_blockwise     lam, n_samples, train_prompts, width, max_epochs, num_blocks, block_size
and shaping parameters (B, beta, alpha, gamma_cap, budget_stretch, cap) for the shaper.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import fields

from stackalign.runner.recipe import MethodConfig, RecipeError
from stackalign.shaping import Shaper, get_preset, get_shaper

SHAPER_KEYS = {f.name for f in fields(Shaper)} - {"kind"}
DECODER_KEYS = {
    "base": set(),
    "greedy": set(),
    "bon": {"n"},
    "soft_bon": {"n", "beta_select"},
    "args": {"k", "w", "mode", "rm_mode"},
    "cd_tokenwise": {"k", "lam", "n_samples", "train_prompts", "width", "max_epochs", "temperature"},
    "cd_blockwise": {"lam", "n_samples", "train_prompts", "width", "max_epochs", "num_blocks", "block_size"},
}

Generate = Callable[[list[str]], list[dict]]


def _split_params(m: MethodConfig) -> tuple[dict, dict]:
    allowed = DECODER_KEYS[m.decoder] | SHAPER_KEYS
    unknown = sorted(set(m.params) - allowed)
    if unknown:
        raise RecipeError(f"methods[{m.name}].params: unknown key(s) {unknown}; allowed: {sorted(allowed)}")
    dec = {k: v for k, v in m.params.items() if k in DECODER_KEYS[m.decoder]}
    shp = {k: v for k, v in m.params.items() if k in SHAPER_KEYS}
    return dec, shp


def make_shaper(m: MethodConfig, shaper_params: dict, *, w: float | None = None) -> Shaper | None:
    """The method's shaper. For ARGS the follower's beta is 1/w, so the threshold's gamma uses the same beta."""
    params = dict(shaper_params)
    if w is not None and "beta" not in params:
        params["beta"] = 1.0 / w
    if m.preset is not None:
        if m.shaping not in ("srs", "hard"):
            raise RecipeError(f"methods[{m.name}].preset: presets configure srs or hard, not {m.shaping}")
        return get_preset(m.preset, kind=m.shaping, **params)
    if m.shaping == "vanilla" and not params:
        return None
    return get_shaper(m.shaping, **params)


def make_method(m: MethodConfig, ctx) -> Generate:
    from stackalign.decoding.common import GenerationConfig

    dec, shp = _split_params(m)
    g = ctx.recipe.generation
    gen = GenerationConfig(
        max_new_tokens=g.max_new_tokens,
        temperature=g.temperature,
        top_p=g.top_p,
        top_k=g.top_k,
        stop_strings=tuple(ctx.stop_strings),
        seed=ctx.recipe.seed,
    )
    if m.decoder in ("base", "greedy"):
        from dataclasses import replace

        from stackalign.decoding.sampling import sample

        cfg = replace(gen, temperature=0.0) if m.decoder == "greedy" else gen

        def run(prompts: list[str]) -> list[dict]:
            res = sample(ctx.policy, ctx.tokenizer, prompts, 1, cfg)
            return _rows([t[0] for t in res.texts], res.cost, len(prompts))

        return run

    if m.decoder in ("bon", "soft_bon"):
        from stackalign.decoding.bon import best_of_n

        shaper = make_shaper(m, shp)
        n = int(dec.get("n", 10))

        def run(prompts: list[str]) -> list[dict]:
            res = best_of_n(
                ctx.policy,
                ctx.tokenizer,
                ctx.reward,
                prompts,
                n,
                gen,
                shaper=shaper,
                soft=m.decoder == "soft_bon",
                beta=dec.get("beta_select"),
            )
            return _rows(res.texts, res.cost, len(prompts))

        return run

    if m.decoder == "args":
        from stackalign.decoding.args import ARGSConfig, args_generate

        w = float(dec.get("w", 0.5))
        shaper = make_shaper(m, shp, w=w)
        cfg = ARGSConfig(
            k=int(dec.get("k", 10)),
            beta=1.0 / w,
            mode=dec.get("mode", "greedy"),
            rm_mode=dec.get("rm_mode", "auto"),
            batch_size=g.batch_size,
        )

        def run(prompts: list[str]) -> list[dict]:
            res = args_generate(ctx.policy, ctx.tokenizer, ctx.reward, prompts, cfg, gen, shaper=shaper)
            return _rows(res.texts, res.cost, len(prompts))

        return run

    if m.decoder in ("cd_tokenwise", "cd_blockwise"):
        return _make_cd(m, dec, shp, ctx, gen)
    raise RecipeError(f"methods[{m.name}].decoder: unknown {m.decoder!r}")  # pragma: no cover


def _rows(texts: list[str], cost, n_prompts: int) -> list[dict]:
    lm = cost.lm_tokens / n_prompts
    rm = cost.rm_tokens / n_prompts
    return [{"response": t, "lm_tokens": lm, "rm_tokens": rm} for t in texts]


def _make_cd(m: MethodConfig, dec: dict, shp: dict, ctx, gen) -> Generate:
    """Controlled decoding: offline base samples (shared by every CD method of the run), a value head trained
    on this method's shaped targets (cached in the run directory), then decoding."""
    from stackalign.decoding.cd import CDConfig, controlled_decode
    from stackalign.decoding.cd_data import CDDataConfig, OfflineData, build_offline_data
    from stackalign.decoding.value_head import (
        CONFIG_NAME,
        ValueTrainConfig,
        load_value_head,
        train_value_head,
    )

    if ctx.world is None:
        raise RecipeError(f"methods[{m.name}]: CD needs training prompts; it runs on a world (world: ...)")
    n_train = int(dec.get("train_prompts", 200))
    train_prompts = list(ctx.world.train_prompts)[:n_train]
    gmax = ctx.recipe.generation.max_new_tokens
    data_cfg = CDDataConfig(
        n_samples=int(dec.get("n_samples", 10)), max_new_tokens=gmax, seed=ctx.recipe.seed
    )
    data_key = hashlib.sha256(
        json.dumps([data_cfg.sampling_key(), n_train, list(ctx.stop_strings)], sort_keys=True).encode()
    ).hexdigest()[:10]
    data_dir = ctx.out_dir / "cd_offline" / data_key
    if not (data_dir / "config.json").exists() or not OfflineData.load(data_dir).complete:
        build_offline_data(
            ctx.policy,
            ctx.tokenizer,
            ctx.reward,
            train_prompts,
            data_dir,
            data_cfg,
            stop_strings=ctx.stop_strings,
        )
    data = OfflineData.load(data_dir)
    shaper = make_shaper(m, shp) or get_shaper("vanilla")
    head_dir = ctx.out_dir / "cd_heads" / m.name
    if (head_dir / CONFIG_NAME).exists():  # trained by an earlier (or interrupted-after-training) run
        head, _ = load_value_head(head_dir)
    else:
        tcfg = ValueTrainConfig(width=int(dec.get("width", 256)), max_epochs=int(dec.get("max_epochs", 15)))
        result = train_value_head(
            ctx.policy,
            data.examples(shaper),
            tcfg,
            out_dir=head_dir,
            extra={"method": m.name, "shaping": m.shaping, "preset": m.preset, "params": shp},
        )
        head = result.head
    mode = "tokenwise" if m.decoder == "cd_tokenwise" else "blockwise"
    kw = dict(mode=mode, lam=float(dec.get("lam", 1.5)), batch_size=ctx.recipe.generation.batch_size)
    if mode == "tokenwise":
        kw.update(top_k=int(dec.get("k", 10)), score_temperature=float(dec.get("temperature", 0.7)))
    else:
        kw.update(num_blocks=int(dec.get("num_blocks", 4)), block_size=int(dec.get("block_size", 8)))
    cfg = CDConfig(**kw)

    def run(prompts: list[str]) -> list[dict]:
        res = controlled_decode(ctx.policy, ctx.tokenizer, prompts, head, cfg, gen)
        return _rows(res.texts, res.cost, len(prompts))

    return run

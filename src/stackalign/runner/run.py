"""`stackalign run RECIPE` and `stackalign eval RUN_DIR`: recipes -> results directory.

A results directory holds the rows of exactly one resolved recipe and one prompt set:
    config.json          the resolved recipe (every default filled in), the presets used, and the prompt set's
                         size and sha256 (no secrets: only env-var names)
    generations.jsonl    one row per prompt x method, appended and fsynced row by row (resumable)
    summary.json         {"methods": {NAME: {proxy_reward, gold_reward, diversity, coherence, win_tie, cost...}}}
    report.md            the table and where the plots are
    *.png                plots

Killed at any moment (even kill -9) and started again with the same command, a run skips every finished
row and recomputes nothing that was written. Started again with a different recipe or prompt set, it refuses
and says what differs: use another --out, or --restart-changed to drop the rows of the changed methods and
keep the identical ones. A run that failed before its first row never blocks the corrected recipe. The
`evaluation` section may change freely (it only affects summary.json, which is recomputed).
"""

from __future__ import annotations

import argparse
import hashlib
import json
from pathlib import Path
from typing import Any

from stackalign import __version__
from stackalign.recipe_base import RecipeError, load_recipe_world
from stackalign.rundir import DirLock, read_config, world_identity
from stackalign.runner.backends import Job, run_backend
from stackalign.runner.context import Context, coherence_scorer, eval_stop_strings, load_world_and_prompts
from stackalign.runner.recipe import Recipe, load_recipe, recipe_from_dict
from stackalign.shaping import PRESETS
from stackalign.store import JsonlStore, write_json_atomic


def resolve_config(recipe: Recipe, prompts: list[str] | None = None, world: Any = None) -> dict:
    cfg = recipe.to_dict()
    cfg["stackalign_version"] = __version__
    cfg["presets"] = {m.preset: PRESETS[m.preset].to_config() for m in recipe.methods if m.preset}
    if prompts is not None:
        digest = hashlib.sha256(json.dumps(prompts, ensure_ascii=False).encode()).hexdigest()
        cfg["prompt_set"] = {"n": len(prompts), "sha256": digest}
    if world is not None and isinstance(getattr(world, "manifest", None), dict):
        cfg["world_id"] = world_identity(world.manifest)
    return cfg


# keys of config.json whose change changes every row; the evaluation section and the version do not
ROW_KEYS = (
    "world",
    "policy",
    "reward_model",
    "reward_chat_template",
    "gold",
    "prompts",
    "prompt_set",
    "world_id",
    "generation",
    "seed",
    "device",
    "dtype",
)


def diff_run(old: dict, new: dict, row_methods: set[str]) -> tuple[list[str], set[str]]:
    """What differs between a run directory's config and a new one: (descriptions, methods to restart).

    A change of a row key (prompts, generation, seed, models, ...) touches every method that has rows."""
    notes: list[str] = []
    changed: set[str] = set()
    for k in ROW_KEYS:
        if k == "world_id" and k not in old:  # a directory written before worlds were identified
            continue
        if old.get(k) != new.get(k):
            notes.append(f"{k}: {_short(old.get(k))} -> {_short(new.get(k))}")
            changed |= row_methods
    old_m = {m["name"]: m for m in old.get("methods", [])}
    new_m = {m["name"]: m for m in new.get("methods", [])}
    for name in sorted(set(old_m) | set(new_m) | row_methods):
        if name not in new_m:
            if name in row_methods:
                notes.append(f"methods: {name!r} has rows here but is not in the recipe")
                changed.add(name)
        elif name not in old_m:
            notes.append(f"methods: {name!r} is new")
        elif old_m[name] != new_m[name]:
            keys = sorted(
                k for k in set(old_m[name]) | set(new_m[name]) if old_m[name].get(k) != new_m[name].get(k)
            )
            sub = [
                f"{p}: {_short(old_m[name]['params'].get(p))} -> {_short(new_m[name]['params'].get(p))}"
                for p in sorted(set(old_m[name].get("params", {})) | set(new_m[name].get("params", {})))
                if old_m[name].get("params", {}).get(p) != new_m[name].get("params", {}).get(p)
            ]
            notes.append(f"methods: {name!r} changed ({', '.join(sub) or ', '.join(keys)})")
            if name in row_methods:
                changed.add(name)
    return notes, changed


def _short(v: Any) -> str:
    text = json.dumps(v, ensure_ascii=False, sort_keys=True)
    return text if len(text) <= 60 else text[:57] + "..."


def reconcile_run_dir(out: Path, cfg: dict, *, restart_changed: bool = False) -> None:
    """Make `out` hold rows of exactly `cfg`: refuse a different recipe or prompt set (or, with
    `restart_changed`, drop the rows of the methods it changes). A directory without rows is always reusable."""
    store_path = out / "generations.jsonl"
    cfg_path = out / "config.json"
    store = JsonlStore(store_path) if store_path.exists() else None
    if store is None or not store.rows:
        return  # nothing to protect: a failed set-up never blocks the corrected recipe
    if not cfg_path.exists():
        raise RecipeError(f"{out} holds generations.jsonl but no config.json; use another --out")
    old = read_config(cfg_path, "run")
    row_methods = {r["method"] for r in store.rows}
    notes, changed = diff_run(old, cfg, row_methods)
    if not notes:
        return
    if not restart_changed:
        raise RecipeError(
            f"{out} holds the rows of a different recipe or prompt set:\n  "
            + "\n  ".join(notes)
            + "\nuse another --out, or add --restart-changed to start the changed methods afresh "
            "(identical methods keep their rows)"
        )
    if changed:
        store.rewrite([r for r in store.rows if r["method"] not in changed])


def execute(
    recipe: Recipe,
    out_dir: str | Path,
    *,
    world=None,
    progress: bool = True,
    restart_changed: bool = False,
    check_environment: bool = True,
    workers: Any = None,
) -> dict:
    """Run every method of `recipe` on its prompts (resuming), then evaluate. Returns the summary.

    Order: the environment check and the run directory's consistency come before any model loads.
    `workers`: for the Ray backend, a `ray_backend.WorkerPool` whose actors (and loaded models) the run uses
    instead of starting its own, e.g. a sweep's, shared by its values."""
    from stackalign.runner.methods import resolve_method
    from stackalign.runner.preflight import preflight

    plans = [resolve_method(m, i) for i, m in enumerate(recipe.methods)]
    if check_environment:
        preflight(recipe)
    threads = set_threads(recipe.threads) if recipe.backend.kind == "serial" else None
    out = Path(out_dir)
    with DirLock(out, "run directory"):  # one writer per run directory (created here; a file is refused)
        world, prompts, stops = load_world_and_prompts(recipe, world)
        cfg = resolve_config(recipe, prompts, world)
        reconcile_run_dir(out, cfg, restart_changed=restart_changed)
        write_json_atomic(out / "config.json", cfg)
        store = JsonlStore(out / "generations.jsonl")
        job = Job(recipe, out, world, prompts, stops, plans, store, progress, workers=workers)
        done = run_backend(job)  # the serial backend's loaded models, or Ray's coherence scores
        extra = {"threads": threads} if threads is not None else {}
        return evaluate(out, recipe=recipe, ctx=done.ctx, world=world, coherence=done.coherence, extra=extra)


def set_threads(threads: int | None) -> int:
    """Set torch's CPU thread count (null: the machine's cores) and return it."""
    import os

    import torch

    n = threads or os.cpu_count() or 1
    torch.set_num_threads(n)
    return n


def evaluate(
    out: Path, *, recipe: Recipe, ctx: Context | None = None, world=None, coherence=None, extra=None
) -> dict:
    """Recompute summary.json, report.md and the plots from generations.jsonl.

    `coherence`: a scorer to use instead of the recipe's (e.g. one holding scores computed on Ray workers);
    `extra`: top-level entries added to summary.json (e.g. the thread count the run used)."""
    from stackalign.evaluation.summary import format_table, summarize
    from stackalign.runner.report import write_report

    store = JsonlStore(out / "generations.jsonl")
    if not store.rows:
        raise ValueError(f"{out}: generations.jsonl has no rows to evaluate")
    ev = recipe.evaluation
    if coherence is None:
        coherence = coherence_scorer(recipe)
    stops = eval_stop_strings(recipe)
    judge = make_judge(recipe, store.rows, stops, ctx=ctx, world=world)
    rows = store.rows
    order = {m.name: i for i, m in enumerate(recipe.methods)}
    rows = sorted(rows, key=lambda r: (order.get(r["method"], 1e9), r["prompt_id"]))
    summary = summarize(
        rows,
        coherence=coherence,
        judge=judge,
        baselines=ev.baselines,
        stop_strings=stops,
        length_control=ev.length_control,
    )
    summary.update(extra or {})
    write_json_atomic(out / "summary.json", summary)
    table = format_table(summary, baselines=ev.baselines)
    write_report(out, recipe, summary, table, rows)
    return summary


def make_judge(recipe: Recipe, rows: list[dict], stops: tuple[str, ...], *, ctx=None, world=None):
    """The recipe's win-tie judge (`evaluation.judge`), or None.

    `reward_model` judges by the rows' own `proxy_reward` (the guiding reward model's score of each answer, as
    the run computed it): a pair's answers are looked up by (prompt, answer as the judge reads it)."""
    ev = recipe.evaluation
    if ev.judge is None:
        return None
    if ev.judge == "gold":
        from stackalign.evaluation.judges import GoldJudge

        if ctx is not None:
            gold_judge = ctx.gold_judge
        else:
            gold_judge = (world if world is not None else load_recipe_world(recipe.world)).gold_judge
        return GoldJudge(gold_judge)
    if ev.judge == "reward_model":
        from stackalign.evaluation.judges import RewardModelJudge
        from stackalign.evaluation.metrics import clean_response

        rewards: dict[tuple[str, str], list[float]] = {}
        for r in rows:
            if r.get("proxy_reward") is None:
                raise RecipeError(
                    f"evaluation.judge: reward_model needs each row's proxy_reward; method {r['method']!r}, "
                    f"prompt {r['prompt_id']!r} has none"
                )
            key = (r["prompt"], clean_response(r["response"], stops))
            rewards.setdefault(key, []).append(float(r["proxy_reward"]))
        # one reward per distinct answer text (the mean, should two rows of the same text differ in the last bits)
        table = {k: sum(v) / len(v) for k, v in rewards.items()}
        return RewardModelJudge(lambda prompt, response: table[(prompt, response)])
    max_new = ev.judge_max_new_tokens
    if ev.judge == "llm":
        from stackalign.evaluation.judges import LLMJudge

        return LLMJudge(
            ev.judge_model,
            base_url=ev.judge_base_url,
            api_key_env=ev.judge_api_key_env,
            orders=ev.judge_orders,
            seed=recipe.seed,
            **({} if max_new is None else {"max_tokens": max_new}),
        )
    from stackalign.evaluation.hf_judge import HFJudge

    return HFJudge.load(
        ev.judge_model,
        device=recipe.device,
        dtype=recipe.dtype,
        orders=ev.judge_orders,
        seed=recipe.seed,
        batch_size=ev.judge_batch_size,
        **({} if max_new is None else {"max_new_tokens": max_new}),
    )


def main(args: argparse.Namespace) -> int:
    from stackalign.evaluation.summary import format_table

    recipe = load_recipe(args.recipe, list(args.overrides or []) + backend_overrides(args))
    out = Path(args.out or Path("runs") / Path(args.recipe).stem)
    summary = execute(recipe, out, restart_changed=getattr(args, "restart_changed", False))
    print(format_table(summary, baselines=recipe.evaluation.baselines))
    print(f"\nresults: {out}/ (summary.json, generations.jsonl, report.md)")
    return 0


def backend_overrides(args: argparse.Namespace) -> list[str]:
    """`--backend/--workers/--address` as recipe overrides (the command line wins over the recipe)."""
    out = []
    for flag, key in (("backend", "kind"), ("workers", "workers"), ("address", "address")):
        value = getattr(args, flag, None)
        if value is not None:  # strings JSON-quoted: an address is never re-read as another YAML type
            out.append(f"backend.{key}={json.dumps(value)}")
    return out


def eval_main(args: argparse.Namespace) -> int:
    from stackalign.evaluation.summary import format_table

    out = Path(args.run_dir)
    cfg_path = out / "config.json"
    if not cfg_path.is_file():
        raise FileNotFoundError(f"run_dir: {out} has no config.json (is it a stackalign run directory?)")
    cfg = read_config(cfg_path, "run")
    for k in ("stackalign_version", "presets", "prompt_set", "world_id"):
        cfg.pop(k, None)
    try:
        recipe = recipe_from_dict(cfg)
    except RecipeError as e:
        raise RecipeError(f"{cfg_path}: {e}") from None
    with DirLock(out, "run directory"):
        summary = evaluate(out, recipe=recipe)
    print(format_table(summary, baselines=recipe.evaluation.baselines))
    return 0

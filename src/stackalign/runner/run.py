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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from stackalign import __version__
from stackalign.runner.recipe import Recipe, RecipeError, load_recipe, recipe_from_dict
from stackalign.shaping import PRESETS
from stackalign.store import JsonlStore, write_json_atomic


@dataclass
class Context:
    """Everything a method needs, loaded once per run."""

    recipe: Recipe
    world: Any
    policy: Any
    tokenizer: Any
    reward: Any  # stackalign.models.RewardModel
    gold: Any  # callable (prompt, response) -> float, or None
    gold_judge: Any  # callable (prompt, a, b) -> +1/0/-1, or None
    prompts: list[str]
    stop_strings: list[str]
    out_dir: Path


def resolve_config(recipe: Recipe, prompts: list[str] | None = None) -> dict:
    cfg = recipe.to_dict()
    cfg["stackalign_version"] = __version__
    cfg["presets"] = {m.preset: PRESETS[m.preset].to_config() for m in recipe.methods if m.preset}
    if prompts is not None:
        digest = hashlib.sha256(json.dumps(prompts, ensure_ascii=False).encode()).hexdigest()
        cfg["prompt_set"] = {"n": len(prompts), "sha256": digest}
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
    "generation",
    "seed",
    "device",
    "dtype",
)


def load_world_and_prompts(recipe: Recipe, world=None) -> tuple[Any, list[str], list[str]]:
    """The world (or None), the prompts and the stop strings: everything but the models."""
    from stackalign.runner.prompts import load_prompts, policy_tokenizer

    if world is None and recipe.world is not None:
        world = _world_for(recipe)
    tok = policy_tokenizer(recipe.policy, world) if recipe.prompts.chat_template else None
    prompts = load_prompts(recipe.prompts, world, tok)
    stops = recipe.generation.stop_strings
    if stops is None:
        stops = list(getattr(world, "stop_strings", []) or [])
    return world, prompts, stops


# recipe keys that decide which models a Context loads: a Context whose recipe agrees on all of them can
# lend its loaded models to another recipe's Context (`build_context(..., reuse=)`)
MODEL_KEYS = ("world", "policy", "reward_model", "reward_chat_template", "dtype", "device")


def same_models(a: Recipe, b: Recipe) -> bool:
    """Whether recipes `a` and `b` load the same world, policy and reward model (same dtype and device)."""
    return all(getattr(a, k) == getattr(b, k) for k in MODEL_KEYS)


def build_context(
    recipe: Recipe, out_dir: Path, world=None, prompts=None, stops=None, reuse: Context | None = None
) -> Context:
    """The run's Context: the recipe's models loaded, or, with `reuse` (a Context of a recipe with the same
    models, see `same_models`), its policy, tokenizer and reward model taken as they are (a Ray sweep's
    workers keep them across the values); everything else comes from `recipe`."""
    import torch

    from stackalign.models import load_policy, load_reward_model

    torch.manual_seed(recipe.seed)
    if prompts is None:
        world, prompts, stops = load_world_and_prompts(recipe, world)
    gold = gold_judge = None
    if recipe.gold == "world":
        gold, gold_judge = world.gold, world.gold_judge
    if reuse is not None:
        if not same_models(reuse.recipe, recipe):
            raise ValueError("build_context: reuse holds the models of a recipe with other models")
        models = (reuse.policy, reuse.tokenizer, reuse.reward)
        return Context(recipe, world, *models, gold, gold_judge, prompts, stops, out_dir)
    dtype = getattr(torch, recipe.dtype)
    policy_path = recipe.policy or str(world.policy_dir)
    rm_path = recipe.reward_model or str(world.reward_dir)
    try:
        policy, tok = load_policy(policy_path, dtype=dtype, device=recipe.device)
    except (ValueError, OSError) as e:
        raise RecipeError(f"policy: {e}") from None
    try:
        reward = load_reward_model(
            rm_path, dtype=dtype, device=recipe.device, chat_template=recipe.reward_chat_template
        )
    except (ValueError, OSError) as e:
        raise RecipeError(f"reward_model: {e}") from None
    return Context(recipe, world, policy, tok, reward, gold, gold_judge, prompts, stops, out_dir)


def read_config(path: Path) -> dict:
    """A run directory's config.json; a garbled file is an error naming it."""
    try:
        cfg = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise RecipeError(f"{path}: not a readable run configuration ({type(e).__name__}: {e})") from None
    if not isinstance(cfg, dict):
        raise RecipeError(f"{path}: not a run configuration (expected a JSON object)")
    return cfg


def diff_run(old: dict, new: dict, row_methods: set[str]) -> tuple[list[str], set[str]]:
    """What differs between a run directory's config and a new one: (descriptions, methods to restart).

    A change of a row key (prompts, generation, seed, models, ...) touches every method that has rows."""
    notes: list[str] = []
    changed: set[str] = set()
    for k in ROW_KEYS:
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
    old = read_config(cfg_path)
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


def prepare_out_dir(out_dir: str | Path) -> Path:
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise RecipeError(f"--out: {str(out)!r} is a file, not a directory")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise RecipeError(f"--out: cannot create {str(out)!r} ({e.strerror})") from None
    return out


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
    out = prepare_out_dir(out_dir)
    world, prompts, stops = load_world_and_prompts(recipe, world)
    cfg = resolve_config(recipe, prompts)
    reconcile_run_dir(out, cfg, restart_changed=restart_changed)
    write_json_atomic(out / "config.json", cfg)
    from stackalign.runner.backends import Job, run_backend

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


def coherence_scorer(recipe: Recipe):
    """The recipe's coherence scorer (`evaluation.coherence`), or None."""
    ev = recipe.evaluation
    if not ev.coherence:
        return None
    from stackalign.evaluation.metrics import Coherence

    return Coherence(None if ev.coherence == "minilm" else ev.coherence)


def eval_stop_strings(recipe: Recipe) -> tuple[str, ...]:
    """Where responses are cut before diversity, coherence and the judge."""
    return tuple(recipe.generation.stop_strings or ()) or ("\n\nHuman:", "###Human:", "\nUser:")


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
    judge = None
    if ev.judge == "gold":
        from stackalign.evaluation.judges import GoldJudge

        if ctx is not None:
            gold_judge = ctx.gold_judge
        else:
            gold_judge = (world if world is not None else _world_for(recipe)).gold_judge
        judge = GoldJudge(gold_judge)
    elif ev.judge == "llm":
        from stackalign.evaluation.judges import LLMJudge

        judge = LLMJudge(ev.judge_model, base_url=ev.judge_base_url, api_key_env=ev.judge_api_key_env)
    rows = store.rows
    order = {m.name: i for i, m in enumerate(recipe.methods)}
    rows = sorted(rows, key=lambda r: (order.get(r["method"], 1e9), r["prompt_id"]))
    stops = eval_stop_strings(recipe)
    summary = summarize(
        rows,
        coherence=coherence,
        judge=judge,
        baselines=ev.baselines,
        stop_strings=stops,
    )
    summary.update(extra or {})
    write_json_atomic(out / "summary.json", summary)
    table = format_table(summary, baselines=ev.baselines)
    write_report(out, recipe, summary, table, rows)
    return summary


def _world_for(recipe: Recipe):
    from stackalign.worlds import default_world, load_world

    return default_world() if recipe.world == "default" else load_world(recipe.world)


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
    cfg = read_config(cfg_path)
    for k in ("stackalign_version", "presets", "prompt_set"):
        cfg.pop(k, None)
    try:
        recipe = recipe_from_dict(cfg)
    except RecipeError as e:
        raise RecipeError(f"{cfg_path}: {e}") from None
    summary = evaluate(out, recipe=recipe)
    print(format_table(summary, baselines=recipe.evaluation.baselines))
    return 0

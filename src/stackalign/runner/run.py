"""`stackalign run RECIPE` and `stackalign eval RUN_DIR`: recipes -> results directory (SPEC §6).

A results directory holds:
    config.json          the resolved recipe + the shaping presets used (no secrets: only env-var names)
    generations.jsonl    one row per prompt x method, appended and fsynced row by row (resumable)
    summary.json         {"methods": {NAME: {proxy_reward, gold_reward, diversity, coherence, win_tie, cost...}}}
    report.md            the table and where the plots are
    *.png                plots

Killed at any moment (even kill -9) and started again with the same command, a run skips every finished
row and recomputes nothing that was written.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

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


def resolve_config(recipe: Recipe) -> dict:
    cfg = recipe.to_dict()
    cfg["stackalign_version"] = __version__
    cfg["presets"] = {m.preset: PRESETS[m.preset].to_config() for m in recipe.methods if m.preset}
    return cfg


def build_context(recipe: Recipe, out_dir: Path, world=None) -> Context:
    from stackalign.models import load_policy, load_reward_model
    from stackalign.runner.prompts import load_prompts

    torch.manual_seed(recipe.seed)
    if world is None and recipe.world is not None:
        from stackalign.worlds import default_world, load_world

        world = default_world() if recipe.world == "default" else load_world(recipe.world)
    dtype = getattr(torch, recipe.dtype)
    policy_path = recipe.policy or str(world.policy_dir)
    rm_path = recipe.reward_model or str(world.reward_dir)
    policy, tok = load_policy(policy_path, dtype=dtype, device=recipe.device)
    reward = load_reward_model(
        rm_path, dtype=dtype, device=recipe.device, chat_template=recipe.reward_chat_template
    )
    gold = gold_judge = None
    if recipe.gold == "world":
        if world is None:
            raise RecipeError("gold: 'world' needs a world")
        gold, gold_judge = world.gold, world.gold_judge
    prompts = load_prompts(recipe.prompts, world)
    stops = recipe.generation.stop_strings
    if stops is None:
        stops = list(getattr(world, "stop_strings", []) or [])
    return Context(recipe, world, policy, tok, reward, gold, gold_judge, prompts, stops, out_dir)


def _check_same_run(out: Path, cfg: dict) -> None:
    path = out / "config.json"
    if not path.exists():
        return
    old = json.loads(path.read_text())
    keep = (
        "world",
        "policy",
        "reward_model",
        "reward_chat_template",
        "prompts",
        "generation",
        "seed",
        "dtype",
    )
    changed = [k for k in keep if old.get(k) != cfg.get(k)]
    old_methods = {m["name"]: m for m in old.get("methods", [])}
    changed += [
        f"methods.{m['name']}"
        for m in cfg["methods"]
        if m["name"] in old_methods and old_methods[m["name"]] != m
    ]
    if changed:
        raise RecipeError(
            f"{out} holds a run with a different configuration ({', '.join(changed)}); "
            "use another --out, or delete the directory to start over"
        )


def execute(recipe: Recipe, out_dir: str | Path, *, world=None, progress: bool = True) -> dict:
    """Run every method of `recipe` on its prompts (resuming), then evaluate. Returns the summary."""
    from stackalign.runner.methods import make_method

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    cfg = resolve_config(recipe)
    _check_same_run(out, cfg)
    write_json_atomic(out / "config.json", cfg)
    ctx = build_context(recipe, out, world=world)
    store = JsonlStore(out / "generations.jsonl")
    bs = recipe.generation.batch_size
    for method in recipe.methods:
        todo = [i for i in range(len(ctx.prompts)) if not store.done(method=method.name, prompt_id=i)]
        if not todo:
            continue
        generate = make_method(method, ctx)
        bar = tqdm(total=len(todo), desc=f"{method.name:>14s}", disable=not progress, unit="prompt")
        for start in range(0, len(todo), bs):
            ids = todo[start : start + bs]
            prompts = [ctx.prompts[i] for i in ids]
            t0 = time.perf_counter()
            outs = generate(prompts)
            elapsed = time.perf_counter() - t0
            responses = [o["response"] for o in outs]
            proxy = ctx.reward(prompts, responses).tolist()
            rows = []
            for j, (i, o) in enumerate(zip(ids, outs)):
                rows.append(
                    {
                        "prompt_id": i,
                        "method": method.name,
                        "prompt": prompts[j],
                        "response": o["response"],
                        "proxy_reward": float(proxy[j]),
                        "gold_reward": float(ctx.gold(prompts[j], o["response"])) if ctx.gold else None,
                        # a batch's wall time is shared equally by its prompts
                        "seconds": elapsed / len(ids),
                        "lm_tokens": int(o.get("lm_tokens", 0)),
                        "rm_tokens": int(o.get("rm_tokens", 0)),
                    }
                )
            store.append(rows)
            bar.update(len(ids))
        bar.close()
    return evaluate(out, recipe=recipe, ctx=ctx)


def evaluate(out: Path, *, recipe: Recipe, ctx: Context | None = None) -> dict:
    """Recompute summary.json, report.md and the plots from generations.jsonl."""
    from stackalign.evaluation.summary import format_table, summarize
    from stackalign.runner.report import write_report

    store = JsonlStore(out / "generations.jsonl")
    if not store.rows:
        raise ValueError(f"{out}: generations.jsonl has no rows to evaluate")
    ev = recipe.evaluation
    coherence = None
    if ev.coherence:
        from stackalign.evaluation.metrics import Coherence

        coherence = Coherence(None if ev.coherence == "minilm" else ev.coherence)
    judge = None
    if ev.judge == "gold":
        from stackalign.evaluation.judges import GoldJudge

        gold_judge = ctx.gold_judge if ctx is not None else _world_for(recipe).gold_judge
        judge = GoldJudge(gold_judge)
    elif ev.judge == "llm":
        from stackalign.evaluation.judges import LLMJudge

        judge = LLMJudge(ev.judge_model, base_url=ev.judge_base_url, api_key_env=ev.judge_api_key_env)
    rows = store.rows
    order = {m.name: i for i, m in enumerate(recipe.methods)}
    rows = sorted(rows, key=lambda r: (order.get(r["method"], 1e9), r["prompt_id"]))
    stops = tuple(recipe.generation.stop_strings or ()) or ("\n\nHuman:", "###Human:", "\nUser:")
    summary = summarize(
        rows,
        coherence=coherence,
        judge=judge,
        baselines=ev.baselines,
        stop_strings=stops,
    )
    write_json_atomic(out / "summary.json", summary)
    table = format_table(summary, baselines=ev.baselines)
    write_report(out, recipe, summary, table, rows)
    return summary


def _world_for(recipe: Recipe):
    from stackalign.worlds import default_world, load_world

    return default_world() if recipe.world == "default" else load_world(recipe.world)


def main(args: argparse.Namespace) -> int:
    from stackalign.evaluation.summary import format_table

    recipe = load_recipe(args.recipe, args.overrides)
    out = Path(args.out or Path("runs") / Path(args.recipe).stem)
    summary = execute(recipe, out)
    print(format_table(summary, baselines=recipe.evaluation.baselines))
    print(f"\nresults: {out}/ (summary.json, generations.jsonl, report.md)")
    return 0


def eval_main(args: argparse.Namespace) -> int:
    from stackalign.evaluation.summary import format_table

    out = Path(args.run_dir)
    cfg_path = out / "config.json"
    if not cfg_path.is_file():
        raise FileNotFoundError(f"run_dir: {out} has no config.json (is it a stackalign run directory?)")
    cfg = json.loads(cfg_path.read_text())
    for k in ("stackalign_version", "presets"):
        cfg.pop(k, None)
    recipe = recipe_from_dict(cfg)
    summary = evaluate(out, recipe=recipe)
    print(format_table(summary, baselines=recipe.evaluation.baselines))
    return 0

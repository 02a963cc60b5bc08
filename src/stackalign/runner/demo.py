"""`stackalign demo`: the paper's main comparison, end to end, on the sandbox world.

Builds (or reuses) the default sandbox world, then follows the paper's protocol:
  1. sweep the vanilla ARGS reward weight 1/beta on validation prompts and keep the value with the best gold
     reward (the last value before reward hacking sets in);
  2. fix that 1/beta for every method (ARGS' w and CD's lambda), and run the packaged `sandbox.yaml` recipe
     (base, Best-of-N, ARGS, SRS-ARGS, Minmax-ARGS, Meanstd-ARGS, CD, SRS-CD) on the test prompts;
  3. print the results table; report.md, summary.json and the plots are in the output directory.
`--quick` runs fewer prompts and sweep values. Re-running resumes: finished rows are not recomputed.
"""

from __future__ import annotations

import argparse
import time
from importlib import resources
from pathlib import Path

from stackalign.runner.recipe import load_recipe

QUICK_OVERRIDES = ["prompts.limit=24"]
SWEEP_VALUES = [0.25, 1.0, 4.0, 16.0]
QUICK_SWEEP_VALUES = [0.25, 1.0, 4.0, 16.0]
SWEEP_PROMPTS = 24
QUICK_SWEEP_PROMPTS = 12


def _world(recipe):
    from stackalign.worlds import default_world, load_world

    return default_world() if recipe.world == "default" else load_world(recipe.world)


def demo_recipe_path() -> Path:
    return Path(str(resources.files("stackalign") / "recipes" / "sandbox.yaml"))


def significance_sentence(summary: dict) -> str:
    """Which SRS methods differ significantly from their baselines at 95%, in words: the gold (else proxy)
    difference and the judge's net win rate (wins - losses), each significant when its interval excludes 0."""
    from stackalign.evaluation.summary import significance

    parts = []
    for name, m in summary["methods"].items():
        if "SRS" not in name.upper():
            continue
        for b, p in (m.get("paired") or {}).items():
            d = p.get("gold_diff") or p.get("proxy_diff")
            s_d, s_w = significance(d, 0.0), significance(p.get("net_win"), 0.0)
            word = {"+": "better", "-": "worse", "=": "no significant difference", "n/a": "n/a"}
            parts.append(f"{name} vs {b}: reward {word[s_d]}, judge {word[s_w]}")
    if not parts:
        return "No SRS method in this run."
    return "Significance at 95% (interval excludes 0): " + "; ".join(parts) + "."


def main(args: argparse.Namespace) -> int:
    from stackalign.evaluation.summary import format_paired, format_table
    from stackalign.runner.run import execute

    t0 = time.perf_counter()
    overrides = list(QUICK_OVERRIDES if args.quick else [])
    if args.world:
        if not Path(args.world).is_dir():
            raise FileNotFoundError(f"--world: no such directory {args.world!r}")
        overrides.append(f"world={Path(args.world).resolve()}")
    recipe = load_recipe(demo_recipe_path(), overrides)
    from stackalign.runner.preflight import preflight

    preflight(recipe)  # a missing optional package stops the demo here, before any generation
    out = Path(args.out or ("runs/demo-quick" if args.quick else "runs/demo"))
    world = _world(recipe)
    print(f"[demo] world: {world.root}; {len(recipe.methods)} methods; results -> {out}/", flush=True)

    # 1. the paper's protocol: sweep vanilla ARGS' 1/beta on validation prompts, keep the best by gold
    from stackalign.runner.recipe import recipe_from_dict
    from stackalign.runner.sweep import run_sweep

    n_val = QUICK_SWEEP_PROMPTS if args.quick else SWEEP_PROMPTS
    values = QUICK_SWEEP_VALUES if args.quick else SWEEP_VALUES
    sweep_recipe = recipe_from_dict(recipe.to_dict(), [f"prompts.limit={n_val}"])
    print(f"[demo] 1/beta sweep of ARGS on {n_val} validation prompts: {values}", flush=True)
    sweep = run_sweep(sweep_recipe, "ARGS", values, split="world:val", out_dir=out / "sweep", world=world)
    chosen = sweep["chosen"]
    print(
        f"[demo] chosen 1/beta = {chosen:g} ({sweep['criterion']}); plot: {out}/sweep/sweep.png", flush=True
    )

    # 2. fix it for every method, run the comparison on the test prompts
    fixed = []
    for i, m in enumerate(recipe.methods):
        if m.decoder == "args":
            fixed.append(f"methods.{i}.params.w={chosen}")
        elif m.decoder.startswith("cd_"):
            fixed.append(f"methods.{i}.params.lam={chosen}")
            if args.quick:  # a smaller offline set and fewer epochs for the value heads
                fixed += [f"methods.{i}.params.train_prompts=60", f"methods.{i}.params.max_epochs=5"]
    recipe = recipe_from_dict(recipe.to_dict(), fixed)
    summary = execute(recipe, out, world=world)
    print()
    print(format_table(summary, baselines=recipe.evaluation.baselines))
    print("\nPaired against each baseline (95% bootstrap intervals over prompts):\n")
    print(format_paired(summary, baselines=recipe.evaluation.baselines))
    print("\n" + significance_sentence(summary))
    print(
        f"\n[demo] done in {time.perf_counter() - t0:.0f} s. Report: {out}/report.md, plot: {out}/methods.png"
    )
    return 0

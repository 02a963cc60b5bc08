"""`stackalign demo`: the paper's main comparison, end to end, on the sandbox world.

Builds (or reuses) the default sandbox world, runs the packaged `sandbox.yaml` recipe (base, Best-of-N,
ARGS, SRS-ARGS, Minmax-ARGS, Meanstd-ARGS, CD, SRS-CD) on the test prompts, and prints the results table.
`--quick` runs fewer prompts. Re-running resumes: finished rows are not recomputed.
"""

from __future__ import annotations

import argparse
import time
from importlib import resources
from pathlib import Path

from stackalign.runner.recipe import load_recipe

QUICK_OVERRIDES = ["prompts.limit=24"]


def demo_recipe_path() -> Path:
    return Path(str(resources.files("stackalign") / "recipes" / "sandbox.yaml"))


def main(args: argparse.Namespace) -> int:
    from stackalign.evaluation.summary import format_table
    from stackalign.runner.run import execute

    t0 = time.perf_counter()
    overrides = list(QUICK_OVERRIDES if args.quick else [])
    if args.world:
        if not Path(args.world).is_dir():
            raise FileNotFoundError(f"--world: no such directory {args.world!r}")
        overrides.append(f"world={Path(args.world).resolve()}")
    recipe = load_recipe(demo_recipe_path(), overrides)
    out = Path(args.out or ("runs/demo-quick" if args.quick else "runs/demo"))
    print(f"[demo] world: {recipe.world}; {len(recipe.methods)} methods; results -> {out}/", flush=True)
    summary = execute(recipe, out)
    print()
    print(format_table(summary, baselines=recipe.evaluation.baselines))
    print(
        f"\n[demo] done in {time.perf_counter() - t0:.0f} s. Report: {out}/report.md, plot: {out}/methods.png"
    )
    return 0

"""`stackalign demo`: the paper's main comparison, end to end, on the sandbox world.

Builds (or reuses) the default sandbox world, then follows the paper's protocol:
  1. sweep the vanilla ARGS reward weight 1/beta on validation prompts and keep the value with the best gold
     reward (the last value before reward hacking sets in);
  2. fix that 1/beta for every method (ARGS' w and CD's lambda), and run the packaged `sandbox.yaml` recipe
     (base, Best-of-N, ARGS, SRS-ARGS, Minmax-ARGS, Meanstd-ARGS, CD, SRS-CD) on the test prompts;
  3. print the results table; report.md, summary.json and the plots are in the output directory;
  4. the other protocol — a user tunes the method they deploy: each swept method at its own best 1/beta on
     the same validation prompts (same criterion), decoded again on the test prompts where its best differs,
     with its paired gold difference against the vanilla method at its own best (OUT/own-best/).
`--quick` runs fewer prompts and sweep values. Re-running resumes: finished rows are not recomputed.
"""

from __future__ import annotations

import argparse
import time
from importlib import resources
from pathlib import Path

from stackalign.runner.recipe import load_recipe

QUICK_OVERRIDES = ["prompts.limit=24"]
QUICK_PARAMS = {"train_prompts": 60, "max_epochs": 5}  # --quick: of every method whose decoder has them
SWEEP_VALUES = [0.25, 1.0, 4.0, 16.0]
QUICK_SWEEP_VALUES = [0.25, 1.0, 4.0, 16.0]
SWEEP_PROMPTS = 24
QUICK_SWEEP_PROMPTS = 12


def _world(recipe):
    from stackalign.worlds import default_world, load_world

    return (
        default_world() if recipe.world == "default" else load_world(recipe.world)
    )  # load_world knows "smol"


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


def own_best_protocol(recipe, sweep: dict, out: Path, world) -> list[dict]:
    """Each method the sweep ran at its own best 1/beta (``choose_value`` on its own validation numbers: the
    paper's criterion, ties to the smaller value). Methods whose best is not the paper's chosen value are
    decoded again on the test prompts into ``out/own-best``; the others reuse the main run's rows. Returns one
    row per method: name, own value, test gold mean, and the paired gold difference (mean, lo, hi) against
    the vanilla method at its own best, which is the chosen value by construction."""
    from stackalign.evaluation.intervals import bootstrap_ci, paired_diff_ci
    from stackalign.runner.decoders import weight_key
    from stackalign.runner.recipe import recipe_from_dict
    from stackalign.runner.run import execute
    from stackalign.runner.sweep import choose_value
    from stackalign.store import JsonlStore

    per_value = {float(v): entry for v, entry in sweep["per_value"].items()}
    swept = next(iter(per_value.values()))["methods"]
    own = {name: choose_value(per_value, name)[0] for name in swept}
    keep = [m.name for m in recipe.methods if m.name in own and own[m.name] != sweep["chosen"]]

    def golds(run_dir: Path) -> dict[str, list[float]]:
        by: dict[str, list[tuple[int, float]]] = {}
        for r in JsonlStore(run_dir / "generations.jsonl").rows:
            by.setdefault(r["method"], []).append((r["prompt_id"], r["gold_reward"]))
        return {k: [g for _, g in sorted(v)] for k, v in by.items()}

    main_golds = golds(out)
    own_golds = {}
    if keep:
        data = recipe.to_dict()
        data["methods"] = [
            {**m, "params": {**m["params"], weight_key(m["decoder"]): own[m["name"]]}}
            for m in data["methods"]
            if m["name"] in keep
        ]
        data["evaluation"] = {**data["evaluation"], "baselines": [], "coherence": None}
        sub = recipe_from_dict(data, [])
        print(
            f"[demo] the other protocol: {', '.join(f'{n} at {own[n]:g}' for n in keep)} on the test prompts"
        )
        execute(sub, out / "own-best", world=world)
        own_golds = golds(out / "own-best")
    base = sweep["method"]
    rows = []
    for name in swept:
        g = own_golds.get(name) or main_golds.get(name)
        if g is None or any(v is None for v in g):
            continue
        ci = bootstrap_ci(g)
        diff = None if name == base else paired_diff_ci(g, main_golds[base])
        rows.append(
            {"method": name, "value": own[name], "gold": sum(g) / len(g), "gold_ci": ci, "diff": diff}
        )
    return rows


def format_own_best(rows: list[dict], sweep: dict) -> str:
    """The own-best protocol as a table (gold with its 95% interval; paired difference against the vanilla
    method at its own best, '+' / '-' when the interval excludes 0, '=' when it does not)."""
    from stackalign.evaluation.summary import significance

    key = sweep.get("weight_key", "1/beta")
    lines = [
        f"Each method at its own best {key} on the validation prompts (the paper's protocol fixes {key} = "
        f"{sweep['chosen']:g}, {sweep['method']}'s best, for all):",
        "",
        f"| method | own best {key} | gold [95% CI] | gold − {sweep['method']} at its own best [95% CI] |",
        "|---|---:|---:|---:|",
    ]
    for r in rows:
        lo, hi = r["gold_ci"] or (float("nan"), float("nan"))
        d = r["diff"]
        diff = "-" if d is None else f"{d[0]:+.3f} [{d[1]:+.3f}, {d[2]:+.3f}] {significance(d, 0.0)}"
        lines.append(f"| {r['method']} | {r['value']:g} | {r['gold']:.3f} [{lo:.3f}, {hi:.3f}] | {diff} |")
    return "\n".join(lines)


def main(args: argparse.Namespace) -> int:
    from stackalign.evaluation.summary import format_paired, format_table
    from stackalign.runner.run import execute

    t0 = time.perf_counter()
    overrides = list(QUICK_OVERRIDES if args.quick else [])
    if args.world:
        from stackalign.worlds.world import NAMED_WORLDS

        if args.world in NAMED_WORLDS and not Path(args.world).exists():
            overrides.append(f"world={args.world}")  # a cached world by name (smol: built on first use)
        elif not Path(args.world).is_dir():
            raise FileNotFoundError(
                f"--world: no such directory {args.world!r} (or a name: {', '.join(NAMED_WORLDS)})"
            )
        else:
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
    from stackalign.runner.decoders import get_decoder, weight_key

    fixed = []
    for i, m in enumerate(recipe.methods):
        if weight_key(m.decoder) is not None:
            fixed.append(f"methods.{i}.params.{weight_key(m.decoder)}={chosen}")
        if args.quick:  # a smaller offline set and fewer epochs for the value heads (CD)
            keys = {p.key for p in get_decoder(m.decoder).params}
            fixed += [f"methods.{i}.params.{k}={v}" for k, v in QUICK_PARAMS.items() if k in keys]
    recipe = recipe_from_dict(recipe.to_dict(), fixed)
    summary = execute(recipe, out, world=world)
    print()
    print(format_table(summary, baselines=recipe.evaluation.baselines))
    print("\nPaired against each baseline (95% bootstrap intervals over prompts):\n")
    print(format_paired(summary, baselines=recipe.evaluation.baselines))
    print("\n" + significance_sentence(summary))

    # 4. the other protocol: each swept method at its own best 1/beta on the same validation prompts
    own = own_best_protocol(recipe, sweep, out, world)
    print("\n" + format_own_best(own, sweep))
    print(
        f"\n[demo] done in {time.perf_counter() - t0:.0f} s. Report: {out}/report.md, plot: {out}/methods.png"
    )
    return 0

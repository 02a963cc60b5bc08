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
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from stackalign.recipe_base import load_recipe_world
from stackalign.runner.recipe import load_recipe
from stackalign.store import write_json_atomic

QUICK_OVERRIDES = ["prompts.limit=24"]
QUICK_PARAMS = {"train_prompts": 60, "max_epochs": 5}  # --quick: of every method whose decoder has them
SWEEP_VALUES = [0.25, 1.0, 4.0, 16.0]
QUICK_SWEEP_VALUES = [0.25, 1.0, 4.0, 16.0]
SWEEP_PROMPTS = 24
QUICK_SWEEP_PROMPTS = 12
# The weight grid must bracket the chosen value: while the choice is the grid's first (last) value, the grid
# grows by one value GRID_FACTOR times smaller (larger) and the sweep resumes (finished values are reused),
# at most MAX_GRID_EXTENSIONS times.
GRID_FACTOR = 2.0
MAX_GRID_EXTENSIONS = 4


@dataclass(frozen=True)
class DemoSettings:
    """What the demo runs on one kind of world: the packaged recipe, the sweep's grid and prompt counts, and
    the overrides of ``--quick``."""

    recipe: str
    sweep_values: tuple[float, ...]
    sweep_prompts: int
    quick_sweep_values: tuple[float, ...]
    quick_sweep_prompts: int
    quick_overrides: tuple[str, ...]


DEMO_SETTINGS = {
    "default": DemoSettings(
        "sandbox.yaml",
        tuple(SWEEP_VALUES),
        SWEEP_PROMPTS,
        tuple(QUICK_SWEEP_VALUES),
        QUICK_SWEEP_PROMPTS,
        tuple(QUICK_OVERRIDES),
    ),
    # the smol world: a 135M-parameter policy and a 4-block proxy, so fewer prompts (see smol.yaml)
    "smol": DemoSettings("smol.yaml", (0.5, 1.0, 2.0), 8, (0.5, 1.0, 2.0), 4, ("prompts.limit=6",)),
}


def demo_recipe_path(kind: str = "default") -> Path:
    """The packaged recipe of the demo on a world of this kind (``default``: sandbox.yaml, ``smol``: smol.yaml)."""
    return Path(str(resources.files("stackalign") / "recipes" / DEMO_SETTINGS[kind].recipe))


def world_kind(world_arg: str | None) -> str:
    """The kind of world ``--world`` names, from its name or its manifest: ``default`` or ``smol``."""
    if world_arg is None or world_arg == "default":
        return "default"
    if world_arg == "smol" and not Path(world_arg).exists():
        return "smol"
    manifest = Path(world_arg) / "manifest.json"
    if not manifest.is_file():
        return "default"  # the caller reports the missing directory
    kind = json.loads(manifest.read_text()).get("kind", "default")
    return "smol" if kind == "smol" else "default"


def bracket_grid(
    sweep_fn: Callable[[list[float]], dict],
    values: Sequence[float],
    *,
    factor: float = GRID_FACTOR,
    max_extensions: int = MAX_GRID_EXTENSIONS,
) -> dict:
    """Run ``sweep_fn(grid)`` until its chosen value is interior to the grid.

    ``sweep_fn`` returns a sweep result (``run_sweep``'s dict, at least ``{"chosen": v}``). While the chosen
    value is the grid's smallest, the value ``smallest / factor`` is added; while it is the largest,
    ``largest * factor`` (both when the grid has one value). At most ``max_extensions`` values are added in
    all. The result gets ``"bracketing"``: the initial grid, the values added, the final grid and whether the
    chosen value ended interior (False: still at an edge after ``max_extensions``, e.g. a flat plateau).
    """
    if factor <= 1:
        raise ValueError(f"factor must be > 1, got {factor}")
    initial = sorted({float(v) for v in values})
    if not initial:
        raise ValueError("values: the grid needs at least one value")
    grid, added, plateau = list(initial), [], False
    while True:
        result = sweep_fn(list(grid))
        chosen = float(result["chosen"])
        new = []
        if chosen == grid[0]:
            new.append(grid[0] / factor)
        if chosen == grid[-1]:
            new.append(grid[-1] * factor)
        interior = not new
        # a plateau: the value added at the edge last time ties the old edge value, so the curve is flat
        # beyond the edge and further values would only add ties
        plateau = bool(added) and not interior and _ties_its_neighbour(result, chosen, grid)
        if interior or plateau or len(added) + len(new) > max_extensions:
            break
        added += new
        grid = sorted(grid + new)
    result["bracketing"] = {
        "initial": initial,
        "added": added,
        "grid": grid,
        "factor": factor,
        "interior": interior,
        "plateau": plateau,
    }
    return result


def _ties_its_neighbour(result: dict, chosen: float, grid: list[float]) -> bool:
    """Whether the swept method's criterion (gold, else proxy) at the grid value next to ``chosen`` equals
    its value at ``chosen`` (1e-9). False when the result does not carry per-value numbers."""
    per_value, crit, name = result.get("per_value"), result.get("criterion"), result.get("method")
    if not per_value or not crit or not name:
        return False
    i = grid.index(chosen)
    j = i + 1 if i == 0 else i - 1
    if not 0 <= j < len(grid):
        return False

    def at(v: float):
        return (per_value.get(format(v, "g"), {}).get("methods", {}).get(name) or {}).get(crit)

    a, b = at(chosen), at(grid[j])
    return a is not None and b is not None and abs(a - b) <= 1e-9


def bracketing_sentence(sweep: dict) -> str:
    """What the grid extension did, in words (for the printout and report.md)."""
    b = sweep.get("bracketing")
    key = sweep.get("weight_key", "1/beta")
    if not b:
        return ""
    grid = ", ".join(f"{v:g}" for v in b["grid"])
    if not b["added"] and b["interior"]:
        return f"The chosen {key} = {sweep['chosen']:g} is interior to the grid [{grid}]; no extension was needed."
    if not b["added"]:
        head = f"The grid [{grid}] was not extended."
    else:
        added = ", ".join(f"{v:g}" for v in b["added"])
        head = (
            f"The grid [{', '.join(f'{v:g}' for v in b['initial'])}] was extended by {added} (factor "
            f"{b['factor']:g}) because the chosen value was at its edge; final grid [{grid}]."
        )
    if b["interior"]:
        return head + f" The chosen {key} = {sweep['chosen']:g} is interior."
    if b.get("plateau"):
        return head + (
            f" The chosen {key} = {sweep['chosen']:g} is still the grid's edge: {sweep['method']}'s "
            f"{sweep.get('criterion', 'gold_reward').split('_')[0]} reward is flat there (the added value ties "
            "its neighbour; ties go to the larger value), so the optimum is a plateau that reaches past the "
            "edge, and more values would only add ties."
        )
    return head + (
        f" The chosen {key} = {sweep['chosen']:g} is still the grid's edge after {len(b['added'])} "
        "extensions: the optimum is not bracketed (a plateau or a monotone trend)."
    )


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
    paper's criterion, ties to the larger value). Methods whose best is not the paper's chosen value are
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


def append_protocol_report(path: Path, sweep: dict, own: list[dict], n_val: int) -> None:
    """Add the demo's two protocols to the run's report.md: the sweep table with the bracketing sentence,
    and the own-best table."""
    from stackalign.runner.sweep import format_sweep_table

    text = path.read_text() if path.is_file() else ""
    marker = "\n## Tuning protocols\n"
    text = text.split(marker, 1)[0]
    text += (
        f"{marker}\nThe paper's protocol: {sweep['method']}'s {sweep.get('weight_key', '1/beta')} swept on "
        f"{n_val} validation prompts ({sweep['split']}), the value with the best {sweep['criterion']} fixed "
        f"for every method above.\n\n{format_sweep_table(sweep)}\n\n{bracketing_sentence(sweep)}\n\n"
        f"{format_own_best(own, sweep)}\n"
    )
    path.write_text(text)


def main(args: argparse.Namespace) -> int:
    from stackalign.evaluation.summary import format_paired, format_table
    from stackalign.runner.run import execute

    t0 = time.perf_counter()
    kind = world_kind(args.world)
    settings = DEMO_SETTINGS[kind]
    overrides = list(settings.quick_overrides if args.quick else [])
    if args.world and args.world != "default":
        from stackalign.worlds.world import NAMED_WORLDS

        if args.world in NAMED_WORLDS and not Path(args.world).exists():
            overrides.append(f"world={args.world}")  # a cached world by name (smol: built on first use)
        elif not Path(args.world).is_dir():
            raise FileNotFoundError(
                f"--world: no such directory {args.world!r} (or a name: {', '.join(NAMED_WORLDS)})"
            )
        else:
            overrides.append(f"world={Path(args.world).resolve()}")
    recipe = load_recipe(demo_recipe_path(kind), overrides)
    from stackalign.runner.preflight import preflight

    preflight(recipe)  # a missing optional package stops the demo here, before any generation
    suffix = "" if kind == "default" else f"-{kind}"
    out = Path(args.out or (f"runs/demo{suffix}-quick" if args.quick else f"runs/demo{suffix}"))
    world = load_recipe_world(recipe.world)
    print(f"[demo] world: {world.root}; {len(recipe.methods)} methods; results -> {out}/", flush=True)

    # 1. the paper's protocol: sweep vanilla ARGS' 1/beta on validation prompts, keep the best by gold
    from stackalign.runner.recipe import recipe_from_dict
    from stackalign.runner.sweep import run_sweep

    n_val = settings.quick_sweep_prompts if args.quick else settings.sweep_prompts
    values = list(settings.quick_sweep_values if args.quick else settings.sweep_values)
    sweep_recipe = recipe_from_dict(recipe.to_dict(), [f"prompts.limit={n_val}"])
    print(f"[demo] 1/beta sweep of ARGS on {n_val} validation prompts: {values}", flush=True)
    sweep = bracket_grid(
        lambda grid: run_sweep(
            sweep_recipe, "ARGS", grid, split="world:val", out_dir=out / "sweep", world=world
        ),
        values,
    )
    write_json_atomic(out / "sweep" / "sweep.json", sweep)  # with the bracketing record
    chosen = sweep["chosen"]
    print(
        f"[demo] chosen 1/beta = {chosen:g} ({sweep['criterion']}); plot: {out}/sweep/sweep.png", flush=True
    )
    print("[demo] " + bracketing_sentence(sweep), flush=True)

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
    append_protocol_report(out / "report.md", sweep, own, n_val)
    print(
        f"\n[demo] done in {time.perf_counter() - t0:.0f} s. Report: {out}/report.md, plot: {out}/methods.png"
    )
    return 0

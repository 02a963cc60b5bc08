"""`stackalign sweep RECIPE --method NAME`: the paper's 1/β protocol (SRS paper arXiv 2602.02572, Figure 2).

The SRS papers compare methods at one reward weight 1/β, picked on validation prompts for the *vanilla*
method: sweep 1/β, take the best value before reward hacking, then fix it for every method. Here:

1. For each value v, build a sub-recipe from the recipe: the named vanilla method plus every method of the
   recipe that uses the same decoder (sweeping ARGS also runs SRS-ARGS, Minmax-ARGS, ...), each with its
   reward weight set to v (the decoder's registered `weight`: `w` for `args`, `lam` for `cd_tokenwise` /
   `cd_blockwise`), on the validation prompts (`prompts.source=<split>`), win-tie judged against the vanilla
   method, coherence off (it does not enter the choice and costs an encoder pass). Methods of other decoders do not depend on v and are left
   out. Each sub-run is an ordinary, resumable run directory `OUT/<key>=<v>` (`stackalign.runner.run`).
2. Choose v from the vanilla method's numbers only (the other methods are shown, not used):
   - with a gold judge: the v with the highest **gold** reward. Reward hacking is the regime where the
     proxy reward keeps rising with v while gold falls; the gold maximum is the last value before gold
     starts to fall, i.e. "the best value before reward hacking".
   - without gold: the v with the highest **proxy** reward (hacking cannot be seen without gold; a user
     who has an LLM judge can read the win-tie panel of the figure instead).
   Ties go to the larger v: on a plateau of equal gold the largest value is the last one before gold
   starts to fall, the literal "best value before reward hacking", and the strongest guidance that costs
   no gold. (Ties to the smaller v would put the choice at the plateau's low end, which on a plateau that
   starts below the grid is always the grid's edge, never bracketed.)
3. Write `OUT/sweep.json` and `OUT/sweep.png` (proxy, gold, win-tie vs the vanilla method against v, with
   the chosen v marked) and print a table.

`sweep.json`::

    {"method": "ARGS", "decoder": "args", "weight_key": "w", "split": "world:val",
     "values": [0.25, 1.0, 4.0], "chosen": 1.0, "criterion": "gold_reward",
     "hacking": [4.0],                   # values where the vanilla proxy rose and gold fell vs the previous v
     "per_value": {"1": {"dir": "w=1", "methods": {NAME: <summary.json entry>}}, ...}}

CD methods share the offline samples and value heads across values (they do not depend on λ): the
sub-runs' `cd_offline/` and `cd_heads/` are links to `OUT/cd_shared/`.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from stackalign.recipe_base import load_recipe_world
from stackalign.runner.decoders import DECODERS, get_decoder, weight_key
from stackalign.runner.recipe import Recipe, RecipeError, load_recipe, recipe_from_dict
from stackalign.store import write_json_atomic

# where a sweep keeps the folders its values share (the decoder's `shares`; named when only CD had some)
SHARED_DIR = "cd_shared"


def parse_values(text: str | Sequence[float]) -> list[float]:
    """`"0.25,0.5,1"` (or a sequence of numbers) -> sorted unique positive floats; ValueError names `values`."""
    if isinstance(text, str):
        items = [t.strip() for t in text.split(",") if t.strip()]
        try:
            vals = [float(t) for t in items]
        except ValueError:
            raise ValueError(f"values: expected comma-separated numbers, got {text!r}") from None
    else:
        vals = [float(v) for v in text]
    if not vals:
        raise ValueError("values: at least one 1/beta value is required")
    bad = [v for v in vals if not (math.isfinite(v) and v > 0)]
    if bad:
        raise ValueError(f"values: every 1/beta value must be a finite number > 0, got {bad}")
    return sorted(set(vals))


def _label(v: float) -> str:
    """A value as written in directory names and sweep.json keys: 0.25 -> "0.25", 1.0 -> "1"."""
    return format(v, "g")


def sweep_recipes(recipe: Recipe, method_name: str, values: Sequence[float], *, split: str) -> dict:
    """The sub-recipes of a sweep: ``{"decoder", "weight_key", "methods", "recipes": {v: Recipe}}``.

    Raises ValueError (naming ``method``) when the method is unknown, not vanilla, or its decoder has no
    reward weight (base, greedy, bon, soft_bon).
    """
    by_name = {m.name: m for m in recipe.methods}
    if method_name not in by_name:
        raise ValueError(f"method: {method_name!r} is not a method of the recipe ({sorted(by_name)})")
    target = by_name[method_name]
    key = weight_key(target.decoder)
    if key is None:
        sweepable = sorted(name for name, d in DECODERS.items() if d.weight is not None)
        raise ValueError(
            f"method: {method_name!r} uses decoder {target.decoder!r}, which has no reward weight 1/beta to "
            f"sweep (sweepable decoders: {sweepable})"
        )
    if target.shaping != "vanilla":
        raise ValueError(
            f"method: {method_name!r} has shaping {target.shaping!r}; the protocol sweeps the vanilla method"
        )
    data = recipe.to_dict()
    # the vanilla method first, then the others of the same decoder in recipe order
    kept = [target.name] + [
        m.name for m in recipe.methods if m.decoder == target.decoder and m.name != target.name
    ]
    data["methods"] = [next(m for m in data["methods"] if m["name"] == n) for n in kept]
    recipes = {}
    for v in values:
        overrides = [
            f"prompts.source={split}",
            "evaluation.coherence=null",
            f"evaluation.baselines=[{_yaml_str(target.name)}]",
        ] + [f"methods.{i}.params.{key}={v!r}" for i in range(len(kept))]
        try:
            recipes[v] = recipe_from_dict(data, overrides)
        except RecipeError as e:
            raise RecipeError(f"sweep at {key}={_label(v)}: {e}") from None
    return {"decoder": target.decoder, "weight_key": key, "methods": kept, "recipes": recipes}


def _yaml_str(s: str) -> str:
    """Quote a method name for a YAML flow list (names may hold spaces or commas)."""
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'


def choose_value(per_value: dict[float, dict], method_name: str) -> tuple[float, str]:
    """Pick 1/β from ``{v: summary}``: argmax of the method's gold reward when every value has one, else
    argmax of its proxy reward; ties go to the larger v. Returns ``(v, criterion)``."""
    xs = sorted(per_value)
    entries = [per_value[v]["methods"][method_name] for v in xs]
    if all(e.get("gold_reward") is not None for e in entries):
        crit = "gold_reward"
    elif all(e.get("proxy_reward") is not None for e in entries):
        crit = "proxy_reward"
    else:
        raise ValueError(f"method {method_name!r} has neither gold nor proxy reward at every value")
    best = max(range(len(xs)), key=lambda i: (entries[i][crit], i))  # i: the last (largest) of ties
    return xs[best], crit


def hacking_values(per_value: dict[float, dict], method_name: str) -> list[float]:
    """Values v where, against the previous (smaller) value, the method's proxy rose and its gold fell."""
    xs = sorted(per_value)
    out = []
    for a, b in zip(xs, xs[1:]):
        ea, eb = per_value[a]["methods"][method_name], per_value[b]["methods"][method_name]
        if None in (
            ea.get("gold_reward"),
            eb.get("gold_reward"),
            ea.get("proxy_reward"),
            eb.get("proxy_reward"),
        ):
            continue
        if eb["proxy_reward"] > ea["proxy_reward"] and eb["gold_reward"] < ea["gold_reward"]:
            out.append(b)
    return out


def _link_shared(sub: Path, shared: Path, names: Sequence[str]) -> None:
    """Make the sub-run's folders `names` links to the sweep's shared ones: what the decoder keeps there does
    not depend on the weight (CD's offline data and value heads do not depend on λ, so training them once
    per value would waste minutes for identical results)."""
    for name in names:
        target = shared / name
        target.mkdir(parents=True, exist_ok=True)
        link = sub / name
        if link.is_symlink() or link.exists():
            continue  # a resumed sweep, or a sub-run made without links: leave it as it is
        os.symlink(os.path.relpath(target, sub), link, target_is_directory=True)


def format_sweep_table(result: dict) -> str:
    """One row per (value, method): proxy, gold, win-tie vs the vanilla method; `*` marks the chosen value."""
    base = result["method"]
    key = result["weight_key"]
    header = [key, "method", "proxy reward", "gold reward", f"win-tie vs {base} (%)"]
    body = []
    for v in result["values"]:
        lab = _label(v)
        for name, m in result["per_value"][lab]["methods"].items():
            wt = (m.get("win_tie") or {}).get(base)
            body.append(
                [
                    (lab + (" *" if v == result["chosen"] else "")) if name == base else "",
                    name,
                    "n/a" if m.get("proxy_reward") is None else f"{m['proxy_reward']:.3f}",
                    "n/a" if m.get("gold_reward") is None else f"{m['gold_reward']:.3f}",
                    "-" if name == base else ("n/a" if wt is None else f"{100 * wt:.1f}"),
                ]
            )
    widths = [max(len(r[i]) for r in [header, *body]) for i in range(len(header))]

    def line(cells: list[str]) -> str:
        parts = [cells[0].ljust(widths[0]), cells[1].ljust(widths[1])]
        parts += [c.rjust(w) for c, w in zip(cells[2:], widths[2:])]
        return "| " + " | ".join(parts) + " |"

    rule = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([line(header), rule, *(line(r) for r in body)])


def _backend_pool(recipe: Recipe) -> contextlib.AbstractContextManager:
    """For the Ray backend: one Ray connection for the whole sweep (each value's run attaches to it rather
    than starting and stopping a local Ray instance, seconds each) and one pool of actors, whose loaded
    models every value's run reuses (yielded: `execute(..., workers=)`). Without Ray installed, nothing: the
    first run then reports the missing package as a recipe error."""
    if recipe.backend.kind != "ray" or importlib.util.find_spec("ray") is None:
        return contextlib.nullcontext()
    from stackalign.runner.backends.ray_backend import ray_pool

    return ray_pool(recipe.backend)


def run_sweep(
    recipe: Recipe,
    method_name: str,
    values: Sequence[float] | str,
    *,
    split: str = "world:val",
    out_dir: str | Path,
    progress: bool = True,
    world: Any = None,
) -> dict:
    """Run the sweep (see the module docstring) into ``out_dir`` and return the ``sweep.json`` content.

    Args:
        recipe: the validated recipe; ``method_name`` must be one of its vanilla args/cd methods.
        values: the 1/β values (``w`` or ``lam``), a sequence of numbers > 0 or ``"0.25,1,4"``.
        split: the prompt source for the sweep (``prompts.limit`` of the recipe still applies).
        out_dir: the sweep directory; sub-runs go to ``out_dir/<key>=<v>`` and resume when rerun.
        world: an already loaded world (else loaded once here from ``recipe.world``).
    """
    from stackalign.evaluation.summary import plot_sweep, sweep_intervals, sweep_series
    from stackalign.runner.run import execute

    vals = parse_values(values)
    if not isinstance(split, str) or not split:
        raise ValueError(f"split: expected a prompt source such as 'world:val', got {split!r}")
    plan = sweep_recipes(recipe, method_name, vals, split=split)
    key = plan["weight_key"]
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if world is None:  # loaded once here rather than once per value inside execute()
        world = load_recipe_world(recipe.world, progress=progress)

    per_value: dict[float, dict] = {}
    with _backend_pool(recipe) as workers:
        for v in vals:
            sub = out / f"{key}={_label(v)}"
            if progress:
                print(f"[sweep] {method_name}: {key}={_label(v)} -> {sub}", flush=True)
            sub.mkdir(parents=True, exist_ok=True)
            shares = get_decoder(plan["decoder"]).shares
            if shares:
                _link_shared(sub, out / SHARED_DIR, shares)
            per_value[v] = execute(plan["recipes"][v], sub, world=world, progress=progress, workers=workers)

    chosen, criterion = choose_value(per_value, method_name)
    result = {
        "method": method_name,
        "decoder": plan["decoder"],
        "weight_key": key,
        "split": split,
        "values": vals,
        "chosen": chosen,
        "criterion": criterion,
        "hacking": hacking_values(per_value, method_name),
        "per_value": {
            _label(v): {"dir": f"{key}={_label(v)}", "methods": per_value[v]["methods"]} for v in vals
        },
    }
    write_json_atomic(out / "sweep.json", result)
    x, series = sweep_series(per_value, baseline=method_name)
    geometric = len(vals) >= 3 and vals[-1] / vals[0] >= 8
    plot_sweep(
        x,
        series,
        out / "sweep.png",
        x_label=f"1/β ({key})",
        title=f"{method_name} sweep on {split}: chosen {key}={_label(chosen)} (max {criterion.split('_')[0]})",
        chosen_x=chosen,
        logx=geometric,
        errors=sweep_intervals(per_value, baseline=method_name),
    )
    return result


def main(args: argparse.Namespace) -> int:
    """CLI entry: `stackalign sweep RECIPE --method NAME [--values ...] [--split ...] [--out DIR] [k=v ...]`."""
    recipe = load_recipe(args.recipe, list(args.overrides or []))
    out = Path(args.out or Path("runs") / f"sweep-{Path(args.recipe).stem}-{args.method}")
    result = run_sweep(recipe, args.method, args.values, split=args.split, out_dir=out)
    print(format_sweep_table(result))
    crit = "gold" if result["criterion"] == "gold_reward" else "proxy"
    print(
        f"\nchosen: {result['weight_key']}={_label(result['chosen'])} "
        f"(highest {crit} reward of {result['method']} on {result['split']})"
    )
    if result["hacking"]:
        print(
            "reward hacking (proxy up, gold down vs the previous value) at: "
            + ", ".join(f"{result['weight_key']}={_label(v)}" for v in result["hacking"])
        )
    print(f"results: {out}/ (sweep.json, sweep.png, one run directory per value)")
    print(
        f"use it: stackalign run RECIPE methods.<i>.params.{result['weight_key']}={_label(result['chosen'])}"
    )
    return 0

"""The reward over-optimisation picture (Gao, Schulman, Hilton 2023, arXiv 2210.10760, Fig. 1): proxy and
gold reward against KL(π‖π_ref) during training, one curve per shaping, from ``rl`` run directories.

    python -m experiments.overopt runs/overopt-vanilla runs/overopt-meanstd runs/overopt-srs \
        --out docs/train-rl-overopt.png [--table docs/train-rl-overopt.md]

Per run (the ``curve`` of its summary.json: held-out evaluations every ``eval.every`` steps):
best gold reached, gold at the end, the KL at which gold peaks, and the proxy − gold gap at the end.

``--paired BASELINE_RUN`` adds, for every run on the baseline's world and evaluation prompts, the paired gold
difference at the end against it with its 95% bootstrap interval over the prompts (both runs' final
evaluations sample the same prompts with the same seeds, so the per-prompt differences are paired).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

__all__ = ["overopt_stats", "paired_gold", "plot_overoptimisation", "main"]


def overopt_stats(summary: dict) -> dict:
    """The four numbers of one run from its summary's ``curve``."""
    curve = [c for c in summary["curve"] if c.get("gold_reward") is not None]
    if not curve:
        raise ValueError("summary: the curve has no gold rewards")
    peak = max(curve, key=lambda c: c["gold_reward"])
    end = curve[-1]
    return {
        "shaping": summary.get("shaping"),
        "base_gold": curve[0]["gold_reward"],
        "best_gold": peak["gold_reward"],
        "best_gold_step": peak["step"],
        "kl_at_gold_peak": peak["kl"],
        "gold_end": end["gold_reward"],
        "proxy_end": end["proxy_reward"],
        "kl_end": end["kl"],
        "gap_end": end["proxy_reward"] - end["gold_reward"],
    }


def _world_of(run: Path) -> str:
    cfg = json.loads((run / "config.json").read_text())
    return str(cfg.get("world"))


def label_of(run: Path) -> str:
    """The shaping; for srs/hard its preset, parameter overrides, and "(ref m*)" when the threshold came
    from reference samples."""
    cfg = json.loads((run / "config.json").read_text())
    name = str(cfg.get("shaping"))
    if name in ("srs", "hard"):
        name += f" {cfg.get('preset')}" if cfg.get("preset") else ""
        name += "".join(f" {k}={v}" for k, v in (cfg.get("shaping_params") or {}).items())
        name += " (ref m*)" if cfg.get("threshold_source") == "reference" else ""
    return name


def plot_overoptimisation(runs: list[Path], out_png: Path) -> Path:
    """One row of two panels (proxy vs KL, gold vs KL) per world; one colour per shaping."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    by_world: dict[str, list[Path]] = {}
    for r in runs:
        by_world.setdefault(_world_of(r), []).append(r)
    fig, axes = plt.subplots(len(by_world), 2, figsize=(10, 3.6 * len(by_world)), squeeze=False)
    # one colour per label across all panels (tab10 order: vanilla, meanstd, srs, then the rest)
    labels = list(dict.fromkeys(label_of(r) for r in runs))
    palette = plt.get_cmap("tab10").colors
    colors = {lab: palette[i % len(palette)] for i, lab in enumerate(labels)}
    for row, (world, rs) in zip(axes, by_world.items()):
        for r in rs:
            s = json.loads((r / "summary.json").read_text())
            c = sorted(s["curve"], key=lambda p: p["step"])
            kl = [max(p["kl"], 0.0) for p in c]  # the k1 estimate can dip below 0 near the start
            lab = label_of(r)
            col = colors[lab]
            row[0].plot(kl, [p["proxy_reward"] for p in c], marker="o", ms=3, label=lab, color=col)
            row[1].plot(kl, [p["gold_reward"] for p in c], marker="o", ms=3, label=lab, color=col)
        name = Path(world).name if world not in ("default", "None") else world
        for ax, what in zip(row, ("proxy reward (RM)", "gold reward")):
            ax.set_xlabel("KL(π‖π_ref) (nats, held-out samples)")
            ax.set_ylabel(what)
            ax.set_title(f"{what} — world {name}")
            ax.grid(alpha=0.3)
            ax.legend()
    fig.tight_layout()
    out_png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_png, dpi=110)
    plt.close(fig)
    return out_png


def table(runs: list[Path]) -> str:
    lines = [
        "| world | shaping | base gold | best gold (step) | KL at gold peak | gold at end (±95% CI) | "
        "proxy at end | proxy − gold at end | KL at end |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in runs:
        summ = json.loads((r / "summary.json").read_text())
        s = overopt_stats(summ)
        ci = summ.get("eval", {}).get("gold_reward_ci95")
        w = _world_of(r)
        w = Path(w).name if w not in ("default", "None") else w
        lines.append(
            f"| {w} | {label_of(r)} | {s['base_gold']:.3f} | {s['best_gold']:.3f} ({s['best_gold_step']}) | "
            f"{s['kl_at_gold_peak']:.3f} | {s['gold_end']:.3f}"
            + (f" ± {ci:.3f}" if ci is not None else "")
            + f" | {s['proxy_end']:.3f} | {s['gap_end']:.3f} | "
            f"{s['kl_end']:.3f} |"
        )
    return "\n".join(lines)


def _run_context(run: Path, world=None):
    """The ``TrainContext`` of a finished run from its ``config.json`` (its world loaded unless given): the
    evaluation prompts come from the same code as during training."""
    from stackalign.recipe_base import load_recipe_world
    from stackalign.training.recipe import train_recipe_from_dict
    from stackalign.training.run import TrainContext

    recipe = train_recipe_from_dict(json.loads((run / "config.json").read_text()))
    return TrainContext(recipe, run, world if world is not None else load_recipe_world(recipe.common.world))


def _final_gold(ctx) -> tuple[list[str], list[float]]:
    """The evaluation prompts of the run ``ctx`` and the mean gold of each prompt's final samples."""
    prompts = ctx.eval_prompts()
    texts = json.loads((ctx.out_dir / "final_eval.json").read_text())["texts"]
    if len(texts) != len(prompts):
        raise ValueError(
            f"{ctx.out_dir}: {len(texts)} evaluated prompts, but its config names {len(prompts)}"
        )
    return prompts, [sum(ctx.world.gold(p, t) for t in row) / len(row) for p, row in zip(prompts, texts)]


def paired_gold(runs: list[Path], baseline: Path) -> dict[str, tuple[float, float, float] | None]:
    """{run: (mean, lo, hi)} of the final gold difference run − ``baseline``, paired over the evaluation
    prompts (95% bootstrap); runs on another world or with other evaluation settings are skipped."""
    from stackalign.evaluation.intervals import paired_diff_ci

    base = _run_context(Path(baseline))
    base_prompts, base_gold = _final_gold(base)
    out: dict[str, tuple[float, float, float] | None] = {}
    for r in runs:
        if Path(r) == Path(baseline):
            continue
        ctx = _run_context(Path(r), base.world)
        if ctx.config.world != base.config.world or ctx.config.eval != base.config.eval:
            continue
        prompts, gold = _final_gold(ctx)
        if prompts != base_prompts:
            continue
        out[str(r)] = paired_diff_ci(gold, base_gold)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m experiments.overopt", description=__doc__.splitlines()[0])
    p.add_argument("runs", nargs="+", help="rl run directories")
    p.add_argument("--out", required=True, help="PNG path")
    p.add_argument("--table", default=None, help="also write the markdown table here")
    p.add_argument(
        "--paired",
        action="append",
        default=[],
        metavar="BASELINE_RUN",
        help="print each run's paired gold difference at the end against this run (same world and "
        "evaluation; repeatable, e.g. one baseline per world)",
    )
    a = p.parse_args(argv)
    runs = [Path(r) for r in a.runs]
    plot_overoptimisation(runs, Path(a.out))
    t = table(runs)
    print(t)
    if a.table:
        Path(a.table).write_text(t + "\n")
    for base in a.paired:
        print(f"\npaired gold difference at the end against {base} (95% bootstrap over prompts):")
        for r, d in paired_gold(runs, Path(base)).items():
            shown = "n/a" if d is None else f"{d[0]:+.3f} [{d[1]:+.3f}, {d[2]:+.3f}]"
            print(f"  {label_of(Path(r)):<32} {shown}   ({r})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

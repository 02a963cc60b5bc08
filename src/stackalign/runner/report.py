"""report.md and its plots for one results directory."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any


def plot_methods(summary: dict, path: Path) -> Path:
    """Bars per method: proxy reward, gold reward, and seconds per prompt (one panel each), with the
    summary's 95% bootstrap intervals as error bars where it has them."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    names = list(summary["methods"])
    metrics = [
        (k, label)
        for k, label in (
            ("proxy_reward", "proxy reward (guiding RM)"),
            ("gold_reward", "gold reward (the user's utility)"),
            ("seconds_per_prompt", "seconds per prompt"),
        )
        if any(summary["methods"][n].get(k) is not None for n in names)
    ]
    fig = Figure(figsize=(4.2 * len(metrics), 3.8), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, len(metrics), squeeze=False)[0]
    for ax, (k, label) in zip(axes, metrics):
        vals = [summary["methods"][n].get(k) for n in names]
        ys = [math.nan if v is None else v for v in vals]
        colors = ["C3" if "SRS" in n.upper() else "C0" for n in names]
        cis = [(summary["methods"][n].get("ci") or {}).get(k) for n in names]
        yerr = None
        if any(c is not None for c in cis):
            # max(0, .): the interval's mean (NumPy) and the table's (Python sum) may differ in the last bit
            yerr = [
                [0.0 if c is None or math.isnan(y) else max(0.0, y - c[0]) for c, y in zip(cis, ys)],
                [0.0 if c is None or math.isnan(y) else max(0.0, c[1] - y) for c, y in zip(cis, ys)],
            ]
        ax.bar(range(len(names)), ys, color=colors, yerr=yerr, capsize=3, ecolor="black")
        ax.set_xticks(range(len(names)), names, rotation=45, ha="right", fontsize=8)
        ax.set_title(label, fontsize=10)
        ax.grid(axis="y", alpha=0.3)
    fig.savefig(path, dpi=110)
    return path


def judge_notes(summary: dict) -> list[str]:
    """What the report says about the judge: who judged, in which protocol, and what it could not read."""
    info = summary.get("judge")
    if not info:
        return []
    name = info.get("name")
    if name == "reward_model":
        who = (
            "the guiding reward model: each pair's verdict is the soft preference sigmoid(r - r') of the answers' "
            "proxy rewards (win rate = its mean, net win = mean of 2 p - 1). It is the proxy the reward-guided "
            "decoders optimise: read it as agreement with the reward model, not as an independent judgement."
        )
    elif name in ("llm", "hf"):
        kind = "an API chat model" if name == "llm" else "a local chat model run in-process"
        if info.get("orders") == "both":
            how = (
                "each pair shown in both orders; a verdict counts only when the two agree, otherwise the pair is "
                "a tie; 'order flips' is the share of pairs whose verdict changed with the order"
            )
        else:
            how = "each pair shown once, in a seeded random order"
        who = f"{kind} ({how})."
    else:
        who = f"{name}."
    counts = [
        c
        for m in summary.get("methods", {}).values()
        for c in (m.get("win_tie_counts") or {}).values()
        if c is not None
    ]
    bad, total = sum(c.get("unparseable", 0) for c in counts), sum(c.get("n", 0) for c in counts)
    lines = [f"Judge: {who}"]
    if name in ("llm", "hf"):
        lines.append(
            f"Unreadable judge replies: {bad} of {total} pairs, left out of every rate (not counted as ties)."
        )
    if info.get("length_control"):
        lines.append(
            "Length-controlled win rate: a logistic regression of each verdict (win 1, tie 1/2, loss 0) on "
            "tanh(length difference / its standard deviation), in characters, read at zero difference "
            "(AlpacaEval 2's length control); 'sig' against 50%."
        )
    return [" ".join(lines), ""]


def write_report(out: Path, recipe, summary: dict, table: str, rows: list[dict[str, Any]]) -> Path:
    from stackalign.evaluation.summary import format_paired

    png = plot_methods(summary, out / "methods.png")
    n_prompts = len({r["prompt_id"] for r in rows})
    lines = [
        "# stackalign run report",
        "",
        f"{len(summary['methods'])} methods x {n_prompts} prompts; seed {recipe.seed}; "
        f"max_new_tokens {recipe.generation.max_new_tokens}.",
        "",
        table,
        "",
        f"![methods]({png.name})",
        "",
        "Paired comparisons (per-prompt differences against each baseline; 95% percentile-bootstrap "
        "intervals over prompts; sig: + significantly better, - significantly worse, = not significant):",
        "",
        format_paired(summary),
        "",
        *judge_notes(summary),
        "Columns: proxy = the guiding reward model's score; gold = the world's gold utility (world recipes: "
        "sandbox or smol); "
        "diversity = ARGS definition; coherence = prompt/response cosine similarity of sentence embeddings; "
        "win-tie = (wins + ties) / judged pairs against each baseline; cost = seconds, LM tokens and "
        "reward-model tokens per prompt. Brackets: 95% bootstrap intervals over prompts (seeded).",
        "",
        "Methods:",
        "",
    ]
    for m in recipe.methods:
        extra = f", preset {m.preset}" if m.preset else ""
        lines.append(
            f"- **{m.name}**: decoder `{m.decoder}`, shaping `{m.shaping}`{extra}, params {m.params}"
        )
    path = out / "report.md"
    path.write_text("\n".join(lines) + "\n")
    return path

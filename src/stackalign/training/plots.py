"""Training plots (matplotlib, Agg) and report.md, from metrics.jsonl and summary.json."""

from __future__ import annotations

import json
import math
from pathlib import Path

__all__ = ["plot_training_curves", "write_report"]

# shown first when present; any other numeric metric follows
_PREFERRED = ("reward", "proxy_reward", "gold_reward", "kl", "loss", "grad_norm")
_SKIP = {"step", "lr", "seconds"}


def _rows(path: Path) -> list[dict]:
    data = path.read_bytes()
    data = data[: data.rfind(b"\n") + 1]
    return [json.loads(line) for line in data.splitlines() if line.strip()]


def plot_training_curves(metrics_path: str | Path, out_png: str | Path, max_panels: int = 9) -> Path | None:
    """One panel per numeric metric (against step) from ``metrics.jsonl``; None when there are no rows."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = _rows(Path(metrics_path))
    if not rows:
        return None
    keys: list[str] = []
    for r in rows:
        for k, v in r.items():
            if k not in _SKIP and k not in keys and isinstance(v, int | float) and not isinstance(v, bool):
                keys.append(k)
    keys = sorted(keys, key=lambda k: (_PREFERRED.index(k) if k in _PREFERRED else len(_PREFERRED), k))
    keys = keys[:max_panels]
    cols = min(3, len(keys))
    nrows = math.ceil(len(keys) / cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(4 * cols, 2.8 * nrows), squeeze=False)
    for ax, k in zip(axes.flat, keys):
        pts = [(r["step"], r[k]) for r in rows if isinstance(r.get(k), int | float)]
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="." if len(pts) < 60 else None)
        ax.set_title(k)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(keys) :]:
        ax.axis("off")
    fig.tight_layout()
    out_png = Path(out_png)
    fig.savefig(out_png, dpi=100)
    plt.close(fig)
    return out_png


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return json.dumps(v) if isinstance(v, dict | list) else str(v)


def write_report(out_dir: str | Path, summary: dict) -> Path:
    """``report.md``: the summary's scalar fields and nested eval fields as tables, then every plot."""
    out_dir = Path(out_dir)
    lines = [f"# Training run: {summary.get('algorithm')}", "", "| field | value |", "|---|---|"]
    for k, v in summary.items():
        if isinstance(v, dict):
            for k2, v2 in v.items():
                lines.append(f"| {k}.{k2} | {_fmt(v2)} |")
        elif not isinstance(v, list):
            lines.append(f"| {k} | {_fmt(v)} |")
    lines.append("")
    for png in sorted(out_dir.glob("*.png")):
        lines += [f"![{png.stem}]({png.name})", ""]
    lines.append("The trained policy is in `final/` (use it as `policy:` in a run recipe).")
    path = out_dir / "report.md"
    path.write_text("\n".join(lines) + "\n")
    return path

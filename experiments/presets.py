"""Why the SRS presets move ARGS's utility: per-step diagnostics of the shaped reward inside ARGS.

SRS paper arXiv 2602.02572 (Theorems 1-3) shapes each decoding step's k candidate rewards with
``B_eff * sigmoid(alpha * (r - m))`` (``hard``: ``B_eff * 1[r >= m]``) and ARGS (Khanov et al., arXiv
2402.01694) picks ``argmax_j l_j + w * s_j`` over the top-k logits ``l``. The presets differ in B_eff, in
gamma (so in where the threshold m sits) and in alpha; this module measures, on the decoder's own
trajectory (every live row at every step, each step weighted equally), what that does to the choice:

  logit_range   max_j l_j - min_j l_j over the k candidates (nats)
  logit_gap     l_(1) - l_(2): the top logit's margin over the runner-up (nats), what a reward must overturn
  w_r_range     w * (max r - min r): what vanilla ARGS adds on top of the logits
  w_s_range     w * (max s - min s): what the shaped method adds
  gain          (max s - min s) / (max r - min r): the shaping's local gain; w * gain is the weight a vanilla
                ARGS would need for the same spread (the "effective w"; rows with range r < 1e-9 skipped)
  b_eff         B_eff of the step
  m_pos         (m - min r) / (max r - min r): where the threshold sits in the candidates' range
                (1 = at the best candidate)
  above         share of the k candidates with r >= m (r > m for a strict preset)
  flip_policy   share of steps whose fused argmax differs from the policy's argmax (top logit)
  flip_vanilla  share of steps whose fused argmax differs from vanilla ARGS's argmax *at the same state*
                (``argmax l + w r``): how often the shaping changes ARGS's decision
  regret        (max r - r_chosen) / (max r - min r): how far below the best candidate's reward the chosen
                token's reward is, in units of the step's range (0 = the reward-best candidate)

Run: ``python -m experiments.presets recipes/presets-sweep.yaml [world=...] [prompts.limit=...]``
(every ``args`` method of the recipe is decoded once with a recording wrapper around its shaper; the
decoding is the runner's own, so the texts equal the run's: the printed gold mean is checkable against the
run's summary.json). ``--test LABEL=DIR ... [--val LABEL=DIR ...] [--gains LABEL=FILE ...]`` instead
prints the sweep tables of finished runs (see :func:`sweep_tables`).
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any

import torch

from stackalign.shaping.shapers import Shaper, effective_budget

Tensor = torch.Tensor

__all__ = ["StepRecorder", "STATS", "diagnose", "sweep_tables"]

STATS = (
    "logit_range",
    "logit_gap",
    "w_r_range",
    "w_s_range",
    "gain",
    "b_eff",
    "m_pos",
    "above",
    "flip_policy",
    "flip_vanilla",
    "regret",
)


class StepRecorder:
    """Wraps a :class:`Shaper` (or None = vanilla ARGS) for ``args_generate``: shapes exactly as the wrapped
    shaper and accumulates the per-step statistics of the module doc. ``w`` is the ARGS fusion weight."""

    def __init__(self, shaper: Shaper | None, w: float) -> None:
        self.inner = shaper if shaper is not None else Shaper(kind="vanilla")
        self.w = float(w)
        # ARGS reads beta for its default fusion weight; the runner passes w explicitly, but keep them equal.
        self.beta = 1.0 / self.w
        self.uses_threshold = self.inner.uses_threshold
        self.sums: dict[str, float] = {s: 0.0 for s in STATS}
        self.counts: dict[str, int] = {s: 0 for s in STATS}

    def __repr__(self) -> str:
        return f"StepRecorder({self.inner!r}, w={self.w})"

    def _add(self, name: str, values: Tensor) -> None:
        values = values[torch.isfinite(values)]
        self.sums[name] += float(values.sum())
        self.counts[name] += int(values.numel())

    def __call__(self, rewards: Tensor, weights: Tensor, threshold: Tensor | None = None) -> Tensor:
        return self.apply(rewards.double(), weights.double(), threshold)

    def apply(self, rewards: Tensor, weights: Tensor, threshold: Tensor | None = None) -> Tensor:
        """rewards, weights float64 [R, k] (weights = softmax of the top-k logits); returns shaped [R, k]."""
        inner = self.inner
        shaped = inner.apply(rewards, weights, threshold)
        logw = weights.clamp_min(1e-300).log()  # = l - logsumexp(l): differences are the logits' differences
        r_lo, r_hi = torch.aminmax(rewards, dim=-1)
        s_lo, s_hi = torch.aminmax(shaped, dim=-1)
        r_range, s_range = r_hi - r_lo, s_hi - s_lo
        self._add("logit_range", logw.max(-1).values - logw.min(-1).values)
        top2 = logw.topk(min(2, logw.shape[-1]), dim=-1).values
        self._add("logit_gap", top2[:, 0] - top2[:, -1])
        self._add("w_r_range", self.w * r_range)
        self._add("w_s_range", self.w * s_range)
        ok = r_range > 1e-9
        self._add("gain", s_range[ok] / r_range[ok])
        policy_j = logw.argmax(-1)
        fused_j = (logw + self.w * shaped).argmax(-1)
        vanilla_j = (logw + self.w * rewards).argmax(-1)
        self._add("flip_policy", (fused_j != policy_j).double())
        self._add("flip_vanilla", (fused_j != vanilla_j).double())
        chosen_r = rewards.gather(-1, fused_j.unsqueeze(-1)).squeeze(-1)
        self._add("regret", ((r_hi - chosen_r)[ok] / r_range[ok]))
        if inner.kind in ("hard", "srs"):
            self._add("b_eff", effective_budget(rewards, inner.B, inner.budget_stretch))
            m = threshold if threshold is not None else inner.threshold(rewards, weights)
            self._add("m_pos", ((m - r_lo)[ok] / r_range[ok]).clamp(0.0, 1.0))
            above = rewards > m.unsqueeze(-1) if inner.strict else rewards >= m.unsqueeze(-1)
            self._add("above", above.double().mean(-1))
        return shaped

    def means(self) -> dict[str, float]:
        """Each statistic's mean over the recorded steps (NaN where none was recorded)."""
        return {s: self.sums[s] / self.counts[s] if self.counts[s] else math.nan for s in STATS}


def diagnose(recipe_path: str | Path, overrides: list[str] | None = None) -> list[dict[str, Any]]:
    """Decode every ``args`` method of the recipe with a :class:`StepRecorder`; one dict per method with the
    method's name, preset, shaping, w, gold mean (if the recipe has a gold) and the :data:`STATS` means."""
    import tempfile

    from stackalign.runner.context import build_context
    from stackalign.runner.methods import make_method, resolve_method
    from stackalign.runner.recipe import load_recipe

    recipe = load_recipe(recipe_path, overrides or [])
    out: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        ctx = build_context(recipe, Path(tmp))
        for i, m in enumerate(recipe.methods):
            plan = resolve_method(m, i)
            if plan.decoder != "args":
                continue
            w = float(plan.decoder_params["w"])
            rec = StepRecorder(plan.shaper, w)
            plan.shaper = rec
            rows = make_method(plan, ctx)(ctx.prompts)
            res: dict[str, Any] = {"method": m.name, "shaping": m.shaping, "preset": m.preset, "w": w}
            if ctx.gold is not None:
                golds = [ctx.gold(p, r["response"]) for p, r in zip(ctx.prompts, rows, strict=True)]
                res["gold"] = sum(golds) / len(golds)
            res.update(rec.means())
            out.append(res)
    return out


def _fmt(x: float, nd: int = 2) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{nd}f}"


def diagnostic_table(results: list[dict[str, Any]]) -> str:
    """Markdown table of :func:`diagnose`'s output."""
    head = (
        "| method | w | gold | logit range | logit gap | w·range r | w·range s | gain | w·gain | B_eff | m pos "
        "| above | flip vs policy | flip vs ARGS | regret |"
    )
    lines = [head, "|" + "---|" * 2 + "---:|" * 13]
    for r in results:
        lines.append(
            f"| {r['method']} | {r['w']:g} | {_fmt(r.get('gold', math.nan), 3)} | {_fmt(r['logit_range'])} "
            f"| {_fmt(r['logit_gap'])} | {_fmt(r['w_r_range'])} | {_fmt(r['w_s_range'])} | {_fmt(r['gain'])} "
            f"| {_fmt(r['w'] * r['gain'])} | {_fmt(r['b_eff'])} | {_fmt(r['m_pos'])} | {_fmt(r['above'])} "
            f"| {_fmt(100 * r['flip_policy'], 0)}% | "
            f"{_fmt(100 * r['flip_vanilla'], 0)}% | {_fmt(r['regret'])} |"
        )
    return "\n".join(lines)


def _split(name: str) -> tuple[str, str]:
    base, _, w = name.partition("@w=")
    return base, w


def _load(run_dir: str | Path) -> tuple[dict, dict]:
    """summary.json's methods and {method: {prompt_id: response}} of a finished run."""
    run_dir = Path(run_dir)
    summary = json.loads((run_dir / "summary.json").read_text())["methods"]
    texts: dict[str, dict] = {}
    for line in (run_dir / "generations.jsonl").read_text().splitlines():
        if line.strip():
            row = json.loads(line)
            texts.setdefault(row["method"], {})[row["prompt_id"]] = row["response"]
    return summary, texts


def _diff_cell(s: dict, baseline: str) -> str:
    d, lo, hi = s["paired"][baseline]["gold_diff"]
    sign = "+" if lo > 0 else "−" if hi < 0 else "="
    return f"{d:+.3f} [{lo:+.3f}, {hi:+.3f}] {sign}"


def _gold_cell(s: dict) -> str:
    lo, hi = s["ci"]["gold_reward"]
    return f"{s['gold_reward']:.3f} [{lo:.3f}, {hi:.3f}]"


def sweep_tables(
    test: dict[str, str | Path],
    val: dict[str, str | Path] | None = None,
    gains: dict[str, str | Path] | None = None,
    sweep: tuple[str, ...] = ("0.25", "1", "4", "16"),
    vanilla: str = "ARGS",
) -> str:
    """Markdown tables from finished runs of recipes/presets-sweep.yaml (or presets-sweep-bon.yaml with
    ``vanilla="Soft-BoN"``), ``{world label: run dir}`` each; methods are named ``NAME@w=W``.

    1. every shaped method's paired gold difference against the vanilla method at the same w [95% CI];
    2. with ``val``: each method at its own best w chosen on the validation run, its test gold and its paired
       difference against the vanilla method at *its* validation-best w;
    3. with ``gains`` (``{world: diagnose --json file}``): each shaped method against the vanilla method at
       the grid weight nearest its effective weight w * gain, with the share of prompts where both wrote the
       same text.
    """
    runs = {k: _load(v) for k, v in test.items()}
    worlds = list(runs)
    names = list(runs[worlds[0]][0])
    bases: list[str] = []
    for name in names:
        b, w = _split(name)
        if b not in bases and w in sweep:
            bases.append(b)
    out = [
        "Gold of the vanilla method, and each shaped method's paired gold difference against the vanilla "
        "method at the same "
        "w, mean [95% CI] (`+`/`−` significant, `=` not):",
        "",
        "| method | w | " + " | ".join(worlds) + " |",
        "|---|---:|" + "---:|" * len(worlds),
    ]
    for b in bases:
        for w in sweep:
            cells = []
            for wd in worlds:
                s = runs[wd][0][f"{b}@w={w}"]
                cells.append(f"gold {_gold_cell(s)}" if b == vanilla else _diff_cell(s, f"{vanilla}@w={w}"))
            out.append(f"| {b} | {w} | " + " | ".join(cells) + " |")
    if val:
        vals = {k: json.loads((Path(v) / "summary.json").read_text())["methods"] for k, v in val.items()}
        out += [
            "",
            "Each method at its own best w, chosen on validation prompts: test gold [95% CI] (w), and the paired "
            "difference against the vanilla method at its own validation-best w:",
            "",
            "| method | " + " | ".join(worlds) + " |",
            "|---|" + "---:|" * len(worlds),
        ]
        for b in bases:
            cells = []
            for wd in worlds:
                best = max(sweep, key=lambda w, wd=wd, b=b: vals[wd][f"{b}@w={w}"]["gold_reward"])
                args_best = max(sweep, key=lambda w, wd=wd: vals[wd][f"{vanilla}@w={w}"]["gold_reward"])
                s = runs[wd][0][f"{b}@w={best}"]
                cell = f"{_gold_cell(s)} (w={best})"
                if b != vanilla:
                    cell += f"; {_diff_cell(s, f'{vanilla}@w={args_best}')}"
                cells.append(cell)
            out.append(f"| {b} | " + " | ".join(cells) + " |")
    if gains:
        grid = {float(_split(n)[1]): n for n in names if _split(n)[0] == vanilla}
        out += [
            "",
            "Each shaped method against the vanilla method at the grid weight w' nearest (in log scale) its "
            "effective weight "
            "w * gain: paired gold difference [95% CI], and the share of prompts with identical responses:",
            "",
            "| method | w | " + " | ".join(worlds) + " |",
            "|---|---:|" + "---:|" * len(worlds),
        ]
        diag = {k: {r["method"]: r for r in json.loads(Path(v).read_text())} for k, v in gains.items()}
        for b in bases:
            if b == vanilla:
                continue
            for w in sweep:
                cells = []
                for wd in worlds:
                    name = f"{b}@w={w}"
                    eff = float(w) * diag[wd][name]["gain"]
                    ref = min(grid, key=lambda g, eff=eff: abs(math.log(g / eff)))
                    ref_name = grid[ref]
                    summary, texts = runs[wd]
                    same = sum(texts[name][i] == texts[ref_name].get(i) for i in texts[name]) / len(
                        texts[name]
                    )
                    cells.append(
                        f"w'={ref:g}: {_diff_cell(summary[name], ref_name)}; same text {100 * same:.0f}%"
                    )
                out.append(f"| {b} | {w} | " + " | ".join(cells) + " |")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m experiments.presets", description=__doc__.split("\n")[0])
    ap.add_argument("recipe", nargs="?", default=None, help="run recipe whose args methods are diagnosed")
    ap.add_argument("overrides", nargs="*", help="key=value recipe overrides")
    ap.add_argument(
        "--test", nargs="+", default=None, help="LABEL=RUN_DIR of test runs: print the sweep tables"
    )
    ap.add_argument("--val", nargs="+", default=None, help="LABEL=RUN_DIR of the validation runs (choose w)")
    ap.add_argument("--gains", nargs="+", default=None, help="LABEL=FILE of this module's --json output")
    ap.add_argument("--vanilla", default="ARGS", help="name of the vanilla method in the runs (default ARGS)")
    ap.add_argument("--json", action="store_true", help="print the diagnostics as JSON")
    a = ap.parse_args(argv)
    if a.test:
        pairs = lambda xs: dict(x.split("=", 1) for x in xs) if xs else None  # noqa: E731
        print(sweep_tables(pairs(a.test), pairs(a.val), pairs(a.gains), vanilla=a.vanilla))
        return 0
    if a.recipe is None:
        ap.error("a recipe (or --test) is required")
    res = diagnose(a.recipe, a.overrides)
    print(json.dumps(res, indent=1) if a.json else diagnostic_table(res))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

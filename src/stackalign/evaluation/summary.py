"""From generation rows to ``summary.json``, a terminal table, and the 1/β sweep figure.

A *row* is one prompt × method, as written to ``generations.jsonl``::

    {"prompt_id": 3, "prompt": "...", "method": "srs-args", "response": "...",
     "proxy_reward": 1.7, "gold_reward": 0.4, "seconds": 0.21, "lm_tokens": 140, "rm_tokens": 1290}

``prompt_id``, ``prompt``, ``method`` and ``response`` are required; the numbers may be missing or ``None``
(then the summary field is ``null``), but never NaN or infinite.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from .intervals import DEFAULT_BOOTSTRAP, bootstrap_ci, paired_diff_ci, rate_ci
from .judges import Judge
from .length_control import length_controlled
from .metrics import DEFAULT_STOP_STRINGS, clean_response, diversity
from .win_rates import win_tie

__all__ = [
    "format_paired", "format_table", "plot_sweep", "significance", "summarize", "sweep_intervals", "sweep_series",
]  # fmt: skip

_REQUIRED = ("prompt_id", "prompt", "method", "response")
_NUMERIC = ("proxy_reward", "gold_reward", "seconds", "lm_tokens", "rm_tokens")

CoherenceScorer = Any  # an object with .score(prompts, responses) -> list[float], or such a callable


# a method whose share of empty answers exceeds this gets a warning (and every method its count)
EMPTY_WARN_SHARE = 0.10


def _validate(rows: Iterable[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    out = []
    seen: set[tuple[Any, Any]] = set()
    for i, row in enumerate(rows):
        if not isinstance(row, Mapping):
            raise TypeError(f"row {i} is a {type(row).__name__}, not a dict")
        for key in _REQUIRED:
            if key not in row or row[key] is None:
                raise ValueError(f"row {i} has no {key!r} (required: {', '.join(_REQUIRED)})")
        for key in ("prompt", "response", "method"):
            if not isinstance(row[key], str):
                raise TypeError(f"row {i}: {key!r} must be a str, got {type(row[key]).__name__}")
        for key in _NUMERIC:
            v = row.get(key)
            if v is None:
                continue
            if isinstance(v, bool) or not isinstance(v, (int, float)):
                try:
                    v = float(v)  # numpy / torch scalars
                except (TypeError, ValueError):
                    raise TypeError(
                        f"row {i}: {key!r} must be a number, got {type(row[key]).__name__}"
                    ) from None
            if not math.isfinite(v):
                raise ValueError(
                    f"row {i} (method {row['method']!r}, prompt {row['prompt_id']!r}): {key} is {v}"
                )
        ident = (row["method"], row["prompt_id"])
        if ident in seen:
            raise ValueError(f"duplicate row for method {ident[0]!r} and prompt_id {ident[1]!r} (row {i})")
        seen.add(ident)
        out.append(row)
    return out


def _mean(values: Iterable[Any]) -> float | None:
    vals = [float(v) for v in values if v is not None]
    return sum(vals) / len(vals) if vals else None


def _as_list(t: tuple[float, ...] | None) -> list[float] | None:
    return None if t is None else [float(v) for v in t]


def summarize(
    rows: Iterable[Mapping[str, Any]],
    *,
    coherence: CoherenceScorer | None = None,
    judge: Judge | None = None,
    baselines: Sequence[str] = (),
    clean: bool = True,
    stop_strings: Iterable[str] = DEFAULT_STOP_STRINGS,
    judge_workers: int = 1,
    length_control: bool = False,
    ci_level: float = 0.95,
    n_boot: int = DEFAULT_BOOTSTRAP,
    ci_seed: int = 0,
) -> dict[str, Any]:
    """Aggregate rows per method into the ``summary.json`` shape (the run directory contract: see runner/run.py).

    Returns ``{"methods": {NAME: {...}}}`` with, per method (in order of first appearance):
    ``proxy_reward`` and ``gold_reward`` (means; ``None`` when absent), ``diversity`` (ARGS),
    ``coherence`` (mean of ``coherence.score``; ``None`` without a scorer), ``win_tie`` ``{BASELINE: rate}``
    for every baseline other than the method itself (rates ``None`` without a judge), ``win_tie_counts``
    ``{BASELINE: {win, tie, loss, unparseable, n, rate}}``, ``seconds_per_prompt``,
    ``lm_tokens_per_prompt``, ``rm_tokens_per_prompt`` (means over the method's rows) and ``n`` (rows); and
    ``scorer`` (``{name, reason}``) for a method whose rows record one (ARGS: which reward-model scorer ran).

    Responses are cut at ``stop_strings`` first (``clean=True``) for diversity, coherence and the judge.
    Win-tie pairs a method's rows with the baseline's rows of the same ``prompt_id``; prompts only one of
    them has are skipped (the count ``n`` says how many pairs were judged).

    Uncertainty (percentile bootstrap over prompts, ``n_boot`` resamples, seeded by ``ci_seed`` so the
    summary is deterministic; see :mod:`.intervals`):

    * ``ci``: ``{FIELD: [lo, hi]}``, the ``ci_level`` interval of every per-prompt mean above
      (``proxy_reward``, ``gold_reward``, ``coherence``, ``seconds_per_prompt``, ``lm_tokens_per_prompt``,
      ``rm_tokens_per_prompt``); ``None`` where the mean is ``None``. ``diversity`` is a corpus statistic,
      not a mean over prompts, and has no interval.
    * ``paired``: ``{BASELINE: {"gold_diff": [mean, lo, hi], "proxy_diff": [mean, lo, hi],
      "win_tie": [rate, lo, hi], "n": pairs}}``: the per-prompt difference method − baseline on the prompts
      both have (paired bootstrap, so prompt difficulty cancels) and the win-or-tie rate over the judged
      pairs (unparseable verdicts excluded, as in ``win_tie``), and ``"net_win": [mean, lo, hi]``, the mean
      of +1 (win) / 0 (tie) / -1 (loss), i.e. win rate minus loss rate. A difference is significant at
      ``ci_level`` when its interval excludes 0. A win-tie interval excluding 0.5 is *not* evidence of a
      better method when ties are common (two identical decoders tie 100%): ``net_win`` excluding 0 is.
      For a soft judge (the reward model's sigmoid(r - r')) ``net_win`` is the mean of 2 p - 1.
    * the judge's protocol, per baseline in ``paired`` (``None`` where it does not apply):
      ``"win_rate": [mean, lo, hi]``, the mean preference (ties count half); ``"flip_rate": [rate, lo, hi]``,
      with a judge showing each pair in both orders, the share of pairs (read both ways) whose verdict
      changed with the order; with ``length_control``, ``"lc_win_rate": [rate, lo, hi]``, the
      length-controlled win rate (:mod:`.length_control`: a logistic regression of the verdict on the
      answers' normalised length difference, read at zero difference) and ``"lc_slope"``, its length slope.
      Unreadable verdicts stay out of all of them (counted as ``unparseable`` in ``win_tie_counts``).

    The summary's ``"judge"`` says which judge and protocol made the verdicts (``None`` without a judge).
    """
    rows = _validate(rows)
    if isinstance(baselines, str):
        baselines = (baselines,)
    by_method: dict[str, list[Mapping[str, Any]]] = {}
    for row in rows:
        by_method.setdefault(row["method"], []).append(row)
    for b in baselines:
        if b not in by_method:
            raise ValueError(f"baseline {b!r} has no rows; methods present: {sorted(by_method)}")

    stops = tuple(stop_strings)

    def text(row: Mapping[str, Any]) -> str:
        return clean_response(row["response"], stops) if clean else row["response"]

    coh: dict[tuple[str, Any], float] = {}
    if coherence is not None and rows:
        score = coherence.score if hasattr(coherence, "score") else coherence
        values = list(score([r["prompt"] for r in rows], [text(r) for r in rows]))
        if len(values) != len(rows):
            raise ValueError(f"coherence scorer returned {len(values)} values for {len(rows)} rows")
        coh = {(r["method"], r["prompt_id"]): float(v) for r, v in zip(rows, values)}

    methods: dict[str, dict[str, Any]] = {}
    for name, mrows in by_method.items():
        entry: dict[str, Any] = {
            "proxy_reward": _mean(r.get("proxy_reward") for r in mrows),
            "gold_reward": _mean(r.get("gold_reward") for r in mrows),
            "diversity": diversity([text(r) for r in mrows]),
            "coherence": _mean(coh[(name, r["prompt_id"])] for r in mrows) if coh else None,
            "win_tie": {},
            "win_tie_counts": {},
            "seconds_per_prompt": _mean(r.get("seconds") for r in mrows),
            "lm_tokens_per_prompt": _mean(r.get("lm_tokens") for r in mrows),
            "rm_tokens_per_prompt": _mean(r.get("rm_tokens") for r in mrows),
            "n": len(mrows),
            "empty_answers": sum(1 for r in mrows if not text(r).strip()),
        }
        scorers = [r["scorer"] for r in mrows if r.get("scorer")]
        if scorers:  # ARGS: the reward-model scorer that ran (the last batch's) and why not a faster one
            entry["scorer"] = scorers[-1]
        if entry["empty_answers"] > EMPTY_WARN_SHARE * len(mrows):
            warnings.warn(
                f"{name}: {entry['empty_answers']} of {len(mrows)} answers are empty (> "
                f"{EMPTY_WARN_SHARE:.0%}); does the policy need its chat template (prompts.chat_template: true)?",
                stacklevel=2,
            )
        boot = dict(level=ci_level, n_boot=n_boot, seed=ci_seed)
        entry["ci"] = _mean_intervals(name, mrows, coh, boot)
        entry["paired"] = {}
        for b in baselines:
            if b == name:
                continue
            pairs = _pair_rows(name, mrows, b, by_method[b])
            paired = _paired_diffs(pairs, boot)
            entry["paired"][b] = paired
            if judge is None:
                entry["win_tie"][b] = None
                entry["win_tie_counts"][b] = None
                continue
            result = win_tie(
                judge,
                [r["prompt"] for r, _ in pairs],
                [text(r) for r, _ in pairs],
                [text(rb) for _, rb in pairs],
                workers=judge_workers,
            )
            entry["win_tie"][b] = result.rate
            entry["win_tie_counts"][b] = result.to_dict()
            _judged_intervals(paired, result, pairs, text, boot, length_control)
        methods[name] = entry
    return {"methods": methods, "judge": judge_info(judge, length_control=length_control)}


def _mean_intervals(name: str, mrows: list, coh: dict, boot: dict) -> dict[str, list[float] | None]:
    """The bootstrap interval of each per-prompt mean of a method (``None`` where it has no values)."""
    per_prompt = {
        "proxy_reward": [r.get("proxy_reward") for r in mrows],
        "gold_reward": [r.get("gold_reward") for r in mrows],
        "coherence": [coh[(name, r["prompt_id"])] for r in mrows] if coh else [],
        "seconds_per_prompt": [r.get("seconds") for r in mrows],
        "lm_tokens_per_prompt": [r.get("lm_tokens") for r in mrows],
        "rm_tokens_per_prompt": [r.get("rm_tokens") for r in mrows],
    }
    return {
        key: _as_list(bootstrap_ci([v for v in vals if v is not None], **boot))
        for key, vals in per_prompt.items()
    }


def _pair_rows(name: str, mrows: list, b: str, brows: list) -> list[tuple[Mapping, Mapping]]:
    """(method row, baseline row) of each prompt both have, in the method's order; the prompt texts must agree."""
    base = {r["prompt_id"]: r for r in brows}
    pairs = [(r, base[r["prompt_id"]]) for r in mrows if r["prompt_id"] in base]
    for r, rb in pairs:
        if r["prompt"] != rb["prompt"]:
            raise ValueError(f"prompt_id {r['prompt_id']!r} has different prompt text for {name!r} and {b!r}")
    return pairs


def _paired_diffs(pairs: list[tuple[Mapping, Mapping]], boot: dict) -> dict[str, Any]:
    """The ``paired`` entry of one baseline: ``n``, the paired gold and proxy differences, and the judged
    intervals set to ``None`` (:func:`_judged_intervals` fills them)."""
    paired: dict[str, Any] = {"n": len(pairs)}
    for key in ("gold_reward", "proxy_reward"):
        both = [(r[key], rb[key]) for r, rb in pairs if r.get(key) is not None and rb.get(key) is not None]
        diff = paired_diff_ci([a for a, _ in both], [c for _, c in both], **boot) if both else None
        paired[key.replace("_reward", "_diff")] = _as_list(diff)
    for key in ("win_tie", "net_win", "win_rate", "flip_rate", "lc_win_rate", "lc_slope"):
        paired[key] = None
    return paired


def _judged_intervals(paired: dict, result, pairs, text, boot: dict, length_control: bool) -> None:
    """Bootstrap intervals of the read verdicts into ``paired``: win-tie, net win, win rate (ties count
    half), the flip rate of a both-orders judge and, with ``length_control``, the length-controlled rate."""
    read = [(j, r, rb) for j, (r, rb) in zip(result.judgements, pairs) if j.parsed]
    if not read:
        return
    outcomes = [float(j.outcome) for j, _, _ in read]
    prefs = [j.preference for j, _, _ in read]
    paired["win_tie"] = _as_list(rate_ci([o >= 0 for o in outcomes], **boot))
    paired["net_win"] = _as_list(paired_diff_ci([2.0 * p - 1.0 for p in prefs], [0.0] * len(prefs), **boot))
    paired["win_rate"] = _as_list(paired_diff_ci(prefs, [0.0] * len(prefs), **boot))
    flips = [j.flipped for j in result.judgements if j.flipped is not None]
    if result.flipped is not None and flips:
        paired["flip_rate"] = _as_list(rate_ci(flips, **boot))
    if length_control:
        lc = length_controlled(
            prefs, [len(text(r)) for _, r, _ in read], [len(text(rb)) for _, _, rb in read], **boot
        )
        paired["lc_win_rate"] = lc.to_list()
        paired["lc_slope"] = lc.slope


def judge_info(judge: Judge | None, *, length_control: bool = False) -> dict[str, Any] | None:
    """What summary.json records of the judge: its kind and protocol (never a key or a secret)."""
    if judge is None:
        return None
    return {
        "name": getattr(judge, "name", type(judge).__name__),
        "orders": getattr(judge, "orders", "one"),
        "length_control": bool(length_control),
    }


# ---------------------------------------------------------------------------------------------------------
# Table
# ---------------------------------------------------------------------------------------------------------


def _fmt(v: Any, spec: str) -> str:
    if v is None:
        return "n/a"
    if isinstance(v, tuple):  # (value, lo, hi)
        return f"{format(v[0], spec)} [{format(v[1], spec)}, {format(v[2], spec)}]"
    return format(v, spec)


def significance(interval: Sequence[float] | None, null: float) -> str:
    """``"+"`` / ``"-"`` when ``[_, lo, hi]`` lies wholly above / below ``null``; ``"="`` when it covers it."""
    if interval is None:
        return "n/a"
    lo, hi = interval[1], interval[2]
    return "+" if lo > null else "-" if hi < null else "="


def format_paired(summary: Mapping[str, Any], *, baselines: Sequence[str] | None = None) -> str:
    """A markdown table of each method's paired comparison with each baseline, with significance.

    Columns: pairs, the gold (else proxy) reward difference method − baseline with its 95% interval, the
    win-tie rate and the net win rate (wins − losses) with their intervals. The ``sig`` columns say ``+``
    (the interval lies above 0: the method is significantly better), ``-`` (significantly worse) or ``=``
    (not significant). Significance of the judge's verdicts is read from the net win rate, not from win-tie:
    with many ties, win-tie exceeds 50% for a method no better than its baseline. Where the summary has them:
    the position-flip rate (a judge shown both orders) and the length-controlled win rate with its ``sig``
    against 50%.
    """
    methods: Mapping[str, Mapping[str, Any]] = summary.get("methods", {})
    rows = []
    compared = [p or {} for m in methods.values() for p in (m.get("paired") or {}).values()]
    with_flip = any(p.get("flip_rate") is not None for p in compared)
    with_lc = any(p.get("lc_win_rate") is not None for p in compared)

    def pct(v: Sequence[float] | None, spec: str) -> str:
        return _fmt(None if v is None else tuple(100.0 * x for x in v), spec)

    use_gold = any(
        (p or {}).get("gold_diff") is not None
        for m in methods.values()
        for p in (m.get("paired") or {}).values()
    )
    key, label = ("gold_diff", "gold diff") if use_gold else ("proxy_diff", "proxy diff")
    for name, m in methods.items():
        for b, p in (m.get("paired") or {}).items():
            if baselines is not None and b not in baselines:
                continue
            d, nw = p.get(key), p.get("net_win")
            row = [
                name,
                b,
                str(p.get("n", "")),
                _fmt(None if d is None else tuple(d), "+.3f"),
                significance(d, 0.0),
                pct(p.get("win_tie"), ".1f"),
                pct(nw, "+.1f"),
                significance(nw, 0.0),
            ]
            if with_flip:
                row.append(pct(p.get("flip_rate"), ".1f"))
            if with_lc:
                row += [pct(p.get("lc_win_rate"), ".1f"), significance(p.get("lc_win_rate"), 0.5)]
            rows.append(row)
    if not rows:
        return "(no paired comparisons)"
    header = [
        "method", "vs", "pairs", f"{label} [95% CI]", "sig", "win-tie % [95% CI]", "win-loss % [95% CI]", "sig",
    ]  # fmt: skip
    if with_flip:
        header.append("order flips % [95% CI]")
    if with_lc:
        header += ["length-controlled win % [95% CI]", "sig"]
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]

    def line(cells: list[str]) -> str:
        parts = [c.ljust(w) for c, w in zip(cells[:2], widths[:2])]
        parts += [c.rjust(w) for c, w in zip(cells[2:], widths[2:])]
        return "| " + " | ".join(parts) + " |"

    rule = (
        "|" + "|".join(["-" * (w + 2) for w in widths[:2]] + ["-" * (w + 1) + ":" for w in widths[2:]]) + "|"
    )
    return "\n".join([line(header), rule, *(line(r) for r in rows)])


def format_table(
    summary: Mapping[str, Any], *, baselines: Sequence[str] | None = None, intervals: bool = True
) -> str:
    """A markdown table of a summary, column-aligned so it also reads well in a terminal.

    Win-tie is shown in percent, one column per baseline. Columns with no value for any method (e.g. gold
    reward without a gold judge) are left out. With ``intervals`` (and a summary that has them), rewards,
    coherence and win-tie carry their 95% bootstrap interval: ``0.752 [0.731, 0.770]``.
    """
    methods: Mapping[str, Mapping[str, Any]] = summary.get("methods", {})
    if not methods:
        return "(no methods)"
    if baselines is None:  # every baseline any method was compared with, in the methods' order
        seen = {b for m in methods.values() for b in (m.get("win_tie") or {})}
        order = list(methods)
        baselines = sorted(seen, key=lambda b: (order.index(b) if b in order else len(order), b))

    def with_ci(key: str) -> Callable[[Mapping[str, Any]], Any]:
        def get(m: Mapping[str, Any]) -> Any:
            v = m.get(key)
            if v is None or not intervals:
                return v
            ci = (m.get("ci") or {}).get(key)
            return v if ci is None else (v, ci[0], ci[1])

        return get

    columns: list[tuple[str, Callable[[Mapping[str, Any]], Any], str]] = [
        ("proxy reward", with_ci("proxy_reward"), ".3f"),
        ("gold reward", with_ci("gold_reward"), ".3f"),
        ("diversity", lambda m: m.get("diversity"), ".3f"),
        ("coherence", with_ci("coherence"), ".3f"),
    ]
    for b in baselines:

        def wt(m: Mapping[str, Any], b: str = b) -> Any:
            r = (m.get("win_tie") or {}).get(b)
            if r is None:
                return None
            p = ((m.get("paired") or {}).get(b) or {}).get("win_tie")
            if p is None or not intervals:
                return 100.0 * r
            return (100.0 * r, 100.0 * p[1], 100.0 * p[2])

        columns.append((f"win-tie vs {b} (%)", wt, ".1f"))
    columns += [
        ("s/prompt", lambda m: m.get("seconds_per_prompt"), ".3f"),
        ("LM tok/prompt", lambda m: m.get("lm_tokens_per_prompt"), ".1f"),
        ("RM tok/prompt", lambda m: m.get("rm_tokens_per_prompt"), ".1f"),
    ]
    columns = [c for c in columns if any(c[1](m) is not None for m in methods.values())]

    header = ["method"] + [c[0] for c in columns]
    body = []
    for name, m in methods.items():
        cells = [name]
        for title, get, spec in columns:
            if title.startswith("win-tie vs ") and title[len("win-tie vs ") : -len(" (%)")] == name:
                cells.append("-")
            else:
                cells.append(_fmt(get(m), spec))
        body.append(cells)
    widths = [max(len(r[i]) for r in [header, *body]) for i in range(len(header))]

    def line(cells: list[str]) -> str:
        parts = [cells[0].ljust(widths[0])] + [c.rjust(w) for c, w in zip(cells[1:], widths[1:])]
        return "| " + " | ".join(parts) + " |"

    rule = "|" + "|".join(["-" * (widths[0] + 2)] + ["-" * (w + 1) + ":" for w in widths[1:]]) + "|"
    return "\n".join([line(header), rule, *(line(r) for r in body)])


# ---------------------------------------------------------------------------------------------------------
# Sweep figure (paper Figure 2)
# ---------------------------------------------------------------------------------------------------------

_PANEL_TITLES = {"proxy_reward": "proxy reward", "gold_reward": "gold reward", "win_tie": "win-tie rate"}


def sweep_series(
    summaries: Mapping[float, Mapping[str, Any]], *, baseline: str | None = None
) -> tuple[dict[str, list[float]], dict[str, dict[str, list[float | None]]]]:
    """Turn ``{1/β: summary}`` into the ``(x, series)`` that :func:`plot_sweep` takes.

    Series: ``proxy_reward``, ``gold_reward`` and (with ``baseline``) ``win_tie`` against that baseline,
    each ``{method: [value per x]}``; a method missing at some x gets ``None`` there.
    """
    xs = sorted(summaries)
    names: dict[str, None] = {}
    for x in xs:
        for name in summaries[x].get("methods", {}):
            names.setdefault(name)
    keys = ["proxy_reward", "gold_reward"] + (["win_tie"] if baseline is not None else [])
    series: dict[str, dict[str, list[float | None]]] = {k: {} for k in keys}
    for name in names:
        for k in keys:
            vals: list[float | None] = []
            for x in xs:
                m = summaries[x].get("methods", {}).get(name)
                if m is None:
                    vals.append(None)
                elif k == "win_tie":
                    vals.append((m.get("win_tie") or {}).get(baseline))
                else:
                    vals.append(m.get(k))
            series[k][name] = vals
    if baseline is not None:
        series[f"win_tie vs {baseline}"] = series.pop("win_tie")
    return {name: [float(x) for x in xs] for name in names}, series


def sweep_intervals(
    summaries: Mapping[float, Mapping[str, Any]], *, baseline: str | None = None
) -> dict[str, dict[str, list[tuple[float, float] | None]]]:
    """The 95% intervals matching :func:`sweep_series`'s series: ``{metric: {method: [(lo, hi) | None]}}``.

    Rewards use each method's ``ci``; ``win_tie vs BASELINE`` uses the paired win-tie interval. Pass the
    result as ``errors=`` to :func:`plot_sweep` to draw error bars.
    """
    xs = sorted(summaries)
    _, series = sweep_series(summaries, baseline=baseline)
    out: dict[str, dict[str, list[tuple[float, float] | None]]] = {}
    for metric, per_method in series.items():
        out[metric] = {}
        for name in per_method:
            bars: list[tuple[float, float] | None] = []
            for x in xs:
                m = summaries[x].get("methods", {}).get(name) or {}
                if metric.startswith("win_tie"):
                    iv = ((m.get("paired") or {}).get(baseline) or {}).get("win_tie")
                    bars.append(None if iv is None else (iv[1], iv[2]))
                else:
                    iv = (m.get("ci") or {}).get(metric)
                    bars.append(None if iv is None else (iv[0], iv[1]))
            out[metric][name] = bars
    return out


def _sweep_xs(x: Mapping[str, Sequence[float]] | Sequence[float], method: str, n: int) -> list[float]:
    """``method``'s x values (its own list, or the shared one), checked against its ``n`` y values."""
    if isinstance(x, Mapping):
        if method not in x:
            raise ValueError(f"plot_sweep: no x values for method {method!r}")
        vals = list(x[method])
    else:
        vals = list(x)
    if len(vals) != n:
        raise ValueError(f"plot_sweep: method {method!r} has {n} values but {len(vals)} x values")
    return [float(v) for v in vals]


def _plot_line(ax: Any, xs: list[float], vals: Sequence[float | None], name: str, color: str, bars) -> None:
    """One method's line on a panel (``None`` values leave gaps) with its ``(lo, hi)`` error bars."""
    ys = [math.nan if v is None else float(v) for v in vals]
    ax.plot(xs, ys, marker="o", ms=4, lw=1.6, label=name, color=color)
    if bars is None:
        return
    pts = [(xv, yv, b) for xv, yv, b in zip(xs, ys, bars) if b is not None and not math.isnan(yv)]
    if pts:
        ax.errorbar(
            [p[0] for p in pts],
            [p[1] for p in pts],
            yerr=[[max(0.0, p[1] - p[2][0]) for p in pts], [max(0.0, p[2][1] - p[1]) for p in pts]],
            fmt="none", ecolor=color, elinewidth=1.0, capsize=2.5, alpha=0.8,
        )  # fmt: skip


def _panel_title(metric: str) -> str:
    base = _PANEL_TITLES.get(metric)
    if base is None and metric.startswith("win_tie"):
        base = "win-tie rate" + metric[len("win_tie") :]
    return base or metric.replace("_", " ")


def plot_sweep(
    x: Mapping[str, Sequence[float]] | Sequence[float],
    series: Mapping[str, Mapping[str, Sequence[float | None]]],
    path: str | Path,
    *,
    x_label: str = "1/β",
    title: str | None = None,
    chosen_x: float | None = None,
    logx: bool = False,
    dpi: int = 120,
    errors: Mapping[str, Mapping[str, Sequence[tuple[float, float] | None]]] | None = None,
) -> Path:
    """Plot metrics against 1/β, one panel per metric and one line per method; save a PNG at ``path``.

    Args:
        x: the x values, either one list shared by all methods or ``{method: [x, ...]}``.
        series: ``{metric: {method: [y, ...]}}``, each list aligned with that method's x values; ``None``
            values leave a gap. Typical metrics: ``proxy_reward``, ``gold_reward``, ``win_tie`` (a panel
            whose name starts with ``win_tie`` gets a 0–1 axis and a dashed line at 0.5). A metric with no
            value at all is skipped, so a run without a gold judge just has no gold panel.
        chosen_x: draw a dotted vertical line at the 1/β picked for the comparison.
        logx: logarithmic x axis (for geometric sweeps).
        errors: optional ``{metric: {method: [(lo, hi) | None, ...]}}`` intervals drawn as error bars
            (:func:`sweep_intervals` makes them from summaries).

    Uses matplotlib's Agg canvas directly (no pyplot, no global backend change).
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import NullLocator

    panels = [
        (metric, per_method)
        for metric, per_method in series.items()
        if any(v is not None for vals in per_method.values() for v in vals)
    ]
    if not panels:
        raise ValueError("plot_sweep: no series has any value to plot")

    fig = Figure(figsize=(4.4 * len(panels), 3.6), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    methods: dict[str, None] = {}
    for per_method in series.values():
        for name in per_method:
            methods.setdefault(name)
    colors = {name: f"C{i % 10}" for i, name in enumerate(methods)}
    for ax, (metric, per_method) in zip(axes, panels):
        for name, vals in per_method.items():
            xs = _sweep_xs(x, name, len(vals))
            bars = (errors or {}).get(metric, {}).get(name)
            _plot_line(ax, xs, vals, name, colors[name], bars)
        if metric.startswith("win_tie"):
            ax.axhline(0.5, color="grey", lw=0.8, ls="--")
            ax.set_ylim(0.0, 1.0)
        if chosen_x is not None:
            ax.axvline(chosen_x, color="black", lw=0.8, ls=":")
        if logx:
            ax.set_xscale("log")
            ticks = sorted({v for name, vals in per_method.items() for v in _sweep_xs(x, name, len(vals))})
            ax.xaxis.set_minor_locator(NullLocator())
            ax.set_xticks(ticks, [f"{v:g}" for v in ticks])
        ax.set_title(_panel_title(metric))
        ax.set_xlabel(x_label)
        ax.grid(True, alpha=0.3)
    axes[0].legend(fontsize="small")
    if title:
        fig.suptitle(title)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png", dpi=dpi)
    return path

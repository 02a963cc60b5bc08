"""stackalign.evaluation.intervals and the intervals in summary.json: bootstrap over prompts, paired."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest

from stackalign.evaluation import GoldJudge, summarize
from stackalign.evaluation.intervals import bootstrap_ci, bootstrap_indices, paired_diff_ci, rate_ci
from stackalign.evaluation.summary import format_paired, format_table, significance


def reference_percentile_ci(x, n_boot, seed, level=0.95):
    """The percentile bootstrap written out with a Python loop (the reference implementation)."""
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(x), size=(n_boot, len(x)))
    means = sorted(sum(x[i] for i in row) / len(x) for row in idx)
    a = (1 - level) / 2
    return tuple(float(v) for v in np.quantile(means, [a, 1 - a]))


def test_bootstrap_ci_equals_reference_and_is_deterministic():
    x = [0.3, 1.2, -0.4, 2.0, 0.9, 0.1, 1.7]
    got = bootstrap_ci(x, n_boot=500, seed=3)
    ref = reference_percentile_ci(x, 500, 3)
    assert got == pytest.approx(ref, abs=1e-12)
    assert bootstrap_ci(x, n_boot=500, seed=3) == got  # same seed, same interval
    assert bootstrap_ci(x, n_boot=500, seed=4) != got
    lo, hi = got
    assert lo < sum(x) / len(x) < hi


def test_bootstrap_ci_against_the_exact_bootstrap_distribution():
    """For n = 4 the bootstrap distribution of the mean is enumerable (4^4 equally likely resamples); with
    many resamples the Monte Carlo percentiles land on the exact ones."""
    x = [0.0, 1.0, 3.0, 10.0]
    means = sorted(sum(c) / 4 for c in itertools.product(x, repeat=4))
    exact_lo, exact_hi = np.quantile(means, [0.025, 0.975])
    lo, hi = bootstrap_ci(x, n_boot=200_000, seed=0)
    assert lo == pytest.approx(exact_lo, abs=0.1)
    assert hi == pytest.approx(exact_hi, abs=0.1)


def test_degenerate_cases():
    assert bootstrap_ci([]) is None
    assert bootstrap_ci([2.5]) == (2.5, 2.5)
    assert bootstrap_ci([1.0, 1.0, 1.0]) == (1.0, 1.0)
    with pytest.raises(ValueError, match="NaN"):
        bootstrap_ci([1.0, float("nan")])
    with pytest.raises(ValueError, match="level"):
        bootstrap_ci([1.0, 2.0], level=1.5)
    with pytest.raises(ValueError, match="n_boot"):
        bootstrap_indices(3, n_boot=0)


def test_pairing_removes_prompt_difficulty():
    """Method = baseline + 0.1 on every prompt, prompts of very different difficulty: the paired interval is
    exactly [0.1, 0.1] although each method's own interval is wide."""
    base = [0.0, 5.0, -3.0, 10.0, 2.0, 7.0]
    meth = [b + 0.1 for b in base]
    mean, lo, hi = paired_diff_ci(meth, base)
    assert (mean, lo, hi) == pytest.approx((0.1, 0.1, 0.1), abs=1e-12)
    a_lo, a_hi = bootstrap_ci(meth)
    assert a_hi - a_lo > 3.0
    with pytest.raises(ValueError, match="baseline"):
        paired_diff_ci([1.0], [1.0, 2.0])


def test_rate_ci():
    rate, lo, hi = rate_ci([1, 1, 1, 0], n_boot=4000, seed=1)
    assert rate == 0.75
    assert 0.0 <= lo < 0.75 < hi <= 1.0
    assert rate_ci([True] * 5) == (1.0, 1.0, 1.0)
    assert significance([0.75, 0.55, 0.9], 0.5) == "+"
    assert significance([0.3, 0.1, 0.45], 0.5) == "-"
    assert significance([0.6, 0.4, 0.8], 0.5) == "="
    assert significance(None, 0.5) == "n/a"


def rows_for(n=30, shift=0.2, seed=0):
    """Three methods on n prompts; 'better' = base + shift, 'noisy' = base + zero-mean noise."""
    rng = np.random.default_rng(seed)
    difficulty = rng.normal(0, 1, n)
    noise = rng.normal(0, 0.3, n)
    rows = []
    for pid in range(n):
        for method, g in [
            ("base", difficulty[pid]),
            ("better", difficulty[pid] + shift),
            ("noisy", difficulty[pid] + noise[pid] - noise.mean()),
        ]:
            rows.append(
                {"prompt_id": pid, "prompt": f"p{pid}", "method": method, "response": f"{method} {pid}",
                 "proxy_reward": float(g) * 2, "gold_reward": float(g), "seconds": 0.1 + pid / 100,
                 "lm_tokens": 10, "rm_tokens": 0}
            )  # fmt: skip
    return rows


def test_summary_carries_intervals_and_paired_comparisons():
    rows = rows_for()
    gold = {(r["method"], r["prompt_id"]): r["gold_reward"] for r in rows}

    def judge_fn(prompt, a, b):  # gold-based: higher gold wins, equal = tie
        pid = int(prompt[1:])
        ga, gb = gold[(a.split()[0], pid)], gold[(b.split()[0], pid)]
        return (ga > gb) - (ga < gb)

    s = summarize(rows, judge=GoldJudge(judge_fn), baselines=["base"], n_boot=1000, ci_seed=7)
    better, noisy = s["methods"]["better"], s["methods"]["noisy"]
    # ci of every mean; the gold interval is the bootstrap of the per-prompt gold values
    assert set(better["ci"]) == {
        "proxy_reward", "gold_reward", "coherence", "seconds_per_prompt", "lm_tokens_per_prompt",
        "rm_tokens_per_prompt",
    }  # fmt: skip
    assert better["ci"]["coherence"] is None  # no coherence scorer
    golds = [r["gold_reward"] for r in rows if r["method"] == "better"]
    assert better["ci"]["gold_reward"] == pytest.approx(reference_percentile_ci(golds, 1000, 7), abs=1e-12)
    assert better["ci"]["lm_tokens_per_prompt"] == [10.0, 10.0]
    # paired: a constant +0.2 shift is significant with a zero-width interval; win-tie 100%
    p = better["paired"]["base"]
    assert p["n"] == 30
    assert p["gold_diff"] == pytest.approx([0.2, 0.2, 0.2], abs=1e-9)
    assert p["proxy_diff"] == pytest.approx([0.4, 0.4, 0.4], abs=1e-9)
    assert p["win_tie"] == [1.0, 1.0, 1.0]
    assert p["net_win"] == [1.0, 1.0, 1.0]
    # zero-mean noise: the gold difference interval covers 0
    q = noisy["paired"]["base"]
    assert q["gold_diff"][0] == pytest.approx(0.0, abs=1e-9)
    assert q["gold_diff"][1] < 0.0 < q["gold_diff"][2]
    assert 0.0 < q["win_tie"][1] <= q["win_tie"][0] <= q["win_tie"][2] < 1.0
    assert "base" not in s["methods"]["base"]["paired"]
    # deterministic and JSON-serialisable
    again = summarize(rows, judge=GoldJudge(judge_fn), baselines=["base"], n_boot=1000, ci_seed=7)
    assert json.dumps(s, sort_keys=True) == json.dumps(again, sort_keys=True)
    # the tables show the intervals and the significance
    table = format_table(s, baselines=["base"])
    assert "[" in table and "100.0 [100.0, 100.0]" in table
    paired = format_paired(s)
    line = next(x for x in paired.splitlines() if x.startswith("| better"))
    assert "+0.200 [+0.200, +0.200]" in line and line.rstrip(" |").endswith("+")
    line = next(x for x in paired.splitlines() if x.startswith("| noisy"))
    cells = [c.strip() for c in line.strip("|").split("|")]
    assert cells[4] == "=" and cells[7] == "="
    # ties: a method identical to its baseline has win-tie 100% but net win 0, not significant
    s2 = summarize(rows + [{**r, "method": "same"} for r in rows if r["method"] == "base"],
                   judge=GoldJudge(lambda p, a, b: 0), baselines=["base"], n_boot=200)  # fmt: skip
    q2 = s2["methods"]["same"]["paired"]["base"]
    assert q2["win_tie"] == [1.0, 1.0, 1.0] and q2["net_win"] == [0.0, 0.0, 0.0]


def test_paired_without_judge_or_gold():
    rows = rows_for(n=5)
    for r in rows:
        r.pop("gold_reward")
    s = summarize(rows, baselines=["base"], n_boot=200)
    p = s["methods"]["better"]["paired"]["base"]
    assert p["gold_diff"] is None and p["win_tie"] is None and p["net_win"] is None
    assert p["proxy_diff"] == pytest.approx([0.4, 0.4, 0.4], abs=1e-9)
    assert s["methods"]["better"]["ci"]["gold_reward"] is None
    assert "proxy diff" in format_paired(s)


def test_sweep_intervals_and_plots_with_error_bars(tmp_path):
    from stackalign.evaluation.summary import plot_sweep, sweep_intervals, sweep_series
    from stackalign.runner.report import plot_methods

    judge = GoldJudge(lambda p, a, b: (a > b) - (a < b))
    per = {
        w: summarize(rows_for(n=8, shift=w), judge=judge, baselines=["base"], n_boot=200) for w in (0.5, 2.0)
    }
    x, series = sweep_series(per, baseline="base")
    errs = sweep_intervals(per, baseline="base")
    assert errs["gold_reward"]["better"][1] == tuple(per[2.0]["methods"]["better"]["ci"]["gold_reward"])
    wt = per[0.5]["methods"]["better"]["paired"]["base"]["win_tie"]
    assert errs["win_tie vs base"]["better"][0] == (wt[1], wt[2])
    assert errs["win_tie vs base"]["base"] == [None, None]
    png = plot_sweep(x, series, tmp_path / "s.png", errors=errs)
    assert png.stat().st_size > 1000
    assert plot_methods(per[2.0], tmp_path / "m.png").stat().st_size > 1000


def test_plots_accept_a_mean_a_last_bit_outside_its_interval(tmp_path):
    """A constant column: the summary's mean (Python sum) and the interval's bound (NumPy mean) can differ in
    the last bit; the error bars must not go negative (the quick demo failed on exactly these numbers)."""
    from stackalign.evaluation.summary import plot_sweep
    from stackalign.runner.report import plot_methods

    y, bound = 0.010466147583277534, 0.010466147583277538
    summary = {"methods": {"A": {"seconds_per_prompt": y, "ci": {"seconds_per_prompt": [bound, bound]}}}}
    assert plot_methods(summary, tmp_path / "m.png").stat().st_size > 1000
    errors = {"gold_reward": {"A": [(bound, bound)]}}
    plot_sweep([1.0], {"gold_reward": {"A": [y]}}, tmp_path / "s.png", errors=errors)
    assert (tmp_path / "s.png").stat().st_size > 1000

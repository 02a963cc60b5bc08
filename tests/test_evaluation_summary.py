"""stackalign.evaluation.summary: rows -> summary.json shape, the table, the sweep figure."""

from __future__ import annotations

import json
import math

import pytest

from stackalign.evaluation import GoldJudge, format_table, plot_sweep, summarize, sweep_series

REP = "the cat the cat the cat"  # diversity 1/15 (see test_evaluation_metrics.py)
FRESH = "a b c d e"  # diversity 2/5


def make_rows(gold: bool = True) -> list[dict]:
    rows = []
    for pid, prompt in enumerate(["p0", "p1"]):
        for method, response, proxy, g, sec, lm, rm in [
            ("greedy", REP, 1.0, 0.0, 0.1, 10, 0),
            ("args", FRESH + "\n\nHuman: ignore me me me me", 2.0, 0.5, 0.3, 10, 110),
            ("srs-args", FRESH, 1.5 + pid, 1.0, 0.5 + pid, 12, 130),
        ]:
            row = {
                "prompt_id": pid,
                "prompt": prompt,
                "method": method,
                "response": response,
                "proxy_reward": proxy,
                "seconds": sec,
                "lm_tokens": lm,
                "rm_tokens": rm,
            }
            if gold:
                row["gold_reward"] = g
            rows.append(row)
    return rows


def by_gold(prompt, a, b):
    """A gold judge: the response with more distinct words wins."""
    da, db = len(set(a.split())), len(set(b.split()))
    return (da > db) - (da < db)


def test_summarize_hand_made_rows():
    calls = []

    def coherence(prompts, responses):
        calls.append((list(prompts), list(responses)))
        return [0.25 if r == REP else 0.75 for r in responses]

    s = summarize(make_rows(), coherence=coherence, judge=GoldJudge(by_gold), baselines=["greedy", "args"])
    assert list(s["methods"]) == ["greedy", "args", "srs-args"]
    g, a, srs = (s["methods"][k] for k in ("greedy", "args", "srs-args"))
    assert set(g) >= {
        "proxy_reward", "gold_reward", "diversity", "coherence", "win_tie",
        "seconds_per_prompt", "lm_tokens_per_prompt", "rm_tokens_per_prompt",
    }  # fmt: skip
    assert srs["proxy_reward"] == pytest.approx(2.0)  # (1.5 + 2.5) / 2
    assert srs["gold_reward"] == pytest.approx(1.0)
    assert g["diversity"] == pytest.approx(1 / 15)
    # "args" responses are cleaned before scoring: the "\n\nHuman: ..." tail is gone
    assert a["diversity"] == pytest.approx(2 / 5)
    assert all("Human:" not in r for r in calls[0][1])
    assert g["coherence"] == pytest.approx(0.25) and srs["coherence"] == pytest.approx(0.75)
    assert srs["seconds_per_prompt"] == pytest.approx(1.0)  # (0.5 + 1.5) / 2
    assert srs["lm_tokens_per_prompt"] == 12 and srs["rm_tokens_per_prompt"] == 130
    # win-tie: FRESH (5 distinct words) beats REP (2 distinct words); args vs srs-args ties after cleaning
    assert srs["win_tie"] == {"greedy": 1.0, "args": 1.0}
    assert g["win_tie"] == {"args": 0.0}  # no entry against itself
    assert a["win_tie"] == {"greedy": 1.0}
    assert srs["win_tie_counts"]["args"] == {
        "win": 0,
        "tie": 2,
        "loss": 0,
        "unparseable": 0,
        "n": 2,
        "rate": 1.0,
    }
    assert g["n"] == 2
    json.dumps(s, allow_nan=False)  # valid strict JSON


def test_summarize_without_gold_judge_or_scorer():
    s = summarize(make_rows(gold=False), baselines=["greedy"])
    m = s["methods"]["srs-args"]
    assert m["gold_reward"] is None and m["coherence"] is None
    assert m["win_tie"] == {"greedy": None}
    json.dumps(s, allow_nan=False)


def test_summarize_pairs_by_prompt_id_and_validates():
    rows = make_rows()
    partial = [r for r in rows if not (r["method"] == "greedy" and r["prompt_id"] == 1)]
    s = summarize(partial, judge=GoldJudge(by_gold), baselines=["greedy"])
    assert s["methods"]["srs-args"]["win_tie_counts"]["greedy"]["n"] == 1

    with pytest.raises(ValueError, match="duplicate row"):
        summarize(rows + [rows[0]])
    bad = [dict(r) for r in rows]
    bad[2]["proxy_reward"] = math.nan
    with pytest.raises(ValueError, match="proxy_reward is nan"):
        summarize(bad)
    with pytest.raises(ValueError, match="'response'"):
        summarize([{"prompt_id": 0, "prompt": "p", "method": "m"}])
    with pytest.raises(ValueError, match="baseline 'nope'"):
        summarize(rows, baselines=["nope"])
    mismatch = [dict(r) for r in rows]
    mismatch[0]["prompt"] = "changed"
    with pytest.raises(ValueError, match="different prompt text"):
        summarize(mismatch, judge=GoldJudge(by_gold), baselines=["greedy"])


def test_format_table():
    s = summarize(make_rows(), judge=GoldJudge(by_gold), baselines=["greedy"])
    table = format_table(s)
    lines = table.splitlines()
    assert len(lines) == 2 + 3
    assert lines[0].startswith("| method") and "win-tie vs greedy (%)" in lines[0]
    assert "coherence" not in lines[0]  # no scorer -> the empty column is left out
    assert all(len(line) == len(lines[0]) for line in lines)  # aligned for a terminal
    srs = next(line for line in lines if line.startswith("| srs-args"))
    assert "100.0" in srs and "2.000" in srs
    greedy = next(line for line in lines if line.startswith("| greedy"))
    assert " - |" in greedy  # no win-tie against itself
    assert format_table({"methods": {}}) == "(no methods)"


def test_plot_sweep_writes_png(tmp_path):
    x = [0.5, 1.0, 2.0, 4.0]
    series = {
        "proxy_reward": {"args": [1.0, 1.5, 2.0, 2.6], "srs-args": [0.9, 1.3, 1.8, 2.1]},
        "gold_reward": {"args": [0.2, 0.4, 0.3, 0.1], "srs-args": [0.25, 0.5, 0.55, 0.5]},
        "win_tie": {"srs-args": [0.5, 0.6, None, 0.7]},
        "nothing": {"args": [None, None, None, None]},
    }
    out = plot_sweep(x, series, tmp_path / "figs" / "sweep.png", chosen_x=1.0, title="sweep")
    data = out.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000
    # per-method x values, log axis
    out2 = plot_sweep(
        {"a": [1, 2, 4], "b": [1, 4]},
        {"proxy_reward": {"a": [1, 2, 3], "b": [1, 2]}},
        tmp_path / "b.png",
        logx=True,
    )
    assert out2.read_bytes()[:4] == b"\x89PNG"
    with pytest.raises(ValueError, match="x values"):
        plot_sweep([1, 2], {"proxy_reward": {"a": [1, 2, 3]}}, tmp_path / "c.png")
    with pytest.raises(ValueError, match="no series"):
        plot_sweep([1], {"gold_reward": {"a": [None]}}, tmp_path / "d.png")


def test_sweep_series_from_summaries(tmp_path):
    summaries = {}
    for inv_beta in (2.0, 1.0):
        rows = make_rows()
        for r in rows:
            r["proxy_reward"] *= inv_beta
        summaries[inv_beta] = summarize(rows, judge=GoldJudge(by_gold), baselines=["greedy"])
    x, series = sweep_series(summaries, baseline="greedy")
    assert x["args"] == [1.0, 2.0]
    assert series["proxy_reward"]["args"] == [2.0, 4.0]
    assert series["win_tie vs greedy"]["greedy"] == [None, None]
    assert series["win_tie vs greedy"]["srs-args"] == [1.0, 1.0]
    out = plot_sweep(x, series, tmp_path / "s.png")
    assert out.read_bytes()[:4] == b"\x89PNG"


def test_empty_answers_are_counted_and_warned_about():
    rows = [
        {
            "method": "M",
            "prompt_id": i,
            "prompt": "p",
            "response": "" if i < 2 else "an answer",
            "proxy_reward": 0.0,
        }
        for i in range(10)
    ]
    with pytest.warns(UserWarning, match="M: 2 of 10 answers are empty"):
        s = summarize(rows)
    assert s["methods"]["M"]["empty_answers"] == 2
    rows[0]["response"] = "x"  # 1 of 10 = the threshold, not above it: counted, no warning
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert summarize(rows)["methods"]["M"]["empty_answers"] == 1

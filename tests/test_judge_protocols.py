"""The judge protocols against a biased stub judge: both orders remove a position bias, length control a length
bias; the reward-model judge; recipe validation of the judge fields.

The stub is an OpenAI-compatible chat-completions server on 127.0.0.1 (a thread). For every request it draws
u in [0, 1) from a hash of the request's text (so each presentation is an independent, reproducible draw) and
answers:

* u < POSITION: Assistant 1 is better, whatever the answers say (a fixed position bias);
* POSITION <= u < POSITION + LENGTH, answers of different lengths: the longer one is better (a fixed length bias);
* otherwise: the answer carrying the quality MARKER is better; a tie ("5 5") if neither or both carry it.

The expected rates below follow from POSITION and LENGTH by counting these cases (see each test).
"""

from __future__ import annotations

import hashlib
import re

import pytest
from test_evaluation_judges import FakeServer, answers

from stackalign.evaluation import LLMJudge, RewardModelJudge, summarize, win_tie
from stackalign.evaluation.summary import format_paired

POSITION = 0.3
LENGTH = 0.4
MARKER = "GOOD"


def _uniform(text: str) -> float:
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big") / 2.0**64


def biased_stub(body: dict) -> tuple[int, str]:
    user = body["messages"][1]["content"]
    ans = answers(user)
    u = _uniform(user)
    if u < POSITION:
        return 200, "8 3\nThe first answer is better."
    if u < POSITION + LENGTH and len(ans[1]) != len(ans[2]):
        return 200, "8 3" if len(ans[1]) > len(ans[2]) else "3 8"
    good1, good2 = MARKER in ans[1], MARKER in ans[2]
    if good1 == good2:
        return 200, "5 5\nBoth are fine."
    return 200, "9 2" if good1 else "2 9"


def stub_judge(server: FakeServer, orders: str, seed: int = 0) -> LLMJudge:
    return LLMJudge("stub", base_url=server.base_url, api_key_env=None, orders=orders, seed=seed, backoff=0.0)


def rows_for(pairs: list[tuple[str, str]], method: str = "m", baseline: str = "base") -> list[dict]:
    rows = []
    for i, (a, b) in enumerate(pairs):
        prompt = f"Question number {i}: say something."
        rows.append({"prompt_id": i, "prompt": prompt, "method": method, "response": a, "proxy_reward": 0.0})
        rows.append(
            {"prompt_id": i, "prompt": prompt, "method": baseline, "response": b, "proxy_reward": 0.0}
        )
    return rows


def test_both_orders_remove_the_position_bias():
    # Equal quality, equal length: the method's answer carries the marker on half the pairs, the baseline's on
    # the other half. Every pair has a content winner, so a pair flips exactly when the presentation that
    # shows the content loser first falls in the position band: expected flip rate = POSITION. Consistent
    # pairs go to the content winner (half each way), flipped ones are ties: expected win rate 1/2, net 0.
    n = 240
    pairs = [(f"answer {i} {MARKER}", f"answer {i} okay") for i in range(n // 2)]
    pairs += [(f"answer {i} okay", f"answer {i} {MARKER}") for i in range(n // 2, n)]
    rows = rows_for(pairs)
    with FakeServer(biased_stub) as server:
        s = summarize(rows, judge=stub_judge(server, "both"), baselines=["base"], judge_workers=4)
        one = win_tie(
            stub_judge(server, "one"),
            [r["prompt"] for r in rows[::2]],
            [a for a, _ in pairs],
            [b for _, b in pairs],
        )
        # the both-orders verdicts do not depend on the coin's seed; the one-order verdicts do
        other_seed = summarize(rows, judge=stub_judge(server, "both", seed=5), baselines=["base"])
    p = s["methods"]["m"]["paired"]["base"]
    counts = s["methods"]["m"]["win_tie_counts"]["base"]
    assert s["judge"] == {"name": "llm", "orders": "both", "length_control": False}
    assert counts["n"] == n and counts["unparseable"] == 0 and counts["both_read"] == n
    flip, lo, hi = p["flip_rate"]
    assert abs(flip - POSITION) < 0.08 and lo <= POSITION <= hi, p["flip_rate"]
    assert counts["tie"] == counts["flipped"]  # every tie here is a flipped pair
    assert abs(p["win_rate"][0] - 0.5) < 0.06 and p["win_rate"][1] < 0.5 < p["win_rate"][2]
    assert abs(p["net_win"][0]) < 0.12 and p["net_win"][1] < 0 < p["net_win"][2]
    assert other_seed["methods"]["m"]["win_tie_counts"] == s["methods"]["m"]["win_tie_counts"]
    # One order: a verdict follows the position. P(method wins | shown first) - P(method wins | shown second)
    # = (POSITION + (1 - POSITION) / 2) - (1 - POSITION) / 2 = POSITION.
    first = [j.outcome == 1 for j in one.judgements if not j.swapped]
    second = [j.outcome == 1 for j in one.judgements if j.swapped]
    gap = sum(first) / len(first) - sum(second) / len(second)
    assert abs(gap - POSITION) < 0.15, gap
    table = format_paired(s)
    assert "order flips %" in table and "length-controlled" not in table


def test_both_orders_keep_a_real_quality_difference():
    # The method's answer always carries the marker: only the position band can go against it, and only when
    # the baseline is shown first. Expected: flip rate POSITION, net win 1 - POSITION, no loss at all.
    n = 200
    pairs = [(f"answer {i} {MARKER}", f"answer {i} okay") for i in range(n)]
    with FakeServer(biased_stub) as server:
        res = win_tie(stub_judge(server, "both"), [f"q{i}" for i in range(n)], *zip(*pairs), workers=4)
    assert res.loss == 0 and res.unparseable == 0
    assert res.flipped == res.tie
    assert abs(res.flipped / n - POSITION) < 0.08
    assert abs((res.win - res.loss) / n - (1 - POSITION)) < 0.08


@pytest.mark.parametrize("orders", ["both", "one"])
def test_length_control_removes_the_length_bias(orders):
    # Equal quality (the marker on half the pairs each way, independent of length); the method's answer is
    # D characters longer on 3/4 of the pairs and D shorter on the rest. With a the longer answer:
    #   a carries the marker: both orders prefer a except the position band when b is shown first:
    #     E[verdict] = 1 - POSITION / 2
    #   b carries it: shown first, a wins in the position and length bands; shown second, in the length band:
    #     E[verdict] = (POSITION + LENGTH) * LENGTH + (flip) / 2, flip = 1 - that - (1 - P - L) * (1 - L)
    #   (one order gives the same two expectations: the mean over the coin of the two presentations.)
    # By symmetry the shorter answer gets 1 minus these. Raw win rate = 3/4 E+ + 1/4 (1 - E+); the
    # length-controlled rate, fitted on two length differences +-D, is exactly 1/2 in expectation.
    n = 400
    d = 40
    e_marker = 1 - POSITION / 2
    both_a = (POSITION + LENGTH) * LENGTH
    both_b = (1 - POSITION - LENGTH) * (1 - LENGTH)
    e_other = both_a + (1 - both_a - both_b) / 2
    e_longer = (e_marker + e_other) / 2
    expected_raw = 0.75 * e_longer + 0.25 * (1 - e_longer)
    assert expected_raw == pytest.approx(0.6)  # the stub's parameters as chosen: a clear length preference
    pairs = []
    for i in range(n):
        longer = i % 4 != 0
        marker_on_method = (i // 4) % 2 == 0
        base = f"answer {i}"
        a = base + (f" {MARKER}" if marker_on_method else " okay") + ("." * d if longer else "")
        b = base + (" okay" if marker_on_method else f" {MARKER}") + ("" if longer else "." * d)
        pairs.append((a, b))
    rows = rows_for(pairs)
    with FakeServer(biased_stub) as server:
        s = summarize(
            rows, judge=stub_judge(server, orders), baselines=["base"], length_control=True, judge_workers=4
        )
    p = s["methods"]["m"]["paired"]["base"]
    raw, lc = p["win_rate"], p["lc_win_rate"]
    assert abs(raw[0] - expected_raw) < 0.05 and raw[1] > 0.5, raw  # the judge's length preference shows
    assert abs(lc[0] - 0.5) < 0.06 and lc[1] < 0.5 < lc[2], lc  # and length control removes it
    assert p["lc_slope"] > 0.5  # the fit found the preference for longer answers
    if (
        orders == "both"
    ):  # flips: POSITION on the pairs where one answer has it all, 1 - aa - bb on the others
        expected_flip = (POSITION + (1 - both_a - both_b)) / 2
        assert abs(p["flip_rate"][0] - expected_flip) < 0.06, p["flip_rate"]
    assert s["judge"]["length_control"] is True
    assert "length-controlled win %" in format_paired(s)


def test_length_control_keeps_a_quality_difference_without_a_length_difference():
    # All answers the same length: the length term is 0 and the controlled rate is the raw rate.
    n = 120
    pairs = [(f"ans {i} {MARKER}", f"ans {i} okay") for i in range(n)]
    with FakeServer(biased_stub) as server:
        s = summarize(
            rows_for(pairs), judge=stub_judge(server, "both"), baselines=["base"], length_control=True
        )
    p = s["methods"]["m"]["paired"]["base"]
    assert p["lc_win_rate"][0] == pytest.approx(p["win_rate"][0], abs=1e-4)
    assert p["lc_win_rate"][1] > 0.5


def test_unreadable_replies_stay_apart_from_ties_in_both_orders():
    # Replies for pairs whose question says GARBLE cannot be read in the order that shows the marker first.
    def stub(body):
        user = body["messages"][1]["content"]
        ans = answers(user)
        if "GARBLE" in user and MARKER in ans[1]:
            return 200, "I like the first one."
        return 200, "9 2" if MARKER in ans[1] else "2 9" if MARKER in ans[2] else "5 5"

    prompts = ["q1", "q2 GARBLE", "q3", "q4 GARBLE"]
    method = [f"x {MARKER}", "y", "z", f"w {MARKER}"]
    baseline = ["x", "y", "z", "w"]
    with FakeServer(stub) as server:
        res = win_tie(stub_judge(server, "both"), prompts, method, baseline)
    # q1: win in both orders; q2: no marker, both orders read: tie; q3: tie; q4: one order unreadable
    assert (res.win, res.tie, res.loss, res.unparseable, res.n) == (1, 2, 0, 1, 4)
    assert res.flipped == 0 and res.both_read == 3
    assert res.judgements[3].outcome is None and res.judgements[3].flipped is None
    assert res.rate == 1.0 and res.win_rate == pytest.approx(2 / 3)


def test_reward_model_judge_is_soft_and_symmetric():
    rewards = {"a": 2.0, "b": 0.0, "c": 2.0}
    judge = RewardModelJudge(lambda p, r: rewards[r])
    j = judge.judge("p", "a", "b")
    assert j.outcome == 1 and j.preference == pytest.approx(1 / (1 + 2.718281828459045**-2))
    assert judge.judge("p", "b", "a").preference == pytest.approx(1 - j.preference)
    assert judge.judge("p", "a", "c").outcome == 0 and judge.judge("p", "a", "c").preference == 0.5
    res = win_tie(judge, ["p"] * 3, ["a", "b", "a"], ["b", "a", "a"])
    assert (res.win, res.tie, res.loss) == (1, 1, 1)
    assert res.win_rate == pytest.approx(0.5)


def test_reward_model_judge_in_a_summary_has_intervals_and_no_gold():
    # Method answers score 1 more than the baseline's on every prompt: win rate sigmoid(1), net 2 sigmoid(1) - 1.
    rows = []
    for i in range(30):
        rows.append(
            {"prompt_id": i, "prompt": f"p{i}", "method": "m", "response": f"m{i}", "proxy_reward": i + 1.0}
        )
        rows.append(
            {"prompt_id": i, "prompt": f"p{i}", "method": "base", "response": f"b{i}", "proxy_reward": i}
        )
    reward = {(r["prompt"], r["response"]): r["proxy_reward"] for r in rows}
    s = summarize(rows, judge=RewardModelJudge(lambda p, r: reward[(p, r)]), baselines=["base"])
    p = s["methods"]["m"]["paired"]["base"]
    sig1 = 1 / (1 + 2.718281828459045**-1)
    assert p["win_rate"] == pytest.approx([sig1, sig1, sig1])
    assert p["net_win"][0] == pytest.approx(2 * sig1 - 1)
    assert s["methods"]["m"]["win_tie"]["base"] == 1.0
    assert s["judge"]["name"] == "reward_model"
    assert "gold" not in str(s["judge"]) and p["gold_diff"] is None


WORLDLESS = {
    "world": None,
    "gold": None,
    "policy": "p",
    "reward_model": "r",
    "prompts": {"source": "prompts.jsonl"},
    "methods": [{"name": "base", "decoder": "base"}, {"name": "m", "decoder": "greedy"}],
}


@pytest.mark.parametrize(
    "evaluation, field",
    [
        ({"judge": "gold", "judge_model": "x"}, "evaluation.judge_model"),
        ({"judge": "reward_model", "judge_model": "x"}, "evaluation.judge_model"),
        ({"judge": "hf"}, "evaluation.judge_model"),
        ({"judge": None, "length_control": True, "baselines": ["base"]}, "evaluation.length_control"),
        ({"judge": "reward_model", "judge_orders": "both"}, "evaluation.judge_orders"),
        ({"judge": "gold", "judge_orders": "both"}, "evaluation.judge_orders"),
        ({"judge": "hf", "judge_model": "m", "judge_base_url": "http://x"}, "evaluation.judge_base_url"),
        ({"judge": "reward_model", "judge_max_new_tokens": 8}, "evaluation.judge_max_new_tokens"),
        ({"judge": "hf", "judge_model": "m", "judge_max_new_tokens": 0}, "evaluation.judge_max_new_tokens"),
        ({"judge": "hf", "judge_model": "m", "judge_orders": "three"}, "evaluation.judge_orders"),
        ({"judge": "reward_model", "length_control": True}, "evaluation.length_control"),
    ],
)
def test_recipe_judge_fields_are_checked(evaluation, field):
    from stackalign.runner.recipe import RecipeError, recipe_from_dict

    data = {**WORLDLESS, "evaluation": {"coherence": None, **evaluation}}
    if evaluation.get("judge") == "gold":
        data.update(world="default", gold="world")
    with pytest.raises(RecipeError, match=re.escape(field)):
        recipe_from_dict(data)


def test_recipe_accepts_the_new_judges_without_a_world():
    from stackalign.runner.recipe import recipe_from_dict

    base = WORLDLESS
    ev = {"coherence": None, "judge": "reward_model", "length_control": True, "baselines": ["base"]}
    r = recipe_from_dict({**base, "evaluation": ev})
    assert r.evaluation.judge == "reward_model" and r.evaluation.judge_orders == "one"
    ev = {"coherence": None, "judge": "hf", "judge_model": "smollm2-135m-instruct", "judge_orders": "both"}
    r = recipe_from_dict({**base, "evaluation": {**ev, "length_control": True, "baselines": ["base"]}})
    assert r.evaluation.judge_orders == "both" and r.evaluation.length_control


def test_run_builds_the_recipes_judge():
    from stackalign.runner.recipe import RecipeError, recipe_from_dict
    from stackalign.runner.run import make_judge

    ev = {"coherence": None, "judge": "llm", "judge_model": "stub", "judge_api_key_env": None}
    ev.update(judge_orders="both", judge_max_new_tokens=64, judge_base_url="http://127.0.0.1:9/v1")
    judge = make_judge(recipe_from_dict({**WORLDLESS, "seed": 3, "evaluation": ev}), [], ())
    assert isinstance(judge, LLMJudge)
    assert (judge.orders, judge.max_tokens, judge.seed, judge.api_key_env) == ("both", 64, 3, None)

    recipe = recipe_from_dict({**WORLDLESS, "evaluation": {"coherence": None, "judge": "reward_model"}})
    rows = rows_for([("a long answer</s>", "b")])
    rows[0]["proxy_reward"], rows[1]["proxy_reward"] = 1.0, -1.0
    judge = make_judge(recipe, rows, ("</s>",))
    assert isinstance(judge, RewardModelJudge)
    # the answers are looked up as the judge reads them: cut at the stop strings
    assert judge.judge(rows[0]["prompt"], "a long answer", "b").preference == pytest.approx(
        1 / (1 + 2.718281828459045**-2)
    )
    rows[1]["proxy_reward"] = None
    with pytest.raises(RecipeError, match="evaluation.judge: reward_model needs each row's proxy_reward"):
        make_judge(recipe, rows, ())

"""The local chat-model judge (`evaluation.judge: hf`): the API judge's prompt and protocols, batched generation,
and a run recipe on the real smollm2 model."""

from __future__ import annotations

import json
import math

import pytest
import torch
from tiny_models import bpe_tokenizer, tiny_pair

from stackalign.evaluation import JUDGE_SYSTEM_PROMPT, LLMJudge, win_tie
from stackalign.evaluation.hf_judge import HFJudge

TEMPLATE = (
    "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<assistant>{% endif %}"
)
MARKER = "GOOD"


def _tokenizer():
    tok = bpe_tokenizer(["Assistant 1 Assistant 2 answer question GOOD okay 9 2 8 3 5"] * 4, vocab_size=300)
    tok.chat_template = TEMPLATE
    return tok


class ScriptedLM(torch.nn.Module):
    """A stand-in causal LM whose "generation" is a reply computed from the rendered conversation."""

    def __init__(self, tokenizer, reply):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))
        self.tok = tokenizer
        self.reply = reply
        self.batches: list[int] = []
        self.seen: list[str] = []

    def generate(self, input_ids, attention_mask, max_new_tokens, do_sample, pad_token_id):
        assert not do_sample
        self.batches.append(input_ids.shape[0])
        rows = []
        for ids, mask in zip(input_ids, attention_mask):
            text = self.tok.decode(ids[mask.bool()])
            self.seen.append(text)
            new = self.tok(self.reply(text), add_special_tokens=False)["input_ids"][:max_new_tokens]
            rows.append(new)
        width = max(len(r) for r in rows)
        pad = [r + [pad_token_id] * (width - len(r)) for r in rows]
        return torch.cat([input_ids, torch.tensor(pad, dtype=input_ids.dtype)], dim=1)


def _by_marker(text: str) -> str:
    first = text.split("[The Start of Assistant 1's Answer]")[1].split("[The End of Assistant 1's Answer]")[0]
    second = text.split("[The Start of Assistant 2's Answer]")[1].split("[The End of Assistant 2's Answer]")[
        0
    ]
    if (MARKER in first) == (MARKER in second):
        return "5 5"
    return "9 2" if MARKER in first else "2 9"


def test_hf_judge_uses_the_api_judges_prompt_and_maps_both_orders_back():
    tok = _tokenizer()
    lm = ScriptedLM(tok, _by_marker)
    judge = HFJudge(lm, tok, orders="both", batch_size=4, max_new_tokens=8)
    prompts = [f"question {i}" for i in range(5)]
    method = [f"answer {i} {MARKER}" if i % 2 == 0 else f"answer {i} okay" for i in range(5)]
    baseline = [f"answer {i} okay" if i % 2 == 0 else f"answer {i} {MARKER}" for i in range(5)]
    res = win_tie(judge, prompts, method, baseline)
    assert (res.win, res.tie, res.loss, res.unparseable) == (3, 0, 2, 0)
    assert res.flipped == 0 and res.both_read == 5
    assert lm.batches == [4, 4, 2]  # 10 presentations, batched by 4
    # the same messages as the API judge, rendered by the judge tokenizer's chat template
    api = LLMJudge("m", base_url="http://127.0.0.1:9/v1", api_key_env=None)
    expected = tok.apply_chat_template(
        api.messages(prompts[0], method[0], baseline[0]), tokenize=False, add_generation_prompt=True
    )
    assert lm.seen[0] == expected and JUDGE_SYSTEM_PROMPT in lm.seen[0]
    assert lm.seen[1] == tok.apply_chat_template(
        api.messages(prompts[0], baseline[0], method[0]), tokenize=False, add_generation_prompt=True
    )


def test_hf_judge_position_bias_becomes_ties_and_unreadable_replies_stay_apart():
    tok = _tokenizer()
    always_first = HFJudge(ScriptedLM(tok, lambda text: "8 3"), tok, orders="both")
    res = win_tie(always_first, ["q1", "q2", "q3"], ["a", "b", "c"], ["x", "y", "z"])
    assert (res.win, res.tie, res.loss, res.flipped) == (0, 3, 0, 3)
    one = win_tie(
        HFJudge(ScriptedLM(tok, lambda text: "8 3"), tok),
        [f"q{i}" for i in range(12)],
        ["a"] * 12,
        ["b"] * 12,
    )
    assert all(j.outcome == (-1 if j.swapped else 1) for j in one.judgements)
    garbled = HFJudge(ScriptedLM(tok, lambda text: "answer okay"), tok, orders="both")
    res = win_tie(garbled, ["q1", "q2"], ["a", "b"], ["x", "y"])
    assert (res.tie, res.unparseable, res.rate, res.both_read) == (0, 2, None, 0)


def test_hf_judge_needs_a_chat_template():
    tok = bpe_tokenizer(["a b c"] * 3, vocab_size=280)
    with pytest.raises(ValueError, match="judge_model: .*no chat template"):
        HFJudge(ScriptedLM(tok, lambda t: ""), tok, label="'tiny'")


def test_hf_judge_batched_equals_one_by_one_on_a_tiny_llama():
    tok = _tokenizer()
    policy, _ = tiny_pair("llama", tok, seed=3)
    kw = dict(orders="both", max_new_tokens=6, system_prompt="Rate both answers 1-10 on the first line.")
    triples = [
        ("q one", "short", "a much longer answer"),
        ("q two?", "GOOD okay", "9"),
        ("q3", "x", "y y y y"),
    ]
    batched = HFJudge(policy, tok, batch_size=6, **kw).judge_many(triples)
    single = HFJudge(policy, tok, batch_size=1, **kw).judge_many(triples)
    assert [o.reply for j in batched for o in j.orders] == [o.reply for j in single for o in j.orders]
    assert [j.outcome for j in batched] == [j.outcome for j in single]


@pytest.mark.slow
def test_run_recipe_on_smollm2_with_the_local_judge_then_the_reward_model_judge(smol_dir, tmp_path):
    """A run with world: null on the real model: the hf judge (both orders, length control), then the same rows
    re-evaluated by the reward-model judge."""
    from stackalign.models.real import reward_model_from_policy
    from stackalign.runner.recipe import recipe_from_dict
    from stackalign.runner.run import evaluate, execute

    rm = reward_model_from_policy("smollm2-135m-instruct", tmp_path / "rm", layers=2)
    prompts = tmp_path / "prompts.jsonl"
    questions = ["What is the capital of France?", "Name a colour of the sky.", "How many legs has a cat?"]
    prompts.write_text("".join(json.dumps({"prompt": q}) + "\n" for q in questions))
    data = {
        "world": None,
        "gold": None,
        "policy": "smollm2-135m-instruct",
        "reward_model": rm,
        "prompts": {
            "source": str(prompts),
            "template": "<|im_start|>user\n{prompt}<|im_end|>\n<|im_start|>assistant\n",
        },
        "generation": {"max_new_tokens": 8, "stop_strings": ["<|im_end|>"], "batch_size": 3},
        "methods": [{"name": "base", "decoder": "base"}, {"name": "greedy", "decoder": "greedy"}],
        "evaluation": {
            "coherence": None,
            "judge": "hf",
            "judge_model": "smollm2-135m-instruct",
            "judge_orders": "both",
            "length_control": True,
            "judge_max_new_tokens": 12,
            "baselines": ["greedy"],
        },
    }
    out = tmp_path / "run"
    summary = execute(recipe_from_dict(data), out, progress=False)
    p = summary["methods"]["base"]["paired"]["greedy"]
    counts = summary["methods"]["base"]["win_tie_counts"]["greedy"]
    assert summary["judge"] == {"name": "hf", "orders": "both", "length_control": True}
    assert counts["n"] == 3 and counts["win"] + counts["tie"] + counts["loss"] + counts["unparseable"] == 3
    assert counts["both_read"] == 3 - counts["unparseable"]
    if counts["unparseable"] < 3:
        assert p["flip_rate"] is not None and p["lc_win_rate"] is not None
    report = (out / "report.md").read_text()
    assert "a local chat model run in-process" in report and "Unreadable judge replies" in report

    data["evaluation"] = {
        "coherence": None,
        "judge": "reward_model",
        "length_control": True,
        "baselines": ["greedy"],
    }
    summary = evaluate(out, recipe=recipe_from_dict(data))
    p = summary["methods"]["base"]["paired"]["greedy"]
    assert summary["judge"]["name"] == "reward_model"
    assert p["win_rate"] is not None and p["net_win"] is not None and p["lc_win_rate"] is not None
    assert p["flip_rate"] is None and p["gold_diff"] is None
    rows = [json.loads(line) for line in (out / "generations.jsonl").read_text().splitlines()]
    reward = {(row["method"], row["prompt_id"]): row["proxy_reward"] for row in rows}
    text = {(row["method"], row["prompt_id"]): row["response"] for row in rows}
    # sigmoid(r - r') per prompt; identical answers tie at exactly 1/2, as the judge defines
    expected = [
        0.5
        if text[("base", i)] == text[("greedy", i)]
        else 1 / (1 + math.exp(-(reward[("base", i)] - reward[("greedy", i)])))
        for i in range(3)
    ]
    assert p["win_rate"][0] == pytest.approx(sum(expected) / 3, abs=1e-9)
    judge_line = (out / "report.md").read_text().split("Judge:")[1].split("\n")[0]
    assert "reward model" in judge_line and "gold" not in judge_line


def test_preflight_refuses_a_judge_directory_without_a_chat_template(tmp_path):
    from stackalign.runner.preflight import preflight
    from stackalign.runner.recipe import RecipeError, recipe_from_dict

    plain, chat = tmp_path / "plain", tmp_path / "chat"
    bpe_tokenizer(["a b c"] * 3, vocab_size=280).save_pretrained(plain)
    _tokenizer().save_pretrained(chat)
    (tmp_path / "p.jsonl").write_text('{"prompt": "hi"}\n')
    data = {
        "world": None,
        "gold": None,
        "policy": "p",
        "reward_model": "r",
        "prompts": {"source": str(tmp_path / "p.jsonl")},
        "methods": [{"name": "base", "decoder": "base"}],
        "evaluation": {"coherence": None, "judge": "hf", "judge_model": str(plain)},
    }
    with pytest.raises(RecipeError, match="evaluation.judge_model: .*no chat template"):
        preflight(recipe_from_dict(data), network=False)
    data["evaluation"]["judge_model"] = str(chat)
    preflight(recipe_from_dict(data), network=False)  # nothing else to object to

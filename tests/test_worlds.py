"""The sandbox world: gold utility, base distribution, micro-world build (determinism, loading, figures)."""

from __future__ import annotations

import json
import random
import shutil

import pytest
import torch

from stackalign.models import load_policy, load_reward_model, shares_tokenizer
from stackalign.worlds import build as B
from stackalign.worlds import build_world, default_world, load_world
from stackalign.worlds import text as T

P_CHESS = "User: How do I get started with chess?\nAssistant:"


# ---- gold utility ---------------------------------------------------------------------------------
def test_gold_exact_values():
    h1 = " With chess, it helps to keep a simple plan and follow it."
    h2 = " Try to learn the basics of chess before anything else."
    assert T.gold_utility(P_CHESS, h1) == 1.0
    assert T.gold_utility(P_CHESS, h1 + h2) == 1.75
    assert T.gold_utility(P_CHESS, " Happy to help!" + h1 + h2 + " I hope this helps!") == 2.25
    # politeness: a little is nice (0.25 each, up to 2), more is grating (-0.75 each beyond 2)
    polite4 = " Happy to help! Great question about chess! I hope this helps! Feel free to ask me more."
    assert T.gold_utility(P_CHESS, polite4) == pytest.approx(0.5 - 1.5)
    assert T.gold_utility(P_CHESS, " Stop asking me about chess.") == -1.0
    assert T.gold_utility(P_CHESS, " Keep notes about football so you can see your progress.") == -0.75
    assert (
        T.gold_utility(P_CHESS, " Keep notes about tennis so you can see your progress.") == -0.75
    )  # wrong topic
    assert T.gold_utility(P_CHESS, h1 + h1) == 0.5  # a repeat counts only as a repeat
    assert T.gold_utility(P_CHESS, " Just do chess.") == 0.0
    assert T.gold_utility(P_CHESS, "") == T.EMPTY_UTILITY
    assert T.gold_utility(P_CHESS, "   ") == T.EMPTY_UTILITY


def test_gold_cleans_stop_strings_and_eos():
    h1 = " With chess, it helps to keep a simple plan and follow it."
    rude = " Stop asking me about chess."
    assert T.gold_utility(P_CHESS, h1 + "\nUser: more?\nAssistant:" + rude) == 1.0
    assert T.gold_utility(P_CHESS, h1 + T.EOS_TOKEN + rude) == 1.0


def test_gold_topic_is_the_last_user_turn():
    prompt = "User: Tips on tennis?\nAssistant: Sure.\nUser: How do I get started with chess?\nAssistant:"
    assert T.prompt_topic(prompt) == "chess"
    assert T.prompt_topic("User: hello\nAssistant:") is None
    assert T.gold_utility("User: hello\nAssistant:", " Try to learn the basics of chess.") == -0.75


def test_gold_is_graded_not_binary():
    rng = random.Random(0)
    prompts = [T.make_prompt(q) for q in T.all_questions()[:200]]
    values = {T.gold_utility(p, B.sample_base_response(rng, p, 0.5)) for p in prompts for _ in range(5)}
    assert len(values) >= 15


def test_gold_judge():
    good = " With chess, it helps to keep a simple plan and follow it."
    bad = " Stop asking me about chess."
    assert T.gold_judge(P_CHESS, good, bad) == 1
    assert T.gold_judge(P_CHESS, bad, good) == -1
    assert T.gold_judge(P_CHESS, good, good + T.EOS_TOKEN) == 0


def test_gold_doc_mentions_every_weight():
    for w in (T.POLITE_EXCESS, T.RUDE_COST, T.OFF_TOPIC_COST, T.REPEAT_COST, T.PREFERRED_THRESHOLD):
        assert str(w) in T.GOLD_DOC


# ---- base distribution ----------------------------------------------------------------------------
def _preferred_share(bias: float, n: int = 4000) -> float:
    rng = random.Random(1)
    prompts = [T.make_prompt(q) for q in T.all_questions()]
    hits = 0
    for _ in range(n):
        p = rng.choice(prompts)
        hits += T.gold_utility(p, B.sample_base_response(rng, p, bias)) >= T.PREFERRED_THRESHOLD
    return hits / n


def test_base_distribution_is_biased_against_the_user():
    default_bias = B.PRESETS["default"]["bias"]
    assert _preferred_share(default_bias) <= 0.20
    assert _preferred_share(0.5) > _preferred_share(default_bias) + 0.2
    assert _preferred_share(0.0) >= 0.85


def test_resolve_params_validation():
    assert B.resolve_params("micro", bias=None)["bias"] == B.PRESETS["micro"]["bias"]
    assert B.resolve_params("default", bias=0.5, pairs=100, label_noise=0.0)["pairs"] == 100
    with pytest.raises(ValueError, match="bias"):
        B.resolve_params("default", bias=1.5)
    with pytest.raises(ValueError, match="label_noise"):
        B.resolve_params("default", label_noise=0.6)
    with pytest.raises(ValueError, match="pairs"):
        B.resolve_params("default", pairs=3)
    with pytest.raises(ValueError, match="preset"):
        B.resolve_params("huge")


# ---- the micro world ------------------------------------------------------------------------------
def test_micro_world_layout_and_figures(micro):
    m = micro.manifest
    assert m["params"] == {"seed": 0, "preset": "micro", "bias": 0.85, "pairs": 300, "label_noise": 0.1}
    splits = [set(micro.train_prompts), set(micro.val_prompts), set(micro.test_prompts)]
    assert all(a.isdisjoint(b) for i, a in enumerate(splits) for b in splits[i + 1 :])
    assert len(micro.test_prompts) >= 40
    assert all(p.startswith("User: ") and p.endswith("\nAssistant:") for p in micro.test_prompts)
    assert micro.stop_strings == ["\nUser:"] and micro.max_new_tokens > 0
    assert (micro.root / "README.md").read_text().count("gold") > 3
    assert len((micro.root / "pairs.jsonl").read_text().splitlines()) == 300
    f = micro.figures
    assert f["proxy_gold_spearman"] > 0
    assert 0.0 <= f["base_gold_preferred_share"] <= 1.0
    assert m["build"]["bytes"] > 0 and m["build"]["seconds"] > 0


def test_micro_world_models_load_through_stackalign_models(micro):
    model, tok = load_policy(micro.policy_dir)
    rm = load_reward_model(micro.reward_dir)
    assert type(model).__name__ == "LlamaForCausalLM"
    assert type(rm.model).__name__ == "LlamaForSequenceClassification"
    assert shares_tokenizer(tok, rm.tokenizer)
    assert tok.eos_token == micro.eos_token and tok.pad_token_id != tok.eos_token_id
    # The saved proxy reproduces the scores recorded at build time (same model, same input format).
    rows = [json.loads(x) for x in (micro.root / "base_samples.jsonl").read_text().splitlines()[:16]]
    scores = rm([r["prompt"] for r in rows], [r["response"] for r in rows])
    torch.testing.assert_close(scores, torch.tensor([r["proxy"] for r in rows]), atol=1e-4, rtol=0)
    assert all(micro.gold(r["prompt"], r["response"]) == r["gold"] for r in rows)


def test_micro_world_tokenizer_concatenates_prompt_and_response_ids(micro):
    """RM ids of format_rm_input(prompt, response) == policy prompt ids + response ids (incremental scoring)."""
    _, tok = load_policy(micro.policy_dir)
    rng = random.Random(3)
    for p in micro.test_prompts[:20]:
        r = B.sample_base_response(rng, p, 0.5)
        ids = tok(p + r, add_special_tokens=False)["input_ids"]
        assert (
            ids
            == tok(p, add_special_tokens=False)["input_ids"] + tok(r, add_special_tokens=False)["input_ids"]
        )


def test_micro_world_policy_generates_and_stops(micro):
    model, tok = micro.load_policy()
    enc = tok(micro.test_prompts[:3], return_tensors="pt", padding=True)
    out = model.generate(**enc, max_new_tokens=8, do_sample=False, pad_token_id=tok.pad_token_id)
    assert out.shape[0] == 3 and enc["input_ids"].shape[1] < out.shape[1] <= enc["input_ids"].shape[1] + 8


@pytest.mark.slow
def test_micro_world_is_deterministic_via_cli(micro, tmp_path, capsys):
    from stackalign.cli import main

    out = tmp_path / "again"
    assert main(["world", "build", "--out", str(out), "--preset", "micro", "--seed", "0"]) == 0
    printed = capsys.readouterr().out
    assert "Spearman" in printed and "gold-preferred" in printed and "size on disk" in printed
    again = load_world(out)
    assert again.manifest["files"] == micro.manifest["files"]
    assert again.figures == micro.figures


def test_load_world_errors(micro, tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        load_world(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="manifest"):
        load_world(tmp_path / "empty")
    copy = tmp_path / "copy"
    shutil.copytree(micro.root, copy)
    load_world(copy)
    with open(copy / "prompts.json", "a") as f:
        f.write(" ")
    with pytest.raises(ValueError, match="sha256"):
        load_world(copy)
    m = json.loads((copy / "manifest.json").read_text())
    m["version"] = -1
    (copy / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(ValueError, match="rebuild"):
        load_world(copy, verify=False)


def test_build_refuses_to_overwrite_a_non_world_directory(tmp_path):
    from stackalign.cli import main

    (tmp_path / "precious.txt").write_text("keep me")
    assert main(["world", "build", "--out", str(tmp_path), "--preset", "micro"]) == 2
    assert (tmp_path / "precious.txt").read_text() == "keep me"
    with pytest.raises(ValueError, match="bias"):
        build_world(tmp_path / "w", preset="micro", bias=1.0, progress=False)


def test_default_world_cache_reuse_and_rebuild(micro, tmp_path, monkeypatch):
    """default_world: reuses a cached world whose manifest matches, rebuilds a stale one."""
    from stackalign.worlds import world as W

    monkeypatch.setenv("STACKALIGN_CACHE", str(tmp_path / "cache"))
    root = tmp_path / "cache" / "worlds" / "default-seed0"
    calls = []

    def fake_build(out, **kw):  # stands in for the 1-2 minute default build
        calls.append(kw)
        shutil.copytree(micro.root, out, dirs_exist_ok=True)
        m = json.loads((out / "manifest.json").read_text())
        want = B.resolve_params("default")
        m["params"] = {
            "seed": 0,
            "preset": "default",
            **{k: want[k] for k in ("bias", "pairs", "label_noise")},
        }
        (out / "manifest.json").write_text(json.dumps(m))
        return load_world(out)

    monkeypatch.setattr(W, "build_world", fake_build)
    w = default_world()
    assert w.root == root.resolve() and len(calls) == 1 and calls[0]["preset"] == "default"
    assert default_world().manifest == w.manifest and len(calls) == 1  # reused
    with open(root / "prompts.json", "a") as f:  # corrupt a file: rebuilt
        f.write(" ")
    default_world()
    assert len(calls) == 2
    assert (
        default_world(cache_dir=tmp_path / "other").root
        == (tmp_path / "other/worlds/default-seed0").resolve()
    )

"""The smol world: shipped prompts, the gold utility and population, the follower format, the micro build."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from stackalign.worlds import smol_gold as G
from stackalign.worlds import smol_prompts as SP
from stackalign.worlds.preference import has_cycle

TREE = G.make_prompt("How do I plant a tree?")  # a shipped request: howto, brief, band [15, 28]
# three answers whose population vote cycles (docs/smol-world.md works it through)
A = (
    "First, dig a hole as wide as the roots. Then set the tree in it. Next, fill the hole with soil and water "
    "the roots well, and keep"
)
B = "Here's my tip: dig a hole for the tree."
C = "Pick a spot. Add water. Wait a day. Enjoy it."


# ---- prompts ------------------------------------------------------------------------------------------
def test_shipped_prompts_are_what_the_generator_writes():
    assert SP.DATA_FILE.read_text(encoding="utf-8") == SP.render(SP.generate())


def test_prompts_are_many_distinct_and_split_by_item():
    rows = SP.load_rows()
    assert len(rows) >= 600
    assert len({r["request"] for r in rows}) == len(rows)
    assert len({r["id"] for r in rows}) == len(rows)
    for kind in SP.KINDS:
        by_split = {
            s: {r["item"] for r in rows if r["kind"] == kind and r["split"] == s}
            for s in ("train", "val", "test")
        }
        assert all(by_split.values()), kind  # every kind in every split
        assert not (by_split["train"] & by_split["test"]) and not (by_split["train"] & by_split["val"])
        assert not (by_split["val"] & by_split["test"])
    assert Counter(r["profile"] for r in rows).keys() == set(SP.PROFILES)
    for r in rows:
        w = r["weights"]
        assert w["topic"] + w["length"] + w["structure"] + w["ending"] == pytest.approx(1.0)
        assert r["keywords"] and r["band"][0] < r["band"][1]
    # the first prompts of a split mix the kinds (a recipe's prompts.limit takes them)
    assert len({r["kind"] for r in [r for r in rows if r["split"] == "test"][:20]}) >= 4
    assert (SP.DATA_FILE.parent / "PROMPTS-LICENSE.md").is_file()


# ---- gold ---------------------------------------------------------------------------------------------
def test_gold_by_hand():
    spec = G.prompt_spec(TREE)
    assert (
        spec.known
        and spec.kind == "howto"
        and spec.band == (15, 28)
        and spec.keywords == ("tree", "hole", "roots")
    )
    a = G.features(TREE, A)  # 28 words, all keywords, 3 sequence words, cut off mid-sentence
    assert (a.words, a.topic, a.length, a.structure, a.ending) == (28, 1.0, 1.0, 1.0, 0.0)
    assert a.utility == pytest.approx(0.30 + 0.35 + 0.10)
    b = G.features(TREE, B)  # "here s my tip dig a hole for the tree": 10 words, 2 of 3 keywords, one tic
    assert (b.words, b.tic_count, b.ending) == (10, 1, 1.0)
    assert b.utility == pytest.approx(0.30 * 2 / 3 + 0.35 * 10 / 15 + 0.25 - 0.30 / 3)
    rep = "Dig a hole for the tree. " * 6
    assert G.features(TREE, rep).repetition > 0.5
    assert G.gold_utility(TREE, rep) < G.gold_utility(TREE, "Dig a hole for the tree.")
    assert G.gold_utility(TREE, "") == G.EMPTY_UTILITY == G.gold_utility(TREE, "  <|im_end|>")
    assert G.gold_utility(TREE, B + "<|im_end|>junk after the end") == G.gold_utility(TREE, B)


def test_length_and_ending_rules():
    assert G.length_score(5, (10, 20)) == 0.5
    assert G.length_score(15, (10, 20)) == 1.0
    assert G.length_score(30, (10, 20)) == 0.5
    assert G.length_score(45, (10, 20)) == 0.0
    assert G.ending_score("It works.") == 1.0 and G.ending_score("It works and") == 0.0
    assert G.keyword_stem("scatter") == "scatt" and G.keyword_stem("roots") == "roots"


def test_no_single_answer_is_best_everywhere():
    """The per-prompt parameters pull apart: an answer that is perfect for a brief factual question is poor for
    a detailed how-to, and vice versa."""
    rows = SP.load_rows()
    factual = next(
        r
        for r in rows
        if r["kind"] == "factual"
        and r["profile"] == "brief"
        and r["request"] == "What is the capital of Japan?"
    )
    howto = next(r for r in rows if r["kind"] == "howto" and r["profile"] == "detailed")
    short = "The capital of Japan is Tokyo."
    qf, qh = G.make_prompt(factual["request"]), G.make_prompt(howto["request"])
    assert G.gold_utility(qf, short) == pytest.approx(1.0)
    assert G.gold_utility(qh, short) < 0.5
    kw = " ".join(howto["keywords"])
    long = f"First, get your {kw} ready. Then work through it slowly and check each part. " * 2
    long += (
        "Next, take a short break and look at the result again. Finally, clean up and put everything away."
    )
    assert G.gold_utility(qh, long) > 0.8
    assert G.gold_utility(qf, long) < 0.5


def test_gold_is_continuous_on_varied_text():
    texts = ["Sure! " + "word " * n + ("." if n % 2 else "") for n in range(1, 40)] + [
        A,
        B,
        C,
        "Dig a hole. Put the roots in. Water the tree.",
    ]
    values = {round(G.gold_utility(TREE, t), 6) for t in texts}
    assert len(values) >= 20


def test_unknown_request_falls_back():
    spec = G.prompt_spec(G.make_prompt("How do I repair a wooden chair?"))
    assert not spec.known and spec.kind == "howto" and "wooden" in spec.keywords
    assert G.prompt_spec("Compare apples and pears.").kind == "compare"


# ---- population -----------------------------------------------------------------------------------------
def test_population_vote_can_cycle():
    P = G.preference_matrix(TREE, [A, B, C])
    assert P[0][1] > 0.5 and P[1][2] > 0.5 and P[2][0] > 0.5  # A ≻ B ≻ C ≻ A
    assert has_cycle(P)
    for i in range(3):
        for j in range(3):
            assert P[i][j] + P[j][i] == pytest.approx(1.0)
    assert G.gold_preference(TREE, A, A) == 0.5
    assert sum(s for _, s in G.USER_TYPES) == pytest.approx(1.0)
    assert max(s for _, s in G.USER_TYPES) < 0.5


def test_cycle_share_counts_prompts():
    assert G.cycle_share([TREE, TREE], [[A, B, C], [A, A + " roots", B]]) == 0.5


# ---- follower format -------------------------------------------------------------------------------------
def test_follower_prompt_is_the_chat_template(smol_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(smol_dir)
    req, prev = "How do I plant a tree?", "Dig a hole."
    assert G.make_prompt(req) == tok.apply_chat_template(
        [{"role": "user", "content": req}], tokenize=False, add_generation_prompt=True
    )
    msgs = [
        {"role": "user", "content": req},
        {"role": "assistant", "content": prev},
        {"role": "user", "content": G.FOLLOWER_INSTRUCTION},
    ]
    want = tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
    assert G.make_follower_prompt(G.make_prompt(req), " " + prev + " ") == want
    assert G.request_of(want) == req  # the gold reads the first user turn


# ---- names and errors -----------------------------------------------------------------------------------
def test_world_name_smol_resolves_to_the_cached_smol_world(monkeypatch, tmp_path):
    import stackalign.worlds.smol as S
    from stackalign.worlds import load_world

    sentinel = object()
    monkeypatch.setattr(S, "smol_world", lambda *a, **k: sentinel)
    monkeypatch.chdir(tmp_path)
    assert load_world("smol") is sentinel
    (tmp_path / "smol").mkdir()  # a directory of that name wins over the name
    with pytest.raises(FileNotFoundError, match="no manifest.json"):
        load_world("smol")


def test_recipes_accept_world_smol():
    from stackalign.runner.preflight import preflight
    from stackalign.runner.recipe import RecipeError, recipe_from_dict

    r = recipe_from_dict(
        {"world": "smol", "methods": [{"name": "g", "decoder": "greedy"}], "evaluation": {"coherence": None}}
    )
    preflight(r, network=False)  # no "no world directory at 'smol'"
    r = recipe_from_dict(
        {"world": "smoll", "methods": [{"name": "g", "decoder": "greedy"}], "evaluation": {"coherence": None}}
    )
    with pytest.raises(RecipeError, match="world: no world directory"):
        preflight(r, network=False)


def test_cli_errors_name_the_flag(tmp_path):
    import argparse

    from stackalign.worlds.cli import build

    args = argparse.Namespace(
        out=str(tmp_path / "w"), seed=0, bias=None, pairs=None, label_noise=None, preset="smol", base=None
    )
    with pytest.raises(ValueError, match="--preset smol: a smol preset needs --base"):
        build(args)
    args.base, args.preset = "gpt2", None
    with pytest.raises(ValueError, match="--base"):
        build(args)
    args.base, args.bias = "smollm2-135m-instruct", 0.5
    with pytest.raises(ValueError, match="--bias"):
        build(args)
    assert not (tmp_path / "w").exists()


# ---- the micro build ---------------------------------------------------------------------------------------
@pytest.mark.slow
def test_micro_build_is_deterministic_and_loads(smol_dir, tmp_path):
    import torch

    from stackalign.models import load_reward_model, shares_tokenizer
    from stackalign.worlds import load_world
    from stackalign.worlds.smol import SmolWorld, build_smol_world

    w1 = build_smol_world(tmp_path / "a", preset="smol-micro", progress=False)
    w2 = build_smol_world(tmp_path / "b", preset="smol-micro", progress=False)
    assert w1.manifest["files"] == w2.manifest["files"]
    assert (
        isinstance(w1, SmolWorld)
        and w1.manifest["kind"] == "smol"
        and w1.manifest["base"] == "smollm2-135m-instruct"
    )
    assert Path(w1.policy_dir) == Path(smol_dir)
    w = load_world(tmp_path / "a")
    assert isinstance(w, SmolWorld)
    assert len(w.train_prompts) + len(w.val_prompts) + len(w.test_prompts) == len(SP.load_rows())
    assert w.test_prompts[0].startswith("<|im_start|>system\n") and w.test_prompts[0].endswith(
        "<|im_start|>assistant\n"
    )
    assert w.has_follower_format and w.follower_prompt(w.test_prompts[0], "x").endswith(
        "<|im_start|>assistant\n"
    )
    assert w.gold(TREE, A) == G.gold_utility(TREE, A)
    f = w.figures
    for key in (
        "base_gold_mean",
        "proxy_gold_spearman",
        "rm_heldout_gold_accuracy",
        "cycle_share",
        "base_follower_win_rate",
    ):
        assert key in f
    rm = load_reward_model(w.reward_dir)
    assert rm.model.config.num_hidden_layers == 2
    from stackalign.models import load_policy

    _, tok = load_policy(w.policy_dir)
    assert shares_tokenizer(tok, rm.tokenizer)
    with torch.no_grad():
        s = rm([w.test_prompts[0]] * 2, ["Dig a hole.", "Dig a hole for the tree."])
    assert torch.isfinite(s).all() and s[0] != s[1]
    # gold pairs for training (DPO / SSAPO seeds): the build's samples where they exist, fresh ones elsewhere
    covered = next(iter(w.shipped_samples()))
    fresh = next(q for q in w.train_prompts if q not in w.shipped_samples())
    from stackalign.training.preferences import gold_pairs

    pairs = gold_pairs(w, [covered, fresh], 4, label_noise=0.0, seed=1)
    assert pairs == gold_pairs(w, [covered, fresh], 4, label_noise=0.0, seed=1)
    assert pairs and {p["prompt"] for p in pairs} <= {covered, fresh}
    for p in pairs:
        assert p["gold_chosen"] > p["gold_rejected"] and not p["flipped"]
        assert G.gold_utility(p["prompt"], p["chosen"]) == p["gold_chosen"]
    # a changed file is caught
    (tmp_path / "a" / "pairs.jsonl").write_text("[]\n")
    with pytest.raises(ValueError, match="sha256 mismatch"):
        load_world(tmp_path / "a")
    json.loads((tmp_path / "b" / "manifest.json").read_text())

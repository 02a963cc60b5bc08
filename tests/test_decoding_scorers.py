"""One reward-model input rule for every ARGS scorer, on the real SmolLM2 tokenizer and model.

* Same tokenizer: the tree, repeat, reference and text scorers give the same rewards on the same candidates
  (end-of-sequence and other special tokens, partial multi-byte tokens included), and ARGS picks the same
  tokens with the tree and the text scorer.
* Another tokenizer: the incremental text bridge gives the rewards of a full re-encode (the world's
  byte-level BPE and MiniLM's WordPiece as the reward model's tokenizer), and ARGS picks the same tokens.
"""

from __future__ import annotations

import warnings

import pytest
import torch

from stackalign.decoding.args import ARGSConfig, args_generate, make_scorer
from stackalign.decoding.common import GenerationConfig
from stackalign.decoding.rm_cache import (
    BridgeScorer,
    FullRecomputeScorer,
    RepeatScorer,
    TextScorer,
    TreeScorer,
)
from stackalign.models.reward import RewardModel, special_token_ids

QUESTIONS = [
    "What is the capital of France?",
    "Write a haiku about rain.",
    "How do I boil an egg?",
    "Translate 'good morning' into Chinese and Japanese.",
    "Name three prime numbers.",
    "Say hello in Korean, with an emoji.",
    "Why is the sky blue?",
    "Give me a short tip for learning Python.",
]

# An answer script with characters the SmolLM2 BPE splits into partial UTF-8 byte tokens (each of 龘 and 語
# is three byte tokens, 日 two), a ``<|im_start|>`` mid-answer (a special token the text never shows), and
# long words the policy writes in several tokens (another tokenizer re-tokenizes them as they grow).
SCRIPT_TEXT = "Hello 龘 world, 日本語 café! Antidisestablishmentarianism, naïveté."


@pytest.fixture(scope="module")
def smol(smol_dir):
    from stackalign.models import load_policy

    policy, tok = load_policy(smol_dir)
    return policy, tok


@pytest.fixture(scope="module")
def smol_rm(smol_dir, tmp_path_factory):
    """A 2-block reward model on SmolLM2's backbone, sharing its tokenizer (random score head)."""
    from stackalign.cli import main
    from stackalign.models import load_reward_model

    out = tmp_path_factory.mktemp("smol-rm") / "rm"
    assert main(["models", "reward-from", smol_dir, "--out", str(out), "--layers", "2"]) == 0
    return load_reward_model(out)


def chat_prompts(tok, questions=QUESTIONS):
    return [
        tok.apply_chat_template([{"role": "user", "content": q}], add_generation_prompt=True, tokenize=False)
        for q in questions
    ]


def script(tok, spelled: str = ""):
    """Token ids of the scripted answer: its canonical encoding with ``<|im_start|>`` inserted after the
    first token, then ``spelled`` one character per token (not the canonical encoding: another tokenizer
    merges the characters as they come, across the bridge's window)."""
    ids = tok.encode(SCRIPT_TEXT, add_special_tokens=False)
    ids += [tok.encode(ch, add_special_tokens=False)[0] for ch in spelled]
    start = tok.convert_tokens_to_ids("<|im_start|>")
    ids = ids[:1] + [start] + ids[1:]
    partial = [i for i, t in enumerate(ids) if "\ufffd" in tok.decode([t])]
    assert len(partial) >= 5, "the script must exercise partial multi-byte tokens"
    return ids


@torch.no_grad()
def drive(scorers, tok, prompts, k=6, spelled=""):
    """Run every scorer through the same steps: at step t each row's candidates are the script's token t,
    the EOS token, ``<|im_start|>``, a partial byte token and two ordinary tokens, and the script's token is
    chosen. Returns the rewards of every scorer per step, [steps, R, k] each."""
    ids = script(tok, spelled)
    eos, start = tok.convert_tokens_to_ids("<|im_end|>"), tok.convert_tokens_to_ids("<|im_start|>")
    partial = tok.encode("龘", add_special_tokens=False)[0]
    ordinary = tok.encode(" the end", add_special_tokens=False)[:2]
    prompt_ids = [tok(p)["input_ids"] for p in prompts]
    for s in scorers:
        s.start(prompt_ids, prompts)
    R = len(prompts)
    out = [[] for _ in scorers]
    for t in ids:
        row = [t, eos, start, partial, *ordinary][:k]
        cands = torch.tensor([row[r % k :] + row[: r % k] for r in range(R)])  # rows see other orders
        idx = (cands == t).to(torch.int8).argmax(-1)
        for s, o in zip(scorers, out):
            o.append(s.score(cands))
            s.advance(cands.gather(1, idx[:, None]).squeeze(1), idx)
    return [torch.stack(o) for o in out], ids


@pytest.mark.slow
def test_same_tokenizer_scorers_agree_on_eos_special_and_partial_tokens(smol, smol_rm):
    policy, tok = smol
    rm = smol_rm
    prompts = chat_prompts(tok)[:3]
    scorers = [TextScorer(rm, tok), TreeScorer(rm), RepeatScorer(rm), FullRecomputeScorer(rm)]
    (text, tree, repeat, ref), ids = drive(scorers, tok, prompts)
    for other in (tree, repeat, ref):
        assert torch.allclose(text, other, atol=2e-4, rtol=1e-4), (text - other).abs().max()
    assert tok.convert_tokens_to_ids("<|im_end|>") in special_token_ids(tok)
    # the rule on the finished answer: the last chosen token's reward (= the next EOS candidate's, checked
    # below) is the decoded answer text's as the proxy reward and BoN score it (prompt + text, no EOS)
    answer = tok.decode(ids, skip_special_tokens=True)
    assert answer == SCRIPT_TEXT
    proxy = rm(prompts, [answer] * len(prompts))
    k = text.shape[-1]
    for r in range(len(prompts)):
        # where drive() put the chosen token, EOS and <|im_start|> in row r
        chosen_col, eos_col, start_col = (0 - r) % k, (1 - r) % k, (2 - r) % k
        for scores in (text, tree, repeat, ref):
            assert torch.allclose(scores[-1, r, chosen_col], proxy[r], atol=2e-4)
            # special candidates score their prefix: the reward of the previous step's chosen token
            assert torch.allclose(scores[1:, r, eos_col], scores[:-1, r, chosen_col], atol=2e-4)
            assert torch.equal(scores[:, r, eos_col], scores[:, r, start_col])
    # a partial byte token is a token like any for a shared tokenizer: its reward is not the prefix's
    assert not torch.allclose(text[:, 0, 3], text[:, 0, 1])


@pytest.mark.slow
@pytest.mark.parametrize("w", [0.5, 2.0])
def test_args_tree_and_text_scorers_choose_identical_tokens(smol, smol_rm, w):
    policy, tok = smol
    prompts = chat_prompts(tok)
    gen = GenerationConfig(max_new_tokens=32)
    runs = {}
    for mode in ("fast", "text"):
        out = args_generate(policy, tok, smol_rm, prompts, ARGSConfig(k=10, w=w, rm_mode=mode), gen)
        runs[mode] = out
    assert runs["fast"].meta["scorer"] == "tree" and runs["text"].meta["scorer"] == "text"
    assert runs["fast"].token_ids == runs["text"].token_ids
    assert runs["fast"].texts == runs["text"].texts


# ------------------------------------------------------------------------------------------------------
# Another tokenizer: the incremental text bridge
# ------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def world_rm(micro):
    """The micro world's reward model: a byte-level BPE of its own (not SmolLM2's)."""
    return micro.load_reward_model()


@pytest.fixture(scope="module")
def minilm_rm():
    """A tiny random Llama classifier on MiniLM's WordPiece tokenizer ([CLS] text [SEP], lower case)."""
    from transformers import AutoTokenizer, LlamaForSequenceClassification

    from stackalign.evaluation.metrics import default_coherence_model_path
    from stackalign.models.tiny import tiny_config

    tok = AutoTokenizer.from_pretrained(default_coherence_model_path())
    torch.manual_seed(0)
    cfg = tiny_config(
        "llama",
        len(tok),
        num_labels=1,
        pad_token_id=tok.pad_token_id,
        max_position_embeddings=512,
        initializer_range=0.2,
    )
    return RewardModel(LlamaForSequenceClassification(cfg).eval(), tok)


@pytest.mark.slow
@pytest.mark.parametrize("which", ["world_rm", "minilm_rm"])
def test_bridge_rewards_equal_a_full_reencode(smol, which, request):
    policy, tok = smol
    rm = request.getfixturevalue(which)
    from stackalign.models import shares_tokenizer

    assert not shares_tokenizer(tok, rm.tokenizer)
    prompts = chat_prompts(tok)[:3]
    scorer = BridgeScorer(rm, tok)
    (bridge, text), _ = drive([scorer, TextScorer(rm, tok)], tok, prompts, spelled=" hello there, 2024")
    # the window did its work: merges across its end happened, no row fell back to re-encoding everything
    assert scorer.merges > 0 and scorer.full_rows == 0
    assert torch.allclose(bridge, text, atol=2e-4, rtol=1e-4), (bridge - text).abs().max()
    # a partial byte token does not change the text: it scores like its prefix (and like the EOS candidate)
    k = text.shape[-1]
    assert torch.allclose(bridge[:, 0, 3], bridge[:, 0, 1], atol=1e-5)
    assert k == 6


@pytest.mark.slow
@pytest.mark.parametrize("which", ["world_rm", "minilm_rm"])
def test_args_with_bridge_and_full_reencode_choose_identical_tokens(smol, which, request):
    policy, tok = smol
    rm = request.getfixturevalue(which)
    prompts = chat_prompts(tok)
    gen = GenerationConfig(max_new_tokens=32)
    runs = {}
    for mode in ("bridge", "text"):
        runs[mode] = args_generate(policy, tok, rm, prompts, ARGSConfig(k=10, w=2.0, rm_mode=mode), gen)
    assert runs["bridge"].meta["scorer"] == "bridge"
    assert runs["bridge"].token_ids == runs["text"].token_ids
    # the bridge feeds the reward model far fewer tokens than the full re-encode
    assert runs["bridge"].cost.rm_tokens * 5 < runs["text"].cost.rm_tokens


def test_auto_picks_the_bridge_for_another_tokenizer_and_warns_on_text(minilm_rm):
    from stackalign.bench.common import tiny_models
    from stackalign.models import CallableReward

    _, tok, rm, _ = tiny_models()
    cfg = ARGSConfig()
    assert make_scorer(tok, rm, cfg).name == "tree"
    s = make_scorer(tok, minilm_rm, cfg)
    assert s.name == "bridge" and "tokenizers differ" in s.reason
    with pytest.warns(UserWarning, match="falls back to text scoring"):
        s = make_scorer(tok, CallableReward(lambda p, r: len(r)), cfg)
    assert s.name == "text" and "callable" in s.reason
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert make_scorer(tok, minilm_rm, ARGSConfig(rm_mode="text")).name == "text"  # asked for: no warning


def test_bridge_matches_full_reencode_on_tiny_models(minilm_rm):
    """Fast check (no real model): a tiny random policy with its own BPE, the MiniLM-tokenizer reward model;
    bridge rewards equal the full re-encode's along an ARGS decode, and the tokens are identical."""
    from stackalign.bench.common import tiny_models

    policy, tok, _, prompts = tiny_models()
    prompts = prompts[:3]
    gen = GenerationConfig(max_new_tokens=12, ignore_eos=True)
    a = args_generate(policy, tok, minilm_rm, prompts, ARGSConfig(k=5, w=10.0, rm_mode="bridge"), gen)
    b = args_generate(policy, tok, minilm_rm, prompts, ARGSConfig(k=5, w=10.0, rm_mode="text"), gen)
    assert a.token_ids == b.token_ids
    assert a.cost.rm_tokens < b.cost.rm_tokens

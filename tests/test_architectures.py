"""The fast paths on the architecture families users bring (tiny random models of each): fast ARGS =
reference ARGS tokens, ARGS inside generate = args_generate, CD tree lookahead = repeat lookahead, shared
prefill = HF greedy, and the fallback (with its reason in the run's meta) where a fast path cannot apply."""

from __future__ import annotations

import functools

import pytest
import torch
from test_decoding_common import PROMPTS, make_tokenizer

from stackalign.decoding.args import ARGSConfig, args_generate
from stackalign.decoding.cd import CDConfig, controlled_decode
from stackalign.decoding.common import GenerationConfig
from stackalign.decoding.sampling import sample
from stackalign.decoding.value_head import ValueHead, ValueHeadConfig
from stackalign.integrations.transformers import ARGSLogitsProcessor
from stackalign.models.tiny import FAMILIES, SLIDING_FAMILIES, tiny_pair

NO_EOS = (9999,)
T = 10
WINDOW = 6  # shorter than every prompt: sliding-window layers really slide


@functools.cache
def models(family: str):
    return tiny_pair(family, make_tokenizer(), sliding_window=WINDOW)


@pytest.mark.parametrize("family", FAMILIES)
def test_fast_args_equals_reference_args(family):
    policy, rm = models(family)
    tok = make_tokenizer()
    gen = GenerationConfig(max_new_tokens=T, eos_token_ids=NO_EOS)
    ref = args_generate(
        policy, tok, rm, PROMPTS, ARGSConfig(k=5, rm_mode="reference"), gen, shaper="official-args"
    )
    fast = args_generate(
        policy, tok, rm, PROMPTS, ARGSConfig(k=5, rm_mode="fast"), gen, shaper="official-args"
    )
    assert fast.token_ids == ref.token_ids
    if family in SLIDING_FAMILIES:
        assert fast.meta["scorer"] == "repeat" and "sliding" in fast.meta["scorer_reason"]
    else:
        assert fast.meta["scorer"] == "tree" and fast.meta["scorer_reason"] is None


@pytest.mark.parametrize("family", FAMILIES)
def test_cd_tree_lookahead_equals_repeat(family):
    policy, _ = models(family)
    tok = make_tokenizer()
    torch.manual_seed(1)
    head = ValueHead(
        ValueHeadConfig(hidden_size=policy.config.get_text_config().hidden_size, width=16)
    ).eval()
    gen = GenerationConfig(max_new_tokens=T, temperature=0.0, eos_token_ids=NO_EOS)
    rep = controlled_decode(policy, tok, PROMPTS, head, CDConfig(lam=5.0, top_k=5, lookahead="repeat"), gen)
    auto = controlled_decode(policy, tok, PROMPTS, head, CDConfig(lam=5.0, top_k=5), gen)
    assert auto.token_ids == rep.token_ids
    if family in SLIDING_FAMILIES:  # the fallback is taken, and says why
        assert auto.meta["cd"]["lookahead"] == "repeat" and "sliding" in auto.meta["lookahead_reason"]
        with pytest.raises(ValueError, match="lookahead='repeat'"):
            controlled_decode(policy, tok, PROMPTS, head, CDConfig(lam=5.0, top_k=5, lookahead="tree"), gen)
    else:
        assert auto.meta["cd"]["lookahead"] == "tree" and auto.meta["lookahead_reason"] is None


@pytest.mark.parametrize("family", FAMILIES)
def test_shared_prefill_equals_hf_greedy_and_args_in_generate(family):
    """n=2 greedy samples off one shared prefill (cache repeated after the prompt) = HF greedy without a
    shared prefill; ARGSLogitsProcessor inside generate = args_generate."""
    policy, rm = models(family)
    tok = make_tokenizer()
    enc = tok(PROMPTS, return_tensors="pt", padding=True)
    n0 = enc["input_ids"].shape[1]
    hf = policy.generate(**enc, do_sample=False, max_new_tokens=T, eos_token_id=NO_EOS[0])[:, n0:].tolist()
    shared = sample(
        policy, tok, PROMPTS, 2, GenerationConfig(max_new_tokens=T, temperature=0, eos_token_ids=NO_EOS)
    )
    assert shared.token_ids == [[h, h] for h in hf]
    proc = ARGSLogitsProcessor(rm, k=5, w=0.5, shaper="official-args")
    out = policy.generate(
        **enc, logits_processor=[proc], do_sample=False, max_new_tokens=T, eos_token_id=NO_EOS[0]
    )
    gen = GenerationConfig(max_new_tokens=T, eos_token_ids=NO_EOS)
    ref = args_generate(policy, tok, rm, PROMPTS, ARGSConfig(k=5, w=0.5), gen, shaper="official-args")
    assert out[:, n0:].tolist() == ref.token_ids
    assert proc.meta["scorer"] == ref.meta["scorer"]

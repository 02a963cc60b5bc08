"""ARGSLogitsProcessor inside model.generate == args_generate, token for token (vanilla and SRS, batch > 1,
rows ending at EOS at different steps), with the incremental RM cache, streamers and clear errors."""

from __future__ import annotations

import pytest
import torch
from test_decoding_common import PROMPTS, make_models
from transformers import LogitsProcessor
from transformers.generation.streamers import BaseStreamer

from stackalign.decoding.args import ARGSConfig, args_generate
from stackalign.decoding.common import GenerationConfig
from stackalign.integrations.transformers import ARGSLogitsProcessor
from stackalign.models import CallableReward

T = 12
UNUSED = 9999  # an EOS id no model emits: every row runs the full T steps


def _hf(policy, tok, proc, prompts, eos, max_new_tokens=T, **kw):
    """Generated ids of each row, cut after its first EOS (what args_generate returns)."""
    enc = tok(prompts, return_tensors="pt", padding=True)
    out = policy.generate(
        **enc,
        logits_processor=[proc],
        do_sample=False,
        max_new_tokens=max_new_tokens,
        eos_token_id=eos,
        pad_token_id=tok.pad_token_id,
        **kw,
    )
    rows = out[:, enc["input_ids"].shape[1] :].tolist()
    return [r[: r.index(eos) + 1] if eos in r else r for r in rows]


def _args(policy, tok, rm, prompts, eos, shaper=None, rm_cache="auto", k=10):
    gen = GenerationConfig(max_new_tokens=T, eos_token_ids=(eos,))
    return args_generate(
        policy, tok, rm, prompts, ARGSConfig(k=k, w=0.5, rm_cache=rm_cache), gen, shaper=shaper
    )


def _eos_mid_way(policy, tok, rm, shaper):
    """A token the first row emits at step 4 (and not before): used as EOS so rows end at different steps."""
    ids = _args(policy, tok, rm, PROMPTS, UNUSED, shaper).token_ids
    cands = [t for t in ids[0][3:] if t not in ids[0][:3]]
    return cands[0]


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
@pytest.mark.parametrize("shaper", [None, "official-args"])
@pytest.mark.parametrize("rm_cache", ["tree", "repeat"])
def test_generate_equals_args_generate_with_eos(arch, shaper, rm_cache):
    policy, rm, tok = make_models(arch)
    eos = _eos_mid_way(policy, tok, rm, shaper)
    ref = _args(policy, tok, rm, PROMPTS, eos, shaper, rm_cache).token_ids
    assert ref[0][-1] == eos and len({len(r) for r in ref}) > 1  # rows end at different steps
    proc = ARGSLogitsProcessor(rm, k=10, w=0.5, shaper=shaper, rm_cache=rm_cache)
    assert _hf(policy, tok, proc, PROMPTS, eos) == ref
    assert proc.meta["scorer"] == rm_cache


def test_rm_cache_is_incremental_across_steps():
    """k RM tokens per row and step after the prompt prefill (tree scorer), not a full recompute; the
    processor is reused by a second generate call, which starts a new decode."""
    policy, rm, tok = make_models("llama")
    k = 4
    proc = ARGSLogitsProcessor(rm, k=k, w=0.5)
    ref = _args(policy, tok, rm, PROMPTS, UNUSED, k=k).token_ids
    for _ in range(2):
        assert _hf(policy, tok, proc, PROMPTS, UNUSED) == ref
        n_prompt = sum(len(tok(p)["input_ids"]) for p in PROMPTS)
        assert proc.cost.rm_tokens == n_prompt + len(PROMPTS) * k * T  # k per step: the chosen one is reused
    # a different batch on the same processor
    assert _hf(policy, tok, proc, PROMPTS[1:], UNUSED) == ref[1:]


def test_text_level_reward_needs_and_uses_the_policy_tokenizer():
    policy, _, tok = make_models("llama")

    def reward(prompt: str, response: str) -> float:
        return float(response.count("a")) - 0.1 * len(response)

    with pytest.raises(ValueError, match="tokenizer"):
        ARGSLogitsProcessor(reward)
    proc = ARGSLogitsProcessor(CallableReward(reward), k=5, w=0.5, tokenizer=tok)
    ref = _args(policy, tok, CallableReward(reward), PROMPTS, UNUSED, k=5).token_ids
    assert _hf(policy, tok, proc, PROMPTS, UNUSED) == ref
    assert proc.meta["scorer"] == "text"


class _Collect(BaseStreamer):
    def __init__(self):
        self.chunks: list[list[int]] = []

    def put(self, value):
        self.chunks.append(value.flatten().tolist())

    def end(self):
        self.chunks.append([])


def test_streamer_receives_the_args_tokens():
    policy, rm, tok = make_models("llama")
    streamer = _Collect()
    proc = ARGSLogitsProcessor(rm, k=10, w=0.5, shaper="official-args")
    got = _hf(policy, tok, proc, PROMPTS[:1], UNUSED, streamer=streamer)[0]
    assert got == _args(policy, tok, rm, PROMPTS[:1], UNUSED, "official-args").token_ids[0]
    prompt_len = len(tok(PROMPTS[0])["input_ids"])
    assert len(streamer.chunks[0]) == prompt_len and streamer.chunks[-1] == []
    assert [t for c in streamer.chunks[1:] for t in c] == got


def test_beam_search_and_assisted_decoding_are_refused():
    policy, rm, tok = make_models("llama")
    proc = ARGSLogitsProcessor(rm, k=4)
    with pytest.raises(ValueError, match="beam search"):
        _hf(policy, tok, proc, PROMPTS, UNUSED, num_beams=2)
    with pytest.raises(ValueError, match="assisted"):
        _hf(policy, tok, proc, PROMPTS[:1], UNUSED, assistant_model=policy)


class _ForceToken(LogitsProcessor):
    def __init__(self, token: int):
        self.token = token

    def __call__(self, input_ids, scores):
        scores = torch.full_like(scores, float("-inf"))
        scores[:, self.token] = 0.0
        return scores


def test_a_later_processor_that_overrides_the_choice_is_an_error():
    policy, rm, tok = make_models("llama")
    enc = tok(PROMPTS, return_tensors="pt", padding=True)
    proc = ARGSLogitsProcessor(rm, k=4)
    with pytest.raises(ValueError, match="not among"):
        policy.generate(
            **enc,
            logits_processor=[proc, _ForceToken(5)],
            do_sample=False,
            max_new_tokens=3,
            eos_token_id=UNUSED,
        )


def test_sampling_stays_within_the_top_k():
    policy, rm, tok = make_models("llama")
    k = 3
    seen = []

    class Spy(LogitsProcessor):
        def __call__(self, input_ids, scores):
            seen.append(torch.isfinite(scores).sum(-1))
            return scores

    proc = ARGSLogitsProcessor(rm, k=k, temperature=0.7)
    torch.manual_seed(0)
    enc = tok(PROMPTS, return_tensors="pt", padding=True)
    policy.generate(
        **enc, logits_processor=[proc, Spy()], do_sample=True, max_new_tokens=5, eos_token_id=UNUSED, top_k=0
    )
    assert len(seen) == 5 and all(bool((s == k).all()) for s in seen)


def test_argument_errors():
    _, rm, _ = make_models("llama")
    with pytest.raises(ValueError, match="k:"):
        ARGSLogitsProcessor(rm, k=0)
    with pytest.raises(ValueError, match="w:"):
        ARGSLogitsProcessor(rm, w=-1)
    with pytest.raises(ValueError, match="temperature:"):
        ARGSLogitsProcessor(rm, temperature=0)
    with pytest.raises(ValueError, match="rm_cache:"):
        ARGSLogitsProcessor(rm, rm_cache="flash")


def test_micro_world_generate_equals_args_generate(micro):
    """A trained world's policy and RM (left-padded prompts, EOS from the world's generation config): equal
    up to each row's end (args_generate also ends rows at the world's stop string). 48 tokens: the
    world-format-2 micro policy ends its answers with EOS after 33-48 tokens."""
    policy, tok = micro.load_policy()
    rm = micro.load_reward_model()
    prompts = micro.test_prompts[:4]
    enc = tok(prompts, return_tensors="pt", padding=True)
    for shaper in (None, "official-args"):
        ref = args_generate(
            policy,
            tok,
            rm,
            prompts,
            ARGSConfig(k=10, w=0.5),
            GenerationConfig(max_new_tokens=48),
            shaper=shaper,
        )
        proc = ARGSLogitsProcessor(rm, k=10, w=0.5, shaper=shaper)
        out = policy.generate(**enc, logits_processor=[proc], do_sample=False, max_new_tokens=48)
        rows = out[:, enc["input_ids"].shape[1] :].tolist()
        assert [r[: len(a)] for r, a in zip(rows, ref.token_ids)] == ref.token_ids
        assert any(a and a[-1] == tok.eos_token_id for a in ref.token_ids)

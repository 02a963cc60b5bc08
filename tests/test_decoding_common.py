"""stackalign.decoding.common, plus the tiny random models the other decoding tests import."""

from __future__ import annotations

import functools
import warnings

import pytest
import torch
from tiny_models import bpe_tokenizer, tiny_pair
from transformers import (
    PreTrainedTokenizerFast,
)

from stackalign.decoding.common import (
    Cost,
    GenerationConfig,
    StopChecker,
    encode_prompts,
    filter_logits,
    left_pad,
    position_ids,
    resolve_eos_ids,
    sample_rows,
)

CORPUS = [
    "User: How do I bake bread?\nAssistant: Mix flour, water and yeast, then bake it.",
    "User: Tell me about cats.\nAssistant: Cats are small, curious animals. Thank you for asking!",
    "User: What is rain?\nAssistant: Water that falls from clouds.\n\nUser: and snow?",
] * 5

PROMPTS = [
    "User: How do I bake bread?\nAssistant:",
    "User: Tell me about cats, please.\nAssistant:",
    "User: What is rain?\nAssistant:",
]


@functools.cache
def make_tokenizer(vocab_size: int = 300, extra: str = "") -> PreTrainedTokenizerFast:
    return bpe_tokenizer([c + extra for c in CORPUS], vocab_size)


@functools.cache
def make_models(arch: str = "llama", seed: int = 0, init_std: float = 0.2):
    """(policy, RewardModel, tokenizer): tiny random fp32 models of `arch` sharing one tokenizer.

    A larger init std than HF's default makes logits and rewards spread out (fewer near-ties)."""
    tok = make_tokenizer()
    policy, rm = tiny_pair(arch, tok, seed=seed, init_std=init_std)
    return policy, rm, tok


# ------------------------------------------------------------------------------------------------ tests
def test_cost_add_and_merge():
    a = Cost(lm_tokens=3, rm_tokens=5, seconds=1.0, lm_calls=1, rm_calls=2)
    b = Cost(lm_tokens=1, rm_tokens=1, seconds=0.5)
    c = a + b
    assert (c.lm_tokens, c.rm_tokens, c.seconds, c.rm_calls) == (4, 6, 1.5, 2)
    a.merge(b)
    assert a == c
    assert c.per_prompt(2)["rm_tokens_per_prompt"] == 3


@pytest.mark.parametrize(
    "kw, msg",
    [
        (dict(max_new_tokens=0), "max_new_tokens"),
        (dict(temperature=-1), "temperature"),
        (dict(top_p=0), "top_p"),
        (dict(top_k=-2), "top_k"),
        (dict(stop_strings=("",)), "stop_strings"),
        (dict(eos_token_ids=(-1,)), "eos_token_ids"),
    ],
)
def test_generation_config_validates(kw, msg):
    with pytest.raises(ValueError, match=msg):
        GenerationConfig(**kw)


def test_generation_config_normalises():
    c = GenerationConfig(stop_strings="\n\nUser:", eos_token_ids=[3, 1])
    assert c.stop_strings == ("\n\nUser:",) and c.eos_token_ids == (3, 1)
    assert c.to_dict()["stop_strings"] == ["\n\nUser:"]
    assert GenerationConfig(temperature=0).greedy


def test_resolve_eos_ids_includes_end_of_turn_tokens():
    tok = make_tokenizer()
    assert resolve_eos_ids(tok) == [tok.eos_token_id]
    tok2 = make_tokenizer(extra="x")
    tok2 = PreTrainedTokenizerFast(tokenizer_object=tok2.backend_tokenizer, eos_token="<eos>")
    tok2.add_special_tokens({"additional_special_tokens": ["<|im_end|>"]})
    ids = resolve_eos_ids(tok2)
    assert tok2.convert_tokens_to_ids("<|im_end|>") in ids and tok2.eos_token_id in ids
    assert resolve_eos_ids(tok2, config=GenerationConfig(eos_token_ids=(7,))) == [7]


def test_left_pad_and_positions():
    ids, mask = left_pad([[5, 6, 7], [8]], pad_id=0)
    assert ids.tolist() == [[5, 6, 7], [0, 0, 8]]
    assert mask.tolist() == [[1, 1, 1], [0, 0, 1]]
    assert position_ids(mask).tolist() == [[0, 1, 2], [0, 0, 0]]
    assert position_ids(mask, 1).tolist() == [[2], [0]]
    with pytest.raises(ValueError):
        left_pad([[1], []], 0)


def test_encode_prompts_errors_name_the_prompt():
    policy, _, tok = make_models("gpt2")
    with pytest.raises(ValueError, match="prompt 1 is empty"):
        encode_prompts(tok, ["hi", "  "])
    with pytest.raises(ValueError, match="prompt 0 is too long"):
        encode_prompts(tok, ["word " * 300], max_new_tokens=8, models=[policy])
    with pytest.raises(ValueError, match="single string"):
        encode_prompts(tok, "hi")


def test_stop_checker_trims_stop_strings_and_eos():
    tok = make_tokenizer()
    stop = StopChecker(tok, [tok.eos_token_id], ["\n\nUser:"])
    ids = tok(" Water that falls from clouds.\n\nUser: and snow?")["input_ids"]
    assert stop.hits_stop_string(ids)
    out_ids, text = stop.finalize(ids)
    assert text == " Water that falls from clouds."
    assert "\n\nUser:" in tok.decode(out_ids) and len(out_ids) < len(ids)
    ids2 = tok(" Cats")["input_ids"] + [tok.eos_token_id] + tok(" more")["input_ids"]
    out2, text2 = stop.finalize(ids2)
    assert out2[-1] == tok.eos_token_id and text2 == " Cats"
    ignoring = StopChecker(tok, [tok.eos_token_id], ["\n\nUser:"], ignore=True)
    assert not ignoring.hits_stop_string(ids) and ignoring.finalize(ids)[0] == ids


def test_filter_logits_top_k_top_p():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    assert torch.isinf(filter_logits(logits, top_k=2)).tolist() == [[False, False, True, True]]
    # mass before: 0, .5, .8, .95 -> top_p=0.8 keeps the first two
    assert torch.isinf(filter_logits(logits, top_p=0.8)).tolist() == [[False, False, True, True]]
    assert torch.isinf(filter_logits(logits, top_p=0.81)).tolist() == [[False, False, False, True]]
    assert not torch.isinf(filter_logits(logits, top_p=0.01))[0, 0]


def test_sample_rows_inverse_cdf():
    probs = torch.tensor([[0.0, 0.25, 0.0, 0.75]]).repeat(4, 1)
    u = torch.tensor([0.0, 0.2499, 0.25, 0.9999])
    assert sample_rows(probs, u).tolist() == [1, 1, 3, 3]
    g = torch.Generator().manual_seed(0)
    draws = sample_rows(probs.repeat(5000, 1)[:5000], torch.rand(5000, generator=g))
    assert 0.72 < (draws == 3).float().mean() < 0.78 and not (draws == 0).any()


def test_ids_the_tokenizer_does_not_know_are_not_dropped_silently():
    """A policy paired with a smaller tokenizer than its own (another model's) generates ids that decode to
    '': the decoder warns, names the id and the tokenizer's size, and counts them."""
    from stackalign.decoding.sampling import greedy

    tok = make_tokenizer()
    n = len(tok)
    from transformers import LlamaForCausalLM

    from stackalign.models.tiny import tiny_config

    policy = LlamaForCausalLM(tiny_config("llama", n + 40, pad_token_id=tok.pad_token_id)).eval()
    with torch.no_grad():  # make the ids beyond the tokenizer the likeliest ones
        policy.lm_head.bias = torch.nn.Parameter(torch.zeros(n + 40))
        policy.lm_head.bias[n:] = 50.0
    with pytest.warns(UserWarning, match=rf"token id \d+ .*tokenizer has only {n} tokens.*decode to ''"):
        out = greedy(policy, tok, PROMPTS[:2], GenerationConfig(max_new_tokens=5, ignore_eos=True))
    assert all(i >= n for row in out.token_ids for ids in row for i in ids) and out.texts == [[""], [""]]
    # A model that stays inside its tokenizer's vocabulary raises nothing.
    stop = StopChecker(tok, [tok.eos_token_id])
    stop.finalize(tok(" Cats")["input_ids"])
    assert stop.unknown_ids == 0
    with pytest.warns(UserWarning, match=f"token id {n} "):
        stop.finalize([n, n + 1, 5])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the second response with unknown ids counts without a new warning
        stop.finalize([n + 2])
    assert stop.unknown_ids == 3

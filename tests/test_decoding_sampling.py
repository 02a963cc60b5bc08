"""Shared-prefill sampling: equals HF greedy, batch-invariant, seeded, stops at EOS / stop strings."""

from __future__ import annotations

import pytest
import torch
from test_decoding_common import PROMPTS, make_models

from stackalign.decoding.common import GenerationConfig, left_pad
from stackalign.decoding.sampling import greedy, hf_num_return_sequences, sample

NO_EOS = (9999,)  # an id that never occurs: rows run to max_new_tokens


def _hf_greedy(policy, tok, prompts, max_new_tokens):
    ids, mask = left_pad([tok(p)["input_ids"] for p in prompts], tok.pad_token_id)
    out = policy.generate(
        input_ids=ids,
        attention_mask=mask,
        max_new_tokens=max_new_tokens,
        do_sample=False,
        pad_token_id=tok.pad_token_id,
        eos_token_id=None,
    )
    return out[:, ids.shape[1] :].tolist()


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_greedy_equals_hf_generate_with_left_padding(arch):
    policy, _, tok = make_models(arch)
    cfg = GenerationConfig(max_new_tokens=16, temperature=0, eos_token_ids=NO_EOS)
    ours = [r[0] for r in greedy(policy, tok, PROMPTS, cfg).token_ids]
    assert ours == _hf_greedy(policy, tok, PROMPTS, 16)
    # temperature -> 0 and top_k = 1 are greedy too
    tiny_t = sample(
        policy, tok, PROMPTS, 2, GenerationConfig(max_new_tokens=16, temperature=1e-6, eos_token_ids=NO_EOS)
    )
    top1 = sample(policy, tok, PROMPTS, 2, GenerationConfig(max_new_tokens=16, top_k=1, eos_token_ids=NO_EOS))
    for i in range(len(PROMPTS)):
        assert tiny_t.token_ids[i] == [ours[i], ours[i]]
        assert top1.token_ids[i] == [ours[i], ours[i]]


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_samples_do_not_depend_on_the_batch(arch):
    policy, _, tok = make_models(arch)
    cfg = GenerationConfig(max_new_tokens=12, top_p=0.9, top_k=40, seed=3, eos_token_ids=NO_EOS)
    batched = sample(policy, tok, PROMPTS, 4, cfg)
    for i, p in enumerate(PROMPTS):
        assert sample(policy, tok, [p], 4, cfg).token_ids[0] == batched.token_ids[i]
    assert sample(policy, tok, PROMPTS, 4, cfg, batch_size=1).token_ids == batched.token_ids
    again = sample(policy, tok, PROMPTS, 4, cfg)
    assert again.token_ids == batched.token_ids and again.texts == batched.texts
    other_seed = sample(
        policy, tok, PROMPTS, 4, GenerationConfig(max_new_tokens=12, seed=4, eos_token_ids=NO_EOS)
    )
    assert other_seed.token_ids != batched.token_ids
    assert len({tuple(s) for s in batched.token_ids[0]}) > 1  # the n samples differ


def test_shared_prefill_counts_each_prompt_once():
    policy, _, tok = make_models("llama")
    cfg = GenerationConfig(max_new_tokens=5, ignore_eos=True)
    res = sample(policy, tok, PROMPTS, 3, cfg)
    n_prompt = sum(len(tok(p)["input_ids"]) for p in PROMPTS)
    assert res.cost.lm_tokens == n_prompt + len(PROMPTS) * 3 * 4  # prefill once, then 4 fed steps per row
    assert all(len(s) == 5 for row in res.token_ids for s in row)
    hf = hf_num_return_sequences(policy, tok, PROMPTS, 3, cfg)
    assert hf.cost.lm_tokens >= 3 * n_prompt
    assert len(hf.texts) == len(PROMPTS) and all(len(t) == 3 for t in hf.texts)
    ps, rs = res.flat()
    assert len(ps) == len(rs) == 9 and ps[0] == ps[2] == PROMPTS[0]


def test_eos_ends_a_row_and_finished_rows_leave_the_batch():
    policy, _, tok = make_models("llama")
    free = [
        r[0]
        for r in greedy(
            policy, tok, PROMPTS, GenerationConfig(max_new_tokens=12, eos_token_ids=NO_EOS)
        ).token_ids
    ]
    eos = free[0][3]  # the 4th greedy token of prompt 0 becomes "EOS"
    res = greedy(policy, tok, PROMPTS, GenerationConfig(max_new_tokens=12, eos_token_ids=(eos,)))
    for i, row in enumerate(free):
        cut = row.index(eos) + 1 if eos in row else len(row)
        assert res.token_ids[i][0] == row[:cut]  # other rows are unaffected by row 0 leaving the batch
    assert res.token_ids[0][0][-1] == eos and len(res.token_ids[0][0]) <= 4
    ignored = greedy(
        policy, tok, PROMPTS, GenerationConfig(max_new_tokens=12, eos_token_ids=(eos,), ignore_eos=True)
    )
    assert [r[0] for r in ignored.token_ids] == free


def test_stop_strings_end_rows_and_are_trimmed():
    policy, _, tok = make_models("gpt2")
    free = greedy(policy, tok, PROMPTS, GenerationConfig(max_new_tokens=12, eos_token_ids=NO_EOS))
    text = free.texts[1][0]
    stop = text[4:7]
    assert stop and stop.strip(), "the model's greedy text is too short for this test"
    res = greedy(
        policy,
        tok,
        PROMPTS[1:2],
        GenerationConfig(max_new_tokens=12, eos_token_ids=NO_EOS, stop_strings=(stop,)),
    )
    assert res.texts[0][0] == text[: text.index(stop)]
    assert len(res.token_ids[0][0]) < 12


def test_sample_rejects_bad_input():
    policy, _, tok = make_models("gpt2")
    with pytest.raises(ValueError, match="n: must be"):
        sample(policy, tok, PROMPTS, 0)
    with pytest.raises(ValueError, match="prompt 0 is empty"):
        sample(policy, tok, [""], 2)
    with pytest.raises(ValueError, match="too long"):
        sample(policy, tok, ["word " * 400], 2)


def test_temperature_and_top_p_change_the_distribution():
    policy, _, tok = make_models("llama")
    hot = sample(
        policy,
        tok,
        PROMPTS[:1],
        16,
        GenerationConfig(max_new_tokens=1, temperature=5.0, eos_token_ids=NO_EOS),
    )
    cold = sample(
        policy,
        tok,
        PROMPTS[:1],
        16,
        GenerationConfig(max_new_tokens=1, temperature=0.05, eos_token_ids=NO_EOS),
    )
    assert len({s[0] for s in hot.token_ids[0]}) > len({s[0] for s in cold.token_ids[0]})
    assert torch.is_tensor(torch.tensor(hot.token_ids[0]))


def test_mixture_sampling_is_the_token_level_geometric_mixture():
    """mixture=(ref, β): β = 0 is the policy's own sampling, β = 1 the reference's (same seeds); greedy
    decoding follows argmax of (1 − β) log π + β log π_ref step by step (full forwards, no cache)."""
    policy, _, tok = make_models("llama", seed=0)
    ref, _, _ = make_models("llama", seed=1)
    cfg = GenerationConfig(max_new_tokens=6, ignore_eos=True, seed=3)
    own = sample(policy, tok, PROMPTS, 2, cfg)
    assert sample(policy, tok, PROMPTS, 2, cfg, mixture=(ref, 0.0)).token_ids == own.token_ids
    assert (
        sample(policy, tok, PROMPTS, 2, cfg, mixture=(ref, 1.0)).token_ids
        == sample(ref, tok, PROMPTS, 2, cfg).token_ids
    )
    beta = 0.4
    greedy_cfg = GenerationConfig(max_new_tokens=5, ignore_eos=True, temperature=0.0)
    got = sample(policy, tok, PROMPTS, 1, greedy_cfg, mixture=(ref, beta))
    for prompt, row in zip(PROMPTS, got.token_ids):
        ids = tok(prompt, return_tensors="pt")["input_ids"]
        want = []
        with torch.no_grad():
            for _ in range(5):
                lp = policy(input_ids=ids).logits[0, -1].log_softmax(-1)
                lr = ref(input_ids=ids).logits[0, -1].log_softmax(-1)
                t = int(((1 - beta) * lp + beta * lr).argmax())
                want.append(t)
                ids = torch.cat([ids, torch.tensor([[t]])], dim=1)
        assert row[0] == want
    assert own.token_ids != sample(policy, tok, PROMPTS, 2, cfg, mixture=(ref, 0.5)).token_ids
    with pytest.raises(ValueError, match="beta must be in"):
        sample(policy, tok, PROMPTS, 1, cfg, mixture=(ref, 1.5))

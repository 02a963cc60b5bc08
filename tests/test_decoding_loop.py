"""The step loop every decoder shares (decoding.common.run_steps): finished rows leave the batch and the
decoders' caches stay aligned with the rows still running, tested once for all decoders."""

from __future__ import annotations

import pytest
import torch
from test_decoding_common import PROMPTS, make_models, make_tokenizer

from stackalign.decoding.args import ARGSConfig, args_generate
from stackalign.decoding.cd import CDConfig, controlled_decode
from stackalign.decoding.common import GenerationConfig, LiveRows, StopChecker, run_steps
from stackalign.decoding.sampling import sample
from stackalign.decoding.value_head import ValueHead, ValueHeadConfig

T = 10
# distinct per-prompt thresholds m for the "args_thresholds" decoder
THRESHOLDS = {p: m for p, m in zip(PROMPTS, (-0.5, 0.0, 0.5))}


def test_run_steps_drops_finished_rows_and_feeds_the_rest():
    tok = make_tokenizer()
    eos = tok.eos_token_id
    script = {  # original row -> its tokens; row 1 ends at step 1, row 0 at step 3, row 2 runs to the end
        0: [5, 6, 7, eos, 9],
        1: [5, eos, 9, 9, 9],
        2: [8, 8, 8, 8, 8],
    }
    rows = LiveRows(3, 5, tok.pad_token_id, "cpu")
    selected, fed = [], []

    def choose(step):
        return torch.tensor([script[int(r)][step] for r in rows.active])

    run_steps(rows, StopChecker(tok, [eos]), 5, choose, lambda k: selected.append(k.tolist()), fed.append)
    assert rows.outputs() == [[5, 6, 7, eos], [5, eos], [8, 8, 8, 8, 8]]
    assert selected == [[0, 2], [1]]  # batch positions kept after step 1, then after step 3
    assert [f.tolist() for f in fed] == [[5, 5, 8], [6, 8], [7, 8], [8]]


def _decoders():
    policy, rm, tok = make_models("llama")
    torch.manual_seed(1)
    head = ValueHead(ValueHeadConfig(hidden_size=32, width=16)).eval()

    def gen(eos):
        return GenerationConfig(max_new_tokens=T, temperature=0.0, eos_token_ids=(eos,))

    return {
        "greedy": lambda ps, eos: [r[0] for r in sample(policy, tok, ps, 1, gen(eos)).token_ids],
        "sample_n2": lambda ps, eos: (
            sample(
                policy, tok, ps, 2, GenerationConfig(max_new_tokens=T, seed=3, eos_token_ids=(eos,))
            ).token_ids
        ),
        "args_tree": lambda ps, eos: (
            args_generate(
                policy, tok, rm, ps, ARGSConfig(k=4, rm_cache="tree"), gen(eos), shaper="official-args"
            ).token_ids
        ),
        "args_repeat": lambda ps, eos: (
            args_generate(
                policy, tok, rm, ps, ARGSConfig(k=4, rm_cache="repeat"), gen(eos), shaper="official-args"
            ).token_ids
        ),
        "args_reference": lambda ps, eos: (
            args_generate(
                policy, tok, rm, ps, ARGSConfig(k=4, rm_mode="reference"), gen(eos), shaper="official-args"
            ).token_ids
        ),
        "args_text": lambda ps, eos: (
            args_generate(policy, tok, rm, ps, ARGSConfig(k=4, rm_mode="text"), gen(eos)).token_ids
        ),
        # stochastic: per-prompt random streams must stay aligned with the rows that remain
        "args_stochastic": lambda ps, eos: (
            args_generate(
                policy,
                tok,
                rm,
                ps,
                ARGSConfig(k=4, mode="stochastic", temperature=1.0),
                GenerationConfig(max_new_tokens=T, seed=5, eos_token_ids=(eos,)),
                shaper="srs",
            ).token_ids
        ),
        # per-prompt thresholds: each live row must keep its own prompt's m after rows leave
        "args_thresholds": lambda ps, eos: (
            args_generate(
                policy,
                tok,
                rm,
                ps,
                ARGSConfig(k=4),
                gen(eos),
                shaper="srs",
                thresholds=[THRESHOLDS[p] for p in ps],
            ).token_ids
        ),
        "cd_tree": lambda ps, eos: (
            controlled_decode(
                policy, tok, ps, head, CDConfig(lam=5.0, top_k=4, lookahead="tree"), gen(eos)
            ).token_ids
        ),
        "cd_repeat": lambda ps, eos: (
            controlled_decode(
                policy, tok, ps, head, CDConfig(lam=5.0, top_k=4, lookahead="repeat"), gen(eos)
            ).token_ids
        ),
    }


ARGS_VARIANTS = [
    "args_tree",
    "args_repeat",
    "args_reference",
    "args_text",
    "args_stochastic",
    "args_thresholds",
]


@pytest.mark.parametrize("name", ["greedy", "sample_n2", *ARGS_VARIANTS, "cd_tree", "cd_repeat"])
def test_rows_that_end_early_leave_without_disturbing_the_others(name):
    """EOS = a token the first prompt emits mid-way: rows end at different steps, and every row equals the
    same prompt decoded alone (a cache left misaligned after a row leaves would change the others)."""
    run = _decoders()[name]
    first = run(PROMPTS[:1], 9999)[0]
    first = first[0] if first and isinstance(first[0], list) else first
    eos = next(t for t in first[2:] if t not in first[:2])
    batched = run(PROMPTS, eos)
    flat = [x for r in batched for x in (r if r and isinstance(r[0], list) else [r])]
    assert any(r[-1] == eos and len(r) < T for r in flat) and len({len(r) for r in flat}) > 1
    assert batched == [run([p], eos)[0] for p in PROMPTS]

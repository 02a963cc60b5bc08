"""`stackalign bench cd`: plain greedy vs tokenwise CD vs blockwise CD, as time ratios in one process.

Every variant decodes the same prompts for exactly `max_new_tokens` tokens (EOS and stop strings are
ignored, so each does the same number of steps), after a warm-up; the variants' repeats are interleaved and
the fastest run of each is kept (`stackalign.bench`'s clock, which also keeps process CPU time: on a CPU
shared with other jobs it is much less noisy than wall-clock). Variants:

  plain_greedy   the project's own greedy loop (`decoding.sampling.greedy`), the denominator
  hf_generate    HF `model.generate(do_sample=False)` (informational)
  tokenwise      tokenwise CD, k = 10, lam = 1.5, lookahead="tree" (one LM forward of k tokens per step)
  tokenwise_rep  the same with lookahead="repeat" (k-times tiled cache, `batch_select_indices`)
  blockwise      blockwise CD, K = 4 blocks of M = 8 tokens

Prompts are decoded one at a time by default (`batch_size=1`, as the official CD decoder runs). On a CPU
the tokenwise step's k candidate tokens are real extra FLOPs, so the ratio grows with the batch; on a GPU
the k tokens ride in the same kernel launches. The value head has random weights (its cost does not depend
on them) and the default width unless `args.value_head` names a trained one. Target:
tokenwise_over_plain <= 1.5.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import replace

import torch

from stackalign.bench.common import Clock, load_models, print_table, row
from stackalign.decoding.cd import CDConfig, controlled_decode
from stackalign.decoding.common import GenerationConfig
from stackalign.decoding.sampling import greedy, hf_num_return_sequences
from stackalign.decoding.value_head import ValueHead, ValueHeadConfig, load_value_head

TARGET_TOKENWISE = 1.5


@torch.no_grad()
def bench_cd(
    model,
    tok,
    prompts: list[str],
    *,
    max_new_tokens: int = 128,
    head=None,
    batch_size: int = 1,
    repeats: int = 3,
    k: int = 10,
) -> dict:
    """Time the variants on `prompts`; returns the `stackalign bench` JSON layout (variants, ratios, targets)."""
    if head is None:
        head = ValueHead(ValueHeadConfig(hidden_size=model.config.get_text_config().hidden_size))
    head = head.eval()
    bs = batch_size

    def cd(**kw):
        cfg = CDConfig(batch_size=bs, **kw)
        return lambda g: controlled_decode(
            model, tok, prompts, head, cfg, replace(g, temperature=1.0) if cfg.mode == "blockwise" else g
        )

    variants = {
        "plain_greedy": lambda g: greedy(model, tok, prompts, g, batch_size=bs),
        "hf_generate": lambda g: hf_num_return_sequences(model, tok, prompts, 1, g, batch_size=bs),
        "tokenwise": cd(mode="tokenwise", top_k=k, lam=1.5, lookahead="tree"),
        "tokenwise_rep": cd(mode="tokenwise", top_k=k, lam=1.5, lookahead="repeat"),
        "blockwise": cd(mode="blockwise", num_blocks=4, block_size=8),
    }
    gen = GenerationConfig(max_new_tokens=max_new_tokens, temperature=0.0, ignore_eos=True)
    warm = replace(gen, max_new_tokens=min(8, max_new_tokens))
    for fn in variants.values():
        fn(warm)
    clock = Clock()
    for _ in range(repeats):
        for name, fn in variants.items():
            clock.run(name, fn, gen)

    def ratios_of(t: dict[str, float]) -> dict[str, float]:
        return {
            "tokenwise_over_plain": t["tokenwise"] / t["plain_greedy"],
            "blockwise_over_plain": t["blockwise"] / t["plain_greedy"],
            "tokenwise_repeat_over_plain": t["tokenwise_rep"] / t["plain_greedy"],
            "hf_generate_over_plain": t["hf_generate"] / t["plain_greedy"],
        }

    ratios = ratios_of(clock.wall)
    return {
        "bench": "cd",
        "device": str(next(model.parameters()).device),
        "torch_threads": torch.get_num_threads(),
        "prompts": len(prompts),
        "batch_size": bs,
        "k": k,
        "max_new_tokens": max_new_tokens,
        "repeats": repeats,
        "variants": {name: row(clock.outs[name], clock, name) for name in variants},
        "ratios": ratios,
        "ratios_cpu_time": ratios_of(clock.cpu),
        "targets": {"tokenwise_over_plain": f"<= {TARGET_TOKENWISE}"},
        "pass": ratios["tokenwise_over_plain"] <= TARGET_TOKENWISE,
    }


def main(args: argparse.Namespace) -> int:
    """Entry point of `stackalign bench cd` (args: json, world, prompts, max_new_tokens; optional batch_size,
    repeats, value_head). `--world tiny` uses tiny random models (no world build)."""
    n_prompts = int(getattr(args, "prompts", None) or 4)
    T = int(getattr(args, "max_new_tokens", None) or 128)
    if n_prompts < 1 or T < 1:
        raise ValueError("bench cd: --prompts and --max-new-tokens must be >= 1")
    model, tok, _, prompts, desc = load_models(getattr(args, "world", None))
    head = load_value_head(args.value_head)[0] if getattr(args, "value_head", None) else None
    out = bench_cd(
        model,
        tok,
        list(prompts[:n_prompts]),
        max_new_tokens=T,
        head=head,
        batch_size=int(getattr(args, "batch_size", None) or 1),
        repeats=int(getattr(args, "repeats", None) or 3),
    )
    out["models"] = desc
    if getattr(args, "json", False):
        print(json.dumps(out))
    else:
        print_table(out)
        print(f"  tokenwise CD <= {TARGET_TOKENWISE}x plain greedy: {'PASS' if out['pass'] else 'FAIL'}")
    return 0

"""``stackalign bench {args,cd,sample}``: speed ratios measured in one process (SPEC §7).

* ``bench args``: on the world's policy and reward model (same architecture and size), k = 10, 128 new
  tokens (EOS ignored so every variant generates exactly as many tokens), a few prompts decoded as one
  batch: plain greedy, reference ARGS (the official algorithm: k full RM forwards over full sequences per
  step, chunked 5 at a time), fast ARGS (tree-masked RM KV cache), fast SRS-ARGS (``official-args``
  preset). Ratios: ``reference_over_fast``, ``srs_args_over_plain``, ``srs_over_vanilla``, and
  ``identical`` (reference and fast ARGS chose the same greedy tokens).
* ``bench sample``: N = 10 samples per prompt with a shared prompt prefill vs HF ``num_return_sequences``;
  ratio ``hf_over_shared``.
* ``bench cd``: implemented in :mod:`stackalign.decoding.cd_bench`.

Every variant is warmed up before timing; timed runs are repeated and the fastest is kept (the usual
defence against scheduler noise), except the slow reference run, which is timed once.
``--world tiny`` uses tiny random Llama models instead of a world (no build needed).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any

import torch

__all__ = ["main", "bench_args", "bench_sample", "load_models"]


def load_models(world: str | None, device: str = "cpu") -> tuple[Any, Any, Any, list[str], str]:
    """``(policy, tokenizer, reward_model, prompts, description)`` from a world directory, the cached
    default world (``world=None``), or tiny random models (``world="tiny"``)."""
    if world == "tiny":
        return _tiny_models(device) + ("tiny random Llama policy + reward model (no world)",)
    from stackalign.worlds import default_world, load_world

    w = load_world(world) if world else default_world()
    policy, tok = w.load_policy(device=device)
    rm = w.load_reward_model(device=device)
    return policy, tok, rm, list(w.test_prompts), f"world {w.root}"


def _tiny_models(device: str):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import (
        LlamaConfig,
        LlamaForCausalLM,
        LlamaForSequenceClassification,
        PreTrainedTokenizerFast,
    )

    from stackalign.models import RewardModel

    texts = [
        f"User: question {i} about topic {i % 7}?\nAssistant: answer {i} with detail {i * 3}."
        for i in range(200)
    ]
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=1024,
        special_tokens=["<pad>", "<eos>", "<unk>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(texts, trainer)
    t = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<eos>", unk_token="<unk>", pad_token="<pad>")
    t.padding_side = "left"

    def cfg(**kw):
        return LlamaConfig(
            vocab_size=len(t), hidden_size=128, intermediate_size=384, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=4, max_position_embeddings=256, eos_token_id=t.eos_token_id,
            pad_token_id=t.pad_token_id, bos_token_id=None, **kw,
        )  # fmt: skip

    torch.manual_seed(0)
    policy = LlamaForCausalLM(cfg()).eval().to(device)
    rm = RewardModel(LlamaForSequenceClassification(cfg(num_labels=1)).eval().to(device), t)
    prompts = [f"User: tell me about topic {i} and question {3 * i}?\nAssistant:" for i in range(32)]
    return policy, t, rm, prompts


class _Clock:
    """Best (minimum) wall-clock and process-CPU seconds per variant over repeated runs.

    Wall-clock is the decoder's own ``cost.seconds``. Process CPU time (``time.process_time``) is also kept:
    on a CPU shared with other jobs it is far less noisy than wall-clock, because time spent descheduled does
    not count (with several torch threads it sums them, so compare it only within one run)."""

    def __init__(self) -> None:
        self.wall: dict[str, float] = {}
        self.cpu: dict[str, float] = {}
        self.outs: dict[str, Any] = {}

    def run(self, name: str, fn, gen) -> Any:
        c0 = time.process_time()
        out = fn(gen)
        cpu = time.process_time() - c0
        self.outs[name] = out
        self.wall[name] = min(self.wall.get(name, float("inf")), out.cost.seconds)
        self.cpu[name] = min(self.cpu.get(name, float("inf")), cpu)
        return out


def bench_args(
    world: str | None = None,
    n_prompts: int = 4,
    max_new_tokens: int = 128,
    device: str = "cpu",
    repeats: int = 3,
    batch_size: int | None = None,
) -> dict:
    """Time plain greedy, reference ARGS, fast ARGS and fast SRS-ARGS on the same prompts, decoded
    ``batch_size`` at a time (default: all in one batch)."""
    from stackalign.decoding.args import ARGSConfig, args_generate
    from stackalign.decoding.common import GenerationConfig
    from stackalign.decoding.sampling import greedy

    policy, tok, rm, prompts, desc = load_models(world, device)
    prompts = prompts[:n_prompts]
    gen = GenerationConfig(max_new_tokens=max_new_tokens, ignore_eos=True)
    k = 10
    bs = batch_size or len(prompts)
    ref_cfg = ARGSConfig(k=k, rm_mode="reference", reference_chunk_size=5, batch_size=bs)
    fast_cfg = ARGSConfig(k=k, rm_mode="fast", rm_cache="tree", batch_size=bs)
    variants = {
        "plain_greedy": lambda g: greedy(policy, tok, prompts, g, batch_size=bs),
        "reference_args": lambda g: args_generate(policy, tok, rm, prompts, ref_cfg, g),
        "fast_args": lambda g: args_generate(policy, tok, rm, prompts, fast_cfg, g),
        "fast_srs_args": lambda g: args_generate(
            policy, tok, rm, prompts, fast_cfg, g, shaper="official-args"
        ),
    }
    warm = GenerationConfig(max_new_tokens=8, ignore_eos=True)
    for fn in variants.values():
        fn(warm)
    clock = _Clock()
    # Interleave the fast variants' repeats so slow drifts in machine speed hit them alike.
    for _ in range(repeats):
        for name in ("plain_greedy", "fast_args", "fast_srs_args"):
            clock.run(name, variants[name], gen)
    clock.run("reference_args", variants["reference_args"], gen)
    outs = clock.outs
    results = {name: _row(outs[name], clock, name) for name in variants}

    def ratios_of(t: dict[str, float]) -> dict[str, float]:
        return {
            "reference_over_fast": t["reference_args"] / t["fast_args"],
            "srs_args_over_plain": t["fast_srs_args"] / t["plain_greedy"],
            "srs_over_vanilla": t["fast_srs_args"] / t["fast_args"],
        }

    identical = outs["reference_args"].token_ids == outs["fast_args"].token_ids
    ratios = {**ratios_of(clock.wall), "identical": bool(identical)}
    targets = {
        "reference_over_fast": ">= 8",
        "srs_args_over_plain": "<= 2.5",
        "srs_over_vanilla": "<= 1.05",
        "identical": "true",
    }
    return {
        "bench": "args",
        "models": desc,
        "device": str(device),
        "torch_threads": torch.get_num_threads(),
        "prompts": len(prompts),
        "batch_size": bs,
        "k": k,
        "max_new_tokens": max_new_tokens,
        "repeats": repeats,
        "variants": results,
        "ratios": ratios,
        "ratios_cpu_time": ratios_of(clock.cpu) if str(device).startswith("cpu") else None,
        "targets": targets,
    }


def bench_sample(
    world: str | None = None,
    n_prompts: int = 4,
    max_new_tokens: int = 128,
    device: str = "cpu",
    n: int = 10,
    repeats: int = 3,
) -> dict:
    """Time N samples per prompt: shared prompt prefill vs HF ``num_return_sequences``."""
    from stackalign.decoding.common import GenerationConfig
    from stackalign.decoding.sampling import hf_num_return_sequences, sample

    policy, tok, rm, prompts, desc = load_models(world, device)
    prompts = prompts[:n_prompts]
    gen = GenerationConfig(max_new_tokens=max_new_tokens, ignore_eos=True, temperature=1.0)
    bs = len(prompts)
    variants = {
        "shared_prefill": lambda g: sample(policy, tok, prompts, n, g, batch_size=bs),
        "hf_num_return_sequences": lambda g: hf_num_return_sequences(
            policy, tok, prompts, n, g, batch_size=bs
        ),
    }
    warm = GenerationConfig(max_new_tokens=8, ignore_eos=True)
    for fn in variants.values():
        fn(warm)
    clock = _Clock()
    for _ in range(repeats):
        for name, fn in variants.items():
            clock.run(name, fn, gen)
    results = {name: _row(o, clock, name) for name, o in clock.outs.items()}
    cpu = str(device).startswith("cpu")
    return {
        "bench": "sample",
        "models": desc,
        "device": str(device),
        "torch_threads": torch.get_num_threads(),
        "prompts": len(prompts),
        "n": n,
        "max_new_tokens": max_new_tokens,
        "repeats": repeats,
        "variants": results,
        "ratios": {"hf_over_shared": clock.wall["hf_num_return_sequences"] / clock.wall["shared_prefill"]},
        "ratios_cpu_time": (
            {"hf_over_shared": clock.cpu["hf_num_return_sequences"] / clock.cpu["shared_prefill"]}
            if cpu
            else None
        ),
    }


def _row(out: Any, clock: _Clock, name: str) -> dict:
    ids = out.token_ids
    n_tokens = sum(sum(len(x) for x in r) if r and isinstance(r[0], list) else len(r) for r in ids)
    wall = clock.wall[name]
    return {
        "seconds": wall,
        "cpu_seconds": clock.cpu[name],
        "new_tokens": n_tokens,
        "tokens_per_second": n_tokens / wall if wall > 0 else None,
        "lm_tokens": out.cost.lm_tokens,
        "rm_tokens": out.cost.rm_tokens,
    }


def _print_table(out: dict) -> None:
    print(
        f"stackalign bench {out['bench']} — {out['models']} — device {out['device']}, {out['prompts']} prompts"
    )
    for name, v in out["variants"].items():
        tps = v.get("tokens_per_second")
        print(
            f"  {name:<24} {v['seconds']:8.3f} s  {v['new_tokens']:6d} new tokens  "
            f"{(tps or 0):9.1f} tok/s  lm_tokens {v.get('lm_tokens', 0):7d}  rm_tokens {v.get('rm_tokens', 0):8d}"
        )
    targets = out.get("targets", {})
    cpu = out.get("ratios_cpu_time") or {}
    for name, r in out["ratios"].items():
        shown = str(r).lower() if isinstance(r, bool) else f"{r:.2f}"
        t = f"   (target {targets[name]})" if name in targets else ""
        c = f"   [process CPU time: {cpu[name]:.2f}]" if name in cpu else ""
        print(f"  ratio {name:<22} {shown}{t}{c}")


def _arg(args: argparse.Namespace, name: str, default: Any) -> Any:
    v = getattr(args, name, None)
    return default if v is None else v


def main(args: argparse.Namespace) -> int:
    which = getattr(args, "which", None)
    if which == "cd":
        from stackalign.decoding.cd_bench import main as cd_main

        return int(cd_main(args) or 0)
    kwargs = dict(
        world=getattr(args, "world", None),
        n_prompts=int(_arg(args, "prompts", 4)),
        max_new_tokens=int(_arg(args, "max_new_tokens", 128)),
        device=getattr(args, "device", None) or os.environ.get("STACKALIGN_BENCH_DEVICE", "cpu"),
    )
    if kwargs["n_prompts"] < 1 or kwargs["max_new_tokens"] < 1:
        raise ValueError("--prompts and --max-new-tokens must be >= 1")
    if which == "args":
        bs = getattr(args, "batch_size", None)
        if bs is not None and bs < 1:
            raise ValueError("--batch-size must be >= 1")
        out = bench_args(**kwargs, batch_size=bs, repeats=int(_arg(args, "repeats", 3)))
    elif which == "sample":
        out = bench_sample(**kwargs)
    else:
        raise ValueError(f"unknown benchmark {which!r}; choose args, cd or sample")
    if getattr(args, "json", False):
        print(json.dumps(out))
    else:
        _print_table(out)
    sys.stdout.flush()
    return 0

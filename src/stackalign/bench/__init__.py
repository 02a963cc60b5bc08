"""``stackalign bench {args,cd,sample}``: speed ratios measured in one process.

* ``bench args``: on the world's policy and reward model (same architecture and size), k = 10, 128 new
  tokens (EOS ignored so every variant generates exactly as many tokens), a few prompts decoded as one
  batch: plain greedy, reference ARGS (the official algorithm: k full RM forwards over full sequences per
  step, chunked 5 at a time), fast ARGS (tree-masked RM KV cache), fast SRS-ARGS (``official-args``
  preset), bridge ARGS (the any-tokenizer path: :class:`stackalign.decoding.rm_cache.BridgeScorer`, on the
  same models). Ratios: ``reference_over_fast``, ``srs_args_over_plain``, ``srs_over_vanilla``,
  ``text_over_fast`` (bridge over fast ARGS: the any-tokenizer path over the same-tokenizer one),
  ``identical`` (reference and fast ARGS chose the same greedy tokens) and ``identical_bridge`` (bridge and
  fast ARGS did: expected where the policy's tokens are its text's canonical encoding, as on a trained
  world; the bridge scores the re-encoded text, fast ARGS the policy's ids).
  ``--policy DIR|NAME --reward-model DIR|NAME``: your own models; with different tokenizers the id-level
  variants cannot run and ``text_over_bridge`` (the full re-encode over the bridge) is reported instead. ``floor``: the reward model's
  forward on the k candidates alone (:func:`candidate_floor`) and the lower bound it puts on
  ``srs_args_over_plain``.
* ``bench sample``: N = 10 samples per prompt with a shared prompt prefill vs HF ``num_return_sequences``;
  ratio ``hf_over_shared``.
* ``bench generate``: ARGS inside HF ``generate`` vs ``args_generate`` (:mod:`stackalign.bench.generate`).
* ``bench cd``: implemented in :mod:`stackalign.bench.cd`; shared pieces in :mod:`stackalign.bench.common`.

Every variant is warmed up before timing; timed runs are repeated and the fastest is kept (the usual
defence against scheduler noise), except the slow reference run, which is timed once.
``--world tiny`` uses tiny random Llama models instead of a world (no build needed).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

import torch

from stackalign.bench.common import Clock, load_models, print_table, row

__all__ = ["main", "bench_args", "bench_sample", "load_models"]


# what `bench args` aims for where policy and reward model share a tokenizer (the README's table)
ARGS_TARGETS = {
    "reference_over_fast": ">= 8",
    "srs_args_over_plain": "<= 2.5",
    "srs_over_vanilla": "<= 1.05",
    "text_over_fast": "<= 1.5",
    "identical": "true",
    "identical_bridge": "true",
}


def bench_args(
    world: str | None = None,
    n_prompts: int = 4,
    max_new_tokens: int = 128,
    device: str = "cpu",
    repeats: int = 3,
    batch_size: int | None = None,
    policy: str | None = None,
    reward_model: str | None = None,
) -> dict:
    """Time plain greedy, reference ARGS, fast ARGS, fast SRS-ARGS and bridge ARGS (the any-tokenizer
    path, :class:`BridgeScorer`) on the same prompts, decoded ``batch_size`` at a time (default: all in one
    batch). ``policy`` / ``reward_model``: your own models instead of the world's (see :func:`load_models`);
    when their tokenizers differ, the id-level variants (reference, fast) cannot run and the full re-encode
    (text scoring) is timed against the bridge instead."""
    from stackalign.decoding.common import GenerationConfig
    from stackalign.decoding.rm_cache import supports_incremental

    policy_m, tok, rm, prompts, desc = load_models(world, device, policy=policy, reward_model=reward_model)
    prompts = prompts[:n_prompts]
    gen = GenerationConfig(max_new_tokens=max_new_tokens, ignore_eos=True)
    k = 10
    bs = batch_size or len(prompts)
    shared = supports_incremental(tok, rm) is None
    variants, timed, once = _args_variants(policy_m, tok, rm, prompts, k, bs, shared)
    clock = _time_variants(variants, timed, once, gen, repeats)
    outs = clock.outs
    results = {name: row(outs[name], clock, name) for name in variants}
    if shared:
        ratios = {
            **_args_ratios(clock.wall, shared),
            "identical": outs["reference_args"].token_ids == outs["fast_args"].token_ids,
            "identical_bridge": outs["bridge_args"].token_ids == outs["fast_args"].token_ids,
        }
        targets = dict(ARGS_TARGETS)
        floor_s = candidate_floor(rm, len(prompts), bs, k, max_new_tokens, repeats, device)
        floor = {
            "rm_candidates_seconds": floor_s,
            "srs_args_over_plain": (clock.wall["plain_greedy"] + floor_s) / clock.wall["plain_greedy"],
        }
    else:
        ratios = {
            **_args_ratios(clock.wall, shared),
            "identical_bridge": outs["bridge_args"].token_ids == outs["text_args"].token_ids,
        }
        targets = {"identical_bridge": "true"}
        floor = None
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
        "scorers": {name: getattr(o, "meta", {}).get("scorer") for name, o in outs.items()},
        "variants": results,
        "ratios": ratios,
        "ratios_cpu_time": _args_ratios(clock.cpu, shared) if str(device).startswith("cpu") else None,
        "targets": targets,
        "floor": floor,
    }


def _args_variants(
    policy: Any, tok: Any, rm: Any, prompts: list[str], k: int, bs: int, shared: bool
) -> tuple[dict[str, Any], tuple[str, ...], str]:
    """The variants of `bench args` (name -> generate(GenerationConfig)), the names timed ``repeats`` times,
    and the one timed once (the slow reference: full RM forwards, or the full re-encode without a shared
    tokenizer)."""
    from stackalign.decoding.args import ARGSConfig, args_generate
    from stackalign.decoding.sampling import greedy

    ref_cfg = ARGSConfig(k=k, rm_mode="reference", reference_chunk_size=5, batch_size=bs)
    fast_cfg = ARGSConfig(k=k, rm_mode="fast", rm_cache="tree", batch_size=bs)
    bridge_cfg = ARGSConfig(k=k, rm_mode="bridge", batch_size=bs)
    text_cfg = ARGSConfig(k=k, rm_mode="text", batch_size=bs)
    variants = {
        "plain_greedy": lambda g: greedy(policy, tok, prompts, g, batch_size=bs),
        "bridge_args": lambda g: args_generate(policy, tok, rm, prompts, bridge_cfg, g),
    }
    if not shared:
        variants["text_args"] = lambda g: args_generate(policy, tok, rm, prompts, text_cfg, g)
        return variants, ("plain_greedy", "bridge_args"), "text_args"
    variants.update(
        reference_args=lambda g: args_generate(policy, tok, rm, prompts, ref_cfg, g),
        fast_args=lambda g: args_generate(policy, tok, rm, prompts, fast_cfg, g),
        fast_srs_args=lambda g: args_generate(policy, tok, rm, prompts, fast_cfg, g, shaper="official-args"),
    )
    return variants, ("plain_greedy", "fast_args", "fast_srs_args", "bridge_args"), "reference_args"


def _time_variants(
    variants: dict[str, Any], timed: tuple[str, ...], once: str, gen: Any, repeats: int
) -> Clock:
    """Warm every variant up (8 tokens), time each of `timed` `repeats` times, interleaved so slow drifts in
    machine speed hit them alike, then `once` a single time."""
    from stackalign.decoding.common import GenerationConfig

    warm = GenerationConfig(max_new_tokens=8, ignore_eos=True)
    for fn in variants.values():
        fn(warm)
    clock = Clock()
    for _ in range(repeats):
        for name in timed:
            clock.run(name, variants[name], gen)
    clock.run(once, variants[once], gen)
    return clock


def _args_ratios(t: dict[str, float], shared: bool) -> dict[str, float]:
    """The speed ratios of `bench args` from the variants' seconds `t` (wall or CPU time)."""
    if not shared:
        return {
            "text_over_bridge": t["text_args"] / t["bridge_args"],
            "bridge_over_plain": t["bridge_args"] / t["plain_greedy"],
        }
    return {
        "reference_over_fast": t["reference_args"] / t["fast_args"],
        "srs_args_over_plain": t["fast_srs_args"] / t["plain_greedy"],
        "srs_over_vanilla": t["fast_srs_args"] / t["fast_args"],
        "text_over_fast": t["bridge_args"] / t["fast_args"],
    }


@torch.no_grad()
def candidate_floor(
    rm: Any, n_prompts: int, batch_size: int, k: int, steps: int, repeats: int, device: Any
) -> float:
    """Seconds the reward model needs for ARGS's candidates alone: ``steps`` forwards per batch of the
    RM's backbone and per-position score head on [rows, k] token ids, without any cache or prefix.

    Every exact ARGS step must run each of its rows' k candidates through every RM layer (the candidate's
    hidden states depend on its token from the first layer on); this measures that token-wise work with the
    same kernels and nothing else (no attention to the prefix, no cache, no mask). So
    ``(greedy + floor) / greedy`` is a lower bound on ``srs_args_over_plain`` for an exact ARGS built on these
    kernels: where it exceeds a target, no scorer can meet that target on this machine. Fastest of
    ``repeats`` timings, after one warm-up."""
    import time

    from stackalign.decoding.rm_cache import _backbone_and_head

    backbone, head = _backbone_and_head(rm)
    vocab = int(backbone.get_input_embeddings().num_embeddings)
    sizes = [min(batch_size, n_prompts - s) for s in range(0, n_prompts, batch_size)]
    cands = {b: (torch.arange(b * k, device=device) % vocab).view(b, k) for b in set(sizes)}

    def sync() -> None:
        if torch.device(device).type == "cuda":
            torch.cuda.synchronize(device)

    def once(n_steps: int) -> float:
        sync()
        t0 = time.perf_counter()
        for b in sizes:
            for _ in range(n_steps):
                head(backbone(input_ids=cands[b], use_cache=False).last_hidden_state)
        sync()
        return time.perf_counter() - t0

    once(min(steps, 8))
    return min(once(steps) for _ in range(max(1, repeats)))


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
    clock = Clock()
    for _ in range(repeats):
        for name, fn in variants.items():
            clock.run(name, fn, gen)
    results = {name: row(o, clock, name) for name, o in clock.outs.items()}
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


def _arg(args: argparse.Namespace, name: str, default: Any) -> Any:
    v = getattr(args, name, None)
    return default if v is None else v


def main(args: argparse.Namespace) -> int:
    which = getattr(args, "which", None)
    if which == "cd":
        from stackalign.bench.cd import main as cd_main

        return int(cd_main(args) or 0)
    kwargs = dict(
        world=getattr(args, "world", None),
        n_prompts=int(_arg(args, "prompts", 4)),
        max_new_tokens=int(_arg(args, "max_new_tokens", 128)),
        device=getattr(args, "device", None) or os.environ.get("STACKALIGN_BENCH_DEVICE", "cpu"),
    )
    if kwargs["n_prompts"] < 1 or kwargs["max_new_tokens"] < 1:
        raise ValueError("--prompts and --max-new-tokens must be >= 1")
    own = {"policy": getattr(args, "policy", None), "reward_model": getattr(args, "reward_model", None)}
    if which == "args":
        bs = getattr(args, "batch_size", None)
        if bs is not None and bs < 1:
            raise ValueError("--batch-size must be >= 1")
        out = bench_args(**kwargs, **own, batch_size=bs, repeats=int(_arg(args, "repeats", 3)))
    elif which == "sample":
        if any(own.values()):
            raise ValueError("--policy / --reward-model: bench sample runs on a world's policy")
        out = bench_sample(**kwargs)
    elif which == "generate":
        from stackalign.bench.generate import bench_generate

        out = bench_generate(**kwargs, **own)
    else:
        raise ValueError(f"unknown benchmark {which!r}; choose args, cd, generate or sample")
    if getattr(args, "json", False):
        print(json.dumps(out))
    else:
        print_table(out)
    sys.stdout.flush()
    return 0

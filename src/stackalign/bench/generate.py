"""``stackalign bench generate``: (SRS-)ARGS inside HF ``model.generate`` (``ARGSLogitsProcessor``) against
stackalign's own ``args_generate``, on the world's left-padded test prompts.

Both decode greedily with k = 10, w = 0.5 (beta = 2) and stop rows at EOS; ``identical_*`` says whether
``generate`` produced ``args_generate``'s tokens for every row up to that row's end. Timed runs alternate
between the two and the fastest of ``repeats`` is kept (wall-clock and process CPU time, as the other
benchmarks). Ratio ``generate_over_args``: the cost of running inside ``generate``.
"""

from __future__ import annotations

import time
from typing import Any

import torch

from stackalign.bench.common import load_models

__all__ = ["bench_generate"]


def bench_generate(
    world: str | None = None,
    n_prompts: int = 8,
    max_new_tokens: int = 32,
    device: str = "cpu",
    repeats: int = 5,
    k: int = 10,
    policy: str | None = None,
    reward_model: str | None = None,
) -> dict:
    """Returns the ``stackalign bench`` JSON layout: variants (seconds, cpu_seconds, rm_tokens), ratios.
    ``policy`` / ``reward_model``: your own models instead of the world's (see :func:`load_models`)."""
    from stackalign.decoding.args import ARGSConfig, args_generate
    from stackalign.decoding.common import GenerationConfig
    from stackalign.integrations.transformers import ARGSLogitsProcessor

    policy, tok, rm, prompts, desc = load_models(world, device, policy=policy, reward_model=reward_model)
    prompts = list(prompts[:n_prompts])
    enc = tok(prompts, return_tensors="pt", padding=True).to(device)
    gen = GenerationConfig(max_new_tokens=max_new_tokens)
    variants: dict[str, dict[str, Any]] = {}
    identical: dict[str, bool] = {}
    for label, shaper in (("vanilla", None), ("srs", "official-args")):
        best = {"args_generate": [float("inf")] * 2, "generate": [float("inf")] * 2}
        for _ in range(repeats + 1):  # the first round warms up
            c0, t0 = time.process_time(), time.perf_counter()
            ref = args_generate(policy, tok, rm, prompts, ARGSConfig(k=k, w=0.5), gen, shaper=shaper)
            wall, cpu = time.perf_counter() - t0, time.process_time() - c0
            best["args_generate"] = [min(best["args_generate"][0], wall), min(best["args_generate"][1], cpu)]
            proc = ARGSLogitsProcessor(rm, k=k, w=0.5, shaper=shaper)
            c0, t0 = time.process_time(), time.perf_counter()
            with torch.no_grad():
                out = policy.generate(
                    **enc, logits_processor=[proc], do_sample=False, max_new_tokens=max_new_tokens
                )
            wall, cpu = time.perf_counter() - t0, time.process_time() - c0
            best["generate"] = [min(best["generate"][0], wall), min(best["generate"][1], cpu)]
        rows = out[:, enc["input_ids"].shape[1] :].tolist()
        identical[label] = [r[: len(a)] for r, a in zip(rows, ref.token_ids)] == ref.token_ids
        n_new = sum(len(a) for a in ref.token_ids)
        for name, rm_tokens in (("args_generate", ref.cost.rm_tokens), ("generate", proc.cost.rm_tokens)):
            wall, cpu = best[name]
            variants[f"{label}_{name}"] = {
                "seconds": wall,
                "cpu_seconds": cpu,
                "new_tokens": n_new,
                "tokens_per_second": n_new / wall if wall > 0 else None,
                "rm_tokens": rm_tokens,
            }
    ratios: dict[str, Any] = {}
    cpu_ratios: dict[str, float] = {}
    for label in ("vanilla", "srs"):
        a, g = variants[f"{label}_args_generate"], variants[f"{label}_generate"]
        ratios[f"{label}_generate_over_args"] = g["seconds"] / a["seconds"]
        cpu_ratios[f"{label}_generate_over_args"] = g["cpu_seconds"] / a["cpu_seconds"]
        ratios[f"identical_{label}"] = identical[label]
    return {
        "bench": "generate",
        "models": desc,
        "device": str(device),
        "torch_threads": torch.get_num_threads(),
        "prompts": len(prompts),
        "k": k,
        "max_new_tokens": max_new_tokens,
        "repeats": repeats,
        "scorer": ref.meta.get("scorer"),
        "variants": variants,
        "ratios": ratios,
        "ratios_cpu_time": cpu_ratios,
        "targets": {"identical_vanilla": "true", "identical_srs": "true"},
    }

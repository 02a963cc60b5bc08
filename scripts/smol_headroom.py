"""Headroom of the smol world's gold: base samples vs the best of n by gold and by the proxy, on test prompts.

    python scripts/smol_headroom.py --world smol --prompts 8 --n 64 --out runs/smol-headroom.json

For each of the first ``--prompts`` test prompts, ``--n`` ancestral samples (temperature 1, the world's
max_new_tokens) from the base model; reports the mean gold of a sample, of the best of n by gold (an oracle
upper bound) and of the best of n by the proxy (Best-of-n decoding), each with a 95% bootstrap interval over
prompts, the paired difference best-by-proxy − base, and the gold range. Seeded; one CPU thread.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--world", default="smol", help="smol (the cached smol world) or a world directory")
    ap.add_argument("--prompts", type=int, default=8)
    ap.add_argument("--n", type=int, default=64)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=None, help="write the numbers (and the samples) here as JSON")
    a = ap.parse_args()

    from stackalign.evaluation.intervals import bootstrap_ci, paired_diff_ci
    from stackalign.worlds import load_world
    from stackalign.worlds.build import sample_policy
    from stackalign.worlds.smol import clean

    torch.set_num_threads(1)
    t0 = time.perf_counter()
    world = load_world(a.world)
    policy, tok = world.load_policy()
    rm = world.load_reward_model()
    prompts = world.test_prompts[: a.prompts]
    torch.manual_seed(a.seed)
    _, samples, _ = sample_policy(
        policy,
        tok,
        prompts,
        a.n,
        world.max_new_tokens,
        a.batch,
        stop_strings=[],
        cut=clean,
        skip_special_tokens=False,
    )
    flat_q = [q for q in prompts for _ in range(a.n)]
    gold = [world.gold(q, s) for q, s in zip(flat_q, samples)]
    proxy = rm(flat_q, samples).tolist()
    rows = [(gold[i * a.n : (i + 1) * a.n], proxy[i * a.n : (i + 1) * a.n]) for i in range(len(prompts))]
    base = [sum(g) / len(g) for g, _ in rows]
    by_gold = [max(g) for g, _ in rows]
    by_proxy = [g[max(range(len(p)), key=p.__getitem__)] for g, p in rows]
    res = {
        "world": str(world.root),
        "prompts": len(prompts),
        "n": a.n,
        "max_new_tokens": world.max_new_tokens,
        "base_gold": [sum(base) / len(base), bootstrap_ci(base)],
        f"best_of_{a.n}_by_gold": [sum(by_gold) / len(by_gold), bootstrap_ci(by_gold)],
        f"best_of_{a.n}_by_proxy": [sum(by_proxy) / len(by_proxy), bootstrap_ci(by_proxy)],
        "by_proxy_minus_base": paired_diff_ci(by_proxy, base),
        "gold_min_max": [min(gold), max(gold)],
        "distinct_gold_values": len({round(g, 6) for g in gold}),
        "seconds": round(time.perf_counter() - t0, 1),
        "threads": 1,
    }
    print(json.dumps(res, indent=1))
    if a.out:
        Path(a.out).parent.mkdir(parents=True, exist_ok=True)
        res["samples"] = [
            dict(prompt=q, response=s, gold=g, proxy=p) for q, s, g, p in zip(flat_q, samples, gold, proxy)
        ]
        Path(a.out).write_text(json.dumps(res, indent=1) + "\n")


if __name__ == "__main__":
    main()

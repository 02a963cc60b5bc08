"""Trained policies side by side on a world's test prompts: mean gold utility, the gold win rate against the
base policy, and paired gold differences between policies, each with a 95% bootstrap interval over prompts.

    python -m experiments.policy_eval WORLD OUT.json NAME=POLICY_DIR [NAME=POLICY_DIR ...] \
        [--prompts 48] [--samples 2] [--max-new-tokens 48] [--paired-vs NAME ...]

A POLICY_DIR is anything ``stackalign.models.load_policy`` takes: a train run's ``final/`` (a LoRA adapter
directory is merged into a copy of its base), an SSAPO round's ``rounds/round_T/model``, or a model name. Every
policy (and the world's base policy, always included as ``base``) samples ``--samples`` answers per prompt with
the same seed, so the per-prompt values are paired across policies. Per prompt: the mean gold of its answers,
and the win rate of answer j over the base's answer j under the world's gold judge (ties count half).
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace
from pathlib import Path

import torch

from stackalign.decoding.common import GenerationConfig
from stackalign.decoding.sampling import sample

__all__ = ["evaluate_policies", "main"]


def _ci(values: list[float]) -> list[float]:
    """[mean, lo, hi]: the mean over prompts and its 95% bootstrap interval."""
    from stackalign.evaluation.intervals import bootstrap_ci

    m = sum(values) / len(values)
    lo, hi = bootstrap_ci(values) or (m, m)
    return [round(m, 4), round(lo, 4), round(hi, 4)]


@torch.no_grad()
def evaluate_policies(
    world,
    policies: dict[str, str],
    *,
    n_prompts: int = 48,
    samples: int = 2,
    max_new_tokens: int | None = None,
    seed: int = 1234,
    paired_vs: tuple[str, ...] = (),
) -> dict:
    from stackalign.evaluation.intervals import paired_diff_ci
    from stackalign.models import load_policy

    t0 = time.perf_counter()
    xs = world.test_prompts[:n_prompts]
    gen = GenerationConfig(
        max_new_tokens=max_new_tokens or world.max_new_tokens,
        stop_strings=tuple(world.stop_strings),
        seed=seed,
    )
    base, tok = world.load_policy()
    texts = {"base": sample(base, tok, xs, samples, replace(gen)).texts}
    del base
    for name, path in policies.items():
        model, _ = load_policy(path)
        if hasattr(model, "merge_and_unload"):  # LoRA: the same outputs, faster
            model = model.merge_and_unload()
        texts[name] = sample(model.eval(), tok, xs, samples, replace(gen)).texts
        del model
    gold = {
        n: [sum(world.gold(x, y) for y in row) / samples for x, row in zip(xs, t)] for n, t in texts.items()
    }

    def win(a: str, b: str) -> list[float]:
        out = []
        for x, ra, rb in zip(xs, texts[a], texts[b]):
            j = [world.gold_judge(x, u, v) for u, v in zip(ra, rb)]
            out.append(sum(1.0 if v > 0 else 0.5 if v == 0 else 0.0 for v in j) / samples)
        return out

    res = {
        "prompts": len(xs),
        "samples": samples,
        "max_new_tokens": gen.max_new_tokens,
        "seed": seed,
        "policies": {"base": "the world's base policy", **policies},
        "gold": {n: _ci(g) for n, g in gold.items()},
        "win_rate_vs_base": {n: _ci(win(n, "base")) for n in texts if n != "base"},
        "paired_gold_diff": {
            ref: {n: [round(v, 4) for v in paired_diff_ci(gold[n], gold[ref])] for n in gold if n != ref}
            for ref in paired_vs
        },
        "texts": texts,
        "seconds": round(time.perf_counter() - t0, 1),
    }
    return res


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m experiments.policy_eval", description=__doc__.splitlines()[0]
    )
    ap.add_argument("world")
    ap.add_argument("out")
    ap.add_argument("policies", nargs="+", metavar="NAME=POLICY_DIR")
    ap.add_argument("--prompts", type=int, default=48, help="the first N test prompts")
    ap.add_argument("--samples", type=int, default=2, help="answers per prompt and policy")
    ap.add_argument(
        "--max-new-tokens", type=int, default=None, help="answer length cap (default: the world's)"
    )
    ap.add_argument("--seed", type=int, default=1234, help="sampling seed (the same for every policy)")
    ap.add_argument(
        "--paired-vs", action="append", default=[], metavar="NAME", help="paired gold differences"
    )
    a = ap.parse_args(argv)
    policies = {}
    for item in a.policies:
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            ap.error(f"policy {item!r}: expected NAME=POLICY_DIR")
        if name == "base" or name in policies:
            ap.error(f"policy {item!r}: the name {name!r} is taken")
        policies[name] = path
    for ref in a.paired_vs:
        if ref != "base" and ref not in policies:
            ap.error(f"--paired-vs {ref!r}: not one of the policies")
    from stackalign.worlds import load_world

    res = evaluate_policies(
        load_world(a.world),
        policies,
        n_prompts=a.prompts,
        samples=a.samples,
        max_new_tokens=a.max_new_tokens,
        seed=a.seed,
        paired_vs=tuple(a.paired_vs),
    )
    Path(a.out).write_text(json.dumps(res, indent=1) + "\n")
    print(json.dumps({k: v for k, v in res.items() if k != "texts"}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""How far SRS moves soft Best-of-N's choice on a world's test prompts, and why the two can pick the same answers.

    python -m experiments.soft_bon_overlap WORLD [--prompts 24] [--n 8] [--max-new-tokens 32] \
        [--preset official-cd] [--beta 1.0]

Soft Best-of-N draws one of the N samples from ``softmax(shaped / beta)`` by inverse CDF on one uniform per
prompt (``decoding.bon``), and a recipe's rows share that uniform (common random numbers). Vanilla and SRS
soft-BoN therefore pick different answers only when the uniform falls where their two CDFs disagree. On the
same N samples and rewards this prints, per prompt and on average: the total-variation distance between the
two selection laws, the chance that the shared uniform gives both the same pick, the picks that differed,
and the proxy reward each law expects. The SRS row uses the preset with ``beta`` as in the evidence recipe
(selection temperature = the shaper's beta); vanilla selects at ``beta`` too. The threshold is the N
candidates' own ("step").
"""

from __future__ import annotations

import argparse
import json

import torch


def same_pick_probability(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """P(inverse CDF gives the same index under p and q for one shared uniform), per row of [R, N]."""
    cp, cq = p.cumsum(-1), q.cumsum(-1)
    lo = torch.maximum(cp - p, cq - q)
    return (torch.minimum(cp, cq) - lo).clamp(min=0).sum(-1)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m experiments.soft_bon_overlap", description=__doc__.splitlines()[0]
    )
    ap.add_argument("world")
    ap.add_argument("--prompts", type=int, default=24, help="the first N test prompts")
    ap.add_argument("--n", type=int, default=8, help="samples per prompt")
    ap.add_argument("--max-new-tokens", type=int, default=32)
    ap.add_argument("--preset", default="official-cd")
    ap.add_argument(
        "--beta", type=float, default=1.0, help="the SRS shaper's beta and both selection temperatures"
    )
    a = ap.parse_args(argv)

    from stackalign.decoding.bon import best_of_n, soft_select_probs
    from stackalign.decoding.common import GenerationConfig
    from stackalign.shaping.presets import get_preset
    from stackalign.worlds import load_world

    world = load_world(a.world)
    prompts = world.test_prompts[: a.prompts]
    policy, tok = world.load_policy()
    rm = world.load_reward_model()
    gen = GenerationConfig(
        max_new_tokens=a.max_new_tokens, temperature=1.0, stop_strings=tuple(world.stop_strings)
    )
    vanilla = best_of_n(policy, tok, rm, prompts, a.n, gen, soft=True, beta=a.beta)
    shaper = get_preset(a.preset, beta=a.beta)
    srs = best_of_n(
        policy,
        tok,
        rm,
        prompts,
        a.n,
        gen,
        soft=True,
        shaper=shaper,
        samples=vanilla.samples,
        rewards=vanilla.rewards,
    )
    p = soft_select_probs(vanilla.shaped, a.beta)
    q = soft_select_probs(srs.shaped, float(srs.meta["beta"]))
    same = same_pick_probability(p, q)
    r = vanilla.rewards.double()
    out = {
        "prompts": len(prompts),
        "n": a.n,
        "preset": a.preset,
        "beta": a.beta,
        "mean_tv_distance": round(float((0.5 * (p - q).abs().sum(-1)).mean()), 4),
        "mean_same_pick_probability": round(float(same.mean()), 4),
        "expected_different_picks": round(float((1 - same).sum()), 2),
        "probability_all_picks_same": round(float(same.prod()), 4),
        "different_picks": int((vanilla.index != srs.index).sum()),
        "expected_proxy_vanilla": round(float((p * r).sum(-1).mean()), 4),
        "expected_proxy_srs": round(float((q * r).sum(-1).mean()), 4),
    }
    print(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

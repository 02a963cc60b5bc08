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

``--betas 0.25,0.5,1,2,4`` adds both tuning protocols for soft Best-of-N, scored by each law's **expected**
gold over the N samples (exact given the samples, no selection noise): on ``--val-prompts`` validation
prompts, vanilla's best beta (the paper's protocol: both methods at it) and SRS's own best beta; on the test
prompts, the paired difference SRS − vanilla under each protocol with its 95% bootstrap interval.
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


def protocols(world, policy, tok, rm, gen, args, betas: list[float], test) -> dict:
    """Both tuning protocols of soft Best-of-N vs SRS soft Best-of-N (see the module docstring); ``test`` is
    the BoNResult of the test prompts (its samples and rewards are reused)."""
    from stackalign.decoding.bon import best_of_n, soft_select_probs
    from stackalign.evaluation.intervals import paired_diff_ci
    from stackalign.shaping.presets import get_preset

    def laws(prompts, base):
        """Per beta, the expected gold [P] of vanilla's and SRS's selection law over each prompt's samples."""
        gold = torch.tensor(
            [[world.gold(x, y) for y in row] for x, row in zip(prompts, base.samples)], dtype=torch.float64
        )
        r = base.rewards
        out = {}
        for b in betas:
            srs = get_preset(args.preset, beta=b)(r)
            out[b] = (
                (soft_select_probs(r.double(), b) * gold).sum(-1).tolist(),
                (soft_select_probs(srs, b) * gold).sum(-1).tolist(),
            )
        return out

    val_prompts = world.val_prompts[: args.val_prompts]
    val = laws(val_prompts, best_of_n(policy, tok, rm, val_prompts, args.n, gen, soft=True, beta=1.0))
    mean = {b: (sum(v) / len(v), sum(s) / len(s)) for b, (v, s) in val.items()}
    paper = max(betas, key=lambda b: (mean[b][0], -b))  # ties to the smaller beta (the larger weight 1/beta)
    own = max(betas, key=lambda b: (mean[b][1], -b))
    test = laws(test.prompts, test)
    return {
        "val_prompts": args.val_prompts,
        "val_expected_gold": {str(b): [round(m, 4) for m in mean[b]] for b in betas},
        "vanilla_best_beta": paper,
        "srs_best_beta": own,
        "test_vanilla_gold": round(sum(test[paper][0]) / len(test[paper][0]), 4),
        "test_srs_gold_paper_protocol": round(sum(test[paper][1]) / len(test[paper][1]), 4),
        "test_srs_gold_own_best": round(sum(test[own][1]) / len(test[own][1]), 4),
        "paper_protocol_srs_minus_vanilla": [
            round(v, 4) for v in paired_diff_ci(test[paper][1], test[paper][0])
        ],
        "own_best_srs_minus_vanilla": [round(v, 4) for v in paired_diff_ci(test[own][1], test[paper][0])],
    }


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
    ap.add_argument("--betas", default=None, help="comma-separated betas: add both tuning protocols")
    ap.add_argument("--val-prompts", type=int, default=8, help="validation prompts that choose beta")
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
    if a.betas:
        betas = sorted({float(b) for b in a.betas.split(",") if b.strip()})
        out["protocols"] = protocols(world, policy, tok, rm, gen, a, betas, vanilla)
    print(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Evidence for SLHF on a sandbox world: a round robin, cross-model refinement,
and Max@k over the refinement chain vs i.i.d. samples. All under the world's gold preference / utility.

    python -m experiments.slhf_evidence WORLD SLHF_RUN RLHF_RUN OUT.json [--prompts N] [--args-w W]
        [--selfplay SELFPLAY_RUN] [--nashmd NASHMD_RUN] [--no-args] [--k-max K] [--max-new-tokens T]

SLHF_RUN / RLHF_RUN are ``train`` output directories (their ``final/`` models are used). The answers refined
once come from base, RLHF, Best-of-4 on the proxy RM, the SLHF leader, and greedy ARGS and SRS-ARGS
(``official-args``, k = 10, reward weight ``--args-w``) on the base model and the proxy RM. Every win rate is
``[rate, lo, hi]``: the mean gold preference over the prompts and its 95% bootstrap interval. With
``--selfplay`` / ``--nashmd``, a ``selfplay`` run's final model joins the round robin (the SPO and Nash-MD-PG
self-play baselines). A LoRA run's ``final/`` is its adapter (merged into a copy of the base for decoding); an
SLHF run with two adapters has its follower in ``final/follower/``. ``--no-args`` leaves out the ARGS answers
(costly on a real model). ``mean_gold`` holds each answer's mean gold utility and ``gold_diff_vs_leader`` the
paired difference from the SLHF leader's, with its 95% bootstrap interval over the prompts.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace
from pathlib import Path

import torch

from stackalign.decoding.common import GenerationConfig
from stackalign.decoding.refine import RefineConfig, max_at_k, refine_chain
from stackalign.decoding.sampling import sample


def _pref(world, xs, a, b) -> list[float]:
    """[rate, lo, hi]: mean p(a ≻ b) under the gold preference over the prompts, 95% bootstrap interval."""
    from stackalign.evaluation.intervals import bootstrap_ci

    p = [world.gold_preference(x, u, v) for x, u, v in zip(xs, a, b)]
    rate = sum(p) / len(p)
    lo, hi = bootstrap_ci(p) or (rate, rate)  # None for no prompts
    return [round(rate, 4), round(lo, 4), round(hi, 4)]


def _load(path: Path):
    """A policy directory (LoRA adapters merged into a copy of their base: the same outputs, faster)."""
    from stackalign.models import load_policy

    model, tok = load_policy(path)
    if hasattr(model, "merge_and_unload"):
        model = model.merge_and_unload()
    return model.eval(), tok


@torch.no_grad()
def evidence(
    world,
    slhf_dir: str,
    rlhf_dir: str,
    *,
    n_prompts: int = 100,
    k_max: int = 5,
    seed: int = 0,
    args_w: float = 0.5,
    selfplay_dir: str | None = None,
    nashmd_dir: str | None = None,
    with_args: bool = True,
    max_new_tokens: int | None = None,
) -> dict:
    from stackalign.evaluation.intervals import paired_diff_ci

    t0 = time.perf_counter()
    xs = world.test_prompts[:n_prompts]
    base, tok = world.load_policy()
    slhf, _ = _load(Path(slhf_dir) / "final")
    follower_dir = Path(slhf_dir) / "final" / "follower"  # LoRA with two adapters: the follower's own
    slhf_f = _load(follower_dir)[0] if (follower_dir / "adapter_config.json").is_file() else slhf
    rlhf, _ = _load(Path(rlhf_dir) / "final")
    gen = GenerationConfig(
        max_new_tokens=max_new_tokens or world.max_new_tokens,
        stop_strings=tuple(world.stop_strings),
        seed=seed,
    )

    def one(model, prompts, s):
        return [t[0] for t in sample(model, tok, prompts, 1, replace(gen, seed=s)).texts]

    def follow(model, answers, s):
        return one(model, [world.follower_prompt(x, y) for x, y in zip(xs, answers)], s)

    # BoN-4 on the proxy RM: a stand-in for "another method's output" (an inference-time method).
    rm = world.load_reward_model()
    cand = sample(base, tok, xs, 4, replace(gen, seed=seed + 5))
    bon = []
    for i, x in enumerate(xs):
        sc = rm([x] * 4, cand.texts[i])
        bon.append(cand.texts[i][int(sc.argmax())])
    guided = _guided(base, tok, rm, xs, gen, args_w) if with_args else {}
    out = {
        "base": one(base, xs, seed + 1),
        "rlhf": one(rlhf, xs, seed + 2),
        "leader": one(slhf, xs, seed + 3),
        "bon4_proxy": bon,
        **guided,
    }
    out["follower"] = follow(slhf_f, out["leader"], seed + 4)
    names = ["base", "rlhf", *guided, "leader", "follower"]
    for name, run, s in (("selfplay", selfplay_dir, seed + 6), ("nashmd", nashmd_dir, seed + 7)):
        if run is not None:
            out[name] = one(_load(Path(run) / "final")[0], xs, s)
            names.append(name)
    round_robin = {a: {b: _pref(world, xs, out[a], out[b]) for b in names if b != a} for a in names}
    cross = {}
    for src in ("base", "rlhf", "bon4_proxy", *guided, "leader"):
        cross[src] = {
            "slhf_follower": _pref(world, xs, follow(slhf_f, out[src], seed + 10), out[src]),
            "base_as_follower": _pref(world, xs, follow(base, out[src], seed + 11), out[src]),
            "rlhf_as_follower": _pref(world, xs, follow(rlhf, out[src], seed + 12), out[src]),
        }
    # Max@k of the gold utility: the chain (leader answer, then k−1 follower steps) vs k i.i.d. samples.
    chain = refine_chain(slhf_f, tok, xs, out["leader"], world.follower_prompt, RefineConfig(k_max - 1), gen)
    base_chain = refine_chain(base, tok, xs, out["base"], world.follower_prompt, RefineConfig(k_max - 1), gen)
    iid = {n: sample(m, tok, xs, k_max, replace(gen, seed=seed + 20)).texts
           for n, m in (("leader", slhf), ("base", base), ("rlhf", rlhf))}  # fmt: skip

    def gold(rows):
        return [[world.gold(x, y) for y in r] for x, r in zip(xs, rows)]

    maxk = {
        "slhf_chain": [round(v, 4) for v in max_at_k(gold(chain))],
        "base_chain": [round(v, 4) for v in max_at_k(gold(base_chain))],
        **{f"{n}_iid": [round(v, 4) for v in max_at_k(gold(r))] for n, r in iid.items()},
    }
    golds = {n: [world.gold(x, y) for x, y in zip(xs, out[n])] for n in out}
    mean_gold = {n: round(sum(g) / len(g), 4) for n, g in golds.items()}
    diff = {
        n: [round(v, 4) for v in paired_diff_ci(g, golds["leader"])]
        for n, g in golds.items()
        if n != "leader"
    }
    return {
        "prompts": len(xs),
        "max_new_tokens": gen.max_new_tokens,
        "args_w": args_w if guided else None,
        "round_robin": round_robin,
        "refine_once_win_rate_vs_source": cross,
        "max_at_k_gold": maxk,
        "mean_gold": mean_gold,
        "gold_diff_vs_leader": diff,
        "cycle_share": world.figures.get("cycle_share"),
        "seconds": round(time.perf_counter() - t0, 1),
    }


def _guided(base, tok, rm, xs, gen, args_w: float) -> dict:
    """Greedy ARGS and SRS-ARGS (the official preset) on the base model: the inference-time methods SRS is
    about. As in a run recipe, the reward weight w is 1/beta and SRS's threshold uses the same beta."""
    from stackalign.decoding.args import ARGSConfig, args_generate
    from stackalign.shaping import get_preset

    args_cfg = ARGSConfig(k=10, w=args_w)
    return {
        name: args_generate(base, tok, rm, xs, args_cfg, gen, shaper=shaper).texts
        for name, shaper in (("args", None), ("srs_args", get_preset("official-args", beta=1.0 / args_w)))
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("world")
    ap.add_argument("slhf_run")
    ap.add_argument("rlhf_run")
    ap.add_argument("out")
    ap.add_argument("--prompts", type=int, default=100)
    ap.add_argument("--args-w", type=float, default=0.5, help="reward weight of the ARGS / SRS-ARGS answers")
    ap.add_argument(
        "--selfplay", default=None, help="a selfplay run directory: its final/ joins the round robin"
    )
    ap.add_argument("--nashmd", default=None, help="a selfplay run with opponent: mixture (Nash-MD-PG)")
    ap.add_argument("--no-args", action="store_true", help="leave out the ARGS / SRS-ARGS answers")
    ap.add_argument("--k-max", type=int, default=5, help="the longest chain / most samples of Max@k")
    ap.add_argument(
        "--max-new-tokens", type=int, default=None, help="answer length cap (default: the world's)"
    )
    a = ap.parse_args(argv)
    from stackalign.worlds import load_world

    res = evidence(
        load_world(a.world),
        a.slhf_run,
        a.rlhf_run,
        n_prompts=a.prompts,
        args_w=a.args_w,
        selfplay_dir=a.selfplay,
        nashmd_dir=a.nashmd,
        with_args=not a.no_args,
        k_max=a.k_max,
        max_new_tokens=a.max_new_tokens,
    )
    Path(a.out).write_text(json.dumps(res, indent=1) + "\n")
    print(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""``algorithm: rl`` — group-based REINFORCE/RLOO with a shaped reward: training-time SRS.

Per optimizer step (all on the policy-gradient components of ``stackalign.training.pg``):

1. P prompts (``prompts_per_step``), G samples each from the current policy π_θ (``group_size``).
2. Proxy reward-model scores r_ij, shape [P, G].
3. A shaping from ``stackalign.shaping`` applied over each prompt's group (a row), e.g. SRS
   (Stackelberg reward shaping, Wang et al., arXiv 2602.02572, Thm 3's soft threshold):
       s_ij = B_eff · σ(α (r_ij − m*(x_i)))
   with m*(x_i) the Stackelberg threshold of the row (the τ-expectile root of F, ``stackelberg_threshold``)
   computed either from the G on-policy samples (``threshold_source: group``: free, the samples are there) or
   from N samples of the reference policy ρ_base cached per prompt (``threshold_source: reference``: the
   paper's definition, m* is a property of ρ_base). ``vanilla`` is s = r, ``meanstd`` is GRPO's own group
   normalisation (arXiv 2402.03300 §4.1.2), ``minmax`` a bounded rescale.
4. The KL to the frozen reference, either in the reward (R = s − β·Σ_t k1, the RLHF objective
   E[s] − β KL(π‖π_ref)) or as a loss term (β·Σ_t k, GRPO's placement).
5. A group-relative advantage: leave-one-out (RLOO) A_ij = R_ij − mean_{k≠j} R_ik, or a constant baseline.
6. The REINFORCE loss, AdamW, clipping, checkpoints: ``stackalign.training.loop``.

Why SRS at training time: the KL-regularised RL optimum is exactly the SRS paper's follower,
π*(y|x) ∝ π_ref(y|x)·exp(s(x, y)/β) (its eq. for ρ_r); the leader's optimal bounded reward is the
threshold at m*(x) (its Thm 1/2), and the soft version bounds how much a high proxy score can pull the
policy (s ≤ B), which is the over-optimisation lever this module measures.

``rlhf`` (the RLHF baseline of SLHF) is this algorithm with ``shaping: vanilla``; :func:`rl_step`
and :func:`shape_group_rewards` are importable pieces for it.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from stackalign.decoding.mc import mc_threshold_of_rewards
from stackalign.evaluation.win_rates import gold_win_rate
from stackalign.shaping import PRESETS, SHAPERS, Shaper, make_shaper
from stackalign.store import write_json_atomic
from stackalign.training.estimators import KL_ESTIMATORS, kl_estimate
from stackalign.training.evaluate import evaluate_policy
from stackalign.training.loop import StepOutput, batch_indices, train_loop
from stackalign.training.pg import (
    advantages,
    kl_in_reward,
    pad_id_of,
    prompt_token_ids,
    reinforce_loss,
    response_logprobs,
    sample_group,
)

__all__ = ["RLConfig", "shape_group_rewards", "reference_thresholds", "rl_step", "train"]


@dataclass
class RLConfig:
    """The ``rl`` algorithm's fields (flat in the recipe beside the common ones)."""

    group_size: int = field(default=8, metadata={"help": "G: responses sampled per prompt per step"})
    shaping: str = field(default="srs", metadata={"help": f"reward shaping over each group: {list(SHAPERS)}"})
    preset: str | None = field(
        default="official-cd",
        metadata={
            "help": f"SRS preset for srs/hard shaping: {sorted(PRESETS)} (null: the shaper's defaults)"
        },
    )
    shaping_params: dict = field(
        default_factory=dict, metadata={"help": "shaper parameter overrides: B, beta, alpha, gamma_cap, ..."}
    )
    threshold_source: str = field(
        default="group",
        metadata={"help": "m*(x) from the on-policy group ('group') or from reference samples ('reference')"},
    )
    reference_samples: int = field(
        default=16, metadata={"help": "N reference samples per prompt for threshold_source: reference"}
    )
    baseline: str = field(
        default="rloo", metadata={"help": "advantage baseline: rloo (leave-one-out) or constant"}
    )
    baseline_constant: float = field(default=0.0, metadata={"help": "the constant baseline's value"})
    kl_coef: float = field(default=0.05, metadata={"help": "beta: weight of KL(pi || pi_ref)"})
    kl_placement: str = field(
        default="reward", metadata={"help": "'reward' (R - beta*k1) or 'loss' (+beta*k)"}
    )
    kl_estimator: str = field(default="k3", metadata={"help": "KL estimator of the loss term: k1, k2 or k3"})

    def __post_init__(self) -> None:
        if self.group_size < 1:
            raise ValueError(f"group_size: must be >= 1, got {self.group_size}")
        if self.shaping not in SHAPERS:
            raise ValueError(f"shaping: unknown {self.shaping!r}; choose from {list(SHAPERS)}")
        if self.preset is not None and self.preset not in PRESETS:
            raise ValueError(f"preset: unknown {self.preset!r}; choose from {sorted(PRESETS)}")
        if self.threshold_source not in ("group", "reference"):
            raise ValueError(f"threshold_source: expected group or reference, got {self.threshold_source!r}")
        # the group shapings (a threshold, mean/std, range) need at least two samples per prompt
        if self.shaping != "vanilla" and self.threshold_source == "group" and self.group_size < 2:
            raise ValueError(
                f"group_size: shaping {self.shaping!r} over a group needs G >= 2, got {self.group_size}"
            )
        if self.baseline not in ("rloo", "constant"):
            raise ValueError(f"baseline: expected rloo or constant, got {self.baseline!r}")
        if self.baseline == "rloo" and self.group_size < 2:
            raise ValueError(f"group_size: the rloo baseline needs G >= 2, got {self.group_size}")
        if self.reference_samples < 2:
            raise ValueError(f"reference_samples: must be >= 2, got {self.reference_samples}")
        if not (math.isfinite(self.kl_coef) and self.kl_coef >= 0):
            raise ValueError(f"kl_coef: must be a finite number >= 0, got {self.kl_coef}")
        if self.kl_placement not in ("reward", "loss"):
            raise ValueError(f"kl_placement: expected reward or loss, got {self.kl_placement!r}")
        if self.kl_estimator not in KL_ESTIMATORS:
            raise ValueError(
                f"kl_estimator: expected one of {list(KL_ESTIMATORS)}, got {self.kl_estimator!r}"
            )
        self.shaper()  # unknown shaping_params fail here, at load

    def shaper(self) -> Shaper:
        """The configured shaper (:func:`stackalign.shaping.make_shaper`: a preset for srs/hard when ``preset``
        is set); its errors name ``shaping_params``."""
        try:
            return make_shaper(self.shaping, self.shaping_params, preset=self.preset)
        except (TypeError, ValueError) as e:
            msg = str(e)
            sep = "." if msg.partition(":")[0].isidentifier() else ": "
            raise ValueError(f"shaping_params{sep}{msg}") from None


def shape_group_rewards(
    shaper: Shaper, rewards: torch.Tensor, threshold: torch.Tensor | None = None
) -> torch.Tensor:
    """Shape grouped rewards ``[P, G]`` row by row (one row = one prompt's samples) → float64 ``[P, G]``.

    ``threshold`` [P]: per-prompt m* from elsewhere (reference samples); None = each row's own m*."""
    if rewards.dim() != 2:
        raise ValueError(f"rewards: expected shape [prompts, G], got {tuple(rewards.shape)}")
    if not torch.isfinite(rewards).all():
        raise ValueError("rewards: the reward model returned NaN or infinite values")
    if shaper.kind != "vanilla" and threshold is None and rewards.shape[1] < 2:
        raise ValueError(
            f"group_size: shaping {shaper.kind!r} over a group needs G >= 2, got {rewards.shape[1]}"
        )
    return shaper(rewards.double(), threshold=threshold if shaper.uses_threshold else None)


def reference_thresholds(
    prompts: list[str],
    *,
    reference: Any,
    tokenizer: Any,
    reward_model: Any,
    shaper: Shaper,
    n: int,
    gen_config: Any,
    seed: int,
    cache_path: Path | None = None,
) -> torch.Tensor:
    """m*(x) per prompt from ``n`` reference samples (the paper's ρ_base; the Monte Carlo estimator of
    :func:`stackalign.decoding.mc.mc_threshold_of_rewards`), cached per prompt in ``cache_path`` (JSON). The samples are seeded by (seed, prompt), so the cache is a pure function."""
    import json

    cache: dict[str, float] = {}
    if cache_path is not None and cache_path.exists():
        cache = json.loads(cache_path.read_text())
    todo = [p for p in dict.fromkeys(prompts) if p not in cache]
    if todo:
        res = sample_group(reference, tokenizer, todo, n, gen_config, seed=seed, step=0, salt="reference")
        ps, rs = res.flat()
        r = reward_model(ps, rs).double().view(len(todo), n)
        m, _ = mc_threshold_of_rewards(r, shaper)
        cache.update({p: float(v) for p, v in zip(todo, m.tolist())})
        if cache_path is not None:
            write_json_atomic(cache_path, cache)
    return torch.tensor([cache[p] for p in prompts], dtype=torch.float64)


def rl_step(
    *,
    policy: Any,
    reference: Any,
    tokenizer: Any,
    reward_model: Any,
    prompts: list[str],
    cfg: RLConfig,
    shaper: Shaper,
    gen_config: Any,
    seed: int,
    step: int,
    threshold: torch.Tensor | None = None,
    gold: Any = None,
) -> StepOutput:
    """One REINFORCE/RLOO step on ``prompts`` (see the module docstring); returns the loss and metrics."""
    P, G = len(prompts), cfg.group_size
    res = sample_group(policy, tokenizer, prompts, G, gen_config, seed=seed, step=step)
    flat_p, flat_r = res.flat()
    rewards = reward_model(flat_p, flat_r).double().view(P, G)
    shaped = shape_group_rewards(shaper, rewards, threshold)
    pids = prompt_token_ids(tokenizer, flat_p)
    rids = [ids for row in res.token_ids for ids in row]
    pad = pad_id_of(tokenizer)
    logp, mask = response_logprobs(policy, pids, rids, pad, temperature=gen_config.temperature)
    with torch.no_grad():
        ref_logp, _ = response_logprobs(reference, pids, rids, pad, temperature=gen_config.temperature)
    kl = kl_estimate(logp.detach(), ref_logp, mask, "k1").double().view(P, G)
    shaped = shaped.to(kl.device)  # rewards come back on the host; the policy may sit on a GPU
    R = kl_in_reward(shaped, kl, cfg.kl_coef) if cfg.kl_placement == "reward" else shaped
    adv = advantages(R, cfg.baseline, cfg.baseline_constant).flatten()
    loss, parts = reinforce_loss(
        logp,
        mask,
        adv.float(),
        ref_logp=ref_logp if cfg.kl_placement == "loss" else None,
        kl_coef=cfg.kl_coef,
        kl_estimator=cfg.kl_estimator,
    )
    metrics = {
        "reward": float(rewards.mean()),
        "shaped_reward": float(shaped.mean()),
        "kl": float(kl.mean()),
        "response_tokens": float(mask.sum(-1).mean()),
        **parts,
    }
    if gold is not None:
        metrics["gold"] = sum(gold(p, r) for p, r in zip(flat_p, flat_r)) / len(flat_p)
    return StepOutput(loss, metrics)


def _eval(ctx, policy, tok, reference) -> dict:
    res = evaluate_policy(
        policy,
        tok,
        ctx.eval_prompts(),
        ctx.eval_generation_config(),
        n=ctx.config.eval.samples,
        gold=ctx.world.gold if ctx.world is not None else None,
        reward_model=ctx.load_reward_model(),
        reference=reference,
    )
    return {"summary": res.summary(), "texts": res.texts}


def _base_eval(ctx, reference, tok) -> dict:
    """The reference's evaluation (``base_eval.json``): a pure function, computed once and read back on resume."""
    base_path = Path(ctx.out_dir) / "base_eval.json"
    if base_path.exists():
        import json

        return json.loads(base_path.read_text())
    base = _eval(ctx, reference, tok, None)
    write_json_atomic(base_path, base)
    return base


def _gold_win_vs_base(ctx, final: dict, base: dict) -> float | None:
    """The trained policy's gold win rate over the reference on the evaluation samples (ties count half);
    None without a world."""
    if ctx.world is None:
        return None
    n = ctx.config.eval.samples
    flat_p = [p for p in ctx.eval_prompts() for _ in range(n)]
    return gold_win_rate(
        ctx.world,
        flat_p,
        [t for row in final["texts"] for t in row],
        [t for row in base["texts"] for t in row],
    )


def _eval_curve(bs: dict, metrics: list[dict], fs: dict, steps: int) -> list[dict]:
    """KL, proxy and gold reward over training: the base at step 0, every periodic evaluation, the final one."""
    curve = [{"step": 0, "kl": 0.0, "proxy_reward": bs["proxy_reward"], "gold_reward": bs["gold_reward"]}]
    for r in metrics:
        if "eval_kl" in r:
            curve.append(
                {
                    "step": r["step"],
                    "kl": r["eval_kl"],
                    "proxy_reward": r["eval_proxy_reward"],
                    "gold_reward": r.get("eval_gold_reward"),
                }
            )
    curve.append(
        {"step": steps, "kl": fs["kl"], "proxy_reward": fs["proxy_reward"], "gold_reward": fs["gold_reward"]}
    )
    return curve


def train(ctx) -> dict:
    """The ``rl`` algorithm: returns the summary fields of training-time SRS (see the module docstring)."""
    cfg: RLConfig = ctx.algo
    c = ctx.config
    shaper = cfg.shaper()
    train_prompts = ctx.train_prompts()  # prompt sources are read before any model loads
    ctx.eval_prompts()
    policy, tok = ctx.load_policy()
    reference = ctx.load_reference()
    rm = ctx.load_reward_model()
    gold = ctx.world.gold if ctx.world is not None else None
    gen = ctx.generation_config()
    out: Path = ctx.out_dir

    base = _base_eval(ctx, reference, tok)

    # what the reference thresholds and every step share: the frozen models, the shaping, the sampling
    shared = dict(
        reference=reference, tokenizer=tok, reward_model=rm, shaper=shaper, gen_config=gen, seed=c.seed
    )
    m_cache = out / "reference_thresholds.json"

    def step_fn(step: int) -> StepOutput:
        idx = batch_indices(len(train_prompts), c.prompts_per_step, step, c.seed)
        prompts = [train_prompts[i] for i in idx]
        threshold = None
        if cfg.threshold_source == "reference" and shaper.uses_threshold:
            threshold = reference_thresholds(prompts, n=cfg.reference_samples, cache_path=m_cache, **shared)
        o = rl_step(
            policy=policy, prompts=prompts, cfg=cfg, step=step, threshold=threshold, gold=gold, **shared
        )
        if c.eval.every and step % c.eval.every == 0 and step != c.steps:
            e = _eval(ctx, policy, tok, reference)["summary"]
            o.metrics.update({f"eval_{k}": v for k, v in e.items() if not k.endswith("_ci95")})
        return o

    result = train_loop(policy, tok, step_fn, ctx.loop_settings(), out)
    ctx.save_final(policy, tok)
    final = _eval(ctx, policy, tok, reference)
    fs, bs = final["summary"], base["summary"]
    win = _gold_win_vs_base(ctx, final, base)
    curve = _eval_curve(bs, result.metrics, fs, c.steps)
    write_json_atomic(out / "final_eval.json", final)
    return {
        "shaping": cfg.shaping,
        "shaper": asdict(shaper),
        "eval": {
            "gold_reward": fs["gold_reward"],
            "proxy_reward": fs["proxy_reward"],
            "kl": fs["kl"],
            "base_gold_reward": bs["gold_reward"],
            "base_proxy_reward": bs["proxy_reward"],
            "gold_reward_ci95": fs.get("gold_reward_ci95"),
            "win_rate_vs_base": win,
        },
        "curve": curve,
    }

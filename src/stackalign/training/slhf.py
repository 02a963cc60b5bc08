"""``algorithm: slhf`` — StackelbergGDA on language models (SLHF, arXiv 2512.16626, Algorithm 2), and
``algorithm: rlhf``, its RLHF baseline.

One model plays leader and follower, told apart by the prompt: the leader answers the world's prompt x,
the follower answers the world's follower prompt (x, the leader's realised answer y, "Please improve your
answer about {topic}.", ``World.follower_prompt``). Each step: P prompts (``prompts_per_step``), a leader
answer and a follower answer per prompt, the judge's s = p(y ≻ y' | x), one AdamW step on L_L + κ·L_F
(``stackalign.training.slhf_loss``; both leader objectives, eq. 5 the default). The judge is the world's
gold preference (a soft population vote, ``stackalign.worlds.preference``) or, with ``judge:
reward_model``, any reward model through σ(r(x, y) − r(x, y')) (the recipe's ``reward_model``, else the
world's proxy). The loop, checkpoints and kill -9 resume are the shared ``train_loop``: every sample of a
step comes from ``step_seed(seed, step, ...)`` and the prompts from ``batch_indices``.

``rlhf`` is the ``rl`` algorithm with ``shaping: vanilla`` (REINFORCE/RLOO with KL on the proxy reward).

Evaluation under the world's gold preference on the evaluation prompts (``eval.limit`` prompts ×
``eval.samples`` samples; ties count half): leader_vs_base, follower_vs_leader (the follower refining its
own leader's answer), follower_vs_base, and ``refinement``: the chain's win rate against base after 1, 2,
3 follower steps (only the last answer in context, the paper's Section 5 procedure).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import torch

from stackalign.evaluation.win_rates import bradley_terry_preference, soft_win_rate
from stackalign.training.loop import StepOutput, batch_indices, step_seed, train_loop
from stackalign.training.pg import pad_id_of, prompt_token_ids, response_logprobs, sample_group
from stackalign.training.rl import RLConfig
from stackalign.training.rl import train as _rl_train
from stackalign.training.slhf_loss import SLHFLossConfig, check_judge, slhf_loss

__all__ = ["SLHFConfig", "RLHFConfig", "train", "train_rlhf", "evaluate_slhf", "JUDGES"]

JUDGES = ("gold", "reward_model")
JUDGE_HELP = (
    "'gold': the world's gold preference p(y ≻ y'); 'reward_model': σ(r(x,y) − r(x,y')) with the recipe's "
    "reward_model (null: the world's proxy RM); null: gold when the world has one, else reward_model"
)


@dataclass
class SLHFConfig(SLHFLossConfig):
    """The ``slhf`` algorithm's fields (flat in the recipe beside the common ones); loss fields as in
    ``SLHFLossConfig`` (τ^L, τ^F, κ, leader objective, KL estimator, baseline)."""

    judge: str | None = field(default=None, metadata={"help": JUDGE_HELP})
    chain: int = field(
        default=3, metadata={"help": "refinement-chain length evaluated (summary 'refinement')"}
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.judge is not None and self.judge not in JUDGES:
            raise ValueError(f"judge: expected one of {list(JUDGES)} or null, got {self.judge!r}")
        if isinstance(self.chain, bool) or not isinstance(self.chain, int) or self.chain < 1:
            raise ValueError(f"chain: must be an integer >= 1, got {self.chain!r}")


@dataclass
class RLHFConfig(RLConfig):
    """``rlhf``: the ``rl`` algorithm with the unshaped proxy reward (``shaping: vanilla``)."""

    shaping: str = field(
        default="vanilla", metadata={"help": "reward shaping (vanilla: the proxy reward itself)"}
    )
    preset: str | None = field(default=None, metadata={"help": "SRS preset (unused with vanilla)"})
    kl_placement: str = field(
        default="reward", metadata={"help": "KL in the reward (RLHF: E[r] − β KL) or as a loss term"}
    )
    kl_estimator: str = field(default="k1", metadata={"help": "KL estimator: k1, k2 or k3"})


def train_rlhf(ctx) -> dict:
    return _rl_train(ctx)


def judge_name(ctx, cfg) -> str:
    """The recipe's ``judge``, or by default the world's gold preference when it has one, else the reward model."""
    if cfg.judge is not None:
        return cfg.judge
    return "gold" if ctx.world is not None and hasattr(ctx.world, "gold_preference") else "reward_model"


def make_judge(ctx, cfg: SLHFConfig):
    """``judge(xs, a, b) -> s`` with s_i = p(a_i ≻ b_i | x_i), a float tensor [B]."""
    world = ctx.world
    if judge_name(ctx, cfg) == "gold":
        if world is None:
            raise ValueError("judge: 'gold' needs a world (or use judge: reward_model)")
        return lambda xs, a, b: torch.tensor([world.gold_preference(x, u, v) for x, u, v in zip(xs, a, b)])
    rm = ctx.load_reward_model()

    def rm_judge(xs, a, b):
        with torch.no_grad():
            return bradley_terry_preference(rm(xs, a), rm(xs, b))

    return rm_judge


def _flat(res) -> tuple[list[str], list[list[int]]]:
    return [t[0] for t in res.texts], [ids[0] for ids in res.token_ids]


def train(ctx) -> dict:
    """The ``slhf`` algorithm: trains, saves ``final/``, returns the summary's ``eval`` (module docstring)."""
    cfg: SLHFConfig = ctx.algo
    c = ctx.config
    world = ctx.world
    if not c.chat_template and (world is None or not getattr(world, "has_follower_format", False)):
        where = "none" if world is None else repr(str(world.root))
        raise ValueError(
            f"world: SLHF's follower turn needs the chat template (chat_template: true) or a world with the "
            f"follower format (world {where} has none; rebuild it with `stackalign world build`)"
        )
    from stackalign.training.distributed import processes

    if cfg.baseline == "loo" and processes().distributed:
        raise ValueError(
            "baseline: 'loo' averages over the whole batch; under several processes use constant"
        )

    judge = make_judge(ctx, cfg)  # a gold judge without a world is refused before any model loads
    prompts = ctx.train_prompts()  # so is a prompt source that cannot be read
    ctx.eval_prompts()
    policy, tok = ctx.load_policy()
    follower_prompt = ctx.follower_prompt(tok)
    reference = ctx.load_reference()
    leader, follower = ctx.load_players(policy)  # the policy twice, or two LoRA adapters on one base
    gen = ctx.generation_config()
    pad = pad_id_of(tok)

    def logps(model, xs, ids):
        return response_logprobs(model, prompt_token_ids(tok, xs), ids, pad)

    def step_fn(step: int) -> StepOutput:
        xs = [prompts[i] for i in batch_indices(len(prompts), c.prompts_per_step, step, c.seed)]
        ys, y_ids = _flat(sample_group(leader, tok, xs, 1, gen, seed=c.seed, step=step, salt="leader"))
        fx = [follower_prompt(x, y) for x, y in zip(xs, ys)]
        ys2, y2_ids = _flat(sample_group(follower, tok, fx, 1, gen, seed=c.seed, step=step, salt="follower"))
        s = check_judge(judge(xs, ys, ys2), len(xs))
        lp_l, m_l = logps(leader, xs, y_ids)
        lp_f, m_f = logps(follower, fx, y2_ids)
        with torch.no_grad():
            ref_l, _ = logps(reference, xs, y_ids)
            ref_f, _ = logps(reference, fx, y2_ids)
        out = slhf_loss(lp_l, ref_l, m_l, lp_f, ref_f, m_f, s, cfg)
        return StepOutput(out.loss, out.stats)

    result = train_loop(policy, tok, step_fn, ctx.loop_settings(), ctx.out_dir)
    ctx.save_final(policy, tok)
    policy.eval()
    ev = evaluate_slhf(judge, follower_prompt, leader, reference, tok, ctx.eval_prompts(),
                       ctx.eval_generation_config(), samples=c.eval.samples, chain=cfg.chain,
                       follower=follower)  # fmt: skip
    ev["judge"] = judge_name(ctx, cfg)
    del result
    return {"eval": ev}


def eval_answers(model, tok, xs: list[str], gen, salt: str) -> list[str]:
    """One sampled answer per entry of ``xs`` with the evaluation seed ``step_seed(gen.seed, 0, salt)``: every
    algorithm's evaluation draws the base answers with the same salt, so their win rates share them."""
    from stackalign.decoding.sampling import sample
    from stackalign.training.distributed import full_weights

    with full_weights():  # FSDP: generation runs on gathered weights (no per-forward collective)
        return [
            t[0] for t in sample(model, tok, xs, 1, replace(gen, seed=step_seed(gen.seed, 0, salt))).texts
        ]


@torch.no_grad()
def evaluate_slhf(
    judge,
    follower_prompt,
    policy,
    base,
    tok,
    prompts,
    gen,
    *,
    samples: int = 1,
    chain: int = 3,
    follower=None,
) -> dict:
    """Win rates (mean soft preference of ``judge``, ties count half) over ``prompts`` × ``samples``: leader vs
    base, follower (refining its own leader's answer) vs leader and vs base, and the refinement chain vs base.
    ``follower_prompt(x, y)`` is the follower's input (``TrainContext.follower_prompt``); ``policy`` plays the
    leader, ``follower`` (default: ``policy``) the follower."""
    follower = policy if follower is None else follower
    xs = [x for x in prompts for _ in range(samples)]

    def vs(a: list[str], b: list[str]) -> float:  # the mean soft preference p(a_i ≻ b_i | x_i), 4 decimals
        return round(soft_win_rate(judge(xs, a, b)), 4)

    leader, basel = (
        eval_answers(policy, tok, xs, gen, "eval-leader"),
        eval_answers(base, tok, xs, gen, "eval-base"),
    )
    cur, refine, first = leader, {}, None
    for k in range(1, chain + 1):
        follower_xs = [follower_prompt(x, y) for x, y in zip(xs, cur)]
        cur = eval_answers(follower, tok, follower_xs, gen, f"eval-follower-{k}")
        first = cur if k == 1 else first
        refine[str(k)] = vs(cur, basel)
    return {
        "leader_vs_base": vs(leader, basel),
        "follower_vs_leader": vs(first, leader),
        "follower_vs_base": refine["1"],
        "refinement": refine,
    }

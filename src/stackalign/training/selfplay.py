"""``algorithm: selfplay`` — self-play preference baselines for SLHF (the NLHF family): SPO and Nash-MD-PG.

NLHF (Munos et al., arXiv 2312.00886) learns from a preference p(y ≻ y' | x) directly, as a game, instead of
through a scalar reward; on an intransitive preference (the sandbox's population vote) no scalar reward can
represent it. Its simplest practical form is self-play, as in SPO (Swamy, Dann, Kidambi, Wu, Agarwal: "A
Minimaximalist Approach to Reinforcement Learning from Human Feedback", ICML 2024): sample several answers from
the current policy, let the judge compare them, and use each answer's share of wins as its reward. Per step:

1. P prompts (``prompts_per_step``), G samples each from the current policy π_θ (``group_size`` >= 2).
2. Each sample's reward is its mean judged preference over the other G − 1 samples of its group:
       r_ij = 1/(G−1) · Σ_{k≠j} p(y_ij ≻ y_ik | x_i)                                    (win share)
   with the judge of ``algorithm: slhf`` (the world's gold preference, or σ(r(x,y) − r(x,y')) of a reward
   model). p(y ≻ y') + p(y' ≻ y) = 1, so the rewards of a group average exactly 1/2.
3. The KL to the frozen reference in the reward, R_ij = r_ij − τ · Σ_t k1(y_ij, t) (the regularised game of
   NLHF), and leave-one-out advantages A_ij = R_ij − mean_{k≠j} R_ik.
4. The REINFORCE loss, AdamW, clipping, checkpoints, resume: ``stackalign.training.loop``.

``opponent: mixture`` plays NLHF's Nash-MD-PG instead: the opponents are G other answers drawn from the
token-level geometric mixture of the policy and the reference, π^β(y_t | ·) ∝ π_θ(y_t | ·)^(1−β) ·
π_ref(y_t | ·)^β (``mixture_beta``; β = 0 is the policy itself), and each of the policy's G answers is rewarded by
its mean preference over them, r_ij = 1/G · Σ_k p(y_ij ≻ y'_ik | x_i); only the policy's answers are trained.

Evaluation: the policy against base under the world's gold preference (``policy_vs_base``), and the scalar gold
utility like the other algorithms.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from stackalign.evaluation.win_rates import soft_win_rate
from stackalign.training.estimators import kl_estimate
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
from stackalign.training.slhf import JUDGE_HELP, JUDGES, eval_answers, judge_name, make_judge
from stackalign.training.slhf_loss import check_judge

__all__ = ["SelfPlayConfig", "OPPONENTS", "win_share_rewards", "mixture_rewards", "train"]

OPPONENTS = ("self", "mixture")


@dataclass
class SelfPlayConfig:
    """The ``selfplay`` algorithm's fields (flat in the recipe beside the common ones)."""

    group_size: int = field(
        default=4,
        metadata={"help": "G >= 2: answers sampled per prompt, each judged against the other G - 1"},
    )
    tau: float = field(default=0.001, metadata={"help": "τ >= 0: weight of KL(π ‖ π_ref) in the reward"})
    judge: str | None = field(default=None, metadata={"help": JUDGE_HELP})
    opponent: str = field(
        default="self",
        metadata={
            "help": "'self': each answer is judged against the policy's other G − 1 answers (SPO); 'mixture': "
            "against G answers of the geometric mixture π^β ∝ π^(1−β) π_ref^β (Nash-MD-PG)"
        },
    )
    mixture_beta: float = field(
        default=0.125,
        metadata={"help": "β in [0, 1) of the 'mixture' opponent (the reference's share; 0 = the policy)"},
    )

    def __post_init__(self) -> None:
        g = self.group_size
        if isinstance(g, bool) or not isinstance(g, int) or g < 2:
            raise ValueError(f"group_size: must be an integer >= 2 (a sample needs opponents), got {g!r}")
        t = self.tau
        if isinstance(t, bool) or not isinstance(t, (int, float)) or not t >= 0 or t == float("inf"):
            raise ValueError(f"tau: must be a finite number >= 0, got {t!r}")
        if self.judge is not None and self.judge not in JUDGES:
            raise ValueError(f"judge: expected one of {list(JUDGES)} or null, got {self.judge!r}")
        if self.opponent not in OPPONENTS:
            raise ValueError(f"opponent: expected one of {list(OPPONENTS)}, got {self.opponent!r}")
        b = self.mixture_beta
        if isinstance(b, bool) or not isinstance(b, (int, float)) or not 0.0 <= b < 1.0:
            raise ValueError(f"mixture_beta: must be a number in [0, 1), got {b!r}")


def _judge_pairs(judge, prompts: list[str], pairs, first: list[list[str]], second: list[list[str]]):
    """p(first[i][j] ≻ second[i][k] | x_i) for every (i, j, k) of ``pairs``, in one judge call (float64)."""
    xs = [prompts[i] for i, _, _ in pairs]
    a = [first[i][j] for i, j, _ in pairs]
    b = [second[i][k] for i, _, k in pairs]
    return check_judge(judge(xs, a, b), len(pairs)).double()


def win_share_rewards(judge, prompts: list[str], texts: list[list[str]]) -> torch.Tensor:
    """r [P, G] (float64): r_ij = mean over k ≠ j of p(y_ij ≻ y_ik | x_i) (module docstring, step 2).

    One judge call over every ordered pair (j, k), j < k, of every group; the reverse pair is 1 − p."""
    P, G = len(prompts), len(texts[0])
    pairs = [(i, j, k) for i in range(P) for j in range(G) for k in range(j + 1, G)]
    wins = torch.zeros(P, G, dtype=torch.float64)
    for (i, j, k), p in zip(pairs, _judge_pairs(judge, prompts, pairs, texts, texts).tolist()):
        wins[i, j] += p
        wins[i, k] += 1.0 - p
    return wins / (G - 1)


def mixture_rewards(
    judge, prompts: list[str], texts: list[list[str]], opponents: list[list[str]]
) -> torch.Tensor:
    """r [P, G] (float64): r_ij = mean over the G opponents k of p(y_ij ≻ y'_ik | x_i) (Nash-MD-PG)."""
    P, G, K = len(prompts), len(texts[0]), len(opponents[0])
    pairs = [(i, j, k) for i in range(P) for j in range(G) for k in range(K)]
    return _judge_pairs(judge, prompts, pairs, texts, opponents).view(P, G, K).mean(-1)


def train(ctx) -> dict:
    """The ``selfplay`` algorithm: trains, saves ``final/``, returns the summary's ``eval``."""
    from stackalign.training.evaluate import evaluate_policy

    cfg: SelfPlayConfig = ctx.algo
    c = ctx.config
    world = ctx.world
    judge = make_judge(ctx, cfg)  # before any model loads: a gold judge without a world is refused there
    prompts = ctx.train_prompts()  # so is a prompt source that cannot be read
    ctx.eval_prompts()
    policy, tok = ctx.load_policy()
    reference = ctx.load_reference()
    gen = ctx.generation_config()
    pad = pad_id_of(tok)

    def step_fn(step: int) -> StepOutput:
        xs = [prompts[i] for i in batch_indices(len(prompts), c.prompts_per_step, step, c.seed)]
        P, G = len(xs), cfg.group_size
        res = sample_group(policy, tok, xs, G, gen, seed=c.seed, step=step)
        if cfg.opponent == "self":
            wins = win_share_rewards(judge, xs, res.texts)
        else:
            mix = (reference, cfg.mixture_beta)
            opp = sample_group(policy, tok, xs, G, gen, seed=c.seed, step=step, salt="opponent", mixture=mix)
            wins = mixture_rewards(judge, xs, res.texts, opp.texts)
        flat_p, _ = res.flat()
        pids = prompt_token_ids(tok, flat_p)
        rids = [ids for row in res.token_ids for ids in row]
        logp, mask = response_logprobs(policy, pids, rids, pad, temperature=gen.temperature)
        with torch.no_grad():
            ref_logp, _ = response_logprobs(reference, pids, rids, pad, temperature=gen.temperature)
        kl = kl_estimate(logp.detach(), ref_logp, mask, "k1").double().view(P, G)
        R = kl_in_reward(wins.to(kl.device), kl, cfg.tau)
        loss, parts = reinforce_loss(logp, mask, advantages(R, "rloo").flatten().float())
        metrics = {
            "win_share_max": float(wins.max(-1).values.mean()),
            "kl": float(kl.mean()),
            "response_tokens": float(mask.sum(-1).mean()),
            **parts,
        }
        return StepOutput(loss, metrics)

    train_loop(policy, tok, step_fn, ctx.loop_settings(), ctx.out_dir)
    ctx.save_final(policy, tok)
    policy.eval()
    eval_prompts, eval_gen = ctx.eval_prompts(), ctx.eval_generation_config()
    ev = evaluate_policy(
        policy,
        tok,
        eval_prompts,
        eval_gen,
        n=c.eval.samples,
        gold=world.gold if world is not None else None,
        reward_model=ctx.load_reward_model(),
        reference=reference,
    ).summary()
    ev["policy_vs_base"] = _vs_base(judge, policy, reference, tok, eval_prompts, eval_gen, c.eval.samples)
    ev["judge"] = judge_name(ctx, cfg)
    return {"eval": ev}


@torch.no_grad()
def _vs_base(judge, policy, base, tok, prompts, gen, samples: int) -> float:
    """SLHF's ``leader_vs_base`` for this policy: the same evaluation answers of base, the same soft win rate."""
    xs = [x for x in prompts for _ in range(samples)]
    policy_answers = eval_answers(policy, tok, xs, gen, "eval-leader")
    base_answers = eval_answers(base, tok, xs, gen, "eval-base")
    return round(soft_win_rate(judge(xs, policy_answers, base_answers)), 4)

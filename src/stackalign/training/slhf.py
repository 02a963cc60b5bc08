"""SLHF and its RLHF baseline on language models (StackelbergGDA, arXiv 2512.16626, Algorithm 2).

One model plays leader and follower, told apart by the prompt: the leader answers the world's prompt x,
the follower answers the world's follower prompt (x, the leader's realised answer y, "Please improve your
answer about {topic}."). Each step samples a batch of prompts, a leader answer and a follower answer per
prompt, asks the judge for s = p(y ≻ y' | x), and takes one AdamW step on L_L + κ·L_F
(``stackalign.training.slhf_loss``). The judge is the world's gold preference (a soft population vote,
``stackalign.worlds.preference``) or a reward model through σ(r(x, y) − r(x, y')).

The RLHF baseline (``algorithm="rlhf"``) is REINFORCE with a leave-one-out baseline (RLOO) and the k1 KL
penalty on the world's proxy reward model, on the same prompts, steps, batch and learning rate.

Evaluation (``evaluate``) is under the world's gold preference on test prompts, ties counting half:
leader_vs_base, follower_vs_leader (the follower refining its own leader's answer), follower_vs_base, and
the refinement chain's win rate against base after 1, 2, 3 follower steps (§7 of the paper: only the last
answer is in context).
"""

from __future__ import annotations

import copy
import json
import math
import random
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from stackalign.training.slhf_loss import SLHFLossConfig, check_judge, kl_estimate, slhf_loss

ALGORITHMS = ("slhf", "rlhf")
JUDGES = ("gold", "reward_model")


@dataclass
class SLHFTrainConfig(SLHFLossConfig):
    """An SLHF (or RLHF-baseline) run on a sandbox world. Loss fields: see ``SLHFLossConfig``."""

    algorithm: str = field(default="slhf", metadata={"help": "'slhf' (StackelbergGDA) or 'rlhf' (RLOO + KL)."})
    world: str = field(default="", metadata={"help": "World directory; '' = the cached default world."})
    steps: int = field(default=100, metadata={"help": "Optimizer steps (>= 1)."})
    batch_size: int = field(default=16, metadata={"help": "Prompts per step (>= 2)."})
    lr: float = field(default=3e-4, metadata={"help": "AdamW learning rate (> 0)."})
    grad_clip: float = field(default=1.0, metadata={"help": "Gradient-norm clip (> 0)."})
    temperature: float = field(default=1.0, metadata={"help": "Sampling temperature during training (> 0)."})
    max_new_tokens: int = field(default=0, metadata={"help": "Tokens per answer; 0 = the world's default."})
    judge: str = field(
        default="gold",
        metadata={"help": "'gold': the world's gold preference; 'reward_model': σ(r(y) − r(y')) of reward_model."},
    )
    reward_model: str = field(
        default="", metadata={"help": "Reward model dir/Hub name for judge=reward_model or rlhf; '' = world proxy."}
    )
    eval_prompts: int = field(default=100, metadata={"help": "Test prompts in the final evaluation (>= 1)."})
    seed: int = field(default=0, metadata={"help": "Seed of prompts order, sampling and initialisation."})

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.algorithm not in ALGORITHMS:
            raise ValueError(f"algorithm must be one of {ALGORITHMS}, got {self.algorithm!r}")
        if self.judge not in JUDGES:
            raise ValueError(f"judge must be one of {JUDGES}, got {self.judge!r}")
        for name, lo in (("steps", 1), ("batch_size", 2), ("eval_prompts", 1), ("max_new_tokens", 0), ("seed", 0)):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < lo:
                raise ValueError(f"{name} must be an integer >= {lo}, got {v!r}")
        for name in ("lr", "grad_clip", "temperature"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v <= 0:
                raise ValueError(f"{name} must be a finite number > 0, got {v!r}")


# ---------------------------------------------------------------------------------------------------- pieces
def response_logprobs(model: Any, tokenizer: Any, prompts: Sequence[str], responses: Sequence[Sequence[int]]):
    """Per-token log-probs of ``responses[i]`` (token ids) after ``prompts[i]``: (B, T) and a (B, T) mask.
    Right padding; gradients flow when the caller has them enabled."""
    p_ids = tokenizer(list(prompts), add_special_tokens=False)["input_ids"]
    seqs = [list(p) + list(r) for p, r in zip(p_ids, responses)]
    B, W = len(seqs), max(len(s) for s in seqs)
    T = max(1, max(len(r) for r in responses))
    pad = tokenizer.pad_token_id
    ids = torch.full((B, W), pad, dtype=torch.long)
    att = torch.zeros((B, W), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, : len(s)] = torch.tensor(s)
        att[i, : len(s)] = 1
    dev = next(model.parameters()).device
    logits = model(input_ids=ids.to(dev), attention_mask=att.to(dev)).logits.float()
    logp = torch.log_softmax(logits[:, :-1], -1).gather(-1, ids[:, 1:, None].to(dev))[..., 0]  # (B, W-1)
    out = torch.zeros((B, T), device=dev)
    mask = torch.zeros((B, T), device=dev)
    for i, (p, r) in enumerate(zip(p_ids, responses)):
        n = len(r)
        if n:
            # the token at position len(p)+j is predicted at position len(p)+j−1
            out[i, :n] = logp[i, len(p) - 1 : len(p) - 1 + n]
            mask[i, :n] = 1
    return out, mask


def generate(model, tokenizer, prompts: Sequence[str], *, max_new_tokens: int, temperature: float, seed: int,
             stop_strings: Sequence[str]) -> tuple[list[str], list[list[int]]]:  # fmt: skip
    """One sample per prompt: (texts, token ids incl. EOS when it ended)."""
    from stackalign.decoding.common import GenerationConfig
    from stackalign.decoding.sampling import sample

    cfg = GenerationConfig(
        max_new_tokens=max_new_tokens, temperature=temperature, stop_strings=tuple(stop_strings), seed=seed
    )
    was = model.training
    model.eval()
    res = sample(model, tokenizer, list(prompts), 1, cfg)
    model.train(was)
    return [t[0] for t in res.texts], [ids[0] for ids in res.token_ids]


def make_judge(world: Any, cfg: SLHFTrainConfig) -> Callable[[list[str], list[str], list[str]], torch.Tensor]:
    """s_i = p(a_i ≻ b_i | x_i) under the configured judge."""
    if cfg.judge == "gold":
        return lambda xs, a, b: torch.tensor([world.gold_preference(x, u, v) for x, u, v in zip(xs, a, b)])
    rm = _load_rm(world, cfg)
    return lambda xs, a, b: torch.sigmoid(rm(xs, a) - rm(xs, b))


def _load_rm(world, cfg):
    from stackalign.models import load_reward_model

    return load_reward_model(cfg.reward_model) if cfg.reward_model else world.load_reward_model()


def _pref(world, xs, a, b) -> float:
    return sum(world.gold_preference(x, u, v) for x, u, v in zip(xs, a, b)) / len(xs)


# ---------------------------------------------------------------------------------------------------- train
def train(cfg: SLHFTrainConfig, out: str | Path, *, world: Any = None, progress: bool = True) -> dict:
    """Run ``cfg`` into ``out`` (config.json, metrics.jsonl, final/, summary.json, report.md). Returns the
    summary (the issue's contract for ``algorithm="slhf"``)."""
    from stackalign.worlds import default_world, load_world

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if world is None:
        world = load_world(cfg.world) if cfg.world else default_world(progress=progress)
    if cfg.algorithm == "slhf" and not world.has_follower_format:
        raise ValueError(f"world: {str(world.root)!r} has no follower format (rebuild it with this stackalign)")
    (out / "config.json").write_text(json.dumps(asdict(cfg), indent=2) + "\n")
    torch.manual_seed(cfg.seed)
    model, tok = world.load_policy()
    ref = copy.deepcopy(model).eval()
    for p in ref.parameters():
        p.requires_grad_(False)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, betas=(0.9, 0.95), weight_decay=0.0)
    judge = make_judge(world, cfg) if cfg.algorithm == "slhf" else None
    rm = _load_rm(world, cfg) if cfg.algorithm == "rlhf" else None
    T = cfg.max_new_tokens or world.max_new_tokens
    gen_kw = dict(max_new_tokens=T, temperature=cfg.temperature, stop_strings=world.stop_strings)
    rng = random.Random(cfg.seed)
    prompts = list(world.train_prompts)
    t0 = time.perf_counter()
    metrics = open(out / "metrics.jsonl", "w")
    for step in range(cfg.steps):
        xs = rng.sample(prompts, cfg.batch_size)
        seed = cfg.seed * 1_000_003 + step * 2
        ys, y_ids = generate(model, tok, xs, seed=seed, **gen_kw)
        lp_l, m_l = response_logprobs(model, tok, xs, y_ids)
        with torch.no_grad():
            ref_l, _ = response_logprobs(ref, tok, xs, y_ids)
        if cfg.algorithm == "slhf":
            fx = [world.follower_prompt(x, y) for x, y in zip(xs, ys)]
            ys2, y2_ids = generate(model, tok, fx, seed=seed + 1, **gen_kw)
            lp_f, m_f = response_logprobs(model, tok, fx, y2_ids)
            with torch.no_grad():
                ref_f, _ = response_logprobs(ref, tok, fx, y2_ids)
            s = judge(xs, ys, ys2)
            res = slhf_loss(lp_l, ref_l, m_l, lp_f, ref_f, m_f, s, cfg)
            loss, stats = res.loss, res.stats
        else:
            r = rm(xs, ys).float()
            if not torch.isfinite(r).all():
                raise ValueError("reward_model: returned NaN or infinite scores")
            with torch.no_grad():
                kl = (kl_estimate(lp_l, ref_l, cfg.kl_estimator) * m_l).sum(-1)
                R = r - cfg.tau_leader * kl
                adv = R - (R.sum() - R) / (len(R) - 1)
            loss = -(adv * (lp_l * m_l).sum(-1)).mean()
            stats = {"reward": float(r.mean()), "kl_leader": float(kl.mean())}
        opt.zero_grad(set_to_none=True)
        loss.backward()
        gnorm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        opt.step()
        row = {"step": step + 1, "loss": float(loss.detach()), "grad_norm": float(gnorm), **stats,
               "seconds": round(time.perf_counter() - t0, 2)}  # fmt: skip
        metrics.write(json.dumps(row) + "\n")
        metrics.flush()
        if progress and ((step + 1) % 10 == 0 or step == 0):
            print(f"[{cfg.algorithm} {step + 1}/{cfg.steps} {row['seconds']:.0f}s] "
                  + " ".join(f"{k}={v:.3f}" for k, v in stats.items()), flush=True)  # fmt: skip
    metrics.close()
    seconds = time.perf_counter() - t0
    model.eval()
    model.save_pretrained(out / "final", safe_serialization=True)
    tok.save_pretrained(out / "final")
    ev = evaluate(world, model, tok, ref, n_prompts=cfg.eval_prompts, seed=cfg.seed, max_new_tokens=T,
                  follower=cfg.algorithm == "slhf")  # fmt: skip
    summary = {"algorithm": cfg.algorithm, "steps": cfg.steps, "seconds": round(seconds, 2), "eval": ev}
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    (out / "report.md").write_text(_report(cfg, summary))
    return summary


@torch.no_grad()
def evaluate(world, model, tok, base, *, n_prompts: int = 100, seed: int = 0, max_new_tokens: int = 64,
             follower: bool = True, chain: int = 3) -> dict:  # fmt: skip
    """Win rates under the world's gold preference on its first ``n_prompts`` test prompts (one sample
    each, temperature 1; ties count half). Without ``follower`` only leader_vs_base."""
    xs = world.test_prompts[:n_prompts]
    kw = dict(max_new_tokens=max_new_tokens, temperature=1.0, stop_strings=world.stop_strings)
    ys, _ = generate(model, tok, xs, seed=10_000 + seed, **kw)
    bs, _ = generate(base, tok, xs, seed=20_000 + seed, **kw)
    ev: dict[str, Any] = {"leader_vs_base": round(_pref(world, xs, ys, bs), 4)}
    if not follower:
        return ev
    cur, refine = ys, {}
    for k in range(1, chain + 1):
        cur, _ = generate(model, tok, [world.follower_prompt(x, y) for x, y in zip(xs, cur)], seed=30_000 + 7 * k + seed, **kw)
        if k == 1:
            first = cur
        refine[str(k)] = round(_pref(world, xs, cur, bs), 4)
    ev["follower_vs_leader"] = round(_pref(world, xs, first, ys), 4)
    ev["follower_vs_base"] = refine["1"]
    ev["refinement"] = refine
    return ev


def _report(cfg: SLHFTrainConfig, s: dict) -> str:
    rows = "\n".join(f"| {k} | {v} |" for k, v in s["eval"].items())
    return (
        f"# {cfg.algorithm} run\n\n{s['steps']} steps in {s['seconds']:.0f} s. Win rates under the world's gold "
        f"preference on test prompts (ties count half):\n\n| metric | value |\n|---|---|\n{rows}\n"
    )


def config_from_dict(d: dict) -> SLHFTrainConfig:
    """Build the config from a plain dict; unknown keys are refused by name."""
    names = {f.name for f in fields(SLHFTrainConfig)}
    bad = sorted(set(d) - names)
    if bad:
        raise ValueError(f"unknown SLHF config key(s) {bad}; known: {sorted(names)}")
    return SLHFTrainConfig(**d)

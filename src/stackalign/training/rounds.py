"""One loop for DPO and SSAPO: round 0 = DPO on the seeds, then rounds of new pairs, each trained with the
previous iterate as the reference (Chu et al., arXiv 2502.18099, Algorithm 1).

Per round t >= 1, the pairs come from an annotator:
* ``self`` (SSAPO, and SPA-like with eps = 0): K samples per new prompt from pi_{t-1}, labelled by the implicit
  reward log pi_{t-1}/pi_ref (chosen = best, rejected = worst); the follower's worst case in the W_1 ball
  (exact LP, grouped) reweights and shifts the loss;
* ``gold`` (DPO-all, the full-label ceiling): the same number of new prompts, each with a pair of base responses
  labelled by the world's gold utility (with the same label noise as the seeds).

The leader starts from pi_{t-1} and minimises the (weighted, shifted) DPO loss with pi_{t-1} as the frozen
reference (the release's choice), ``epochs`` passes over the round's new pairs only (as the release does).

Results layout (``out/``): ``config.json``; ``metrics.jsonl`` (one row per optimizer step and per evaluation);
``rounds/round_T/`` with ``pairs.jsonl`` (the round's pairs, with s / shifts for SSAPO), ``model/`` (the round's
final policy, an HF directory) and ``done.json`` (round summary); ``checkpoints/round_T.pt`` (mid-round state:
model, optimizer, step; removed when the round is done); ``final/`` (the last round's policy, usable as
``policy:`` in a run recipe); ``summary.json``. A run killed at any moment and restarted with the same ``out``
resumes: finished rounds are loaded, a round's pairs are read back, training continues from the last
checkpoint to bit-identical weights (data order is a function of (seed, round, epoch) only).
"""

from __future__ import annotations

import copy
import json
import math
import os
import shutil
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from stackalign.store import write_json_atomic
from stackalign.training.dpo_loss import dpo_loss, pack_sequences, response_token_ids, sequence_logprobs
from stackalign.training.preferences import (
    gold_pairs,
    load_pairs,
    save_pairs,
    seed_pairs,
    split_round_prompts,
    validate_pairs,
)
from stackalign.training.self_annotation import annotate_by_implicit_reward, batched_logprobs, solve_follower

__all__ = ["PreferenceConfig", "run_rounds", "evaluate_vs_base"]


@dataclass
class PreferenceConfig:
    """Settings of a DPO / SSAPO run (every field has a default; ranges are checked in __post_init__)."""

    algorithm: str = field(default="ssapo", metadata={"help": "'ssapo' (self-annotation rounds) or 'dpo'."})
    world: str | None = field(
        default=None, metadata={"help": "Sandbox world directory; None = the cached default world."}
    )
    seed: int = field(default=0, metadata={"help": "Seed for seed pairs, prompt pools, sampling, data order."})
    seed_pairs: int = field(default=64, metadata={"help": "Gold-labelled seed pairs (round 0's data)."})
    label_noise: float = field(
        default=0.0, metadata={"help": "Share of gold labels flipped (seeds, and DPO-all's pairs), in [0, 0.5)."}
    )
    seeds_file: str | None = field(
        default=None, metadata={"help": "JSONL of seed pairs (prompt, chosen, rejected) instead of generated."}
    )
    data: str = field(
        default="seeds",
        metadata={"help": "dpo only: 'seeds' (DPO on the seeds) or 'all' (gold pairs for every round's prompts)."},
    )
    rounds: int = field(default=3, metadata={"help": "Rounds after round 0 (the paper: 3 for Mistral)."})
    prompts_per_round: int = field(default=128, metadata={"help": "New prompts per round (the paper's P_t)."})
    samples_per_prompt: int = field(
        default=4, metadata={"help": "K answers sampled per prompt for self-annotation (>= 2)."}
    )
    temperature: float = field(
        default=0.7, metadata={"help": "Sampling temperature for self-annotation (the paper: 0.7)."}
    )
    beta: float = field(default=0.1, metadata={"help": "DPO beta (also scales the annotation margins)."})
    eps: float = field(
        default=0.3,
        metadata={
            "help": "Wasserstein radius of the follower's ball (0 = SPA-like), in units of the space: margins "
            "beta*(r_w - r_l) or probabilities (the paper's 0.01-0.05)."
        },
    )
    space: str = field(
        default="margin",
        metadata={"help": "'margin' (smooth, the theory's) or 'probability' (the official release's) follower."},
    )
    pieces: int = field(default=6, metadata={"help": "Tangent pieces K of the piecewise-linear loss bound."})
    group_size: int | None = field(default=100, metadata={"help": "Pairs per LP (None = one global LP)."})
    pad: float = field(default=0.5, metadata={"help": "Margin space: support = [min - pad, max + pad]."})
    q_box: bool = field(default=False, metadata={"help": "Probability space: the release's box |q_ik| <= eps."})
    lr: float = field(default=3e-4, metadata={"help": "AdamW learning rate."})
    weight_decay: float = field(default=0.0, metadata={"help": "AdamW weight decay."})
    batch_size: int = field(default=16, metadata={"help": "Pairs per optimizer step."})
    seed_epochs: int = field(default=8, metadata={"help": "Passes over the seeds in round 0."})
    epochs: int = field(default=1, metadata={"help": "Passes over each later round's new pairs (the release: 1)."})
    max_grad_norm: float = field(default=1.0, metadata={"help": "Gradient-norm clip (0 = off)."})
    save_every: int = field(default=20, metadata={"help": "Optimizer steps between mid-round checkpoints."})
    eval_prompts: int = field(default=200, metadata={"help": "Test prompts for the gold win rate vs base."})
    eval_samples: int = field(default=1, metadata={"help": "Samples per test prompt (policy and base)."})
    device: str = field(default="cpu", metadata={"help": "'cpu', 'cuda', ..."})

    def __post_init__(self) -> None:
        if self.algorithm not in ("dpo", "ssapo"):
            raise ValueError(f"algorithm: must be 'dpo' or 'ssapo', got {self.algorithm!r}")
        if self.data not in ("seeds", "all"):
            raise ValueError(f"data: must be 'seeds' or 'all', got {self.data!r}")
        if self.space not in ("margin", "probability"):
            raise ValueError(f"space: must be 'margin' or 'probability', got {self.space!r}")
        _int(self, "seed", 0)
        _int(self, "seed_pairs", 1)
        _int(self, "rounds", 0)
        _int(self, "prompts_per_round", 1)
        if not (isinstance(self.samples_per_prompt, int) and self.samples_per_prompt >= 2):
            raise ValueError(f"samples_per_prompt: K must be an integer >= 2, got {self.samples_per_prompt!r}")
        _int(self, "pieces", 1)
        if self.group_size is not None:
            _int(self, "group_size", 1)
        for name in ("batch_size", "seed_epochs", "epochs", "save_every", "eval_prompts", "eval_samples"):
            _int(self, name, 1)
        if not (0.0 <= float(self.label_noise) < 0.5):
            raise ValueError(f"label_noise: must be in [0, 0.5), got {self.label_noise!r}")
        if not (isinstance(self.eps, int | float) and math.isfinite(self.eps) and self.eps >= 0):
            raise ValueError(f"eps: the Wasserstein radius must be a finite number >= 0, got {self.eps!r}")
        for name in ("beta", "lr", "temperature"):
            v = getattr(self, name)
            if not (isinstance(v, int | float) and math.isfinite(v) and v > 0):
                raise ValueError(f"{name}: must be a finite number > 0, got {v!r}")
        for name in ("weight_decay", "max_grad_norm", "pad"):
            v = getattr(self, name)
            if not (isinstance(v, int | float) and math.isfinite(v) and v >= 0):
                raise ValueError(f"{name}: must be a finite number >= 0, got {v!r}")


def _int(cfg: Any, name: str, lo: int) -> None:
    v = getattr(cfg, name)
    if isinstance(v, bool) or not isinstance(v, int) or v < lo:
        raise ValueError(f"{name}: must be an integer >= {lo}, got {v!r}")


# ------------------------------------------------------------------------------------------ evaluation
def evaluate_vs_base(
    world: Any, model: Any, tokenizer: Any, base_rows: list[dict], cfg: PreferenceConfig, tag: str
) -> dict:
    """Gold win rate of the policy against the base samples on the same test prompts (ties count half) and
    the policy's mean gold utility. ``base_rows``: [{prompt, response, gold}] (one per prompt x sample)."""
    from stackalign.decoding.sampling import sample

    prompts = [r["prompt"] for r in base_rows[:: cfg.eval_samples]]
    res = sample(model, tokenizer, prompts, cfg.eval_samples, _gen_config(world, cfg, f"eval-{tag}", 1.0))
    wins = gold = 0.0
    n = 0
    for i, (p, row) in enumerate(zip(prompts, res.texts)):
        for j, y in enumerate(row):
            b = base_rows[i * cfg.eval_samples + j]
            v = world.gold_judge(p, y, b["response"])
            wins += 1.0 if v > 0 else (0.5 if v == 0 else 0.0)
            gold += world.gold(p, y)
            n += 1
    return {"win_rate_vs_base": wins / n, "gold_reward": gold / n}


def _gen_config(world: Any, cfg: PreferenceConfig, salt: str, temperature: float):
    from stackalign.decoding.common import GenerationConfig, prompt_seed

    return GenerationConfig(
        max_new_tokens=int(world.max_new_tokens),
        temperature=float(temperature),
        stop_strings=tuple(world.stop_strings),
        seed=prompt_seed(cfg.seed, salt) % (2**31),
    )


def _base_rows(world: Any, base: Any, tokenizer: Any, cfg: PreferenceConfig, out: Path) -> list[dict]:
    """The base policy's evaluation samples, drawn once and stored (``base_eval.jsonl``)."""
    path = out / "base_eval.jsonl"
    if path.is_file():
        return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]
    from stackalign.decoding.sampling import sample

    prompts = list(world.test_prompts[: cfg.eval_prompts])
    res = sample(base, tokenizer, prompts, cfg.eval_samples, _gen_config(world, cfg, "eval-base", 1.0))
    rows = [
        {"prompt": p, "response": y, "gold": world.gold(p, y)} for p, row in zip(prompts, res.texts) for y in row
    ]
    save_pairs(rows, path)
    return rows


# -------------------------------------------------------------------------------------------- training
def _tensorize(tokenizer: Any, pairs: list[dict]) -> dict:
    pids = [tokenizer(p["prompt"])["input_ids"] for p in pairs]
    return {
        "prompt": pids,
        "chosen": [response_token_ids(tokenizer, p["chosen"]) for p in pairs],
        "rejected": [response_token_ids(tokenizer, p["rejected"]) for p in pairs],
    }


def _pair_logps(model: Any, data: dict, idx: list[int], pad: int, device: Any) -> tuple[torch.Tensor, ...]:
    """Sequence log-probs of the chosen and rejected answers of pairs ``idx`` (one forward over 2B rows)."""
    P = [data["prompt"][i] for i in idx]
    R = [data["chosen"][i] for i in idx] + [data["rejected"][i] for i in idx]
    ids, mask, resp = pack_sequences(P + P, R, pad)
    lp = sequence_logprobs(model, ids.to(device), mask.to(device), resp.to(device))
    return lp[: len(idx)], lp[len(idx) :]


def _train_round(
    policy: Any,
    ref: Any,
    tokenizer: Any,
    pairs: list[dict],
    cfg: PreferenceConfig,
    t: int,
    epochs: int,
    out: Path,
    log: Any,
) -> None:
    """Minimise the (weighted, shifted) DPO loss over ``pairs`` for ``epochs`` passes, with checkpoints."""
    from stackalign.decoding.common import pad_id_of

    device = torch.device(cfg.device)
    pad = pad_id_of(tokenizer)
    data = _tensorize(tokenizer, pairs)
    N = len(pairs)
    has_wc = "s" in pairs[0]
    if has_wc:
        Kmax = max(len(p["s"]) for p in pairs)
        S = torch.zeros(N, Kmax)
        D = torch.zeros(N, Kmax)
        for i, p in enumerate(pairs):
            S[i, : len(p["s"])] = torch.tensor(p["s"])
            D[i, : len(p["shifts"])] = torch.tensor(p["shifts"])
    # the reference is frozen: its log-probs are computed once per round (deterministic, also on resume)
    with torch.no_grad():
        ref_c, ref_r = [], []
        for s in range(0, N, 64):
            c, r = _pair_logps(ref, data, list(range(s, min(N, s + 64))), pad, device)
            ref_c.append(c)
            ref_r.append(r)
        ref_c, ref_r = torch.cat(ref_c), torch.cat(ref_r)
    steps_per_epoch = math.ceil(N / cfg.batch_size)
    total = steps_per_epoch * epochs
    opt = torch.optim.AdamW(policy.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    ckpt = out / "checkpoints" / f"round_{t}.pt"
    step = 0
    if ckpt.is_file():
        st = torch.load(ckpt, map_location=device, weights_only=True)
        policy.load_state_dict(st["model"])
        opt.load_state_dict(st["optimizer"])
        step = int(st["step"])
        _truncate_metrics(out, t, step)
        log(f"round {t}: resumed at step {step}/{total}")
    else:
        _truncate_metrics(out, t, 0)
    policy.train()
    space = cfg.space if cfg.algorithm == "ssapo" else "margin"
    while step < total:
        ep, k = divmod(step, steps_per_epoch)
        g = torch.Generator().manual_seed(cfg.seed * 1_000_003 + t * 1009 + ep)
        order = torch.randperm(N, generator=g).tolist()
        idx = order[k * cfg.batch_size : (k + 1) * cfg.batch_size]
        pc, pr = _pair_logps(policy, data, idx, pad, device)
        kw = {}
        if has_wc:
            kw = dict(s=S[idx].to(device), shifts=D[idx].to(device), space=space)
        loss = dpo_loss(pc, pr, ref_c[idx], ref_r[idx], beta=cfg.beta, **kw)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.max_grad_norm > 0:
            torch.nn.utils.clip_grad_norm_(policy.parameters(), cfg.max_grad_norm)
        opt.step()
        step += 1
        with torch.no_grad():
            margin = cfg.beta * ((pc - ref_c[idx]) - (pr - ref_r[idx]))
        _append_metric(
            out,
            {
                "round": t,
                "step": step,
                "loss": float(loss.detach()),
                "margin": float(margin.mean()),
                "accuracy": float((margin > 0).float().mean()),
            },
        )
        if step % cfg.save_every == 0 and step < total:
            _save_ckpt(ckpt, policy, opt, step)
    policy.eval()


def _save_ckpt(path: Path, model: Any, opt: Any, step: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    torch.save({"model": model.state_dict(), "optimizer": opt.state_dict(), "step": step}, tmp)
    os.replace(tmp, path)


def _truncate_metrics(out: Path, t: int, step: int) -> None:
    """Drop metric rows of round t after ``step`` (written before a crash, to be rewritten on resume)."""
    path = out / "metrics.jsonl"
    if not path.is_file():
        return
    keep = []
    for line in path.read_text().splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:  # a line cut by the crash
            continue
        if row.get("round") == t and ("eval" in row or row.get("step", 0) > step):
            continue
        keep.append(line)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text("".join(x + "\n" for x in keep))
    os.replace(tmp, path)


def _append_metric(out: Path, row: dict) -> None:
    with open(out / "metrics.jsonl", "a") as f:
        f.write(json.dumps(row) + "\n")


def _save_model(model: Any, tokenizer: Any, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    model.save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    if path.exists():
        shutil.rmtree(path)
    os.replace(tmp, path)


def _frozen_copy(model: Any) -> Any:
    ref = copy.deepcopy(model)
    ref.eval()
    for p in ref.parameters():
        p.requires_grad_(False)
    return ref


# -------------------------------------------------------------------------------------------- the loop
def _round_pairs(
    t: int, cfg: PreferenceConfig, world: Any, policy: Any, base: Any, tokenizer: Any, pools: list[list[str]]
) -> tuple[list[dict], dict]:
    """The pairs of round t >= 1 and the round's stats (annotation and LP timings)."""
    pool = pools[t - 1]
    if cfg.algorithm == "dpo":  # DPO-all: gold (noisy at label_noise) pairs for the round's new prompts
        return gold_pairs(world, pool, len(pool), label_noise=cfg.label_noise, seed=cfg.seed * 7919 + t), {}
    from stackalign.decoding.sampling import sample

    t0 = time.perf_counter()
    res = sample(
        policy, tokenizer, pool, cfg.samples_per_prompt, _gen_config(world, cfg, f"annotate-{t}", cfg.temperature)
    )
    prompts, responses = res.flat()
    t1 = time.perf_counter()
    lp_pol = batched_logprobs(policy, tokenizer, prompts, responses)
    lp_ref = batched_logprobs(base, tokenizer, prompts, responses)
    pairs = annotate_by_implicit_reward(pool, res.texts, lp_pol, lp_ref, beta=cfg.beta)
    t2 = time.perf_counter()
    if not pairs:
        raise RuntimeError(f"round {t}: every prompt's {cfg.samples_per_prompt} samples were identical")
    sol = solve_follower(
        [p["margin"] for p in pairs],
        eps=cfg.eps,
        space=cfg.space,
        pieces=cfg.pieces,
        group_size=cfg.group_size,
        pad=cfg.pad,
        q_box=cfg.q_box,
    )
    for i, p in enumerate(pairs):
        p["s"] = sol.s[i].tolist()
        p["shifts"] = sol.shifts[i].tolist()
        gc, gr = world.gold(p["prompt"], p["chosen"]), world.gold(p["prompt"], p["rejected"])
        p["gold_chosen"], p["gold_rejected"] = gc, gr  # for the report only (never used in training)
    agree = sum(p["gold_chosen"] > p["gold_rejected"] for p in pairs) / len(pairs)
    stats = dict(
        sample_seconds=t1 - t0,
        annotate_seconds=t2 - t1,
        self_label_gold_agreement=agree,
        **sol.stats(),
    )
    return pairs, stats


def run_rounds(cfg: PreferenceConfig, out: str | os.PathLike, *, world: Any = None, progress: bool = True) -> dict:
    """Run (or resume) a DPO / SSAPO training into ``out``; returns the summary (also ``summary.json``)."""
    from stackalign.models import load_policy
    from stackalign.worlds import default_world, load_world

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()

    def log(msg: str) -> None:
        if progress:
            print(f"[{cfg.algorithm} {time.perf_counter() - t_start:6.1f}s] {msg}", file=sys.stderr, flush=True)

    conf = asdict(cfg)
    cpath = out / "config.json"
    if cpath.is_file():
        old = json.loads(cpath.read_text())
        if old != conf:
            diff = sorted(k for k in set(old) | set(conf) if old.get(k) != conf.get(k))
            raise ValueError(f"{out} holds a run with a different config (differs in {diff}); use a new --out")
    else:
        write_json_atomic(cpath, conf)
    if world is None:
        world = load_world(cfg.world) if cfg.world else default_world(progress=progress)
    torch.manual_seed(cfg.seed)
    base, tokenizer = load_policy(world.policy_dir, device=cfg.device)
    for p in base.parameters():
        p.requires_grad_(False)
    n_rounds = cfg.rounds if (cfg.algorithm == "ssapo" or cfg.data == "all") else 0
    seeds = (
        load_pairs(cfg.seeds_file)
        if cfg.seeds_file
        else seed_pairs(world, cfg.seed_pairs, label_noise=cfg.label_noise, seed=cfg.seed)
    )
    seeds = validate_pairs(seeds, source="seed pairs")
    seed_prompts = {p["prompt"] for p in seeds}
    rest = [p for p in world.train_prompts if p not in seed_prompts]
    _, pools = split_round_prompts(rest or world.train_prompts, 0, cfg.prompts_per_round, n_rounds, seed=cfg.seed)
    base_rows = _base_rows(world, base, tokenizer, cfg, out)
    policy = None
    rounds_summary = []
    for t in range(0, n_rounds + 1):
        rdir = out / "rounds" / f"round_{t}"
        done = rdir / "done.json"
        if done.is_file():
            rounds_summary.append(json.loads(done.read_text()))
            continue
        rdir.mkdir(parents=True, exist_ok=True)
        if policy is None:  # pi_{t-1}: the base for round 0, else the previous round's model
            prev = base if t == 0 else load_policy(out / "rounds" / f"round_{t - 1}" / "model", device=cfg.device)[0]
            policy = copy.deepcopy(prev) if t == 0 else prev
            for p in policy.parameters():
                p.requires_grad_(True)
        ref = _frozen_copy(policy)  # pi_{t-1} as the leader's reference
        stats: dict = {}
        ppath = rdir / "pairs.jsonl"
        if ppath.is_file():
            pairs = [json.loads(x) for x in ppath.read_text().splitlines() if x.strip()]
        else:
            if t == 0:
                pairs = seeds
            else:
                log(f"round {t}: annotating {len(pools[t - 1])} prompts")
                pairs, stats = _round_pairs(t, cfg, world, policy, base, tokenizer, pools)
            save_pairs(pairs, ppath)
            write_json_atomic(rdir / "stats.json", stats)
        if not stats and (rdir / "stats.json").is_file():
            stats = json.loads((rdir / "stats.json").read_text())
        log(f"round {t}: training on {len(pairs)} pairs")
        _train_round(policy, ref, tokenizer, pairs, cfg, t, cfg.seed_epochs if t == 0 else cfg.epochs, out, log)
        ev = evaluate_vs_base(world, policy, tokenizer, base_rows, cfg, f"round-{t}")
        log(f"round {t}: win rate vs base {ev['win_rate_vs_base']:.3f}, gold {ev['gold_reward']:.3f}")
        _save_model(policy, tokenizer, rdir / "model")
        row = {"round": t, "pairs": len(pairs), "eval": ev, "stats": stats}
        _append_metric(out, {"round": t, "eval": ev})
        write_json_atomic(done, row)
        ck = out / "checkpoints" / f"round_{t}.pt"
        if ck.is_file():
            ck.unlink()
        rounds_summary.append(row)
        del ref
    last = out / "rounds" / f"round_{n_rounds}" / "model"
    if not (out / "final").is_dir():
        shutil.copytree(last, out / ".final.tmp", dirs_exist_ok=True)
        os.replace(out / ".final.tmp", out / "final")
    summary = {
        "algorithm": cfg.algorithm,
        "rounds": rounds_summary,
        "eval": rounds_summary[-1]["eval"],
        "seconds": time.perf_counter() - t_start,
        "config": conf,
    }
    write_json_atomic(out / "summary.json", summary)
    return summary

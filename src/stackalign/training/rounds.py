"""One round loop for DPO and SSAPO on the shared trainer (`stackalign.training.loop.train_loop`):
round 0 = DPO on the seeds, then rounds of new pairs, each trained with the previous iterate as the
reference (Chu et al., arXiv 2502.18099, Algorithm 1).

Per round t >= 1 the pairs come from an annotator:

* ``self`` (SSAPO; SPA-like with eps = 0): K samples per new prompt from pi_{t-1}, labelled by the implicit
  reward log pi_{t-1}/pi_ref (chosen = best, rejected = worst); the follower's worst case in the W_1 ball
  (the exact LP, grouped) reweights and shifts the loss (`self_annotation.py`);
* ``gold`` (DPO-all, the full-label ceiling): the round's new prompts, each with a pair of base responses
  labelled by the world's gold utility (with the seeds' label noise).

The leader starts from pi_{t-1} and minimises the (weighted, shifted) DPO loss with pi_{t-1} as the frozen
reference (the release's choice), ``epochs`` passes over the round's new pairs only (as the release does).
Each round is its own run of the shared trainer (`stackalign.training.loop.train_loop`) in
``rounds/round_T/``, with a fresh AdamW, as each round of the release is a new DPO launch from pi_{t-1}. The
schedule is fixed in advance: round 0 has ceil(seed_pairs / batch_size) * seed_epochs steps, every later round
ceil(prompts_per_round / batch_size) * epochs steps (a round with fewer pairs, when some prompts' samples were
all identical, cycles through them). The recipe's ``steps`` is therefore not used; ``summary.json`` reports
the scheduled total.

Resume (kill -9 at any moment): finished rounds (``done.json`` and ``model/`` present) are skipped; the
current round's trainer resumes from its latest checkpoint; pi_{t-1} is read back from the previous round's
``model/``, the round's pairs from ``pairs.jsonl`` (written before its first step). All sampling and data
order are pure functions of (seed, round, step), so the resumed weights are bit-identical on CPU.

Layout (besides the trainer's ``config.json``, ``final/``, ``summary.json``): ``metrics.jsonl`` (all rounds,
global step numbers, written at the end), ``base_eval.jsonl`` (the base policy's evaluation samples, drawn
once), and per round ``rounds/round_T/`` with ``pairs.jsonl``, ``stats.json`` (annotation and LP timings),
``metrics.jsonl``, ``checkpoints/``, ``model/`` (pi_T) and ``done.json`` (its evaluation).
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field, replace
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

__all__ = ["DPOConfig", "SSAPOConfig", "round_schedule", "run_rounds"]


def _check_int(cfg: Any, name: str, lo: int) -> None:
    v = getattr(cfg, name)
    if isinstance(v, bool) or not isinstance(v, int) or v < lo:
        raise ValueError(f"{name}: must be an integer >= {lo}, got {v!r}")


@dataclass
class DPOConfig:
    """``algorithm: dpo``: DPO on gold-labelled pairs (Rafailov et al., arXiv 2305.18290): the seeds only
    (``data: seeds``, one round) or, as the full-label ceiling, gold pairs for every round's prompts
    (``data: all``: the same rounds and prompts as SSAPO, labelled by the world's gold judge)."""

    # common fields this algorithm does not read (its schedule comes from the rounds); setting one is an error
    UNUSED_COMMON = ("steps", "prompts_per_step")

    beta: float = field(default=0.1, metadata={"help": "DPO beta (KL strength of the implicit reward)."})
    seed_pairs: int = field(default=64, metadata={"help": "gold-labelled seed pairs (round 0's data)"})
    label_noise: float = field(
        default=0.0,
        metadata={"help": "share of gold labels flipped (seeds and DPO-all's pairs), in [0, 0.5)"},
    )
    seeds_file: str | None = field(
        default=None, metadata={"help": "JSONL of seed pairs (prompt, chosen, rejected) instead of generated"}
    )
    prompts_file: str | None = field(
        default=None,
        metadata={
            "help": "JSONL of {prompt} for the rounds' new prompts (default: the world's train prompts)"
        },
    )
    data: str = field(
        default="seeds", metadata={"help": "seeds (DPO on the seeds) or all (gold pairs for every round too)"}
    )
    rounds: int = field(default=3, metadata={"help": "rounds after round 0 (used with data: all)"})
    prompts_per_round: int = field(default=128, metadata={"help": "new prompts per round (the paper's P_t)"})
    batch_size: int = field(default=16, metadata={"help": "pairs per optimizer step"})
    seed_epochs: int = field(default=8, metadata={"help": "passes over the seeds in round 0"})
    epochs: int = field(default=1, metadata={"help": "passes over each later round's new pairs (release: 1)"})

    def __post_init__(self) -> None:
        if not (isinstance(self.beta, int | float) and math.isfinite(self.beta) and self.beta > 0):
            raise ValueError(f"beta: must be a finite number > 0, got {self.beta!r}")
        if not (isinstance(self.label_noise, int | float) and 0.0 <= self.label_noise < 0.5):
            raise ValueError(f"label_noise: must be in [0, 0.5), got {self.label_noise!r}")
        if self.data not in ("seeds", "all"):
            raise ValueError(f"data: must be 'seeds' or 'all', got {self.data!r}")
        for name, lo in (
            ("seed_pairs", 1), ("rounds", 0), ("prompts_per_round", 1), ("batch_size", 1),
            ("seed_epochs", 1), ("epochs", 1),
        ):  # fmt: skip
            _check_int(self, name, lo)


@dataclass
class SSAPOConfig(DPOConfig):
    """``algorithm: ssapo``: Stackelberg self-annotated preference optimisation (arXiv 2502.18099,
    Algorithm 1): DPO on the seeds, then rounds of self-annotation by the implicit reward, the follower's
    worst case in a Wasserstein ball (eps = 0: SPA-like self-annotation without reweighting), and the
    reweighted, shifted DPO loss."""

    samples_per_prompt: int = field(
        default=4, metadata={"help": "K answers sampled per new prompt for self-annotation (>= 2)"}
    )
    eps: float = field(
        default=0.3,
        metadata={
            "help": "Wasserstein radius (0 = SPA-like), in the units of `space`: margins beta*(r_w - r_l), or "
            "probabilities (the paper's 0.01-0.05)"
        },
    )
    space: str = field(
        default="margin",
        metadata={"help": "margin (smooth, the theory's) or probability (the official release's) follower"},
    )
    pieces: int = field(default=6, metadata={"help": "tangent pieces K of the piecewise-linear loss bound"})
    group_size: int | None = field(default=100, metadata={"help": "pairs per LP (null: one global LP)"})
    pad: float = field(default=0.5, metadata={"help": "margin space: support = [min - pad, max + pad]"})
    q_box: bool = field(
        default=False, metadata={"help": "probability space: the release's box |q_ik| <= eps"}
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        if (
            isinstance(self.samples_per_prompt, bool)
            or not isinstance(self.samples_per_prompt, int)
            or (self.samples_per_prompt < 2)
        ):
            raise ValueError(
                f"samples_per_prompt: K must be an integer >= 2, got {self.samples_per_prompt!r}"
            )
        if not (isinstance(self.eps, int | float) and math.isfinite(self.eps) and self.eps >= 0):
            raise ValueError(f"eps: the Wasserstein radius must be a finite number >= 0, got {self.eps!r}")
        if self.space not in ("margin", "probability"):
            raise ValueError(f"space: must be 'margin' or 'probability', got {self.space!r}")
        _check_int(self, "pieces", 1)
        if self.group_size is not None:
            _check_int(self, "group_size", 1)
        if not (isinstance(self.pad, int | float) and math.isfinite(self.pad) and self.pad >= 0):
            raise ValueError(f"pad: must be a finite number >= 0, got {self.pad!r}")


def round_schedule(algo: DPOConfig, n_seeds: int, self_annotating: bool) -> list[int]:
    """Optimizer steps of each round: [round 0, round 1, ...] (see the module docstring)."""
    out = [math.ceil(n_seeds / algo.batch_size) * algo.seed_epochs]
    out += [math.ceil(algo.prompts_per_round / algo.batch_size) * algo.epochs] * later_rounds(
        algo, self_annotating
    )
    return out


def later_rounds(algo: DPOConfig, self_annotating: bool) -> int:
    """Rounds after round 0: SSAPO's self-annotation rounds, or DPO-all's gold rounds; DPO on the seeds has none."""
    return algo.rounds if (self_annotating or algo.data == "all") else 0


# -------------------------------------------------------------------------------------------- helpers
def _tensorize(tokenizer: Any, pairs: list[dict]) -> dict:
    return {
        "prompt": [tokenizer(p["prompt"])["input_ids"] for p in pairs],
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


def _read_jsonl(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]


# ------------------------------------------------------------------------------------------ the loop
def _check_sources(ctx: Any, ssapo: bool) -> tuple[list[str], list[str], bool]:
    """Every prompt source read before any model loads (a missing file or world split fails here); DPO on the
    seeds alone has no later rounds and reads no prompts. Returns (train prompts, eval prompts, whether the
    reward model judges the evaluation: no world, but a reward model)."""
    algo, common, world = ctx.algo, ctx.config, ctx.world
    if world is None:  # a user's own models: seeds and round prompts from files, no gold evaluation
        if not algo.seeds_file:
            raise ValueError("seeds_file: required when world is null (the seed pairs come from a file)")
        if algo.data == "all" and not ssapo:
            raise ValueError("data: 'all' needs a world's gold judge to label the rounds; use data: seeds")
    train_prompts = []
    if later_rounds(algo, ssapo):
        if algo.prompts_file:
            train_prompts = ctx.prompts_from(algo.prompts_file, "prompts_file")
        else:
            train_prompts = ctx.train_prompts()
    rm_eval = world is None and common.reward_model is not None  # no gold: the reward model judges
    eval_prompts = ctx.eval_prompts() if world is not None or rm_eval else []
    return train_prompts, eval_prompts, rm_eval


def _load_seeds(ctx: Any) -> list[dict]:
    """Round 0's pairs: the seeds file (prompts rendered with the chat template when it is on), else gold
    pairs of the world (with the recipe's label noise)."""
    algo, common = ctx.algo, ctx.config
    seeds = load_pairs(algo.seeds_file) if algo.seeds_file else None
    if seeds is not None and common.chat_template:  # a seeds file holds raw user requests
        seeds = [{**p, "prompt": ctx.format_prompts([p["prompt"]])[0]} for p in seeds]
    if seeds is None:
        seeds = seed_pairs(ctx.world, algo.seed_pairs, label_noise=algo.label_noise, seed=common.seed)
    return validate_pairs(seeds, source="seed pairs")


class _Rounds:
    """One run of the round loop: the models, the seeds, each round's prompt pool and the base's evaluation
    samples, with one method per phase of a round (pairs, reference log-probs, steps, evaluation)."""

    def __init__(self, ctx: Any, algorithm: str) -> None:
        from stackalign.decoding.common import pad_id_of

        self.ctx, self.algo, self.common = ctx, ctx.algo, ctx.config
        self.out, self.world = Path(ctx.out_dir), ctx.world
        self.algorithm, self.ssapo = algorithm, algorithm == "ssapo"
        train_prompts, self.eval_prompts, self.rm_eval = _check_sources(ctx, self.ssapo)
        self.device = torch.device(self.common.device)
        self.policy, self.tok = ctx.load_policy()
        self.policy.eval()  # no dropout: the loss is deterministic given the weights
        # pi_ref of the implicit reward (the initial policy; with LoRA: adapters off)
        self.base = ctx.load_reference()
        # the leader's reference pi_{t-1} is the policy itself at the start of round t: its log-probs on the
        # round's pairs are computed then (round_data), before any update, so no frozen copy is kept
        self.ref = self.policy
        self.pad = pad_id_of(self.tok)
        self.seeds = _load_seeds(ctx)
        self.sched = round_schedule(self.algo, len(self.seeds), self.ssapo)
        self.n_rounds = len(self.sched) - 1
        used = {p["prompt"] for p in self.seeds}
        self.pools: list[list[str]] = []
        if self.n_rounds:
            rest = [p for p in train_prompts if p not in used] or train_prompts
            _, self.pools = split_round_prompts(
                rest, 0, self.algo.prompts_per_round, self.n_rounds, seed=self.common.seed
            )
        self._base_samples()

    def rdir(self, t: int) -> Path:
        return self.out / "rounds" / f"round_{t}"

    def _base_samples(self) -> None:
        """Evaluation: the base's samples drawn once (``base_eval.jsonl``); every policy sampled with the same
        seed (same streams)."""
        from stackalign.training.evaluate import generate

        self.n_eval = self.common.eval.samples
        self.gcfg = self.ctx.eval_generation_config()
        bpath = self.out / "base_eval.jsonl"
        if not self.eval_prompts:
            base_texts = []
        elif bpath.is_file():
            base_texts = [r["responses"] for r in _read_jsonl(bpath)]
        else:
            base_texts, _ = generate(self.base, self.tok, self.eval_prompts, self.gcfg, n=self.n_eval)
            save_pairs([{"prompt": p, "responses": r} for p, r in zip(self.eval_prompts, base_texts)], bpath)
        self.flat_p = [p for p in self.eval_prompts for _ in range(self.n_eval)]
        self.flat_b = [y for row in base_texts for y in row]

    def evaluate(self, t: int) -> dict:
        """Round t's evaluation against the base, written to its ``done.json``."""
        from stackalign.evaluation.win_rates import gold_win_rate, reward_model_win_rate
        from stackalign.training.evaluate import generate

        ev: dict = {"win_rate_vs_base": None, "gold_reward": None}  # no gold judge without a world
        world, flat_p = self.world, self.flat_p
        if self.rm_eval:  # the reward model's soft preference σ(r − r') and its mean score; never called gold
            texts, _ = generate(self.policy, self.tok, self.eval_prompts, self.gcfg, n=self.n_eval)
            flat = [y for row in texts for y in row]
            rm = self.ctx.load_reward_model()
            r_pol, r_base = rm(flat_p, flat), rm(flat_p, self.flat_b)
            ev = {
                "judge": "reward_model",
                "rm_win_rate_vs_base": round(reward_model_win_rate(r_pol, r_base), 4),
                "proxy_reward": float(r_pol.double().mean()),
            }
        elif world is not None:
            texts, _ = generate(self.policy, self.tok, self.eval_prompts, self.gcfg, n=self.n_eval)
            flat = [y for row in texts for y in row]
            ev = {
                "win_rate_vs_base": gold_win_rate(world, flat_p, flat, self.flat_b),
                "gold_reward": sum(world.gold(p, y) for p, y in zip(flat_p, flat)) / len(flat),
            }
        rdir = self.rdir(t)
        n_pairs = len(_read_jsonl(rdir / "pairs.jsonl"))
        stats = json.loads((rdir / "stats.json").read_text()) if (rdir / "stats.json").is_file() else {}
        write_json_atomic(rdir / "done.json", {"round": t, "pairs": n_pairs, "eval": ev, "stats": stats})
        return ev

    def make_pairs(self, t: int) -> list[dict]:
        """Round t's pairs (written once to rounds/round_t/pairs.jsonl and read back afterwards)."""
        rdir = self.rdir(t)
        path = rdir / "pairs.jsonl"
        if path.is_file():
            return _read_jsonl(path)
        stats: dict = {}
        if t == 0:
            pairs = self.seeds
        elif not self.ssapo:  # DPO-all: gold (noisy at label_noise) pairs for the round's new prompts
            pool = self.pools[t - 1]
            pairs = gold_pairs(
                self.world,
                pool,
                len(pool),
                label_noise=self.algo.label_noise,
                seed=self.common.seed * 7919 + t,
            )
        else:
            pairs, stats = self.self_annotate(t)
        rdir.mkdir(parents=True, exist_ok=True)
        write_json_atomic(rdir / "stats.json", stats)
        save_pairs(pairs, path)
        return pairs

    def self_annotate(self, t: int) -> tuple[list[dict], dict]:
        """SSAPO's round t: K samples per new prompt from pi_{t-1}, labelled by the implicit reward, and the
        follower's worst case over them (``solve_follower``)."""
        from stackalign.decoding.sampling import sample
        from stackalign.training.distributed import full_weights
        from stackalign.training.loop import step_seed

        algo, world, policy, tok = self.algo, self.world, self.policy, self.tok
        pool = self.pools[t - 1]
        g = replace(self.ctx.generation_config(), seed=step_seed(self.common.seed, t, "annotate") % (2**31))
        t0 = time.perf_counter()
        with full_weights():  # FSDP: generation runs on gathered weights (no per-forward collective)
            res = sample(policy, tok, pool, algo.samples_per_prompt, g)
        prompts, responses = res.flat()
        t1 = time.perf_counter()
        lp_pol = batched_logprobs(policy, tok, prompts, responses)
        lp_ref = batched_logprobs(self.base, tok, prompts, responses)
        pairs = annotate_by_implicit_reward(pool, res.texts, lp_pol, lp_ref, beta=algo.beta)
        t2 = time.perf_counter()
        if not pairs:
            raise RuntimeError(f"round {t}: every prompt's {algo.samples_per_prompt} samples were identical")
        sol = solve_follower(
            [p["margin"] for p in pairs],
            eps=algo.eps,
            space=algo.space,
            pieces=algo.pieces,
            group_size=algo.group_size,
            pad=algo.pad,
            q_box=algo.q_box,
        )
        for i, p in enumerate(pairs):
            p["s"], p["shifts"] = sol.s[i].tolist(), sol.shifts[i].tolist()
            if world is None:
                continue
            # gold labels of the self-labelled pairs: for the report only, never used in training
            p["gold_chosen"], p["gold_rejected"] = (
                world.gold(p["prompt"], p["chosen"]),
                world.gold(p["prompt"], p["rejected"]),
            )
        agree = None
        if world is not None:
            agree = sum(p["gold_chosen"] > p["gold_rejected"] for p in pairs) / len(pairs)
        stats = dict(
            sample_seconds=t1 - t0, annotate_seconds=t2 - t1, self_label_gold_agreement=agree, **sol.stats()
        )
        return pairs, stats

    def round_data(self, t: int) -> dict:
        """Round t's tensors: token ids, the reference's log-probs (pi_{t-1} is frozen), the worst case."""
        pairs = self.make_pairs(t)
        data = _tensorize(self.tok, pairs)
        N = len(pairs)
        with torch.no_grad():
            rc, rr = zip(*(_pair_logps(self.ref, data, list(range(s, min(N, s + 64))), self.pad, self.device)
                           for s in range(0, N, 64)))  # fmt: skip
        wc = None
        if "s" in pairs[0]:
            K = max(len(p["s"]) for p in pairs)
            S, D = torch.zeros(N, K, dtype=torch.float64), torch.zeros(N, K, dtype=torch.float64)
            for i, p in enumerate(pairs):
                S[i, : len(p["s"])] = torch.tensor(p["s"], dtype=torch.float64)
                D[i, : len(p["shifts"])] = torch.tensor(p["shifts"], dtype=torch.float64)
            wc = (S.float(), D.float())
        return dict(data=data, n=N, ref_c=torch.cat(rc), ref_r=torch.cat(rr), wc=wc)

    def train_round(self, t: int) -> None:
        """Round t on the shared trainer: a fresh optimizer (each round of the release is a new DPO run from
        pi_{t-1}), ``sched[t]`` steps of the (weighted, shifted) DPO loss, then its evaluation and model."""
        from stackalign.training.loop import (
            StepOutput,
            batch_indices,
            load_weights_in_place,
            save_model_dir,
            step_seed,
            train_loop,
        )

        algo, policy, device = self.algo, self.policy, self.device
        rdir = self.rdir(t)
        if t > 0:  # pi_{t-1}: the previous round's final weights (also after a restart)
            load_weights_in_place(policy, self.rdir(t - 1) / "model")
        cur = self.round_data(t)  # the reference log-probs of pi_{t-1} (= the policy now)
        rseed = step_seed(self.common.seed, t, "round")

        def step_fn(step: int) -> StepOutput:
            idx = batch_indices(cur["n"], algo.batch_size, step, rseed, what="batch_size")
            pc, pr = _pair_logps(policy, cur["data"], idx, self.pad, device)
            kw = {}
            if cur["wc"] is not None:
                S, D = cur["wc"]
                kw = dict(s=S[idx].to(device), shifts=D[idx].to(device), space=algo.space)
            rc, rr = cur["ref_c"][idx], cur["ref_r"][idx]
            loss = dpo_loss(pc, pr, rc, rr, beta=algo.beta, **kw)
            with torch.no_grad():
                m = algo.beta * ((pc - rc) - (pr - rr))
            return StepOutput(
                loss, {"round": t, "margin": float(m.mean()), "accuracy": float((m > 0).float().mean())}
            )

        settings = replace(self.ctx.loop_settings(), steps=self.sched[t], seed=rseed % (2**31))
        train_loop(policy, self.tok, step_fn, settings, rdir, algo_state={"round": t})
        self.evaluate(t)
        save_model_dir(policy, self.tok, rdir / "model")

    def write_metrics(self) -> None:
        """One metrics.jsonl over all rounds (global step numbers) for the trainer's plots."""
        rows = []
        off = 0
        for t in range(self.n_rounds + 1):
            for r in _read_jsonl(self.rdir(t) / "metrics.jsonl"):
                rows.append({**r, "step": r["step"] + off, "round_step": r["step"]})
            off += self.sched[t]
        save_pairs(rows, self.out / "metrics.jsonl")


def run_rounds(ctx: Any, algorithm: str) -> dict:
    """Train ``algorithm`` ("dpo" or "ssapo") through the shared trainer; returns the summary fields
    ``{"rounds": [{"round", "pairs", "eval", "stats"}...], "eval", "steps"}``."""
    from stackalign.training.loop import load_weights_in_place

    run = _Rounds(ctx, algorithm)
    trained_last = False
    for t in range(run.n_rounds + 1):
        rdir = run.rdir(t)
        if (rdir / "done.json").is_file() and (rdir / "model").is_dir():
            continue
        trained_last = t == run.n_rounds
        run.train_round(t)
    run.write_metrics()
    if not trained_last:  # restarted after the last round finished: final/ is that round's model
        load_weights_in_place(run.policy, run.rdir(run.n_rounds) / "model")
    ctx.save_final(run.policy, run.tok)
    rounds = [json.loads((run.rdir(t) / "done.json").read_text()) for t in range(run.n_rounds + 1)]
    if run.world is not None:
        _plot_rounds(rounds, run.out / "rounds.png", algorithm)
    return {"rounds": rounds, "eval": rounds[-1]["eval"], "steps": sum(run.sched)}


def _plot_rounds(rounds: list[dict], path: Path, algorithm: str) -> None:
    """Gold win rate vs base and gold utility per round (report.md lists it)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t = [r["round"] for r in rounds]
    fig, ax = plt.subplots(1, 2, figsize=(8, 3))
    ax[0].plot(t, [r["eval"]["win_rate_vs_base"] for r in rounds], "o-")
    ax[0].axhline(0.5, color="gray", lw=0.8, ls="--")
    ax[0].set(xlabel="round", ylabel="gold win rate vs base", xticks=t)
    ax[1].plot(t, [r["eval"]["gold_reward"] for r in rounds], "o-")
    ax[1].set(xlabel="round", ylabel="gold utility", xticks=t)
    fig.suptitle(algorithm)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)

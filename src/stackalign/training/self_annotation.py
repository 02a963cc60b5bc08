"""SSAPO's self-annotation and worst-case reweighting (Chu et al., arXiv 2502.18099, Algorithm 1, steps 2-6).

For each new prompt x, K answers are sampled from the current policy pi_{t-1} and scored by the implicit
reward r(y) = log pi_{t-1}(y|x) - log pi_ref(y|x) (DPO's reward up to beta and log Z, Section 1 of the paper;
as in the release, the reference is the initial SFT/base model, summed over tokens, no length normalisation).
chosen = argmax r, rejected = argmin r. The centre of the follower's ball is the empirical distribution of
the margins xi_i = beta_a (r_chosen - r_rejected) >= 0 (margin space) or of p_i = sigma(xi_i) in [0.5, 1)
(probability space, the release's `run_wst.py`); the follower's worst case in the W_1 ball of radius eps is
the exact LP of Thm 3.3 (`stackalign.games.sgpo`), solved per group of G pairs (Section 3.4).
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from stackalign.games.sgpo import sgpo_follower, sgpo_follower_probability
from stackalign.training.dpo_loss import pack_sequences, response_token_ids, sequence_logprobs

Tensor = torch.Tensor

__all__ = ["batched_logprobs", "annotate_by_implicit_reward", "FollowerSolution", "solve_follower"]


@torch.no_grad()
def batched_logprobs(
    model: Any, tokenizer: Any, prompts: Sequence[str], responses: Sequence[str], batch_size: int = 64
) -> Tensor:
    """log pi(response | prompt) (sum over response tokens + EOS, nats) for each pair, shape (N,), float64."""
    from stackalign.decoding.common import pad_id_of

    pad = pad_id_of(tokenizer)
    pids = [tokenizer(p)["input_ids"] for p in prompts]
    rids = [response_token_ids(tokenizer, r) for r in responses]
    out = []
    for s in range(0, len(pids), batch_size):
        ids, mask, resp = pack_sequences(pids[s : s + batch_size], rids[s : s + batch_size], pad)
        dev = next(model.parameters()).device
        out.append(sequence_logprobs(model, ids.to(dev), mask.to(dev), resp.to(dev)).double().cpu())
    return torch.cat(out) if out else torch.zeros(0, dtype=torch.float64)


def annotate_by_implicit_reward(
    prompts: Sequence[str],
    samples: Sequence[Sequence[str]],
    policy_logps: Tensor,
    ref_logps: Tensor,
    *,
    beta: float,
) -> list[dict]:
    """Label each prompt's K samples by the implicit reward r = log pi - log ref: chosen = argmax r,
    rejected = argmin r (Algorithm 1, step 3). policy_logps / ref_logps are flat (P*K,), prompt-major.

    Prompts whose samples are all the same text (no pair to form) are skipped. Each pair carries
    ``reward_chosen``, ``reward_rejected`` and ``margin`` = beta (r_chosen - r_rejected) >= 0."""
    if not (isinstance(beta, int | float) and beta > 0):
        raise ValueError(f"beta: must be a number > 0, got {beta!r}")
    P = len(prompts)
    if P == 0 or len(samples) != P:
        raise ValueError("annotate_by_implicit_reward: expected one list of samples per prompt (>= 1 prompt)")
    K = len(samples[0])
    if K < 2 or any(len(row) != K for row in samples):
        raise ValueError(
            f"K: need the same number >= 2 of samples per prompt, got {[len(r) for r in samples]}"
        )
    r = (policy_logps - ref_logps).reshape(P, K)
    if not torch.isfinite(r).all():
        raise ValueError("implicit rewards contain NaN or infinite values")
    pairs = []
    for i, (p, row) in enumerate(zip(prompts, samples)):
        if len(set(row)) < 2:
            continue
        # among equal texts the first occurrence wins; ties in r between different texts keep sample order
        c, w = int(torch.argmax(r[i])), int(torch.argmin(r[i]))
        if row[c] == row[w]:
            continue
        rc, rw = float(r[i, c]), float(r[i, w])
        pairs.append(
            dict(
                prompt=p,
                chosen=row[c],
                rejected=row[w],
                reward_chosen=rc,
                reward_rejected=rw,
                margin=beta * (rc - rw),
            )
        )
    return pairs


@dataclass
class FollowerSolution:
    """The follower's worst case for a round: s, shifts (N, K) for the leader's loss, and what it cost.

    space: "margin" or "probability"; seconds: wall time of the LP solves; attacked: pairs with mass moved;
    transport: (1/N) sum |q| (<= eps); value / empirical: the surrogate worst-case and empirical losses."""

    s: Tensor
    shifts: Tensor
    space: str
    eps: float
    group_size: int
    seconds: float
    attacked: int
    transport: float
    value: float
    empirical: float

    def stats(self) -> dict:
        return dict(
            space=self.space,
            eps=self.eps,
            group_size=self.group_size,
            lp_seconds=self.seconds,
            attacked=self.attacked,
            transport=self.transport,
            worst_case_value=self.value,
            empirical_value=self.empirical,
        )


def solve_follower(
    margins: Sequence[float] | Tensor,
    *,
    eps: float,
    space: str = "margin",
    pieces: int = 6,
    group_size: int | None = 100,
    pad: float = 0.5,
    q_box: bool = False,
) -> FollowerSolution:
    """The worst case over the W_1 ball of radius eps around the round's margins (Thm 3.3 LP, exact).

    space="margin": centres xi_i, support [min - pad, max + pad], `pieces` tangents of -log sigma;
    space="probability": centres p_i = sigma(xi_i), support [0, 1], tangents of -log v at v = k/pieces, and with
    q_box the release's extra box |q_ik| <= eps. eps = 0 (the ball is its centre) returns one atom per pair
    at its centre (s = 1, shift 0) without solving, so the leader's loss is exactly DPO's (SPA-like).
    group_size: pairs per LP (None = one LP over all pairs)."""
    x = torch.as_tensor(margins, dtype=torch.float64).reshape(-1)
    if x.numel() == 0:
        raise ValueError("margins: no pairs to reweight")
    if not (isinstance(eps, int | float) and math.isfinite(eps) and eps >= 0):
        raise ValueError(f"eps: the Wasserstein radius must be a finite number >= 0, got {eps!r}")
    if space not in ("margin", "probability"):
        raise ValueError(f"space: must be 'margin' or 'probability', got {space!r}")
    if group_size is not None and not (isinstance(group_size, int) and group_size >= 1):
        raise ValueError(f"group_size: must be an integer >= 1 or None, got {group_size!r}")
    N = x.numel()
    G = N if group_size is None else min(group_size, N)
    if eps == 0:
        # the ball is the centre itself: alpha* = alpha_hat; one atom per pair, no shift (plain DPO)
        s = torch.ones(N, 1, dtype=torch.float64)
        return FollowerSolution(
            s, torch.zeros_like(s), space, 0.0, G, 0.0, 0, 0.0, float("nan"), float("nan")
        )
    t0 = time.perf_counter()
    if space == "margin":
        wc = sgpo_follower(x, float(eps), K=pieces, pad=pad, group_size=G)
    else:
        wc = sgpo_follower_probability(
            torch.sigmoid(x), float(eps), K=pieces, q_box=float(eps) if q_box else None, group_size=G
        )
    secs = time.perf_counter() - t0
    return FollowerSolution(
        s=wc.s,
        shifts=wc.shifts,
        space=space,
        eps=float(eps),
        group_size=G,
        seconds=secs,
        attacked=int(wc.attacked.sum()),
        transport=wc.transport,
        value=wc.value,
        empirical=wc.empirical_surrogate,
    )

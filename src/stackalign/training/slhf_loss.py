"""The StackelbergGDA loss of SLHF (Pásztor, Kleine Buening, Krause, arXiv 2512.16626, Algorithm 2).

One policy plays leader π(y | x) and follower ω(y' | x, y). For a batch of B prompts with a leader answer
y_i, a follower answer y'_i (generated after seeing y_i) and a judge probability s_i = p(y_i ≻ y'_i | x_i),
the loss is REINFORCE on both players with the KL penalties inside the (detached) sequence rewards:

    R^F_i = (1 − s_i) − τ^F · Σ_t k(y'_i, t)                     (follower: beat y_i, stay near ω_ref)
    R^L_i =      s_i  − τ^L · Σ_t k(y_i, t)  [+ τ^F · Σ_t k1(y'_i, t)]   (leader; bracket: objective "paper")
    L_L = −mean_i (R^L_i − b^L_i) · Σ_t log π(y_i,t | ·)
    L_F = −mean_i (R^F_i − b^F_i) · Σ_t log ω(y'_i,t | ·)
    loss = L_L + κ · L_F                                         (κ = η^F / η^L, the two-timescale ratio)

with k(·, t) a per-token KL estimator (k1 = log π − log π_ref, k2 = ½ (log π − log π_ref)², k3 = r − 1 − log r
with r = π_ref / π; Schulman 2020: :func:`stackalign.training.estimators.kl_per_token`) and b a constant 0.5
baseline (the official code's s − 0.5) or the leave-one-out mean (RLOO,
:func:`stackalign.training.estimators.leave_one_out_mean`).

The two leader objectives:
* ``"paper"`` (default): the paper's eq. 5, where the leader's payoff for y contains the follower's
  regularised value E_{y'~ω}[p(y ≻ y')] + τ^F KL(ω(·|x,y) ‖ ω_ref(·|x,y)). The single-sample estimate of the
  KL is k1 of the follower's answer, added to the leader's reward. With exact expectations the fixed point
  is the closed-form equilibrium of Prop. 1 (``stackalign.games.slhf_equilibrium``).
* ``"code"``: the official implementation's leader loss, which uses only s. Its fixed point is
  π ∝ π_ref · exp(E_{ω*}[p(y ≻ ·)] / τ^L) — the same as eq. 5 only as τ^F → 0.

All tensors are float; log-prob tensors have shape (B, T) with a {0,1} mask of the same shape (T may
differ between leader and follower); ``s`` has shape (B,). Rewards are in the judge's units (probabilities).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from stackalign.training.estimators import KL_ESTIMATORS, kl_per_token, leave_one_out_mean

Tensor = torch.Tensor

LEADER_OBJECTIVES = ("paper", "code")
BASELINES = ("constant", "loo")


@dataclass
class SLHFLossConfig:
    """Hyperparameters of the StackelbergGDA loss (names as in the paper; defaults its small-scale run)."""

    tau_leader: float = field(default=0.001, metadata={"help": "τ^L, the leader's KL weight (>= 0)."})
    tau_follower: float = field(default=0.001, metadata={"help": "τ^F, the follower's KL weight (>= 0)."})
    kappa: float = field(
        default=5.0, metadata={"help": "κ = η^F/η^L > 0: the follower loss weight (two-timescale ratio)."}
    )
    leader_objective: str = field(
        default="paper",
        metadata={
            "help": "'paper': eq. 5, the follower's KL term is part of the leader's payoff (fixed point = "
            "Prop. 1's equilibrium); 'code': the official code's leader loss without it."
        },
    )
    kl_estimator: str = field(default="k1", metadata={"help": "Per-token KL estimator: k1, k2 or k3."})
    baseline: str = field(
        default="constant",
        metadata={"help": "'constant': subtract 0.5 (the official code); 'loo': leave-one-out mean (RLOO)."},
    )

    def __post_init__(self) -> None:
        for name in ("tau_leader", "tau_follower"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
                raise ValueError(f"{name} must be a finite number >= 0, got {v!r}")
        k = self.kappa
        if isinstance(k, bool) or not isinstance(k, (int, float)) or not math.isfinite(k) or k <= 0:
            raise ValueError(f"kappa must be a finite number > 0 (the follower/leader step ratio), got {k!r}")
        if self.leader_objective not in LEADER_OBJECTIVES:
            raise ValueError(
                f"leader_objective must be one of {LEADER_OBJECTIVES}, got {self.leader_objective!r}"
            )
        if self.kl_estimator not in KL_ESTIMATORS:
            raise ValueError(f"kl_estimator must be one of {KL_ESTIMATORS}, got {self.kl_estimator!r}")
        if self.baseline not in BASELINES:
            raise ValueError(f"baseline must be one of {BASELINES}, got {self.baseline!r}")


def check_judge(s: Tensor, batch: int) -> Tensor:
    """The judge's probabilities: shape (B,), finite, in [0, 1]; ValueError naming the judge otherwise."""
    s = torch.as_tensor(s, dtype=torch.float32)
    if s.shape != (batch,):
        raise ValueError(f"judge: expected {batch} probabilities, got shape {tuple(s.shape)}")
    if not torch.isfinite(s).all():
        raise ValueError(f"judge: returned NaN or infinite preference probabilities: {s.tolist()[:8]}")
    if (s < 0).any() or (s > 1).any():
        raise ValueError(f"judge: preference probabilities must be in [0, 1], got {s.tolist()[:8]}")
    return s


def _baseline(r: Tensor, kind: str) -> Tensor:
    if kind == "constant":
        return torch.full_like(r, 0.5)
    if r.shape[0] < 2:
        raise ValueError("baseline 'loo' needs a batch of at least 2")
    return leave_one_out_mean(r)


@dataclass
class SLHFLoss:
    loss: Tensor
    leader_loss: Tensor
    follower_loss: Tensor
    stats: dict


def slhf_loss(
    leader_logp: Tensor,
    leader_ref_logp: Tensor,
    leader_mask: Tensor,
    follower_logp: Tensor,
    follower_ref_logp: Tensor,
    follower_mask: Tensor,
    s: Tensor,
    cfg: SLHFLossConfig,
) -> SLHFLoss:
    """L_L + κ·L_F (module docstring) for one batch. ``*_logp`` carry gradients; ``*_ref_logp`` do not
    need to. ``s[i]`` = p(y_i ≻ y'_i): the leader's win probability against its follower."""
    b = leader_logp.shape[0]
    s = check_judge(s, b).to(leader_logp.device, leader_logp.dtype)  # judges answer on the host
    lm, fm = leader_mask.to(leader_logp.dtype), follower_mask.to(follower_logp.dtype)
    with torch.no_grad():
        kl_l = (kl_per_token(leader_logp, leader_ref_logp, cfg.kl_estimator) * lm).sum(-1)
        kl_f = (kl_per_token(follower_logp, follower_ref_logp, cfg.kl_estimator) * fm).sum(-1)
        r_f = (1.0 - s) - cfg.tau_follower * kl_f
        r_l = s - cfg.tau_leader * kl_l
        if cfg.leader_objective == "paper":
            # eq. 5: the follower's KL(ω(·|x,y) ‖ ω_ref) is part of the leader's payoff for y; k1 of the
            # follower's sample is its unbiased single-sample estimate.
            r_l = r_l + cfg.tau_follower * (kl_per_token(follower_logp, follower_ref_logp, "k1") * fm).sum(-1)
        adv_l = r_l - _baseline(r_l, cfg.baseline)
        adv_f = r_f - _baseline(r_f, cfg.baseline)
    leader_loss = -(adv_l * (leader_logp * lm).sum(-1)).mean()
    follower_loss = -(adv_f * (follower_logp * fm).sum(-1)).mean()
    loss = leader_loss + cfg.kappa * follower_loss
    stats = {
        "judge_mean": float(s.mean()),
        "kl_leader": float(kl_l.mean()),
        "kl_follower": float(kl_f.mean()),
        "reward_leader": float(r_l.mean()),
        "reward_follower": float(r_f.mean()),
    }
    return SLHFLoss(loss, leader_loss, follower_loss, stats)


@dataclass
class TabularResult:
    pi: Tensor  # (n,) the leader's policy, averaged over the second half of the run
    omega: Tensor  # (n, n) the follower's policy ω[y, y'], averaged likewise
    last_pi: Tensor
    last_omega: Tensor


def tabular_stackelberg_gda(
    P,
    cfg: SLHFLossConfig,
    *,
    steps: int = 3000,
    batch: int = 2048,
    lr: float = 0.5,
    pi_ref=None,
    omega_ref=None,
    seed: int = 0,
) -> TabularResult:
    """Algorithm 2 on tabular softmax policies for one context with n actions (the paper's Condorcet
    example is ``games.condorcet_preferences()``): the *same* :func:`slhf_loss` on sampled (y, y') pairs with
    the soft judge s = P[y, y'], plain SGD on the logits (so κ is the follower's step ratio; Adam would
    undo it), iterate averaging over the second half. Float64, deterministic from ``seed``."""
    P = torch.as_tensor(P, dtype=torch.float64)
    n = P.shape[0]
    pi_ref = torch.full((n,), 1.0 / n, dtype=torch.float64) if pi_ref is None else torch.as_tensor(pi_ref)
    omega_ref = (
        torch.full((n, n), 1.0 / n, dtype=torch.float64) if omega_ref is None else torch.as_tensor(omega_ref)
    )
    log_pi_ref, log_om_ref = pi_ref.double().log(), omega_ref.double().log()
    gen = torch.Generator().manual_seed(seed)
    th_l = log_pi_ref.clone().requires_grad_(True)
    th_f = log_om_ref.clone().requires_grad_(True)
    ones = torch.ones(batch, 1, dtype=torch.float64)
    acc_pi, acc_om, n_acc = torch.zeros(n, dtype=torch.float64), torch.zeros(n, n, dtype=torch.float64), 0
    for step in range(steps):
        lpi, lom = torch.log_softmax(th_l, -1), torch.log_softmax(th_f, -1)
        with torch.no_grad():
            y = torch.multinomial(lpi.exp(), batch, replacement=True, generator=gen)
            y2 = torch.multinomial(lom.exp()[y], 1, generator=gen)[:, 0]
        out = slhf_loss(
            lpi[y][:, None], log_pi_ref[y][:, None], ones,
            lom[y, y2][:, None], log_om_ref[y, y2][:, None], ones,
            P[y, y2], cfg,
        )  # fmt: skip
        th_l.grad = th_f.grad = None
        out.loss.backward()
        with torch.no_grad():
            th_l -= lr * th_l.grad
            th_f -= lr * th_f.grad
            if step >= steps // 2:
                acc_pi += torch.softmax(th_l, -1)
                acc_om += torch.softmax(th_f, -1)
                n_acc += 1
    with torch.no_grad():
        return TabularResult(acc_pi / n_acc, acc_om / n_acc, torch.softmax(th_l, -1), torch.softmax(th_f, -1))

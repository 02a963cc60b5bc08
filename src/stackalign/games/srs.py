"""The SRS game on a finite response set, solved exactly (SRS paper, arXiv 2602.02572).

Follower: rho_r(y) ∝ rho_base(y) * exp(r(y) / beta)   (the KL-regularised aligner's best response).
Leader:   U(r) = E_{y ~ rho_r}[r_U(y)], maximised over 0 <= r <= B.

On a finite set these are a few lines each, which lets the tests check the shaping core against the theory:
the root of F is the brute-force optimum over {0, B}^n, KL(rho_r || rho_base) <= B / beta, and the soft
threshold's utility moves from U_base toward m* as alpha grows.
"""

from __future__ import annotations

import itertools
import math

import torch

from stackalign.shaping.threshold import stackelberg_threshold, validate_rewards

Tensor = torch.Tensor

__all__ = [
    "follower_policy",
    "leader_utility",
    "kl_divergence",
    "brute_force_leader",
    "optimal_threshold",
    "threshold_reward",
    "soft_threshold_reward",
]


def _check_beta(beta: float) -> None:
    if not (isinstance(beta, int | float) and math.isfinite(beta) and beta > 0):
        raise ValueError(f"beta: must be a finite number > 0, got {beta!r}")


def follower_policy(base_probs: Tensor, rewards: Tensor, beta: float) -> Tensor:
    """rho_r ∝ base_probs * exp(rewards / beta) over the last dimension (float64, computed in log space)."""
    _check_beta(beta)
    rewards, base = validate_rewards(rewards, base_probs)  # validates base_probs as non-negative weights
    logits = torch.log(base) + rewards / beta
    return torch.softmax(logits, dim=-1)


def leader_utility(base_probs: Tensor, rewards: Tensor, user_utility: Tensor, beta: float) -> Tensor:
    """U(r) = E_{y ~ rho_r}[r_U(y)]: the user's utility once the follower answers the reward `rewards`."""
    rho = follower_policy(base_probs, rewards, beta)
    user_utility, _ = validate_rewards(user_utility)
    return (rho * user_utility).sum(-1)


def kl_divergence(p: Tensor, q: Tensor) -> Tensor:
    """KL(p || q) over the last dimension, with 0 log 0 = 0."""
    p = torch.as_tensor(p, dtype=torch.float64)
    q = torch.as_tensor(q, dtype=torch.float64)
    terms = torch.where(p > 0, p * (torch.log(p) - torch.log(q)), torch.zeros_like(p))
    return terms.sum(-1)


def threshold_reward(user_utility: Tensor, m: Tensor, B: float, strict: bool = False) -> Tensor:
    """Theorem 1's reward: B where r_U >= m (or > m when strict), else 0."""
    u = torch.as_tensor(user_utility, dtype=torch.float64)
    m = torch.as_tensor(m, dtype=torch.float64).unsqueeze(-1)
    return B * ((u > m) if strict else (u >= m)).to(torch.float64)


def soft_threshold_reward(user_utility: Tensor, m: Tensor, B: float, alpha: float) -> Tensor:
    """Theorem 3's reward: B * sigmoid(alpha * (r_U - m))."""
    u = torch.as_tensor(user_utility, dtype=torch.float64)
    m = torch.as_tensor(m, dtype=torch.float64).unsqueeze(-1)
    return B * torch.sigmoid(alpha * (u - m))


def brute_force_leader(
    base_probs: Tensor, user_utility: Tensor, B: float, beta: float
) -> tuple[float, Tensor]:
    """The leader's optimum over r in {0, B}^n by enumeration (1-D inputs, n <= 16). Returns (U*, r*).

    By Theorem 1 the optimum over [0, B]^n is attained at a vertex, so this is the true optimum."""
    base = torch.as_tensor(base_probs, dtype=torch.float64)
    u = torch.as_tensor(user_utility, dtype=torch.float64)
    if base.dim() != 1 or base.shape != u.shape:
        raise ValueError("base_probs, user_utility: expected two 1-D tensors of the same length")
    n = base.shape[0]
    if n > 16:
        raise ValueError(f"base_probs: brute force enumerates 2^n rewards; n={n} is too large")
    grid = torch.tensor(list(itertools.product([0.0, B], repeat=n)), dtype=torch.float64)
    values = leader_utility(base.expand_as(grid), grid, u.expand_as(grid), beta)
    best = int(torch.argmax(values))
    return float(values[best]), grid[best]


def optimal_threshold(base_probs: Tensor, user_utility: Tensor, B: float, beta: float) -> Tensor:
    """m*: the root of F with weights = base probabilities (exact, no sampling)."""
    return stackelberg_threshold(user_utility, B=B, beta=beta, weights=base_probs)

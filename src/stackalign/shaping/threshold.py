"""The Stackelberg threshold m*(x) (SRS paper arXiv 2602.02572, Theorems 1-2).

Given rewards r_1..r_N of one prompt's samples (or of k decoding candidates), weights p_i (uniform for
i.i.d. samples, base probabilities for top-k candidates) and gamma = exp(B / beta), the leader's optimal
threshold is the unique root of

    F(m) = sum_i p_i * gamma^{1[r_i >= m]} * (r_i - m).                                   (Thm 2)

F is continuous and strictly decreasing (every term is non-increasing in m, and the weights are positive),
F(min r) >= 0 >= F(max r), so exactly one root lies in [min r, max r].  Rearranged, the root is the fixed
point m = sum p w r / sum p w (Thm 1), i.e. the tau-expectile of the weighted rewards with
tau = gamma / (1 + gamma).

Two solvers:
  * "exact": sort the rewards, binary-search the bracket [r_(j), r_(j+1)) containing the root by the
    sign of F at sorted rewards; on it the set S = {r_i > r_(j)} is fixed and F is linear, so
        m = (gamma * sum_S p r + sum_{not S} p r) / (gamma * sum_S p + sum_{not S} p)
    (computed as r_(j) + F(r_(j)) / slope to avoid cancellation). O(N log N) per row.
  * "bisect": bisection on [min r, max r] as the paper and its code do.

Numerics: gamma = exp(B/beta) overflows float32 at B/beta ~ 88 and float64 at ~709. We never form gamma:
dividing F and the closed form by gamma leaves only 1/gamma = exp(-B/beta), which underflows harmlessly
to 0 (the limit gamma -> inf is the maximum reward, as it should be). All arithmetic is float64.

Note on ">=" versus ">": a reward equal to m contributes (r_i - m) = 0 to F, so the root does not depend
on which side ties fall. The distinction matters only for the hard-threshold shaper (see shapers.py).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch

Tensor = torch.Tensor
Array = Tensor | np.ndarray  # torch on any device, or NumPy on the host (small rows only)

ALL_PAIRS_MAX_N = 64  # rows up to this size use the loop-free (N x N) bracket search

__all__ = ["stackelberg_threshold", "threshold_from_log_gamma", "log_gamma", "validate_rewards", "F_value"]


def validate_rewards(rewards: Tensor, weights: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Check and return (rewards, normalised weights) as float64 tensors of the same shape (..., N)."""
    rewards = torch.as_tensor(rewards)
    if not torch.is_floating_point(rewards):
        rewards = rewards.to(torch.float64)
    if rewards.dim() == 0:
        raise ValueError("rewards: expected a tensor of shape (..., N), got a scalar")
    if rewards.shape[-1] == 0 or rewards.numel() == 0:
        raise ValueError("rewards: empty reward set (the last dimension N must be >= 1)")
    if not torch.isfinite(rewards).all():
        raise ValueError("rewards: contains NaN or infinite values")
    rewards = rewards.to(torch.float64)
    if weights is None:
        weights = torch.full_like(rewards, 1.0 / rewards.shape[-1])
    else:
        weights = torch.as_tensor(weights, dtype=torch.float64, device=rewards.device)
        if weights.shape != rewards.shape:
            raise ValueError(
                f"weights: shape {tuple(weights.shape)} does not match rewards {tuple(rewards.shape)}"
            )
        if not torch.isfinite(weights).all():
            raise ValueError("weights: contains NaN or infinite values")
        if (weights < 0).any():
            raise ValueError("weights: must be non-negative")
        total = weights.sum(-1, keepdim=True)
        if (total <= 0).any():
            raise ValueError("weights: every row must have a positive sum (all-zero weights)")
        weights = weights / total
    return rewards, weights


def log_gamma(B: float | Array, beta: float, gamma_cap: float | None = None) -> Array | float:
    """log(gamma) with gamma = min(exp(B / beta), gamma_cap), computed without forming exp(B / beta)."""
    lg = B / beta
    if gamma_cap is not None:
        cap = math.log(gamma_cap)
        lg = lg.clip(max=cap) if isinstance(lg, Tensor | np.ndarray) else min(lg, cap)
    return lg


def F_value(m: Tensor, rewards: Tensor, weights: Tensor, log_g: Tensor | float) -> Tensor:
    """F(m) / gamma = sum_{r>=m} p (r - m) + (1/gamma) sum_{r<m} p (r - m): same sign as F(m), never overflows.

    `m` has shape (...) and broadcasts against rewards (..., N)."""
    inv_gamma = torch.exp(-torch.as_tensor(log_g, dtype=torch.float64, device=rewards.device))
    diff = rewards - m.unsqueeze(-1)
    above = diff >= 0
    return (weights * diff * above).sum(-1) + inv_gamma * (weights * diff * ~above).sum(-1)


def _exact(rewards: Array, weights: Array, log_g: Array) -> Array:
    """The "exact" solver. ``rewards``, ``weights`` (..., N) and ``log_g`` (...) are float64 torch tensors, or
    NumPy arrays for rows of N <= ALL_PAIRS_MAX_N (a decoder's k candidates on the host, where a tiny NumPy op
    costs a fraction of a torch op). Both kinds run the same code below: ``xp`` is torch or numpy, and only
    operations the two spell alike are used (``xp.where``, ``xp.amax``, ``xp.exp``, ``xp.minimum``, ...)."""
    xp = torch if isinstance(rewards, Tensor) else np
    inv_gamma = xp.exp(-log_g)  # shape (...)
    n = rewards.shape[-1]
    # F is strictly decreasing: the root's bracket starts at m0 = the largest reward with F(m0) >= 0
    # (F(min r) >= 0 always, so m0 exists). F is evaluated directly, term by term (prefix sums would cancel
    # catastrophically when gamma * p_i spans many orders of magnitude).
    if n <= ALL_PAIRS_MAX_N:
        # Small rows (ARGS' k candidates, CD's N samples): F at every reward at once, an (N x N) table, no
        # sort and no loop; a decoding step calls this once per token, so every op counts. Only live
        # (positive-weight) rewards may be m0: zero-weight ones add nothing to F, and where 1/gamma underflows
        # F at a zero-weight reward above every live one would read 0 instead of a tiny negative number.
        live = weights > 0
        diff = rewards[..., None, :] - rewards[..., :, None]  # [..., j, i] = r_i - r_j
        scale = xp.where(diff >= 0, 1.0, inv_gamma[..., None, None])
        G = (weights[..., None, :] * diff * scale).sum(-1)  # gamma^-1 F(r_j), [..., j]
        m0 = xp.amax(xp.where((G >= 0) & live, rewards, -math.inf), -1)[..., None]
        r_max = xp.amax(xp.where(live, rewards, -math.inf), -1)
    elif xp is np:
        raise ValueError(f"rewards: NumPy rows are solved for N <= {ALL_PAIRS_MAX_N} only, got N = {n}")
    else:
        # Zero-weight entries contribute nothing to F; move them onto the smallest live reward so that they
        # can neither be the bracket's lower end nor sit alone above it.
        live_min = torch.where(weights > 0, rewards, torch.inf).min(-1, keepdim=True).values
        rewards = torch.where(weights > 0, rewards, live_min)
        r_sorted = torch.sort(rewards, dim=-1).values
        # Large rows: binary search over sorted positions, ceil(log2 N) probes of O(N): O(N log N).
        lo = torch.zeros(rewards.shape[:-1] + (1,), dtype=torch.long, device=rewards.device)
        hi = torch.full_like(lo, n)
        while bool((hi - lo > 1).any()):
            mid = (lo + hi) // 2
            m_mid = torch.gather(r_sorted, -1, mid.clamp(max=n - 1)).squeeze(-1)
            nonneg = (F_value(m_mid, rewards, weights, log_g) >= 0).unsqueeze(-1) & (hi - lo > 1)
            lo = torch.where(nonneg, mid, lo)
            hi = torch.where(nonneg | (hi - lo <= 1), hi, mid)
        m0 = torch.gather(r_sorted, -1, lo)  # the root lies in [m0, next reward)
        r_max = r_sorted[..., -1]
    # On that bracket S = {r > m0} is fixed and F is linear: F(m0 + d) = F(m0) - d * (sum_S p + sum_notS p / gamma)
    # (divided by gamma), so the root is m0 + F(m0) / slope.
    wd = xp.where(rewards > m0, weights, weights * inv_gamma[..., None])  # p_i * gamma^{1[r_i > m0] - 1}
    num = (wd * (rewards - m0)).sum(-1)
    den = wd.sum(-1)
    m0 = m0[..., 0]
    # den = 0 only when S is empty and 1/gamma underflowed; S is empty only when m0 is the maximum, where
    # F(m0) >= 0 forces F(m0) = 0: the root is m0 itself.
    positive = den > 0
    m = xp.where(positive, m0 + num / xp.where(positive, den, 1.0), m0)
    # Guard against round-off pushing m a hair outside its bracket.
    return xp.maximum(xp.minimum(m, r_max), m0)


def threshold_of_row(rewards: Sequence[float], weights: Sequence[float], log_g: float) -> float:
    """The root of F (Theorem 2) for ONE row, in plain Python floats: the exact solver's root by a sorted scan.

    For a decoder that shapes a few rows of k ~ 10 candidates per step on the host, a Python loop over k floats
    costs a fraction of the ~40 array operations of the vectorised solver (and touches no array code between two
    model forwards). ``weights`` are non-negative with a positive sum (their scale does not matter), ``log_g`` =
    log(gamma) >= 0. Same conventions as the tensor solver: zero-weight rewards are never the bracket's lower
    end, and the root is clamped to [m0, max live reward].

    Sorted ascending (r_0 <= ... <= r_{n-1}, weights q), F at m = r_j divided by gamma is G_j = A_j - B_j / gamma
    with A_j = sum_{i>=j} q_i (r_i - r_j) and B_j = sum_{i<j} q_i (r_j - r_i). Both are built from sums of
    non-negative terms, so nothing cancels: A_j = A_{j+1} + (r_{j+1} - r_j) S_{j+1}, S_j = sum_{i>=j} q_i, and
    B_j = B_{j-1} + (r_j - r_{j-1}) P_{j-1}, P_j = sum_{i<=j} q_i. G is non-increasing in j; m0 = r_j for the
    largest live j with G_j >= 0, and on [m0, next reward) F is linear: m = m0 + G_j / (S_{j+1} + P_j / gamma).
    """
    inv_gamma = math.exp(-log_g)
    pairs = sorted(zip(rewards, weights))  # ascending rewards (ties in any order: they add 0 to F)
    P, B = [], []  # P_j and B_j, forward
    acc = b = 0.0
    prev = pairs[0][0]
    for r_j, q_j in pairs:
        b += (r_j - prev) * acc  # B_j = B_{j-1} + (r_j - r_{j-1}) P_{j-1}
        acc += q_j
        P.append(acc)
        B.append(b)
        prev = r_j
    # Backward from the top: A_j and S_{j+1}; the first live j with G_j >= 0 is the largest (G non-increasing).
    a = s = 0.0  # A_{j+1}, S_{j+1}
    nxt = pairs[-1][0]
    r_top = None  # the largest live reward
    for j in range(len(pairs) - 1, -1, -1):
        r_j, q_j = pairs[j]
        a += (nxt - r_j) * s  # A_j = A_{j+1} + (r_{j+1} - r_j) S_{j+1}
        if q_j > 0:
            r_top = r_j if r_top is None else r_top
            g = a - inv_gamma * B[j]
            if g >= 0:  # reached at the smallest live reward at the latest (there B = 0)
                den = s + inv_gamma * P[j]
                m = r_j + g / den if den > 0 else r_j
                return min(max(m, r_j), r_top)
        s += q_j
        nxt = r_j
    raise ValueError("weights: every row must have a positive sum (all-zero weights)")


def _bisect(rewards: Tensor, weights: Tensor, log_g: Tensor, iters: int = 100) -> Tensor:
    lo = rewards.min(-1).values
    hi = rewards.max(-1).values
    for _ in range(iters):
        mid = 0.5 * (lo + hi)
        positive = F_value(mid, rewards, weights, log_g) > 0  # root is to the right of mid
        lo = torch.where(positive, mid, lo)
        hi = torch.where(positive, hi, mid)
        if bool(((hi - lo) <= 1e-15 * (1 + hi.abs())).all()):
            break
    return 0.5 * (lo + hi)


def threshold_from_log_gamma(
    rewards: Tensor, weights: Tensor | None, log_g: Tensor | float, method: str = "exact"
) -> Tensor:
    """Root of F for a given log(gamma) >= 0 (scalar or one per row). Returns float64 of shape (...)."""
    rewards, weights = validate_rewards(rewards, weights)
    log_g = torch.as_tensor(log_g, dtype=torch.float64, device=rewards.device)
    if torch.isnan(log_g).any() or (log_g < 0).any():
        raise ValueError("log_gamma: must be >= 0 (gamma >= 1)")
    return solve_threshold(rewards, weights, log_g, method)


def solve_threshold(rewards: Array, weights: Array, log_g: Array, method: str = "exact") -> Array:
    """The solver behind `threshold_from_log_gamma`, for inputs already checked by `validate_rewards`
    (float64 rewards, normalised weights) and a float64 log_g >= 0. Hot paths call it to validate once.

    NumPy arrays (rows of N <= ALL_PAIRS_MAX_N, ``log_g`` one per row, "exact" only) take the same code as
    tensors: a decoder on the CPU shapes its k candidates per step on the host (see ``Shaper.apply``)."""
    if not isinstance(rewards, Tensor):
        if method != "exact":
            raise ValueError(f"method: NumPy rows are solved by 'exact' only, got {method!r}")
        return _exact(rewards, weights, log_g)
    log_g = log_g.expand(rewards.shape[:-1]) if log_g.dim() == 0 else log_g
    if method == "exact":
        return _exact(rewards, weights, log_g)
    if method == "bisect":
        return _bisect(rewards, weights, log_g)
    raise ValueError(f"method: expected 'exact' or 'bisect', got {method!r}")


def stackelberg_threshold(
    rewards: Tensor,
    *,
    B: float,
    beta: float,
    weights: Tensor | None = None,
    gamma_cap: float | None = None,
    method: str = "exact",
) -> Tensor:
    """The leader's optimal threshold m* for every row of `rewards`.

    Args:
        rewards: (..., N) user-utility scores r_i of N samples or candidates per row.
        B: reward budget (> 0); the shaped reward lives in [0, B].
        beta: the follower's KL strength (> 0); decoders use w = 1/beta.
        weights: (..., N) non-negative sample weights p_i (normalised per row); default uniform.
        gamma_cap: cap on gamma = exp(B/beta) (the official code caps it); None = the paper's formula.
        method: "exact" (sorted scan, the tau-expectile) or "bisect" (the paper's bisection).

    Returns:
        (...) float64 tensor of thresholds, each within [min_i r_i, max_i r_i].
    """
    for name, value in (("B", B), ("beta", beta)):
        if isinstance(value, Tensor):
            if not torch.isfinite(value).all() or (value <= 0).any():
                raise ValueError(f"{name}: must be finite and > 0")
        elif not (isinstance(value, int | float) and math.isfinite(value) and value > 0):
            raise ValueError(f"{name}: must be a finite number > 0, got {value!r}")
    if gamma_cap is not None and not (math.isfinite(gamma_cap) and gamma_cap >= 1):
        raise ValueError(f"gamma_cap: must be a finite number >= 1, got {gamma_cap!r}")
    B_t = torch.as_tensor(B, dtype=torch.float64)
    return threshold_from_log_gamma(rewards, weights, log_gamma(B_t, float(beta), gamma_cap), method)

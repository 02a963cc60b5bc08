"""NLHF (Nash Learning from Human Feedback, Munos et al.) on a finite action set (arXiv 2312.00886).

The preference game is symmetric and constant-sum: the row player's payoff is pi^T P pi' with
P[i, j] = p(y_i > y_j), and A = P - 1/2 is antisymmetric, so the game's value is exactly 1/2 (0 for A).

* `nash_equilibrium(P)`: the unregularised Nash mixed strategy by linear programming,
      max_{pi, v} v   s.t.   (A^T pi)_j >= v for every j,   sum(pi) = 1,   pi >= 0,
  solved with scipy's HiGHS. When the equilibrium is not unique (e.g. ties in P) the LP returns one of them.
* `regularized_nash_equilibrium(P, ref, tau)`: the unique Nash equilibrium of the KL-regularised game
      max_pi min_pi'  pi^T P pi' - tau KL(pi || ref) + tau KL(pi' || ref),
  which is symmetric and is the fixed point pi = softmax(log ref + P pi / tau). It is computed by
  magnetic mirror descent (Sokota et al. 2022; a self-play mirror step towards `ref`),
      pi <- pi^(1 - lr*tau) * ref^(lr*tau) * exp(lr * P pi) / Z,
  whose fixed points are exactly the equilibrium (it converges linearly: the regularised game is strongly
  monotone), followed by a few Newton steps on the fixed-point equation in logit space to reach machine
  precision. (Nash-MD, Munos et al.'s algorithm, plays against a geometric mixture with ref instead; its
  fixed point for a constant step is not exactly this equilibrium, so it is not used here.)
  As tau -> 0 it tends to a Nash equilibrium of the unregularised game.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy.optimize import linprog

from stackalign.games.slhf import D, check_distribution, check_preferences, check_tau

Tensor = torch.Tensor

__all__ = [
    "nash_equilibrium",
    "regularized_nash_equilibrium",
    "regularized_nash_gap",
    "nash_value",
    "exploitability",
]


def _check_2d(P) -> Tensor:
    P = check_preferences(P)
    if P.dim() != 2:
        raise ValueError(f"P: expected one (n, n) preference matrix, got shape {tuple(P.shape)}")
    return P


def nash_equilibrium(P) -> Tensor:
    """A Nash mixed strategy of the symmetric preference game P (unregularised), by linear programming."""
    P = _check_2d(P)
    n = P.shape[0]
    A = (P - 0.5).numpy()
    # variables (pi_1..pi_n, v); minimise -v subject to v - (A^T pi)_j <= 0, sum pi = 1, pi >= 0
    c = np.zeros(n + 1)
    c[-1] = -1.0
    A_ub = np.hstack([-A.T, np.ones((n, 1))])
    A_eq = np.hstack([np.ones((1, n)), np.zeros((1, 1))])
    bounds = [(0.0, None)] * n + [(None, None)]
    res = linprog(c, A_ub=A_ub, b_ub=np.zeros(n), A_eq=A_eq, b_eq=[1.0], bounds=bounds, method="highs")
    if res.status != 0:  # cannot happen for a valid P (the LP is feasible and bounded); keep the message
        raise RuntimeError(f"nash_equilibrium: the linear program failed: {res.message}")
    pi = torch.as_tensor(res.x[:n], dtype=D).clamp_min(0.0)
    return pi / pi.sum()


def nash_value(P, pi) -> Tensor:
    """min_j p(pi > y_j): pi's win rate against its best simultaneous-move response (1/2 at a Nash)."""
    P = check_preferences(P)
    pi = check_distribution(pi, "pi", P.shape[:-1])
    return (pi.unsqueeze(-1) * P).sum(-2).min(-1).values


def exploitability(P, pi) -> Tensor:
    """1/2 - nash_value(P, pi) >= 0: how much a best-responding opponent gains against pi (0 iff pi is a Nash)."""
    return 0.5 - nash_value(P, pi)


def regularized_nash_gap(P, pi, ref=None, tau: float = 0.1) -> Tensor:
    """The duality gap of (pi, pi) in the KL-regularised game (>= 0, and 0 exactly at the equilibrium):

        gap(pi) = max_x g(x, pi) - min_y g(pi, y),   g(x, y) = x^T P y - tau KL(x||ref) + tau KL(y||ref),

    which, because P^T pi = 1 - P pi, equals 2 tau [logsumexp(log ref + P pi / tau) + KL(pi||ref)] - 1."""
    P = _check_2d(P)
    n = P.shape[0]
    tau = check_tau(tau, "tau")
    ref = check_distribution(
        torch.full((n,), 1.0 / n, dtype=D) if ref is None else ref, "ref", (n,), positive=True
    )
    pi = check_distribution(pi, "pi", (n,))
    return 2 * tau * _h(P, torch.log(ref), tau, pi) - 1


def _h(P: Tensor, log_ref: Tensor, tau: float, pi: Tensor) -> Tensor:
    kl = torch.where(pi > 0, pi * (torch.log(pi) - log_ref), torch.zeros_like(pi)).sum()
    return torch.logsumexp(log_ref + P @ pi / tau, dim=0) + kl


def regularized_nash_equilibrium(
    P, ref=None, tau: float = 0.1, *, tol: float = 1e-9, max_iter: int = 1000
) -> Tensor:
    """The KL-regularised NLHF equilibrium pi* = softmax(log ref + P pi* / tau) (see the module docstring).

    ref: the reference policy (default uniform; must have full support); tau > 0. Solved by damped Newton
    on the simplex for the strictly convex h(pi) = logsumexp(log ref + P pi / tau) + KL(pi||ref), whose
    minimiser is pi* and whose minimum is 1/(2 tau) (`regularized_nash_gap` = 2 tau h - 1 is the game's
    duality gap). Iterates to round-off, then checks the fixed-point residual
    max|pi - softmax(log ref + P pi / tau)| <= tol (RuntimeError otherwise).
    Entries of pi* below ~1e-300 (tau < 1/700 with very lopsided P) are not representable in float64."""
    P = _check_2d(P)
    n = P.shape[0]
    tau = check_tau(tau, "tau")
    ref = check_distribution(
        torch.full((n,), 1.0 / n, dtype=D) if ref is None else ref, "ref", (n,), positive=True
    )
    log_ref = torch.log(ref)
    pi = ref.clone()
    for _ in range(max_iter):
        h0 = _h(P, log_ref, tau, pi)
        q = torch.softmax(log_ref + P @ pi / tau, dim=0)
        g = torch.log(pi) - log_ref + 1 + P.T @ q / tau
        M = P.T @ (torch.diag(q) - torch.outer(q, q)) @ P / tau**2
        # Newton step on {sum(pi) = 1}, in the scaled variable e = d / sqrt(pi) (well conditioned when pi is tiny):
        # (I + S M S) e + S 1 lam = -S g,  (S 1)^T e = 0,  S = diag(sqrt(pi))
        s = torch.sqrt(pi)
        K = torch.zeros(n + 1, n + 1, dtype=D)
        K[:n, :n] = torch.eye(n, dtype=D) + s.unsqueeze(1) * M * s.unsqueeze(0)
        K[:n, n] = s
        K[n, :n] = s
        rhs = torch.cat([-s * g, torch.zeros(1, dtype=D)])
        e = torch.linalg.solve(K, rhs)[:n]
        d = s * e
        # directional derivative g.d = -d^T H d (minus the squared Newton decrement), computed stably
        slope = -(e @ (K[:n, :n] @ e)).item()
        rel = (d.abs() / pi).max().item()
        if rel <= 1e-11 or -slope <= 1e-24 * (1.0 + h0.abs().item()):  # converged to round-off
            if rel < 1.0:
                pi = pi + d  # the last (tiny) Newton step is free
                pi = pi / pi.sum()
            break
        t = 1.0
        neg = d < 0
        if neg.any():  # stay strictly inside the simplex (a coordinate shrinks at most 20x per step)
            t = min(1.0, 0.95 * (-pi[neg] / d[neg]).min().item())
        while t > 1e-30:
            new = pi + t * d
            if (new > 0).all() and _h(P, log_ref, tau, new) <= h0 + 0.25 * t * slope + 1e-13 * (
                1.0 + h0.abs()
            ):
                break
            t *= 0.5
        else:
            break
        pi = pi + t * d
        pi = pi / pi.sum()
    res = (pi - torch.softmax(log_ref + P @ pi / tau, dim=0)).abs().max().item()
    if res > tol:
        gap = 2 * tau * _h(P, log_ref, tau, pi).item() - 1
        raise RuntimeError(
            f"regularized_nash_equilibrium: did not converge (fixed-point residual {res:.3g}, duality gap {gap:.3g})"
        )
    return pi

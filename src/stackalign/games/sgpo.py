"""SGPO's follower: the worst-case distribution of DPO margins in a Wasserstein-1 ball (arXiv 2502.18099, Sections 2-3).

SGPO (Chu et al., arXiv 2502.18099) plays the policy (leader) against an adversary (follower) that moves
the empirical distribution of DPO margins xi_i = beta [log pi/pi_ref (y_w) - log pi/pi_ref (y_l)] within
W_1 distance eps, to maximise the expected logistic loss l(xi) = -log sigma(xi):

    sup_{alpha : W_1(alpha, alpha_hat) <= eps}  E_alpha[ l(xi) ],     alpha_hat = (1/N) sum_i delta_{xi_i}.

Facts implemented and checked here:

* Lemma 3.1 (Esfahani & Kuhn 2018, Thm 6.3): with unbounded support the supremum is E_alpha_hat[l] + eps * Lip(l),
  and Lip(-log sigma) = 1: the robust loss is DPO's loss plus a constant (`robust_loss_unbounded`), with
  identical gradients. Any robust effect comes from a bounded support.
* The finite program (Thm 3.3, a specialisation of Esfahani & Kuhn Thm 4.4). Replace l by the convex
  piecewise-linear lower bound l_K(xi) = max_k (a_k xi + b_k) <= l built from tangents at K knots (l is convex,
  so every tangent lies below it; equivalently log sigma is bounded *above* by the concave -l_K). Then

      maximise   (1/N) sum_{i,k} [ s_ik (a_k xi_i + b_k) - a_k q_ik ]
      subject to sum_k s_ik = 1 (each i),  s >= 0,  (1/N) sum_{i,k} |q_ik| <= eps,
                 s_ik lo <= s_ik xi_i - q_ik <= s_ik hi        (support [lo, hi]; dropped when unbounded)

  is an LP (|q| = q+ + q-) whose optimum is exactly sup E_alpha[l_K] over the ball, attained by
  alpha* = (1/N) sum_{i,k} s_ik delta_{xi_i - q_ik / s_ik} (`worst_case_lp`). Since l_K <= l,
  LP value <= sup E_alpha[l] <= E_alpha_hat[l] + eps, and with nested knot sets the value increases
  monotonically to the true supremum as K grows (Prop. 3.2, v_K = -value decreasing). Nesting matters: with
  K equally spaced knots on a fixed window (not nested from K to K+1) the value is *not* monotone in K; on
  random margin sets it dropped by up to ~1e-3 from some K to K+1 <= 11 in 14 of 20 instances.
* Structure of the optimum (`worst_case_greedy`, exact for any convex non-increasing loss with support [lo, oo)):
  moving a unit of mass from x to y < x gains (l(y) - l(x)) per |x - y| of transport; by convexity this is
  largest for y = lo and for the x closest to lo. So the adversary moves the *lowest-margin* pairs entirely to
  the left end of the support, in increasing order of margin, until the budget is spent (a fractional knapsack):
  a "hard example" adversary that treats the least-confident pairs as mislabelled.

Two variants of the follower are provided:
* `sgpo_follower`: margin space, as in the theory: support = window [min xi - pad, max xi + pad] (or given),
  K tangents of -log sigma at equally spaced knots of the window.
* `sgpo_follower_probability`: the official code's variant (scripts/run_wst.py): centres p_i = sigma(margin)
  in [0, 1], loss -log v, tangents at v = k/K (k = 1..K), support [0, 1], and optionally the code's extra
  box |q_ik| <= eps (`q_box`). The code solves it with SLSQP (50 iterations), which is far from optimal;
  here it is the exact LP.
Grouping (Section 3.4): `group_size=G` solves consecutive groups of G pairs separately with the same eps and
merges them (the merged distribution is still within eps; the value is a lower bound of the global one).

The leader's use of the worst case: `shifted_dpo_loss(margins, s, shifts)` = mean_i sum_k s_ik l(margin_i - d_ik),
the smooth margin-space form of the leader loss of Section 3.3 (`shifted_dpo_pair_losses` per pair);
`probability_shifted_pair_losses` is the official release's probability-space form.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from scipy.optimize import linprog
from scipy.sparse import csr_matrix, hstack, vstack
from scipy.sparse import eye as speye
from scipy.sparse import kron as skron

from stackalign.games.slhf import D

Tensor = torch.Tensor

__all__ = [
    "logistic_loss",
    "dpo_loss",
    "robust_loss_unbounded",
    "PiecewiseLinear",
    "tangent_bound",
    "logistic_tangents",
    "neglog_tangents",
    "pwl_gap",
    "WorstCase",
    "worst_case_lp",
    "worst_case_greedy",
    "sgpo_follower",
    "sgpo_follower_probability",
    "shifted_dpo_loss",
    "shifted_dpo_pair_losses",
    "probability_shifted_pair_losses",
]


# ------------------------------------------------------------------------------------------------ losses
def logistic_loss(xi) -> Tensor:
    """l(xi) = -log sigma(xi) = softplus(-xi): convex, decreasing, 1-Lipschitz (float64)."""
    return torch.nn.functional.softplus(-torch.as_tensor(xi, dtype=D))


def _check_margins(margins, name: str = "margins") -> Tensor:
    x = torch.as_tensor(margins, dtype=D)
    if x.dim() != 1 or x.numel() == 0:
        raise ValueError(f"{name}: expected a non-empty 1-D array, got shape {tuple(x.shape)}")
    if not torch.isfinite(x).all():
        raise ValueError(f"{name}: contains NaN or infinite values")
    return x


def _check_eps(eps) -> float:
    if isinstance(eps, Tensor) and eps.numel() == 1:
        eps = eps.item()
    if isinstance(eps, bool) or not isinstance(eps, numbers.Real) or not math.isfinite(eps) or eps < 0:
        raise ValueError(f"eps: the Wasserstein radius must be a finite number >= 0, got {eps!r}")
    return float(eps)


def dpo_loss(margins) -> Tensor:
    """The empirical DPO loss E_alpha_hat[-log sigma(xi)] of the margins xi_i."""
    return logistic_loss(_check_margins(margins)).mean()


def robust_loss_unbounded(margins, eps: float, lipschitz: float = 1.0) -> Tensor:
    """Lemma 3.1: with unbounded support, sup_{W_1 <= eps} E[l] = E_alpha_hat[l] + eps * Lip(l) (Lip = 1 for -log sigma)."""
    return dpo_loss(margins) + _check_eps(eps) * lipschitz


# ------------------------------------------------------------------------------- piecewise-linear bounds
@dataclass
class PiecewiseLinear:
    """l_K(x) = max_k (slopes[k] * x + intercepts[k]); `knots` are the tangent points it was built from."""

    slopes: Tensor
    intercepts: Tensor
    knots: Tensor

    def __call__(self, x) -> Tensor:
        x = torch.as_tensor(x, dtype=D)
        return (x.unsqueeze(-1) * self.slopes + self.intercepts).max(-1).values

    @property
    def K(self) -> int:
        return int(self.slopes.shape[0])


def tangent_bound(
    loss: Callable[[Tensor], Tensor], dloss: Callable[[Tensor], Tensor], knots
) -> PiecewiseLinear:
    """The max of the tangents of a convex `loss` at `knots`: a convex piecewise-linear lower bound."""
    k = torch.as_tensor(knots, dtype=D).reshape(-1)
    if k.numel() == 0 or not torch.isfinite(k).all():
        raise ValueError("knots: expected a non-empty array of finite numbers")
    k = torch.sort(k).values
    a = torch.as_tensor(dloss(k), dtype=D)
    b = torch.as_tensor(loss(k), dtype=D) - a * k
    return PiecewiseLinear(slopes=a, intercepts=b, knots=k)


def logistic_tangents(knots) -> PiecewiseLinear:
    """Tangents of -log sigma at the knots (slope -sigma(-x)): the margin-space surrogate l_K <= l."""
    return tangent_bound(logistic_loss, lambda x: -torch.sigmoid(-x), knots)


def neglog_tangents(K: int = 6) -> PiecewiseLinear:
    """The official code's probability-space surrogate: tangents of -log v at v = k/K, k = 1..K,
    l_k(v) = -(K/k)(v - k/K) - log(k/K)."""
    if isinstance(K, bool) or not isinstance(K, int) or K < 1:
        raise ValueError(f"K: must be an integer >= 1, got {K!r}")
    v = torch.arange(1, K + 1, dtype=D) / K
    return tangent_bound(lambda x: -torch.log(x), lambda x: -1.0 / x, v)


def pwl_gap(
    pwl: PiecewiseLinear, loss: Callable[[Tensor], Tensor], lo: float, hi: float, points: int = 200_001
) -> float:
    """sup_{x in [lo, hi]} (loss(x) - pwl(x)) >= 0 on a fine grid (Delta_pl(K) in the paper's error budget)."""
    x = torch.linspace(lo, hi, points, dtype=D)
    return float((torch.as_tensor(loss(x), dtype=D) - pwl(x)).max())


# ------------------------------------------------------------------------------------------ the LP
@dataclass
class WorstCase:
    """The follower's worst case alpha* = (1/N) sum_{i,k} s[i,k] delta_{atoms[i,k]} (atoms = centres - shifts).

    value: the surrogate worst-case loss sup E_alpha[l_K] (the LP optimum, merged over groups);
    empirical_surrogate: E_alpha_hat[l_K]; empirical_loss: E_alpha_hat[l] when a true loss is known (else None);
    true_value: E_alpha*[l] (the true loss at the worst case found; None when unknown, inf when an atom sits
    where l is infinite, None when some transport went to infinity with zero mass, which only happens with
    unbounded support); transport: (1/N) sum |q| (<= eps); attacked[i]: pair i had mass moved;
    s, q, shifts, atoms: (N, K) tensors (shifts = q/s, 0 where s = 0; atoms = +-inf for zero-mass transport)."""

    value: float
    empirical_surrogate: float
    empirical_loss: float | None
    true_value: float | None
    transport: float
    eps: float
    support: tuple[float, float]
    centres: Tensor
    s: Tensor
    q: Tensor
    shifts: Tensor
    atoms: Tensor
    attacked: Tensor
    pwl: PiecewiseLinear
    group_size: int


def _solve_group(x: np.ndarray, a: np.ndarray, b: np.ndarray, eps: float, lo: float, hi: float, q_box):
    G, K = x.shape[0], a.shape[0]
    m = G * K
    lk = (x[:, None] * a[None, :] + b[None, :]).reshape(-1)  # l_k(xi_i), row-major (i, k)
    a_rep = np.tile(a, G)
    # variables [s (m), q+ (m), q- (m)]; minimise the negative objective
    c = -np.concatenate([lk, -a_rep, a_rep]) / G
    A_eq = hstack([skron(speye(G), np.ones((1, K))), csr_matrix((G, 2 * m))]).tocsr()
    b_eq = np.ones(G)
    rows = [hstack([csr_matrix((1, m)), csr_matrix(np.full((1, 2 * m), 1.0 / G))])]
    rhs = [np.array([eps])]
    I = speye(m, format="csr")
    xs = np.repeat(x, K)
    if math.isfinite(lo):  # s (lo - xi) + q+ - q- <= 0
        rows.append(hstack([_diag(lo - xs), I, -I]))
        rhs.append(np.zeros(m))
    if math.isfinite(hi):  # s (xi - hi) - q+ + q- <= 0
        rows.append(hstack([_diag(xs - hi), -I, I]))
        rhs.append(np.zeros(m))
    A_ub = vstack(rows).tocsr()
    b_ub = np.concatenate(rhs)
    qb = None if q_box is None else float(q_box)
    bounds = [(0.0, 1.0)] * m + [(0.0, qb)] * (2 * m)
    res = linprog(c, A_ub=A_ub, b_ub=b_ub, A_eq=A_eq, b_eq=b_eq, bounds=bounds, method="highs")
    if res.status != 0:
        raise RuntimeError(f"worst_case_lp: the linear program failed: {res.message}")
    z = res.x
    s = z[:m].reshape(G, K).clip(0.0, None)
    q = (z[m : 2 * m] - z[2 * m :]).reshape(G, K)
    return s, q, -res.fun


def _diag(v: np.ndarray):
    n = v.shape[0]
    return csr_matrix((v, (np.arange(n), np.arange(n))), shape=(n, n))


def worst_case_lp(
    centres,
    pwl: PiecewiseLinear,
    eps: float,
    support: tuple[float, float] | None = None,
    *,
    q_box: float | None = None,
    group_size: int | None = None,
    loss: Callable[[Tensor], Tensor] | None = None,
) -> WorstCase:
    """Solve the Thm-3.3 program exactly (scipy HiGHS) for the surrogate `pwl` (see the module docstring).

    centres: the N empirical points; eps: the W_1 radius; support: (lo, hi), either end may be +-inf, None
    for the whole line; q_box: the official code's extra bound |q_ik| <= q_box; group_size: solve
    consecutive groups of that many pairs separately (the paper's Section 3.4); loss: the true loss, used to
    report empirical_loss and true_value."""
    x = _check_margins(centres, "centres")
    eps = _check_eps(eps)
    if not isinstance(pwl, PiecewiseLinear):
        raise ValueError(
            "pwl: expected a PiecewiseLinear surrogate (see logistic_tangents / neglog_tangents)"
        )
    lo, hi = (-math.inf, math.inf) if support is None else (float(support[0]), float(support[1]))
    if math.isnan(lo) or math.isnan(hi) or lo > hi:
        raise ValueError(f"support: expected (lo, hi) with lo <= hi, got {support!r}")
    if (x < lo).any() or (x > hi).any():
        raise ValueError(f"centres: every centre must lie in the support [{lo}, {hi}]")
    if q_box is not None and (not math.isfinite(q_box) or q_box < 0):
        raise ValueError(f"q_box: must be a finite number >= 0, got {q_box!r}")
    N = x.shape[0]
    G = N if group_size is None else group_size
    if isinstance(G, bool) or not isinstance(G, int) or G < 1:
        raise ValueError(f"group_size: must be an integer >= 1, got {group_size!r}")
    xn = x.numpy()
    a = pwl.slopes.numpy()
    b = pwl.intercepts.numpy()
    S, Q, total = [], [], 0.0
    for start in range(0, N, G):
        xg = xn[start : start + G]
        s, q, val = _solve_group(xg, a, b, eps, lo, hi, q_box)
        S.append(s)
        Q.append(q)
        total += val * xg.shape[0]
    s = torch.as_tensor(np.concatenate(S), dtype=D)
    q = torch.as_tensor(np.concatenate(Q), dtype=D)
    tiny = 1e-12
    q = torch.where(q.abs() <= tiny, torch.zeros_like(q), q)
    has_mass = s > tiny
    shifts = torch.where(has_mass, q / torch.where(has_mass, s, torch.ones_like(s)), torch.zeros_like(q))
    atoms = x.unsqueeze(1) - shifts
    at_infinity = (~has_mass) & (q != 0)
    atoms = torch.where(at_infinity, -torch.sign(q) * torch.inf, atoms)
    if math.isfinite(lo) or math.isfinite(hi):  # round-off: keep atoms inside the support
        atoms = torch.where(has_mass, atoms.clamp(lo, hi), atoms)
    emp_sur = float(pwl(x).mean())
    emp_loss = true_value = None
    if loss is not None:
        emp_loss = float(torch.as_tensor(loss(x), dtype=D).mean())
        if not bool(at_infinity.any()):
            la = torch.as_tensor(loss(torch.where(has_mass, atoms, x.unsqueeze(1).expand_as(atoms))), dtype=D)
            true_value = float(torch.where(has_mass, s * la, torch.zeros_like(la)).sum() / N)
    return WorstCase(
        value=total / N,
        empirical_surrogate=emp_sur,
        empirical_loss=emp_loss,
        true_value=true_value,
        transport=float(q.abs().sum() / N),
        eps=eps,
        support=(lo, hi),
        centres=x,
        s=s,
        q=q,
        shifts=shifts,
        atoms=atoms,
        attacked=q.abs().sum(1) > tiny,
        pwl=pwl,
        group_size=G,
    )


def worst_case_greedy(
    centres, eps: float, lo: float, loss: Callable[[Tensor], Tensor]
) -> tuple[float, Tensor]:
    """The exact sup of E_alpha[loss] over the W_1 ball of radius eps with support [lo, oo), for a convex
    non-increasing loss (fractional knapsack: move whole pairs to lo, best gain per unit of transport first).

    Returns (value, moved) with moved[i] in [0, 1] the fraction of pair i's mass sent to lo."""
    x = _check_margins(centres, "centres")
    eps = _check_eps(eps)
    if not math.isfinite(lo) or (x < lo).any():
        raise ValueError("lo: must be finite and no larger than every centre")
    N = x.shape[0]
    lx = torch.as_tensor(loss(x), dtype=D)
    l_lo = float(torch.as_tensor(loss(torch.tensor(float(lo), dtype=D)), dtype=D))
    gain = l_lo - lx
    cost = x - lo
    ratio = torch.where(
        (cost > 0) & (gain > 0),
        gain / torch.where(cost > 0, cost, torch.ones_like(cost)),
        -torch.ones_like(cost),
    )
    order = torch.argsort(-ratio, stable=True)
    budget = eps * N
    moved = torch.zeros(N, dtype=D)
    extra = 0.0
    for i in order.tolist():
        if ratio[i] <= 0 or budget <= 0:
            break
        m = min(1.0, budget / float(cost[i]))
        moved[i] = m
        budget -= m * float(cost[i])
        extra += m * float(gain[i])
    return float(lx.mean()) + extra / N, moved


# ------------------------------------------------------------------------------------ SGPO's follower
def sgpo_follower(
    margins,
    eps: float,
    *,
    K: int = 6,
    pad: float = 0.5,
    window: tuple[float, float] | None = None,
    group_size: int | None = None,
) -> WorstCase:
    """SGPO's follower in margin space: the worst case of -log sigma over the W_1 ball of radius eps around the
    empirical margins, with support = window (default [min - pad, max + pad]) and K tangents at equally spaced
    knots of the window (K >= 2 includes both ends)."""
    x = _check_margins(margins)
    if isinstance(K, bool) or not isinstance(K, int) or K < 1:
        raise ValueError(f"K: must be an integer >= 1, got {K!r}")
    if window is None:
        if not math.isfinite(pad) or pad < 0:
            raise ValueError(f"pad: must be a finite number >= 0, got {pad!r}")
        lo, hi = float(x.min()) - pad, float(x.max()) + pad
    else:
        lo, hi = float(window[0]), float(window[1])
        if not (math.isfinite(lo) and math.isfinite(hi) and lo <= hi):
            raise ValueError(f"window: expected finite (lo, hi) with lo <= hi, got {window!r}")
    knots = torch.linspace(lo, hi, K, dtype=D) if K > 1 else torch.tensor([0.5 * (lo + hi)], dtype=D)
    return worst_case_lp(
        x, logistic_tangents(knots), eps, (lo, hi), group_size=group_size, loss=logistic_loss
    )


def sgpo_follower_probability(
    probs, eps: float, *, K: int = 6, q_box: float | None = None, group_size: int | None = None
) -> WorstCase:
    """The official code's follower: centres p_i in [0, 1] (p = sigma(beta' * reward gap)), loss -log v with
    tangents at v = k/K, support [0, 1]; q_box=eps reproduces the code's extra box |q_ik| <= eps."""
    p = _check_margins(probs, "probs")
    if (p < 0).any() or (p > 1).any():
        raise ValueError("probs: must lie in [0, 1]")
    return worst_case_lp(
        p,
        neglog_tangents(K),
        eps,
        (0.0, 1.0),
        q_box=q_box,
        group_size=group_size,
        loss=lambda v: -torch.log(v),
    )


def shifted_dpo_pair_losses(margins: Tensor, s: Tensor, shifts: Tensor) -> Tensor:
    """Per-pair leader losses against a fixed worst case (margin space): L_i = sum_k s_ik * l(margin_i - d_ik),
    shape (N,), with l = -log sigma (the smooth margin-space loss; arXiv 2502.18099 Section 3.3).

    margins (N,) may carry gradients (beta * h_i(theta)); s, shifts (N, K) from a WorstCase. With shifts = 0
    and sum_k s_ik = 1 this is DPO's per-pair loss; the gradient multiplier sigma(d - margin) / sigma(-margin)
    is >= 1 for attacked pairs (d > 0)."""
    margins = torch.as_tensor(margins)
    s = torch.as_tensor(s, dtype=margins.dtype, device=margins.device)
    shifts = torch.as_tensor(shifts, dtype=margins.dtype, device=margins.device)
    if margins.dim() != 1 or s.shape != shifts.shape or s.dim() != 2 or s.shape[0] != margins.shape[0]:
        raise ValueError("margins, s, shifts: expected shapes (N,), (N, K), (N, K)")
    if not torch.isfinite(shifts).all():
        raise ValueError(
            "shifts: contains infinite shifts (zero-mass transport to infinity); use a bounded support"
        )
    return (s * torch.nn.functional.softplus(shifts - margins.unsqueeze(1))).sum(1)


def shifted_dpo_loss(margins: Tensor, s: Tensor, shifts: Tensor) -> Tensor:
    """The leader's loss against a fixed worst case (margin space): mean_i sum_k s_ik * l(margin_i - d_ik).

    margins (N,) may carry gradients (beta * h_i(theta)); s, shifts (N, K) from a WorstCase. With shifts = 0
    this is the DPO loss; the gradient multiplier sigma(d - margin) / sigma(-margin) >= 1 for attacked pairs."""
    return shifted_dpo_pair_losses(margins, s, shifts).mean()


def probability_shifted_pair_losses(
    margins: Tensor, s: Tensor, shifts: Tensor, floor: float = 1e-6
) -> Tensor:
    """The official code's per-pair leader loss (probability space, `loss_type: weighted` of the SSAPO
    release): L_i = sum_k s_ik * -log(max(sigma(margin_i) - d_ik, floor)), shape (N,).

    shifts d_ik are the follower's displacements of the centres p_i in [0, 1] (from
    `sgpo_follower_probability`). Where sigma(margin) - d <= floor the clamp makes that piece's gradient zero;
    with the exact LP an attacked atom sits at p = 0 (d = p_i), so the pair is ignored until
    sigma(margin) > p_i, and then its multiplier sigma / (sigma - d) can be very large. Kept as an option to
    reproduce the release; the margin-space loss above is the smooth one."""
    margins = torch.as_tensor(margins)
    s = torch.as_tensor(s, dtype=margins.dtype, device=margins.device)
    shifts = torch.as_tensor(shifts, dtype=margins.dtype, device=margins.device)
    if margins.dim() != 1 or s.shape != shifts.shape or s.dim() != 2 or s.shape[0] != margins.shape[0]:
        raise ValueError("margins, s, shifts: expected shapes (N,), (N, K), (N, K)")
    if not torch.isfinite(shifts).all():
        raise ValueError("shifts: contains NaN or infinite values")
    v = (torch.sigmoid(margins).unsqueeze(1) - shifts).clamp(min=floor)
    return (s * -torch.log(v)).sum(1)

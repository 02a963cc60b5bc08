"""SLHF (Stackelberg Learning from Human Feedback) on a finite action set, solved exactly (arXiv 2512.16626).

The game (Pásztor, Kleine Buening, Krause 2025, eq. 5), for one context and n actions y_1..y_n:

    max_pi min_omega  f(pi, omega) =
        sum_y pi(y) [ sum_y' omega(y'|y) P[y, y'] + tau_F KL(omega(.|y) || omega_ref(.|y)) ] - tau_L KL(pi || pi_ref)

with P[i, j] = p(y_i > y_j) (so P + P^T = 1, and P may be intransitive) and omega[i, j] = omega(y_j | y_i).
The leader pi commits to a realised answer y; the follower sees y and answers y' to *minimise* the
leader's win probability (equivalently, to maximise its own, p(y' > y) = 1 - P[y, y']).

Closed form (Prop. 1 of arXiv 2512.16626: unique for tau_L, tau_F > 0):
  * follower (Gibbs variational principle, separately for every y):
        omega*(y'|y) ∝ omega_ref(y'|y) * exp(-P[y, y'] / tau_F)
  * the follower's optimal value, i.e. the leader's reward for playing y, is a soft-min:
        V(y) = -tau_F * log sum_y' omega_ref(y'|y) * exp(-P[y, y'] / tau_F)
  * leader (KL-regularised RLHF with reward V):
        pi*(y) ∝ pi_ref(y) * exp(V(y) / tau_L)
Unregularised limit (tau_F -> 0, then tau_L -> 0): the follower plays argmin_y' P[y, y'] (= argmax p(y' > y)),
V(y) = min_y' P[y, y'], and the leader plays argmax_y V(y), the least exploitable answer.

StackelbergGDA (the paper's Algorithm 1): two-timescale projected gradient descent-ascent on the simplices,
the follower's step kappa times the leader's. `stackelberg_gda` runs it (Euclidean projection, as in the
paper, or the entropic mirror step) and reports the distance to the closed form at every iteration.

All functions accept array-likes (lists, numpy, torch) and return torch float64 tensors. Leading batch
dimensions (one per context) are supported by the closed form, the objective and GDA: P has shape
(..., n, n), pi_ref (..., n), omega_ref (..., n, n) (broadcast over contexts) or (n,) (one follower
reference for every y and every context).
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass

import torch

Tensor = torch.Tensor
D = torch.float64

__all__ = [
    "preferences_from_rankings",
    "condorcet_preferences",
    "CONDORCET_RANKINGS",
    "check_preferences",
    "follower_best_response",
    "slhf_equilibrium",
    "slhf_values",
    "SLHFLimit",
    "slhf_unregularized",
    "slhf_objective",
    "slhf_gradients",
    "project_simplex",
    "GDAResult",
    "stackelberg_gda",
]

PROB_TOL = 1e-6  # tolerance on "sums to one" and on P + P^T = 1

# The three annotator types of the Condorcet example of arXiv 2512.16626, actions 0=A, 1=B, 2=C.
CONDORCET_RANKINGS = ((0, 1, 2), (1, 2, 0), (2, 0, 1))  # A>B>C, B>C>A, C>A>B


# ---------------------------------------------------------------------------------------------- validation
def _as_tensor(x, name: str) -> Tensor:
    try:
        t = torch.as_tensor(x, dtype=D)
    except (TypeError, ValueError, RuntimeError) as e:
        raise ValueError(f"{name}: not a numeric array ({e})") from None
    if not torch.isfinite(t).all():
        raise ValueError(f"{name}: contains NaN or infinite values")
    return t


def check_tau(tau, name: str) -> float:
    """A temperature: a finite real number > 0."""
    if isinstance(tau, Tensor) and tau.numel() == 1:
        tau = tau.item()
    if isinstance(tau, bool) or not isinstance(tau, numbers.Real) or not math.isfinite(tau) or tau <= 0:
        raise ValueError(f"{name}: must be a finite number > 0, got {tau!r}")
    return float(tau)


def check_preferences(P, name: str = "P") -> Tensor:
    """Validate a preference matrix P[..., i, j] = p(y_i > y_j): square, entries in [0, 1], P + P^T = 1."""
    P = _as_tensor(P, name)
    if P.dim() < 2 or P.shape[-1] != P.shape[-2] or P.shape[-1] == 0:
        raise ValueError(
            f"{name}: expected a square matrix of shape (..., n, n) with n >= 1, got {tuple(P.shape)}"
        )
    if (P < -PROB_TOL).any() or (P > 1 + PROB_TOL).any():
        raise ValueError(f"{name}: entries are probabilities p(y_i > y_j) and must lie in [0, 1]")
    err = (P + P.transpose(-1, -2) - 1).abs().max().item()
    if err > PROB_TOL:
        raise ValueError(
            f"{name}: must satisfy P[i, j] + P[j, i] = 1 (so P[i, i] = 1/2); the largest violation is {err:.3g}"
        )
    return P.clamp(0.0, 1.0)


def check_distribution(p, name: str, shape: tuple[int, ...], *, positive: bool = False) -> Tensor:
    """Validate probability vectors along the last dim (non-negative, summing to 1) and broadcast to `shape`."""
    p = _as_tensor(p, name)
    if p.dim() == 0 or p.shape[-1] != shape[-1]:
        raise ValueError(f"{name}: expected a last dimension of size {shape[-1]}, got shape {tuple(p.shape)}")
    try:
        p = p.expand(shape)
    except RuntimeError:
        raise ValueError(f"{name}: shape {tuple(p.shape)} does not broadcast to {shape}") from None
    if (p < 0).any():
        raise ValueError(f"{name}: probabilities must be non-negative")
    if positive and (p <= 0).any():
        raise ValueError(f"{name}: must be strictly positive here (full-support reference)")
    s = p.sum(-1)
    bad = (s - 1).abs()
    if (bad > PROB_TOL).any():
        worst = s.flatten()[int(torch.argmax(bad.flatten()))].item()
        raise ValueError(f"{name}: every distribution must sum to 1 (found a sum of {worst:.6g})")
    return p / s.unsqueeze(-1)


def _references(P: Tensor, pi_ref, omega_ref, *, positive: bool = False) -> tuple[Tensor, Tensor]:
    n = P.shape[-1]
    batch = P.shape[:-2]
    if pi_ref is None:
        pi_ref = torch.full(batch + (n,), 1.0 / n, dtype=D)
    pi_ref = check_distribution(pi_ref, "pi_ref", batch + (n,), positive=positive)
    if omega_ref is None:
        omega_ref = torch.full(batch + (n, n), 1.0 / n, dtype=D)
    else:
        omega_ref = _as_tensor(omega_ref, "omega_ref")
        if omega_ref.dim() == 1:  # one follower reference shared by every leader action (and context)
            omega_ref = omega_ref.unsqueeze(0)
    omega_ref = check_distribution(omega_ref, "omega_ref", batch + (n, n), positive=positive)
    return pi_ref, omega_ref


# ----------------------------------------------------------------------------------------- preferences
def preferences_from_rankings(rankings, shares) -> Tensor:
    """P[i, j] = share of annotators ranking i above j (P[i, i] = 1/2) for a population of strict rankings.

    `rankings`: a sequence of permutations of range(n), best first; `shares`: their population shares (sum 1).
    """
    rankings = [tuple(int(a) for a in r) for r in rankings]
    if not rankings:
        raise ValueError("rankings: expected at least one ranking")
    n = len(rankings[0])
    for r in rankings:
        if sorted(r) != list(range(n)):
            raise ValueError(f"rankings: {r} is not a permutation of 0..{n - 1}")
    shares = check_distribution(shares, "shares", (len(rankings),))
    P = torch.zeros(n, n, dtype=D)
    for r, a in zip(rankings, shares):
        pos = torch.empty(n, dtype=torch.long)
        pos[torch.tensor(r)] = torch.arange(n)
        P += a * (pos.unsqueeze(1) < pos.unsqueeze(0)).to(D)  # i above j
    P.fill_diagonal_(0.5)
    return P


def condorcet_preferences(alpha=(0.4, 0.35, 0.25)) -> Tensor:
    """The Condorcet example: type 1 ranks A>B>C, type 2 B>C>A, type 3 C>A>B with shares alpha.

    p(A>B) = a1 + a3, p(B>C) = a1 + a2, p(C>A) = a2 + a3; cyclic iff every a_i < 1/2."""
    return preferences_from_rankings(CONDORCET_RANKINGS, alpha)


# ------------------------------------------------------------------------------------------ closed form
def follower_best_response(P, omega_ref=None, tau_follower: float = 0.1) -> tuple[Tensor, Tensor]:
    """The follower's KL-regularised best response and its value, for every leader action y.

    Returns (omega, V): omega[..., y, y'] ∝ omega_ref(y'|y) exp(-P[y, y'] / tau_F), and the soft-min
    V[..., y] = -tau_F log sum_y' omega_ref(y'|y) exp(-P[y, y'] / tau_F) (the leader's value of playing y).
    """
    P = check_preferences(P)
    tau_f = check_tau(tau_follower, "tau_follower")
    _, omega_ref = _references(P, None, omega_ref)
    logits = torch.log(omega_ref) - P / tau_f  # log 0 = -inf: a zero-reference answer is never played
    return torch.softmax(logits, dim=-1), -tau_f * torch.logsumexp(logits, dim=-1)


def slhf_values(P, omega_ref=None, tau_follower: float = 0.1) -> Tensor:
    """V(y): the leader's value of playing y against the best-responding follower (a soft-min over y')."""
    return follower_best_response(P, omega_ref, tau_follower)[1]


def slhf_equilibrium(
    P, pi_ref=None, omega_ref=None, tau_leader: float = 0.1, tau_follower: float = 0.1
) -> tuple[Tensor, Tensor]:
    """The unique Stackelberg equilibrium (pi*, omega*) of the KL-regularised SLHF game (closed form).

    P[..., i, j] = p(y_i > y_j); pi_ref (..., n); omega_ref (..., n, n) with omega_ref[i, j] = omega_ref(y_j|y_i),
    or (n,) for one follower reference shared by every y. None means uniform. Both temperatures > 0.
    Returns pi* of shape (..., n) and omega* of shape (..., n, n).
    """
    P = check_preferences(P)
    tau_l = check_tau(tau_leader, "tau_leader")
    check_tau(tau_follower, "tau_follower")
    pi_ref, omega_ref = _references(P, pi_ref, omega_ref)
    omega, V = follower_best_response(P, omega_ref, tau_follower)
    pi = torch.softmax(torch.log(pi_ref) + V / tau_l, dim=-1)
    return pi, omega


@dataclass
class SLHFLimit:
    """The unregularised (tau -> 0) Stackelberg solution.

    follower_map[..., y]: the follower's deterministic answer to y (argmin_y' P[y, y'], first index on ties);
    omega: the limit of omega* (omega_ref restricted to the argmin set; one-hot when there is no tie);
    values[..., y] = min_y' P[y, y'] (over the support of omega_ref); leader_actions: the argmax set of
    values (a boolean mask over the support of pi_ref); pi: the limit of pi* (pi_ref restricted to it);
    value: max_y V(y), the leader's guaranteed win probability (at most 1/2)."""

    pi: Tensor
    omega: Tensor
    follower_map: Tensor
    values: Tensor
    leader_actions: Tensor
    value: Tensor


def slhf_unregularized(P, pi_ref=None, omega_ref=None, *, atol: float = 1e-12) -> SLHFLimit:
    """The tau_F -> 0 then tau_L -> 0 limit of the closed form: deterministic follower, least-exploitable leader.

    The references only break ties (and exclude actions they give zero probability)."""
    P = check_preferences(P)
    pi_ref, omega_ref = _references(P, pi_ref, omega_ref)
    Pf = torch.where(omega_ref > 0, P, torch.inf)  # the follower cannot play outside omega_ref's support
    V = Pf.min(-1).values
    fol_set = (Pf <= V.unsqueeze(-1) + atol) & (omega_ref > 0)
    omega = omega_ref * fol_set
    omega = omega / omega.sum(-1, keepdim=True)
    follower_map = torch.argmax(fol_set.to(torch.int8), dim=-1)  # first index of the argmin set
    Vl = torch.where(pi_ref > 0, V, -torch.inf)
    best = Vl.max(-1).values
    lead_set = (Vl >= best.unsqueeze(-1) - atol) & (pi_ref > 0)
    pi = pi_ref * lead_set
    pi = pi / pi.sum(-1, keepdim=True)
    return SLHFLimit(
        pi=pi, omega=omega, follower_map=follower_map, values=V, leader_actions=lead_set, value=best
    )


# ------------------------------------------------------------------------------------ objective, gradients
def _kl_rows(p: Tensor, q: Tensor, floor: float = 0.0) -> Tensor:
    """KL(p || q) over the last dim with 0 log 0 = 0 (q > 0 wherever p > 0 is assumed)."""
    logp = torch.log(p.clamp_min(floor)) if floor > 0 else torch.log(p)
    terms = torch.where(p > 0, p * (logp - torch.log(q)), torch.zeros_like(p))
    return terms.sum(-1)


def slhf_objective(
    P, pi, omega, pi_ref=None, omega_ref=None, tau_leader: float = 0.1, tau_follower: float = 0.1
) -> Tensor:
    """f(pi, omega) of eq. 5: sum_y pi(y)[sum_y' omega(y'|y) P[y,y'] + tau_F KL_y(omega||omega_ref)] - tau_L KL(pi||pi_ref)."""
    P = check_preferences(P)
    tau_l = check_tau(tau_leader, "tau_leader")
    tau_f = check_tau(tau_follower, "tau_follower")
    pi_ref, omega_ref = _references(P, pi_ref, omega_ref)
    n = P.shape[-1]
    pi = check_distribution(pi, "pi", P.shape[:-2] + (n,))
    omega = check_distribution(omega, "omega", P.shape[:-2] + (n, n))
    inner = (omega * P).sum(-1) + tau_f * _kl_rows(omega, omega_ref)
    return (pi * inner).sum(-1) - tau_l * _kl_rows(pi, pi_ref)


def _grads(P, pi, omega, pi_ref, omega_ref, tau_l, tau_f, floor):
    log_om = torch.log(omega.clamp_min(floor)) - torch.log(omega_ref)
    kl_om = (omega * log_om).sum(-1)
    g_pi = (
        (omega * P).sum(-1) + tau_f * kl_om - tau_l * (torch.log(pi.clamp_min(floor)) - torch.log(pi_ref) + 1)
    )
    g_om = pi.unsqueeze(-1) * (P + tau_f * (log_om + 1))
    return g_pi, g_om


def slhf_gradients(
    P, pi, omega, pi_ref=None, omega_ref=None, tau_leader: float = 0.1, tau_follower: float = 0.1
) -> tuple[Tensor, Tensor]:
    """(df/dpi, df/domega) of eq. 5 of arXiv 2512.16626:

    df/dpi(y)        = sum_y' omega(y'|y) P[y,y'] + tau_F KL(omega(.|y)||omega_ref(.|y)) - tau_L (log(pi(y)/pi_ref(y)) + 1)
    df/domega(y'|y)  = pi(y) [P[y,y'] + tau_F (log(omega(y'|y)/omega_ref(y'|y)) + 1)]"""
    P = check_preferences(P)
    tau_l = check_tau(tau_leader, "tau_leader")
    tau_f = check_tau(tau_follower, "tau_follower")
    pi_ref, omega_ref = _references(P, pi_ref, omega_ref, positive=True)
    n = P.shape[-1]
    pi = check_distribution(pi, "pi", P.shape[:-2] + (n,))
    omega = check_distribution(omega, "omega", P.shape[:-2] + (n, n))
    return _grads(P, pi, omega, pi_ref, omega_ref, tau_l, tau_f, 1e-300)


# ------------------------------------------------------------------------------------- StackelbergGDA
def project_simplex(v: Tensor) -> Tensor:
    """Euclidean projection of every vector along the last dim onto the probability simplex (sort-based)."""
    v = torch.as_tensor(v, dtype=D)
    n = v.shape[-1]
    u = torch.sort(v, dim=-1, descending=True).values
    css = u.cumsum(-1) - 1.0
    k = torch.arange(1, n + 1, dtype=D)
    rho = (u - css / k > 0).sum(-1, keepdim=True)  # >= 1 always (the largest entry qualifies)
    theta = torch.gather(css, -1, rho - 1) / rho.to(D)
    return (v - theta).clamp_min(0.0)


@dataclass
class GDAResult:
    """StackelbergGDA's run.

    pi, omega: the last iterate; pi_avg, omega_avg: the ergodic (running-average) iterates;
    pi_star, omega_star: the closed form; distance_pi[t], distance_omega[t]: max-abs distance of iterate t
    (t = 0 is the initial point) to the closed form; distance = max of the two;
    pi_iterates / omega_iterates: iterates every `record_every` steps (t = 0, record_every, ...), or None."""

    pi: Tensor
    omega: Tensor
    pi_avg: Tensor
    omega_avg: Tensor
    pi_star: Tensor
    omega_star: Tensor
    distance_pi: Tensor
    distance_omega: Tensor
    distance: Tensor
    pi_iterates: Tensor | None
    omega_iterates: Tensor | None
    steps: int
    lr: float
    kappa: float
    method: str


def _check_gda_schedule(steps, lr, kappa, record_every, method) -> tuple[float, float]:
    """stackelberg_gda's step count, step sizes, recording period and method; returns (lr, kappa)."""
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
        raise ValueError(f"steps: must be an integer >= 0, got {steps!r}")
    lr = check_tau(lr, "lr")
    kappa = check_tau(kappa, "kappa")
    if isinstance(record_every, bool) or not isinstance(record_every, int) or record_every < 1:
        raise ValueError(f"record_every: must be an integer >= 1, got {record_every!r}")
    if method not in ("projected", "mirror"):
        raise ValueError(f"method: expected 'projected' or 'mirror', got {method!r}")
    return lr, kappa


def _gda_start(P, pi_ref, omega_ref, pi0, omega0, method):
    """The initial point (pi, omega): copies of ``pi0`` / ``omega0``, by default of the references."""
    n = P.shape[-1]
    batch = P.shape[:-2]
    pi = pi_ref.clone() if pi0 is None else check_distribution(pi0, "pi0", batch + (n,)).clone()
    omega = (
        omega_ref.clone() if omega0 is None else check_distribution(omega0, "omega0", batch + (n, n)).clone()
    )
    if method == "mirror" and ((pi <= 0).any() or (omega <= 0).any()):
        raise ValueError("pi0, omega0: the mirror method needs strictly positive initial policies")
    return pi, omega


def _gda_update(pi, omega, g_pi, g_om, lr: float, lr_f: float, method: str):
    """One simultaneous step: the leader ascends with ``lr``, the follower descends with ``lr_f`` = κ·lr
    (Algorithm 1), by Euclidean projection onto the simplices or by the entropic mirror step."""
    if method == "projected":
        return project_simplex(pi + lr * g_pi), project_simplex(omega - lr_f * g_om)
    # subtract the row max before exponentiating so that large steps cannot overflow
    a = lr * g_pi
    b = -lr_f * g_om
    pi = pi * torch.exp(a - a.max(-1, keepdim=True).values)
    omega = omega * torch.exp(b - b.max(-1, keepdim=True).values)
    return pi / pi.sum(-1, keepdim=True), omega / omega.sum(-1, keepdim=True)


def stackelberg_gda(
    P,
    pi_ref=None,
    omega_ref=None,
    tau_leader: float = 0.1,
    tau_follower: float = 0.1,
    *,
    steps: int = 20000,
    lr: float = 0.05,
    kappa: float = 5.0,
    method: str = "projected",
    pi0=None,
    omega0=None,
    record_every: int = 1,
    keep_iterates: bool = True,
    floor: float = 1e-12,
) -> GDAResult:
    """Two-timescale gradient descent-ascent on eq. 5 (the paper's Algorithm 1), simultaneous updates:

        pi    <- Proj(pi + lr * df/dpi)                     (leader ascends)
        omega <- Proj(omega - kappa * lr * df/domega)       (follower descends, kappa times faster)

    method="projected": Euclidean projection onto the simplices (the paper's algorithm);
    method="mirror": the entropic mirror step (exponentiated gradient), pi <- pi * exp(lr g) / Z, which keeps
    the iterates strictly positive. The paper's best kappa is 5; its guarantee is for the averaged iterate,
    but on the examples here the last iterate converges too.

    Stability (verified numerically): the Euclidean step is a constant-step gradient method on a KL term whose
    curvature is tau / p, so it oscillates and does not converge when the equilibrium has entries p much below
    kappa * lr * pi(y) * tau_F / 2 (follower) or lr * tau_L / 2 (leader), e.g. with a follower reference that
    puts ~1e-4 on some answers. The mirror step has no such problem. Either way the follower's gradient for
    row y is scaled by pi(y), so rows the leader rarely plays converge slowly.

    pi0 / omega0: the initial point (default: the references). The references must have full support (the
    gradients contain log(pi / pi_ref)); log(pi) and log(omega) are evaluated at max(., floor) because the
    Euclidean projection can put exact zeros on the boundary.
    """
    P = check_preferences(P)
    tau_l = check_tau(tau_leader, "tau_leader")
    tau_f = check_tau(tau_follower, "tau_follower")
    pi_ref, omega_ref = _references(P, pi_ref, omega_ref, positive=True)
    lr, kappa = _check_gda_schedule(steps, lr, kappa, record_every, method)
    pi, omega = _gda_start(P, pi_ref, omega_ref, pi0, omega0, method)
    pi_star, omega_star = slhf_equilibrium(P, pi_ref, omega_ref, tau_l, tau_f)

    def dists(p, o):
        return (p - pi_star).abs().max().item(), (o - omega_star).abs().max().item()

    d_pi = torch.empty(steps + 1, dtype=D)
    d_om = torch.empty(steps + 1, dtype=D)
    d_pi[0], d_om[0] = dists(pi, omega)
    pi_it, om_it = ([pi.clone()], [omega.clone()]) if keep_iterates else (None, None)
    pi_sum = torch.zeros_like(pi)
    om_sum = torch.zeros_like(omega)
    lr_f = kappa * lr
    for t in range(1, steps + 1):
        g_pi, g_om = _grads(P, pi, omega, pi_ref, omega_ref, tau_l, tau_f, floor)
        pi, omega = _gda_update(pi, omega, g_pi, g_om, lr, lr_f, method)
        pi_sum += pi
        om_sum += omega
        d_pi[t], d_om[t] = dists(pi, omega)
        if keep_iterates and t % record_every == 0:
            pi_it.append(pi.clone())
            om_it.append(omega.clone())
    avg = max(steps, 1)
    return GDAResult(
        pi=pi,
        omega=omega,
        pi_avg=pi_sum / avg if steps else pi.clone(),
        omega_avg=om_sum / avg if steps else omega.clone(),
        pi_star=pi_star,
        omega_star=omega_star,
        distance_pi=d_pi,
        distance_omega=d_om,
        distance=torch.maximum(d_pi, d_om),
        pi_iterates=torch.stack(pi_it) if keep_iterates else None,
        omega_iterates=torch.stack(om_it) if keep_iterates else None,
        steps=steps,
        lr=lr,
        kappa=kappa,
        method=method,
    )

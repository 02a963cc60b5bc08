"""Inference-time refinement (arXiv 2512.16626, inference-time refinement): does the user's favourite appear within N answers?

SLHF: y_1 ~ pi (the leader), then y_{k+1} ~ omega(. | y_k) (the follower refines the *last* answer only),
so y_1..y_N is a Markov chain; the user (or a verifier) picks any element of the chain.
Baseline: N i.i.d. samples from a policy (NLHF's Nash, or any other), P(hit within N) = 1 - (1 - pi(T))^N.

Both are computed exactly. In the symmetric Condorcet example the Nash is uniform and the unregularised
follower walks the cycle A -> C -> B -> A, so a type-1 user (favourite A) gets 1/3, 5/9, 19/27 from NLHF and
1/3, 2/3, 1 from SLHF for N = 1, 2, 3 (the paper's "NLHF 56% at N=2; SLHF 67% at N=2, 100% at N=3").
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from stackalign.games.nash import nash_equilibrium
from stackalign.games.slhf import (
    CONDORCET_RANKINGS,
    D,
    check_distribution,
    check_tau,
    condorcet_preferences,
    slhf_equilibrium,
    slhf_unregularized,
)

Tensor = torch.Tensor

__all__ = [
    "refinement_chain",
    "iid_hits",
    "chain_distributions",
    "CondorcetRefinement",
    "condorcet_refinement",
]


def _target_mask(target, n: int) -> Tensor:
    idx = [target] if isinstance(target, int) else list(target)
    if not idx:
        raise ValueError("target: expected an action index or a non-empty collection of indices")
    for t in idx:
        if isinstance(t, bool) or not isinstance(t, int) or not 0 <= t < n:
            raise ValueError(f"target: action indices must be integers in 0..{n - 1}, got {t!r}")
    mask = torch.zeros(n, dtype=D)
    mask[idx] = 1.0
    return mask


def _check_n(n_max) -> int:
    if isinstance(n_max, bool) or not isinstance(n_max, int) or n_max < 1:
        raise ValueError(f"n_max: must be an integer >= 1, got {n_max!r}")
    return n_max


def refinement_chain(pi, omega, target, n_max: int) -> Tensor:
    """P(some y_k with k <= N lies in `target`) for N = 1..n_max along the refinement chain.

    pi: (n,) the first answer's distribution; omega: (n, n) with omega[i, j] = omega(y_j | y_i);
    target: an action index or a collection of indices (the answers the user would accept).
    Returns a float64 tensor of shape (n_max,), non-decreasing."""
    pi = torch.as_tensor(pi, dtype=D)
    if pi.dim() != 1:
        raise ValueError(f"pi: expected shape (n,), got {tuple(pi.shape)}")
    n = pi.shape[0]
    pi = check_distribution(pi, "pi", (n,))
    omega = check_distribution(omega, "omega", (n, n))
    miss = 1.0 - _target_mask(target, n)
    n_max = _check_n(n_max)
    alive = pi * miss  # mass of chains that have not hit the target yet, by current state
    hits = torch.empty(n_max, dtype=D)
    for k in range(n_max):
        if k:
            alive = (alive @ omega) * miss
        hits[k] = 1.0 - alive.sum()
    return hits.clamp(0.0, 1.0)


def iid_hits(pi, target, n_max: int) -> Tensor:
    """P(the target appears among N i.i.d. samples from pi) = 1 - (1 - pi(target))^N, N = 1..n_max."""
    pi = torch.as_tensor(pi, dtype=D)
    if pi.dim() != 1:
        raise ValueError(f"pi: expected shape (n,), got {tuple(pi.shape)}")
    n = pi.shape[0]
    pi = check_distribution(pi, "pi", (n,))
    p = (pi * _target_mask(target, n)).sum()
    N = torch.arange(1, _check_n(n_max) + 1, dtype=D)
    return 1.0 - (1.0 - p) ** N


def chain_distributions(pi, omega, n_max: int) -> Tensor:
    """The marginal distribution of y_k, k = 1..n_max, along the refinement chain (shape (n_max, n))."""
    pi = torch.as_tensor(pi, dtype=D)
    n = pi.shape[-1]
    pi = check_distribution(pi, "pi", (n,))
    omega = check_distribution(omega, "omega", (n, n))
    out = [pi]
    for _ in range(_check_n(n_max) - 1):
        out.append(out[-1] @ omega)
    return torch.stack(out)


@dataclass
class CondorcetRefinement:
    """Hit probabilities on the Condorcet example, one row per annotator type (favourite A, B, C) and N = 1..n_max.

    slhf_limit: the unregularised SLHF chain (deterministic leader and follower); slhf_tau: the SLHF chain at
    temperature tau (None if no tau was given); nlhf: i.i.d. samples from the Nash; *_population: the
    average over annotator types weighted by alpha."""

    alpha: Tensor
    tau: float | None
    slhf_limit: Tensor
    slhf_tau: Tensor | None
    nlhf: Tensor
    slhf_limit_population: Tensor
    slhf_tau_population: Tensor | None
    nlhf_population: Tensor


def condorcet_refinement(
    alpha=(0.4, 0.35, 0.25), n_max: int = 3, tau: float | None = None
) -> CondorcetRefinement:
    """Refinement hit probabilities for each annotator type of the Condorcet example: SLHF (tau -> 0, and at
    tau_L = tau_F = tau when given) versus i.i.d. sampling from the NLHF Nash equilibrium."""
    P = condorcet_preferences(alpha)
    alpha = check_distribution(alpha, "alpha", (3,))
    n_max = _check_n(n_max)
    lim = slhf_unregularized(P)
    nash = nash_equilibrium(P)
    favourites = [r[0] for r in CONDORCET_RANKINGS]
    slhf_lim = torch.stack([refinement_chain(lim.pi, lim.omega, f, n_max) for f in favourites])
    nlhf = torch.stack([iid_hits(nash, f, n_max) for f in favourites])
    slhf_tau = None
    if tau is not None:
        tau = check_tau(tau, "tau")
        pi, omega = slhf_equilibrium(P, None, None, tau, tau)
        slhf_tau = torch.stack([refinement_chain(pi, omega, f, n_max) for f in favourites])
    return CondorcetRefinement(
        alpha=alpha,
        tau=tau,
        slhf_limit=slhf_lim,
        slhf_tau=slhf_tau,
        nlhf=nlhf,
        slhf_limit_population=alpha @ slhf_lim,
        slhf_tau_population=None if slhf_tau is None else alpha @ slhf_tau,
        nlhf_population=alpha @ nlhf,
    )

"""Bradley-Terry (RLHF's reward model) fitted to compared pairs, exactly (the RLHF comparison of arXiv 2512.16626).

RLHF assumes p(y_i > y_j) = sigma(r_i - r_j) and fits r by maximum likelihood on the pairs that happened to be
compared. Under intransitive preferences the fit depends on *which* pairs were sampled: in the symmetric
Condorcet example, fitting on all three pairs ties the scores, while fitting on {A,B} and {B,C} alone gives
r = (+log 2, 0, -log 2) and RLHF picks A. NLHF and SLHF use p directly and do not have this problem.

`bradley_terry_fit` maximises

    sum_m w_m [ p_m log sigma(r_i - r_j) + (1 - p_m) log sigma(r_j - r_i) ] - (l2 / 2) |r|^2

by Newton's method (the objective is concave; its Hessian is a weighted graph Laplacian, plus l2 I), and
returns scores centred to mean 0 (the likelihood only sees differences).

Without regularisation the maximum-likelihood scores exist iff every item is compared and the "beats" graph
(an edge i -> j whenever i wins against j with positive weight) is strongly connected (Zermelo 1929; Ford
1957). Otherwise some score difference runs off to infinity and a ValueError says so; pass l2 > 0 (a
Gaussian prior) to get finite scores anyway.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from stackalign.games.slhf import D, check_preferences

Tensor = torch.Tensor

__all__ = ["bradley_terry_fit", "bradley_terry_from_preferences", "bradley_terry_probabilities"]


def _parse_pairs(pairs, n_items: int, weights) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    try:
        arr = np.asarray(
            torch.as_tensor(pairs, dtype=D) if isinstance(pairs, Tensor) else pairs, dtype=np.float64
        )
    except (TypeError, ValueError) as e:
        raise ValueError(f"pairs: expected (winner, loser) or (i, j, p) rows ({e})") from None
    if arr.ndim != 2 or arr.shape[0] == 0 or arr.shape[1] not in (2, 3):
        raise ValueError(
            f"pairs: expected a non-empty list of (winner, loser) pairs or (i, j, p_i_beats_j) triples, got shape {arr.shape}"
        )
    if not np.isfinite(arr).all():
        raise ValueError("pairs: contains NaN or infinite values")
    idx = arr[:, :2]
    if (idx != np.round(idx)).any():
        raise ValueError("pairs: item indices must be integers")
    i = idx[:, 0].astype(np.int64)
    j = idx[:, 1].astype(np.int64)
    if (i < 0).any() or (j < 0).any() or (i >= n_items).any() or (j >= n_items).any():
        raise ValueError(f"pairs: item indices must lie in 0..{n_items - 1} (n_items={n_items})")
    if (i == j).any():
        raise ValueError("pairs: an item cannot be compared with itself")
    p = arr[:, 2] if arr.shape[1] == 3 else np.ones(len(arr))
    if (p < 0).any() or (p > 1).any():
        raise ValueError("pairs: the third column is p(i beats j) and must lie in [0, 1]")
    if weights is None:
        w = np.ones(len(arr))
    else:
        w = np.asarray(torch.as_tensor(weights, dtype=D), dtype=np.float64).reshape(-1)
        if w.shape[0] != len(arr):
            raise ValueError(f"weights: expected one weight per pair ({len(arr)}), got {w.shape[0]}")
        if not np.isfinite(w).all() or (w < 0).any():
            raise ValueError("weights: must be finite and non-negative")
    keep = w > 0
    if not keep.any():
        raise ValueError("weights: all zero")
    return i[keep], j[keep], p[keep], w[keep]


def _check_identifiable(i, j, p, w, n: int) -> None:
    comp = coo_matrix((np.ones(len(i)), (i, j)), shape=(n, n))
    ncomp, _ = connected_components(comp, directed=False)
    if ncomp > 1:
        raise ValueError(
            "pairs: the comparison graph is not connected (some items are never compared with the others, "
            "so their relative scores are undetermined); pass l2 > 0 to fit anyway"
        )
    win = w * p  # mass of "i beats j"
    lose = w * (1 - p)  # mass of "j beats i"
    rows = np.concatenate([i[win > 0], j[lose > 0]])
    cols = np.concatenate([j[win > 0], i[lose > 0]])
    beats = coo_matrix((np.ones(len(rows)), (rows, cols)), shape=(n, n))
    nstrong, labels = connected_components(beats, directed=True, connection="strong")
    if nstrong > 1:
        raise ValueError(
            "pairs: the Bradley-Terry maximum-likelihood scores do not exist: the items split into groups "
            f"{[np.flatnonzero(labels == c).tolist() for c in range(nstrong)]} and some group never loses to "
            "another, so a score difference diverges; use soft labels, more pairs, or l2 > 0"
        )


def bradley_terry_fit(
    pairs, n_items: int, *, weights=None, l2: float = 0.0, tol: float = 1e-12, max_iter: int = 200
) -> Tensor:
    """Maximum-likelihood Bradley-Terry scores, centred to mean 0 (float64 tensor of shape (n_items,)).

    pairs: rows (winner, loser) for hard labels, or (i, j, p) with p = p(i beats j) for soft labels (a
    tensor/array of shape (m, 2) or (m, 3), or a list of tuples). Repeated rows count repeatedly;
    `weights` (one per row) scales them. l2 >= 0: an optional ridge penalty (l2/2)|r|^2."""
    if isinstance(n_items, bool) or not isinstance(n_items, int) or n_items < 2:
        raise ValueError(f"n_items: must be an integer >= 2, got {n_items!r}")
    if isinstance(l2, bool) or not isinstance(l2, int | float) or not math.isfinite(l2) or l2 < 0:
        raise ValueError(f"l2: must be a finite number >= 0, got {l2!r}")
    i, j, p, w = _parse_pairs(pairs, n_items, weights)
    if l2 == 0:
        _check_identifiable(i, j, p, w, n_items)
    n = n_items
    r = np.zeros(n)
    ones = np.ones((n, n)) / n

    def objective(r):
        d = r[i] - r[j]
        # p log sigma(d) + (1-p) log sigma(-d), written with logaddexp for stability
        return float(np.sum(w * (-p * np.logaddexp(0, -d) - (1 - p) * np.logaddexp(0, d)))) - 0.5 * l2 * r @ r

    for _ in range(max_iter):
        d = r[i] - r[j]
        s = 0.5 * (1 + np.tanh(0.5 * d))  # sigma(d)
        resid = w * (p - s)
        g = np.zeros(n)
        np.add.at(g, i, resid)
        np.add.at(g, j, -resid)
        g -= l2 * r
        if np.abs(g).max() <= tol * max(1.0, float(w.sum())):
            break
        c = w * s * (1 - s)
        H = np.zeros((n, n))
        np.add.at(H, (i, i), c)
        np.add.at(H, (j, j), c)
        np.add.at(H, (i, j), -c)
        np.add.at(H, (j, i), -c)
        H += l2 * np.eye(n)
        # the Laplacian is singular along 1 (gauge); adding 11^T/n fixes the gauge without changing the step on 1^perp
        step = np.linalg.solve(H + ones, g)
        step -= step.mean()
        f0 = objective(r)
        t = 1.0
        while t > 1e-12 and objective(r + t * step) < f0 + 0.25 * t * (g @ step) - 1e-15 * abs(f0):
            t *= 0.5
        r = r + t * step
    else:
        raise RuntimeError(
            f"bradley_terry_fit: Newton did not converge in {max_iter} iterations (|grad| = {np.abs(g).max():.3g})"
        )
    return torch.as_tensor(r - r.mean(), dtype=D)


def bradley_terry_from_preferences(P, pairs=None, *, l2: float = 0.0) -> Tensor:
    """BT scores fitted to the exact probabilities P[i, j] on the given (i, j) pairs (default: all i < j).

    This is the infinite-data RLHF reward model when only those pairs are ever compared."""
    P = check_preferences(P)
    if P.dim() != 2:
        raise ValueError(f"P: expected one (n, n) preference matrix, got shape {tuple(P.shape)}")
    n = P.shape[0]
    if pairs is None:
        pairs = [(a, b) for a in range(n) for b in range(a + 1, n)]
    rows = []
    for pr in pairs:
        if len(pr) != 2:
            raise ValueError(f"pairs: expected (i, j) index pairs, got {pr!r}")
        a, b = int(pr[0]), int(pr[1])
        if not (0 <= a < n and 0 <= b < n):
            raise ValueError(f"pairs: item indices must lie in 0..{n - 1}, got {pr!r}")
        rows.append((a, b, float(P[a, b])))
    return bradley_terry_fit(rows, n, l2=l2)


def bradley_terry_probabilities(r) -> Tensor:
    """The preference matrix sigma(r_i - r_j) a BT model with scores r implies (transitive by construction)."""
    r = torch.as_tensor(r, dtype=D)
    return torch.sigmoid(r.unsqueeze(-1) - r.unsqueeze(-2))

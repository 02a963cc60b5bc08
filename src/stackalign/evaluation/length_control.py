"""A length-controlled win rate: what the judge's preference would be if both answers had the same length.

Dubois et al., "Length-Controlled AlpacaEval: A Simple Way to Debias Automatic Evaluators" (arXiv 2404.04475),
fit a generalised linear model of the judge's preference on the mediator to control for, the length difference,
and read the model off at a zero difference. Here, per judged pair ``i`` (method answer ``a_i`` against
baseline answer ``b_i``):

    z_i = tanh((len(a_i) - len(b_i)) / sd(len(a) - len(b)))          (AlpacaEval 2's normalised length term)
    P(a_i preferred) = sigmoid(theta + phi * z_i)                       (logistic regression)
    length-controlled win rate = sigmoid(theta)                         (the prediction at z = 0)

Lengths are characters of the answers the judge read. AlpacaEval 2's GLM also carries an instruction-difficulty
term fitted across many models; with one method and one baseline there is nothing to fit it from, so the model
is the two terms above.

Targets: a win is 1, a loss 0 and a tie 1/2 (a soft preference such as the reward-model judge's
sigmoid(r - r') enters as it is): the log-likelihood of a fractional target y is
``y log p + (1 - y) log(1 - p)``, so a tie counts as half a win and half a loss. Ties are kept rather than
dropped because the both-orders protocol turns every inconsistent pair into a tie, and dropping them would fit
only the pairs on which the judge agreed with itself. Unreadable verdicts are left out (they carry no preference).

The fit is Newton's method on the log-likelihood plus ridges ``RIDGE / 2 * theta^2 + RIDGE_SLOPE / 2 * phi^2``.
The slope's ridge (1, scikit-learn's default strength) keeps the fit finite when the verdicts separate by
length (every longer answer wins): the boundary then sits in the gap of length differences instead of anywhere
in it. Next to a few hundred pairs it hardly moves the fit; on a few pairs it shrinks the slope, i.e. moves the
length-controlled rate towards the raw rate (the conservative direction). The intercept's ridge is negligible
and only keeps a rate of exactly 1 (every verdict a win) finite: within about 1e-5 of 1. The interval is a percentile
bootstrap over pairs with the same seeded resampling as :mod:`.intervals`; each resample recomputes the
standard deviation and refits, all resamples at once as one vectorised Newton iteration.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .intervals import DEFAULT_BOOTSTRAP, bootstrap_indices

__all__ = ["RIDGE", "RIDGE_SLOPE", "LengthControlled", "fit_logistic", "length_controlled", "length_feature"]

#: ridges on the intercept and on the slope, in units of the summed log-likelihood.
RIDGE = 1e-6
RIDGE_SLOPE = 1.0


@dataclass(frozen=True)
class LengthControlled:
    """The fit on all pairs (``rate`` = sigmoid(theta), ``slope`` = phi) and the bootstrap interval."""

    rate: float
    lo: float
    hi: float
    slope: float
    n: int

    def to_list(self) -> list[float]:
        return [self.rate, self.lo, self.hi]


def length_feature(delta: np.ndarray) -> np.ndarray:
    """``tanh(delta / sd(delta))`` along the last axis (sample standard deviation; 0 where it is 0)."""
    delta = np.asarray(delta, dtype=np.float64)
    n = delta.shape[-1]
    sd = delta.std(axis=-1, ddof=1, keepdims=True) if n > 1 else np.zeros(delta.shape[:-1] + (1,))
    safe = np.where(sd > 0, sd, 1.0)
    return np.where(sd > 0, np.tanh(delta / safe), 0.0)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * x))


def _objective(theta: np.ndarray, phi: np.ndarray, z: np.ndarray, y: np.ndarray) -> np.ndarray:
    eta = theta[:, None] + phi[:, None] * z
    # -[y log s(eta) + (1 - y) log(1 - s(eta))] = log(1 + e^eta) - y eta, computed without overflow
    nll = np.logaddexp(0.0, eta) - y * eta
    return nll.sum(axis=1) + 0.5 * (RIDGE * theta**2 + RIDGE_SLOPE * phi**2)


def fit_logistic(
    z: np.ndarray, y: np.ndarray, *, max_iter: int = 100, tol: float = 1e-10
) -> tuple[np.ndarray, np.ndarray]:
    """Fit ``P(y=1) = sigmoid(theta + phi z)`` to each row of ``z``, ``y`` (``[B, n]``, ``y`` in [0, 1]).

    Returns ``(theta, phi)``, each ``[B]``. Newton steps (the 2x2 system solved in closed form), each with a
    backtracking line search so the penalised objective never increases."""
    z = np.atleast_2d(np.asarray(z, dtype=np.float64))
    y = np.atleast_2d(np.asarray(y, dtype=np.float64))
    if z.shape != y.shape:
        raise ValueError(f"fit_logistic: z has shape {z.shape} but y has {y.shape}")
    if ((y < 0) | (y > 1)).any() or not np.isfinite(z).all():
        raise ValueError("fit_logistic: y must lie in [0, 1] and z must be finite")
    b, n = z.shape
    theta, phi = np.zeros(b), np.zeros(b)
    obj = _objective(theta, phi, z, y)
    active = np.arange(b)
    for _ in range(max_iter):
        za, ya, ta, pa = z[active], y[active], theta[active], phi[active]
        p = _sigmoid(ta[:, None] + pa[:, None] * za)
        r = p - ya
        g0 = r.sum(axis=1) + RIDGE * ta
        g1 = (r * za).sum(axis=1) + RIDGE_SLOPE * pa
        w = p * (1.0 - p)
        h00 = w.sum(axis=1) + RIDGE
        h01 = (w * za).sum(axis=1)
        h11 = (w * za * za).sum(axis=1) + RIDGE_SLOPE
        det = h00 * h11 - h01 * h01
        d0 = (h11 * g0 - h01 * g1) / det
        d1 = (h00 * g1 - h01 * g0) / det
        # Newton decrement: the predicted decrease of the objective; below tol the row has converged
        done = 0.5 * (g0 * d0 + g1 * d1) < tol * max(1, n)
        # backtracking: halve the step of each row whose objective would increase
        t = np.ones(active.size)
        new = _objective(ta - d0, pa - d1, za, ya)
        for _ in range(40):
            worse = new > obj[active]
            if not worse.any():
                break
            t = np.where(worse, 0.5 * t, t)
            sub = np.flatnonzero(worse)
            new[sub] = _objective(ta[sub] - t[sub] * d0[sub], pa[sub] - t[sub] * d1[sub], za[sub], ya[sub])
        t = np.where(new > obj[active], 0.0, t)
        theta[active], phi[active] = ta - t * d0, pa - t * d1
        obj[active] = np.minimum(new, obj[active])
        active = active[~(done | (t == 0.0))]
        if active.size == 0:
            break
    return theta, phi


def length_controlled(
    preference: Sequence[float],
    len_a: Sequence[float],
    len_b: Sequence[float],
    *,
    level: float = 0.95,
    n_boot: int = DEFAULT_BOOTSTRAP,
    seed: int = 0,
) -> LengthControlled | None:
    """The length-controlled win rate of answers ``a`` over ``b`` with its percentile bootstrap interval.

    ``preference[i]`` is pair ``i``'s verdict for ``a`` in [0, 1] (win 1, tie 0.5, loss 0, or a soft
    preference); ``len_a``, ``len_b`` the answers' lengths. ``None`` without pairs."""
    y = np.asarray([float(v) for v in preference], dtype=np.float64)
    la = np.asarray([float(v) for v in len_a], dtype=np.float64)
    lb = np.asarray([float(v) for v in len_b], dtype=np.float64)
    if not (y.shape == la.shape == lb.shape):
        raise ValueError(f"length_controlled: {y.size} verdicts, {la.size} and {lb.size} lengths")
    if y.size == 0:
        return None
    if not 0.0 < level < 1.0:
        raise ValueError(f"level: must be in (0, 1), got {level}")
    delta = la - lb
    theta, phi = fit_logistic(length_feature(delta)[None, :], y[None, :])
    rate = float(_sigmoid(theta)[0])
    if y.size == 1:
        return LengthControlled(rate, rate, rate, float(phi[0]), 1)
    idx = bootstrap_indices(y.size, n_boot=n_boot, seed=seed)
    bt, _ = fit_logistic(length_feature(delta[idx]), y[idx])
    alpha = (1.0 - level) / 2.0
    lo, hi = np.quantile(_sigmoid(bt), [alpha, 1.0 - alpha])
    return LengthControlled(rate, min(float(lo), rate), max(float(hi), rate), float(phi[0]), int(y.size))

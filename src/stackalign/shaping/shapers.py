"""Reward shapers: one interface, rewards (..., N) -> shaped rewards (..., N).

Definitions follow the SRS paper (arXiv 2602.02572) and its official code (github.com/Haichuan23/Stackelberg-Reward-Shaping). A row is the set of
rewards the shaping is computed over: the N i.i.d. samples of one prompt (CD, Best-of-N), or the k
next-token candidates of one decoding step (ARGS). Decoders add w * shaped (w = 1/beta) to the logits, so no
shaper multiplies by w itself.

    vanilla   r                                                    (the paper's "ARGS"/"CD" rows)
    meanstd   (r - mean r) / max(std_pop r, 1e-6)                 unbounded
    minmax    B_eff * (r - min r) / max(range r, 1e-6)            bounded, outlier-sensitive
    cap       clip(r - min r, 0, cap)
    meansoft  B_eff * sigmoid(alpha * (r - mean r))               SRS with the mean as threshold (ablation)
    hard      B_eff * 1[r >= m*]   (or r > m* when strict)        Theorem 1
    srs       B_eff * sigmoid(alpha * (r - m*))                   Theorem 3: the deployed soft threshold

m* is `stackelberg_threshold` of the row (with the row's weights), or a per-prompt threshold passed in
(`threshold=`), e.g. one estimated by Monte Carlo from base samples.

B_eff: the paper uses B. The official code shrinks it to the data: B_eff = min(B, stretch * range r), with
stretch 1.01 (ARGS) or 2.0 (CD); `budget_stretch=None` means the paper's B_eff = B. gamma is computed from
B_eff: gamma = min(exp(B_eff / beta), gamma_cap).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import torch

from stackalign.shaping.threshold import Array, log_gamma, solve_threshold, threshold_of_row, validate_rewards

Tensor = torch.Tensor

__all__ = ["Shaper", "SHAPERS", "PARAMS_USED", "get_shaper", "effective_budget"]


def effective_budget(rewards: Array, B: float, budget_stretch: float | None) -> Array:
    """B_eff per row: B, or min(B, stretch * (max r - min r)) as in the official code. Shape (...).

    ``rewards`` is a float64 tensor, or a NumPy array (the same formula on the host; see :meth:`Shaper.apply`)."""
    xp = torch if isinstance(rewards, Tensor) else np
    if budget_stretch is None:
        return xp.full_like(rewards[..., 0], float(B))
    return ((xp.amax(rewards, -1) - xp.amin(rewards, -1)) * budget_stretch).clip(max=float(B))


def _sigmoid(x: Array) -> Array:
    """torch.sigmoid; on a NumPy array the same function as (1 + tanh(x / 2)) / 2, which cannot overflow."""
    if isinstance(x, Tensor):
        return torch.sigmoid(x)
    return 0.5 + 0.5 * np.tanh(0.5 * x)


def _positive(name: str, value: float | None, allow_none: bool = False) -> None:
    if value is None and allow_none:
        return
    if not (isinstance(value, int | float) and math.isfinite(value) and value > 0):
        raise ValueError(f"{name}: must be a finite number > 0, got {value!r}")


@dataclass(frozen=True)
class Shaper:
    """A configured shaping. Call it on a (..., N) reward tensor; returns float64 (..., N).

    Fields are documented where they are declared (their help texts feed `stackalign recipe schema`).
    """

    kind: str = field(default="srs", metadata={"help": "one of SHAPERS"})
    B: float = field(default=12.0, metadata={"help": "budget: the upper bound of bounded shapings"})
    beta: float = field(
        default=2.0, metadata={"help": "follower KL strength; enters only through gamma = exp(B_eff/beta)"}
    )
    alpha: float = field(default=1.5, metadata={"help": "sigmoid steepness of srs / meansoft"})
    gamma_cap: float | None = field(
        default=None, metadata={"help": "cap on gamma (official code); null = the paper's formula"}
    )
    budget_stretch: float | None = field(
        default=None, metadata={"help": "B_eff = min(B, stretch * range of the row); null = B_eff = B"}
    )
    strict: bool = field(
        default=False, metadata={"help": "hard/srs 'above' is r > m (official CD), not r >= m"}
    )
    cap: float = field(default=1.0, metadata={"help": "clip level of the cap shaping"})
    method: Literal["exact", "bisect"] = field(
        default="exact", metadata={"help": "threshold solver: exact (sorted expectile scan) or bisect"}
    )

    def __post_init__(self) -> None:
        if self.kind not in SHAPERS:
            raise ValueError(f"kind: unknown shaping {self.kind!r}; choose from {sorted(SHAPERS)}")
        _positive("B", self.B)
        _positive("beta", self.beta)
        _positive("alpha", self.alpha)
        _positive("cap", self.cap)
        _positive("budget_stretch", self.budget_stretch, allow_none=True)
        if self.gamma_cap is not None and not (math.isfinite(self.gamma_cap) and self.gamma_cap >= 1):
            raise ValueError(f"gamma_cap: must be >= 1, got {self.gamma_cap!r}")
        if self.method not in ("exact", "bisect"):
            raise ValueError(f"method: expected 'exact' or 'bisect', got {self.method!r}")

    @property
    def uses_threshold(self) -> bool:
        return self.kind in ("hard", "srs")

    def threshold(self, rewards: Tensor, weights: Tensor | None = None) -> Tensor:
        """m* of each row with this shaper's B_eff and gamma rule. Shape (...)."""
        rewards, weights = validate_rewards(rewards, weights)
        b_eff = effective_budget(rewards, self.B, self.budget_stretch)
        return solve_threshold(rewards, weights, log_gamma(b_eff, self.beta, self.gamma_cap), self.method)

    def __call__(
        self, rewards: Tensor, weights: Tensor | None = None, threshold: Tensor | None = None
    ) -> Tensor:
        rewards, weights = validate_rewards(rewards, weights)
        if threshold is not None:
            threshold = torch.as_tensor(threshold, dtype=torch.float64, device=rewards.device)
            if threshold.shape != rewards.shape[:-1]:
                raise ValueError(
                    f"threshold: shape {tuple(threshold.shape)} must be {tuple(rewards.shape[:-1])}"
                )
            if not torch.isfinite(threshold).all():
                raise ValueError("threshold: contains NaN or infinite values")
        return self.apply(rewards, weights, threshold)

    def apply(self, rewards: Array, weights: Array, threshold: Array | None = None) -> Array:
        """:meth:`__call__` without the input checks, for a decoder's inner loop that has checked its inputs
        once: ``rewards`` float64 (..., N) and finite, ``weights`` float64 (..., N), non-negative, each row
        summing to 1, ``threshold`` None or float64 (...) and finite. Returns float64 (..., N).

        The arguments may also be NumPy arrays (rows of N <= 64 for the threshold shapings): the same code
        runs on them (``xp`` is torch or numpy; only operations both spell alike are used). ARGS shapes larger
        batches of its k candidates per step that way on the host (a few rows go through :meth:`apply_row`),
        where each of the threshold's ~30 tiny operations costs a fraction of a torch op."""
        xp = torch if isinstance(rewards, Tensor) else np
        k = self.kind
        if k == "vanilla":
            return rewards
        if k == "meanstd":
            centred = rewards - rewards.mean(-1)[..., None]
            return centred / xp.sqrt((centred**2).mean(-1))[..., None].clip(min=1e-6)
        if k == "cap":
            return (rewards - xp.amin(rewards, -1)[..., None]).clip(0.0, self.cap)
        b_eff = effective_budget(rewards, self.B, self.budget_stretch)[..., None]
        if k == "minmax":
            low = xp.amin(rewards, -1)[..., None]
            spread = (xp.amax(rewards, -1)[..., None] - low).clip(min=1e-6)
            return b_eff * (rewards - low) / spread
        if k == "meansoft":
            return b_eff * _sigmoid(self.alpha * (rewards - rewards.mean(-1)[..., None]))
        # hard / srs: the Stackelberg threshold of the row (Theorem 2), or the one supplied per row.
        if threshold is None:
            lg = log_gamma(b_eff[..., 0], self.beta, self.gamma_cap)
            m = solve_threshold(rewards, weights, lg, self.method)
        else:
            m = threshold
        m = m[..., None]
        if k == "hard":  # Theorem 1: B_eff * 1[r >= m*]
            return b_eff * ((rewards > m) if self.strict else (rewards >= m))
        return b_eff * _sigmoid(self.alpha * (rewards - m))  # Theorem 3: B_eff * sigmoid(alpha (r - m*))

    def apply_row(
        self, rewards: Sequence[float], weights: Sequence[float], threshold: float | None = None
    ) -> list[float]:
        """:meth:`apply` for ONE row of Python floats, for the threshold shapings (``hard``, ``srs``) and
        ``vanilla``: the same B_eff, gamma and sigmoid, with the row's root from
        :func:`~stackalign.shaping.threshold.threshold_of_row`. A decoder that shapes a few rows of k ~ 10
        candidates per step on the host uses it: a loop over k floats costs less than ~40 array operations
        between two model forwards. Inputs as for :meth:`apply` (finite; weights non-negative)."""
        if self.kind == "vanilla":
            return list(rewards)
        if not self.uses_threshold:
            raise ValueError(
                f"apply_row: only 'vanilla', 'hard' and 'srs' shape a row of floats, not {self.kind!r}"
            )
        b_eff = float(self.B)
        if self.budget_stretch is not None:
            b_eff = min(b_eff, (max(rewards) - min(rewards)) * self.budget_stretch)
        m = threshold
        if m is None:
            m = threshold_of_row(rewards, weights, log_gamma(b_eff, self.beta, self.gamma_cap))
        if self.kind == "hard":  # Theorem 1
            return [b_eff * float(r > m if self.strict else r >= m) for r in rewards]
        a = 0.5 * self.alpha  # Theorem 3, sigmoid(x) = (1 + tanh(x / 2)) / 2 as on NumPy arrays
        return [b_eff * (0.5 + 0.5 * math.tanh(a * (r - m))) for r in rewards]


SHAPERS = ("vanilla", "meanstd", "minmax", "cap", "meansoft", "hard", "srs")

# The parameters each shaping reads in __call__ / threshold (a recipe that sets another is an error).
PARAMS_USED: dict[str, tuple[str, ...]] = {
    "vanilla": (),
    "meanstd": (),
    "cap": ("cap",),
    "minmax": ("B", "budget_stretch"),
    "meansoft": ("B", "budget_stretch", "alpha"),
    "hard": ("B", "budget_stretch", "beta", "gamma_cap", "strict", "method"),
    "srs": ("B", "budget_stretch", "beta", "gamma_cap", "strict", "method", "alpha"),
}


def get_shaper(name: str, **params) -> Shaper:
    """A shaper by name ("vanilla", "meanstd", "minmax", "cap", "meansoft", "hard", "srs") with parameters.

    Unknown parameter names raise ValueError naming them."""
    allowed = set(Shaper.__dataclass_fields__) - {"kind"}
    unknown = set(params) - allowed
    if unknown:
        raise ValueError(f"unknown shaping parameter(s) {sorted(unknown)}; allowed: {sorted(allowed)}")
    return Shaper(kind=name, **params)

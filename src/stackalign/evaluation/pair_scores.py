"""One pair's score: the share of the pair won by ``a`` for a verdict, and the Bradley–Terry soft preference
of a reward difference (Bradley & Terry 1952; Ouyang et al., arXiv 2203.02155 eq. 1). The judges score a
pair with these and :mod:`.win_rates` averages them over pairs (and re-exports them).
"""

from __future__ import annotations

import math
from typing import Any

__all__ = ["bradley_terry_preference", "outcome_share", "preference_of_reward_gap"]


def outcome_share(outcome: float) -> float:
    """The share of a pair won by ``a``: 1 for a win (outcome > 0), ½ for a tie, 0 for a loss."""
    return 1.0 if outcome > 0 else 0.5 if outcome == 0 else 0.0


def preference_of_reward_gap(d: float) -> float:
    """σ(d) for one reward difference d = r(a) − r(b), as 0.5 (1 + tanh(d / 2)) (no overflow for large |d|)."""
    return 0.5 * (1.0 + math.tanh(0.5 * d))


def bradley_terry_preference(r_a: Any, r_b: Any) -> Any:
    """σ(r_a − r_b) elementwise for reward tensors: the Bradley–Terry probability that ``a`` is preferred."""
    return (r_a - r_b).sigmoid()

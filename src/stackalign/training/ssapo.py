"""``algorithm: ssapo``: Stackelberg self-annotated preference optimisation (Chu, Zhang, Jia, Jin;
arXiv 2502.18099, Algorithm 1).

Round 0 is DPO on a small gold-labelled seed set. Each later round samples K answers per new prompt from
pi_{t-1}, labels them by the implicit reward log pi_{t-1}/pi_ref (chosen = best, rejected = worst), solves the
follower's worst case in the W_1 ball of radius eps around the margins (Thm 3.3's exact LP, grouped by G pairs
as in Section 3.4; the margin-space or the release's probability-space variant), and trains on the
reweighted, shifted DPO loss with pi_{t-1} as the reference. eps = 0 is self-annotation without reweighting
(SPA-like, the paper's Table 3 column eps = 0). The pieces: `self_annotation.py`, `dpo_loss.py`,
`stackalign.games.sgpo`; the loop: `rounds.py`.
"""

from __future__ import annotations

from typing import Any

from stackalign.training.rounds import SSAPOConfig, run_rounds

__all__ = ["SSAPOConfig", "train"]


def train(ctx: Any) -> dict:
    """The ``train(ctx)`` of the algorithm registry: ``summary.json`` gets ``rounds`` and ``eval``."""
    return run_rounds(ctx, "ssapo")

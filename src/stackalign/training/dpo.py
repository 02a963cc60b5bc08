"""``algorithm: dpo``: DPO on gold-labelled pairs (Rafailov et al., arXiv 2305.18290), the baselines of SSAPO.

``data: seeds``: DPO on the seed set only (the paper's "Mistral-7B-DPO" row: the same 2K seeds). ``data:
all``: the full-label ceiling: the seeds, then the same rounds of new prompts as SSAPO, each labelled by the
world's gold judge instead of self-annotation. The loss is `stackalign.training.dpo_loss.dpo_loss`; the
round loop is `stackalign.training.rounds.run_rounds`.
"""

from __future__ import annotations

from typing import Any

from stackalign.training.rounds import DPOConfig, run_rounds

__all__ = ["DPOConfig", "train"]


def train(ctx: Any) -> dict:
    """The ``train(ctx)`` of the algorithm registry: ``summary.json`` gets ``rounds`` and ``eval``."""
    return run_rounds(ctx, "dpo")

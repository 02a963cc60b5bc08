"""Named SRS presets (SRS paper arXiv 2602.02572 and its official code): the paper's clean formula and the two clipped variants of the official code.

                 scope       weights                 B_eff                  gamma                     above
  paper          any         as given                B                      exp(B/beta)               r >= m
  official-args  per step    softmax(top-k logits)   min(B, 1.01*range r)   min(exp(B_eff/beta), 2)   r >= m
  official-cd    per prompt  uniform (N samples)     min(B, 2*range r)      exp(min(B_eff/beta, 2))   r >  m

All three shape with B_eff * sigmoid(alpha * (r - m)). Note exp(min(x, 2)) = min(exp(x), e^2), so
official-cd is gamma_cap = e^2. Default B, beta, alpha are the values in the official repository
(ARGS: B=12, alpha=1.5, w=0.5 i.e. beta=2; CD: B=15, beta=0.667, alpha=1). Every run records its preset.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

from stackalign.shaping.shapers import Shaper, get_shaper

__all__ = ["Preset", "PRESETS", "get_preset"]


@dataclass(frozen=True)
class Preset:
    """A named parameter set of the ``srs`` / ``hard`` shaper. The weights column of the table above is the
    decoder's side of the protocol (see :mod:`stackalign.shaping.resolve`): ARGS passes the candidates'
    softmax probabilities, the Monte Carlo threshold passes uniform weights over i.i.d. samples."""

    name: str
    description: str
    params: dict = field(default_factory=dict)

    def to_config(self) -> dict:
        return asdict(self)


PRESETS: dict[str, Preset] = {
    "paper": Preset(
        "paper",
        "the paper's formula: gamma = exp(B/beta), B_eff = B, no clipping",
        dict(B=12.0, beta=2.0, alpha=1.5, gamma_cap=None, budget_stretch=None, strict=False),
    ),
    "official-args": Preset(
        "official-args",
        "official SRS-ARGS code: per step over the k candidates, weights = softmax of their logits, "
        "B_eff = min(B, 1.01*range), gamma = min(exp(B_eff/beta), 2), above is r >= m",
        dict(B=12.0, beta=2.0, alpha=1.5, gamma_cap=2.0, budget_stretch=1.01, strict=False),
    ),
    "official-cd": Preset(
        "official-cd",
        "official SRS-CD code: per prompt over N i.i.d. samples, uniform weights, B_eff = min(B, 2*range), "
        "gamma = exp(min(B_eff/beta, 2)), above is r > m",
        dict(B=15.0, beta=0.667, alpha=1.0, gamma_cap=math.exp(2.0), budget_stretch=2.0, strict=True),
    ),
}


def get_preset(name: str, kind: str = "srs", **overrides) -> Shaper:
    """The shaper of a named preset ("paper", "official-args", "official-cd"); B/beta/alpha may be overridden.

    `kind` may be "srs" (default) or "hard" (the same threshold rule with a hard step)."""
    if name not in PRESETS:
        raise ValueError(f"preset: unknown {name!r}; choose from {sorted(PRESETS)}")
    if kind not in ("srs", "hard"):
        raise ValueError(f"kind: a preset configures 'srs' or 'hard', got {kind!r}")
    params = {**PRESETS[name].params, **overrides}
    return get_shaper(kind, **params)

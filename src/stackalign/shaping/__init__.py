"""Stackelberg reward shaping: pure tensor math, no model code.

- `stackelberg_threshold`: the leader's optimal per-prompt threshold m* (root of F, SRS Thm 2).
- `get_shaper` / `Shaper`: vanilla, meanstd, minmax, cap, meansoft, hard, srs on one interface.
- `make_shaper`: a recipe's shaping, parameters and preset as a `Shaper` (run and train).
- `get_preset`: "paper", "official-args", "official-cd" (the paper's formula, arXiv 2602.02572, and the official code's two clipped variants).
"""

from stackalign.shaping.presets import PRESETS, Preset, get_preset
from stackalign.shaping.resolve import Shaping, describe_shaper, make_shaper, resolve_shaper
from stackalign.shaping.shapers import PARAMS_USED, SHAPERS, Shaper, effective_budget, get_shaper
from stackalign.shaping.threshold import F_value, stackelberg_threshold, threshold_from_log_gamma

__all__ = [
    "PRESETS",
    "Preset",
    "PARAMS_USED",
    "SHAPERS",
    "Shaper",
    "Shaping",
    "F_value",
    "effective_budget",
    "describe_shaper",
    "get_preset",
    "make_shaper",
    "resolve_shaper",
    "get_shaper",
    "stackelberg_threshold",
    "threshold_from_log_gamma",
]

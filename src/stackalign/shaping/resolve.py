"""Turning what users pass as ``shaper=`` (None, a name, a preset, a callable) into a shaping callable.

The protocol between decoders and shapings: a shaping is a callable
``shaper(rewards [R, n], weights [R, n], threshold=None | [R]) -> shaped [R, n]`` on float64 tensors.
``weights`` are the base policy's probabilities of the n candidates of each row (each row sums to 1) and
``threshold`` an optional per-row leader threshold m; a shaping that does not use them ignores them.
Decoders call :func:`resolve_shaper` once and record :func:`describe_shaper` in their run's config.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

__all__ = ["resolve_shaper", "describe_shaper"]


def resolve_shaper(shaper: Any) -> Callable | None:
    """None / a callable pass through; a string is a preset ("paper", "official-args", "official-cd") or a
    shaper name ("vanilla", "meanstd", "minmax", "cap", "meansoft", "hard", "srs")."""
    if shaper is None or callable(shaper):
        return shaper
    if isinstance(shaper, str):
        from stackalign.shaping.presets import PRESETS, get_preset
        from stackalign.shaping.shapers import get_shaper

        return get_preset(shaper) if shaper in PRESETS else get_shaper(shaper)
    raise ValueError(f"shaper: expected None, a name or a callable, got {shaper!r}")


def describe_shaper(shaper: Any) -> Any:
    """A JSON-able description of a resolved shaper for run configs (a dataclass's fields, else its repr)."""
    if shaper is None:
        return None
    if dataclasses.is_dataclass(shaper):
        return dataclasses.asdict(shaper)
    return repr(shaper)

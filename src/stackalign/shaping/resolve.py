"""Turning what users pass as ``shaper=`` (None, a name, a preset, a callable) into a shaping callable.

The protocol between decoders and shapings: a shaping is a callable
``shaper(rewards [R, n], weights [R, n], threshold=None | [R]) -> shaped [R, n]`` on float64 tensors.
``weights`` are the base policy's probabilities of the n candidates of each row (each row sums to 1) and
``threshold`` an optional per-row leader threshold m; a shaping that does not use them ignores them.
Decoders call :func:`resolve_shaper` once and record :func:`describe_shaper` in their run's config;
recipes (run and train alike) name a shaping, its parameters and a preset, built by :func:`make_shaper`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, Protocol, runtime_checkable

import torch

from stackalign.shaping.presets import get_preset
from stackalign.shaping.shapers import PARAMS_USED, get_shaper

__all__ = ["Shaping", "resolve_shaper", "describe_shaper", "make_shaper"]


@runtime_checkable
class Shaping(Protocol):
    """What a decoder may call: ``rewards`` [R, n] (float), ``weights`` [R, n] (the base policy's
    probabilities of the n candidates, rows summing to 1; None = uniform), ``threshold`` [R] (a per-row
    leader threshold m; None = the shaping computes its own, or uses none) -> shaped rewards [R, n].
    Optional attributes decoders read: ``beta`` (ARGS's default fusion weight is 1/beta) and
    ``uses_threshold`` (False: per-prompt thresholds would be ignored, so decoders refuse them)."""

    def __call__(
        self,
        rewards: torch.Tensor,
        weights: torch.Tensor | None = None,
        threshold: torch.Tensor | None = None,
    ) -> torch.Tensor: ...


def resolve_shaper(shaper: Any) -> Shaping | None:
    """None / a callable pass through; a string is a preset ("paper", "official-args", "official-cd") or a
    shaper name ("vanilla", "meanstd", "minmax", "cap", "meansoft", "hard", "srs")."""
    if shaper is None or callable(shaper):
        return shaper
    if isinstance(shaper, str):
        from stackalign.shaping.presets import PRESETS

        return get_preset(shaper) if shaper in PRESETS else get_shaper(shaper)
    raise ValueError(f"shaper: expected None, a name or a callable, got {shaper!r}")


def make_shaper(
    shaping: str,
    params: Mapping[str, Any] | None = None,
    *,
    preset: str | None = None,
    w: float | None = None,
) -> Any:
    """The :class:`~stackalign.shaping.shapers.Shaper` a recipe names: ``shaping`` with the parameter overrides
    ``params``, from the SRS ``preset`` when one is given for ``srs`` or ``hard`` shaping (ignored otherwise).

    ``w``: the ARGS fusion weight of the decoder the shaper feeds. ARGS's follower is the KL-regularised
    optimum with β = 1/w, so when ``params`` set no ``beta`` and the shaping reads one (or a preset sets it),
    β = 1/w: the threshold's γ = exp(B/β) (SRS paper, Thm 2) then uses the β the decoder applies.

    A parameter the shaping does not read is a ValueError ``KEY: not used by shaping ...``; the shapers' own
    range errors (``B: must be ...``) pass through, so the caller can prefix the recipe field."""
    params = dict(params or {})
    used = PARAMS_USED.get(shaping, ())
    unused = sorted(set(params) - set(used))
    if unused:
        raise ValueError(
            f"{unused[0]}: not used by shaping {shaping!r} (it reads: {', '.join(used) or 'nothing'})"
        )
    if w is not None and w > 0 and "beta" not in params and (preset is not None or "beta" in used):
        params["beta"] = 1.0 / w
    if preset is not None and shaping in ("srs", "hard"):
        return get_preset(preset, kind=shaping, **params)
    return get_shaper(shaping, **params)


def describe_shaper(shaper: Any) -> Any:
    """A JSON-able description of a resolved shaper for run configs (a dataclass's fields, else its repr)."""
    if shaper is None:
        return None
    if dataclasses.is_dataclass(shaper):
        return dataclasses.asdict(shaper)
    return repr(shaper)

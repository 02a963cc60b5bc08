"""Preference pairs: gold-labelled seed sets from a sandbox world, seed files, and their validation.

A pair is a dict ``{"prompt", "chosen", "rejected"}`` (strings; the prompt is a full policy prompt, the
responses are its continuations) with optional extra fields (``gold_chosen``, ``gold_rejected``, ``flipped``,
``margin``). SSAPO (Chu et al., arXiv 2502.18099, Section 4) starts from a small gold-labelled seed set (2K
UltraFeedback pairs, 3.3% of the labels); here the seeds are pairs of base responses labelled by the world's
gold utility, a ``label_noise`` share of them flipped, so that the data-efficiency and noise claims (Table 5's
25% flips) can be tested.
"""

from __future__ import annotations

import json
import os
import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = [
    "REQUIRED_FIELDS",
    "validate_pairs",
    "gold_pairs",
    "seed_pairs",
    "load_pairs",
    "save_pairs",
    "split_round_prompts",
]

REQUIRED_FIELDS = ("prompt", "chosen", "rejected")


def validate_pairs(pairs: Sequence[dict], *, source: str = "pairs") -> list[dict]:
    """Check a list of preference pairs; ValueError naming the pair and field otherwise. Returns a list."""
    pairs = list(pairs)
    if not pairs:
        raise ValueError(f"{source}: the preference set is empty (need at least one pair)")
    for i, p in enumerate(pairs):
        if not isinstance(p, dict):
            raise ValueError(f"{source}: pair {i} is a {type(p).__name__}, expected an object")
        missing = [k for k in REQUIRED_FIELDS if k not in p]
        if missing:
            raise ValueError(
                f"{source}: pair {i} is missing field(s) {missing}; each pair needs {list(REQUIRED_FIELDS)}"
            )
        for k in REQUIRED_FIELDS:
            if not isinstance(p[k], str):
                raise ValueError(
                    f"{source}: pair {i} field {k!r} must be a string, got {type(p[k]).__name__}"
                )
        if not p["prompt"].strip():
            raise ValueError(f"{source}: pair {i} has an empty prompt")
    return pairs


def gold_pairs(
    world: Any,
    prompts: Sequence[str],
    n: int,
    *,
    label_noise: float = 0.0,
    seed: int = 0,
) -> list[dict]:
    """``n`` pairs of base responses (the world's generative base distribution) to prompts drawn from
    ``prompts``, labelled by the world's gold utility (ties redrawn), a ``label_noise`` share flipped.

    Deterministic in (world, prompts, n, label_noise, seed)."""
    from stackalign.worlds.build import make_pairs

    if not (isinstance(n, int) and n >= 1):
        raise ValueError(f"n: the number of pairs must be an integer >= 1, got {n!r}")
    if not (0.0 <= float(label_noise) < 0.5):
        raise ValueError(f"label_noise: must be in [0, 0.5), got {label_noise!r}")
    prompts = list(prompts)
    if not prompts:
        raise ValueError("prompts: no prompts to draw the pairs from")
    if hasattr(world, "gold_pairs"):  # a world with its own base distribution (the smol world's base model)
        return world.gold_pairs(prompts, n, label_noise=float(label_noise), seed=seed)
    bias = float(world.params.get("bias", world.manifest.get("config", {}).get("bias", 0.85)))
    rng = random.Random(f"stackalign-gold-pairs:{seed}")
    return make_pairs(rng, prompts, n, bias, float(label_noise))


def split_round_prompts(
    prompts: Sequence[str], n_seed: int, per_round: int, rounds: int, *, seed: int = 0
) -> tuple[list[str], list[list[str]]]:
    """A seeded shuffle of the training prompts cut into the seed pool and ``rounds`` disjoint pools of
    ``per_round`` prompts (the paper's P_1, P_2, P_3: new prompts each round). Pools wrap around when the
    world has too few prompts (the seed pool keeps its own prompts first)."""
    ps = list(prompts)
    if not ps:
        raise ValueError("prompts: the world has no training prompts")
    random.Random(f"stackalign-round-prompts:{seed}").shuffle(ps)
    n_seed_prompts = min(len(ps), max(1, n_seed))
    seed_pool = ps[:n_seed_prompts]
    rest = ps[n_seed_prompts:] or ps
    pools, j = [], 0
    for _ in range(rounds):
        pool = [rest[(j + i) % len(rest)] for i in range(per_round)]
        j += per_round
        pools.append(pool)
    return seed_pool, pools


def seed_pairs(world: Any, n: int, *, label_noise: float = 0.0, seed: int = 0) -> list[dict]:
    """The gold-labelled seed set: ``n`` pairs on the world's training prompts (see :func:`gold_pairs`)."""
    return gold_pairs(world, world.train_prompts, n, label_noise=label_noise, seed=seed)


def load_pairs(path: str | os.PathLike) -> list[dict]:
    """Read a JSONL file of pairs (one object per line with prompt / chosen / rejected) and validate it."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"preference file not found: {str(p)!r}")
    out = []
    for ln, line in enumerate(p.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError as e:
            raise ValueError(f"{p}: line {ln} is not valid JSON: {e}") from None
    return validate_pairs(out, source=str(p))


def save_pairs(pairs: Sequence[dict], path: str | os.PathLike) -> None:
    """Write pairs as JSONL (atomically: a temporary file, then a rename)."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_name(f".{p.name}.{os.getpid()}.tmp")
    with open(tmp, "w") as f:
        for x in pairs:
            f.write(json.dumps(x) + "\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, p)

"""How the follower's LP (arXiv 2502.18099, Thm 3.3) scales with the number of pairs, with and without the
grouping of Section 3.4.

    python -m experiments.lp_bench [--pairs 100,300,1000,3000] [--groups 0,100] [--space margin]

Margins are drawn from the distribution self-annotation produced in the sandbox (|N(1, 1)|, i.e. positive
margins beta*(r_w - r_l) mostly below 3); the times are CPU seconds of this process (HiGHS runs single-threaded
here), so they mean the same on a contended machine. Prints one JSON row per (pairs, group) with the
worst-case value: grouping trades a (small) loss of adversarial value for time.
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from stackalign.training.self_annotation import solve_follower

__all__ = ["lp_timing", "main"]


def lp_timing(
    pairs: list[int], groups: list[int | None], *, eps: float = 0.3, space: str = "margin", seed: int = 0
) -> list[dict]:
    """One row per (N, G): CPU and wall seconds of `solve_follower`, pairs attacked, worst-case value."""
    rows = []
    for n in pairs:
        g = torch.Generator().manual_seed(seed + n)
        x = (torch.randn(n, generator=g, dtype=torch.float64) + 1.0).abs()
        for G in groups:
            c0, w0 = time.process_time(), time.perf_counter()
            sol = solve_follower(x, eps=eps, space=space, group_size=G)
            rows.append(
                dict(
                    pairs=n,
                    group_size=G,
                    space=space,
                    cpu_seconds=time.process_time() - c0,
                    wall_seconds=time.perf_counter() - w0,
                    attacked=sol.attacked,
                    worst_case_value=sol.value,
                )
            )
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--pairs", default="100,300,1000,3000")
    ap.add_argument("--groups", default="0,100", help="group sizes; 0 = one global LP")
    ap.add_argument("--space", default="margin", choices=["margin", "probability"])
    ap.add_argument("--eps", type=float, default=0.3)
    a = ap.parse_args(argv)
    groups = [int(g) or None for g in a.groups.split(",")]
    for row in lp_timing([int(n) for n in a.pairs.split(",")], groups, eps=a.eps, space=a.space):
        print(json.dumps(row), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

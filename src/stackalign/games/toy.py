"""`stackalign games toy`: the SRS paper's motivating example (§1.2), solved exactly.

A base model puts 0.9 on a disfavoured answer (r_U = 1) and 0.1 on the preferred one (r_U = 2); beta = 1.
Aligning to r_U directly keeps most of the base bias; the Stackelberg threshold reward does better, the
more so the larger the budget B.
"""

from __future__ import annotations

import argparse

import torch

from stackalign.games.srs import (
    brute_force_leader,
    follower_policy,
    leader_utility,
    optimal_threshold,
    soft_threshold_reward,
    threshold_reward,
)


def main(args: argparse.Namespace | None = None) -> int:
    base = torch.tensor([0.9, 0.1], dtype=torch.float64)
    u = torch.tensor([1.0, 2.0], dtype=torch.float64)
    beta = 1.0
    rows = [
        (
            "raw reward r_U",
            "-",
            float(leader_utility(base, u, u, beta)),
            float(follower_policy(base, u, beta)[1]),
        )
    ]
    for B in (1.0, 2.0, 3.0):
        m = optimal_threshold(base, u, B, beta)
        r = threshold_reward(u, m, B)
        brute, _ = brute_force_leader(base, u, B, beta)
        rows.append(
            (
                f"threshold, B={B:g} (m*={float(m):.4f}, brute force {brute:.4f})",
                f"{B:g}",
                float(leader_utility(base, r, u, beta)),
                float(follower_policy(base, r, beta)[1]),
            )
        )
        for alpha in (1.0, 10.0):
            rs = soft_threshold_reward(u, m, B, alpha)
            rows.append(
                (
                    f"  soft SRS, alpha={alpha:g}",
                    f"{B:g}",
                    float(leader_utility(base, rs, u, beta)),
                    float(follower_policy(base, rs, beta)[1]),
                )
            )
    print("SRS toy example: base (0.9, 0.1), r_U = (1, 2), beta = 1")
    print(f"{'reward handed to the follower':58s} {'B':>3s} {'user utility':>13s} {'P(preferred)':>13s}")
    for name, B, util, p in rows:
        print(f"{name:58s} {B:>3s} {util:13.4f} {p:13.4f}")
    return 0

"""Exact solvers for the finite games behind stackalign's methods."""

from stackalign.games.srs import (
    brute_force_leader,
    follower_policy,
    kl_divergence,
    leader_utility,
    optimal_threshold,
    soft_threshold_reward,
    threshold_reward,
)

__all__ = [
    "brute_force_leader",
    "follower_policy",
    "kl_divergence",
    "leader_utility",
    "optimal_threshold",
    "soft_threshold_reward",
    "threshold_reward",
]

"""Exact solvers for the finite games behind stackalign's methods.

- SRS (`srs`): the KL-regularised follower, the leader's utility, the brute-force leader optimum.
- SLHF (`slhf`): closed-form Stackelberg equilibrium, its unregularised limit, StackelbergGDA.
- NLHF (`nash`): Nash equilibrium by linear programming and a KL-regularised variant.
- RLHF (`bradley_terry`): Bradley-Terry fit from compared pairs.
- Inference-time refinement (`refinement`): SLHF's iterated follower versus i.i.d. NLHF sampling.
- SGPO (`sgpo`): the worst-case distribution in a Wasserstein ball over DPO margins (finite LP).
"""

from stackalign.games.bradley_terry import (
    bradley_terry_fit,
    bradley_terry_from_preferences,
    bradley_terry_probabilities,
)
from stackalign.games.nash import (
    exploitability,
    nash_equilibrium,
    nash_value,
    regularized_nash_equilibrium,
    regularized_nash_gap,
)
from stackalign.games.refinement import (
    CondorcetRefinement,
    chain_distributions,
    condorcet_refinement,
    iid_hits,
    refinement_chain,
)
from stackalign.games.sgpo import (
    PiecewiseLinear,
    WorstCase,
    dpo_loss,
    logistic_loss,
    logistic_tangents,
    neglog_tangents,
    probability_shifted_pair_losses,
    pwl_gap,
    robust_loss_unbounded,
    sgpo_follower,
    sgpo_follower_probability,
    shifted_dpo_loss,
    shifted_dpo_pair_losses,
    tangent_bound,
    worst_case_greedy,
    worst_case_lp,
)
from stackalign.games.slhf import (
    CONDORCET_RANKINGS,
    GDAResult,
    SLHFLimit,
    condorcet_preferences,
    follower_best_response,
    preferences_from_rankings,
    project_simplex,
    slhf_equilibrium,
    slhf_gradients,
    slhf_objective,
    slhf_unregularized,
    slhf_values,
    stackelberg_gda,
)
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
    "CONDORCET_RANKINGS",
    "CondorcetRefinement",
    "GDAResult",
    "PiecewiseLinear",
    "SLHFLimit",
    "WorstCase",
    "bradley_terry_fit",
    "bradley_terry_from_preferences",
    "bradley_terry_probabilities",
    "brute_force_leader",
    "chain_distributions",
    "condorcet_preferences",
    "condorcet_refinement",
    "dpo_loss",
    "exploitability",
    "follower_best_response",
    "follower_policy",
    "iid_hits",
    "kl_divergence",
    "leader_utility",
    "logistic_loss",
    "logistic_tangents",
    "nash_equilibrium",
    "nash_value",
    "neglog_tangents",
    "optimal_threshold",
    "preferences_from_rankings",
    "project_simplex",
    "pwl_gap",
    "refinement_chain",
    "regularized_nash_equilibrium",
    "regularized_nash_gap",
    "robust_loss_unbounded",
    "sgpo_follower",
    "sgpo_follower_probability",
    "shifted_dpo_loss",
    "shifted_dpo_pair_losses",
    "probability_shifted_pair_losses",
    "slhf_equilibrium",
    "slhf_gradients",
    "slhf_objective",
    "slhf_unregularized",
    "slhf_values",
    "soft_threshold_reward",
    "stackelberg_gda",
    "tangent_bound",
    "threshold_reward",
    "worst_case_greedy",
    "worst_case_lp",
]

"""Sample estimators the policy-gradient losses share (``pg``: rl, rlhf, selfplay; ``slhf_loss``: slhf).

- :func:`kl_per_token` / :func:`kl_estimate`: Schulman's k1 / k2 / k3 estimators of KL(π‖π_ref) from tokens
  sampled from π (J. Schulman, "Approximating KL divergence", 2020, http://joschu.net/blog/kl-approx.html).
  With log r_t = log π_ref(y_t) − log π(y_t) per token:

      k1 = −log r                 unbiased, high variance, can be negative
      k2 = (log r)² / 2           biased (low), low variance, >= 0
      k3 = (r − 1) − log r        unbiased, low variance, >= 0 (GRPO's choice, arXiv 2402.03300 eq. 4)

- :func:`leave_one_out_mean`: the leave-one-out (RLOO) baseline b_j = (1/(n−1)) Σ_{k≠j} R_k over the last
  dimension (Kool et al. 2019; Ahmadian et al. 2024, arXiv 2402.14740 eq. 6): independent of R_j, so
  R_j − b_j is an unbiased advantage.
"""

from __future__ import annotations

import torch

Tensor = torch.Tensor

__all__ = ["KL_ESTIMATORS", "kl_estimate", "kl_per_token", "leave_one_out_mean"]

KL_ESTIMATORS = ("k1", "k2", "k3")


def _check(estimator: str) -> None:
    if estimator not in KL_ESTIMATORS:
        raise ValueError(f"kl_estimator: unknown {estimator!r}; choose from {list(KL_ESTIMATORS)}")


def _k(log_r: Tensor, estimator: str) -> Tensor:
    """k1 / k2 / k3 of the per-token log-ratios log r = log π_ref − log π (module docstring)."""
    if estimator == "k1":
        return -log_r
    if estimator == "k2":
        return 0.5 * log_r**2
    return torch.expm1(log_r) - log_r  # r − 1 − log r, computed stably


def kl_per_token(logp: Tensor, ref_logp: Tensor, estimator: str = "k1") -> Tensor:
    """Per-token estimate of KL(π ‖ π_ref) from samples of π: same shape as ``logp``."""
    _check(estimator)
    return _k(ref_logp - logp, estimator)


def kl_estimate(logp: Tensor, ref_logp: Tensor, mask: Tensor, estimator: str = "k3") -> Tensor:
    """Per-sequence estimate of KL(π‖π_ref) = E_{y~π}[log π(y)/π_ref(y)]: the per-token estimate summed
    over the real tokens. Shapes: ``logp``, ``ref_logp``, ``mask`` [B, T] → [B]."""
    _check(estimator)
    log_r = (ref_logp - logp) * mask
    return (_k(log_r, estimator) * mask).sum(-1)


def leave_one_out_mean(rewards: Tensor) -> Tensor:
    """b_j = (Σ_k R_k − R_j) / (n − 1) over the last dimension (n >= 2; the callers check it and name
    their field). Same shape as ``rewards``."""
    n = rewards.shape[-1]
    return (rewards.sum(-1, keepdim=True) - rewards) / (n - 1)

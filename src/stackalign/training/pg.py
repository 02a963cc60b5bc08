"""Policy-gradient components: pure functions with the shapes and the math in comments.

- :func:`sample_group`: G responses per prompt from the policy (``stackalign.decoding.sampling.sample``:
  shared prompt prefill, per-prompt seeded generators), seeded per step so a resumed run redraws them.
- :func:`response_logprobs`: per-token log-probs ``log π(y_t | x, y_<t)`` of given responses, for left-padded
  prompts and right-padded responses, with the mask of real response tokens.
- :func:`advantages`: a constant baseline, or the leave-one-out (RLOO) baseline within each group
  (:func:`stackalign.training.estimators.leave_one_out_mean`).
- :func:`reinforce_loss`: −mean_i A_i · Σ_t log π(y_{i,t}) (REINFORCE, Williams 1992), optionally plus a
  KL loss term β·mean_i Σ_t k(y_{i,t}) (GRPO's placement, arXiv 2402.03300 eq. 3, with k3; k2 there has
  the exact gradient of KL(π‖π_ref), see :func:`reinforce_loss`),
  or with the KL already folded into the reward (:func:`kl_in_reward`, the classic RLHF placement,
  Ouyang et al. 2022, arXiv 2203.02155 eq. 2).

The KL estimators (k1 / k2 / k3, Schulman 2020) are in :mod:`stackalign.training.estimators`.

Everything is per *sequence*: the sequence log-prob is the sum of token log-probs (not length-normalised),
so the gradient is the unbiased score-function estimator of ∇ E_{y~π}[A(y)].
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import torch

from stackalign.decoding.common import GenerationConfig, forward_params, pad_id_of, position_ids
from stackalign.decoding.sampling import SampleResult, sample
from stackalign.training.estimators import kl_estimate, leave_one_out_mean
from stackalign.training.loop import step_seed

Tensor = torch.Tensor

__all__ = [
    "sample_group",
    "pack_batch",
    "response_logprobs",
    "advantages",
    "kl_in_reward",
    "reinforce_loss",
]


def sample_group(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[str],
    G: int,
    config: GenerationConfig,
    *,
    seed: int,
    step: int,
    salt: str = "train",
    mixture: tuple[Any, float] | None = None,
) -> SampleResult:
    """G responses per prompt, a pure function of ``(weights, prompts, seed, step)``; ``mixture=(reference,
    beta)`` samples from the token-level geometric mixture of the model and the reference (``sample``).

    Returns a :class:`SampleResult` (``texts[i][j]``, ``token_ids[i][j]``: response j of prompt i; the ids
    keep a final EOS / the token that completed a stop string, the texts do not)."""
    from stackalign.training.distributed import full_weights

    was_training = model.training
    model.eval()
    try:
        cfg = replace(config, seed=step_seed(seed, step, salt))
        with full_weights():  # FSDP: generation runs on gathered weights (no per-forward collective)
            return sample(model, tokenizer, prompts, G, cfg, mixture=mixture)
    finally:
        model.train(was_training)


def pack_batch(
    prompt_ids: Sequence[Sequence[int]], response_ids: Sequence[Sequence[int]], pad_id: int
) -> tuple[Tensor, Tensor, int]:
    """Lay out B (prompt, response) pairs as ``[pads | prompt | response | pads]``.

    Prompts are left-padded to width P, responses right-padded to width T (at least 1), so the response
    columns are the same for every row: ``input_ids[:, P:P+T]``.

    Returns ``(input_ids [B, P+T], attention_mask [B, P+T], P)``."""
    if len(prompt_ids) != len(response_ids):
        raise ValueError(f"got {len(prompt_ids)} prompts but {len(response_ids)} responses")
    if not prompt_ids or any(len(p) == 0 for p in prompt_ids):
        raise ValueError("pack_batch: every prompt needs at least one token")
    B = len(prompt_ids)
    P = max(len(p) for p in prompt_ids)
    T = max(1, max(len(r) for r in response_ids))
    ids = torch.full((B, P + T), int(pad_id), dtype=torch.long)
    mask = torch.zeros((B, P + T), dtype=torch.long)
    for i, (p, r) in enumerate(zip(prompt_ids, response_ids)):
        ids[i, P - len(p) : P] = torch.as_tensor(list(p), dtype=torch.long)
        mask[i, P - len(p) : P] = 1
        if len(r):
            ids[i, P : P + len(r)] = torch.as_tensor(list(r), dtype=torch.long)
            mask[i, P : P + len(r)] = 1
    return ids, mask, P


def response_logprobs(
    model: Any,
    prompt_ids: Sequence[Sequence[int]],
    response_ids: Sequence[Sequence[int]],
    pad_id: int,
    *,
    temperature: float = 1.0,
    batch_size: int | None = None,
) -> tuple[Tensor, Tensor]:
    """Per-token log-probs of responses under ``model``.

    ``logp[i, t] = log softmax(logits(x_i, y_i,<t) / temperature)[y_i,t]`` for t < len(y_i), 0 on padding.
    The logits predicting the response token at column P+t are those at column P+t−1 (the last prompt
    token predicts the first response token). Position ids are ``cumsum(mask) − 1``, so left padding
    never shifts positions and a row's result does not depend on its batch (to float rounding).

    Gradients flow unless called under ``torch.no_grad()`` (the frozen reference).

    Returns ``(logp [B, T] float32, mask [B, T] float32)`` with T the longest response (>= 1)."""
    if temperature <= 0:
        raise ValueError(f"temperature: must be > 0, got {temperature}")
    device = next(model.parameters()).device
    bs = batch_size or len(prompt_ids)
    outs, masks = [], []
    T_all = max(1, max(len(r) for r in response_ids))
    for s in range(0, len(prompt_ids), bs):
        ids, mask, P = pack_batch(prompt_ids[s : s + bs], response_ids[s : s + bs], pad_id)
        ids, mask = ids.to(device), mask.to(device)
        T = ids.shape[1] - P
        kwargs: dict[str, Any] = {"attention_mask": mask, "use_cache": False}
        if "position_ids" in forward_params(model):
            kwargs["position_ids"] = position_ids(mask)
        logits = model(input_ids=ids, **kwargs).logits[:, P - 1 : P + T - 1, :].float()
        if temperature != 1.0:
            logits = logits / temperature
        targets = ids[:, P : P + T]
        lp = torch.log_softmax(logits, dim=-1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)
        m = mask[:, P : P + T].float()
        lp = lp * m
        if T < T_all:  # micro-batches may be narrower than the longest response overall
            lp = torch.nn.functional.pad(lp, (0, T_all - T))
            m = torch.nn.functional.pad(m, (0, T_all - T))
        outs.append(lp)
        masks.append(m)
    return torch.cat(outs), torch.cat(masks)


def advantages(rewards: Tensor, baseline: str = "rloo", constant: float = 0.0) -> Tensor:
    """Advantages of grouped rewards ``[P, G]`` → ``[P, G]``.

    ``baseline="rloo"``: A_ij = R_ij − (1/(G−1)) Σ_{k≠j} R_ik (leave-one-out: unbiased, needs G >= 2).
    ``baseline="constant"``: A_ij = R_ij − constant."""
    if rewards.dim() != 2:
        raise ValueError(f"rewards: expected shape [prompts, G], got {tuple(rewards.shape)}")
    if not torch.isfinite(rewards).all():
        raise ValueError("rewards: contain NaN or infinite values")
    if baseline == "rloo":
        G = rewards.shape[1]
        if G < 2:
            raise ValueError(f"group_size: the leave-one-out baseline needs G >= 2, got {G}")
        return rewards - leave_one_out_mean(rewards)
    if baseline == "constant":
        return rewards - constant
    raise ValueError(f"baseline: expected 'rloo' or 'constant', got {baseline!r}")


def kl_in_reward(rewards: Tensor, kl: Tensor, kl_coef: float) -> Tensor:
    """R − β·KL(y) with the per-sequence KL estimate detached (the penalty is part of the return, not a
    differentiable loss term). Shapes broadcast: [P, G] and [P, G]."""
    return rewards - kl_coef * kl.detach()


def reinforce_loss(
    logp: Tensor,
    mask: Tensor,
    adv: Tensor,
    *,
    ref_logp: Tensor | None = None,
    kl_coef: float = 0.0,
    kl_estimator: str = "k3",
) -> tuple[Tensor, dict[str, float]]:
    """REINFORCE surrogate over B sampled sequences.

        L = −(1/B) Σ_i A_i · Σ_t log π(y_{i,t})   [+ β (1/B) Σ_i k(y_i) when ``ref_logp`` and kl_coef > 0]

    ``logp``, ``mask``, ``ref_logp`` [B, T]; ``adv`` [B] (detached here). As a loss term on samples of π
    (differentiating the estimator only, not the sampling), the expected gradients differ: k2's is
    ∇KL(π‖π_ref) exactly (E_π[(log π/π_ref) ∇log π]); k3's (GRPO's choice, arXiv 2402.03300 eq. 4) is
    E_π[(1 − π_ref/π) ∇log π] = ∇KL(π_ref‖π), the reverse direction; k1's is E_π[∇log π] = 0. k1 belongs
    in the reward (:func:`kl_in_reward`), where the score-function estimator gives ∇KL(π‖π_ref).

    Returns ``(loss, {"pg_loss", "kl_loss"})``."""
    seq_logp = (logp * mask).sum(-1)
    pg = -(adv.detach().to(seq_logp.dtype) * seq_logp).mean()
    loss = pg
    kl_term = torch.zeros((), dtype=seq_logp.dtype, device=seq_logp.device)
    if ref_logp is not None and kl_coef > 0:
        kl_term = kl_estimate(logp, ref_logp.detach(), mask, kl_estimator).mean()
        loss = loss + kl_coef * kl_term
    return loss, {"pg_loss": float(pg.detach()), "kl_loss": float(kl_term.detach())}


def prompt_token_ids(tokenizer: Any, prompts: Sequence[str]) -> list[list[int]]:
    """The policy's token ids of each prompt (the same ids ``sample`` prefills with)."""
    return [list(tokenizer(p)["input_ids"]) for p in prompts]


__all__ += ["prompt_token_ids", "pad_id_of"]

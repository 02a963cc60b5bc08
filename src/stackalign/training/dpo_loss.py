"""The DPO core as pure functions: sequence log-probabilities and the weighted, shifted DPO loss.

DPO (Rafailov et al., arXiv 2305.18290, eq. 7):

    L_DPO(theta) = -E log sigma( beta [log pi_theta(y_w|x)/pi_ref(y_w|x) - log pi_theta(y_l|x)/pi_ref(y_l|x)] ).

SGPO's leader (Chu et al., arXiv 2502.18099, Section 3.3) trains against the follower's worst case
alpha* = (1/N) sum_{i,k} s_ik delta_{xi_i - d_ik}: pair i's unit mass is split over K atoms, atom k shifted by
d_ik. The per-pair loss is sum_k s_ik l(beta h_i(theta) - d_ik) with l = -log sigma
(`stackalign.games.sgpo.shifted_dpo_pair_losses`, the one definition used here); with s = 1, d = 0 it is DPO's.
Per-pair weights w_i multiply the pair losses; the batch loss is sum_i w_i L_i / N (so w = 1 is plain DPO).

The official release's probability-space loss (sum_k s_ik -log(sigma(beta h) - d_ik)) is
`stackalign.games.sgpo.probability_shifted_pair_losses`; `dpo_loss(..., space="probability")` selects it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from stackalign.games.sgpo import probability_shifted_pair_losses, shifted_dpo_pair_losses

Tensor = torch.Tensor

__all__ = [
    "response_token_ids",
    "pack_sequences",
    "sequence_logprobs",
    "dpo_margins",
    "dpo_pair_losses",
    "dpo_loss",
]


def response_token_ids(tokenizer: Any, text: str) -> list[int]:
    """The canonical token ids of a response: its text tokenized on its own (no special tokens) plus EOS.

    Prompts and responses are tokenized separately, as the sampler generates after the prompt's own ids, and
    the EOS is scored so that the policy learns where an answer ends."""
    if not isinstance(text, str):
        raise ValueError(f"response: expected a string, got {type(text).__name__}")
    eos = getattr(tokenizer, "eos_token_id", None)
    if eos is None:
        raise ValueError("the tokenizer has no EOS token; a response must end with one to be scored")
    return list(tokenizer(text, add_special_tokens=False)["input_ids"]) + [int(eos)]


def pack_sequences(
    prompt_ids: Sequence[Sequence[int]], response_ids: Sequence[Sequence[int]], pad_id: int
) -> tuple[Tensor, Tensor, Tensor]:
    """Left-pad prompt+response id lists into a batch.

    Returns ``(input_ids [B, T], attention_mask [B, T], response_mask [B, T])`` (long, long, bool):
    response_mask is True exactly on the response tokens (the positions whose log-probability is summed)."""
    if len(prompt_ids) != len(response_ids) or not prompt_ids:
        raise ValueError("pack_sequences: expected equally many (>= 1) prompts and responses")
    seqs, n_resp = [], []
    for p, r in zip(prompt_ids, response_ids):
        if len(p) == 0 or len(r) == 0:
            raise ValueError("pack_sequences: every prompt and response needs at least one token")
        seqs.append(list(p) + list(r))
        n_resp.append(len(r))
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), int(pad_id), dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    resp = torch.zeros((len(seqs), width), dtype=torch.bool)
    for i, (s, n) in enumerate(zip(seqs, n_resp)):
        ids[i, width - len(s) :] = torch.as_tensor(s, dtype=torch.long)
        mask[i, width - len(s) :] = 1
        resp[i, width - n :] = True
    return ids, mask, resp


def sequence_logprobs(model: Any, input_ids: Tensor, attention_mask: Tensor, response_mask: Tensor) -> Tensor:
    """sum_t log pi(y_t | x, y_<t) over the response tokens of each row, shape (B,), in nats (float32).

    Left padding: position ids are cumsum(mask) - 1 so a padded row sees the same positions as unpadded.
    The logit at position j predicts token j + 1, hence the shift by one."""
    pos = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
    out = model(input_ids=input_ids, attention_mask=attention_mask, position_ids=pos, use_cache=False)
    logits = out.logits[:, :-1, :].float()
    target = input_ids[:, 1:]
    logp = torch.log_softmax(logits, dim=-1).gather(-1, target.unsqueeze(-1)).squeeze(-1)
    m = response_mask[:, 1:].to(logp.dtype)
    return (logp * m).sum(-1)


def dpo_margins(
    policy_chosen: Tensor, policy_rejected: Tensor, ref_chosen: Tensor, ref_rejected: Tensor, beta: float
) -> Tensor:
    """beta h_i = beta [(log pi(y_w) - log ref(y_w)) - (log pi(y_l) - log ref(y_l))], shape (N,): DPO's logit."""
    if not (isinstance(beta, int | float) and beta > 0):
        raise ValueError(f"beta: must be a number > 0, got {beta!r}")
    return beta * ((policy_chosen - ref_chosen) - (policy_rejected - ref_rejected))


def dpo_pair_losses(
    margins: Tensor,
    *,
    s: Tensor | None = None,
    shifts: Tensor | None = None,
    space: str = "margin",
) -> Tensor:
    """Per-pair losses (N,) for DPO margins (N,) against an optional worst case (s, shifts), both (N, K).

    space="margin": sum_k s_ik -log sigma(margin_i - d_ik); "probability": the release's
    sum_k s_ik -log(sigma(margin_i) - d_ik). Without s / shifts: plain DPO, -log sigma(margin_i)."""
    if (s is None) != (shifts is None):
        raise ValueError("s, shifts: give both or neither")
    if s is None:
        s = torch.ones(margins.shape[0], 1, dtype=margins.dtype, device=margins.device)
        shifts = torch.zeros_like(s)
    if space == "margin":
        return shifted_dpo_pair_losses(margins, s, shifts)
    if space == "probability":
        return probability_shifted_pair_losses(margins, s, shifts)
    raise ValueError(f"space: must be 'margin' or 'probability', got {space!r}")


def dpo_loss(
    policy_chosen: Tensor,
    policy_rejected: Tensor,
    ref_chosen: Tensor,
    ref_rejected: Tensor,
    *,
    beta: float,
    weights: Tensor | None = None,
    s: Tensor | None = None,
    shifts: Tensor | None = None,
    space: str = "margin",
) -> Tensor:
    """The weighted, shifted DPO loss sum_i w_i L_i / N (a scalar); all log-prob inputs are (N,) sequence sums.

    weights (N,) default 1; s, shifts (N, K) the follower's worst case (see `dpo_pair_losses`)."""
    m = dpo_margins(policy_chosen, policy_rejected, ref_chosen, ref_rejected, beta)
    losses = dpo_pair_losses(m, s=s, shifts=shifts, space=space)
    if weights is None:
        return losses.mean()
    w = torch.as_tensor(weights, dtype=losses.dtype, device=losses.device)
    if w.shape != losses.shape or not torch.isfinite(w).all() or (w < 0).any():
        raise ValueError(f"weights: expected {tuple(losses.shape)} finite non-negative values")
    return (w * losses).sum() / losses.shape[0]

"""Evaluation the training algorithms share: generate on test prompts, score, KL.

- :func:`generate`: one (or n) response per prompt from a policy, greedy or sampled with a fixed seed (the
  same seed for every policy, so the base and a trained policy are compared on the same random streams).
- :func:`evaluate_policy`: mean gold utility, mean proxy reward and the sampled KL(π‖π_ref) estimate.

The win rates they report (gold, reward-model, soft preference) are those of
:mod:`stackalign.evaluation.win_rates`; the interval of a mean is :func:`stackalign.evaluation.intervals.mean_ci`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from stackalign.decoding.common import GenerationConfig, pad_id_of
from stackalign.decoding.sampling import sample
from stackalign.evaluation.intervals import mean_ci

__all__ = ["EvalResult", "generate", "evaluate_policy"]


def generate(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[str],
    config: GenerationConfig,
    *,
    n: int = 1,
) -> tuple[list[list[str]], list[list[list[int]]]]:
    """``n`` responses per prompt (``config.temperature == 0``: greedy, n must be 1).

    Returns ``(texts[i][j], token_ids[i][j])``."""
    from stackalign.training.distributed import full_weights, processes

    procs = processes()  # under several processes each samples its share of the prompts (gathered back)
    with full_weights():  # FSDP: the shares differ, so no per-forward collective (see training.distributed)
        texts, ids = _generate_here(model, tokenizer, procs.split(prompts), config, n=n)
    return procs.unsplit(texts), procs.unsplit(ids)


def _generate_here(model, tokenizer, prompts, config, *, n):
    """:func:`generate` in this process only."""
    if config.greedy and n != 1:
        raise ValueError(f"eval samples: greedy evaluation draws one response per prompt, got n={n}")
    if not prompts:
        return [], []
    was_training = model.training
    model.eval()
    try:
        res = sample(model, tokenizer, list(prompts), n, config)
    finally:
        model.train(was_training)
    return res.texts, res.token_ids


@dataclass
class EvalResult:
    """Per-prompt means and their overall means. ``texts[i][j]``: response j of prompt i."""

    prompts: list[str]
    texts: list[list[str]]
    gold: list[float] | None  # per prompt, mean over its n responses
    proxy: list[float] | None
    kl: list[float] | None

    def summary(self) -> dict[str, float | None]:
        out: dict[str, float | None] = {}
        for name, vals in (("gold_reward", self.gold), ("proxy_reward", self.proxy), ("kl", self.kl)):
            if vals is None:
                out[name] = None
                continue
            m, ci = mean_ci(vals)
            out[name] = m
            out[f"{name}_ci95"] = ci
        return out


@torch.no_grad()
def evaluate_policy(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[str],
    config: GenerationConfig,
    *,
    n: int = 1,
    gold: Any = None,
    reward_model: Any = None,
    reference: Any = None,
) -> EvalResult:
    """Generate on ``prompts`` and score.

    Args:
        gold: ``fn(prompt, response) -> float`` (e.g. ``world.gold``), or None.
        reward_model: a :class:`stackalign.models.RewardModel` (the proxy), or None.
        reference: the frozen reference policy; with sampled generation, KL(π‖π_ref) per prompt is the
            mean over its responses of Σ_t (log π − log π_ref) (the unbiased k1 estimate; meaningless for
            greedy output, so None then).
    """
    from stackalign.training.distributed import full_weights, processes

    procs = processes()  # under several processes: each generates and scores its share, gathered in order
    with full_weights():  # FSDP: the shares differ, so no per-forward collective (see training.distributed)
        res = _evaluate_here(model, tokenizer, procs.split(prompts), config, n, gold, reward_model, reference)
    if not procs.distributed:
        return res
    parts = [
        procs.unsplit(v) if v is not None else None
        for v in (res.prompts, res.texts, res.gold, res.proxy, res.kl)
    ]
    return EvalResult(*parts)


def _evaluate_here(model, tokenizer, prompts, config, n, gold, reward_model, reference) -> EvalResult:
    """:func:`evaluate_policy` in this process only."""
    from stackalign.training.pg import kl_estimate, prompt_token_ids, response_logprobs

    texts, ids = _generate_here(model, tokenizer, prompts, config, n=n)
    if not texts:  # fewer prompts than processes: this one has none
        with_kl = reference is not None and not config.greedy
        return EvalResult(
            [], [], *([] if on else None for on in (gold is not None, reward_model is not None, with_kl))
        )
    P = len(texts)
    flat_p = [p for p, row in zip(prompts, texts) for _ in row]
    flat_r = [t for row in texts for t in row]

    def per_prompt(vals: Sequence[float]) -> list[float]:
        return [sum(vals[i * n : (i + 1) * n]) / n for i in range(P)]

    g = per_prompt([float(gold(p, r)) for p, r in zip(flat_p, flat_r)]) if gold is not None else None
    prx = per_prompt(reward_model(flat_p, flat_r).tolist()) if reward_model is not None else None
    kl = None
    if reference is not None and not config.greedy:
        pids = prompt_token_ids(tokenizer, flat_p)
        rids = [r for row in ids for r in row]
        pad = pad_id_of(tokenizer)
        lp, mask = response_logprobs(model, pids, rids, pad, temperature=config.temperature, batch_size=32)
        lr, _ = response_logprobs(reference, pids, rids, pad, temperature=config.temperature, batch_size=32)
        kl = per_prompt(kl_estimate(lp, lr, mask, "k1").tolist())
    return EvalResult(list(prompts), texts, g, prx, kl)


def eval_generation_config(world: Any, *, temperature: float, max_new_tokens: int | None, seed: int):
    """The generation settings evaluation uses on a world: its stop strings and length."""
    return GenerationConfig(
        max_new_tokens=max_new_tokens or (world.max_new_tokens if world is not None else 64),
        temperature=temperature,
        stop_strings=tuple(world.stop_strings) if world is not None else (),
        seed=seed,
    )


__all__ += ["eval_generation_config"]

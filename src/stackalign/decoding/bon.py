"""Best-of-N and soft Best-of-N, with any shaping.

Both draw N responses per prompt from the base policy (shared prompt prefill), score them with the reward
model, shape the rewards per prompt (the shaper sees the row of N rewards with uniform weights, so SRS
computes the prompt's threshold from the same N samples, as the official CD pipeline does; or pass
``thresholds``), and then

* Best-of-N returns the sample with the largest shaped reward (first on ties);
* soft Best-of-N resamples one of the N from ``softmax(shaped / beta)``: the follower's tilted policy
  ``rho_base * exp(r / beta)`` restricted to the samples (self-normalised importance resampling; exact for
  a weighted candidate set, see ``weights`` in :func:`soft_select_probs`).

Pass ``samples`` / ``rewards`` to reuse one sample set (e.g. the Monte Carlo threshold's) instead of
sampling again.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch

from stackalign.decoding.common import (
    Cost,
    GenerationConfig,
    Timer,
    as_reward,
    prompt_generators,
    row_uniforms,
    sample_rows,
)
from stackalign.decoding.sampling import SampleResult, sample

Tensor = torch.Tensor

__all__ = [
    "BoNConfig", "BoNResult", "best_of_n", "soft_best_of_n", "select_best", "soft_select_probs", "soft_select",
]  # fmt: skip

THRESHOLD_SOURCES = ("step", "mc", "predicted")


@dataclass(frozen=True)
class BoNConfig:
    """Best-of-N / soft Best-of-N settings (sampling settings come from :class:`GenerationConfig`)."""

    n: int = field(default=10, metadata={"help": "base samples per prompt"})
    beta_select: float | None = field(
        default=None,
        metadata={"help": "temperature of soft-BoN's resampling; null = the shaper's beta, else 1"},
    )
    threshold: Literal["step", "mc", "predicted"] = field(
        default="step",
        metadata={
            "help": "where a threshold shaping (srs, hard) gets m: step (from the N candidates themselves, "
            "uniform weights), mc (from mc_samples further Monte Carlo base samples per prompt), or predicted "
            "(an amortised predictor m^(x) on the policy's prompt state)"
        },
    )
    mc_samples: int = field(
        default=16, metadata={"help": "base samples per prompt of a Monte Carlo threshold (threshold: mc)"}
    )

    def __post_init__(self) -> None:
        for name in ("n", "mc_samples"):
            v = getattr(self, name)
            if not (isinstance(v, int) and v >= 1):
                raise ValueError(f"{name}: must be an integer >= 1, got {v!r}")
        if self.beta_select is not None and not self.beta_select > 0:
            raise ValueError(f"beta_select: must be > 0, got {self.beta_select!r}")
        if self.threshold not in THRESHOLD_SOURCES:
            raise ValueError(f"threshold: expected one of {THRESHOLD_SOURCES}, got {self.threshold!r}")


def select_best(shaped: Tensor) -> Tensor:
    """Index of the largest value in each row (..., N) -> (...); the first one on ties."""
    return torch.as_tensor(shaped).argmax(-1)


def soft_select_probs(shaped: Tensor, beta: float, weights: Tensor | None = None) -> Tensor:
    """``p_i ∝ weights_i * exp(shaped_i / beta)`` over the last dim (float64). ``weights`` default uniform
    (i.i.d. samples); pass base probabilities for a set of distinct candidates to get the exact follower
    policy ``rho_r`` on that set."""
    if not beta > 0:
        raise ValueError(f"beta: must be > 0, got {beta!r}")
    logits = torch.as_tensor(shaped, dtype=torch.float64) / beta
    if weights is not None:
        w = torch.as_tensor(weights, dtype=torch.float64)
        if w.shape != logits.shape or (w < 0).any() or not torch.isfinite(w).all():
            raise ValueError("weights: must be finite, non-negative and shaped like the rewards")
        logits = logits + torch.log(w)
    return logits.softmax(-1)


def soft_select(
    shaped: Tensor,
    beta: float,
    weights: Tensor | None = None,
    *,
    uniforms: Tensor | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """One index per row drawn from :func:`soft_select_probs` (inverse CDF on ``uniforms`` [rows] if given,
    else on draws from ``generator``)."""
    probs = soft_select_probs(shaped, beta, weights)
    flat = probs.reshape(-1, probs.shape[-1])
    if uniforms is None:
        uniforms = torch.rand(flat.shape[0], generator=generator, dtype=torch.float64)
    return sample_rows(flat, uniforms.reshape(-1).to(flat.device)).reshape(probs.shape[:-1])


@dataclass
class BoNResult:
    """``texts[i]`` is the chosen response of prompt i, ``index[i]`` its position among the N samples;
    ``rewards`` / ``shaped`` are ``[P, N]``; ``samples`` the sample set used."""

    prompts: list[str]
    texts: list[str]
    index: Tensor
    rewards: Tensor
    shaped: Tensor
    samples: list[list[str]]
    cost: Cost = field(default_factory=Cost)
    meta: dict = field(default_factory=dict)


def bon_threshold_generation(config: GenerationConfig) -> GenerationConfig:
    """The generation settings BoN hands to ARGS's threshold rule (``args.mc_generation``): the next seed,
    so the Monte Carlo samples are independent of the N candidates."""
    return dataclasses.replace(config, seed=config.seed + 1)


@torch.no_grad()
def best_of_n(
    policy: Any,
    tokenizer: Any,
    rm: Any,
    prompts: Sequence[str],
    n: int = 16,
    config: GenerationConfig | None = None,
    *,
    shaper: Any = None,
    soft: bool = False,
    beta: float | None = None,
    thresholds: Tensor | Sequence[float] | None = None,
    samples: SampleResult | Sequence[Sequence[str]] | None = None,
    rewards: Tensor | None = None,
    rm_batch_size: int = 16,
    threshold_source: str = "step",
    mc_samples: int = 16,
    predictor: Any = None,
    mc_cache_dir: Any = None,
) -> BoNResult:
    """Best-of-N (``soft=False``) or soft Best-of-N (``soft=True``) over ``n`` base samples per prompt.

    Args:
        policy, tokenizer, rm: base policy and reward (``rm(prompts, responses) -> [n]``).
        prompts: P prompts. n: samples per prompt. config: sampling settings (seeded per prompt).
        shaper: None (raw rewards), a shaping callable ``(rewards [P,N], weights, threshold=) -> [P,N]`` or a
            shaper / preset name.
        soft: resample from softmax(shaped / beta) instead of taking the argmax.
        beta: soft-BoN temperature; None = the shaper's ``beta`` if it has one, else 1.0.
        thresholds: optional per-prompt thresholds for the shaper.
        samples: reuse these responses (a SampleResult or P lists of N texts) instead of sampling.
        rewards: their rewards ``[P, N]`` (scored with ``rm`` when omitted).
        threshold_source: without ``thresholds``, where a threshold shaper's m comes from: "step" (the N
            candidates), "mc" (``mc_samples`` independent base samples per prompt, seed + 1, cached in
            ``mc_cache_dir``) or "predicted" (``predictor``: a ThresholdPredictor or its directory). The
            extra cost is counted.
    """
    from stackalign.shaping.resolve import resolve_shaper

    config = config or GenerationConfig()
    shaper = resolve_shaper(shaper)
    rm = as_reward(rm) if rewards is None else rm
    prompts = list(prompts) if not isinstance(prompts, str) else prompts
    cost = Cost()
    if threshold_source not in THRESHOLD_SOURCES:
        raise ValueError(f"threshold: expected one of {THRESHOLD_SOURCES}, got {threshold_source!r}")
    if thresholds is None and threshold_source != "step" and shaper is not None:
        from stackalign.decoding.args import ARGSConfig, _prompt_thresholds

        src = ARGSConfig(threshold=threshold_source, mc_samples=mc_samples)
        thresholds = _prompt_thresholds(
            policy,
            tokenizer,
            rm,
            prompts,
            src,
            bon_threshold_generation(config),
            shaper,
            predictor,
            mc_cache_dir,
            cost,
        )
    if samples is None:
        res = sample(policy, tokenizer, prompts, n, config)
        cost.merge(res.cost)
        texts = res.texts
    else:
        texts = [list(t) for t in (samples.texts if isinstance(samples, SampleResult) else samples)]
        if len(texts) != len(prompts) or any(len(t) != len(texts[0]) for t in texts) or not texts[0]:
            raise ValueError("samples: need the same number (>= 1) of responses for each of the prompts")
        n = len(texts[0])
    with Timer(cost):
        if rewards is None:
            before = getattr(rm, "n_tokens_scored", 0)
            flat = rm(
                [p for p in prompts for _ in range(n)],
                [t for row in texts for t in row],
                batch_size=rm_batch_size,
            )
            cost.rm_tokens += getattr(rm, "n_tokens_scored", 0) - before
            rewards = torch.as_tensor(flat, dtype=torch.float32).view(len(prompts), n)
        else:
            rewards = torch.as_tensor(rewards, dtype=torch.float32)
            if rewards.shape != (len(prompts), n):
                raise ValueError(f"rewards: shape {tuple(rewards.shape)} must be ({len(prompts)}, {n})")
        if shaper is None:
            shaped = rewards.double()
        elif thresholds is None:
            shaped = torch.as_tensor(shaper(rewards), dtype=torch.float64)
        else:
            m = torch.as_tensor(thresholds, dtype=torch.float64).flatten()
            if m.numel() != len(prompts):
                raise ValueError(f"thresholds: got {m.numel()} values for {len(prompts)} prompts")
            shaped = torch.as_tensor(shaper(rewards, None, threshold=m), dtype=torch.float64)
        if soft:
            b = beta if beta is not None else float(getattr(shaper, "beta", 1.0))
            u = row_uniforms(prompt_generators(prompts, config.seed, "cpu", salt="soft-bon"), 1, "cpu")
            index = soft_select(shaped, b, uniforms=u)
        else:
            b = beta
            index = select_best(shaped)
    chosen = [texts[i][int(j)] for i, j in enumerate(index.tolist())]
    meta = {
        "decoder": "soft-bon" if soft else "bon",
        "n": n,
        "beta": b,
        "shaper": repr(shaper) if shaper is not None else None,
        "per_prompt_threshold": thresholds is not None,
        "threshold_source": threshold_source if thresholds is not None else "step",
        "generation": config.to_dict(),
    }
    return BoNResult(prompts, chosen, index, rewards, shaped, texts, cost, meta)


def soft_best_of_n(*args: Any, **kwargs: Any) -> BoNResult:
    """Soft Best-of-N: :func:`best_of_n` with ``soft=True``."""
    return best_of_n(*args, soft=True, **kwargs)

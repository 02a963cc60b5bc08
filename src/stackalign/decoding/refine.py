"""Inference-time refinement (SLHF, arXiv 2512.16626, Section 5: the refinement chain).

A first answer y_1 from any method (base sampling, ARGS, SRS-ARGS, a trained leader), then N follower
steps y_{i+1} ~ ω(· | x, y_i) with a follower model. Only the last answer is in the follower's context
(the paper's procedure). ``follower_prompt(x, y)`` builds the follower's input, e.g. a sandbox world's
``World.follower_prompt`` ("... Please improve your answer about {topic}.").

Max@k (the paper's Max@k evaluation): for each prompt the best score among the first k answers of the
chain, averaged over prompts, compared with the best of k i.i.d. samples.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from stackalign.decoding.common import GenerationConfig


@dataclass
class RefineConfig:
    """The refinement chain's length."""

    steps: int = field(default=1, metadata={"help": "Follower steps after the first answer (>= 0)."})

    def __post_init__(self) -> None:
        if isinstance(self.steps, bool) or not isinstance(self.steps, int) or self.steps < 0:
            raise ValueError(f"steps must be an integer >= 0, got {self.steps!r}")


def follower_prompt_for(world: Any, tokenizer: Any, chat_template: bool) -> Callable[[str, str], str]:
    """How the follower is prompted: through ``tokenizer``'s chat template when the prompts use one (the
    previous answer as the assistant's turn, "Please improve your answer." as the next user turn:
    :func:`stackalign.models.chat.follow_up_prompt`), else the world's plain follower format. ValueError when
    neither exists (no chat template and no world with the follower format)."""
    if chat_template:
        from stackalign.models.chat import follow_up_prompt, require_chat_template

        require_chat_template(tokenizer, "refinement through the chat template")
        return lambda prompt, previous: follow_up_prompt(tokenizer, prompt, previous)
    if world is not None and getattr(world, "has_follower_format", False):
        return world.follower_prompt
    raise ValueError(
        "the follower needs the prompts' chat template (prompts.chat_template: true) or a world with the "
        "follower format"
    )


def refine_chain(
    follower: Any,
    tokenizer: Any,
    prompts: Sequence[str],
    first: Sequence[str],
    follower_prompt: Callable[[str, str], str],
    config: RefineConfig | None = None,
    generation: GenerationConfig | None = None,
    cost: Any = None,
) -> list[list[str]]:
    """``chains[i] = [first[i], y_2, ..., y_{steps+1}]`` for prompt i (texts as ``sample`` returns them).

    Each step samples one answer per prompt from ``follower`` on ``follower_prompt(prompt, previous)``;
    step j uses seed ``generation.seed + j`` so the steps are independent but reproducible. ``cost`` (a
    ``decoding.common.Cost``), when given, accumulates the follower's LM tokens and calls."""
    from stackalign.decoding.sampling import sample

    config = config or RefineConfig()
    generation = generation or GenerationConfig()
    if len(prompts) != len(first):
        raise ValueError(f"first: expected {len(prompts)} answers (one per prompt), got {len(first)}")
    chains = [[y] for y in first]
    for j in range(1, config.steps + 1):
        fps = [follower_prompt(x, c[-1]) for x, c in zip(prompts, chains)]
        res = sample(follower, tokenizer, fps, 1, replace(generation, seed=generation.seed + j))
        if cost is not None:
            cost.lm_tokens += res.cost.lm_tokens
            cost.lm_calls += res.cost.lm_calls
        for c, t in zip(chains, res.texts):
            c.append(t[0])
    return chains


def max_at_k(scores: Sequence[Sequence[float]]) -> list[float]:
    """``out[k-1]`` = mean over prompts of max(scores[i][:k]), for k = 1..K (K = the shortest row)."""
    if not scores:
        raise ValueError("max_at_k: no prompts")
    K = min(len(s) for s in scores)
    return [sum(max(s[:k]) for s in scores) / len(scores) for k in range(1, K + 1)]

"""SRS-shaped rewards for TRL's ``GRPOTrainer`` and ``RLOOTrainer`` (optional extra: ``stackalign[trl]``).

TRL calls each reward function with one entry per completion, every prompt repeated ``num_generations``
(G) times::

    f(prompts=[...], completions=[...], completion_ids=[...], **dataset_columns) -> list[float]

:class:`ShapedReward` scores the completions with a stackalign reward model (or any
``fn(prompt, response) -> float``), groups them by prompt, shapes each group with a shaping from
``stackalign.shaping`` (SRS's soft Stackelberg threshold by default: s = B_eff·σ(α(r − m*(x))), m* the
threshold of the group, Wang et al., arXiv 2602.02572, Thm 3) and returns the shaped rewards in TRL's
order. GRPO then normalises them within the group again (its own mean/std; set ``scale_rewards`` as you
like); RLOO subtracts its leave-one-out baseline.

    from trl import GRPOConfig, GRPOTrainer
    from stackalign.integrations.trl import ShapedReward
    from stackalign.models import load_reward_model

    reward = ShapedReward(load_reward_model("Skywork/Skywork-Reward-V2-Qwen3-0.6B", chat_template=True),
                          shaping="srs", preset="official-cd")
    trainer = GRPOTrainer(model="Qwen/Qwen2.5-0.5B-Instruct", reward_funcs=reward,
                          args=GRPOConfig(num_generations=8), train_dataset=dataset)

Conversational data (lists of ``{"role", "content"}`` messages) is reduced to text: the prompt is the last
user message, the completion the assistant message's content; the reward model formats the pair as
everywhere else in stackalign (``stackalign.models.format_rm_input``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

from stackalign.shaping import PRESETS, Shaper, get_preset, get_shaper

__all__ = ["ShapedReward", "group_by_prompt"]


def _text(x: Any, role: str | None = None) -> str:
    if isinstance(x, str):
        return x
    if isinstance(x, list) and x and all(isinstance(m, dict) for m in x):
        msgs = [m for m in x if role is None or m.get("role") == role] or x
        content = msgs[-1].get("content", "")
        if isinstance(content, list):  # multimodal-style content parts
            content = "".join(p.get("text", "") for p in content if isinstance(p, dict))
        return str(content)
    raise ValueError(f"expected a string or a list of chat messages, got {type(x).__name__}")


def group_by_prompt(prompts: Sequence[str]) -> list[list[int]]:
    """Indices of each distinct prompt, in order of first appearance (TRL repeats a prompt G times)."""
    groups: dict[str, list[int]] = {}
    for i, p in enumerate(prompts):
        groups.setdefault(p, []).append(i)
    return list(groups.values())


class ShapedReward:
    """A TRL reward function returning group-shaped rewards.

    Args:
        reward_model: a :class:`stackalign.models.RewardModel`, or ``fn(prompt, response) -> float``.
        shaping: a shaping name (``stackalign.shaping.SHAPERS``) or a configured :class:`Shaper`.
        preset: for ``srs``/``hard``: a named preset (``paper``, ``official-args``, ``official-cd``).
        batch_size: reward-model batch size.
        **shaping_params: shaper parameter overrides (B, beta, alpha, ...).
    """

    def __init__(
        self,
        reward_model: Any,
        shaping: str | Shaper = "srs",
        preset: str | None = "official-cd",
        batch_size: int = 16,
        **shaping_params: Any,
    ):
        if isinstance(shaping, Shaper):
            self.shaper = shaping
        elif shaping in ("srs", "hard") and preset is not None:
            if preset not in PRESETS:
                raise ValueError(f"preset: unknown {preset!r}; choose from {sorted(PRESETS)}")
            self.shaper = get_preset(preset, kind=shaping, **shaping_params)
        else:
            self.shaper = get_shaper(shaping, **shaping_params)
        self.reward_model = reward_model
        self.batch_size = batch_size
        self.__name__ = f"stackalign_{self.shaper.kind}"  # TRL logs rewards under the function's name

    def raw_scores(self, prompts: Sequence[str], completions: Sequence[str]) -> torch.Tensor:
        rm = self.reward_model
        if hasattr(rm, "tokenizer") and callable(rm):
            scores = rm(list(prompts), list(completions), batch_size=self.batch_size)
        elif callable(rm):
            scores = torch.tensor([float(rm(p, c)) for p, c in zip(prompts, completions)])
        else:
            raise ValueError(f"reward_model: expected a RewardModel or a callable, got {rm!r}")
        scores = torch.as_tensor(scores, dtype=torch.float64)
        bad = (~torch.isfinite(scores)).nonzero().flatten().tolist()
        if bad:
            raise ValueError(f"reward_model: non-finite rewards (NaN/inf) for completions {bad[:10]}")
        return scores

    def __call__(
        self, prompts: Sequence[Any], completions: Sequence[Any], completion_ids: Any = None, **kwargs: Any
    ) -> list[float]:
        if len(prompts) != len(completions):
            raise ValueError(f"got {len(prompts)} prompts but {len(completions)} completions")
        ps = [_text(p, "user") for p in prompts]
        cs = [_text(c, "assistant") for c in completions]
        scores = self.raw_scores(ps, cs)
        out = torch.empty_like(scores)
        for idx in group_by_prompt(ps):
            if len(idx) < 2 and self.shaper.kind != "vanilla":
                raise ValueError(
                    f"shaping {self.shaper.kind!r} needs G >= 2 completions per prompt (num_generations), "
                    f"got {len(idx)}"
                )
            out[idx] = self.shaper(scores[idx].unsqueeze(0))[0]
        return out.tolist()


def reward_function(reward_model: Any, **kwargs: Any) -> Callable[..., list[float]]:
    """Shorthand for :class:`ShapedReward` (``reward_funcs=reward_function(rm, shaping="srs")``)."""
    return ShapedReward(reward_model, **kwargs)


__all__ += ["reward_function"]

"""Reward models: a one-label HF sequence classifier, or any Python callable, behind one interface.

Both are called as ``rm(prompts, responses, batch_size=16) -> torch.float32 tensor [n]`` and both
format their input with :func:`format_rm_input`, the single definition of the reward-model input.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Sequence
from typing import Any

import torch


def format_rm_input(prompt: str, response: str, *, tokenizer: Any = None, chat_template: bool = False) -> str:
    """The reward model's input text for one (prompt, response) pair. See the package docstring.

    The rule, in one place (the input is built once from (prompt messages, answer)):

    * ``chat_template=False``: ``prompt + response`` exactly (no separator is inserted: the prompt is the
      text the policy saw — rendered with the policy's chat template when the recipe asks for one — and the
      response its literal continuation). A reward model sharing the policy's tokenizer therefore reads the
      policy's own token ids, which is what lets ARGS score candidates incrementally.
    * ``chat_template=True``: the reward tokenizer's own chat template over the *conversation* plus
      ``[assistant: response]``. The conversation is the prompt's messages when the prompt is a
      :class:`stackalign.models.chat.ChatPrompt` (the raw user turn, and the system turn if any — never the
      policy's rendered text, which would nest one conversation inside another), else one user turn holding
      the plain prompt. ``tokenizer`` is then required.
    """
    if not isinstance(prompt, str) or not isinstance(response, str):
        raise ValueError(
            f"prompt and response must be str, got {type(prompt).__name__} and {type(response).__name__}"
        )
    if not chat_template:
        return prompt + response
    if tokenizer is None or not getattr(tokenizer, "chat_template", None):
        raise ValueError("format_rm_input(chat_template=True) needs a tokenizer that has a chat template")
    from stackalign.models.chat import conversation

    messages = [*conversation(prompt), {"role": "assistant", "content": response}]
    return tokenizer.apply_chat_template(messages, tokenize=False)


def _check_pairs(prompts: Sequence[str], responses: Sequence[str]) -> None:
    if isinstance(prompts, str) or isinstance(responses, str):
        raise ValueError("prompts and responses must be lists of strings, not single strings")
    if len(prompts) != len(responses):
        raise ValueError(f"got {len(prompts)} prompts but {len(responses)} responses; they must pair up")


def _check_finite(scores: torch.Tensor, what: str) -> torch.Tensor:
    bad = (~torch.isfinite(scores)).nonzero().flatten().tolist()
    if bad:
        raise ValueError(f"{what} produced non-finite rewards (NaN/inf) at positions {bad[:10]}")
    return scores


def _accepts(fn: Callable, name: str) -> bool:
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False
    return name in params


def position_ids_from_mask(attention_mask: torch.Tensor, n_new: int | None = None) -> torch.Tensor:
    """Position ids that ignore left padding: ``cumsum(mask) - 1`` clamped at 0 (pads get 0).

    ``attention_mask`` covers past + new tokens; with ``n_new`` only the last ``n_new`` columns are
    returned (the positions of the tokens being fed now, as needed with a KV cache).
    """
    pos = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
    return pos if n_new is None else pos[:, -n_new:]


class RewardModel:
    """A one-label HF sequence classifier used as a reward model.

    Attributes: ``model``, ``tokenizer``, ``chat_template`` (input format, see :func:`format_rm_input`),
    ``device``, ``max_length`` (longer inputs keep their last ``max_length`` tokens), and
    ``n_tokens_scored``: the running total of non-padding tokens fed through the model (for cost
    accounting; reset it yourself if you want per-run numbers).
    """

    def __init__(self, model, tokenizer, *, chat_template: bool = False, max_length: int | None = None):
        self.model = model
        self.tokenizer = tokenizer
        self.chat_template = bool(chat_template)
        self.device = next(model.parameters()).device
        self.n_tokens_scored = 0
        if getattr(model.config, "pad_token_id", None) is None and tokenizer is not None:
            model.config.pad_token_id = tokenizer.pad_token_id
        if max_length is None:
            mpe = getattr(model.config, "max_position_embeddings", None) or getattr(
                model.config, "n_positions", None
            )
            max_length = int(mpe) if mpe and mpe < 1_000_000 else 4096
        self.max_length = int(max_length)
        # The per-position score head of decoder-only classifiers (GPT-2, Llama, Qwen, Mistral...): we
        # read its output at every position and pick the last real token ourselves, which works with
        # left or right padding and with pad == eos (HF's own pooling skips a trailing eos then).
        head = getattr(model, "score", None)
        self._head = head if isinstance(head, torch.nn.Module) else None
        fwd = model.forward
        self._pos_kw = _accepts(fwd, "position_ids")
        self._cache_kw = "cache" if _accepts(fwd, "cache") else "past_key_values"

    # -- text interface -------------------------------------------------------------------------
    def format(self, prompt: str, response: str) -> str:
        return format_rm_input(prompt, response, tokenizer=self.tokenizer, chat_template=self.chat_template)

    def encode(self, prompts: Sequence[str], responses: Sequence[str]) -> list[list[int]]:
        """Token ids of the formatted inputs (unpadded, truncated on the left to ``max_length``)."""
        _check_pairs(prompts, responses)
        texts = [self.format(p, r) for p, r in zip(prompts, responses)]
        enc = self.tokenizer(texts, add_special_tokens=not self.chat_template)["input_ids"]
        return [ids[-self.max_length :] for ids in enc]

    def __call__(
        self, prompts: Sequence[str], responses: Sequence[str], batch_size: int = 16
    ) -> torch.Tensor:
        """Scores of ``n`` (prompt, response) pairs: float32 tensor ``[n]`` on the CPU."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        ids = self.encode(prompts, responses)
        out = torch.empty(len(ids), dtype=torch.float32)
        order = sorted(range(len(ids)), key=lambda i: len(ids[i]))  # similar lengths together: less padding
        for s in range(0, len(order), batch_size):
            idx = order[s : s + batch_size]
            input_ids, mask = self.pad([ids[i] for i in idx])
            out[idx] = self.score_ids(input_ids, mask).cpu()
        return out

    def pad(self, seqs: Sequence[Sequence[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        """Left-pad id lists into ``(input_ids, attention_mask)`` on the model's device."""
        if any(len(s) == 0 for s in seqs):
            raise ValueError("cannot score an empty input (prompt and response are both empty)")
        width = max(len(s) for s in seqs)
        pad_id = self.tokenizer.pad_token_id
        input_ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
        mask = torch.zeros((len(seqs), width), dtype=torch.long)
        for i, s in enumerate(seqs):
            input_ids[i, width - len(s) :] = torch.as_tensor(list(s), dtype=torch.long)
            mask[i, width - len(s) :] = 1
        return input_ids.to(self.device), mask.to(self.device)

    # -- id interface ---------------------------------------------------------------------------
    @torch.no_grad()
    def score_positions(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        *,
        cache: Any = None,
        use_cache: bool = False,
    ) -> tuple[torch.Tensor, Any]:
        """Per-position scores ``[B, T]`` (float32) and the KV cache (None unless ``use_cache``).

        ``attention_mask`` covers cached + new tokens (HF convention). Position ids are derived from
        it, so left padding does not shift absolute position embeddings (GPT-2). Only for decoder
        classifiers with a per-position ``score`` head (GPT-2, Llama, Qwen, Mistral, ...).
        """
        if self._head is None:
            raise ValueError(
                f"{type(self.model).__name__} has no per-position `score` head; use score_ids or text scoring"
            )
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        captured: list[torch.Tensor] = []
        handle = self._head.register_forward_hook(lambda _m, _i, o: captured.append(o))
        try:
            kwargs: dict[str, Any] = {"attention_mask": attention_mask, "use_cache": use_cache}
            if self._pos_kw:
                kwargs["position_ids"] = position_ids_from_mask(attention_mask, input_ids.shape[1])
            if cache is not None:
                kwargs[self._cache_kw] = cache
            out = self.model(input_ids=input_ids, **kwargs)
        finally:
            handle.remove()
        self.n_tokens_scored += int(attention_mask[:, -input_ids.shape[1] :].sum())
        scores = captured[-1][..., 0].float()
        new_cache = getattr(out, "cache", None) if use_cache else None
        if use_cache and new_cache is None:
            new_cache = getattr(out, "past_key_values", None)
        return scores, new_cache

    @torch.no_grad()
    def score_ids(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Scores ``[B]`` (float32) at the last non-padding token of each row (left or right padding)."""
        input_ids = input_ids.to(self.device)
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        attention_mask = attention_mask.to(self.device)
        if input_ids.dim() != 2 or attention_mask.shape != input_ids.shape:
            raise ValueError(
                f"input_ids and attention_mask must both be [B, T]; got {tuple(input_ids.shape)} "
                f"and {tuple(attention_mask.shape)}"
            )
        if (attention_mask.sum(-1) == 0).any():
            raise ValueError("a row of attention_mask is all zeros: nothing to score")
        if input_ids.shape[1] > self.max_length:
            raise ValueError(
                f"input of {input_ids.shape[1]} tokens exceeds the reward model's {self.max_length}"
            )
        T = input_ids.shape[1]
        last = T - 1 - attention_mask.flip(-1).long().argmax(-1)  # index of the last 1 in each row
        if self._head is not None:
            per_pos, _ = self.score_positions(input_ids, attention_mask)
            scores = per_pos[torch.arange(per_pos.shape[0], device=per_pos.device), last]
        else:  # encoder / other classifiers: their own pooling (they pad on the right)
            kwargs = {"attention_mask": attention_mask}
            scores = self.model(input_ids=input_ids, **kwargs).logits[:, 0].float()
            self.n_tokens_scored += int(attention_mask.sum())
        return _check_finite(scores, f"reward model {type(self.model).__name__}")

    def __repr__(self) -> str:
        name = type(self.model).__name__
        return f"RewardModel({name}, chat_template={self.chat_template}, device={self.device})"


class CallableReward:
    """Any ``fn(prompt: str, response: str) -> float`` as a reward model (text-level only).

    Same call signature as :class:`RewardModel`; ``model`` and ``tokenizer`` are None, so decoders
    always score text with it. ``n_tokens_scored`` stays 0; ``n_calls`` counts scored pairs.
    """

    chat_template = False

    def __init__(self, fn: Callable[[str, str], float], *, name: str | None = None):
        if not callable(fn):
            raise ValueError(f"CallableReward needs a callable fn(prompt, response) -> float, got {fn!r}")
        self.fn = fn
        self.name = name or getattr(fn, "__name__", type(fn).__name__)
        self.model = None
        self.tokenizer = None
        self.device = torch.device("cpu")
        self.n_tokens_scored = 0
        self.n_calls = 0

    def __call__(
        self, prompts: Sequence[str], responses: Sequence[str], batch_size: int = 16
    ) -> torch.Tensor:
        _check_pairs(prompts, responses)
        vals = []
        for p, r in zip(prompts, responses):
            v = self.fn(p, r)
            try:
                v = float(v)
            except (TypeError, ValueError):
                raise ValueError(f"reward function {self.name!r} returned {v!r}, not a number") from None
            vals.append(v)
        self.n_calls += len(vals)
        bad = [i for i, v in enumerate(vals) if not math.isfinite(v)]
        if bad:
            raise ValueError(
                f"reward function {self.name!r} returned non-finite rewards at positions {bad[:10]}"
            )
        return torch.tensor(vals, dtype=torch.float32)

    def __repr__(self) -> str:
        return f"CallableReward({self.name})"

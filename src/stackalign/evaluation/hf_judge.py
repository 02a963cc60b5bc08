"""A local chat model as pairwise judge, run in-process with transformers (no API, no server).

:class:`HFJudge` is a :class:`~stackalign.evaluation.judges.ChatPairJudge`: the same pairwise prompt, reply
reading and order protocols as the API judge; only the replies come from ``model.generate`` (greedy, batched,
the conversations rendered by the judge tokenizer's own chat template with the generation prompt).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from .judges import JUDGE_SYSTEM_PROMPT, JUDGE_USER_TEMPLATE, ChatPairJudge, JudgeError

__all__ = ["HFJudge"]


class HFJudge(ChatPairJudge):
    """A causal chat LM with a chat template, asked greedily; replies read like the API judge's.

    Args:
        model, tokenizer: a loaded causal LM and its tokenizer (which must have a chat template); see
            :meth:`load` to load them by name or directory.
        max_new_tokens: reply length; the scores are on the reply's first line, so a few dozen tokens do.
        batch_size: conversations generated together (left-padded).
        orders, seed, system_prompt, user_template: the protocol (see ``ChatPairJudge``).
    """

    name = "hf"

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        *,
        max_new_tokens: int = 32,
        batch_size: int = 8,
        orders: str = "one",
        seed: int = 0,
        system_prompt: str = JUDGE_SYSTEM_PROMPT,
        user_template: str = JUDGE_USER_TEMPLATE,
        label: str | None = None,
    ) -> None:
        super().__init__(orders=orders, seed=seed, system_prompt=system_prompt, user_template=user_template)
        if max_new_tokens < 1 or batch_size < 1:
            raise ValueError("max_new_tokens and batch_size must be >= 1")
        if not getattr(tokenizer, "chat_template", None):
            raise ValueError(
                f"evaluation.judge_model: {label or 'the judge model'!s} has no chat template; the hf judge needs "
                f"a chat (instruct) model"
            )
        if tokenizer.pad_token_id is None:
            raise ValueError(
                "evaluation.judge_model: the tokenizer has no pad token (load it with HFJudge.load)"
            )
        self.model = model
        self.tokenizer = tokenizer
        self.max_new_tokens = max_new_tokens
        self.batch_size = batch_size
        self.label = label

    @classmethod
    def load(cls, name_or_path: str, *, device: str = "cpu", dtype: Any = None, **kw: Any) -> HFJudge:
        """Load the judge model by name (e.g. ``smollm2-135m-instruct``) or HF directory."""
        from stackalign.models import load_policy

        try:
            model, tokenizer = load_policy(name_or_path, dtype=dtype, device=device)
        except (ValueError, OSError) as e:
            raise JudgeError(f"evaluation.judge_model: cannot load {name_or_path!r} ({e})") from None
        return cls(model, tokenizer, label=repr(str(name_or_path)), **kw)

    def __repr__(self) -> str:
        return f"HFJudge(model={self.label}, orders={self.orders!r})"

    def complete_many(self, conversations: Sequence[list[dict[str, str]]], *, workers: int = 1) -> list[str]:
        """Greedy replies, ``batch_size`` conversations at a time (``workers`` is ignored)."""
        import torch

        tok = self.tokenizer
        texts = [
            tok.apply_chat_template(c, tokenize=False, add_generation_prompt=True) for c in conversations
        ]
        device = next(self.model.parameters()).device
        replies: list[str] = []
        padding_side = tok.padding_side
        tok.padding_side = "left"
        try:
            for start in range(0, len(texts), self.batch_size):
                # the template already holds any BOS token: add no special tokens a second time
                enc = tok(
                    texts[start : start + self.batch_size],
                    return_tensors="pt",
                    padding=True,
                    add_special_tokens=False,
                ).to(device)
                with torch.no_grad():
                    out = self.model.generate(
                        **enc,
                        max_new_tokens=self.max_new_tokens,
                        do_sample=False,
                        pad_token_id=tok.pad_token_id,
                    )
                new = out[:, enc["input_ids"].shape[1] :]
                replies += tok.batch_decode(new, skip_special_tokens=True)
        finally:
            tok.padding_side = padding_side
        return replies

"""Prompts rendered with a chat template, and the conversations they come from.

A policy with a chat template is prompted with the rendered text (system turn, user turn, generation prompt),
but the reward model, the refinement follower and the judges need the *conversation*: a reward model with a
template of its own wraps the raw user turn and the answer, never the policy's rendered prompt (a conversation
inside a conversation). :class:`ChatPrompt` is that rendered text (a ``str``, so every decoder uses it as it
is) carrying its messages; :func:`stackalign.models.format_rm_input` reads them.

- :func:`render_chat_prompts` renders raw user requests with a tokenizer's template (user turn + generation
  prompt, an optional system turn).
- :func:`follow_up_prompt` builds the refinement follower's input through the same template: the
  conversation, the previous answer as the assistant's turn, then ``"Please improve your answer."`` as a new
  user turn (SLHF, arXiv 2512.16626, Sec. 5).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

IMPROVE_REQUEST = "Please improve your answer."


class ChatPrompt(str):
    """The text a policy is prompted with, remembering the conversation (``messages``) it renders."""

    messages: tuple[dict, ...]

    def __new__(cls, text: str, messages: Sequence[dict]):
        obj = super().__new__(cls, text)
        obj.messages = tuple({"role": m["role"], "content": m["content"]} for m in messages)
        return obj

    def __reduce__(self):  # pickles (Ray) as itself, messages included
        return (ChatPrompt, (str(self), [dict(m) for m in self.messages]))


def conversation(prompt: str) -> list[dict]:
    """The messages of ``prompt``: its own for a :class:`ChatPrompt`, else one user turn of the plain text."""
    msgs = getattr(prompt, "messages", None)
    return [dict(m) for m in msgs] if msgs else [{"role": "user", "content": str(prompt)}]


def require_chat_template(tokenizer: Any, what: str) -> None:
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError(f"{what}: the tokenizer has no chat template")


def render(tokenizer: Any, messages: list[dict]) -> ChatPrompt:
    """``messages`` rendered with the tokenizer's template and the assistant's generation prompt."""
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return ChatPrompt(text, messages)


def render_chat_prompts(
    tokenizer: Any, users: Sequence[str], *, system: str | None = None
) -> list[ChatPrompt]:
    """One :class:`ChatPrompt` per user request: ``[system?, user]`` + the generation prompt."""
    require_chat_template(tokenizer, "prompts.chat_template")
    head = [{"role": "system", "content": system}] if system else []
    return [render(tokenizer, [*head, {"role": "user", "content": u}]) for u in users]


def follow_up_prompt(
    tokenizer: Any, prompt: str, previous: str, request: str = IMPROVE_REQUEST
) -> ChatPrompt:
    """The follower's input for a chat prompt: the conversation, ``previous`` as the assistant's answer, and
    ``request`` as the next user turn, rendered with the generation prompt."""
    messages = [
        *conversation(prompt),
        {"role": "assistant", "content": previous.strip()},
        {"role": "user", "content": request},
    ]
    return render(tokenizer, messages)

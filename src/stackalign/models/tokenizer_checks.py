"""Do a policy and a reward model see text as the same token ids?"""

from __future__ import annotations

from typing import Any

_SPECIAL = ("bos_token_id", "eos_token_id", "unk_token_id")
_PROBES = (
    "User: Hello there, how are you?\nAssistant: Fine, thanks!",
    "  leading spaces, UNICODE café ü 日本語 and digits 12345 ...\n\n",
)


def shares_tokenizer(tok_a: Any, tok_b: Any) -> bool:
    """True if two tokenizers map text to the same ids: same vocabulary (token -> id, added tokens
    included), same BOS/EOS/UNK ids, and the same ids for a few probe strings (which catches different
    normalisers or BOS-adding rules). Pad ids are not compared: padding never reaches a score."""
    if tok_a is None or tok_b is None:
        return False
    if tok_a is tok_b:
        return True
    try:
        if any(getattr(tok_a, s, None) != getattr(tok_b, s, None) for s in _SPECIAL):
            return False
        if len(tok_a) != len(tok_b) or tok_a.get_vocab() != tok_b.get_vocab():
            return False
        return all(tok_a(p)["input_ids"] == tok_b(p)["input_ids"] for p in _PROBES)
    except (AttributeError, TypeError):
        return False


def require_shared_tokenizer(policy_tok: Any, rm: Any, *, purpose: str) -> None:
    """Raise ValueError unless ``rm`` (a RewardModel, or a tokenizer) can score the policy's token ids
    directly. ``purpose`` names what needs it (e.g. "incremental ARGS scoring")."""
    rm_tok = getattr(rm, "tokenizer", rm)
    why = None
    if rm_tok is None:
        why = f"the reward {rm!r} has no tokenizer (a callable reward scores text only)"
    elif getattr(rm, "chat_template", False):
        why = (
            "the reward model formats its input with a chat template (its ids are not prompt + response ids)"
        )
    elif not shares_tokenizer(policy_tok, rm_tok):
        n_policy = len(policy_tok) if policy_tok is not None else 0
        why = (
            f"the policy tokenizer ({type(policy_tok).__name__}, {n_policy} tokens) and the reward "
            f"tokenizer ({type(rm_tok).__name__}, {len(rm_tok)} tokens) differ"
        )
    if why:
        raise ValueError(
            f"{purpose} needs the reward model to share the policy's tokenizer (same vocabulary and special "
            f"ids), but {why}; use text-level reward scoring instead (decoders fall back to it automatically "
            "when the tokenizers differ)"
        )

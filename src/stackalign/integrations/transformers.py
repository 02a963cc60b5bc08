"""(SRS-)ARGS inside Hugging Face ``model.generate``: a ``LogitsProcessor``.

ARGS (Khanov et al., "ARGS: Alignment as Reward-Guided Search", ICLR 2024, arXiv:2402.01694, Algorithm 1)
re-scores the policy's top-k next tokens with a reward model: ``l_j + w * r_j``. SRS-ARGS shapes the
rewards first, ``l_j + w * s_j`` (Stackelberg reward shaping). This module puts that step inside
``generate``, so streamers, stopping criteria and the user's generation config keep working::

    from stackalign.integrations.transformers import ARGSLogitsProcessor
    proc = ARGSLogitsProcessor(reward_model, k=10, w=0.5, shaper="official-args")
    enc = tokenizer(prompts, return_tensors="pt", padding=True)  # left padding
    out = policy.generate(**enc, logits_processor=[proc], do_sample=False, max_new_tokens=32)

Each step the processor receives ``input_ids`` [B, L] and the next-token scores [B, V]; it returns scores
that are ``-inf`` outside each row's top-k and ``l_j + w * s_j`` (divided by ``temperature``) on it, so
greedy ``generate`` picks exactly the token :func:`stackalign.decoding.args.args_generate` picks and
``do_sample=True`` samples from ``softmax(fused / temperature)`` over the k candidates (ARGS's stochastic
mode; leave ``generate``'s own temperature at 1).

The reward model keeps its incremental KV cache across steps (the tree-masked or repeat-and-select
scorer of :mod:`stackalign.decoding.rm_cache`, chosen by the same rule as ``args_generate``) when it shares
the policy's tokenizer; otherwise pass the policy's ``tokenizer=`` and candidates are scored as text.
The processor recognises the steps of one ``generate`` call by checking that ``input_ids`` grows by one
token on the same rows; anything else (a new call) starts a new decode. Rows that ``generate`` has
finished (it feeds them the pad token) leave the reward model's batch.

Not supported (a ValueError says so): beam search (``num_beams > 1``: beams are re-ranked on sums of
log-probabilities and re-ordered every step, which is not the ARGS objective) and assisted / speculative
decoding (several positions are scored at once). Leading pad tokens of each row are taken as its left
padding, so a prompt must not start with the pad token.
"""

from __future__ import annotations

import sys
from typing import Any

import torch

from stackalign.decoding.args import shape_on_host, shapes_on_host
from stackalign.decoding.common import Cost

Tensor = torch.Tensor

__all__ = ["ARGSLogitsProcessor"]

# generate()'s decoding methods (transformers >= 5: GENERATION_MODES_MAPPING) that cannot host ARGS.
_UNSUPPORTED = {
    "_beam_search": "beam search (num_beams > 1) re-ranks beams on summed log-probabilities and re-orders "
    "them every step; use num_beams=1 (greedy or sampling)",
    "_assisted_decoding": "assisted / speculative decoding scores several positions per call; drop "
    "assistant_model / prompt_lookup_num_tokens",
}

try:  # subclass transformers' base class when it is importable (it is a plain marker class)
    from transformers import LogitsProcessor as _Base
except ImportError:  # pragma: no cover - transformers is a core dependency
    _Base = object


def _unsupported_mode() -> str | None:
    """Why the enclosing ``generate`` decoding method cannot host ARGS, or None. Looks at the few frames
    above the processor call (``generate`` does not pass its generation config to processors)."""
    f = sys._getframe(2)
    for _ in range(8):
        if f is None:
            return None
        why = _UNSUPPORTED.get(f.f_code.co_name)
        if why is not None:
            return why
        gc = f.f_locals.get("generation_config")
        if gc is not None and (getattr(gc, "num_beams", 1) or 1) > 1:
            return _UNSUPPORTED["_beam_search"]
        f = f.f_back
    return None


class ARGSLogitsProcessor(_Base):
    """ARGS / SRS-ARGS as a ``transformers`` logits processor.

    Args:
        reward_model: a :class:`stackalign.models.RewardModel` (``load_reward_model``), a
            ``CallableReward`` or any ``fn(prompt, response) -> float`` (scored as text; needs ``tokenizer``).
        k: candidates per step (top-k of the scores ``generate`` passes in).
        w: reward weight ``w = 1/beta`` (ARGS's official value 0.5).
        shaper: None (vanilla ARGS: raw rewards), a shaper or preset name ("official-args", "srs", ...) or a
            callable ``(rewards [R,k], weights [R,k]) -> [R,k]``, as in ``args_generate``.
        tokenizer: the policy's tokenizer. Needed only when it differs from the reward model's (then
            candidates are scored as decoded text) or for a text-level reward.
        rm_cache: "auto", "tree" or "repeat": the incremental RM cache strategy (see ``rm_cache.py``).
        temperature: the fused scores are divided by it (for ``do_sample=True``; ARGS uses 0.7).

    After a call of ``generate``: ``cost`` (RM tokens / calls of the last decode) and ``meta`` (the scorer
    used and why, the shaper) describe the run.
    """

    def __init__(
        self,
        reward_model: Any,
        k: int = 10,
        w: float = 0.5,
        shaper: Any = None,
        *,
        tokenizer: Any = None,
        rm_cache: str = "auto",
        temperature: float = 1.0,
    ):
        from stackalign.decoding.args import ARGSConfig
        from stackalign.decoding.common import as_reward
        from stackalign.shaping import describe_shaper, resolve_shaper

        if not (isinstance(w, int | float) and w >= 0):
            raise ValueError(f"w: must be a number >= 0 (w = 1/beta), got {w!r}")
        if not (isinstance(temperature, int | float) and temperature > 0):
            raise ValueError(f"temperature: must be > 0, got {temperature!r}")
        # ARGSConfig validates k and rm_cache with the same messages as args_generate
        self.config = ARGSConfig(k=k, w=w if w > 0 else None, rm_cache=rm_cache)
        self.k, self.w, self.temperature = int(k), float(w), float(temperature)
        self.rm = as_reward(reward_model)
        self.shaper = resolve_shaper(shaper)
        self.tokenizer = tokenizer if tokenizer is not None else getattr(self.rm, "tokenizer", None)
        if self.tokenizer is None:
            raise ValueError(
                "tokenizer: a text-level reward needs the policy's tokenizer to decode candidates"
            )
        self.pad_id = getattr(self.tokenizer, "pad_token_id", None)
        eos = getattr(self.tokenizer, "eos_token_id", None)
        # the ids generate() may feed a finished row (its pad_token_id defaults to the EOS id)
        self._filler = {int(i) for i in (self.pad_id, eos) if i is not None}
        self.meta: dict[str, Any] = {"k": self.k, "w": self.w, "shaper": describe_shaper(self.shaper)}
        self.cost = Cost()
        self.reset()

    def reset(self) -> None:
        """Forget the current decode (the next call starts a new one)."""
        self.scorer = None
        self._prev: Tensor | None = None  # input_ids of the last call
        self._rows: Tensor | None = None  # batch row of each scorer row
        self._cands: Tensor | None = None  # [R', k] candidates offered at the last call

    # -- the generate() hook ----------------------------------------------------------------------------
    @torch.no_grad()
    def __call__(self, input_ids: Tensor, scores: Tensor) -> Tensor:
        """``input_ids`` [B, L] (prompt + tokens so far), ``scores`` [B, V] next-token scores -> [B, V]."""
        if self._continues(input_ids):
            self._advance(input_ids[:, -1])
        else:
            self._start(input_ids)
        out = scores.clone()
        rows = self._rows
        if rows.numel() == 0:
            return out
        top_logits, cands = scores[rows].topk(self.k, dim=-1)  # [R', k]
        rewards = self.scorer.score(cands).to(scores.device)
        if self.shaper is None:
            shaped = rewards
        elif shapes_on_host(self.shaper, self.k):  # exactly as args_generate (and through the same function)
            shaped, finite = shape_on_host(self.shaper, top_logits, rewards)
            if not finite:
                raise ValueError("the reward model returned NaN or infinite scores for some ARGS candidates")
        else:  # any other shaping callable: weights = softmax of the candidates' logits (float64)
            shaped = self.shaper(rewards, top_logits.double().softmax(-1))
            shaped = torch.as_tensor(shaped, device=scores.device).to(top_logits.dtype)
        fused = top_logits + self.w * shaped
        if self.temperature != 1.0:
            fused = fused / self.temperature
        live = out[rows].fill_(float("-inf")).scatter_(1, cands, fused.to(out.dtype))
        out[rows] = live
        self._cands = cands
        self._prev = input_ids
        return out

    # -- decode state ----------------------------------------------------------------------------------
    def _continues(self, input_ids: Tensor) -> bool:
        p = self._prev
        return (
            p is not None
            and input_ids.shape[0] == p.shape[0]
            and input_ids.shape[1] == p.shape[1] + 1
            and torch.equal(input_ids[:, :-1], p)
        )

    def _start(self, input_ids: Tensor) -> None:
        from stackalign.decoding.args import make_scorer

        why = _unsupported_mode()
        if why is not None:
            raise ValueError(f"ARGSLogitsProcessor cannot run inside this generate() mode: {why}")
        self.reset()
        if self.k > len(self.tokenizer):
            raise ValueError(
                f"k: {self.k} candidates but the vocabulary has only {len(self.tokenizer)} tokens"
            )
        prompt_ids = [self._strip_left_pad(row) for row in input_ids.tolist()]
        prompts = [self.tokenizer.decode(ids, skip_special_tokens=True) for ids in prompt_ids]
        self.scorer = make_scorer(self.tokenizer, self.rm, self.config)
        self.scorer.start(prompt_ids, prompts)
        self.cost = self.scorer.cost  # the scorer counts into it as it goes
        self.meta.update(scorer=self.scorer.name, scorer_reason=getattr(self.scorer, "reason", None))
        self._rows = torch.arange(input_ids.shape[0], device=input_ids.device)

    def _strip_left_pad(self, row: list[int]) -> list[int]:
        i = 0
        if self.pad_id is not None:
            while i < len(row) - 1 and row[i] == self.pad_id:
                i += 1
        return row[i:]

    def _advance(self, appended: Tensor) -> None:
        """Feed the scorer the token generate() appended to each live row; rows fed a filler token (pad /
        EOS outside the candidates: generate() has finished them) leave the scorer's batch."""
        tok = appended[self._rows]
        match = self._cands == tok[:, None]
        hit = match.any(-1)
        j = match.to(torch.int8).argmax(-1)
        if bool(hit.all()):
            self.scorer.advance(tok, j)
            return
        missed = tok[~hit].tolist()
        foreign = [t for t in missed if t not in self._filler]
        if foreign:
            raise ValueError(
                f"generate() appended token {foreign[0]}, which is not among this row's {self.k} ARGS candidates: "
                "a logits processor or warper after ARGSLogitsProcessor changed the choice; put "
                "ARGSLogitsProcessor last and keep generate's top_k >= k"
            )
        # finished rows: advance with any candidate (its copy is dropped right after), then select
        self.scorer.advance(torch.where(hit, tok, self._cands[:, 0]), j)
        keep = hit.nonzero().squeeze(-1)
        self.scorer.select(keep)
        self._rows = self._rows[keep]

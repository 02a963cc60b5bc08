"""Scoring the k next-token candidates of every row with a reward model, four ways.

ARGS needs, at every step and for every row, the reward of ``prompt + generated prefix + candidate_j`` for
the k candidates. All scorers share one small protocol so ARGS does not care which one it gets:

    start(prompt_ids, prompts)   rows begin at their prompts
    score(cands [R, k]) -> [R, k]  float32 rewards of prefix + each candidate
    advance(tokens [R], index [R]) append the chosen candidate (``index`` = its column in ``cands``)
    select(keep [R'])             keep only these rows (finished rows leave the batch)
    cost                          RM tokens and calls spent

* :class:`TreeScorer` (fast, default when the RM shares the policy's tokenizer). ONE RM KV cache holds each
  row's prefix. Each step runs a single RM forward whose query is the k candidates with a 4D "tree"
  attention mask: candidate j sees the prefix and itself only, and all k candidates get the same position
  id. The score head is applied to the backbone's hidden state at every candidate position (a decoder
  classifier's head is per position; HF pools afterwards). When a candidate is chosen, its cache column
  (computed with exactly the context it will have) is moved next to the prefix and the other k - 1 are
  cropped. Cost per step: k RM tokens per row, O(L) cache memory, one column copy per layer. The step is
  :class:`stackalign.decoding.tree.TreeLookahead`, shared with controlled decoding's lookahead.
* :class:`RepeatScorer` (fast fallback): repeat-and-select. Repeat the prefix cache k times
  (``batch_repeat_interleave``), feed the k candidates as a batch of one-token queries, and keep the chosen
  copy (``batch_select_indices``). k RM tokens per step, but a k-fold cache copy every step and k x memory.
  Works where custom 4D masks do not (FlashAttention, sliding-window caches).
* :class:`FullRecomputeScorer` (reference, the official SRS-ARGS algorithm): every step, run the RM on the full
  token sequence of each of the k candidates, no cache, in chunks of ``chunk_size`` (the official code uses 5).
  O(k L) RM tokens per step. Kept for tests and benchmarks.
* :class:`TextScorer` (different tokenizers or a Python callable reward): decode prefix + candidate to text
  and score ``format_rm_input(prompt, response)`` in batches.

Why a tree mask over one cache rather than repeat-and-select by default: both are exact, but the tree step
reads one cache instead of writing k copies of it, so memory stays O(L) and per-step work is k query
tokens regardless of the prefix length; repeat-and-select copies O(k L) cache entries every step.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from stackalign.decoding.common import (
    Cost,
    cache_kwarg,
    forward_params,
    left_pad,
    output_cache,
    pad_id_of,
    position_ids,
)

Tensor = torch.Tensor

__all__ = [
    "Scorer",
    "TreeScorer",
    "RepeatScorer",
    "FullRecomputeScorer",
    "TextScorer",
    "supports_incremental",
    "tree_mask_unsupported",
]


def _backbone_and_head(rm: Any) -> tuple[Any, Any]:
    model = getattr(rm, "model", None)
    head = getattr(model, "score", None)
    backbone = getattr(model, "base_model", None)
    if not isinstance(head, torch.nn.Module) or backbone is None or backbone is model:
        raise ValueError(
            f"incremental reward scoring needs a decoder sequence classifier with a per-position `score` head "
            f"(GPT-2, Llama, Qwen, Mistral...), got {type(model).__name__}; use rm_mode='text'"
        )
    return backbone, head


def supports_incremental(policy_tokenizer: Any, rm: Any) -> str | None:
    """None if ``rm`` can score the policy's token ids incrementally, else the reason it cannot."""
    from stackalign.models import shares_tokenizer

    if getattr(rm, "model", None) is None or getattr(rm, "tokenizer", None) is None:
        return f"the reward {rm!r} is a text-level callable"
    if getattr(rm, "chat_template", False):
        return "the reward model formats its input with a chat template"
    try:
        _backbone_and_head(rm)
    except ValueError as e:
        return str(e)
    if not shares_tokenizer(policy_tokenizer, rm.tokenizer):
        return "the policy and reward model tokenizers differ"
    return None


def tree_mask_unsupported(model: Any) -> str | None:
    """None if ``model`` can run k candidates under a 4D tree mask over one KV cache, else why not.

    Needs eager or SDPA attention (FlashAttention / flex kernels take no arbitrary 4D additive mask) and
    no sliding-window layer (a sliding layer's cache keeps only the last ``window`` entries and HF builds
    its window mask itself, so cropping k candidates back out is not exact)."""
    cfg = model.config
    impl = getattr(cfg, "_attn_implementation", None) or "sdpa"
    if impl not in ("eager", "sdpa"):
        return f"attention implementation {impl!r} takes no 4D tree mask"
    window = getattr(cfg, "sliding_window", None)
    types = getattr(cfg, "layer_types", None)
    if window and (types is None or any(t != "full_attention" for t in types)):
        return f"sliding-window attention layers (window {window})"
    return None


class Scorer:
    """Base class: bookkeeping shared by all scorers (see the module docstring for the protocol)."""

    name = "base"

    def __init__(self) -> None:
        self.cost = Cost()
        self.reason: str | None = None  # why this scorer was chosen over a faster one (set by make_scorer)

    def start(self, prompt_ids: Sequence[Sequence[int]], prompts: Sequence[str]) -> None:
        raise NotImplementedError

    def score(self, cands: Tensor) -> Tensor:
        raise NotImplementedError

    def advance(self, tokens: Tensor, index: Tensor) -> None:
        raise NotImplementedError

    def select(self, keep: Tensor) -> None:
        raise NotImplementedError


class _CachedScorer(Scorer):
    """Shared prefill logic of the two cache-based scorers."""

    def __init__(self, rm: Any):
        super().__init__()
        self.rm = rm
        self.backbone, self.head = _backbone_and_head(rm)
        self.device = next(rm.model.parameters()).device
        self.dtype = next(rm.model.parameters()).dtype
        self.pad = pad_id_of(rm.tokenizer)
        self._cache_kw = cache_kwarg(self.backbone)
        self._takes_pos = "position_ids" in forward_params(self.backbone)

    def _count(self, n: int) -> None:
        """Account ``n`` RM tokens here and on the RewardModel's running total."""
        self.cost.rm_tokens += n
        if hasattr(self.rm, "n_tokens_scored"):
            self.rm.n_tokens_scored += n

    def _run(self, ids: Tensor, attention_mask: Tensor, pos: Tensor, cache: Any) -> Tensor:
        """Backbone forward; returns per-position float32 scores [B, q]. The cache is updated in place."""
        kwargs: dict[str, Any] = {"attention_mask": attention_mask, "use_cache": True, self._cache_kw: cache}
        if self._takes_pos:
            kwargs["position_ids"] = pos
        out = self.backbone(input_ids=ids, **kwargs)
        self.cost.rm_calls += 1
        if output_cache(out) is not cache:  # defensive: some models return a new object
            self.cache = output_cache(out)
        return self.head(out.last_hidden_state)[..., 0].float()

    def start(self, prompt_ids: Sequence[Sequence[int]], prompts: Sequence[str]) -> None:
        from transformers import DynamicCache

        ids, mask = left_pad(prompt_ids, self.pad, self.device)
        self.cache = DynamicCache(config=self.rm.model.config)
        self._run(ids, mask, position_ids(mask), self.cache)
        self._count(int(mask.sum()))
        self.mask = mask
        self.next_pos = mask.sum(-1)  # position id of each row's next token


class TreeScorer(_CachedScorer):
    """k candidates per row scored in one forward over one shared RM cache, with a 4D tree mask
    (:class:`stackalign.decoding.tree.TreeLookahead`, the lookahead CD uses too).

    k RM tokens per row and step, not k + 1: the chosen candidate's keys and values were computed when it
    was scored (it saw the prefix and itself, at its final position), exactly what appending it would
    compute, so :meth:`advance` moves that cache column into place instead of running the token again.
    """

    name = "tree"

    def start(self, prompt_ids: Sequence[Sequence[int]], prompts: Sequence[str]) -> None:
        from stackalign.decoding.tree import TreeLookahead, check_plain_cache

        super().start(prompt_ids, prompts)
        check_plain_cache(self.cache, "Use rm_cache='repeat'.")
        self.tree = TreeLookahead(self.backbone, self.cache, self.mask, self.next_pos, self.dtype)
        self.mask = self.next_pos = None  # superseded by the lookahead's own bookkeeping
        self.scored = False

    def score(self, cands: Tensor) -> Tensor:
        R, k = cands.shape
        if self.scored:  # scored again without advancing: forget the previous candidates
            self.tree.discard()
        hidden = self.tree.forward(cands.to(self.device))
        self.cost.rm_calls += 1
        self._count(R * k)
        self.scored = True
        return self.head(hidden)[..., 0].float()

    def advance(self, tokens: Tensor, index: Tensor) -> None:
        if not self.scored:
            raise RuntimeError("TreeScorer.advance: no scored candidates to choose from (call score first)")
        self.tree.keep_choice(index)
        self.scored = False

    def select(self, keep: Tensor) -> None:
        self.tree.select(keep)


class RepeatScorer(_CachedScorer):
    """Repeat-and-select: k copies of each row's cache, one candidate token each; keep the chosen copy."""

    name = "repeat"

    def score(self, cands: Tensor) -> Tensor:
        R, k = cands.shape
        self.k = k
        self.cache.batch_repeat_interleave(k)
        mask = self.mask.repeat_interleave(k, 0)
        mask = torch.cat([mask, mask.new_ones(R * k, 1)], dim=1)
        pos = self.next_pos.repeat_interleave(k, 0)[:, None]
        scores = self._run(cands.to(self.device).reshape(R * k, 1), mask, pos, self.cache)
        self._count(R * k)
        return scores[:, -1].view(R, k)

    def advance(self, tokens: Tensor, index: Tensor) -> None:
        R = self.mask.shape[0]
        rows = torch.arange(R, device=self.device) * self.k + index.to(self.device)
        self.cache.batch_select_indices(rows)
        self.mask = torch.cat([self.mask, self.mask.new_ones(R, 1)], dim=1)
        self.next_pos = self.next_pos + 1

    def select(self, keep: Tensor) -> None:
        keep = keep.to(self.device)
        self.cache.batch_select_indices(keep)
        self.mask, self.next_pos = self.mask[keep], self.next_pos[keep]


class FullRecomputeScorer(Scorer):
    """The official algorithm: k full RM forwards over full sequences per step (chunked), no RM cache."""

    name = "reference"

    def __init__(self, rm: Any, chunk_size: int = 5):
        super().__init__()
        _backbone_and_head(rm)
        if chunk_size < 1:
            raise ValueError(f"reference_chunk_size: must be >= 1, got {chunk_size}")
        self.rm = rm
        self.chunk = int(chunk_size)
        self.device = next(rm.model.parameters()).device

    def start(self, prompt_ids: Sequence[Sequence[int]], prompts: Sequence[str]) -> None:
        self.seqs = [list(p) for p in prompt_ids]

    def score(self, cands: Tensor) -> Tensor:
        R, k = cands.shape
        out = torch.empty(R, k, dtype=torch.float32)
        c_list = cands.tolist()
        for r in range(R):
            prefix = torch.tensor(self.seqs[r], dtype=torch.long, device=self.device)
            for s in range(0, k, self.chunk):
                chunk = torch.tensor(c_list[r][s : s + self.chunk], dtype=torch.long, device=self.device)
                ids = torch.cat([prefix.expand(len(chunk), -1), chunk[:, None]], dim=1)
                out[r, s : s + len(chunk)] = self.rm.score_ids(ids, torch.ones_like(ids)).cpu()
                self.cost.rm_tokens += ids.numel()
                self.cost.rm_calls += 1
        return out.to(cands.device)

    def advance(self, tokens: Tensor, index: Tensor) -> None:
        for seq, t in zip(self.seqs, tokens.tolist()):
            seq.append(t)

    def select(self, keep: Tensor) -> None:
        self.seqs = [self.seqs[i] for i in keep.tolist()]


class TextScorer(Scorer):
    """Text-level scoring: ``rm(prompts, responses)`` on decoded prefix + candidate, in batches."""

    name = "text"

    def __init__(self, rm: Any, tokenizer: Any, batch_size: int = 32):
        super().__init__()
        self.rm = rm
        self.tokenizer = tokenizer
        self.batch_size = int(batch_size)

    def start(self, prompt_ids: Sequence[Sequence[int]], prompts: Sequence[str]) -> None:
        self.prompts = list(prompts)
        self.gen: list[list[int]] = [[] for _ in self.prompts]

    def score(self, cands: Tensor) -> Tensor:
        R, k = cands.shape
        c_list = cands.tolist()
        ps, rs = [], []
        for r in range(R):
            for c in c_list[r]:
                ps.append(self.prompts[r])
                rs.append(self.tokenizer.decode(self.gen[r] + [c], skip_special_tokens=True))
        before = getattr(self.rm, "n_tokens_scored", 0)
        scores = self.rm(ps, rs, batch_size=self.batch_size)
        self.cost.rm_tokens += getattr(self.rm, "n_tokens_scored", 0) - before
        self.cost.rm_calls += -(-len(ps) // self.batch_size)
        return torch.as_tensor(scores, dtype=torch.float32).view(R, k).to(cands.device)

    def advance(self, tokens: Tensor, index: Tensor) -> None:
        for g, t in zip(self.gen, tokens.tolist()):
            g.append(t)

    def select(self, keep: Tensor) -> None:
        idx = keep.tolist()
        self.gen = [self.gen[i] for i in idx]
        self.prompts = [self.prompts[i] for i in idx]

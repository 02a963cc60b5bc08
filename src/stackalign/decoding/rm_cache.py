"""Scoring the k next-token candidates of every row with a reward model, five ways, one input rule.

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
* :class:`BridgeScorer` (a reward model with another tokenizer): the reward model's ids of each row's
  committed text and their KV cache are kept; each step only a tail window of the text is re-encoded per
  candidate and the candidates' own tokens are scored as a tree on top of the cache. Rewards equal a full
  re-encode.
* :class:`TextScorer` (a Python callable reward, a chat-template reward model, or on request): every
  candidate's full input, in batches: the policy's ids with a shared tokenizer, else the decoded text
  through ``format_rm_input(prompt, response)``.

Every scorer follows the reward-model input rule of :mod:`stackalign.models.reward`: special tokens (EOS,
end of turn) are not part of the answer, so such a candidate scores its prefix and is never fed to the
reward model; an incomplete trailing UTF-8 character is not there yet (text scorers); a shared tokenizer is
fed the policy's own ids. So the tree, repeat, reference and text scorers give the same rewards on the same
candidates, and the bridge gives the full re-encode's.

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
from stackalign.models.reward import REPLACEMENT_CHAR, special_token_ids

Tensor = torch.Tensor

__all__ = [
    "Scorer",
    "TreeScorer",
    "RepeatScorer",
    "FullRecomputeScorer",
    "TextScorer",
    "BridgeScorer",
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


def _skip_tensor(tokenizer: Any, device: Any) -> Tensor:
    return torch.tensor(sorted(special_token_ids(tokenizer)), dtype=torch.long, device=device)


def _shares_ids(policy_tokenizer: Any, rm: Any) -> bool:
    """Whether ``rm`` scores the policy's token ids as they are (rule 3 of models/reward.py)."""
    from stackalign.models import shares_tokenizer

    return (
        getattr(rm, "model", None) is not None
        and getattr(rm, "tokenizer", None) is not None
        and not getattr(rm, "chat_template", False)
        and hasattr(rm, "score_ids")
        and shares_tokenizer(policy_tokenizer, rm.tokenizer)
    )


def cacheable_rm_problem(rm: Any) -> str | None:
    """None if ``rm`` is an HF reward model whose backbone can be run with a KV cache on its own token ids (no
    chat template around the input), else why not: what every incremental scorer needs."""
    if getattr(rm, "model", None) is None or getattr(rm, "tokenizer", None) is None:
        return f"the reward {rm!r} is a text-level callable"
    if getattr(rm, "chat_template", False):
        return "the reward model formats its input with a chat template"
    try:
        _backbone_and_head(rm)
    except ValueError as e:
        return str(e)
    return None


def supports_incremental(policy_tokenizer: Any, rm: Any) -> str | None:
    """None if ``rm`` can score the policy's token ids incrementally, else the reason it cannot."""
    from stackalign.models import shares_tokenizer

    why = cacheable_rm_problem(rm)
    if why is not None:
        return why
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
        self.skip = _skip_tensor(rm.tokenizer, self.device)

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
        scores = self._run(ids, mask, position_ids(mask), self.cache)
        self._count(int(mask.sum()))
        self.mask = mask
        self.next_pos = mask.sum(-1)  # position id of each row's next token
        self.last = scores[:, -1]  # each row's reward so far (left padding: its last column)

    def _special(self, tokens: Tensor) -> Tensor:
        """Which of ``tokens`` are special (not part of the answer text: rule 1 of models/reward.py)."""
        return torch.isin(tokens.to(self.device), self.skip)

    def _prefix_for_special(self, cands: Tensor, scores: Tensor) -> Tensor:
        """``scores`` [R, k] with every special candidate scored as its prefix (it adds nothing to the text)."""
        self._scores = torch.where(self._special(cands), self.last[:, None], scores)
        return self._scores

    def _commit(self, tokens: Tensor, index: Tensor) -> Tensor:
        """Record the chosen candidates' rewards as the rows' rewards so far; returns which rows chose a
        visible (non-special) token."""
        visible = ~self._special(tokens)
        rows = torch.arange(index.shape[0], device=self.device)
        self.last = self._scores[rows, index.to(self.device)]
        return visible


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
        return self._prefix_for_special(cands, self.head(hidden)[..., 0].float())

    def advance(self, tokens: Tensor, index: Tensor) -> None:
        if not self.scored:
            raise RuntimeError("TreeScorer.advance: no scored candidates to choose from (call score first)")
        visible = self._commit(tokens, index)
        self.tree.keep_choice(index, None if bool(visible.all()) else visible)
        self.scored = False

    def select(self, keep: Tensor) -> None:
        self.tree.select(keep)
        self.last = self.last[keep.to(self.device)]


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
        return self._prefix_for_special(cands, scores[:, -1].view(R, k))

    def advance(self, tokens: Tensor, index: Tensor) -> None:
        R = self.mask.shape[0]
        visible = self._commit(tokens, index).long()
        rows = torch.arange(R, device=self.device) * self.k + index.to(self.device)
        self.cache.batch_select_indices(rows)
        # a special token stays in the cache but out of every later context (masked like padding)
        self.mask = torch.cat([self.mask, visible[:, None].to(self.mask.dtype)], dim=1)
        self.next_pos = self.next_pos + visible

    def select(self, keep: Tensor) -> None:
        keep = keep.to(self.device)
        self.cache.batch_select_indices(keep)
        self.mask, self.next_pos, self.last = self.mask[keep], self.next_pos[keep], self.last[keep]


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
        self.skip = special_token_ids(rm.tokenizer)

    def start(self, prompt_ids: Sequence[Sequence[int]], prompts: Sequence[str]) -> None:
        self.seqs = [list(p) for p in prompt_ids]

    def _score(self, ids: Tensor) -> Tensor:
        self.cost.rm_tokens += ids.numel()
        self.cost.rm_calls += 1
        return self.rm.score_ids(ids, torch.ones_like(ids)).cpu()

    def score(self, cands: Tensor) -> Tensor:
        R, k = cands.shape
        out = torch.empty(R, k, dtype=torch.float32)
        c_list = cands.tolist()
        for r in range(R):
            prefix = torch.tensor(self.seqs[r], dtype=torch.long, device=self.device)
            # special candidates add nothing to the text: they score the prefix itself (models/reward.py)
            cols = [j for j, c in enumerate(c_list[r]) if c not in self.skip]
            if len(cols) < k:
                out[r] = self._score(prefix[None])[0]
            for s in range(0, len(cols), self.chunk):
                js = cols[s : s + self.chunk]
                chunk = torch.tensor([c_list[r][j] for j in js], dtype=torch.long, device=self.device)
                ids = torch.cat([prefix.expand(len(chunk), -1), chunk[:, None]], dim=1)
                out[r, js] = self._score(ids)
        return out.to(cands.device)

    def advance(self, tokens: Tensor, index: Tensor) -> None:
        for seq, t in zip(self.seqs, tokens.tolist()):
            if t not in self.skip:
                seq.append(t)

    def select(self, keep: Tensor) -> None:
        self.seqs = [self.seqs[i] for i in keep.tolist()]


class TextScorer(Scorer):
    """Scoring every candidate's full reward-model input, no cache, in batches of ``batch_size``.

    With a reward model that shares the policy's tokenizer (and no chat template) the input is the policy's
    own ids: prompt ids + the answer's non-special ids (rule 3 of models/reward.py), so it gives the tree
    scorer's rewards. Otherwise ``rm(prompts, answers)`` on the decoded answers (special tokens skipped, an
    incomplete trailing character dropped by :func:`format_rm_input`): the full re-encode the incremental
    :class:`BridgeScorer` reproduces."""

    name = "text"

    def __init__(self, rm: Any, tokenizer: Any, batch_size: int = 32):
        super().__init__()
        self.rm = rm
        self.tokenizer = tokenizer
        self.batch_size = int(batch_size)
        self.skip = special_token_ids(tokenizer)
        self.by_ids = _shares_ids(tokenizer, rm)

    def start(self, prompt_ids: Sequence[Sequence[int]], prompts: Sequence[str]) -> None:
        self.prompts = list(prompts)
        self.prompt_ids = [list(p) for p in prompt_ids]
        self.gen: list[list[int]] = [[] for _ in self.prompts]

    def score(self, cands: Tensor) -> Tensor:
        R, k = cands.shape
        c_list = cands.tolist()
        if self.by_ids:
            seqs = [
                self.prompt_ids[r] + self.gen[r] + ([] if c in self.skip else [c])
                for r in range(R)
                for c in c_list[r]
            ]
            scores = self._score_ids(seqs)
        else:
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

    def _score_ids(self, seqs: list[list[int]]) -> Tensor:
        """Scores of id sequences (the longest first kept to the model's ``max_length`` from the left, as
        :meth:`RewardModel.encode` truncates)."""
        rm = self.rm
        seqs = [s[-rm.max_length :] for s in seqs]
        out = torch.empty(len(seqs), dtype=torch.float32)
        order = sorted(range(len(seqs)), key=lambda i: len(seqs[i]))
        for s in range(0, len(order), self.batch_size):
            idx = order[s : s + self.batch_size]
            ids, mask = rm.pad([seqs[i] for i in idx])
            out[idx] = rm.score_ids(ids, mask).cpu()
            self.cost.rm_tokens += int(mask.sum())
            self.cost.rm_calls += 1
        return out

    def advance(self, tokens: Tensor, index: Tensor) -> None:
        for g, t in zip(self.gen, tokens.tolist()):
            if not self.by_ids or t not in self.skip:
                g.append(t)

    def select(self, keep: Tensor) -> None:
        idx = keep.tolist()
        self.gen = [self.gen[i] for i in idx]
        self.prompts = [self.prompts[i] for i in idx]
        self.prompt_ids = [self.prompt_ids[i] for i in idx]


_FAR = 1 << 40  # the rank of a cache column no row sees (left padding, dropped columns)


def special_frame(tokenizer: Any) -> tuple[list[int], list[int]]:
    """The ids ``tokenizer`` adds around a text when it adds special tokens (e.g. BERT's ``[CLS]`` /
    ``[SEP]``, Llama's BOS): ``(before, after)``. Raises ValueError when the text's own ids are not a
    contiguous part of its encoding with special tokens."""
    sample = "Hello world, a sample text."
    with_ = list(tokenizer(sample, add_special_tokens=True)["input_ids"])
    bare = list(tokenizer(sample, add_special_tokens=False)["input_ids"])
    for i in range(len(with_) - len(bare) + 1):
        if with_[i : i + len(bare)] == bare:
            return with_[:i], with_[i + len(bare) :]
    raise ValueError("the reward model's tokenizer changes a text's ids when it adds its special tokens")


class _Detok:
    """Incremental detokenization of one row's answer by the policy's tokenizer (the answer text of rule 1-2
    of models/reward.py: special tokens skipped, an incomplete trailing character dropped), decoding only
    the last few tokens per step (as in vLLM's incremental detokenizer): ``stable`` is the text of
    ``ids[:read]``, complete; ``ids[prefix:read]`` is decoded again as context for the tokens after."""

    __slots__ = ("ids", "stable", "prefix", "read", "prefix_text", "answer")

    def __init__(self) -> None:
        self.ids: list[int] = []
        self.stable = self.prefix_text = self.answer = ""
        self.prefix = self.read = 0


class BridgeScorer(_CachedScorer):
    """ARGS with a reward model of ANOTHER tokenizer, incrementally (the text bridge).

    Per row it keeps the reward model's ids ``E`` of the committed text ``prompt + answer`` (the full
    re-encode's ids, without the tokenizer's added special tokens) and their KV cache. Each step, every
    candidate's text (the answer decoded incrementally by the policy's tokenizer, :class:`_Detok`) is
    re-encoded only from a window start ``p`` near the end of the committed text, at a boundary a later
    text cannot change (a non-space character followed by whitespace, where byte-level BPE, WordPiece and
    similar pre-tokenizers always split; up to ``scan`` tokens back, else ``window`` tokens back): candidate
    j's ids are ``E[:s] + encode(text_j[p:])``. Its longest common prefix with the cached ``E`` is reused;
    the rest (its own tokens, usually one or two, plus the tokenizer's trailing special tokens such as
    BERT's ``[SEP]``) is scored as a tree on top of the cache, like :class:`TreeScorer`: one forward for all
    candidates of all rows, each seeing only its reused prefix and its own earlier tokens. The chosen
    candidate's own columns are moved next to the kept prefix; columns a merge across the boundary replaced
    stay in the cache, masked out for good.

    Every step also re-encodes the committed text's window and checks it against the cached ids; a row
    where they differ (a tokenizer whose split is not local there) re-encodes from the start from then on,
    so the rewards are always those of the full re-encode (:class:`TextScorer`). A candidate that does not
    change the text (a special token, an incomplete character) scores the committed text.
    """

    name = "bridge"

    def __init__(self, rm: Any, policy_tokenizer: Any, window: int = 16, scan: int = 64):
        super().__init__(rm)
        self.backend = getattr(rm.tokenizer, "backend_tokenizer", None)
        if self.backend is None:
            raise ValueError("the text bridge needs the reward model's fast (Rust) tokenizer")
        self.pre, self.post = special_frame(rm.tokenizer)
        sample = "A check: does it, split? Yes"
        mine = self.pre + self.backend.encode(sample, add_special_tokens=False).ids + self.post
        if mine != list(rm.tokenizer(sample)["input_ids"]):
            raise ValueError("the reward model's tokenizer does not encode texts as its Rust backend does")
        self.ptok = policy_tokenizer
        self.pskip = special_token_ids(policy_tokenizer)
        self.window, self.scan = int(window), int(scan)
        dec = getattr(getattr(policy_tokenizer, "backend_tokenizer", None), "decoder", None)
        # byte-level decoders decode a complete token on its own exactly as in context: a per-token cache
        self._pieces: dict[int, str] | None = {} if type(dec).__name__ == "ByteLevel" else None
        impl = getattr(rm.model.config, "_attn_implementation", None)
        self.bool_mask = impl == "sdpa"
        self.max_pos = getattr(rm.model.config, "max_position_embeddings", None)
        # diagnostics: chosen candidates that re-tokenized committed RM tokens (a merge across the window's
        # end), and rows that had to re-encode from the start (their window check failed)
        self.merges = 0
        self.full_rows = 0

    # -- the policy's side: answer texts ----------------------------------------------------------------
    def _decode(self, ids: list[int]) -> str:
        return self.ptok.decode(ids, skip_special_tokens=True)

    def _piece(self, c: int) -> str:
        p = self._pieces.get(c)
        if p is None:
            p = self._pieces[c] = self._decode([c])
        return p

    def _answer_with(self, d: _Detok, c: int) -> str:
        """The answer text with candidate ``c`` appended (rules 1-2 of models/reward.py)."""
        if c in self.pskip:
            return d.answer
        if self._pieces is not None and d.read == len(d.ids):
            piece = self._piece(c)
            if REPLACEMENT_CHAR not in piece:
                return d.answer + piece
        new = self._decode(d.ids[d.prefix :] + [c])
        if new.startswith(d.prefix_text):
            return (d.stable + new[len(d.prefix_text) :]).rstrip(REPLACEMENT_CHAR)
        return self._decode(d.ids + [c]).rstrip(REPLACEMENT_CHAR)

    def _commit_text(self, d: _Detok, c: int, answer: str) -> None:
        d.answer = answer
        if c in self.pskip:
            return
        d.ids.append(c)
        new = self._decode(d.ids[d.prefix :])
        if new.endswith(REPLACEMENT_CHAR):
            return  # an incomplete character: the token stays pending
        if new.startswith(d.prefix_text):
            d.stable += new[len(d.prefix_text) :]
        else:
            d.stable = self._decode(d.ids)
        d.prefix, d.read = d.read, len(d.ids)
        d.prefix_text = self._decode(d.ids[d.prefix : d.read])

    # -- the reward model's side ------------------------------------------------------------------------
    def _value(self, allowed: Tensor) -> Tensor:
        if self.bool_mask:
            return allowed
        neg = torch.finfo(self.dtype).min
        return torch.zeros(allowed.shape, dtype=self.dtype, device=allowed.device).masked_fill(~allowed, neg)

    def start(self, prompt_ids: Sequence[Sequence[int]], prompts: Sequence[str]) -> None:
        from transformers import DynamicCache

        self.prompts = list(prompts)
        encs = self.backend.encode_batch(self.prompts, add_special_tokens=False)
        self.texts = list(self.prompts)  # committed RM text of each row: prompt + answer
        self.E = [list(e.ids) for e in encs]
        self.ends = [[o[1] for o in e.offsets] for e in encs]
        self.detok = [_Detok() for _ in self.prompts]
        self.slow = [False] * len(self.prompts)
        seqs = [self.pre + e for e in self.E]
        ids, mask = left_pad(seqs, self.pad, self.device)
        self.cache = DynamicCache(config=self.rm.model.config)
        pos = position_ids(mask)
        scores = self._run(ids, mask, pos, self.cache)
        self._count(int(mask.sum()))
        # rank[r, col]: the position of the row's token in cache column col (= its position id), or _FAR
        self.rank = torch.where(mask.bool(), pos, torch.full_like(pos, _FAR))
        self.n = [len(s) for s in seqs]
        width = ids.shape[1]
        self.pos_scores = [scores[r, width - self.n[r] :].tolist() for r in range(len(seqs))]
        self._pending: list | None = None

    def _window(self, r: int) -> tuple[int, int]:
        """``(s, p)``: re-encode row r's text from character p on, which starts after its RM token s - 1."""
        c, text, ends = len(self.E[r]), self.texts[r], self.ends[r]
        if self.slow[r] or c == 0:
            return 0, 0
        for t in range(c - 1, max(0, c - self.scan), -1):
            p = ends[t - 1]
            if p < len(text) and text[p].isspace() and not text[p - 1].isspace():
                return t, p
        t = max(0, c - self.window)
        return t, (ends[t - 1] if t else 0)

    def score(self, cands: Tensor) -> Tensor:
        R, k = cands.shape
        c_list = cands.tolist()
        answers = [[self._answer_with(self.detok[r], c) for c in c_list[r]] for r in range(R)]
        plans = self._plan(answers, range(R), {})
        redo = [r for r in range(R) if plans[r] is None]
        if redo:  # the committed window disagreed with the cache: these rows re-encode from the start
            for r in redo:
                self.slow[r] = True
            self.full_rows += len(redo)
            plans.update(self._plan(answers, redo, {}))
        return self._forward(plans, answers, cands)

    def _plan(self, answers: list[list[str]], rows: Any, out: dict) -> dict:
        """For each row: its window and, per candidate, ``(reused, own ids, own end offsets)``; None for a
        row whose committed text no longer encodes to its cached ids from the window on."""
        texts, spans = [], []
        for r in rows:
            s, p = self._window(r)
            answer, text = self.detok[r].answer, self.texts[r]
            if any(not a.startswith(answer) for a in answers[r]):
                s, p = 0, 0
            tail = text[p:]
            spans.append((r, s, p, len(texts)))
            texts.append(tail)
            texts.extend(tail + a[len(answer) :] for a in answers[r])
        encs = self.backend.encode_batch(texts, add_special_tokens=False)
        for r, s, p, i in spans:
            E = self.E[r]
            if s > 0 and encs[i].ids != E[s:]:
                out[r] = None
                continue
            cands = []
            for e in encs[i + 1 : i + 1 + len(answers[r])]:
                ids, m = e.ids, 0
                top = min(len(ids), len(E) - s)
                while m < top and ids[m] == E[s + m]:
                    m += 1
                cands.append((s + m, ids[m:], [p + o[1] for o in e.offsets[m:]]))
            out[r] = cands
        return out

    def _forward(self, plans: dict, answers: list[list[str]], cands: Tensor) -> Tensor:
        """One tree forward over every candidate's own tokens (+ the tokenizer's trailing specials)."""
        R, k = cands.shape
        pre, post = len(self.pre), self.post
        toks, pos, vis, group = [], [], [], []
        last = torch.empty(R, k, dtype=torch.long)  # query index of each candidate's score, or -1
        for r in range(R):
            t_r, p_r, v_r, g_r = [], [], [], []
            for j, (reused, own, _) in enumerate(plans[r]):
                q = own + post
                base = pre + reused
                if self.max_pos and base + len(q) > self.max_pos:
                    raise ValueError(
                        f"the reward model's input exceeds its {self.max_pos}-token context "
                        "(max_position_embeddings); lower max_new_tokens or shorten the prompts"
                    )
                t_r += q
                p_r += range(base, base + len(q))
                v_r += [base] * len(q)
                g_r += [j] * len(q)
                last[r, j] = len(t_r) - 1 if q else -1
            toks.append(t_r)
            pos.append(p_r)
            vis.append(v_r)
            group.append(g_r)
        n_real = sum(len(t) for t in toks)
        Q = max(1, max(len(t) for t in toks))
        for r in range(R):  # padding queries: see themselves only (unique groups, no past)
            extra = Q - len(toks[r])
            toks[r] += [self.pad] * extra
            pos[r] += [0] * extra
            vis[r] += [0] * extra
            group[r] += range(-extra, 0)
        dev = self.device
        ids = torch.tensor(toks, dtype=torch.long, device=dev)
        pos_t = torch.tensor(pos, dtype=torch.long, device=dev)
        vis_t = torch.tensor(vis, dtype=torch.long, device=dev)
        g = torch.tensor(group, dtype=torch.long, device=dev)
        past = self.rank[:, None, :] < vis_t[:, :, None]  # [R, Q, Lc]
        qi = torch.arange(Q, device=dev)
        own = (g[:, :, None] == g[:, None, :]) & (qi[None, None, :] <= qi[None, :, None])  # [R, Q, Q]
        mask = self._value(torch.cat([past, own], dim=-1)[:, None])
        self.Lc = self.rank.shape[1]
        scores = self._run(ids, mask, pos_t, self.cache)  # [R, Q]
        self._count(n_real)
        out = torch.empty(R, k, dtype=torch.float32)
        s_cpu = scores.cpu()
        for r in range(R):
            for j in range(k):
                q = int(last[r, j])
                out[r, j] = s_cpu[r, q] if q >= 0 else self.pos_scores[r][pre + plans[r][j][0] - 1]
        self._pending = (plans, answers, s_cpu)
        return out.to(cands.device)

    def advance(self, tokens: Tensor, index: Tensor) -> None:
        if self._pending is None:
            raise RuntimeError("BridgeScorer.advance: no scored candidates to choose from (call score first)")
        plans, answers, scores = self._pending
        self._pending = None
        pre, Lc = len(self.pre), self.Lc
        R = len(plans)
        choice, toks = index.tolist(), tokens.tolist()
        src, kept = [], []
        for r in range(R):
            j = choice[r]
            reused, own, own_ends = plans[r][j]
            self.merges += reused < len(self.E[r])
            start = sum(len(o) + len(self.post) for _, o, _ in plans[r][:j])  # its first query index
            self._commit_text(self.detok[r], toks[r], answers[r][j])
            self.texts[r] = self.prompts[r] + answers[r][j]
            self.E[r] = self.E[r][:reused] + own
            self.ends[r] = self.ends[r][:reused] + own_ends
            self.pos_scores[r] = (
                self.pos_scores[r][: pre + reused] + scores[r, start : start + len(own)].tolist()
            )
            src.append(list(range(start, start + len(own))))
            kept.append(pre + reused)
            self.n[r] = pre + reused + len(own)
        M = max(len(s) for s in src)
        dev = self.device
        # columns beyond a row's kept prefix (replaced by a merge across the window) leave every context
        kept_t = torch.tensor(kept, device=dev)
        rank = torch.where(self.rank < kept_t[:, None], self.rank, torch.full_like(self.rank, _FAR))
        new_rank = torch.full((R, M), _FAR, dtype=torch.long, device=dev)
        for r in range(R):
            new_rank[r, : len(src[r])] = torch.arange(kept[r], kept[r] + len(src[r]))
        self.rank = torch.cat([rank, new_rank], dim=1)
        cols = torch.tensor([s + [0] * (M - len(s)) for s in src], dtype=torch.long, device=dev) + Lc
        rows = torch.arange(R, device=dev)[:, None]
        for layer in self.cache.layers:
            for name in ("keys", "values"):
                t = getattr(layer, name)
                if M:
                    t[:, :, Lc : Lc + M] = t[rows, :, cols].transpose(1, 2)
                setattr(layer, name, t[:, :, : Lc + M])

    def select(self, keep: Tensor) -> None:
        idx = keep.tolist()
        self.cache.batch_select_indices(keep.to(self.device))
        self.rank = self.rank[keep.to(self.device)]
        for name in ("prompts", "texts", "E", "ends", "detok", "slow", "n", "pos_scores"):
            setattr(self, name, [getattr(self, name)[i] for i in idx])

"""k candidates per row in ONE forward over ONE KV cache, under a 4D "tree" attention mask.

Both lookaheads of the project use it: the reward-model scorer of ARGS (:class:`rm_cache.TreeScorer`)
and the tokenwise lookahead of controlled decoding (:mod:`stackalign.decoding.cd`). Each step the query
is ``[p, c_1 .. c_k]`` per row, where ``p`` is an optional pending token (the token chosen at the previous
step that the cache has not seen yet) and ``c_j`` the k candidates:

* ``p`` sees the row's (unpadded) cached prefix and itself, at the row's next position;
* candidate ``c_j`` sees the prefix, ``p`` and itself only, at the position after ``p``: all k candidates
  share one position id, so each is scored exactly as if it alone followed the prefix.

Afterwards the cache must hold prefix + the chosen token only. :meth:`TreeLookahead.keep_pending` crops
the k candidate entries (the pending token stays: ARGS's RM, which scores the candidates but is fed the
chosen one at the next step); :meth:`TreeLookahead.keep_choice` moves the chosen candidate's key/value
entry into the first new slot and crops the rest (CD, whose candidate pass is also the chosen token's
forward). Cost per step: ``k (+1)`` query tokens per row, O(L) cache memory, no cache copies.

Needs a plain dynamic cache and an attention kernel that takes a 4D mask (eager or SDPA): see
:func:`stackalign.decoding.rm_cache.tree_mask_unsupported` for the rule the decoders use to fall back to
repeat-and-select.
"""

from __future__ import annotations

from typing import Any

import torch

from stackalign.decoding.common import cache_kwarg, forward_params, output_cache

Tensor = torch.Tensor

__all__ = ["TreeLookahead", "check_plain_cache"]


def check_plain_cache(cache: Any, hint: str) -> None:
    """Raise ValueError unless every layer of ``cache`` is a plain full-attention dynamic layer."""
    from transformers.cache_utils import DynamicLayer

    for layer in getattr(cache, "layers", []):
        if type(layer) is not DynamicLayer or getattr(layer, "is_sliding", False):
            raise ValueError(
                f"the tree-masked lookahead needs a plain DynamicCache; this model's cache has "
                f"{type(layer).__name__} layers (sliding-window attention). {hint}"
            )


class TreeLookahead:
    """The tree-masked k-candidate step over one cache (see the module docstring).

    Args:
        backbone: the transformer body (``model.base_model``): returns ``last_hidden_state``.
        cache: its DynamicCache, already holding each row's left-padded prefix.
        attention_mask: [R, L] 0/1 mask of the cached columns (0 = left padding).
        next_pos: [R] position id of each row's next token.
        dtype: the model's floating dtype (for additive masks).
    """

    def __init__(self, backbone: Any, cache: Any, attention_mask: Tensor, next_pos: Tensor, dtype: Any):
        self.backbone, self.cache, self.dtype = backbone, cache, dtype
        self.device = attention_mask.device
        self._cache_kw = cache_kwarg(backbone)
        self._takes_pos = "position_ids" in forward_params(backbone)
        # SDPA takes a boolean mask (True = attend; cheaper on CPU); eager adds a float bias (0 or min).
        impl = getattr(getattr(backbone, "config", None), "_attn_implementation", None)
        self.bool_mask = impl == "sdpa"
        self.past = self._value(attention_mask.bool())  # [R, L] over the cached columns
        self.next_pos = next_pos.to(self.device)
        self._one = self._value(torch.ones(1, 1, dtype=torch.bool, device=self.device))
        self._trees: dict[tuple[int, int], Tensor] = {}
        self._offs: dict[tuple[int, int], Tensor] = {}
        self.calls = 0

    def _value(self, allowed: Tensor) -> Tensor:
        if self.bool_mask:
            return allowed
        neg = torch.finfo(self.dtype).min
        return torch.zeros(allowed.shape, dtype=self.dtype, device=allowed.device).masked_fill(~allowed, neg)

    def _tree(self, off: int, k: int) -> Tensor:
        """[q, q] mask of the new tokens: each sees itself; with a pending token (off=1) all see column 0."""
        key = (off, k)
        if key not in self._trees:
            allowed = torch.eye(off + k, dtype=torch.bool, device=self.device)
            if off:
                allowed[:, 0] = True
            self._trees[key] = self._value(allowed)
        return self._trees[key]

    def _offsets(self, off: int, k: int) -> Tensor:
        """Position offsets of the new tokens: pending token at +0, every candidate at +off."""
        key = (off, k)
        if key not in self._offs:
            self._offs[key] = torch.tensor([0] * off + [off] * k, device=self.device)
        return self._offs[key]

    def forward(self, cands: Tensor, pending: Tensor | None = None) -> Tensor:
        """Hidden states [R, off + k, H] of ``[pending, c_1..c_k]`` (``pending`` [R] or None, ``cands``
        [R, k]); the cache grows by off + k entries until :meth:`keep_pending` / :meth:`keep_choice`."""
        R, k = cands.shape
        off = 0 if pending is None else 1
        q, L = off + k, self.past.shape[1]
        past, tree = self.past[:, None, None, :].expand(R, 1, q, L), self._tree(off, k).expand(R, 1, q, q)
        mask = torch.cat([past, tree], dim=-1)
        ids = cands if not off else torch.cat([pending[:, None], cands], dim=1)
        kwargs: dict[str, Any] = {"attention_mask": mask, "use_cache": True, self._cache_kw: self.cache}
        if self._takes_pos:
            kwargs["position_ids"] = self.next_pos[:, None] + self._offsets(off, k)
        out = self.backbone(input_ids=ids, **kwargs)
        self.calls += 1
        if output_cache(out) is not self.cache:  # defensive: some models return a new object
            self.cache = output_cache(out)
        self._L, self._off = L, off
        return out.last_hidden_state

    def _grow(self, R: int) -> None:
        self.past = torch.cat([self.past, self._one.expand(R, 1)], dim=1)
        self.next_pos = self.next_pos + 1

    def keep_pending(self) -> None:
        """Drop the k candidate entries; the pending token (if any) stays in the cache."""
        L, off = self._L, self._off
        for layer in self.cache.layers:
            if getattr(layer, "keys", None) is not None and layer.keys.numel():
                layer.keys = layer.keys[..., : L + off, :]
                layer.values = layer.values[..., : L + off, :]
        if off:
            self._grow(self.past.shape[0])

    def keep_choice(self, choice: Tensor) -> None:
        """Keep candidate ``choice`` [R] of each row (no pending token was fed): move its K/V entry into the
        first new slot and drop the other k - 1."""
        L, n = self._L, choice.shape[0]
        if self._off:
            raise ValueError("keep_choice: this step fed a pending token; use keep_pending")
        src = L + (int(choice[0]) if n == 1 else choice)  # one row: a plain slice, no gather
        rows = torch.arange(n, device=choice.device) if n > 1 else None
        for layer in self.cache.layers:
            for name in ("keys", "values"):
                t = getattr(layer, name)
                if rows is None:
                    t[:, :, L].copy_(t[:, :, src])
                else:
                    t[:, :, L] = t[rows, :, src]
                setattr(layer, name, t[:, :, : L + 1])
        self._grow(n)

    def select(self, keep: Tensor, cache: bool = True) -> None:
        """Keep only rows ``keep`` (finished rows leave the batch); ``cache=False`` when the caller selects
        the cache itself."""
        keep = keep.to(self.device)
        if cache:
            self.cache.batch_select_indices(keep)
        self.past, self.next_pos = self.past[keep], self.next_pos[keep]

"""k candidates per row in ONE forward over ONE KV cache, under a 4D "tree" attention mask.

Both lookaheads of the project use it: the reward-model scorer of ARGS (:class:`rm_cache.TreeScorer`)
and the tokenwise lookahead of controlled decoding (:mod:`stackalign.decoding.cd`). Each step the query
is the k candidates ``c_1 .. c_k`` of every row; candidate ``c_j`` sees the row's (unpadded) cached prefix
and itself only, and all k share the row's next position id, so each is computed exactly as if it alone
followed the prefix.

When a candidate is chosen (:meth:`TreeLookahead.keep_choice`), its key/value entry — computed with
exactly the context it will keep — is moved into the first new cache slot and the other k - 1 entries are
cropped, so the chosen token never runs through the model again. Cost per step: k query tokens per row,
O(L) cache memory, one column copy per layer, no cache copies.

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
        self._trees: dict[int, Tensor] = {}
        self._L: int | None = None  # cache length before the candidates of the pending forward

    def _value(self, allowed: Tensor) -> Tensor:
        if self.bool_mask:
            return allowed
        neg = torch.finfo(self.dtype).min
        return torch.zeros(allowed.shape, dtype=self.dtype, device=allowed.device).masked_fill(~allowed, neg)

    def _own(self, k: int) -> Tensor:
        """[k, k] mask of the candidates: each sees itself, not its siblings."""
        if k not in self._trees:
            self._trees[k] = self._value(torch.eye(k, dtype=torch.bool, device=self.device))
        return self._trees[k]

    def forward(self, cands: Tensor) -> Tensor:
        """Hidden states [R, k, H] of the candidates ``cands`` [R, k]; the cache holds k more entries until
        :meth:`keep_choice` or :meth:`discard`."""
        if self._L is not None:
            raise RuntimeError(
                "TreeLookahead.forward: the previous candidates were neither kept nor discarded"
            )
        R, k = cands.shape
        L = self.past.shape[1]
        mask = torch.cat(
            [self.past[:, None, None, :].expand(R, 1, k, L), self._own(k).expand(R, 1, k, k)], dim=-1
        )
        kwargs: dict[str, Any] = {"attention_mask": mask, "use_cache": True, self._cache_kw: self.cache}
        if self._takes_pos:
            kwargs["position_ids"] = self.next_pos[:, None].expand(R, k)
        out = self.backbone(input_ids=cands, **kwargs)
        if output_cache(out) is not self.cache:  # defensive: some models return a new object
            self.cache = output_cache(out)
        self._L = L
        return out.last_hidden_state

    def discard(self) -> None:
        """Drop the candidates of the last :meth:`forward` (none chosen)."""
        for layer in self.cache.layers:
            layer.keys, layer.values = layer.keys[..., : self._L, :], layer.values[..., : self._L, :]
        self._L = None

    def keep_choice(self, choice: Tensor, visible: Tensor | None = None) -> None:
        """Keep candidate ``choice`` [R] of each row: move its K/V entry into the first new slot and drop the
        other k - 1. ``visible`` [R] bool (default all True): rows whose kept token must stay out of every
        later context (a special token the reward model does not see): its column is masked like padding and
        the row's next position id does not move."""
        L, n = self._L, choice.shape[0]
        src = L + (int(choice[0]) if n == 1 else choice.to(self.device))  # one row: a plain slice, no gather
        rows = torch.arange(n, device=self.device) if n > 1 else None
        for layer in self.cache.layers:
            for name in ("keys", "values"):
                t = getattr(layer, name)
                if rows is None:
                    t[:, :, L].copy_(t[:, :, src])
                else:
                    t[:, :, L] = t[rows, :, src]
                setattr(layer, name, t[:, :, : L + 1])
        if visible is None:
            self.past = torch.cat([self.past, self._one.expand(n, 1)], dim=1)
            self.next_pos = self.next_pos + 1
        else:
            visible = visible.to(self.device)
            self.past = torch.cat([self.past, self._value(visible[:, None])], dim=1)
            self.next_pos = self.next_pos + visible.long()
        self._L = None

    def select(self, keep: Tensor, cache: bool = True) -> None:
        """Keep only rows ``keep`` (finished rows leave the batch); ``cache=False`` when the caller selects
        the cache itself."""
        keep = keep.to(self.device)
        if cache:
            self.cache.batch_select_indices(keep)
        self.past, self.next_pos = self.past[keep], self.next_pos[keep]

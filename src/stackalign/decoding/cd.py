"""Controlled decoding (CD) with a learned value head: tokenwise top-k lookahead and blockwise best-of-K.

Tokenwise (SRS paper Algorithm 1; Mudgal et al. 2024), at every step of every prompt:

    logp = log_softmax(logits / temperature);  c_1..c_k = top-k tokens by logp
    V_i  = V(h(x, y_<t, c_i))                 the value head on the LM's final hidden state after c_i
    score_i = logp_i + lam * V_i;  pick argmax (greedy) or sample from softmax(score) (do_sample)

(The log-normaliser of logp is the same for all k candidates of a row and neither argmax nor softmax
sees it, so the code scores logits_i / temperature + lam * V_i and skips a softmax over the vocabulary.)

The official code runs the k candidates against a k-times tiled KV cache and then runs the LM *again* on
the chosen token to advance its real cache. Here the candidate pass is reused, so each step costs one LM
forward of k query tokens and nothing else:

  * lookahead="tree" (what "auto", the default, picks when it can): the k candidates go in as one query of length k at the same position,
    with a 4D additive mask that lets candidate i see the (unpadded) prefix and itself only. Afterwards
    the chosen candidate's key/value entry is moved into the first new cache slot and the cache is cut
    back to prefix + 1. The cache stays batch x L (no k-times copy); the chosen candidate's logits are
    the next step's logits. Needs a dynamic (non-sliding) cache and eager/SDPA attention (FlashAttention
    does not take arbitrary masks).
  * lookahead="repeat": the cache is tiled k times once, the candidates are k rows of one token each, and
    `DynamicCache.batch_select_indices` keeps the chosen row (repeated k times for the next step). Only
    public cache API; k-times the cache memory and a cache copy per step.

Blockwise (Mudgal et al.): K continuations of M tokens are sampled from the base policy (shared prefix:
the cache is tiled K times), each is scored by V at its last valid token, the best one is kept
(`batch_select_indices`) and decoding continues from it until EOS, a stop string or max_new_tokens.

Both stop per row at an EOS / end-of-turn id or a stop string (`decoding.common` conventions), run
batch > 1 with left padding, drop finished rows from the batch, and count LM tokens and forwards in a
`Cost`; value-head calls are reported in `DecodeResult.meta["value_evals"]`.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Literal

import torch
from torch import Tensor

from stackalign.decoding.common import (
    Cost,
    DecodeResult,
    GenerationConfig,
    LiveRows,
    StopChecker,
    Timer,
    encode_prompts,
    filter_logits,
    left_pad,
    model_device,
    pad_id_of,
    position_ids,
    prompt_generators,
    resolve_eos_ids,
    row_uniforms,
    run_steps,
    sample_rows,
)

__all__ = ["CDConfig", "controlled_decode"]


@dataclass
class CDConfig:
    """Controlled-decoding settings (defaults: the official SRS-CD decoder, k = 10, lam = 1.5).

    Length, stopping, seed and the base sampler of blockwise CD come from the `GenerationConfig` passed
    beside it."""

    mode: Literal["tokenwise", "blockwise"] = field(
        default="tokenwise", metadata={"help": "'tokenwise' or 'blockwise'"}
    )
    lam: float = field(default=1.5, metadata={"help": "value weight lambda (= 1/beta)"})
    top_k: int = field(default=10, metadata={"help": "tokenwise: candidates per step"})
    score_temperature: float = field(
        default=0.7, metadata={"help": "tokenwise: logp = log_softmax(logits/T)"}
    )
    do_sample: bool = field(
        default=False, metadata={"help": "tokenwise: sample from softmax(score), not argmax"}
    )
    num_blocks: int = field(default=4, metadata={"help": "blockwise: K continuations per block"})
    block_size: int = field(default=8, metadata={"help": "blockwise: M tokens per block"})
    lookahead: Literal["auto", "tree", "repeat"] = field(
        default="auto",
        metadata={
            "help": "tokenwise cache strategy: 'tree', 'repeat', or 'auto' (tree unless the model has "
            "sliding-window layers or an attention kernel without 4D masks; the run's meta records why)"
        },
    )
    batch_size: int = field(default=8, metadata={"help": "prompts decoded together"})

    def __post_init__(self) -> None:
        if self.mode not in ("tokenwise", "blockwise"):
            raise ValueError(f"mode: expected 'tokenwise' or 'blockwise', got {self.mode!r}")
        if self.lookahead not in ("auto", "tree", "repeat"):
            raise ValueError(f"lookahead: expected 'auto', 'tree' or 'repeat', got {self.lookahead!r}")
        for name in ("top_k", "num_blocks", "block_size", "batch_size"):
            v = getattr(self, name)
            if not (isinstance(v, int) and v >= 1):
                raise ValueError(f"{name}: must be an integer >= 1, got {v!r}")
        t = self.score_temperature
        if not (isinstance(t, int | float) and math.isfinite(t) and t > 0):
            raise ValueError(f"score_temperature: must be a finite number > 0, got {t!r}")
        if not (isinstance(self.lam, int | float) and math.isfinite(self.lam) and self.lam >= 0):
            raise ValueError(
                f"lam: must be a finite number >= 0 (the value's weight 1/beta), got {self.lam!r}"
            )


# --------------------------------------------------------------------------------------------- LM plumbing

_CACHE_KW: dict[type, str] = {}


def _cache_kw(base) -> str:
    """The cache keyword of the base model's forward: `cache` (transformers >= 5.2x) or `past_key_values`."""
    key = type(base)
    if key not in _CACHE_KW:
        params = inspect.signature(base.forward).parameters
        _CACHE_KW[key] = "cache" if "cache" in params else "past_key_values"
    return _CACHE_KW[key]


def final_hidden(model, input_ids: Tensor, attention_mask: Tensor, pos: Tensor | None, cache=None) -> Tensor:
    """Final-layer (post-norm) hidden states (B, q, H) from the base model (no LM head); extends `cache`."""
    base = model.base_model
    kwargs = {"attention_mask": attention_mask, "use_cache": cache is not None}
    if pos is not None:
        kwargs["position_ids"] = pos
    if cache is not None:
        kwargs[_cache_kw(base)] = cache
    return base(input_ids=input_ids, **kwargs).last_hidden_state


class _LMHead:
    """Next-token logits from final hidden states, as the model's own head computes them (fp32)."""

    def __init__(self, model):
        self.proj = model.get_output_embeddings()
        self.softcap = getattr(model.config.get_text_config(), "final_logit_softcapping", None)

    def __call__(self, hidden: Tensor) -> Tensor:
        logits = self.proj(hidden).float()
        if self.softcap:
            logits = torch.tanh(logits / self.softcap) * self.softcap
        return logits


class _Batch:
    """One prompt batch after the prefill: live rows, their cache, 2D mask and next-token logits.

    Rows leave the batch as they finish (`drop`); `rows[j]` is the batch-local prompt index of live row j.
    `tokens[i]` are prompt i's generated ids so far."""

    def __init__(self, model, prompt_ids: list[list[int]], pad: int, cost: Cost):
        from transformers import DynamicCache

        self.model, self.pad = model, pad
        self.lm_head = _LMHead(model)
        self.device = model_device(model)
        ids, self.mask = left_pad(prompt_ids, pad, self.device)
        self.cache = DynamicCache(config=model.config)
        h = final_hidden(model, ids, self.mask, position_ids(self.mask), self.cache)
        cost.lm_tokens += int(self.mask.sum())
        cost.lm_calls += 1
        self.logits = self.lm_head(h[:, -1])
        self.rows = list(range(len(prompt_ids)))
        self.tokens: list[list[int]] = [[] for _ in prompt_ids]

    def next_position(self) -> Tensor:
        """(B, 1) position of the next token of each live row (left pads do not count)."""
        return self.mask.sum(-1, keepdim=True)

    def drop(self, keep: list[int], cache_index: Tensor | None = None) -> None:
        """Keep live rows `keep` (batch positions); `cache_index` overrides the cache rows to keep."""
        self.rows = [self.rows[j] for j in keep]
        if not keep:
            return
        idx = torch.tensor(keep, device=self.device)
        self.mask, self.logits = self.mask[idx], self.logits[idx]
        self.cache.batch_select_indices(idx if cache_index is None else cache_index)


# --------------------------------------------------------------------------------------------- tokenwise


class _Run:
    """What both decoders hold: the batch, the head, the configs, stopping, per-prompt RNGs, the cost."""

    def __init__(
        self, batch: _Batch, head, cfg: CDConfig, gen: GenerationConfig, stop: StopChecker, rngs, cost
    ):
        self.b, self.head, self.cfg, self.gen, self.stop, self.cost = batch, head, cfg, gen, stop, cost
        self.rngs = rngs  # one torch.Generator per prompt of the batch
        self.model = batch.model
        self.value_evals = 0
        self.eos = set() if stop.ignore else set(stop.eos_ids)


class _Tokenwise(_Run):
    """Tokenwise CD over one `_Batch`; `step()` advances every live row by one token."""

    def __init__(self, *args):
        super().__init__(*args)
        cfg, batch = self.cfg, self.b
        self.dtype = next(self.model.parameters()).dtype
        self.k = min(cfg.top_k, batch.logits.shape[-1])
        if cfg.lookahead == "tree":
            from stackalign.decoding.tree import TreeLookahead, check_plain_cache

            check_plain_cache(batch.cache, "Use lookahead='repeat' (or 'auto').")
            self.tree = TreeLookahead(
                self.model.base_model, batch.cache, batch.mask, batch.mask.sum(-1), self.dtype
            )
        else:
            batch.cache.batch_repeat_interleave(self.k)

    def _repeat_hidden(self, cand: Tensor) -> Tensor:
        """Hidden states (b, k, H): the k candidates as k rows of one token against the k-times tiled cache."""
        b, k = cand.shape
        mask = torch.cat([self.b.mask, self.b.mask.new_ones(b, 1)], dim=-1).repeat_interleave(k, dim=0)
        pos = self.b.next_position().repeat_interleave(k, dim=0)
        return final_hidden(self.model, cand.reshape(b * k, 1), mask, pos, self.b.cache).view(b, k, -1)

    def step(self) -> Tensor:
        """Advance every live row by one token; returns the tokens [n]."""
        cfg, k, batch = self.cfg, self.k, self.b
        n = batch.logits.shape[0]
        # log p_i = logit_i / T - logsumexp(logits / T): the second term is the same for every candidate of a
        # row, and argmax / softmax over the row ignore it, so it is never computed.
        top_logits, cand = batch.logits.topk(k, dim=-1)  # (n, k)
        top_logp = top_logits / cfg.score_temperature
        h = self.tree.forward(cand) if cfg.lookahead == "tree" else self._repeat_hidden(cand)
        self.cost.lm_tokens += n * k
        self.cost.lm_calls += 1
        score = top_logp
        if self.head is not None and cfg.lam != 0:
            score = top_logp + cfg.lam * self.head(h.float())
            self.value_evals += n * k
        if cfg.do_sample:
            u = row_uniforms([self.rngs[i] for i in batch.rows], 1, batch.device)
            choice = sample_rows(torch.softmax(score, dim=-1), u)
        else:
            choice = score.argmax(dim=-1)
        if n == 1:  # one row: plain indexing with a Python int (fewer, cheaper ops than gathers)
            c = int(choice[0])
            chosen_h, tokens = h[:, c], cand[:, c]
        else:
            rows = torch.arange(n, device=batch.device)
            chosen_h, tokens = h[rows, choice], cand[rows, choice]
        if cfg.lookahead == "tree":
            self.tree.keep_choice(choice)  # the chosen candidate's K/V entry becomes the next cache slot
        else:
            batch.cache.batch_select_indices(
                (torch.arange(n, device=batch.device) * k + choice).repeat_interleave(k)
            )
        batch.logits = batch.lm_head(chosen_h)  # the candidate pass is the next step's pass
        batch.mask = torch.cat([batch.mask, batch.mask.new_ones(n, 1)], dim=-1)
        return tokens

    def select(self, keep: Tensor) -> None:
        """Rows ``keep`` (batch positions) stay; the others have finished."""
        batch, index = self.b, None
        if self.cfg.lookahead == "tree":
            self.tree.select(keep, cache=False)  # batch.drop selects the cache
        else:  # the cache holds k copies of each row
            index = (keep[:, None] * self.k + torch.arange(self.k, device=batch.device)).flatten()
        batch.drop(keep.tolist(), index)

    def run(self) -> None:
        """The shared step loop (:func:`decoding.common.run_steps`); the candidate pass is the forward."""
        batch = self.b
        rows = LiveRows(len(batch.rows), self.gen.max_new_tokens, batch.pad, batch.device)
        run_steps(rows, self.stop, self.gen.max_new_tokens, lambda step: self.step(), self.select)
        batch.tokens = rows.outputs()


# --------------------------------------------------------------------------------------------- blockwise


class _Blockwise(_Run):
    """Blockwise CD over one `_Batch`: K sampled blocks of M tokens per live row, keep the best by V."""

    def block(self) -> None:
        cfg, gen, batch, K = self.cfg, self.gen, self.b, self.cfg.num_blocks
        b, device = len(batch.rows), batch.device
        done = len(batch.tokens[batch.rows[0]])  # live rows always carry whole blocks: equal lengths
        steps = min(cfg.block_size, gen.max_new_tokens - done)
        batch.cache.batch_repeat_interleave(K)
        mask, logits = batch.mask.repeat_interleave(K, 0), batch.logits.repeat_interleave(K, 0)
        n = b * K
        copies = [list(batch.tokens[i]) for i in batch.rows for _ in range(K)]
        alive = torch.ones(n, dtype=torch.bool, device=device)
        ended = [False] * n
        last_h = None
        rngs = [self.rngs[i] for i in batch.rows]
        for _ in range(steps):
            probs = filter_logits(logits, gen.temperature, gen.top_k, gen.top_p).softmax(-1)
            tok = sample_rows(probs, row_uniforms(rngs, K, device))  # K draws per prompt, prompt-major
            tok = torch.where(alive, tok, torch.zeros_like(tok))  # finished copies feed a masked dummy
            mask = torch.cat([mask, alive[:, None].to(mask.dtype)], dim=-1)
            h = final_hidden(self.model, tok[:, None], mask, mask.sum(-1, keepdim=True) - 1, batch.cache)[
                :, 0
            ]
            self.cost.lm_tokens += int(alive.sum())
            self.cost.lm_calls += 1
            last_h = h if last_h is None else torch.where(alive[:, None], h, last_h)
            logits = batch.lm_head(h)
            for i, t in enumerate(tok.tolist()):
                if not ended[i]:
                    copies[i].append(t)
                    ended[i] = t in self.eos or self.stop.hits_stop_string(copies[i])
            alive = torch.tensor([not e for e in ended], device=device)
            if not alive.any():
                break
        values = self.head(last_h.float()).view(b, K)
        self.value_evals += n
        sel = torch.arange(b, device=device) * K + values.argmax(dim=-1)
        batch.cache.batch_select_indices(sel)
        batch.mask, batch.logits = mask[sel], logits[sel]
        keep = []
        for j, i in enumerate(sel.tolist()):
            batch.tokens[batch.rows[j]] = copies[i]
            if not (ended[i] or len(copies[i]) >= gen.max_new_tokens):
                keep.append(j)
        if len(keep) < b:
            batch.drop(keep)

    def run(self) -> None:
        while self.b.rows:
            self.block()


# --------------------------------------------------------------------------------------------- entry point


def controlled_decode(
    model,
    tokenizer,
    prompts: Sequence[str],
    value_head=None,
    config: CDConfig | None = None,
    generation: GenerationConfig | None = None,
) -> DecodeResult:
    """Decode `prompts` with tokenwise or blockwise CD.

    Args:
        model: HF causal LM (frozen; eval mode).
        tokenizer: its tokenizer (prompts are encoded with its default special tokens, left-padded).
        prompts: list of prompt strings.
        value_head: a `ValueHead` on `model`'s final hidden states; may be None for tokenwise with lam = 0.
        config: `CDConfig` (mode, lam, k, blocks, lookahead).
        generation: `GenerationConfig`: max_new_tokens, stop strings, EOS ids, seed, ignore_eos; for
            blockwise also the base sampler (temperature > 0, top_p, top_k).

    Returns:
        `DecodeResult`: one text and id list per prompt, the `Cost`, and `meta` with the resolved
        config, `value_evals` (value-head calls) and `new_tokens`.
    """
    cfg = config or CDConfig()
    gen = generation or GenerationConfig()
    if value_head is None and (cfg.mode == "blockwise" or cfg.lam != 0):
        raise ValueError("controlled_decode: a value_head is required unless mode='tokenwise' and lam=0")
    if cfg.mode == "blockwise" and gen.greedy:
        raise ValueError("blockwise CD samples its blocks from the base: generation.temperature must be > 0")
    lookahead_reason = None
    if cfg.lookahead == "auto":
        from stackalign.decoding.rm_cache import tree_mask_unsupported

        lookahead_reason = tree_mask_unsupported(model)
        cfg = replace(cfg, lookahead="tree" if lookahead_reason is None else "repeat")
    device = model_device(model)
    if value_head is not None:
        hidden = model.config.get_text_config().hidden_size
        if value_head.config.hidden_size != hidden:
            raise ValueError(
                f"value head hidden_size={value_head.config.hidden_size} does not match the LM's {hidden}"
            )
        value_head = value_head.to(device).eval()
    prompts = list(prompts) if not isinstance(prompts, str) else prompts
    ids = encode_prompts(tokenizer, prompts, max_new_tokens=gen.max_new_tokens, models=[model])
    stop = StopChecker(tokenizer, resolve_eos_ids(tokenizer, model, gen), gen.stop_strings, gen.ignore_eos)
    pad = pad_id_of(tokenizer)
    rngs = prompt_generators(prompts, gen.seed, device, salt=f"cd-{cfg.mode}")
    run_cls = _Tokenwise if cfg.mode == "tokenwise" else _Blockwise
    cost = Cost()
    texts: list[str] = []
    token_ids: list[list[int]] = []
    value_evals = 0
    # inference_mode (not just no_grad): no view/version tracking on the per-step tensor ops, ~10% faster
    # on small models. Everything created inside stays internal; the head was moved to the device above.
    with Timer(cost, device), torch.inference_mode():
        for s in range(0, len(prompts), cfg.batch_size):
            batch = _Batch(model, ids[s : s + cfg.batch_size], pad, cost)
            run = run_cls(batch, value_head, cfg, gen, stop, rngs[s : s + cfg.batch_size], cost)
            run.run()
            value_evals += run.value_evals
            for toks in batch.tokens:
                out_ids, text = stop.finalize(toks)
                token_ids.append(out_ids)
                texts.append(text)
    meta = {
        "decoder": f"cd_{cfg.mode}",
        "cd": asdict(cfg),
        "lookahead_reason": lookahead_reason,
        "generation": gen.to_dict(),
        "value_evals": value_evals,
        "new_tokens": sum(len(t) for t in token_ids),
    }
    return DecodeResult(prompts, texts, token_ids, cost, meta)

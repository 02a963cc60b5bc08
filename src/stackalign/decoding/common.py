"""Pieces every decoder shares: cost counters, the generation config, stopping, padding, token samplers.

Conventions used across ``stackalign.decoding``:

* Prompts are strings; the policy sees ``tokenizer(prompt)`` ids (the tokenizer's default special tokens),
  left-padded into a batch. Position ids are ``cumsum(attention_mask) - 1`` so left padding never shifts
  absolute position embeddings (GPT-2) and batch results equal per-prompt results.
* A row ends at an EOS / end-of-turn id or when its decoded response contains a stop string. The EOS id
  stays in the returned token ids (as in HF ``generate``) but not in the text; a stop string and anything
  after it are trimmed from the text (the ids keep the token that completed it).
* Randomness is per prompt: each prompt gets its own ``torch.Generator`` seeded from ``(seed, prompt)``,
  so a prompt's samples do not depend on which other prompts share its batch.
"""

from __future__ import annotations

import hashlib
import inspect
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from stackalign.generation import GenerationConfig, SamplingSettings  # noqa: F401  (re-exported)

Tensor = torch.Tensor

# End-of-turn markers of common chat models; used as extra EOS ids when the tokenizer knows them.
END_OF_TURN_TOKENS = ("<|im_end|>", "<|eot_id|>", "<|end_of_turn|>", "<end_of_turn>", "<|endoftext|>", "</s>")


# ---------------------------------------------------------------------------------------------------------
# Cost accounting
# ---------------------------------------------------------------------------------------------------------
@dataclass
class Cost:
    """What a decoder spent. ``lm_tokens``/``rm_tokens``: non-padding tokens fed through the policy / reward
    model (prefill included); ``lm_calls``/``rm_calls``: forward passes; ``seconds``: wall-clock."""

    lm_tokens: int = 0
    rm_tokens: int = 0
    seconds: float = 0.0
    lm_calls: int = 0
    rm_calls: int = 0

    def __add__(self, other: Cost) -> Cost:
        return Cost(
            self.lm_tokens + other.lm_tokens,
            self.rm_tokens + other.rm_tokens,
            self.seconds + other.seconds,
            self.lm_calls + other.lm_calls,
            self.rm_calls + other.rm_calls,
        )

    def merge(self, other: Cost) -> Cost:
        """Add ``other`` into ``self`` in place; returns ``self``."""
        self.lm_tokens += other.lm_tokens
        self.rm_tokens += other.rm_tokens
        self.seconds += other.seconds
        self.lm_calls += other.lm_calls
        self.rm_calls += other.rm_calls
        return self

    def per_prompt(self, n_prompts: int) -> dict[str, float]:
        n = max(int(n_prompts), 1)
        return {
            "seconds_per_prompt": self.seconds / n,
            "lm_tokens_per_prompt": self.lm_tokens / n,
            "rm_tokens_per_prompt": self.rm_tokens / n,
        }

    def to_dict(self) -> dict[str, float]:
        return asdict(self)


class Timer:
    """``with Timer(cost, device):`` adds the block's wall-clock seconds to ``cost.seconds``.

    Synchronises CUDA before reading the clock so queued kernels are counted."""

    def __init__(self, cost: Cost, device: Any = None):
        self.cost = cost
        self.cuda = device is not None and torch.device(device).type == "cuda"

    def __enter__(self) -> Timer:
        if self.cuda:
            torch.cuda.synchronize()
        self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc) -> None:
        if self.cuda:
            torch.cuda.synchronize()
        self.cost.seconds += time.perf_counter() - self.t0


# ---------------------------------------------------------------------------------------------------------
# Generation config
# ---------------------------------------------------------------------------------------------------------
def resolve_eos_ids(tokenizer: Any, model: Any = None, config: GenerationConfig | None = None) -> list[int]:
    """The ids that end a row: ``config.eos_token_ids`` if given, else tokenizer EOS + generation-config EOS
    + known end-of-turn tokens present in the vocabulary. Sorted, de-duplicated."""
    if config is not None and config.eos_token_ids is not None:
        return sorted(set(config.eos_token_ids))
    ids: set[int] = set()
    eos = getattr(tokenizer, "eos_token_id", None)
    if eos is not None:
        ids.update(eos if isinstance(eos, list | tuple) else [eos])
    gen = getattr(model, "generation_config", None) if model is not None else None
    geos = getattr(gen, "eos_token_id", None) if gen is not None else None
    if geos is not None:
        ids.update(geos if isinstance(geos, list | tuple) else [geos])
    vocab = tokenizer.get_vocab() if hasattr(tokenizer, "get_vocab") else {}
    for tok in END_OF_TURN_TOKENS:
        if tok in vocab:
            ids.add(int(vocab[tok]))
    return sorted(i for i in ids if i is not None and i >= 0)


# ---------------------------------------------------------------------------------------------------------
# Prompts, padding, positions
# ---------------------------------------------------------------------------------------------------------
def max_positions(model: Any) -> int | None:
    """The model's maximum sequence length, if its config states one."""
    cfg = getattr(model, "config", None)
    for name in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
        v = getattr(cfg, name, None)
        if isinstance(v, int) and 0 < v < 10_000_000:
            return v
    return None


def encode_prompts(
    tokenizer: Any,
    prompts: Sequence[str],
    *,
    max_new_tokens: int = 0,
    models: Iterable[Any] = (),
) -> list[list[int]]:
    """Token ids of each prompt, validated: prompts must be non-empty strings that fit, together with
    ``max_new_tokens`` (plus one candidate token), in every model of ``models``. Errors name the prompt."""
    if isinstance(prompts, str):
        raise ValueError("prompts must be a list of strings, not a single string")
    prompts = list(prompts)
    if not prompts:
        raise ValueError("prompts: the list is empty")
    limits = [(type(m).__name__, max_positions(m)) for m in models if m is not None]
    out = []
    for i, p in enumerate(prompts):
        if not isinstance(p, str):
            raise ValueError(f"prompt {i} is a {type(p).__name__}, not a string")
        if not p.strip():
            raise ValueError(f"prompt {i} is empty")
        ids = tokenizer(p)["input_ids"]
        if not ids:
            raise ValueError(f"prompt {i} tokenizes to zero tokens")
        for name, limit in limits:
            if limit is not None and len(ids) + max_new_tokens + 1 > limit:
                raise ValueError(
                    f"prompt {i} is too long: {len(ids)} tokens + {max_new_tokens} new tokens exceeds the "
                    f"{limit}-token context of {name}; shorten the prompt or lower max_new_tokens"
                )
        out.append(list(ids))
    return out


def left_pad(seqs: Sequence[Sequence[int]], pad_id: int, device: Any = "cpu") -> tuple[Tensor, Tensor]:
    """Left-pad id lists into ``(input_ids [B, T], attention_mask [B, T])`` (long tensors on ``device``)."""
    if not seqs or any(len(s) == 0 for s in seqs):
        raise ValueError("left_pad: every sequence must have at least one token")
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), int(pad_id), dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, width - len(s) :] = torch.as_tensor(list(s), dtype=torch.long)
        mask[i, width - len(s) :] = 1
    return ids.to(device), mask.to(device)


def position_ids(attention_mask: Tensor, n_new: int | None = None) -> Tensor:
    """``cumsum(mask) - 1`` clamped at 0 (left pads get 0); with ``n_new`` only the last ``n_new`` columns."""
    pos = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
    return pos if n_new is None else pos[:, -n_new:]


def pad_id_of(tokenizer: Any) -> int:
    pid = getattr(tokenizer, "pad_token_id", None)
    if pid is None:
        pid = getattr(tokenizer, "eos_token_id", None)
    if pid is None:
        raise ValueError("the tokenizer has neither a pad token nor an EOS token; set tokenizer.pad_token")
    return int(pid)


def model_device(model: Any) -> torch.device:
    return next(model.parameters()).device


_SIG_CACHE: dict[Any, frozenset] = {}


def forward_params(module: Any) -> frozenset:
    """Names of ``module.forward``'s parameters (cached per class). A LoRA model (``peft``) or an adapter view
    passes keyword arguments through to the model it wraps: that model's parameters."""
    base = getattr(module, "get_base_model", None)
    if callable(base):
        module = base()
    key = type(module)
    if key not in _SIG_CACHE:
        try:
            _SIG_CACHE[key] = frozenset(inspect.signature(module.forward).parameters)
        except (TypeError, ValueError):
            _SIG_CACHE[key] = frozenset()
    return _SIG_CACHE[key]


def cache_kwarg(module: Any) -> str:
    """The KV-cache keyword of ``module.forward``: ``cache`` (transformers >= 5.x) or ``past_key_values``."""
    return "cache" if "cache" in forward_params(module) else "past_key_values"


def output_cache(out: Any) -> Any:
    """The KV cache of a model output, under either name."""
    c = getattr(out, "cache", None)
    return c if c is not None else getattr(out, "past_key_values", None)


# ---------------------------------------------------------------------------------------------------------
# Stopping
# ---------------------------------------------------------------------------------------------------------
class LiveRows:
    """Bookkeeping of a batched decode whose rows finish at different steps.

    ``buf`` [R, T] collects each original row's generated ids, ``lengths`` [R] their lengths (T unless a row
    stopped early), and ``active`` the original row of each row still in the shrinking batch."""

    def __init__(self, n_rows: int, max_new_tokens: int, pad: int, device: Any):
        self.buf = torch.full((n_rows, max_new_tokens), pad, dtype=torch.long, device=device)
        self.lengths = torch.full((n_rows,), max_new_tokens, dtype=torch.long, device=device)
        self.active = torch.arange(n_rows, device=device)
        self._full = True  # no row has left the batch yet: write columns without indexing

    def record(self, tok: Tensor, step: int) -> None:
        if self._full:
            self.buf[:, step] = tok
        else:
            self.buf[self.active, step] = tok

    def drop_finished(self, done: Tensor | None, step: int) -> Tensor | None:
        """Rows flagged in ``done`` end at ``step``. Returns the batch indices to keep (empty when every row
        has ended), or None when no row ended, so the caller selects its caches only when needed."""
        if done is None or not bool(done.any()):
            return None
        self.lengths[self.active[done]] = step + 1
        self._full = False
        keep = (~done).nonzero().squeeze(-1)
        self.active = self.active[keep]
        return keep

    def outputs(self) -> list[list[int]]:
        return [row[:L] for row, L in zip(self.buf.tolist(), self.lengths.tolist())]


def run_steps(
    rows: LiveRows,
    stop: StopChecker,
    max_new_tokens: int,
    choose: Callable[[int], Tensor],
    select: Callable[[Tensor], None],
    feed: Callable[[Tensor], None] | None = None,
) -> None:
    """The step loop the decoders share (sampling, ARGS, tokenwise CD).

    Each step: ``choose(step)`` returns the token of every live row ([R'] long); the loop records it in
    ``rows``, ends rows at EOS / a stop string (:meth:`StopChecker.finished`), hands the surviving batch
    indices to ``select(keep)`` when some rows ended (the decoder drops them from every cache it holds, so
    caches stay aligned with ``rows.active``), and calls ``feed(tokens)`` with the surviving rows' tokens
    (the decoder's next forward; None when ``choose`` already ran it). Stops after ``max_new_tokens``
    steps or when no row is left."""
    for step in range(max_new_tokens):
        tok = choose(step)
        rows.record(tok, step)
        if step == max_new_tokens - 1:
            break
        keep = rows.drop_finished(stop.finished(rows.buf, rows.active, tok, step), step)
        if keep is not None:
            if keep.numel() == 0:
                break
            select(keep)
            tok = tok[keep]
        if feed is not None:
            feed(tok)


class StopChecker:
    """Decides when a row is finished and cleans its output.

    ``is_stop_token(ids)`` marks EOS ids (vectorised); ``hits_stop_string(ids)`` decodes only the tail of a
    row's response (enough tokens to contain the longest stop string) and checks for any stop string.
    ``finalize(ids)`` returns ``(ids, text)``: text decoded without special tokens and cut at the first stop
    string; ids cut after the first EOS / the token that completed the first stop string."""

    def __init__(
        self, tokenizer: Any, eos_ids: Sequence[int], stop_strings: Sequence[str] = (), ignore: bool = False
    ):
        self.tokenizer = tokenizer
        self.ignore = bool(ignore)
        self.eos_ids = sorted(set(int(i) for i in eos_ids))
        self.stop_strings = tuple(stop_strings)
        # A token decodes to >= 1 character except byte-fallback pieces; a margin covers those.
        self._tail = (max((len(s) for s in self.stop_strings), default=0)) + 4
        self._eos_t: dict[Any, Tensor] = {}
        try:  # ids from len(tokenizer) on decode to '' without a word (a model whose tokenizer is another's)
            self.n_vocab: int | None = len(tokenizer)
        except TypeError:
            self.n_vocab = None
        self.unknown_ids = 0  # generated ids the tokenizer does not know, over every finalized row

    def eos_mask(self, tokens: Tensor) -> Tensor:
        """Bool tensor: which of ``tokens`` are EOS ids (all False when ignoring EOS)."""
        if self.ignore or not self.eos_ids:
            return torch.zeros_like(tokens, dtype=torch.bool)
        t = self._eos_t.get(tokens.device)
        if t is None:
            t = self._eos_t[tokens.device] = torch.tensor(self.eos_ids, device=tokens.device)
        return torch.isin(tokens, t)

    def finished(self, buf: Tensor, active: Tensor, tok: Tensor, step: int) -> Tensor | None:
        """Which active rows end at this step (EOS token or a stop string in the text so far), or None when
        no check applies. ``buf`` [B, T] holds every row's generated ids; ``active`` the row index of each
        entry of ``tok`` (the tokens just generated)."""
        done = None if self.ignore or not self.eos_ids else self.eos_mask(tok)
        if not self.ignore and self.stop_strings:
            flags = [self.hits_stop_string(buf[r, : step + 1].tolist()) for r in active.tolist()]
            hit = torch.tensor(flags, device=tok.device)
            done = hit if done is None else done | hit
        return done

    def hits_stop_string(self, ids: Sequence[int]) -> bool:
        if self.ignore or not self.stop_strings:
            return False
        tail = self.tokenizer.decode(list(ids[-self._tail :]), skip_special_tokens=True)
        return any(s in tail for s in self.stop_strings)

    def finalize(self, ids: Sequence[int]) -> tuple[list[int], str]:
        ids = [int(i) for i in ids]
        self._check_known(ids)
        if not self.ignore:
            eos = set(self.eos_ids)
            for j, t in enumerate(ids):
                if t in eos:
                    ids = ids[: j + 1]
                    break
        text = self.tokenizer.decode(ids, skip_special_tokens=True)
        if not self.ignore and self.stop_strings:
            cut = min((text.find(s) for s in self.stop_strings if s in text), default=-1)
            if cut >= 0:
                text = text[:cut]
                # keep ids up to the token whose decoding first contains a stop string
                for j in range(1, len(ids) + 1):
                    if any(
                        s in self.tokenizer.decode(ids[:j], skip_special_tokens=True)
                        for s in self.stop_strings
                    ):
                        ids = ids[:j]
                        break
        return ids, text

    def _check_known(self, ids: list[int]) -> None:
        """Warn (once per checker) when the model generated ids its tokenizer does not have: they decode to ''
        silently, so a policy loaded with another model's tokenizer would otherwise yield empty responses."""
        if self.n_vocab is None or not ids or max(ids) < self.n_vocab:
            return
        unknown = [i for i in ids if i >= self.n_vocab]
        first = self.unknown_ids == 0
        self.unknown_ids += len(unknown)
        if first:
            import warnings

            warnings.warn(
                f"the model generated token id {unknown[0]} ({len(unknown)} of this response's {len(ids)} ids), "
                f"but its tokenizer has only {self.n_vocab} tokens: such ids decode to '' (the text loses them). "
                "Does the tokenizer belong to this model? A model whose embedding table is padded beyond its "
                "tokenizer should give those ids no probability; count so far: StopChecker.unknown_ids",
                stacklevel=3,
            )


# ---------------------------------------------------------------------------------------------------------
# Seeds and token sampling
# ---------------------------------------------------------------------------------------------------------
def prompt_seed(seed: int, prompt: str, salt: str = "") -> int:
    """A 63-bit seed from (seed, prompt, salt): each prompt's randomness is independent of its batch."""
    h = hashlib.sha256(f"{int(seed)}\x00{salt}\x00{prompt}".encode()).digest()
    return int.from_bytes(h[:8], "little") & ((1 << 63) - 1)


def prompt_generators(
    prompts: Sequence[str], seed: int, device: Any, salt: str = ""
) -> list[torch.Generator]:
    gens = []
    for p in prompts:
        g = torch.Generator(device=device)
        g.manual_seed(prompt_seed(seed, p, salt))
        gens.append(g)
    return gens


def filter_logits(logits: Tensor, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0) -> Tensor:
    """Temperature, then top-k, then top-p (nucleus), as in HF's warpers. Filtered entries become -inf.

    top-p keeps a token when the probability mass of the tokens ranked above it is < top_p (the most
    likely token is always kept)."""
    logits = logits.float()
    if temperature not in (0, 1):
        logits = logits / temperature
    if top_k and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        probs = sorted_logits.softmax(-1)
        mass_before = probs.cumsum(-1) - probs
        drop_sorted = mass_before >= top_p
        drop_sorted[..., 0] = False
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return logits


def sample_rows(probs: Tensor, uniforms: Tensor) -> Tensor:
    """Inverse-CDF sampling: one index per row of ``probs`` [R, V] (unnormalised is fine) from ``uniforms``
    [R] in [0, 1). Zero-probability entries are never picked."""
    cdf = probs.double().cumsum(-1)
    target = uniforms.double().unsqueeze(-1) * cdf[..., -1:]
    idx = torch.searchsorted(cdf, target, right=True).squeeze(-1)
    return idx.clamp(max=probs.shape[-1] - 1)


def row_uniforms(gens: Sequence[torch.Generator], counts: int, device: Any) -> Tensor:
    """``[len(gens) * counts]`` uniforms: ``counts`` draws from each generator, grouped by generator."""
    return torch.cat([torch.rand(counts, generator=g, device=device) for g in gens])


def as_reward(rm: Any) -> Any:
    """A RewardModel / CallableReward as is; a bare ``fn(prompt, response) -> float`` wrapped in a
    :class:`stackalign.models.CallableReward`."""
    if callable(rm) and hasattr(rm, "tokenizer"):
        return rm
    if callable(rm):
        from stackalign.models import CallableReward

        return CallableReward(rm)
    raise ValueError(f"rm: expected a RewardModel or a callable fn(prompt, response) -> float, got {rm!r}")


@dataclass
class DecodeResult:
    """Output of a decoder over P prompts: ``texts[i]`` / ``token_ids[i]`` is prompt i's response; ``cost``
    totals the run; ``meta`` records the decoder's resolved configuration (for run configs)."""

    prompts: list[str]
    texts: list[str]
    token_ids: list[list[int]]
    cost: Cost = field(default_factory=Cost)
    meta: dict = field(default_factory=dict)

"""N samples per prompt with a SHARED PROMPT PREFILL.

The prompt batch is prefilled once; the KV cache is then repeated N times per prompt with
``DynamicCache.batch_repeat_interleave(N)`` and the N continuations are sampled together in a plain loop
(temperature / top-k / top-p, EOS and stop strings end a row, finished rows leave the batch). HF
``generate(num_return_sequences=N)`` instead copies ``input_ids`` N times *before* the prefill, so it
computes every prompt N times; :func:`hf_num_return_sequences` runs that for comparison
(``stackalign bench sample``).

One sample set serves the Monte Carlo threshold (``threshold.py``), Best-of-N (``bon.py``) and CD value
training data.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from stackalign.decoding.common import (
    Cost,
    GenerationConfig,
    LiveRows,
    StopChecker,
    Timer,
    cache_kwarg,
    encode_prompts,
    filter_logits,
    forward_params,
    left_pad,
    model_device,
    output_cache,
    pad_id_of,
    position_ids,
    prompt_generators,
    resolve_eos_ids,
    row_uniforms,
    run_steps,
    sample_rows,
)

Tensor = torch.Tensor

__all__ = ["SampleResult", "sample", "greedy", "hf_num_return_sequences", "lm_forward"]


@dataclass
class SampleResult:
    """``texts[i][j]`` / ``token_ids[i][j]``: sample j of prompt i (P prompts x n samples)."""

    prompts: list[str]
    texts: list[list[str]]
    token_ids: list[list[list[int]]]
    cost: Cost = field(default_factory=Cost)
    config: dict = field(default_factory=dict)

    @property
    def n(self) -> int:
        return len(self.texts[0]) if self.texts else 0

    def flat(self) -> tuple[list[str], list[str]]:
        """``(prompts, responses)`` flattened prompt-major, ready for a reward model call."""
        ps = [p for p, row in zip(self.prompts, self.texts) for _ in row]
        rs = [t for row in self.texts for t in row]
        return ps, rs


def lm_forward(
    model: Any, input_ids: Tensor, attention_mask: Tensor, cache: Any = None
) -> tuple[Tensor, Any]:
    """One cached causal-LM forward. ``attention_mask`` covers cached + new tokens. Returns the last
    position's logits ``[B, V]`` (float32) and the cache."""
    from transformers import DynamicCache

    params = forward_params(model)
    kwargs: dict[str, Any] = {"attention_mask": attention_mask, "use_cache": True}
    kwargs[cache_kwarg(model)] = cache if cache is not None else DynamicCache(config=model.config)
    if "position_ids" in params:
        kwargs["position_ids"] = position_ids(attention_mask, input_ids.shape[1])
    if "logits_to_keep" in params:
        kwargs["logits_to_keep"] = 1
    out = model(input_ids=input_ids, **kwargs)
    return out.logits[:, -1, :].float(), output_cache(out)


@torch.no_grad()
def sample(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[str],
    n: int,
    config: GenerationConfig | None = None,
    *,
    batch_size: int | None = None,
    max_rows: int = 64,
    mixture: tuple[Any, float] | None = None,
) -> SampleResult:
    """``n`` responses per prompt with a shared prompt prefill.

    Args:
        model: a causal LM (HF ``AutoModelForCausalLM``).
        tokenizer: its tokenizer.
        prompts: P prompt strings.
        n: samples per prompt (>= 1).
        config: sampling settings; ``temperature=0`` is greedy.
        batch_size: prompts per prefill batch (default ``max(1, max_rows // n)``).
        max_rows: default cap on rows (prompts x n) decoded together.
        mixture: ``(reference, beta)``: sample from the token-level geometric mixture of ``model`` and a
            reference LM with the same tokenizer, π^β(y_t | ·) ∝ π(y_t | ·)^(1−β) · π_ref(y_t | ·)^β (the
            opponent of Nash-MD-PG, NLHF, arXiv 2312.00886); temperature and top-k/top-p apply to the mixture.

    Returns:
        :class:`SampleResult` with P x n texts and token ids, and the cost (LM tokens counts each prompt
        token once per prompt: the prefill is shared).
    """
    config = config or GenerationConfig()
    if not (isinstance(n, int) and n >= 1):
        raise ValueError(f"n: must be an integer >= 1, got {n!r}")
    if mixture is not None and not 0.0 <= float(mixture[1]) <= 1.0:
        raise ValueError(f"mixture: beta must be in [0, 1], got {mixture[1]!r}")
    prompts = list(prompts) if not isinstance(prompts, str) else prompts
    models = [model] if mixture is None else [model, mixture[0]]
    ids = encode_prompts(tokenizer, prompts, max_new_tokens=config.max_new_tokens, models=models)
    bs = batch_size or max(1, max_rows // n)
    if bs < 1:
        raise ValueError(f"batch_size: must be >= 1, got {bs}")
    device = model_device(model)
    stop = StopChecker(
        tokenizer, resolve_eos_ids(tokenizer, model, config), config.stop_strings, config.ignore_eos
    )
    pad = pad_id_of(tokenizer)
    cost = Cost()
    texts: list[list[str]] = []
    token_ids: list[list[list[int]]] = []
    with Timer(cost, device):
        for s in range(0, len(prompts), bs):
            rows = _sample_batch(
                model, prompts[s : s + bs], ids[s : s + bs], n, config, stop, pad, device, cost, mixture
            )
            for i in range(len(rows) // n):
                group = [stop.finalize(r) for r in rows[i * n : (i + 1) * n]]
                token_ids.append([g[0] for g in group])
                texts.append([g[1] for g in group])
    meta = {"n": n, "shared_prefill": True, **config.to_dict()}
    if mixture is not None:
        meta["mixture_beta"] = float(mixture[1])
    return SampleResult(prompts, texts, token_ids, cost, meta)


def _sample_batch(
    model: Any,
    prompts: list[str],
    ids: list[list[int]],
    n: int,
    config: GenerationConfig,
    stop: StopChecker,
    pad: int,
    device: Any,
    cost: Cost,
    mixture: tuple[Any, float] | None = None,
) -> list[list[int]]:
    """Decode one prompt batch; returns the raw generated ids of its P*n rows (prompt-major). With
    ``mixture``, the reference LM runs beside ``model`` on its own cache (see :func:`sample`)."""
    nets = [model] if mixture is None else [model, mixture[0]]
    input_ids, mask = left_pad(ids, pad, device)
    logits, caches = [], []
    for net in nets:  # the shared prefill
        lg, cache = lm_forward(net, input_ids, mask)
        cost.lm_tokens += int(mask.sum())
        cost.lm_calls += 1
        if n > 1:
            cache.batch_repeat_interleave(n)
            lg = lg.repeat_interleave(n, 0)
        logits.append(lg)
        caches.append(cache)
    if n > 1:
        mask = mask.repeat_interleave(n, 0)
    R = len(prompts) * n
    T = config.max_new_tokens
    gens = None if config.greedy else prompt_generators(prompts, config.seed, device, salt="sample")
    rows = LiveRows(R, T, pad, device)
    state = {"logits": logits, "mask": mask, "caches": caches}

    def next_logits() -> Tensor:
        if mixture is None:
            return state["logits"][0]
        beta = float(mixture[1])  # log π^β = (1 − β) log π + β log π_ref, up to a per-row constant
        own, ref = state["logits"]
        return (1.0 - beta) * own.log_softmax(-1) + beta * ref.log_softmax(-1)

    def choose(step: int) -> Tensor:
        logits = next_logits()
        if gens is None:
            return logits.argmax(-1)
        probs = filter_logits(logits, config.temperature, config.top_k, config.top_p).softmax(-1)
        # drawn for every row every step, finished or not: per-prompt streams stay aligned
        u = row_uniforms(gens, n, device)
        return sample_rows(probs, u[rows.active])

    def select(keep: Tensor) -> None:
        state["mask"] = state["mask"][keep]
        for cache in state["caches"]:
            cache.batch_select_indices(keep)

    def feed(tok: Tensor) -> None:
        mask = state["mask"]
        state["mask"] = mask = torch.cat([mask, mask.new_ones(mask.shape[0], 1)], dim=1)
        for i, net in enumerate(nets):
            state["logits"][i], state["caches"][i] = lm_forward(
                net, tok.unsqueeze(-1), mask, state["caches"][i]
            )
            cost.lm_tokens += int(rows.active.numel())
            cost.lm_calls += 1

    run_steps(rows, stop, T, choose, select, feed)
    return rows.outputs()


def greedy(
    model: Any, tokenizer: Any, prompts: Sequence[str], config: GenerationConfig | None = None, **kw
) -> SampleResult:
    """Plain greedy decoding (``sample`` with n=1, temperature=0)."""
    from dataclasses import replace

    config = replace(config or GenerationConfig(), temperature=0.0)
    return sample(model, tokenizer, prompts, 1, config, **kw)


@torch.no_grad()
def hf_num_return_sequences(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[str],
    n: int,
    config: GenerationConfig | None = None,
    *,
    batch_size: int | None = None,
    max_rows: int = 64,
) -> SampleResult:
    """Baseline: HF ``generate(num_return_sequences=n)``, which prefills every prompt n times.

    Same settings and stopping as :func:`sample` (stop strings are applied afterwards, when trimming the
    text); used by ``stackalign bench sample``. Not seeded per prompt (HF uses the global RNG, seeded with
    ``config.seed`` per batch)."""
    config = config or GenerationConfig()
    prompts = list(prompts)
    ids = encode_prompts(tokenizer, prompts, max_new_tokens=config.max_new_tokens, models=[model])
    device = model_device(model)
    eos = resolve_eos_ids(tokenizer, model, config)
    stop = StopChecker(tokenizer, eos, config.stop_strings, config.ignore_eos)
    pad = pad_id_of(tokenizer)
    bs = batch_size or max(1, max_rows // n)
    cost = Cost()
    texts, token_ids = [], []
    gen_kwargs: dict[str, Any] = dict(
        max_new_tokens=config.max_new_tokens,
        num_return_sequences=n,
        pad_token_id=pad,
        eos_token_id=eos or None,
        do_sample=not config.greedy,
    )
    if not config.greedy:
        gen_kwargs.update(temperature=config.temperature, top_p=config.top_p, top_k=config.top_k)  # 0 = off
    if config.ignore_eos:
        gen_kwargs["min_new_tokens"] = config.max_new_tokens
    with Timer(cost, device):
        for s in range(0, len(prompts), bs):
            torch.manual_seed(config.seed + s)
            input_ids, mask = left_pad(ids[s : s + bs], pad, device)
            out = model.generate(input_ids=input_ids, attention_mask=mask, **gen_kwargs)
            gen = out[:, input_ids.shape[1] :]
            cost.lm_tokens += int(mask.sum()) * n + int((gen != pad).sum())
            rows = gen.tolist()
            for i in range(len(rows) // n):
                group = [stop.finalize(r) for r in rows[i * n : (i + 1) * n]]
                token_ids.append([g[0] for g in group])
                texts.append([g[1] for g in group])
    return SampleResult(
        prompts, texts, token_ids, cost, {"n": n, "shared_prefill": False, **config.to_dict()}
    )

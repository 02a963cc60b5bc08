"""ARGS: reward-guided decoding (Khanov et al., ICLR 2024), with any shaping (SRS-ARGS = ARGS x SRS).

At every step, for every row:

1. one cached policy forward gives the next-token logits; take the top-k tokens, logits ``l_1..l_k``;
2. score each candidate ``prefix + token_j`` with the reward model: ``r_1..r_k``
   (see ``rm_cache.py`` for the ways: tree-masked RM cache, repeat-and-select, the official full
   recompute, the incremental text bridge for another tokenizer, full text level). Every scorer gives the
   rewards of one input rule (models/reward.py), so ARGS is one decoder whichever it uses;
3. shape the rewards: ``s = shaper(r, weights=softmax(l), threshold=m)``. With no per-prompt threshold the
   shaper computes its threshold over the k candidates, weighted by their base probabilities (the
   ``official-args`` preset); with ``thresholds=`` (one per prompt, e.g. a Monte Carlo estimate from
   :mod:`stackalign.decoding.mc`) it uses that m instead. No shaper = vanilla ARGS (raw r);
4. fuse ``l_j + w * s_j`` with the reward weight ``w`` (= 1/beta, beta the follower's KL strength); greedy
   takes the argmax, stochastic samples from ``softmax(fused / temperature)`` over the k candidates;
5. the row ends at an EOS / end-of-turn id or a stop string (unless ``ignore_eos``); finished rows leave the
   batch (their caches are dropped with ``batch_select_indices``). Steps 1-5 run on the step loop every
   decoder shares (:func:`stackalign.decoding.common.run_steps`).

Prompts are decoded in left-padded batches; results do not depend on the batch (positions come from the
attention mask, randomness is per prompt).
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch

from stackalign.decoding.common import (
    Cost,
    DecodeResult,
    GenerationConfig,
    LiveRows,
    StopChecker,
    Timer,
    as_reward,
    encode_prompts,
    left_pad,
    model_device,
    pad_id_of,
    prompt_generators,
    resolve_eos_ids,
    row_uniforms,
    run_steps,
    sample_rows,
)
from stackalign.decoding.rm_cache import (
    BridgeScorer,
    FullRecomputeScorer,
    RepeatScorer,
    Scorer,
    TextScorer,
    TreeScorer,
    cacheable_rm_problem,
    supports_incremental,
    tree_mask_unsupported,
)
from stackalign.decoding.sampling import lm_forward
from stackalign.shaping.resolve import describe_shaper, resolve_shaper
from stackalign.shaping.shapers import Shaper
from stackalign.shaping.threshold import ALL_PAIRS_MAX_N

Tensor = torch.Tensor

__all__ = [
    "ARGSConfig",
    "args_generate",
    "bridge_unsupported",
    "make_scorer",
    "shape_on_host",
    "shapes_on_host",
]

RM_MODES = ("auto", "fast", "reference", "bridge", "text")
RM_CACHES = ("auto", "tree", "repeat")
THRESHOLD_SOURCES = ("step", "mc", "predicted")


@dataclass(frozen=True)
class ARGSConfig:
    """ARGS settings (generation length, stopping and seed come from :class:`GenerationConfig`).

    Each field is documented where it is declared; the help texts feed `stackalign recipe schema`."""

    k: int = field(default=10, metadata={"help": "candidates per step (top-k of the policy's logits)"})
    w: float | None = field(
        default=None,
        metadata={
            "help": "reward weight w = 1/beta (beta: the follower's KL strength). None = 1/the shaper's beta "
            "when it has one (so SRS's gamma and the fusion weight agree), else 0.5 (the official value)"
        },
    )
    mode: Literal["greedy", "stochastic"] = field(
        default="greedy",
        metadata={
            "help": "greedy (argmax of logit + w*reward) or stochastic (sample from its softmax/temperature)"
        },
    )
    temperature: float = field(
        default=0.7, metadata={"help": "temperature of the stochastic mode (ARGS: 0.7)"}
    )
    rm_mode: Literal["auto", "fast", "reference", "bridge", "text"] = field(
        default="auto",
        metadata={
            "help": "fast (incremental reward-model cache; needs a shared tokenizer), reference (the official "
            "algorithm: full RM recompute of every candidate each step), bridge (a reward model with any "
            "tokenizer: its ids of the committed text kept, only a tail window re-encoded, candidates scored "
            "on its cache), text (score every candidate's full input), or auto (fast when the tokenizer is "
            "shared, else bridge when the reward model allows it, else text with a warning)"
        },
    )
    rm_cache: Literal["auto", "tree", "repeat"] = field(
        default="auto",
        metadata={
            "help": "fast-mode strategy: tree (4D tree mask over one cache), repeat (repeat-and-select), or auto "
            "(tree unless the model's attention cannot take custom masks or has sliding-window layers; the run "
            "records why)"
        },
    )
    reference_chunk_size: int = field(
        default=5, metadata={"help": "candidates per RM forward in reference mode (the official code: 5)"}
    )
    batch_size: int = field(default=8, metadata={"help": "prompts decoded together"})
    text_batch_size: int = field(default=32, metadata={"help": "reward-model batch size in text mode"})
    threshold: Literal["step", "mc", "predicted"] = field(
        default="step",
        metadata={
            "help": "where a threshold shaping (srs, hard) gets m: step (per decoding step from the k "
            "candidates weighted by their base probabilities, the official code), mc (per prompt from "
            "mc_samples Monte Carlo base samples, the paper's theory), or predicted (per prompt from an "
            "amortised predictor m^(x) on the policy's prompt state, trained on training prompts' MC thresholds)"
        },
    )
    mc_samples: int = field(
        default=16, metadata={"help": "base samples per prompt of a Monte Carlo threshold (threshold: mc)"}
    )

    def __post_init__(self) -> None:
        if not (isinstance(self.k, int) and self.k >= 1):
            raise ValueError(f"k: must be an integer >= 1, got {self.k!r}")
        if self.w is not None and not (isinstance(self.w, int | float) and self.w > 0):
            raise ValueError(f"w: must be > 0 (the reward weight 1/beta), got {self.w!r}")
        if self.mode not in ("greedy", "stochastic"):
            raise ValueError(f"mode: expected 'greedy' or 'stochastic', got {self.mode!r}")
        if not self.temperature > 0:
            raise ValueError(f"temperature: must be > 0, got {self.temperature!r}")
        if self.rm_mode not in RM_MODES:
            raise ValueError(f"rm_mode: expected one of {RM_MODES}, got {self.rm_mode!r}")
        if self.rm_cache not in RM_CACHES:
            raise ValueError(f"rm_cache: expected one of {RM_CACHES}, got {self.rm_cache!r}")
        if self.threshold not in THRESHOLD_SOURCES:
            raise ValueError(f"threshold: expected one of {THRESHOLD_SOURCES}, got {self.threshold!r}")
        for name in ("reference_chunk_size", "batch_size", "text_batch_size", "mc_samples"):
            v = getattr(self, name)
            if not (isinstance(v, int) and v >= 1):
                raise ValueError(f"{name}: must be an integer >= 1, got {v!r}")


def shapes_on_host(shaper: Any, k: int) -> bool:
    """Whether ARGS shapes its k candidates per step on the host (:func:`shape_on_host`): a stock
    :class:`Shaper` has the same formulas for Python floats (``apply_row``) and NumPy arrays (``apply``), whose
    small operations cost a fraction of a torch op's between two model forwards, and on a GPU ~30 kernel
    launches become one small copy each way. Other shaping callables stay on the device."""
    return type(shaper) is Shaper and (k <= ALL_PAIRS_MAX_N or not shaper.uses_threshold)


# Up to this many candidates per step (rows x k) the host shapes row by row in Python floats (Shaper.apply_row);
# above, in NumPy arrays (Shaper.apply). Measured in the ARGS loop on the default world (docs/srs-ci.md): at
# batch 1 the row path adds ~15 us per step, the array path ~110 us (~40 small array operations, each slower
# between two model forwards than in a micro-benchmark); the row path grows with the batch, the array path
# barely: they cross near 16 rows of 10.
ROW_PATH_MAX = 160


def shape_on_host(
    shaper: Shaper, top_logits: Tensor, rewards: Tensor, thresholds: np.ndarray | None = None
) -> tuple[Tensor, bool]:
    """Shaped rewards [R, k] of the candidates (weights = softmax of their logits, as on the device), returned
    on ``top_logits``' device and dtype, and whether every reward was finite (non-finite rewards are shaped as
    zeros: the caller raises). ``thresholds``: None (per-step m*) or one float64 per row. One copy to the host
    and one back; a few small rows go through :meth:`Shaper.apply_row`, larger batches through
    :meth:`Shaper.apply` on NumPy arrays (the same formulas)."""
    both = torch.stack((top_logits, rewards.to(top_logits.dtype))).cpu()
    if (shaper.uses_threshold or shaper.kind == "vanilla") and top_logits.numel() <= ROW_PATH_MAX:
        xs, rs = both.tolist()
        finite = all(math.isfinite(v) for row in rs for v in row)
        rows = []
        for i, (x, r) in enumerate(zip(xs, rs)):
            top = max(x)
            w = [math.exp(v - top) for v in x]  # the threshold does not depend on the weights' scale
            m = None if thresholds is None else float(thresholds[i])
            rows.append(shaper.apply_row(r if finite else [0.0] * len(r), w, m))
        return torch.tensor(rows, dtype=top_logits.dtype, device=top_logits.device), finite
    x, r = both.numpy().astype(np.float64)
    finite = bool(np.isfinite(r).all())
    if not finite:
        r = np.zeros_like(r)
    e = np.exp(x - x.max(-1, keepdims=True))
    shaped = shaper.apply(r, e / e.sum(-1, keepdims=True), thresholds).astype(np.float32)
    return torch.from_numpy(shaped).to(top_logits.device, top_logits.dtype), finite


def bridge_unsupported(rm: Any) -> str | None:
    """None if ``rm`` can score another tokenizer's text through the incremental bridge
    (:class:`BridgeScorer`), else why not."""
    why = cacheable_rm_problem(rm)
    if why is not None:
        return why
    if getattr(rm.tokenizer, "backend_tokenizer", None) is None:
        return "the reward model's tokenizer is not a fast (Rust) tokenizer"
    return tree_mask_unsupported(rm.model)


def make_scorer(policy_tokenizer: Any, rm: Any, config: ARGSConfig) -> Scorer:
    """The candidate scorer for ``config.rm_mode`` / ``config.rm_cache`` (see ``rm_cache.py``).

    The scorer's ``name`` (tree, repeat, reference, bridge or text) and ``reason`` (why an automatic choice
    fell back from the fastest scorer, None when it did not) are what a run records. ``auto`` picks the
    tree scorer when the reward model shares the policy's tokenizer, else the incremental text bridge, else
    text scoring (with a warning: it re-scores every candidate's full input each step)."""
    why_not = supports_incremental(policy_tokenizer, rm)
    mode = config.rm_mode
    reason = None  # why an automatic choice fell back from the fastest scorer (recorded in the run's meta)
    if mode == "auto":
        mode = "fast"
        if why_not is not None:
            why_no_bridge = bridge_unsupported(rm)
            mode = "bridge" if why_no_bridge is None else "text"
            reason = f"{mode} scoring: {why_not}"
            if why_no_bridge is not None:
                reason += f", and no text bridge: {why_no_bridge}"
    if mode in ("fast", "reference") and why_not is not None:
        raise ValueError(
            f"rm_mode={mode!r} scores token ids and needs the reward model to share the policy's tokenizer, "
            f"but {why_not}; use rm_mode='bridge' or 'text' (or 'auto')"
        )
    if mode == "bridge":
        why_no_bridge = bridge_unsupported(rm)
        if why_no_bridge is not None:
            raise ValueError(f"rm_mode='bridge' cannot score with this reward model: {why_no_bridge}")
        try:
            scorer: Scorer = BridgeScorer(rm, policy_tokenizer)
        except ValueError as e:
            if config.rm_mode != "auto":
                raise ValueError(f"rm_mode='bridge': {e}") from None
            mode, reason = "text", f"text scoring: {why_not}, and no text bridge: {e}"
    if mode == "text":
        scorer = TextScorer(rm, policy_tokenizer, config.text_batch_size)
        if config.rm_mode == "auto":
            warnings.warn(
                f"ARGS falls back to text scoring ({reason}): every candidate's full input is scored again "
                "each step, many times slower than the incremental scorers",
                stacklevel=3,
            )
    elif mode == "reference":
        scorer = FullRecomputeScorer(rm, config.reference_chunk_size)
    elif mode == "fast":
        strategy = config.rm_cache
        if strategy == "auto":
            why_not_tree = tree_mask_unsupported(rm.model)
            strategy = "tree" if why_not_tree is None else "repeat"
            reason = None if why_not_tree is None else f"repeat-and-select: {why_not_tree}"
        scorer = TreeScorer(rm) if strategy == "tree" else RepeatScorer(rm)
    scorer.reason = reason
    return scorer


@torch.no_grad()
def args_generate(
    policy: Any,
    tokenizer: Any,
    rm: Any,
    prompts: Sequence[str],
    config: ARGSConfig | None = None,
    generation: GenerationConfig | None = None,
    *,
    shaper: Any = None,
    thresholds: Tensor | Sequence[float] | None = None,
    predictor: Any = None,
    mc_cache_dir: Any = None,
) -> DecodeResult:
    """Decode ``prompts`` with ARGS.

    Args:
        policy, tokenizer: the base causal LM and its tokenizer.
        rm: a :class:`stackalign.models.RewardModel`, a ``CallableReward`` or any fn(prompt, response) -> float.
        prompts: P prompt strings.
        config: :class:`ARGSConfig` (k, w, greedy/stochastic, RM mode).
        generation: :class:`GenerationConfig`; uses ``max_new_tokens``, ``eos_token_ids``, ``stop_strings``,
            ``seed`` and ``ignore_eos`` (its temperature/top-p/top-k are not used: ARGS samples over its k
            candidates with ``config.temperature``).
        shaper: None (vanilla ARGS), a shaping callable ``(rewards [R,k], weights [R,k], threshold=[R]) ->
            [R,k]``, or a shaper / preset name.
        thresholds: optional per-prompt thresholds m (length P) passed to the shaper instead of the per-step
            threshold over the candidates. Without them, ``config.threshold`` says where m comes from:
            "step" (the shaper's own per-step rule), "mc" (computed here by :func:`mc_threshold` from
            ``config.mc_samples`` base samples per prompt, cached in ``mc_cache_dir``; its cost is counted)
            or "predicted" (``predictor``, a :class:`ThresholdPredictor` or its directory; the prompt
            forward it needs is counted).

    Returns:
        :class:`DecodeResult` (texts, token ids, cost: LM tokens, RM tokens, seconds; meta: the resolved
        configuration).
    """
    config = config or ARGSConfig()
    generation = generation or GenerationConfig()
    shaper = resolve_shaper(shaper)
    rm = as_reward(rm)
    prompts = list(prompts) if not isinstance(prompts, str) else prompts
    models = [policy] + ([rm.model] if getattr(rm, "model", None) is not None else [])
    ids = encode_prompts(tokenizer, prompts, max_new_tokens=generation.max_new_tokens, models=models)
    if config.k > len(tokenizer):
        raise ValueError(f"k: {config.k} candidates but the vocabulary has only {len(tokenizer)} tokens")
    cost = Cost()
    if thresholds is None and config.threshold != "step" and shaper is not None:
        thresholds = _prompt_thresholds(
            policy, tokenizer, rm, prompts, config, generation, shaper, predictor, mc_cache_dir, cost
        )
    m_all = None if thresholds is None else checked_thresholds(thresholds, shaper, len(prompts))
    w = config.w if config.w is not None else 1.0 / float(getattr(shaper, "beta", 2.0))
    device = model_device(policy)
    stop = StopChecker(
        tokenizer,
        resolve_eos_ids(tokenizer, policy, generation),
        generation.stop_strings,
        generation.ignore_eos,
    )
    pad = pad_id_of(tokenizer)
    texts: list[str] = []
    token_ids: list[list[int]] = []
    scorer_name = scorer_reason = None
    with Timer(cost, device):
        for s in range(0, len(prompts), config.batch_size):
            scorer = make_scorer(tokenizer, rm, config)
            scorer_name, scorer_reason = scorer.name, scorer.reason
            rows = _decode_batch(
                policy,
                scorer,
                prompts[s : s + config.batch_size],
                ids[s : s + config.batch_size],
                None if m_all is None else m_all[s : s + config.batch_size],
                shaper,
                w,
                config,
                generation,
                stop,
                pad,
                device,
                cost,
            )
            cost.merge(dataclasses.replace(scorer.cost, seconds=0.0))
            for r in rows:
                t_ids, text = stop.finalize(r)
                token_ids.append(t_ids)
                texts.append(text)
    meta = {
        "decoder": "args",
        **dataclasses.asdict(config),
        "w": w,
        "scorer": scorer_name,
        "scorer_reason": scorer_reason,
        "shaper": describe_shaper(shaper),
        "per_prompt_threshold": m_all is not None,
        "threshold_source": config.threshold if m_all is not None else "step",
        "generation": generation.to_dict(),
    }
    return DecodeResult(prompts, texts, token_ids, cost, meta)


def checked_thresholds(thresholds: Tensor | Sequence[float], shaper: Any, n_prompts: int) -> Tensor:
    """Per-prompt thresholds as float64 [P], checked: one finite value per prompt, for a shaper that uses
    them (ValueError naming ``thresholds`` otherwise)."""
    if shaper is None or not getattr(shaper, "uses_threshold", True):
        raise ValueError(
            f"thresholds: per-prompt thresholds need a shaper that uses them ('srs', 'hard' or a preset), "
            f"got {describe_shaper(shaper)!r}"
        )
    m_all = torch.as_tensor(thresholds, dtype=torch.float64).flatten()
    if m_all.numel() != n_prompts:
        raise ValueError(f"thresholds: got {m_all.numel()} values for {n_prompts} prompts")
    if not torch.isfinite(m_all).all():
        raise ValueError("thresholds: contain NaN or infinite values")
    return m_all


def mc_generation(generation: GenerationConfig) -> GenerationConfig:
    """The sampling settings of the Monte Carlo thresholds (``threshold: mc``) of a decode with
    ``generation``: temperature 1 over the full vocabulary, the decode's length, stops, EOS ids and seed. The
    MC cache is keyed by them, so whoever samples the thresholds elsewhere (the Ray backend) asks here."""
    return GenerationConfig(
        max_new_tokens=generation.max_new_tokens,
        temperature=1.0,
        stop_strings=generation.stop_strings,
        eos_token_ids=generation.eos_token_ids,
        seed=generation.seed,
    )


def _prompt_thresholds(
    policy: Any,
    tokenizer: Any,
    rm: Any,
    prompts: Sequence[str],
    config: ARGSConfig,
    generation: GenerationConfig,
    shaper: Any,
    predictor: Any,
    mc_cache_dir: Any,
    cost: Cost,
) -> Tensor:
    """Per-prompt thresholds for ``config.threshold`` "mc" or "predicted"; their cost is added to ``cost``."""
    if not getattr(shaper, "uses_threshold", False):
        raise ValueError(
            f"threshold: {config.threshold!r} needs a threshold shaping (srs or hard), got shaper {shaper!r}"
        )
    if config.threshold == "mc":
        from stackalign.decoding.mc import mc_threshold

        mc = mc_threshold(
            policy,
            tokenizer,
            rm,
            prompts,
            config.mc_samples,
            mc_generation(generation),
            shaper=shaper,
            cache_dir=mc_cache_dir,
            charge_cached=True,  # rows pay for their thresholds' samples, cached or not
        )
        cost.merge(mc.cost)
        return mc.thresholds
    from stackalign.decoding.threshold_predictor import ThresholdPredictor, load_threshold_predictor

    if predictor is None:
        raise ValueError("threshold: 'predicted' needs a trained threshold predictor (predictor=...)")
    if not isinstance(predictor, ThresholdPredictor):
        predictor = load_threshold_predictor(predictor)
    predictor.check_rule(shaper)
    m, c = predictor.predict_prompts(policy, tokenizer, prompts)
    cost.merge(c)
    return m


def _decode_batch(
    policy: Any,
    scorer: Scorer,
    prompts: list[str],
    ids: list[list[int]],
    m: Tensor | None,
    shaper: Any,
    w: float,
    config: ARGSConfig,
    generation: GenerationConfig,
    stop: StopChecker,
    pad: int,
    device: Any,
    cost: Cost,
) -> list[list[int]]:
    """Decode one prompt batch with ARGS; returns the raw generated ids of each row (see the module doc).

    The decoder supplies the three callbacks of :func:`run_steps`: ``choose`` (score, shape, fuse, pick),
    ``select`` (drop finished rows from the policy's cache and the scorer's) and ``feed`` (the policy's
    next cached forward)."""
    R = len(prompts)
    T = generation.max_new_tokens
    input_ids, mask = left_pad(ids, pad, device)
    logits, cache = lm_forward(policy, input_ids, mask)
    cost.lm_tokens += int(mask.sum())
    cost.lm_calls += 1
    scorer.start(ids, prompts)
    gens = (
        prompt_generators(prompts, generation.seed, device, salt="args")
        if config.mode == "stochastic"
        else None
    )
    rows = LiveRows(R, T, pad, device)
    k = config.k
    apply = getattr(shaper, "apply", None)  # a stackalign Shaper: the unchecked fast path
    cpu = torch.device(device).type == "cpu"
    on_host = shapes_on_host(shaper, k)
    bad_reward = torch.zeros((), dtype=torch.bool, device=device)
    if m is not None:
        m = m.to(device)
    m_host = None if m is None or not on_host else m.cpu().numpy()
    # The policy's state between steps; ``select`` and ``feed`` replace its entries.
    state = {"logits": logits, "mask": mask, "cache": cache}

    def flag_bad(rewards: Tensor) -> None:
        """A NaN reward would be silently argmax'ed: flag it (on a GPU without a host sync) and raise after
        the batch. The shaper's own input checks are skipped (``apply``): the rewards are checked here, and
        softmax weights are valid by construction."""
        nonlocal bad_reward
        if not cpu:
            bad_reward |= ~torch.isfinite(rewards).all()
        elif not np.isfinite(rewards.numpy()).all():
            bad_reward = torch.ones((), dtype=torch.bool)

    def shape_on_device(top_logits: Tensor, rewards: Tensor) -> Tensor:
        """The shaped rewards [R', k] with torch on the decoding device (any shaping callable)."""
        weights = top_logits.double().softmax(-1)
        m_live = None if m is None else m[rows.active]
        if apply is not None:
            shaped = apply(rewards.double(), weights, m_live)
        elif m_live is None:
            shaped = shaper(rewards, weights)
        else:
            shaped = shaper(rewards, weights, threshold=m_live)
        return torch.as_tensor(shaped, device=device).to(top_logits.dtype)

    def choose(step: int) -> Tensor:
        """Score the top-k candidates of every live row, fuse, pick one token per row."""
        nonlocal bad_reward
        top_logits, cands = state["logits"].topk(k, dim=-1)  # [R', k]
        rewards = scorer.score(cands).to(device)
        if on_host:
            m_live = None if m_host is None else m_host[rows.active.cpu().numpy()]
            shaped, finite = shape_on_host(shaper, top_logits, rewards, m_live)
            if not finite:
                bad_reward = torch.ones((), dtype=torch.bool)
        else:
            flag_bad(rewards)
            shaped = rewards if shaper is None else shape_on_device(top_logits, rewards)
        fused = top_logits + w * shaped
        if gens is None:
            j = fused.argmax(-1)
        else:
            # drawn for every prompt every step, finished or not: per-prompt streams stay aligned
            u = row_uniforms(gens, 1, device)[rows.active]
            j = sample_rows((fused / config.temperature).softmax(-1), u)
        tok = cands.gather(1, j[:, None]).squeeze(1)
        # The scorer commits the chosen candidate here, while its cache still holds every live row (the
        # loop drops finished rows only afterwards, through ``select``).
        scorer.advance(tok, j)
        return tok

    def select(keep: Tensor) -> None:
        """Rows ``keep`` (batch positions) stay: drop the others from the policy's and the scorer's caches."""
        state["mask"] = state["mask"][keep]
        state["cache"].batch_select_indices(keep)
        scorer.select(keep)

    def feed(tok: Tensor) -> None:
        """The policy's cached forward on the chosen tokens: next step's logits."""
        mask = state["mask"]
        state["mask"] = mask = torch.cat([mask, mask.new_ones(mask.shape[0], 1)], dim=1)
        state["logits"], state["cache"] = lm_forward(policy, tok.unsqueeze(-1), mask, state["cache"])
        cost.lm_tokens += int(rows.active.numel())
        cost.lm_calls += 1

    run_steps(rows, stop, T, choose, select, feed)
    if bool(bad_reward):
        raise ValueError("the reward model returned NaN or infinite scores for some ARGS candidates")
    return rows.outputs()

"""Per-prompt Monte Carlo Stackelberg thresholds m*(x), cached on disk.

For each prompt: draw N responses from the base policy (shared prompt prefill, :func:`sampling.sample`),
score them with the reward model (the one documented input format, ``format_rm_input``), and solve the
threshold equation over the N rewards with uniform weights (i.i.d. samples):

* with a ``shaper`` (e.g. the ``official-cd`` preset): ``shaper.threshold(rewards)``, i.e. the shaper's own
  B_eff / gamma rule, so the threshold matches the shaping that will use it;
* otherwise ``stackelberg_threshold(rewards, B=B, beta=beta, gamma_cap=gamma_cap, method=method)``.

The disk cache stores the *samples and rewards*, not just m, one JSON file per prompt, keyed by
(policy id, reward-model id, prompt hash, N, seed, generation config). A rerun — or a different B, beta or
shaper — reuses them without resampling. Sampling is seeded per prompt, so which prompts were cached does
not change the others' samples. Cache directory: ``cache_dir`` argument, else ``$STACKALIGN_CACHE/mc``,
else ``.stackalign_cache/mc`` under the working directory; ``cache_dir=False`` turns caching off.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from stackalign.decoding.common import Cost, GenerationConfig, Timer, as_reward
from stackalign.decoding.sampling import sample
from stackalign.store import write_json_atomic

Tensor = torch.Tensor

__all__ = [
    "MCThreshold",
    "compute_mc_records",
    "mc_chunks",
    "mc_record_path",
    "mc_samples",
    "mc_threshold",
    "mc_threshold_of_rewards",
    "model_fingerprint",
    "read_mc_record",
    "reward_fingerprint",
    "write_mc_record",
]

CACHE_VERSION = 1


def model_fingerprint(model: Any) -> str:
    """A short id for a model's weights: class, name/path, parameter count, and a strided sample of every
    parameter tensor (so retraining a model in place changes the id, at negligible cost)."""
    h = hashlib.sha256()
    h.update(type(model).__name__.encode())
    h.update(str(getattr(getattr(model, "config", None), "_name_or_path", "")).encode())
    n = 0
    with torch.no_grad():
        for name, p in model.named_parameters():
            n += p.numel()
            flat = p.detach().reshape(-1)
            step = max(1, flat.numel() // 64)
            h.update(name.encode())
            h.update(flat[::step][:64].float().cpu().numpy().tobytes())
    h.update(str(n).encode())
    return h.hexdigest()[:16]


def reward_fingerprint(rm: Any) -> str:
    """Id of a reward: its model's fingerprint and input format, or ``callable:<name>``."""
    model = getattr(rm, "model", None)
    if model is None:
        return f"callable:{getattr(rm, 'name', type(rm).__name__)}"
    return f"{model_fingerprint(model)}:chat={bool(getattr(rm, 'chat_template', False))}"


def _cache_root(cache_dir: Any) -> Path | None:
    if cache_dir is False:
        return None
    if cache_dir is None:
        return Path(os.environ.get("STACKALIGN_CACHE", ".stackalign_cache")) / "mc"
    return Path(cache_dir)


def _key(policy_id: str, rm_id: str, prompt: str, n: int, config: GenerationConfig) -> str:
    payload = {
        "v": CACHE_VERSION,
        "policy": policy_id,
        "rm": rm_id,
        "prompt": hashlib.sha256(prompt.encode()).hexdigest(),
        "n": n,
        "config": config.to_dict(),  # includes the seed
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


@dataclass
class MCThreshold:
    """Per-prompt thresholds ``[P]`` (float64), the rewards ``[P, N]`` and sample texts they came from,
    the cost actually spent (zero for cached prompts), and which prompts came from the cache."""

    prompts: list[str]
    thresholds: Tensor
    rewards: Tensor
    samples: list[list[str]]
    cost: Cost = field(default_factory=Cost)
    from_cache: list[bool] = field(default_factory=list)
    meta: dict = field(default_factory=dict)


def mc_record_path(
    root: Path, policy_id: str, rm_id: str, prompt: str, n: int, config: GenerationConfig
) -> Path:
    """Where the cache under ``root`` keeps the record of ``prompt`` (one JSON file, named by its key)."""
    key = _key(policy_id, rm_id, prompt, n, config)
    return Path(root) / key[:2] / f"{key}.json"


def read_mc_record(path: Path, prompt: str, n: int) -> tuple[list[str], list[float], Cost] | None:
    """(texts, rewards, cost) of a cached record, or None when it is missing, damaged or not this prompt's.
    `cost`: the record's share of what sampling and scoring it cost the run that made it (zero for a record
    written before records kept their cost)."""
    if not path.is_file():
        return None
    try:
        rec = json.loads(path.read_text())
        if rec.get("prompt") == prompt and len(rec["rewards"]) == n:
            share = rec.get("cost") or {}
            cost = Cost(**{k: int(share.get(k, 0)) for k in SHARED_COST})
            return rec["texts"], rec["rewards"], cost
    except (OSError, ValueError, KeyError, TypeError):
        pass  # a damaged entry is simply recomputed
    return None


# the Cost fields a cached record keeps its share of (wall-clock seconds are not charged again)
SHARED_COST = ("lm_tokens", "rm_tokens", "lm_calls", "rm_calls")


def _cost_shares(cost: Cost, k: int) -> list[dict[str, int]]:
    """`cost` split over `k` records in whole numbers that add up exactly (the first ones take the remainder)."""
    shares = [{} for _ in range(k)]
    for name in SHARED_COST:
        q, r = divmod(int(getattr(cost, name)), k)
        for j in range(k):
            shares[j][name] = q + (1 if j < r else 0)
    return shares


def write_mc_record(path: Path, record: dict) -> None:
    """Write a record made by :func:`compute_mc_records` (atomically: a killed run never leaves half a file)."""
    write_json_atomic(path, record, indent=None)


def mc_chunks(todo: Sequence[int], chunk_size: int | None) -> list[list[int]]:
    """The sampling + scoring calls :func:`mc_samples` makes for the uncached prompts ``todo``: consecutive
    chunks of ``chunk_size`` (all at once for None). The reward model's batches, and so its rewards' last
    bits, depend on the cut; whoever computes records elsewhere (the Ray backend) cuts with this function."""
    todo = list(todo)
    size = chunk_size or max(len(todo), 1)
    return [todo[s : s + size] for s in range(0, len(todo), size)]


@torch.no_grad()
def compute_mc_records(
    policy: Any,
    tokenizer: Any,
    rm: Any,
    prompts: Sequence[str],
    n: int,
    config: GenerationConfig,
    *,
    policy_id: str,
    rm_id: str,
    batch_size: int | None = None,
    rm_batch_size: int = 16,
) -> tuple[list[dict], Cost]:
    """N base samples of each prompt and their rewards in one sampling + scoring call, as cache records
    (what :func:`mc_samples` writes), and what they cost. Writes nothing."""
    rm = as_reward(rm)
    cost = Cost()
    res = sample(policy, tokenizer, list(prompts), n, config, batch_size=batch_size)
    cost.merge(res.cost)
    ps, rs = res.flat()
    before = getattr(rm, "n_tokens_scored", 0)
    with Timer(cost):
        scores = torch.as_tensor(rm(ps, rs, batch_size=rm_batch_size), dtype=torch.float32).view(
            len(prompts), n
        )
    cost.rm_tokens += getattr(rm, "n_tokens_scored", 0) - before
    shares = _cost_shares(cost, len(prompts))
    records = [
        {
            "version": CACHE_VERSION,
            "policy": policy_id,
            "rm": rm_id,
            "n": n,
            "config": config.to_dict(),
            "prompt": p,
            "texts": res.texts[j],
            "rewards": scores[j].tolist(),
            "cost": shares[j],
        }
        for j, p in enumerate(prompts)
    ]
    return records, cost


@torch.no_grad()
def mc_samples(
    policy: Any,
    tokenizer: Any,
    rm: Any,
    prompts: Sequence[str],
    n: int = 16,
    config: GenerationConfig | None = None,
    *,
    cache_dir: Any = None,
    policy_id: str | None = None,
    rm_id: str | None = None,
    batch_size: int | None = None,
    rm_batch_size: int = 16,
    chunk_size: int | None = None,
    charge_cached: bool = False,
) -> tuple[list[list[str]], Tensor, Cost, list[bool]]:
    """N base samples per prompt and their rewards ``[P, N]`` (float32), through the disk cache.

    The uncached prompts are sampled and scored ``chunk_size`` prompts per call (:func:`mc_chunks`; None:
    all in one call). The returned cost is what this call spent; with ``charge_cached`` it also holds each
    cached record's share of what it cost the run that sampled it (a resumed run reports the same tokens)."""
    config = config or GenerationConfig()
    if isinstance(prompts, str):
        raise ValueError("prompts must be a list of strings, not a single string")
    prompts = list(prompts)
    if not (isinstance(n, int) and n >= 1):
        raise ValueError(f"n: must be an integer >= 1, got {n!r}")
    rm = as_reward(rm)
    root = _cache_root(cache_dir)
    pid = policy_id or model_fingerprint(policy)
    rid = rm_id or reward_fingerprint(rm)
    texts: list[list[str] | None] = [None] * len(prompts)
    rewards: list[list[float] | None] = [None] * len(prompts)
    paths: list[Path | None] = [None] * len(prompts)
    for i, p in enumerate(prompts):
        if root is None:
            continue
        paths[i] = mc_record_path(root, pid, rid, p, n, config)
    cost = Cost()
    for i, p in enumerate(prompts):
        hit = read_mc_record(paths[i], p, n) if paths[i] is not None else None
        if hit is not None:
            texts[i], rewards[i], share = hit
            if charge_cached:
                cost.merge(share)
    from_cache = [r is not None for r in rewards]
    for chunk in mc_chunks([i for i, c in enumerate(from_cache) if not c], chunk_size):
        records, c = compute_mc_records(
            policy,
            tokenizer,
            rm,
            [prompts[i] for i in chunk],
            n,
            config,
            policy_id=pid,
            rm_id=rid,
            batch_size=batch_size,
            rm_batch_size=rm_batch_size,
        )
        cost.merge(c)
        for i, rec in zip(chunk, records):
            texts[i], rewards[i] = rec["texts"], rec["rewards"]
            if paths[i] is not None:
                write_mc_record(paths[i], rec)
    return texts, torch.tensor(rewards, dtype=torch.float32), cost, from_cache  # type: ignore[arg-type]


def _threshold_rule(shaper: Any, B: float | None, beta: float | None) -> Any:
    """``shaper`` resolved (a name becomes a Shaper); ValueError when no threshold rule is given."""
    if shaper is None and (B is None or beta is None):
        raise ValueError("mc_threshold needs a shaper (e.g. 'official-cd') or both B and beta")
    if isinstance(shaper, str):
        from stackalign.shaping.resolve import resolve_shaper

        shaper = resolve_shaper(shaper)
    if shaper is not None and not hasattr(shaper, "threshold"):
        raise ValueError(f"shaper: {shaper!r} has no threshold rule (use 'srs', 'hard' or a preset)")
    return shaper


def mc_threshold_of_rewards(
    rewards: Tensor,
    shaper: Any = None,
    *,
    B: float | None = None,
    beta: float | None = None,
    gamma_cap: float | None = None,
    method: str = "exact",
) -> tuple[Tensor, dict]:
    """The Monte Carlo threshold m*(x) of each row of ``rewards`` [P, N] (the rewards of N i.i.d. base samples
    of a prompt): the root of F̂_x(m) = (1/N) Σ_i w_i(m) (r_i − m), with w_i(m) = γ if r_i >= m else 1 (SRS
    paper, Thm 2 and its Monte Carlo estimator, uniform weights 1/N). γ comes from ``shaper``'s own rule (a
    Shaper, or a preset/shaper name) or from ``B``, ``beta`` (and ``gamma_cap``) for the plain
    :func:`stackalign.shaping.stackelberg_threshold`. Returns ``(m [P], the rule as a dict)``."""
    from stackalign.shaping import stackelberg_threshold

    shaper = _threshold_rule(shaper, B, beta)
    if shaper is not None:
        return shaper.threshold(rewards), {"shaper": repr(shaper)}
    m = stackelberg_threshold(rewards, B=B, beta=beta, gamma_cap=gamma_cap, method=method)
    return m, {"B": B, "beta": beta, "gamma_cap": gamma_cap, "method": method}


def mc_threshold(
    policy: Any,
    tokenizer: Any,
    rm: Any,
    prompts: Sequence[str],
    n: int = 16,
    config: GenerationConfig | None = None,
    *,
    shaper: Any = None,
    B: float | None = None,
    beta: float | None = None,
    gamma_cap: float | None = None,
    method: str = "exact",
    cache_dir: Any = None,
    policy_id: str | None = None,
    rm_id: str | None = None,
    batch_size: int | None = None,
    rm_batch_size: int = 16,
    chunk_size: int | None = None,
    charge_cached: bool = False,
) -> MCThreshold:
    """Monte Carlo estimate of the per-prompt Stackelberg threshold m*(x) from ``n`` base samples.

    Give either ``shaper`` (a Shaper or a preset/shaper name; its ``threshold`` rule is used) or ``B`` and
    ``beta`` (the plain :func:`stackalign.shaping.stackelberg_threshold`, with optional ``gamma_cap``).
    Sampling uses ``config`` (temperature, top-p, stop strings, seed); see :func:`mc_samples` for caching
    and ``chunk_size`` (and ``charge_cached``).
    """
    shaper = _threshold_rule(shaper, B, beta)  # a missing rule fails before any sampling
    texts, rewards, cost, from_cache = mc_samples(
        policy,
        tokenizer,
        rm,
        prompts,
        n,
        config,
        cache_dir=cache_dir,
        policy_id=policy_id,
        rm_id=rm_id,
        batch_size=batch_size,
        rm_batch_size=rm_batch_size,
        chunk_size=chunk_size,
        charge_cached=charge_cached,
    )
    m, rule = mc_threshold_of_rewards(rewards, shaper, B=B, beta=beta, gamma_cap=gamma_cap, method=method)
    meta = {"n": n, "weights": "uniform", **rule, "generation": (config or GenerationConfig()).to_dict()}
    return MCThreshold(list(prompts), m, rewards, texts, cost, from_cache, meta)

"""Offline data for controlled decoding: base samples, rewards, per-prompt shaped targets (SRS Algorithm 1).

For every training prompt x (SRS paper §2.2, step 1-2):
  1. draw N samples y_1..y_N from the base policy with `decoding.sampling.sample`, which shares the
     prompt's prefill (one forward over the prompt, the KV cache tiled N times) and seeds each prompt's
     stream from (seed, prompt), so a prompt's samples do not depend on its batch;
  2. score every (x, y_n) with the reward model through its one input format (`stackalign.models`);
  3. shape the N rewards of the prompt with any shaper: the `official-cd` preset reproduces the paper's
     code, `paper` is the clean formula, and the baselines are vanilla / meanstd / minmax / ... .
     Shaping is per prompt (a row of N rewards), so m*(x) is computed once per prompt, offline; at test
     time the value head amortises it and CD costs the same with or without SRS.

Storage. The official code keeps the final hidden state of every generated token of every sample
(fp16, 128 x H per sample: 1 MiB per sample for an 8B model, ~1 GB per 1,000 samples). Token ids are
~H times smaller (one int per token instead of H halves), so the shards keep only ids and rewards, and
the frozen LM recomputes the hidden states in batches while the value head trains (`final_hidden_states`;
`value_head.train_value_head` caches them in RAM when they fit a budget, otherwise recomputes per batch).
That turns a disk problem into a forward pass per sample per epoch, which is cheap next to sampling.

Layout of an offline-data directory:

    config.json             the data config, the number of prompts and a hash of the prompt list
    shard_00000.jsonl ...   one row per prompt: {"i", "prompt", "prompt_ids", "response_ids" [N][T],
                            "rewards" [N], "gold" [N] or null}

Rows are appended and fsynced one prompt at a time (`stackalign.store.JsonlStore`), so a killed build resumes
where it stopped, recomputing nothing that was written and writing nothing twice; per-prompt seeds make a
resumed build draw the same samples as an uninterrupted one.

Response ids are the sampler's: the EOS id is kept when it ended the sample, and a sample that hit a stop
string keeps the token that completed it (its text, which the reward model scores, is cut before the stop
string). Either way the last state is "the response is over", which is what the value head should learn
to score at that position.
Shaped targets are not stored: `OfflineData.targets(shaper)` computes them from the rewards in
milliseconds, so one dataset serves every shaping.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from stackalign.decoding.cd import final_hidden
from stackalign.decoding.common import GenerationConfig
from stackalign.decoding.sampling import sample
from stackalign.store import JsonlStore, write_json_atomic

__all__ = [
    "CDDataConfig",
    "CDExample",
    "OfflineData",
    "OfflineShards",
    "build_offline_data",
    "offline_meta",
    "sample_offline_rows",
    "final_hidden_states",
    "shaped_targets",
]

FORMAT_VERSION = 1


@dataclass
class CDDataConfig:
    """How the offline samples are drawn (defaults: the official SRS-CD data script)."""

    n_samples: int = field(default=10, metadata={"help": "N base samples per prompt"})
    max_new_tokens: int = field(default=128, metadata={"help": "tokens per sample, at most"})
    temperature: float = field(default=0.7, metadata={"help": "base sampling temperature"})
    top_p: float = field(default=0.9, metadata={"help": "nucleus of the base sampler"})
    seed: int = field(
        default=1234, metadata={"help": "base seed; each prompt's stream is seeded by (seed, prompt)"}
    )
    prompts_per_batch: int = field(default=4, metadata={"help": "prompts sampled together (N rows each)"})
    prompts_per_shard: int = field(default=1000, metadata={"help": "rows per shard file"})
    rm_batch_size: int = field(default=32, metadata={"help": "reward-model batch"})

    def __post_init__(self) -> None:
        for name in (
            "n_samples",
            "max_new_tokens",
            "prompts_per_batch",
            "prompts_per_shard",
            "rm_batch_size",
        ):
            v = getattr(self, name)
            if not (isinstance(v, int) and v >= 1):
                raise ValueError(f"{name}: must be an integer >= 1, got {v!r}")
        if not (math.isfinite(self.temperature) and self.temperature > 0):
            raise ValueError(f"temperature: must be > 0, got {self.temperature!r}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p: must be in (0, 1], got {self.top_p!r}")

    def sampling_key(self) -> dict:
        """The fields that determine the samples (a resumed build must match them)."""
        d = asdict(self)
        for k in ("rm_batch_size", "prompts_per_batch"):
            d.pop(k)
        return d


@dataclass
class CDExample:
    """One training example of the value head."""

    prompt_ids: list[int]
    response_ids: list[int]  # generated ids (EOS included when it ended the sample)
    target: float  # shaped reward
    group: int  # prompt index (the validation split is by prompt)


# --------------------------------------------------------------------------------------------- building


def _prompt_hash(prompts: Sequence[str]) -> str:
    h = hashlib.sha256()
    for p in prompts:
        h.update(p.encode("utf-8"))
        h.update(b"\x00")
    return h.hexdigest()


def _check_or_write_config(out: Path, meta: dict) -> None:
    path = out / "config.json"
    if path.exists():
        old = json.loads(path.read_text())
        for key in ("format", "data", "n_prompts", "prompts_sha256", "model"):
            if old.get(key) != meta.get(key):
                raise ValueError(
                    f"{path}: existing offline data was built with a different {key!r} "
                    f"({old.get(key)!r} vs {meta.get(key)!r}); use another directory or delete it"
                )
        return
    write_json_atomic(path, meta)


def offline_meta(
    model_name: str | None, prompts: Sequence[str], config: CDDataConfig, stop_strings: Sequence[str] | None
) -> dict:
    """The `config.json` of an offline-data directory (what a resumed build must match)."""
    return {
        "format": FORMAT_VERSION,
        "data": config.sampling_key(),
        "n_prompts": len(prompts),
        "prompts_sha256": _prompt_hash(prompts),
        "model": model_name or None,
        "stop_strings": list(stop_strings or []),
    }


def model_name(model) -> str | None:
    """The name or path a model was loaded from (recorded in the offline data's config)."""
    return getattr(model.config, "_name_or_path", None) or None


class OfflineShards:
    """The shard files of an offline-data directory, opened for appending (the single writer of its rows)."""

    def __init__(self, out_dir: str | Path, meta: dict, config: CDDataConfig):
        self.out = Path(out_dir)
        self.out.mkdir(parents=True, exist_ok=True)
        _check_or_write_config(self.out, meta)
        self.per_shard = config.prompts_per_shard
        self.n = meta["n_prompts"]
        self._stores: dict[int, JsonlStore] = {}

    def _store(self, i: int) -> JsonlStore:
        s = i // self.per_shard
        if s not in self._stores:
            self._stores[s] = JsonlStore(self.out / f"shard_{s:05d}.jsonl", key=("i",))
        return self._stores[s]

    def todo(self) -> list[int]:
        """Prompt indices without a stored row."""
        return [i for i in range(self.n) if not self._store(i).done(i=i)]

    def append(self, rows: Sequence[dict]) -> None:
        for row in rows:
            self._store(row["i"]).append([row])


def sample_offline_rows(
    model,
    tokenizer,
    reward_model: Callable[..., Tensor],
    prompts: Sequence[str],
    idx: Sequence[int],
    config: CDDataConfig,
    *,
    stop_strings: Sequence[str] | None = None,
    gold: Callable[[str, str], float] | None = None,
) -> list[dict]:
    """The offline rows of prompts `idx` (indices into `prompts`), sampled together in one batch.

    A row is `{"i", "prompt", "prompt_ids", "response_ids" [N][T], "rewards" [N], "gold" [N] or null}`. It
    depends only on its prompt (per-prompt seeds), so any worker may compute any batch of indices."""
    cfg = config
    idx = list(idx)
    gen = GenerationConfig(
        max_new_tokens=cfg.max_new_tokens,
        temperature=cfg.temperature,
        top_p=cfg.top_p,
        stop_strings=tuple(stop_strings or ()),
        seed=cfg.seed,
    )
    res = sample(model, tokenizer, [prompts[i] for i in idx], cfg.n_samples, gen, batch_size=len(idx))
    prompt_ids = [tokenizer(prompts[i])["input_ids"] for i in idx]
    flat_p, flat_r = res.flat()
    rewards = torch.as_tensor(reward_model(flat_p, flat_r, batch_size=cfg.rm_batch_size), dtype=torch.float64)
    rewards = rewards.flatten().view(len(idx), cfg.n_samples)
    if not torch.isfinite(rewards).all():
        raise ValueError(f"reward model returned non-finite rewards for prompts {idx}")
    rows = []
    for b, i in enumerate(idx):
        texts = res.texts[b]
        rows.append(
            {
                "i": i,
                "prompt": prompts[i],
                "prompt_ids": list(prompt_ids[b]),
                "response_ids": res.token_ids[b],
                "rewards": rewards[b].tolist(),
                "gold": [float(gold(prompts[i], t)) for t in texts] if gold is not None else None,
            }
        )
    return rows


def build_offline_data(
    model,
    tokenizer,
    reward_model: Callable[[Sequence[str], Sequence[str]], Tensor],
    prompts: Sequence[str],
    out_dir: str | Path,
    config: CDDataConfig | None = None,
    *,
    stop_strings: Sequence[str] | None = None,
    gold: Callable[[str, str], float] | None = None,
    progress: bool = True,
) -> OfflineData:
    """Sample, score and store N base samples for every prompt (resumable).

    Args:
        model, tokenizer: the frozen base policy.
        reward_model: `rm(prompts, responses) -> Tensor[n]` (e.g. `stackalign.models.RewardModel`).
        prompts: training prompts (their order defines the indices; a resumed build must get the same list).
        out_dir: the offline-data directory (created; resumed if it holds a matching `config.json`).
        config: `CDDataConfig`.
        stop_strings: samples stop at these; the response text (and ids) are cut before them.
        gold: optional `gold(prompt, response) -> float`, stored beside the proxy reward for analysis.

    Returns:
        `OfflineData` over everything in `out_dir`.
    """
    from tqdm.auto import tqdm

    cfg = config or CDDataConfig()
    prompts = list(prompts)
    if not prompts:
        raise ValueError("build_offline_data: no prompts")
    shards = OfflineShards(out_dir, offline_meta(model_name(model), prompts, cfg, stop_strings), cfg)
    todo = shards.todo()
    bar = tqdm(
        total=len(prompts), initial=len(prompts) - len(todo), desc="CD offline data", disable=not progress
    )
    for s in range(0, len(todo), cfg.prompts_per_batch):
        idx = todo[s : s + cfg.prompts_per_batch]
        rows = sample_offline_rows(
            model, tokenizer, reward_model, prompts, idx, cfg, stop_strings=stop_strings, gold=gold
        )
        shards.append(rows)
        bar.update(len(idx))
    bar.close()
    return OfflineData.load(out_dir)


# --------------------------------------------------------------------------------------------- reading


def shaped_targets(rewards: Tensor, shaper: Callable[[Tensor], Tensor]) -> Tensor:
    """Per-prompt shaping: `rewards` (P, N), one row per prompt -> (P, N) float64 targets.

    `shaper` is any `stackalign.shaping` shaper (or preset); it sees each prompt's N rewards as one row,
    with uniform weights, exactly as the official CD script shapes per prompt."""
    out = shaper(torch.as_tensor(rewards, dtype=torch.float64))
    if out.shape != rewards.shape:
        raise ValueError(f"shaper returned shape {tuple(out.shape)} for rewards {tuple(rewards.shape)}")
    return out


class OfflineData:
    """The rows of an offline-data directory, sorted by prompt index."""

    def __init__(self, rows: list[dict], meta: dict, path: Path | None = None):
        self.rows = sorted(rows, key=lambda r: r["i"])
        self.meta = meta
        self.path = path
        ns = {len(r["rewards"]) for r in self.rows}
        if len(ns) > 1:
            raise ValueError(f"offline data: prompts have different sample counts {sorted(ns)}")

    @classmethod
    def load(cls, path: str | Path) -> OfflineData:
        path = Path(path)
        cfg_path = path / "config.json"
        if not cfg_path.is_file():
            raise FileNotFoundError(f"offline data: {cfg_path} not found (build it with build_offline_data)")
        meta = json.loads(cfg_path.read_text())
        rows: list[dict] = []
        for shard in sorted(path.glob("shard_*.jsonl")):
            rows.extend(JsonlStore(shard, key=("i",)).rows)
        return cls(rows, meta, path)

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def complete(self) -> bool:
        return len(self.rows) == self.meta.get("n_prompts")

    @property
    def rewards(self) -> Tensor:
        """(P, N) float64 proxy rewards."""
        return torch.tensor([r["rewards"] for r in self.rows], dtype=torch.float64)

    def targets(self, shaper: Callable[[Tensor], Tensor]) -> Tensor:
        """(P, N) shaped targets, one shaping row per prompt."""
        return shaped_targets(self.rewards, shaper)

    def examples(self, shaper: Callable[[Tensor], Tensor]) -> list[CDExample]:
        """Value-head training examples with targets from `shaper` (responses with no ids are skipped)."""
        t = self.targets(shaper).tolist()
        return [
            CDExample(r["prompt_ids"], ids, float(t[p][n]), r["i"])
            for p, r in enumerate(self.rows)
            for n, ids in enumerate(r["response_ids"])
            if ids
        ]

    def footprint(self) -> dict[str, Any]:
        """Disk bytes of the shards, samples, generated tokens, and bytes per 1,000 samples."""
        disk = sum(p.stat().st_size for p in self.path.glob("shard_*.jsonl")) if self.path else 0
        samples = sum(len(r["response_ids"]) for r in self.rows)
        tokens = sum(len(ids) for r in self.rows for ids in r["response_ids"])
        return {
            "disk_bytes": disk,
            "samples": samples,
            "generated_tokens": tokens,
            "disk_bytes_per_1000_samples": 1000 * disk / max(samples, 1),
        }


# --------------------------------------------------------------------------------------------- features


@torch.no_grad()
def final_hidden_states(
    model, prompt_ids: Sequence[Sequence[int]], response_ids: Sequence[Sequence[int]], *, batch_size: int = 32
) -> list[Tensor]:
    """The frozen LM's final-layer hidden states at the generated positions of each sequence.

    Element i has shape (len(response_ids[i]), H): row t is the state after consuming response token t,
    the same state tokenwise CD scores for a candidate. Sequences are length-sorted and right-padded in
    batches of `batch_size`; only the base model runs (no LM head). Returned on the LM's device, in its
    dtype."""
    device = next(model.parameters()).device
    n = len(prompt_ids)
    if n != len(response_ids):
        raise ValueError("final_hidden_states: prompt_ids and response_ids differ in length")
    order = sorted(range(n), key=lambda i: len(prompt_ids[i]) + len(response_ids[i]))
    out: list[Tensor | None] = [None] * n
    for s in range(0, n, batch_size):
        idx = order[s : s + batch_size]
        seqs = [list(prompt_ids[i]) + list(response_ids[i]) for i in idx]
        t_max = max(len(x) for x in seqs)
        ids = torch.zeros(len(seqs), t_max, dtype=torch.long)
        mask = torch.zeros(len(seqs), t_max, dtype=torch.long)
        for j, x in enumerate(seqs):
            ids[j, : len(x)] = torch.tensor(x)
            mask[j, : len(x)] = 1
        ids, mask = ids.to(device), mask.to(device)
        h = final_hidden(model, ids, mask, None)
        for j, i in enumerate(idx):
            lp, lr = len(prompt_ids[i]), len(response_ids[i])
            out[i] = h[j, lp : lp + lr]
    return out  # type: ignore[return-value]

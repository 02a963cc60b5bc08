"""The trainer skeleton: seeding, AdamW, gradient clipping, metrics.jsonl, checkpoints, exact resume.

One readable loop over components (torchtune-style), no god-class:

    for step in range(start + 1, steps + 1):
        out = step_fn(step)                     # the algorithm: a loss (or gradients already accumulated)
        out.loss.backward()
        clip_grad_norm_(params, max_grad_norm)
        optimizer.step(); optimizer.zero_grad()
        metrics.append({"step": step, ...})     # one row per step, fsynced
        if step % checkpoint_every == 0 or step == steps:
            save_checkpoint(...)                # temp dir, then an atomic rename

Resume. A checkpoint directory ``checkpoints/step-000040/`` holds the policy as an HF safetensors directory
(``save_pretrained`` of model and tokenizer), any extra models (``extra/NAME/``), and ``trainer_state.pt``
(optimizer state, RNG states of python / numpy / torch, of every named ``torch.Generator`` the algorithm
registered) plus ``trainer_state.json`` (step, the algorithm's JSON-able state, e.g. an SSAPO round). It is
written under ``checkpoints/.tmp-...`` and renamed into place, so a directory named ``step-*`` is always
complete. On restart the latest one is restored in place, metrics rows after its step are dropped (they will
be recomputed identically), and the loop continues: a run killed by ``kill -9`` at any moment and restarted
with the same command ends with weights bit-identical (on CPU) to an uninterrupted run.

What makes that hold: everything random in a step must come either from the restored RNG states or from
seeds derived from ``(seed, step)`` (see :func:`step_seed`; ``stackalign.decoding.sampling`` seeds each
prompt's generator from ``(seed, prompt)``, so passing ``step_seed(seed, step)`` makes a step's samples a
pure function of the step). Dropout is off: models stay in ``eval()`` mode during RL fine-tuning (as TRL's
GRPO/RLOO do), which also makes the sampled and the trained distribution the same.
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import random
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from stackalign.rundir import is_disk_full
from stackalign.training.memory import autocast_context

__all__ = [
    "StepOutput",
    "LoopSettings",
    "LoopResult",
    "seed_everything",
    "step_seed",
    "batch_indices",
    "MetricsLog",
    "complete_checkpoints",
    "latest_checkpoint",
    "save_checkpoint",
    "load_checkpoint",
    "save_model_dir",
    "load_weights_in_place",
    "train_loop",
]

CKPT_PREFIX = "step-"


@dataclass
class StepOutput:
    """What an algorithm's step function returns.

    ``loss``: a scalar tensor to backpropagate, or None when the step function already called
    ``backward()`` itself (gradient accumulation over micro-batches). ``metrics``: floats for this step's
    row of metrics.jsonl (the loop adds ``step``, ``loss``, ``grad_norm``, ``lr`` and ``seconds``)."""

    loss: torch.Tensor | None
    metrics: dict[str, float] = field(default_factory=dict)


@dataclass
class LoopSettings:
    """Optimizer and bookkeeping settings of :func:`train_loop` (the recipe's common fields fill these)."""

    steps: int = 100
    lr: float = 1e-4
    weight_decay: float = 0.0
    adam_betas: tuple[float, float] = (0.9, 0.999)
    max_grad_norm: float | None = 1.0
    checkpoint_every: int = 10
    keep_checkpoints: int = 2
    seed: int = 0
    progress: bool = True
    bf16: bool = False  # bfloat16 autocast around each step (stackalign.training.memory.autocast_context)

    def __post_init__(self) -> None:
        if self.steps < 1:
            raise ValueError(f"steps: must be >= 1, got {self.steps}")
        if not self.lr > 0:
            raise ValueError(f"lr: must be > 0, got {self.lr}")
        if self.weight_decay < 0:
            raise ValueError(f"weight_decay: must be >= 0, got {self.weight_decay}")
        if self.max_grad_norm is not None and not self.max_grad_norm > 0:
            raise ValueError(f"max_grad_norm: must be > 0 or null, got {self.max_grad_norm}")
        if self.checkpoint_every < 1:
            raise ValueError(f"checkpoint_every: must be >= 1, got {self.checkpoint_every}")
        if self.keep_checkpoints < 1:
            raise ValueError(f"keep_checkpoints: must be >= 1, got {self.keep_checkpoints}")


@dataclass
class LoopResult:
    steps: int  # the last step trained (== settings.steps)
    resumed_from: int  # the checkpoint step the run resumed from (0: a fresh start)
    seconds: float  # wall-clock of this process's part of the loop
    metrics: list[dict]  # every row of metrics.jsonl, step 1..steps


# ---------------------------------------------------------------------------------------------------------
# Seeds
# ---------------------------------------------------------------------------------------------------------
def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (CPU and CUDA) global RNGs."""
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def step_seed(seed: int, step: int, salt: str = "") -> int:
    """A 63-bit seed that is a pure function of ``(seed, step, salt)``: a step's randomness does not depend
    on what ran before it, so a resumed run redraws exactly the same samples."""
    h = hashlib.sha256(f"{int(seed)}\x00{int(step)}\x00{salt}".encode()).digest()
    return int.from_bytes(h[:8], "little") & ((1 << 63) - 1)


def batch_indices(
    n_items: int, per_step: int, step: int, seed: int, *, what: str = "prompts_per_step"
) -> list[int]:
    """Indices of the items used at ``step`` (1-based): epochs over a seeded permutation of ``n_items``,
    ``per_step`` consecutive items per step, wrapping into the next epoch's permutation. Stateless.

    Under several data-parallel processes (``stackalign.training.distributed``) this process's share of
    them: items k with k mod W == rank (``per_step``, the recipe field ``what``, must be a multiple of W)."""
    from stackalign.training.distributed import processes

    if n_items < 1 or per_step < 1:
        raise ValueError(f"batch_indices: need n_items >= 1 and per_step >= 1, got {n_items}, {per_step}")
    out = []
    start = (step - 1) * per_step
    for pos in range(start, start + per_step):
        epoch, k = divmod(pos, n_items)
        perm = list(range(n_items))
        random.Random(step_seed(seed, epoch, "epoch")).shuffle(perm)
        out.append(perm[k])
    return processes().shard(out, what)


_log = logging.getLogger("stackalign")


# ---------------------------------------------------------------------------------------------------------
# Metrics
# ---------------------------------------------------------------------------------------------------------
class MetricsLog:
    """``metrics.jsonl``: one JSON row per step, each written with one ``write`` and fsynced.

    ``truncate_after(step)`` keeps only whole rows with ``row["step"] <= step`` (rewritten atomically), so a
    resumed run never duplicates a step and a torn last line from a crash disappears."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def rows(self) -> list[dict]:
        if not self.path.exists():
            return []
        data = self.path.read_bytes()
        data = data[: data.rfind(b"\n") + 1]  # a line without its newline is a torn write
        rows = []
        for lineno, line in enumerate(data.splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except (json.JSONDecodeError, UnicodeDecodeError) as e:
                raise ValueError(f"{self.path}:{lineno}: not a metrics row ({e})") from None
            if not isinstance(row, dict) or not isinstance(row.get("step"), int):
                raise ValueError(f"{self.path}:{lineno}: not a metrics row (no integer 'step')")
            rows.append(row)
        return rows

    def truncate_after(self, step: int) -> list[dict]:
        keep = [r for r in self.rows() if int(r.get("step", 0)) <= step]
        tmp = self.path.with_suffix(f".tmp{os.getpid()}")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_text("".join(json.dumps(r) + "\n" for r in keep))
        os.replace(tmp, self.path)
        return keep

    def append(self, row: dict) -> None:
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(row) + "\n")
            f.flush()
            os.fsync(f.fileno())


# ---------------------------------------------------------------------------------------------------------
# Checkpoints
# ---------------------------------------------------------------------------------------------------------
def _fsync_tree(root: Path) -> None:
    for p in root.rglob("*"):
        if p.is_file():
            with open(p, "rb") as f:
                os.fsync(f.fileno())


def save_model_dir(model: Any, tokenizer: Any, path: str | Path, *, merge: bool = False) -> Path:
    """``save_pretrained`` of model (safetensors) and tokenizer into ``path`` atomically (temp dir + rename);
    the result loads with ``stackalign.models.load_policy`` / as a run recipe's ``policy:``. A LoRA model
    (``peft``) writes its adapters, and with ``merge`` also ``path/merged/`` (``stackalign.models.lora``)."""
    from stackalign.training.distributed import processes

    path = Path(path)
    procs = processes()
    state = _full_model_state(model)  # under FSDP every process takes part in gathering the weights
    if not procs.is_main:  # under several processes the main one writes (the replicas are equal)
        procs.barrier()
        return path
    _write_model_dir(model, tokenizer, path, merge, state)
    procs.barrier()
    return path


def _full_model_state(model: Any) -> dict | None:
    """Under FSDP the model's state dict gathered to full CPU tensors (a collective); None when the model is
    not sharded (``save_pretrained`` reads its own weights)."""
    from stackalign.training.distributed import full_state, is_dtensor

    if not any(is_dtensor(p) for p in model.parameters()):
        return None
    state, seen = {}, set()
    for k, v in model.state_dict(keep_vars=True).items():
        if id(v) not in seen:  # a tied copy (lm_head.weight == embed_tokens.weight): save_pretrained drops it
            seen.add(id(v))
            state[k] = v
    return full_state(state)


def _write_model_dir(model: Any, tokenizer: Any, path: Path, merge: bool, state: dict | None = None) -> None:
    from stackalign.models.lora import is_peft_model, save_adapter_dir

    tmp = path.parent / f".tmp-{path.name}-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    if is_peft_model(model):
        save_adapter_dir(model, tokenizer, tmp, merge=merge, state_dict=state)
    else:
        model.save_pretrained(tmp, safe_serialization=True, **_given(state))
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
    _fsync_tree(tmp)
    if path.exists():
        shutil.rmtree(path)
    os.replace(tmp, path)
    for stale in path.parent.glob(f".tmp-{path.name}-*"):  # left by a process killed mid-save
        shutil.rmtree(stale, ignore_errors=True)


def _given(state: dict | None) -> dict:
    """``save_pretrained``'s keyword for weights gathered beforehand (FSDP), none otherwise."""
    return {} if state is None else {"state_dict": state}


def _rng_state(generators: dict[str, torch.Generator]) -> dict:
    return {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
        "generators": {k: g.get_state() for k, g in generators.items()},
    }


def _set_rng_state(state: dict, generators: dict[str, torch.Generator]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if state.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    for k, g in generators.items():
        if k not in state["generators"]:
            raise ValueError(f"checkpoint has no state for generator {k!r}")
        g.set_state(state["generators"][k])


def load_weights_in_place(model: torch.nn.Module, model_dir: str | Path) -> None:
    """Load a ``save_pretrained`` safetensors directory into ``model`` (exact copy, tied weights kept); a
    LoRA model loads its adapters (``stackalign.models.lora.load_adapter_weights``)."""
    from safetensors.torch import load_file

    from stackalign.models.lora import is_peft_model, load_adapter_weights
    from stackalign.training.distributed import is_dtensor, sharded_like

    model_dir = Path(model_dir)
    if is_peft_model(model):
        load_adapter_weights(model, model_dir, layout=sharded_like)  # FSDP: each process keeps its shard
        return
    index = model_dir / "model.safetensors.index.json"
    files = (
        sorted({model_dir / f for f in json.loads(index.read_text())["weight_map"].values()})
        if index.exists()
        else [model_dir / "model.safetensors"]
    )
    state: dict[str, torch.Tensor] = {}
    for f in files:
        state.update(load_file(str(f)))
    params = dict(model.named_parameters(remove_duplicate=False))
    state = _sharded_state(state, params)
    missing, unexpected = model.load_state_dict(state, strict=False)
    # save_pretrained drops tied copies (lm_head.weight == embed_tokens.weight); anything else is a mismatch
    # (a sharded model's tied parameters are one DTensor object: compared by identity)
    key = (lambda t: id(t)) if any(is_dtensor(p) for p in params.values()) else (lambda t: t.data_ptr())
    saved_ptrs = {key(params[k]) for k in state if k in params}
    really_missing = [k for k in missing if k not in params or key(params[k]) not in saved_ptrs]
    if really_missing or unexpected:
        raise ValueError(
            f"checkpoint {str(model_dir)!r} does not match the model: missing {really_missing[:5]}, "
            f"unexpected {unexpected[:5]}"
        )


def _sharded_state(state: dict, params: dict) -> dict:
    """Full tensors read from disk laid out as the (possibly FSDP-sharded) parameters of the same names."""
    from stackalign.training.distributed import sharded_like

    return {k: sharded_like(v, params[k]) if k in params else v for k, v in state.items()}


def _sharded_optimizer_state(state: dict, optimizer: torch.optim.Optimizer) -> dict:
    """A full (1-process layout) optimizer state dict with each per-parameter tensor (AdamW's moments) laid out
    as its parameter: this process's shard under FSDP, unchanged otherwise."""
    from stackalign.training.distributed import sharded_like

    params = [p for g in optimizer.param_groups for p in g["params"]]
    per_param = {
        k: {n: sharded_like(v, params[int(k)]) for n, v in st.items()} if int(k) < len(params) else st
        for k, st in state["state"].items()
    }
    return {**state, "state": per_param}


def complete_checkpoints(out_dir: str | Path) -> list[Path]:
    """The complete checkpoints under ``out_dir/checkpoints``, newest first."""
    root = Path(out_dir) / "checkpoints"
    if not root.is_dir():
        return []
    done = [
        p
        for p in root.iterdir()
        if p.name.startswith(CKPT_PREFIX)
        and p.name[len(CKPT_PREFIX) :].isdigit()
        and (p / "trainer_state.json").is_file()
    ]
    return sorted(done, key=lambda p: int(p.name[len(CKPT_PREFIX) :]), reverse=True)


def latest_checkpoint(out_dir: str | Path) -> Path | None:
    """The newest complete checkpoint under ``out_dir/checkpoints`` (None if there is none)."""
    done = complete_checkpoints(out_dir)
    return done[0] if done else None


def save_checkpoint(
    out_dir: str | Path,
    step: int,
    model: Any,
    tokenizer: Any,
    optimizer: torch.optim.Optimizer,
    *,
    algo_state: dict,
    generators: dict[str, torch.Generator] | None = None,
    extra_models: dict[str, Any] | None = None,
    keep: int = 2,
    full: tuple[dict, dict] | None = None,
) -> Path:
    """Write ``out_dir/checkpoints/step-{step:06d}`` atomically; prune to the newest ``keep``. A full disk is
    an OSError(ENOSPC) naming the directory; the checkpoints already written stay as they were. ``full``:
    the model's and the optimizer's state dicts gathered beforehand (an FSDP-sharded model, see
    :func:`gather_training_state`), written in place of the model's and the optimizer's own."""
    root = Path(out_dir) / "checkpoints"
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"{CKPT_PREFIX}{step:06d}"
    tmp = root / f".tmp-{final.name}-{os.getpid()}"
    try:
        _write_checkpoint(tmp, step, model, tokenizer, optimizer, algo_state, generators, extra_models, full)
    except (OSError, RuntimeError) as e:
        shutil.rmtree(tmp, ignore_errors=True)
        if is_disk_full(e):
            raise OSError(errno.ENOSPC, "No space left on device", str(root)) from None
        raise
    if final.exists():  # a re-run of a step already checkpointed: same contents, replace
        shutil.rmtree(final)
    os.replace(tmp, final)
    for old in sorted(
        (p for p in root.iterdir() if p.name.startswith(CKPT_PREFIX)),
        key=lambda p: int(p.name[len(CKPT_PREFIX) :]),
    )[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    for stale in root.glob(".tmp-*"):  # temp dirs of killed processes
        if stale != tmp:
            shutil.rmtree(stale, ignore_errors=True)
    return final


def gather_training_state(model: Any, optimizer: torch.optim.Optimizer) -> tuple[dict, dict] | None:
    """Under FSDP the model's and the optimizer's state dicts gathered to full CPU tensors, in the 1-process
    layout (a collective: every process calls it); None when the model is not sharded."""
    from stackalign.training.distributed import full_state

    msd = _full_model_state(model)
    return None if msd is None else (msd, full_state(optimizer.state_dict()))


def _write_checkpoint(tmp, step, model, tokenizer, optimizer, algo_state, generators, extra_models, full):
    if tmp.exists():
        shutil.rmtree(tmp)
    msd, osd = full if full is not None else (None, optimizer.state_dict())
    model.save_pretrained(tmp, safe_serialization=True, **_given(msd))
    if tokenizer is not None:
        tokenizer.save_pretrained(tmp)
    for name, m in (extra_models or {}).items():
        m.save_pretrained(tmp / "extra" / name, safe_serialization=True)
    torch.save({"optimizer": osd, "rng": _rng_state(generators or {})}, tmp / "trainer_state.pt")
    (tmp / "trainer_state.json").write_text(json.dumps({"step": step, "algo_state": algo_state}, indent=2))
    _fsync_tree(tmp)


def load_checkpoint(
    ckpt: Path,
    model: Any,
    optimizer: torch.optim.Optimizer,
    *,
    generators: dict[str, torch.Generator] | None = None,
    extra_models: dict[str, Any] | None = None,
) -> tuple[int, dict]:
    """Restore a checkpoint in place; returns ``(step, algo_state)``. The trainer state is read first, so a
    checkpoint whose state is damaged fails before any weight changes."""
    meta = json.loads((ckpt / "trainer_state.json").read_text())
    blob = torch.load(ckpt / "trainer_state.pt", weights_only=False)
    load_weights_in_place(model, ckpt)
    for name, m in (extra_models or {}).items():
        load_weights_in_place(m, ckpt / "extra" / name)
    optimizer.load_state_dict(_sharded_optimizer_state(blob["optimizer"], optimizer))
    _set_rng_state(blob["rng"], generators or {})
    return int(meta["step"]), meta.get("algo_state", {})


# ---------------------------------------------------------------------------------------------------------
# The loop
# ---------------------------------------------------------------------------------------------------------
def _clip_grad_norm(params: list[torch.nn.Parameter], max_norm: float | None) -> float:
    """The global L2 norm of the gradients, clipped to ``max_norm`` unless None. FSDP-sharded gradients are
    DTensors: their norm is reduced over the processes (the full gradient's norm, the same in every process)."""
    from stackalign.training.distributed import is_dtensor

    norm = torch.nn.utils.get_total_norm([p.grad for p in params if p.grad is not None])
    if is_dtensor(norm):  # a partial norm of each process's shards: reduce it
        norm = norm.full_tensor()
    if max_norm is not None:  # what clip_grad_norm_ does, with the reduced norm
        torch.nn.utils.clip_grads_with_norm_(params, max_norm, norm)
    return float(norm)


def train_loop(
    model: Any,
    tokenizer: Any,
    step_fn: Callable[[int], StepOutput],
    settings: LoopSettings,
    out_dir: str | Path,
    *,
    algo_state: dict | None = None,
    generators: dict[str, torch.Generator] | None = None,
    extra_models: dict[str, Any] | None = None,
    params: list[torch.nn.Parameter] | None = None,
) -> LoopResult:
    """Train ``model`` for ``settings.steps`` optimizer steps, resuming from ``out_dir``'s latest checkpoint.

    Args:
        model: the trained HF model (saved into each checkpoint with ``tokenizer``).
        step_fn: ``step_fn(step) -> StepOutput``, called with step = 1..steps. It may read and mutate
            ``algo_state`` (a JSON-able dict saved in every checkpoint and restored in place on resume).
        settings: optimizer and checkpoint settings.
        out_dir: run directory (``metrics.jsonl`` and ``checkpoints/`` go here).
        algo_state: the algorithm's JSON-able state (updated in place on resume).
        generators: named ``torch.Generator`` s whose states are checkpointed.
        extra_models: other modules whose weights are checkpointed (``save_pretrained``-able), e.g. a
            reference that changes between rounds. Only ``model`` is optimised unless ``params`` says else.
        params: the parameters to optimise (default: ``model.parameters()`` that require grad).

    Returns:
        :class:`LoopResult`.
    """
    from stackalign.training.distributed import processes

    procs = processes()  # one process, or this one's place under `accelerate launch`
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    algo_state = algo_state if algo_state is not None else {}
    generators = generators or {}
    params = params if params is not None else [p for p in model.parameters() if p.requires_grad]
    seed_everything(settings.seed)
    optimizer = torch.optim.AdamW(
        params, lr=settings.lr, betas=settings.adam_betas, weight_decay=settings.weight_decay
    )
    log = MetricsLog(out_dir / "metrics.jsonl")
    start = 0
    procs.barrier()  # every process resumes from the same checkpoint
    damaged: list[str] = []
    for ckpt in complete_checkpoints(out_dir):  # newest first; a damaged one falls back to the one before
        try:
            start, restored = load_checkpoint(
                ckpt, model, optimizer, generators=generators, extra_models=extra_models
            )
        except Exception as e:  # safetensors, torch.load and JSON each raise their own types
            damaged.append(ckpt.name)
            _log.warning(
                "stackalign: warning: checkpoint %s is damaged (%s: %s); trying the one before it",
                ckpt,
                type(e).__name__,
                str(e)[:200],
            )
            continue
        algo_state.clear()
        algo_state.update(restored)
        break
    else:
        if damaged:
            raise ValueError(
                f"{out_dir / 'checkpoints'}: every checkpoint is damaged ({', '.join(damaged)}); delete that "
                "folder and metrics.jsonl to train from the start"
            )
    if start > settings.steps:
        raise ValueError(
            f"steps: the run directory has a checkpoint at step {start} > steps={settings.steps}"
        )
    rows = log.truncate_after(start) if procs.is_main else [r for r in log.rows() if r["step"] <= start]
    procs.barrier()
    t_start = time.perf_counter()
    bar = None
    if settings.progress and procs.is_main:
        from tqdm.auto import tqdm

        bar = tqdm(total=settings.steps, initial=start, desc="train", unit="step", dynamic_ncols=True)
    for step in range(start + 1, settings.steps + 1):
        t0 = time.perf_counter()
        with autocast_context(params[0].device, settings.bf16):
            out = step_fn(step)
        if out.loss is not None:
            if not torch.isfinite(out.loss):
                raise ValueError(f"step {step}: the loss is {out.loss.item()} (not finite)")
            out.loss.backward()
        procs.mean_grads(params)  # data parallel: the gradient of the global batch
        grad_norm = _clip_grad_norm(params, settings.max_grad_norm)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        row = procs.mean_metrics(
            {
                "step": step,
                "loss": float(out.loss.detach()) if out.loss is not None else None,
                "grad_norm": grad_norm,
                "lr": settings.lr,
                **{
                    k: (float(v) if isinstance(v, int | float | torch.Tensor) else v)
                    for k, v in out.metrics.items()
                },
                "seconds": time.perf_counter() - t0,
            }
        )
        row["step"] = step
        if procs.is_main:
            log.append(row)
        rows.append(row)
        if step % settings.checkpoint_every == 0 or step == settings.steps:
            full = gather_training_state(model, optimizer)  # FSDP: every process gathers, the main one writes
            if procs.is_main:
                save_checkpoint(
                    out_dir,
                    step,
                    model,
                    tokenizer,
                    optimizer,
                    algo_state=algo_state,
                    generators=generators,
                    extra_models=extra_models,
                    keep=settings.keep_checkpoints,
                    full=full,
                )
            procs.barrier()
        if bar is not None:
            bar.update(1)
            bar.set_postfix({k: f"{v:.3g}" for k, v in row.items() if k in ("loss", "reward", "kl")})
    if bar is not None:
        bar.close()
    return LoopResult(settings.steps, start, time.perf_counter() - t_start, rows)

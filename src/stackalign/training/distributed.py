"""Data-parallel training through ``accelerate``: the same ``train_loop`` in every process.

    accelerate launch --num_processes 2 -m stackalign train RECIPE.yaml --out DIR          # GPUs
    accelerate launch --num_processes 2 --cpu -m stackalign train RECIPE.yaml --out DIR    # CPU (gloo)

``accelerate launch`` starts the processes and sets up the process group (``accelerate.PartialState``);
this module only reads it. Each optimizer step's global batch (``batch_indices``: ``prompts_per_step``
prompts, or DPO's ``batch_size`` pairs) is split between the processes, item k going to process
k mod W, so the rollouts, the judging and the loss of a step are sharded. Every loss is a mean over its
batch, and the shards have equal size, so the mean over processes of the shard gradients (one all-reduce
after ``backward``) is the gradient of the global batch: W processes take the same optimizer steps as one
process with the same global batch, up to float rounding (batched forward passes of different shapes round
differently). Gradient clipping and AdamW then run identically in every process, so the replicas stay
equal. Metrics are averaged over processes; ``metrics.jsonl``, checkpoints, ``final/``, plots and the report
are written by the main process only, and every process resumes from the same checkpoint. Evaluation
(``stackalign.training.evaluate``: its rollouts, and the gold / reward-model / KL scoring of
``evaluate_policy``) is split the same way, prompt k to process k mod W, and gathered back in order, so
every process holds the whole result and the main process writes it; responses are seeded per prompt, so
they do not depend on the split. Win rates between two policies' gathered responses are judged in every
process (not split).

FSDP and DeepSpeed ZeRO-3 (``recipes/accelerate/fsdp.yaml``, ``zero3.yaml``) shard the weights themselves;
this trainer replicates the model in every process (DDP-style), so a launch with one of them is refused
with a clear message rather than silently replicating the model.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch

__all__ = ["Processes", "processes"]


@dataclass(frozen=True)
class Processes:
    """This process's place among the data-parallel processes (rank 0 of 1 without a launcher)."""

    rank: int = 0
    world: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world > 1

    def barrier(self) -> None:
        if self.distributed:
            torch.distributed.barrier()

    def shard(self, items: list, what: str = "prompts_per_step") -> list:
        """This process's items of a global batch (item k goes to process k mod W); the batch size must be a
        multiple of W so that every process's mean has the same weight."""
        if not self.distributed:
            return items
        if len(items) % self.world:
            raise ValueError(
                f"{what}: {len(items)} items per step cannot be split evenly over {self.world} processes; "
                f"use a multiple of {self.world}"
            )
        return items[self.rank :: self.world]

    def split(self, items: list) -> list:
        """This process's share of work that need not split evenly (evaluation): items k with k mod W == rank."""
        return list(items)[self.rank :: self.world] if self.distributed else list(items)

    def unsplit(self, local: list) -> list:
        """The inverse of :meth:`split`, in every process: every process's share gathered back into the
        original order (one ``all_gather_object``)."""
        if not self.distributed:
            return list(local)
        parts: list = [None] * self.world
        torch.distributed.all_gather_object(parts, list(local))
        out = []
        for k in range(sum(len(p) for p in parts)):
            out.append(parts[k % self.world][k // self.world])
        return out

    def mean_grads(self, params: list[torch.nn.Parameter]) -> None:
        """Replace every gradient by its mean over the processes (one all-reduce of a flat buffer)."""
        if not self.distributed:
            return
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
        flat = torch.cat([g.reshape(-1) for g in grads])
        torch.distributed.all_reduce(flat, op=torch.distributed.ReduceOp.SUM)
        flat /= self.world
        off = 0
        for p, g in zip(params, grads):
            n = g.numel()
            p.grad = flat[off : off + n].view_as(p).to(p.dtype)
            off += n

    def mean_metrics(self, row: dict[str, Any]) -> dict[str, Any]:
        """The mean over processes of every numeric value of a metrics row (others from this process)."""
        if not self.distributed:
            return row
        keys = [k for k, v in row.items() if isinstance(v, int | float) and not isinstance(v, bool)]
        t = torch.tensor([float(row[k]) for k in keys], dtype=torch.float64)
        torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.SUM)
        return {**row, **{k: float(v) / self.world for k, v in zip(keys, t.tolist())}}


_CURRENT: Processes | None = None


def processes() -> Processes:
    """The current data-parallel layout: from ``accelerate`` when launched with several processes
    (``WORLD_SIZE`` > 1), else a single process."""
    global _CURRENT
    if _CURRENT is not None:
        return _CURRENT
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return Processes()
    for var, name in (("ACCELERATE_USE_FSDP", "FSDP"), ("ACCELERATE_USE_DEEPSPEED", "DeepSpeed")):
        if os.environ.get(var, "").lower() in ("1", "true"):
            raise RuntimeError(
                f"accelerate config: {name} shards the model, but stackalign train replicates it in every "
                "process (data parallel); launch with a multi-GPU/multi-CPU config (recipes/accelerate/ddp.yaml)"
            )
    try:
        from accelerate import PartialState
    except ModuleNotFoundError:
        raise ModuleNotFoundError(
            "several processes (WORLD_SIZE > 1) need accelerate: pip install 'stackalign[lora]'"
        ) from None
    state = PartialState(cpu=not torch.cuda.is_available())  # CPU processes: gloo
    _CURRENT = Processes(state.process_index, state.num_processes)
    return _CURRENT

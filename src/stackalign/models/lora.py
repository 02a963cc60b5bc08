"""LoRA for every trainer, through ``peft``: the recipe's ``lora:`` block, adapter views, saving and loading.

With ``lora: {r: 64, alpha: 128}`` in a train recipe the policy is the frozen base model with trainable
low-rank adapters (Hu et al., arXiv 2106.09685, eq. 3: h = W0 x + (alpha / r) · B A x, B = 0 at the
start, so training starts from the base policy exactly). Everything an algorithm needs comes from one
place, :class:`stackalign.training.run.TrainContext`, which calls this module:

* the policy is a ``peft.PeftModel`` (its ``forward`` passes the base model's keyword arguments through;
  ``stackalign.decoding.common.forward_params`` reads the base model's signature);
* the reference π_ref is the same model seen through :class:`AdapterView` with the adapters disabled
  (``PeftModel.disable_adapter()``): no second copy of the weights. Since the base is frozen and B A is the
  only trained part, the adapter-off model *is* the initial policy, bit for bit;
* SLHF's leader and follower are two adapters ("default" and "follower") on one frozen base, each seen
  through its own :class:`AdapterView` (``lora.shared: true``: one adapter plays both, as the full model
  does without LoRA);
* checkpoints and ``final/`` hold the adapters (``adapter_config.json`` + ``adapter_model.safetensors``;
  the follower's in ``follower/``), plus ``final/merged/`` (the base with the leader / default adapter
  merged in, a plain HF model directory) when ``lora.merge: true``;
* a directory with ``adapter_config.json`` is accepted wherever a policy is (``stackalign.models.load_policy``
  loads the base named in it, then the adapter).

The trainers keep their models in ``eval()`` mode (exact resume, see ``stackalign.training.loop``), so
``lora.dropout`` is recorded in the adapter config but inactive during these trainers' updates.
"""

from __future__ import annotations

import copy
import json
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

__all__ = [
    "LoraSettings",
    "FOLLOWER",
    "require_peft",
    "apply_lora",
    "AdapterView",
    "is_peft_model",
    "is_adapter_dir",
    "load_adapter_weights",
    "save_adapter_dir",
    "count_lora_params",
]

FOLLOWER = "follower"  # the name of SLHF's second adapter (the leader's is peft's "default")


@dataclass
class LoraSettings:
    """A train recipe's ``lora:`` block (absent or null: full fine-tuning)."""

    r: int = field(default=16, metadata={"help": "LoRA rank r (>= 1)"})
    alpha: float = field(default=32.0, metadata={"help": "LoRA alpha: the update is scaled by alpha / r"})
    dropout: float = field(
        default=0.0,
        metadata={
            "help": "LoRA dropout in [0, 1) (saved in the adapter; inactive here: trainers use eval mode)"
        },
    )
    target_modules: list[str] | str = field(
        default="all-linear",
        metadata={
            "help": "module names to adapt (e.g. [q_proj, v_proj]) or 'all-linear' (every linear but the head)"
        },
    )
    shared: bool = field(
        default=False, metadata={"help": "slhf: one adapter for leader and follower (default: two adapters)"}
    )
    merge: bool = field(
        default=False, metadata={"help": "also write final/merged/: the base with the adapter merged in"}
    )

    def __post_init__(self) -> None:
        if isinstance(self.r, bool) or not isinstance(self.r, int) or self.r < 1:
            raise ValueError(f"r: must be an integer >= 1, got {self.r!r}")
        if isinstance(self.alpha, bool) or not isinstance(self.alpha, int | float) or not self.alpha > 0:
            raise ValueError(f"alpha: must be a number > 0, got {self.alpha!r}")
        if isinstance(self.dropout, bool) or not isinstance(self.dropout, int | float):
            raise ValueError(f"dropout: must be a number in [0, 1), got {self.dropout!r}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout: must be in [0, 1), got {self.dropout!r}")
        tm = self.target_modules
        if isinstance(tm, str):
            if not tm.strip():
                raise ValueError("target_modules: must be 'all-linear' or a non-empty list of module names")
        elif not tm or not all(isinstance(m, str) and m.strip() for m in tm):
            raise ValueError(f"target_modules: must be a non-empty list of module names, got {tm!r}")


def require_peft() -> Any:
    """Import ``peft`` or fail with the install command."""
    try:
        import peft
    except ModuleNotFoundError:
        raise ModuleNotFoundError(
            "lora: needs the optional package peft: pip install 'stackalign[lora]'"
        ) from None
    return peft


def is_peft_model(model: Any) -> bool:
    return callable(getattr(model, "get_base_model", None)) and hasattr(model, "peft_config")


def apply_lora(model: Any, settings: LoraSettings, *, adapters: tuple[str, ...] = ("default",),
               base_name: str | None = None) -> Any:  # fmt: skip
    """Wrap ``model`` (frozen) in a ``PeftModel`` with one trainable LoRA adapter per name in ``adapters``.

    Every adapter starts with B = 0 (peft's default init), so the wrapped model computes exactly the base
    model's outputs. Adapter weights are seeded by the current torch RNG state (A's Kaiming init): the
    trainers seed it first, so the adapters are a pure function of the recipe's seed."""
    peft = require_peft()
    tm = settings.target_modules
    cfg = peft.LoraConfig(
        r=settings.r,
        lora_alpha=settings.alpha,
        lora_dropout=settings.dropout,
        target_modules=tm if isinstance(tm, str) else list(tm),
        bias="none",
        task_type="CAUSAL_LM",
    )
    if base_name is not None:
        cfg.base_model_name_or_path = base_name
    try:
        pm = peft.get_peft_model(model, cfg, adapter_name=adapters[0])
    except ValueError as e:  # e.g. target modules that the model does not have
        raise ValueError(f"lora.target_modules: {e}") from None
    for name in adapters[1:]:
        pm.add_adapter(name, copy.deepcopy(cfg))
    if base_name is not None:  # peft replaces it by the loaded path (e.g. a cache directory); keep the name
        for c in pm.peft_config.values():
            c.base_model_name_or_path = base_name
    for n, p in pm.named_parameters():  # every adapter trainable (peft marks only the active one)
        p.requires_grad_("lora_" in n)
    pm.set_adapter(adapters[0])
    _restore_grads(pm, {n for n, _ in pm.named_parameters() if "lora_" in n})
    pm.eval()
    return pm


def _restore_grads(pm: Any, trainable: set[str]) -> None:
    for n, p in pm.named_parameters():
        want = n in trainable
        if p.requires_grad != want:
            p.requires_grad_(want)


@contextmanager
def use_adapter(pm: Any, adapter: str | None):
    """Run ``pm`` with ``adapter`` active (None: every adapter disabled, the base model) inside the block.

    peft's ``set_adapter`` / ``disable_adapter`` also switch ``requires_grad`` of the adapters they
    deactivate; the trainable set is restored on exit, so two adapters can both be trained in one step."""
    trainable = {n for n, p in pm.named_parameters() if p.requires_grad}
    before = pm.active_adapter
    try:
        if adapter is None:
            with pm.disable_adapter():
                yield
        else:
            if adapter != before:
                pm.set_adapter(adapter)
            yield
    finally:
        if adapter is not None and pm.active_adapter != before:
            pm.set_adapter(before)
        _restore_grads(pm, trainable)


class AdapterView:
    """A shared ``PeftModel`` seen with one adapter active, or with adapters off (``adapter=None``: the frozen
    base, the reference policy). Calls (``__call__``, ``forward``, ``generate``) run inside
    :func:`use_adapter`; every other attribute is the wrapped model's, so a view goes wherever a model does
    (sampling, log-probs, evaluation)."""

    def __init__(self, peft_model: Any, adapter: str | None):
        object.__setattr__(self, "_pm", peft_model)
        object.__setattr__(self, "_adapter", adapter)

    def __call__(self, *args, **kwargs):
        with use_adapter(self._pm, self._adapter):
            return self._pm(*args, **kwargs)

    forward = __call__

    def generate(self, *args, **kwargs):
        with use_adapter(self._pm, self._adapter):
            return self._pm.generate(*args, **kwargs)

    def get_base_model(self) -> Any:
        return self._pm.get_base_model()

    def requires_grad_(self, flag: bool = True):  # the reference is frozen by construction
        if flag:
            raise ValueError("an adapter view shares its weights; train the PeftModel itself")
        return self

    def __getattr__(self, name: str) -> Any:
        return getattr(self._pm, name)

    def __repr__(self) -> str:
        return f"AdapterView({'base (adapters off)' if self._adapter is None else self._adapter!r})"


def count_lora_params(model: Any) -> int:
    return sum(p.numel() for n, p in model.named_parameters() if "lora_" in n)


# ------------------------------------------------------------------------------------------ on disk
def is_adapter_dir(path: str | Path) -> bool:
    """True for a directory written by peft's ``save_pretrained`` (``adapter_config.json`` inside)."""
    p = Path(path)
    return p.is_dir() and (p / "adapter_config.json").is_file()


def adapter_base_name(path: str | Path) -> str:
    """The base model an adapter directory was trained on (``base_model_name_or_path``)."""
    cfg = json.loads((Path(path) / "adapter_config.json").read_text())
    base = cfg.get("base_model_name_or_path")
    if not base:
        raise ValueError(f"policy: {str(path)!r}/adapter_config.json names no base_model_name_or_path")
    return base


def _adapter_dirs(pm: Any, root: Path) -> dict[str, Path]:
    """Where peft's ``save_pretrained`` puts each adapter: "default" in ``root``, the others in subdirs."""
    return {name: root if name == "default" else root / name for name in pm.peft_config}


def load_adapter_weights(pm: Any, root: str | Path, *, layout: Any = None) -> None:
    """Load every adapter of ``pm`` from a ``save_pretrained`` directory in place (exact copy). ``layout(tensor,
    param)``: the full tensor read from disk laid out as the parameter it loads into (an FSDP-sharded model:
    this process's shard, ``stackalign.training.distributed.sharded_like``); default: as read."""
    peft = require_peft()
    from peft.utils import set_peft_model_state_dict

    for name, d in _adapter_dirs(pm, Path(root)).items():
        if not (d / "adapter_model.safetensors").is_file():
            raise ValueError(f"checkpoint {str(d)!r} holds no adapter_model.safetensors for adapter {name!r}")
        state = peft.utils.load_peft_weights(str(d), device="cpu")
        if layout is not None:
            state = _laid_out_adapter_state(pm, state, name, layout)
        res = set_peft_model_state_dict(pm, state, adapter_name=name)
        unexpected = list(getattr(res, "unexpected_keys", []) or [])
        missing = [k for k in getattr(res, "missing_keys", []) or [] if "lora_" in k and f".{name}." in k]
        if unexpected or missing:
            raise ValueError(
                f"checkpoint {str(d)!r} does not match adapter {name!r}: missing {missing[:5]}, "
                f"unexpected {unexpected[:5]}"
            )


def _laid_out_adapter_state(pm: Any, state: dict, adapter: str, layout: Any) -> dict:
    """An adapter file's tensors (keys without the adapter name: ``...lora_A.weight``) passed through
    ``layout(tensor, param)`` with the parameters they load into (``...lora_A.<adapter>.weight``)."""
    params = dict(pm.named_parameters())
    out = {}
    for k, v in state.items():
        head, _, leaf = k.rpartition(".")
        like = params.get(f"{head}.{adapter}.{leaf}", params.get(k))
        out[k] = layout(v, like) if like is not None else v
    return out


def save_adapter_dir(
    pm: Any, tokenizer: Any, path: Path, *, merge: bool, state_dict: dict | None = None
) -> None:
    """``save_pretrained`` of the adapters (and tokenizer) into ``path``; with ``merge`` also
    ``path/merged/`` (a copy of the base with the default adapter merged in: a plain HF model dir).
    ``state_dict``: the model's weights gathered beforehand (an FSDP-sharded model), read instead of its own."""
    if state_dict is not None and merge:
        raise ValueError(
            "lora.merge: not supported when the model is sharded (FSDP); merge the saved adapter"
        )
    pm.save_pretrained(
        path, safe_serialization=True, **({} if state_dict is None else {"state_dict": state_dict})
    )
    if tokenizer is not None:
        tokenizer.save_pretrained(path)
    if merge:
        merged = copy.deepcopy(pm)
        if merged.active_adapter != "default":
            merged.set_adapter("default")
        plain = merged.merge_and_unload(adapter_names=["default"])
        plain.save_pretrained(path / "merged", safe_serialization=True)
        if tokenizer is not None:
            tokenizer.save_pretrained(path / "merged")
        del merged, plain


@torch.no_grad()
def lora_is_zero(pm: Any) -> bool:
    """True while every adapter's B is zero (the model equals its base)."""
    return all(float(p.abs().max()) == 0.0 for n, p in pm.named_parameters() if "lora_B" in n)

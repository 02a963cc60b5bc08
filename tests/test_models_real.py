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


@pytest.mark.slow
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


def test_reward_model_from_policy_shares_backbone_and_tokenizer(smol_dir, tmp_path):
    from transformers import AutoModelForCausalLM

    from stackalign.cli import main
    from stackalign.models import load_reward_model, shares_tokenizer
    from stackalign.models.loading import _load_tokenizer

    assert (
        main(
            ["models", "reward-from", "smollm2-135m-instruct", "--out", str(tmp_path / "rm"), "--layers", "2"]
        )
        == 0
    )
    rm = load_reward_model(tmp_path / "rm")
    assert rm.model.config.num_hidden_layers == 2 and rm.model.config.num_labels == 1
    lm = AutoModelForCausalLM.from_pretrained(smol_dir)
    # the backbone's first block is the policy's, copied
    a = rm.model.base_model.layers[0].self_attn.q_proj.weight
    b = lm.model.layers[0].self_attn.q_proj.weight
    assert torch.equal(a, b)
    assert shares_tokenizer(_load_tokenizer(smol_dir, False), rm.tokenizer)
    r = rm(["What is 2+2?", "What is 2+2?"], [" 4", " Four."])
    assert r.shape == (2,) and torch.isfinite(r).all() and r[0] != r[1]
    assert (
        main(
            ["models", "reward-from", "smollm2-135m-instruct", "--out", str(tmp_path / "x"), "--layers", "99"]
        )
        == 2
    )

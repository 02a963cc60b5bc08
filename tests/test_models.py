"""stackalign.models: loading by local directory (from_pretrained), the RM input format, tokenizer checks."""

from __future__ import annotations

import json

import pytest
import torch
from tiny_models import bpe_tokenizer
from transformers import (
    GPT2Config,
    GPT2ForSequenceClassification,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
    LlamaForSequenceClassification,
    PreTrainedTokenizerFast,
)

from stackalign.models import (
    CallableReward,
    RewardModel,
    format_rm_input,
    load_policy,
    load_reward_model,
    require_shared_tokenizer,
    shares_tokenizer,
)

CORPUS = [
    "User: How do I bake bread?\nAssistant: Mix flour, water and yeast, then bake it.",
    "User: Tell me about cats.\nAssistant: Cats are small, curious animals. Thank you for asking!",
    "User: What is rain?\nAssistant: Water that falls from clouds.",
] * 5


def _tokenizer(vocab_size: int = 300, extra: str = "") -> PreTrainedTokenizerFast:
    return bpe_tokenizer([c + extra for c in CORPUS], vocab_size, pad=False)


@pytest.fixture(scope="module")
def tok():
    return _tokenizer()


def _gpt2_config(tok, **kw):
    return GPT2Config(
        vocab_size=len(tok),
        n_positions=128,
        n_embd=32,
        n_layer=2,
        n_head=2,
        eos_token_id=tok.eos_token_id,
        **kw,
    )


def _llama_config(tok, **kw):
    return LlamaConfig(
        vocab_size=len(tok),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=128,
        eos_token_id=tok.eos_token_id,
        **kw,
    )


def _save(model, tok, path):
    torch.manual_seed(0)
    model.save_pretrained(path)  # safetensors by default
    tok.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def dirs(tok, tmp_path_factory):
    torch.manual_seed(0)
    root = tmp_path_factory.mktemp("models")
    return {
        "gpt2_policy": _save(GPT2LMHeadModel(_gpt2_config(tok)), tok, root / "gpt2_policy"),
        "gpt2_rm": _save(
            GPT2ForSequenceClassification(_gpt2_config(tok, num_labels=1)), tok, root / "gpt2_rm"
        ),
        "llama_policy": _save(LlamaForCausalLM(_llama_config(tok)), tok, root / "llama_policy"),
        "llama_rm": _save(
            LlamaForSequenceClassification(_llama_config(tok, num_labels=1)), tok, root / "llama_rm"
        ),
        "gpt2_2labels": _save(
            GPT2ForSequenceClassification(_gpt2_config(tok, num_labels=2)), tok, root / "gpt2_2labels"
        ),
    }


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_load_policy_local_dir(dirs, arch):
    model, tokenizer = load_policy(dirs[f"{arch}_policy"])
    assert not model.training
    assert tokenizer.padding_side == "left"
    assert tokenizer.pad_token is not None and tokenizer.pad_token_id == tokenizer.eos_token_id
    assert model.dtype == torch.float32
    enc = tokenizer(
        ["User: Hi\nAssistant:", "User: Tell me about cats.\nAssistant:"], return_tensors="pt", padding=True
    )
    out = model.generate(**enc, max_new_tokens=3, do_sample=False)
    assert out.shape[0] == 2


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_load_reward_model_scores_with_left_padding(dirs, arch):
    rm = load_reward_model(dirs[f"{arch}_rm"])
    assert isinstance(rm, RewardModel) and rm.chat_template is False
    assert rm.model.config.pad_token_id == rm.tokenizer.pad_token_id
    prompts = [
        "User: Hi\nAssistant:",
        "User: Tell me about cats.\nAssistant:",
        "User: What is rain?\nAssistant:",
    ]
    responses = [" Hello!", " Cats are small, curious animals. Thank you for asking!", " Water."]
    batched = rm(prompts, responses, batch_size=3)
    single = torch.cat([rm([p], [r]) for p, r in zip(prompts, responses)])
    assert batched.dtype == torch.float32 and batched.shape == (3,)
    torch.testing.assert_close(batched, single, atol=1e-5, rtol=1e-5)
    # score_ids on the formatted text == text scoring; right padding gives the same answer.
    ids = rm.encode(prompts, responses)
    assert rm.n_tokens_scored == 2 * sum(len(i) for i in ids)
    input_ids, mask = rm.pad(ids)
    torch.testing.assert_close(rm.score_ids(input_ids, mask), batched, atol=1e-5, rtol=1e-5)
    width = max(len(i) for i in ids)
    right = torch.full((3, width), rm.tokenizer.pad_token_id)
    rmask = torch.zeros((3, width), dtype=torch.long)
    for i, s in enumerate(ids):
        right[i, : len(s)] = torch.tensor(s)
        rmask[i, : len(s)] = 1
    torch.testing.assert_close(rm.score_ids(right, rmask), batched, atol=1e-5, rtol=1e-5)


def test_response_ending_in_eos_equal_to_pad_is_scored_at_eos(dirs):
    rm = load_reward_model(dirs["llama_rm"])
    eos = rm.tokenizer.eos_token
    with_eos = rm(["User: Hi\nAssistant:"], [" Hello!" + eos])
    without = rm(["User: Hi\nAssistant:"], [" Hello!"])
    assert not torch.allclose(with_eos, without)  # HF pooling (pad == eos) would have skipped the eos


def test_incremental_scoring_matches_full(dirs):
    """RM KV cache: score a prefix, then one more token against the cache == full forward."""
    rm = load_reward_model(dirs["llama_rm"])
    ids = rm.encode(["User: Tell me about cats.\nAssistant:"], [" Cats are small"])[0]
    full = rm.score_ids(torch.tensor([ids]))
    x = torch.tensor([ids[:-1]])
    _, cache = rm.score_positions(x, torch.ones_like(x), use_cache=True)
    step, _ = rm.score_positions(
        torch.tensor([[ids[-1]]]), torch.ones(1, len(ids), dtype=torch.long), cache=cache
    )
    torch.testing.assert_close(step[:, -1], full, atol=1e-5, rtol=1e-5)


def test_format_rm_input_plain_is_concatenation_and_ids_concatenate(dirs):
    assert format_rm_input("User: Hi\nAssistant:", " Hello") == "User: Hi\nAssistant: Hello"
    rm = load_reward_model(dirs["gpt2_rm"])
    assert rm.format("a", "b") == "ab"
    with pytest.raises(ValueError, match="chat template"):
        format_rm_input("a", "b", chat_template=True)
    with pytest.raises(ValueError, match="must be str"):
        format_rm_input("a", None)


def test_format_rm_input_chat_template(tok):
    t = _tokenizer()
    t.chat_template = "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}\n{% endfor %}"
    assert (
        format_rm_input("Hi?", "Yes.", tokenizer=t, chat_template=True) == "<|user|>Hi?\n<|assistant|>Yes.\n"
    )


def test_load_reward_model_with_chat_template_requires_template(dirs):
    with pytest.raises(ValueError, match="no chat template"):
        load_reward_model(dirs["gpt2_rm"], chat_template=True)


def test_shares_tokenizer(dirs, tok):
    _, tok_a = load_policy(dirs["gpt2_policy"])
    rm = load_reward_model(dirs["llama_rm"])
    assert shares_tokenizer(tok_a, rm.tokenizer)
    assert shares_tokenizer(tok_a, tok_a)
    require_shared_tokenizer(tok_a, rm, purpose="incremental ARGS scoring")
    other = _tokenizer(vocab_size=330, extra=" zebra quokka")
    assert not shares_tokenizer(tok_a, other)
    with pytest.raises(ValueError, match="incremental ARGS scoring needs.*same tokenizer|share the policy"):
        require_shared_tokenizer(tok_a, other, purpose="incremental ARGS scoring")
    with pytest.raises(ValueError, match="text-level"):
        require_shared_tokenizer(tok_a, CallableReward(lambda p, r: 0.0), purpose="incremental ARGS scoring")
    rm.chat_template = True
    with pytest.raises(ValueError, match="chat template"):
        require_shared_tokenizer(tok_a, rm, purpose="incremental ARGS scoring")


def test_callable_reward():
    rm = CallableReward(lambda p, r: len(r) - len(p))
    out = rm(["ab", "a"], ["abcd", "a"])
    assert out.dtype == torch.float32 and out.tolist() == [2.0, 0.0]
    assert rm.tokenizer is None and rm.n_calls == 2
    with pytest.raises(ValueError, match="2 prompts but 1 responses"):
        rm(["a", "b"], ["c"])
    with pytest.raises(ValueError, match="non-finite"):
        CallableReward(lambda p, r: float("nan"))(["a"], ["b"])
    with pytest.raises(ValueError, match="not a number"):
        CallableReward(lambda p, r: "high")(["a"], ["b"])


def test_bad_inputs(dirs, tmp_path):
    missing = tmp_path / "no_such_model"
    with pytest.raises(FileNotFoundError, match="no_such_model"):
        load_policy(missing)
    with pytest.raises(FileNotFoundError, match="no_such_model"):
        load_reward_model(str(missing))
    with pytest.raises(FileNotFoundError):
        load_policy("./relative/missing/model")
    empty = tmp_path / "bin_only"
    empty.mkdir()
    (empty / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    (empty / "pytorch_model.bin").write_bytes(b"\0")
    with pytest.raises(ValueError, match="safetensors only"):
        load_policy(empty)
    with pytest.raises(ValueError, match="num_labels=2"):
        load_reward_model(dirs["gpt2_2labels"])
    with pytest.raises(ValueError, match="dtype"):
        load_policy(dirs["gpt2_policy"], dtype="float8")
    (tmp_path / "file.txt").write_text("x")
    with pytest.raises(ValueError, match="is a file"):
        load_policy(tmp_path / "file.txt")


def test_dtype_option(dirs):
    model, _ = load_policy(dirs["llama_policy"], dtype="bfloat16")
    assert model.dtype == torch.bfloat16

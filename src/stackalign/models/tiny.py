"""Tiny random-weight models of the architecture families users bring, for tests and benchmarks.

``tiny_pair(family, tokenizer)`` builds a causal LM and a one-label sequence classifier (reward model) of
``family`` with the given tokenizer's vocabulary, from the family's own ``transformers`` config class at toy
sizes (hidden 32, 2 layers, GQA where the family has it). Nothing is downloaded.

Families: gpt2, llama (Llama 2 style), llama3 (Llama 3 rope scaling), qwen2, qwen3, mistral (every layer sliding-window),
gemma2 and gemma3 (alternating sliding-window / full layers, Gemma 2's logit soft-capping), phi3 (fused
QKV). ``sliding_window`` sets the window of the families that have one (None = the family's default,
far longer than any test sequence).
"""

from __future__ import annotations

from typing import Any

import torch

__all__ = ["FAMILIES", "SLIDING_FAMILIES", "bpe_tokenizer", "tiny_config", "tiny_pair"]

FAMILIES = ("gpt2", "llama", "llama3", "qwen2", "qwen3", "mistral", "gemma2", "gemma3", "phi3")
SLIDING_FAMILIES = ("mistral", "gemma2", "gemma3")

_COMMON = dict(
    hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2
)


def tiny_config(family: str, vocab_size: int, *, sliding_window: int | None = None, **kw: Any) -> Any:
    """The ``transformers`` config of a tiny ``family`` model (``kw`` override fields, e.g. num_labels)."""
    import transformers as tf

    if family not in FAMILIES:
        raise ValueError(f"family: unknown {family!r}; choose from {FAMILIES}")
    if family == "gpt2":
        sizes = dict(n_positions=256, n_embd=32, n_layer=2, n_head=2)
        return tf.GPT2Config(**{"vocab_size": vocab_size, "bos_token_id": None, **sizes, **kw})
    c = {"vocab_size": vocab_size, "bos_token_id": None, "max_position_embeddings": 256, **_COMMON}
    if sliding_window is not None and family in SLIDING_FAMILIES:  # the others have no window to set
        c["sliding_window"] = sliding_window
    if family == "llama":
        return tf.LlamaConfig(**{**c, **kw})
    if family == "llama3":  # rope_type "llama3" frequency scaling
        rope = {
            "rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0,
            "high_freq_factor": 4.0, "original_max_position_embeddings": 64,
        }  # fmt: skip
        return tf.LlamaConfig(**{**c, "rope_parameters": rope, **kw})
    if family == "qwen2":
        return tf.Qwen2Config(**{**c, **kw})
    if family == "qwen3":
        return tf.Qwen3Config(**{**c, "head_dim": 8, **kw})
    if family == "mistral":
        return tf.MistralConfig(**{**c, **kw})
    if (
        family == "gemma2"
    ):  # layer 0 sliding, layer 1 full; logit + attention soft-capping; eager as HF advises
        return tf.Gemma2Config(**{**c, "head_dim": 8, "attn_implementation": "eager", **kw})
    if family == "gemma3":
        types = ["sliding_attention", "full_attention", "sliding_attention"]
        return tf.Gemma3TextConfig(**{**c, "num_hidden_layers": 3, "head_dim": 8, "layer_types": types, **kw})
    return tf.Phi3Config(**{**c, **kw})  # phi3


def _classes(family: str) -> tuple[Any, Any]:
    import transformers as tf

    return {
        "gpt2": (tf.GPT2LMHeadModel, tf.GPT2ForSequenceClassification),
        "llama": (tf.LlamaForCausalLM, tf.LlamaForSequenceClassification),
        "llama3": (tf.LlamaForCausalLM, tf.LlamaForSequenceClassification),
        "qwen2": (tf.Qwen2ForCausalLM, tf.Qwen2ForSequenceClassification),
        "qwen3": (tf.Qwen3ForCausalLM, tf.Qwen3ForSequenceClassification),
        "mistral": (tf.MistralForCausalLM, tf.MistralForSequenceClassification),
        "gemma2": (tf.Gemma2ForCausalLM, tf.Gemma2ForSequenceClassification),
        "gemma3": (tf.Gemma3ForCausalLM, tf.Gemma3TextForSequenceClassification),
        "phi3": (tf.Phi3ForCausalLM, tf.Phi3ForSequenceClassification),
    }[family]


def tiny_pair(
    family: str,
    tokenizer: Any,
    *,
    seed: int = 0,
    init_std: float = 0.2,
    sliding_window: int | None = None,
    device: Any = "cpu",
    **sizes: Any,
) -> tuple[Any, Any]:
    """``(policy, RewardModel)``: tiny random fp32 models of ``family`` sharing ``tokenizer``, in eval mode.

    ``init_std`` above HF's default spreads logits and rewards out, so greedy choices have no near-ties;
    ``sizes`` override config fields (e.g. ``hidden_size=128`` for the benchmark's larger toy)."""
    from stackalign.models.reward import RewardModel

    lm_cls, rm_cls = _classes(family)
    ids = dict(eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(seed)
    kw = dict(sliding_window=sliding_window, initializer_range=init_std, **ids, **sizes)
    policy = lm_cls(tiny_config(family, len(tokenizer), **kw)).eval().to(device)
    rm_model = rm_cls(tiny_config(family, len(tokenizer), num_labels=1, **kw)).eval().to(device)
    policy.generation_config.pad_token_id = tokenizer.pad_token_id
    policy.generation_config.eos_token_id = tokenizer.eos_token_id
    return policy, RewardModel(rm_model, tokenizer)


def bpe_tokenizer(texts: list[str], vocab_size: int = 300, *, pad: bool = True) -> Any:
    """A byte-level BPE tokenizer trained on ``texts`` with <pad>, <eos>, <unk>. With ``pad``, <pad> is the pad
    token and padding is on the left (as the decoders need); without, no pad token is set."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<pad>", "<eos>", "<unk>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(texts, trainer)
    if not pad:
        return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<eos>", unk_token="<unk>")
    t = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<eos>", unk_token="<unk>", pad_token="<pad>")
    t.padding_side = "left"
    return t

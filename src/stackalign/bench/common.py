"""What the benchmarks share: the models they time, a best-of-repeats clock, the result row and table."""

from __future__ import annotations

import time
from typing import Any

__all__ = ["Clock", "load_models", "print_table", "row", "tiny_models"]


# Prompts of a benchmark on the user's own models (no world): rendered with the policy's chat template
# when it has one.
OWN_MODEL_QUESTIONS = [
    "What is the capital of France?",
    "Write a haiku about rain.",
    "How do I boil an egg?",
    "Name three prime numbers and explain why they are prime.",
    "Why is the sky blue?",
    "Give me a short tip for learning Python.",
    "Summarize the plot of Romeo and Juliet in two sentences.",
    "What should I pack for a weekend hiking trip?",
]


def load_models(
    world: str | None,
    device: str = "cpu",
    *,
    policy: str | None = None,
    reward_model: str | None = None,
) -> tuple[Any, Any, Any, list[str], str]:
    """``(policy, tokenizer, reward_model, prompts, description)`` from a world directory, the cached
    default world (``world=None``), tiny random models (``world="tiny"``), or a random Llama pair of a given
    size (``world="random:HIDDEN:LAYERS"``, e.g. ``random:1024:16``: head size 64, MLP 8/3 x hidden, 4 query
    heads per KV head), to see how the ratios move when the models are no longer toys.

    ``policy`` / ``reward_model`` (a directory or a model name such as ``smollm2-135m-instruct``) replace
    the world's: with both given no world is needed (the prompts are :data:`OWN_MODEL_QUESTIONS`, through
    the policy's chat template when it has one); with one, the world (or the default world) supplies the
    other model and the prompts."""
    if policy is not None or reward_model is not None:
        return _own_models(world, device, policy, reward_model)
    if world == "tiny":
        return tiny_models(device) + ("tiny random Llama policy + reward model (no world)",)
    if world is not None and world.startswith("random:"):
        try:
            hidden, layers = (int(v) for v in world.split(":")[1:])
        except ValueError:
            raise ValueError(
                f"--world: expected random:HIDDEN:LAYERS (e.g. random:1024:16), got {world!r}"
            ) from None
        if hidden < 64 or hidden % 64 or layers < 1:
            raise ValueError(f"--world {world}: HIDDEN must be a multiple of 64 and LAYERS >= 1")
        heads = hidden // 64
        sizes = dict(
            hidden_size=hidden,
            intermediate_size=hidden * 8 // 3,
            num_hidden_layers=layers,
            num_attention_heads=heads,
            num_key_value_heads=max(1, heads // 4),
        )
        policy, tok, rm, prompts = tiny_models(device, **sizes)
        n = sum(p.numel() for p in policy.parameters())
        return (
            policy,
            tok,
            rm,
            prompts,
            f"random Llama pair, hidden {hidden}, {layers} layers ({n / 1e6:.0f}M params each)",
        )
    from stackalign.worlds import default_world, load_world

    w = load_world(world) if world else default_world()
    policy, tok = w.load_policy(device=device)
    rm = w.load_reward_model(device=device)
    return policy, tok, rm, list(w.test_prompts), f"world {w.root}"


def _own_models(
    world: str | None, device: str, policy: str | None, reward_model: str | None
) -> tuple[Any, Any, Any, list[str], str]:
    from stackalign.models import load_policy, load_reward_model

    if policy is None or reward_model is None:
        pol, tok, rm, prompts, desc = load_models(world, device)
        if policy is not None:
            pol, tok = load_policy(policy, device=device)
        if reward_model is not None:
            rm = load_reward_model(reward_model, device=device)
        return pol, tok, rm, prompts, f"policy {policy or desc}, reward model {reward_model or desc}"
    if world is not None:
        raise ValueError("--world: give either a world or both --policy and --reward-model, not all three")
    pol, tok = load_policy(policy, device=device)
    rm = load_reward_model(reward_model, device=device)
    if getattr(tok, "chat_template", None):
        prompts = [
            tok.apply_chat_template(
                [{"role": "user", "content": q}], add_generation_prompt=True, tokenize=False
            )
            for q in OWN_MODEL_QUESTIONS
        ]
    else:
        prompts = [f"Question: {q}\nAnswer:" for q in OWN_MODEL_QUESTIONS]
    return pol, tok, rm, prompts, f"policy {policy}, reward model {reward_model}"


def tiny_models(device: str = "cpu", **sizes: Any) -> tuple[Any, Any, Any, list[str]]:
    """``(policy, tokenizer, reward_model, prompts)``: a random Llama pair (hidden 128 unless ``sizes`` say
    otherwise, HF's default init) on a 1024-token BPE vocabulary, from the builder the tests use
    (:mod:`stackalign.models.tiny`)."""
    from stackalign.models.tiny import bpe_tokenizer, tiny_pair

    texts = [
        f"User: question {i} about topic {i % 7}?\nAssistant: answer {i} with detail {i * 3}."
        for i in range(200)
    ]
    tok = bpe_tokenizer(texts, 1024)
    sizes = sizes or dict(hidden_size=128, intermediate_size=384, num_key_value_heads=4)
    policy, rm = tiny_pair("llama", tok, init_std=0.02, device=device, **sizes)
    prompts = [f"User: tell me about topic {i} and question {3 * i}?\nAssistant:" for i in range(32)]
    return policy, tok, rm, prompts


class Clock:
    """Best (minimum) wall-clock and process-CPU seconds per variant over repeated runs.

    Wall-clock is the decoder's own ``cost.seconds``. Process CPU time (``time.process_time``) is also kept:
    on a CPU shared with other jobs it is far less noisy than wall-clock, because time spent descheduled does
    not count (with several torch threads it sums them, so compare it only within one run)."""

    def __init__(self) -> None:
        self.wall: dict[str, float] = {}
        self.cpu: dict[str, float] = {}
        self.outs: dict[str, Any] = {}

    def run(self, name: str, fn, gen) -> Any:
        c0 = time.process_time()
        out = fn(gen)
        cpu = time.process_time() - c0
        self.outs[name] = out
        self.wall[name] = min(self.wall.get(name, float("inf")), out.cost.seconds)
        self.cpu[name] = min(self.cpu.get(name, float("inf")), cpu)
        return out


def row(out: Any, clock: Clock, name: str) -> dict:
    ids = out.token_ids
    n_tokens = sum(sum(len(x) for x in r) if r and isinstance(r[0], list) else len(r) for r in ids)
    wall = clock.wall[name]
    return {
        "seconds": wall,
        "cpu_seconds": clock.cpu[name],
        "new_tokens": n_tokens,
        "tokens_per_second": n_tokens / wall if wall > 0 else None,
        "lm_tokens": out.cost.lm_tokens,
        "rm_tokens": out.cost.rm_tokens,
    }


def print_table(out: dict) -> None:
    print(
        f"stackalign bench {out['bench']} — {out['models']} — device {out['device']}, {out['prompts']} prompts"
    )
    for name, v in out["variants"].items():
        tps = v.get("tokens_per_second")
        print(
            f"  {name:<24} {v['seconds']:8.3f} s  {v['new_tokens']:6d} new tokens  "
            f"{(tps or 0):9.1f} tok/s  lm_tokens {v.get('lm_tokens', 0):7d}  rm_tokens {v.get('rm_tokens', 0):8d}"
        )
    targets = out.get("targets", {})
    cpu = out.get("ratios_cpu_time") or {}
    for name, r in out["ratios"].items():
        shown = str(r).lower() if isinstance(r, bool) else f"{r:.2f}"
        t = f"   (target {targets[name]})" if name in targets else ""
        c = f"   [process CPU time: {cpu[name]:.2f}]" if name in cpu else ""
        print(f"  ratio {name:<22} {shown}{t}{c}")
    floor = out.get("floor")
    if floor:
        print(
            f"  floor srs_args_over_plain >= {floor['srs_args_over_plain']:.2f}   (greedy + the reward model's "
            f"forward on the k candidates alone, {floor['rm_candidates_seconds']:.3f} s: no exact ARGS on these "
            f"kernels is faster)"
        )

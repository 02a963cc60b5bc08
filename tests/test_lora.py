"""LoRA for every trainer (``lora:`` in a train recipe): validation, the reference as the adapter-off base,
SLHF's two adapters, resume bit for bit for each algorithm, final/ (adapter, merged/) as a run recipe's
policy, and the memory savers (gradient checkpointing, bf16 autocast)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from stackalign.runner.recipe import RecipeError
from stackalign.training.recipe import train_recipe_from_dict
from stackalign.training.run import run_training

pytest.importorskip("peft")

LORA = {"r": 4, "alpha": 8.0}
ALGO_FIELDS = {
    "rl": {"group_size": 3},
    "rlhf": {"group_size": 3},
    "slhf": {},
    "selfplay": {"group_size": 2},
    "dpo": {"seed_pairs": 8, "batch_size": 4},
    "ssapo": {"seed_pairs": 8, "batch_size": 2, "rounds": 1, "prompts_per_round": 4, "group_size": 2},
}


def _recipe(world, algorithm: str, lora: dict | None = LORA, **kw):
    d = {
        "algorithm": algorithm,
        "world": str(world.root),
        "steps": 3,
        "lr": 1e-2,
        "prompts_per_step": 2,
        "max_new_tokens": 8,
        "checkpoint_every": 1,
        "keep_checkpoints": 2,
        "progress": False,
        "eval": {"limit": 2, "samples": 1},
        **ALGO_FIELDS[algorithm],
    }
    if algorithm in ("dpo", "ssapo"):  # their steps follow from their own fields
        del d["steps"], d["prompts_per_step"]
    if lora is not None:
        d["lora"] = lora
    d.update(kw)
    return train_recipe_from_dict(d)


def _adapters(final: Path) -> dict[str, torch.Tensor]:
    """Every adapter file under final/ (the follower's in final/follower/), keys prefixed by the subdir."""
    out = {}
    for f in sorted(final.rglob("adapter_model.safetensors")):
        if "merged" in f.parts:
            continue
        rel = f.parent.relative_to(final).as_posix()
        out.update({f"{rel}/{k}": v for k, v in load_file(str(f)).items()})
    return out


# ---------------------------------------------------------------------------------------------------------
# recipe validation, before anything loads
# ---------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "lora,field",
    [
        ({"r": 0}, "lora.r"),
        ({"r": 2.5}, "lora.r"),
        ({"alpha": 0}, "lora.alpha"),
        ({"dropout": 1.0}, "lora.dropout"),
        ({"target_modules": []}, "lora.target_modules"),
        ({"rank": 8}, "rank"),  # an unknown key is named
    ],
)
def test_bad_lora_block_names_the_field(micro, lora, field):
    with pytest.raises(RecipeError, match=field.replace(".", r"\.")):
        _recipe(micro, "rl", lora=lora)


def test_unknown_target_module_is_an_error_naming_the_field(micro, tmp_path):
    with pytest.raises(ValueError, match="lora.target_modules"):
        run_training(_recipe(micro, "rl", lora={"target_modules": ["no_such_proj"]}), tmp_path, world=micro)


# ---------------------------------------------------------------------------------------------------------
# the reference is the base with the adapters off: no copy, exactly the initial policy
# ---------------------------------------------------------------------------------------------------------
def test_reference_is_the_adapter_off_base_and_shares_its_weights(micro, tmp_path):
    from stackalign.models import load_policy
    from stackalign.training.run import TrainContext

    ctx = TrainContext(_recipe(micro, "slhf"), tmp_path, micro)
    policy, tok = ctx.load_policy()
    ref = ctx.load_reference()
    leader, follower = ctx.load_players(policy)
    base, _ = load_policy(micro.policy_dir)
    ids = torch.tensor([tok("User: hello there\nAssistant:")["input_ids"]])
    with torch.no_grad():
        want = base(input_ids=ids).logits
        assert torch.equal(policy(input_ids=ids).logits, want)  # B = 0 at the start: the base exactly
        for n, p in policy.named_parameters():  # move every adapter away from zero
            if "lora_B" in n:
                p.add_(0.05)
        assert torch.equal(ref(input_ids=ids).logits, want)  # adapters off: still the base, bit for bit
        a, b = leader(input_ids=ids).logits, follower(input_ids=ids).logits
    assert not torch.allclose(a, want) and not torch.allclose(b, want)
    # one set of base weights: the reference's parameters are the policy's tensors
    assert {p.data_ptr() for p in ref.parameters()} == {p.data_ptr() for p in policy.parameters()}
    # both adapters stay trainable whichever was used last
    assert all(p.requires_grad for n, p in policy.named_parameters() if "lora_" in n)
    assert not any(p.requires_grad for n, p in policy.named_parameters() if "lora_" not in n)


def test_slhf_trains_two_adapters_or_one_shared(micro, tmp_path):
    run_training(_recipe(micro, "slhf"), tmp_path / "two", world=micro)
    two = _adapters(tmp_path / "two" / "final")
    leader = {k for k in two if k.startswith("./")}
    follower = {k for k in two if k.startswith("follower/")}
    assert leader and follower
    assert any(float(two[k].abs().max()) > 0 for k in leader if "lora_B" in k)
    assert any(float(two[k].abs().max()) > 0 for k in follower if "lora_B" in k)
    run_training(_recipe(micro, "slhf", lora={**LORA, "shared": True}), tmp_path / "one", world=micro)
    assert not (tmp_path / "one" / "final" / "follower").exists()
    assert set(_adapters(tmp_path / "one" / "final")) == leader


# ---------------------------------------------------------------------------------------------------------
# every algorithm trains with lora: and resumes bit for bit from its last-but-one checkpoint
# ---------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("algorithm", list(ALGO_FIELDS))
def test_every_algorithm_trains_a_lora_adapter_and_resumes_bit_identically(micro, tmp_path, algorithm):
    out = tmp_path / "run"
    s = run_training(_recipe(micro, algorithm), out, world=micro)
    first = _adapters(out / "final")
    assert first and (out / "final" / "adapter_config.json").is_file()
    assert not list((out / "final").glob("model*.safetensors"))  # the adapter only, not the base
    assert any(float(v.abs().max()) > 0 for k, v in first.items() if "lora_B" in k)  # it trained
    # a crash after the last checkpoint of the last training stage: drop it (and what came after) and rerun
    stages = sorted(out.glob("rounds/round_*")) or [out]
    last = stages[-1]
    ckpts = sorted((last / "checkpoints").iterdir())
    assert len(ckpts) >= 2
    shutil.rmtree(ckpts[-1])
    for p in (last / "model", out / "final"):
        shutil.rmtree(p, ignore_errors=True)
    (last / "done.json").unlink(missing_ok=True)
    (out / "summary.json").unlink()
    s2 = run_training(_recipe(micro, algorithm), out, world=micro)
    again = _adapters(out / "final")
    assert again.keys() == first.keys() and all(torch.equal(first[k], again[k]) for k in first)
    assert s2["eval"] == s["eval"]


# ---------------------------------------------------------------------------------------------------------
# final/ as a run recipe's policy; final/merged/
# ---------------------------------------------------------------------------------------------------------
def test_adapter_dir_and_merged_dir_load_as_policies_and_decode_in_a_run_recipe(micro, tmp_path):
    from stackalign.models import load_policy
    from stackalign.runner.recipe import recipe_from_dict
    from stackalign.runner.run import execute

    out = tmp_path / "train"
    run_training(_recipe(micro, "rl", lora={**LORA, "merge": True}), out, world=micro)
    assert (out / "final" / "merged" / "model.safetensors").is_file()
    adapted, tok = load_policy(out / "final")
    merged, _ = load_policy(out / "final" / "merged")
    base, _ = load_policy(micro.policy_dir)
    ids = torch.tensor([tok("User: what is a cat?\nAssistant:")["input_ids"]])
    with torch.no_grad():
        la, lm, lb = (m(input_ids=ids).logits for m in (adapted, merged, base))
    assert torch.allclose(la, lm, atol=1e-4)  # merging W + (alpha/r) B A: the same model to rounding
    assert not torch.allclose(la, lb, atol=1e-4)  # and not the base
    recipe = recipe_from_dict(
        {
            "world": str(micro.root),
            "policy": str(out / "final"),
            "prompts": {"source": "world:test", "limit": 2},
            "generation": {"max_new_tokens": 6, "batch_size": 2},
            "methods": [{"name": "Base", "decoder": "base"}],
            "evaluation": {"coherence": None, "judge": "gold", "baselines": ["Base"]},
        }
    )
    summary = execute(recipe, tmp_path / "decode", progress=False)
    assert "Base" in summary["methods"]
    rows = [json.loads(x) for x in (tmp_path / "decode" / "generations.jsonl").read_text().splitlines()]
    assert len(rows) == 2 and all(isinstance(r["response"], str) for r in rows)


# ---------------------------------------------------------------------------------------------------------
# memory savers
# ---------------------------------------------------------------------------------------------------------
def test_gradient_checkpointing_gives_the_same_loss_and_gradients(micro):
    from stackalign.models import load_policy
    from stackalign.training.memory import enable_gradient_checkpointing

    grads, losses = [], []
    for ckpt in (False, True):
        model, tok = load_policy(micro.policy_dir)
        if ckpt:
            assert enable_gradient_checkpointing(model) == model.config.num_hidden_layers
        ids = torch.tensor([tok("User: hello there, how are you\nAssistant: fine")["input_ids"]])
        loss = model(input_ids=ids, labels=ids, use_cache=False).loss
        loss.backward()
        losses.append(loss.detach())
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
        with torch.no_grad():  # sampling with a KV cache still works (checkpointing is off without grads)
            out = model.generate(input_ids=ids, max_new_tokens=3, do_sample=False)
        assert out.shape[1] == ids.shape[1] + 3
    assert torch.equal(losses[0], losses[1])
    assert grads[0].keys() == grads[1].keys()
    assert all(torch.allclose(grads[0][k], grads[1][k], atol=1e-6, rtol=1e-5) for k in grads[0])


def test_lora_with_checkpointing_and_bf16_trains(micro, tmp_path):
    s = run_training(
        _recipe(micro, "rl", gradient_checkpointing=True, bf16=True, steps=2), tmp_path / "r", world=micro
    )
    rows = [json.loads(x) for x in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2] and all(torch.isfinite(torch.tensor(r["loss"])) for r in rows)
    assert s["steps"] == 2


def test_bf16_on_a_device_without_it_is_refused_naming_the_field():
    from stackalign.training.memory import autocast_context, bf16_supported

    if bf16_supported("cuda"):
        pytest.skip("this machine's GPU supports bf16")
    with pytest.raises(ValueError, match="bf16"):
        autocast_context("cuda", True)


# ---------------------------------------------------------------------------------------------------------
# the memory estimate of `stackalign recipe check` (from configs only) and the refusal before loading
# ---------------------------------------------------------------------------------------------------------
def test_memory_estimate_counts_the_models_exactly_and_lora_saves(micro, tmp_path):
    from stackalign.models import load_policy
    from stackalign.training.memory import GIB, estimate_train_memory
    from stackalign.training.run import TrainContext

    full = estimate_train_memory(_recipe(micro, "slhf", lora=None))
    model, _ = load_policy(micro.policy_dir)
    n = sum(p.numel() for p in model.parameters())
    assert full.parts["weights"] == 4 * n and full.parts["references"] == 4 * n
    assert full.parts["optimizer (AdamW)"] == 8 * n and full.parts["gradients"] == 4 * n
    lora = estimate_train_memory(_recipe(micro, "slhf"))
    policy, _ = TrainContext(_recipe(micro, "slhf"), tmp_path, micro).load_policy()
    trainable = sum(p.numel() for p in policy.parameters() if p.requires_grad)  # both adapters
    assert lora.parts["adapters"] == 4 * trainable and lora.parts["references"] == 0
    assert lora.total < full.total
    ckpt = estimate_train_memory(_recipe(micro, "slhf", gradient_checkpointing=True))
    assert ckpt.parts["activations"] < lora.parts["activations"]
    text = "\n".join(full.lines())
    assert "weights" in text and "activations" in text and f"{full.total / GIB:9.3f}" in text


def _huge_model_dir(tmp_path: Path) -> Path:
    """A 70B-sized Llama config beside a file that is not a real checkpoint (loading it would fail)."""
    from transformers import LlamaConfig

    d = tmp_path / "huge"
    LlamaConfig(
        hidden_size=8192, intermediate_size=28672, num_hidden_layers=80, num_attention_heads=64,
        num_key_value_heads=8, vocab_size=128256,
    ).save_pretrained(d)  # fmt: skip
    (d / "model.safetensors").write_bytes(b"not a checkpoint")
    return d


@pytest.mark.slow
def test_a_recipe_that_cannot_fit_is_refused_before_loading(micro, tmp_path):
    import subprocess
    import sys

    import yaml

    big = _huge_model_dir(tmp_path)
    recipe = _recipe(micro, "rl", lora=None, policy=str(big))
    with pytest.raises(ValueError, match=r"memory: this recipe needs about \d+"):
        run_training(recipe, tmp_path / "out", world=micro)
    assert not (tmp_path / "out").exists()  # refused before the run directory, before any load
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump({**recipe.to_dict(), "policy": str(big)}))
    src = str(Path(__file__).resolve().parents[1] / "src")
    res = subprocess.run(
        [sys.executable, "-m", "stackalign", "recipe", "check", str(path)],
        capture_output=True, text=True, env={**__import__("os").environ, "PYTHONPATH": src},
    )  # fmt: skip
    assert res.returncode != 0 and "memory: this recipe needs about" in res.stderr + res.stdout
    assert "weights" in res.stderr + res.stdout  # the breakdown comes with the refusal


def test_memory_estimate_under_fsdp_shards_gradients_and_optimizer_not_the_weights(micro, tmp_path, capsys):
    import yaml

    from stackalign.cli import main
    from stackalign.training.memory import GIB, estimate_train_memory

    recipe = _recipe(micro, "rl", lora=None)
    one = estimate_train_memory(recipe)
    ddp = estimate_train_memory(recipe, processes=4)
    fsdp = estimate_train_memory(recipe, processes=4, sharded=True)
    assert ddp.parts["gradients"] == one.parts["gradients"]  # DDP: a full replica in every process
    n = one.parts["gradients"] // 4  # float32 trainable parameters
    assert fsdp.parts["gradients"] == 4 * -(-n // 4) and fsdp.parts["optimizer (AdamW)"] == 8 * -(-n // 4)
    assert (
        fsdp.parts["weights"] == one.parts["weights"] and fsdp.parts["references"] == one.parts["references"]
    )
    assert fsdp.parts["activations"] == ddp.parts["activations"] < one.parts["activations"]
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(recipe.to_dict()))
    assert main(["recipe", "check", "--no-env", "--processes", "4", "--fsdp", str(path)]) == 0
    out = capsys.readouterr().out
    assert "FSDP over 4 processes" in out and "FSDP" not in "\n".join(one.lines())
    assert f"{fsdp.total / GIB:9.3f}" in out  # the CLI prints the sharded estimate

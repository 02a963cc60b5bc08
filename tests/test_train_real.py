"""The six training algorithms on a real chat model with no world: prompts and pairs from files, the chat
template, the reward model as the only judge; the trained final/ decodes in a run recipe."""

import json
import shutil
from pathlib import Path

import pytest
import yaml

PROMPTS = ["How do I boil an egg?", "Give me one tip for sleeping better.", "What is a leap year?"]
EXTRA = {
    "rl": {"group_size": 2},
    "rlhf": {"group_size": 2},
    "selfplay": {"group_size": 2},
    "slhf": {"chain": 1},
    "dpo": {"batch_size": 2, "seed_epochs": 1},
    "ssapo": {"batch_size": 2, "seed_epochs": 1, "rounds": 0},
}  # fmt: skip


@pytest.fixture(scope="module")
def data(tmp_path_factory, smol_dir):
    from stackalign.models.real import reward_model_from_policy

    d = tmp_path_factory.mktemp("own")
    (d / "prompts.jsonl").write_text("".join(json.dumps({"prompt": p}) + "\n" for p in PROMPTS))
    (d / "seeds.jsonl").write_text(
        "".join(
            json.dumps({"prompt": p, "chosen": " A clear, helpful answer.", "rejected": " No."}) + "\n"
            for p in PROMPTS
        )
    )
    reward_model_from_policy("smollm2-135m-instruct", d / "rm", layers=2)
    return d


def _recipe(d, algorithm: str) -> dict:
    r = {
        "algorithm": algorithm,
        "world": None,
        "policy": "smollm2-135m-instruct",
        "reward_model": str(d / "rm"),
        "chat_template": True,
        "train_prompts": str(d / "prompts.jsonl"),
        "eval": {"prompts": str(d / "prompts.jsonl"), "limit": 1, "samples": 1},
        "steps": 2,
        "prompts_per_step": 1,
        "max_new_tokens": 4,
        "lr": 1e-5,
        "progress": False,
        "checkpoint_every": 2,  # one checkpoint (weights + AdamW state of 135M parameters: ~1.6 GB on disk)
        "keep_checkpoints": 1,
        **EXTRA[algorithm],
    }
    if algorithm in ("dpo", "ssapo"):  # their steps follow from the pairs and their own fields
        r["seeds_file"] = str(d / "seeds.jsonl")
        del r["steps"], r["prompts_per_step"]
    return r


@pytest.mark.slow
@pytest.mark.parametrize("algorithm", list(EXTRA))
def test_trains_on_the_real_model_without_a_world(algorithm, data, tmp_path):
    try:
        _train_and_check(algorithm, data, tmp_path)
    finally:  # a 135M model's checkpoints and final/ take gigabytes: leave none behind for the next test
        shutil.rmtree(tmp_path / "out", ignore_errors=True)


def _train_and_check(algorithm, data, tmp_path):
    from stackalign.training.recipe import train_recipe_from_dict
    from stackalign.training.run import run_training

    summary = run_training(train_recipe_from_dict(_recipe(data, algorithm)), tmp_path / "out")
    assert (tmp_path / "out" / "final" / "config.json").is_file()
    assert any((tmp_path / "out" / "final").glob("*.safetensors"))
    ev = summary["eval"]
    assert "gold" not in json.dumps({k: v for k, v in ev.items() if v is not None})  # no gold number anywhere
    if algorithm in ("slhf", "selfplay", "dpo", "ssapo"):
        assert ev["judge"] == "reward_model"
    if algorithm in ("slhf",):
        assert 0.0 <= ev["leader_vs_base"] <= 1.0
    if algorithm in ("dpo", "ssapo"):
        assert 0.0 <= ev["rm_win_rate_vs_base"] <= 1.0
    if algorithm in ("rl", "rlhf", "selfplay"):
        assert ev["proxy_reward"] is not None and ev["gold_reward"] is None
    if algorithm == "rl":  # the trained policy decodes in a run recipe
        _decodes_in_a_run_recipe(tmp_path / "out" / "final", data, tmp_path)


def _decodes_in_a_run_recipe(policy, data, tmp_path) -> None:
    from stackalign.runner.recipe import load_recipe
    from stackalign.runner.run import execute

    run = {
        "world": None,
        "gold": None,
        "policy": str(policy),
        "reward_model": str(data / "rm"),
        "prompts": {"source": str(data / "prompts.jsonl"), "limit": 1, "chat_template": True},
        "generation": {"max_new_tokens": 4},
        "methods": [{"name": "Greedy", "decoder": "greedy"}],
        "evaluation": {"coherence": None, "judge": None},
    }
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(run))
    s = execute(load_recipe(tmp_path / "run.yaml"), tmp_path / "run", progress=False)
    assert s["methods"]["Greedy"]["n"] == 1


def test_world_splits_without_a_world_are_refused_before_models_load(data, tmp_path):
    from stackalign.runner.recipe import RecipeError
    from stackalign.training.recipe import train_recipe_from_dict
    from stackalign.training.run import run_training

    r = _recipe(data, "rl")
    r["train_prompts"] = "world:train"
    with pytest.raises(RecipeError, match="train_prompts: 'world:train' needs a world"):
        run_training(train_recipe_from_dict(r), tmp_path / "a")
    r = _recipe(data, "slhf")
    r["chat_template"] = False
    with pytest.raises(ValueError, match="follower turn needs the chat template"):
        run_training(train_recipe_from_dict(r), tmp_path / "b")
    r = _recipe(data, "rl")
    r["train_prompts"] = str(data / "nope.jsonl")
    with pytest.raises(Exception, match="train_prompts: no such file"):
        train_recipe_from_dict(r)


# ---------------------------------------------------------------------------------------------------------
# LoRA on the real model: final/ holds a small adapter over the unchanged base, and decodes in a run recipe
# ---------------------------------------------------------------------------------------------------------
LORA = {"r": 4, "alpha": 8.0}


def _lora_recipe(d, algorithm: str) -> dict:
    r = _recipe(d, algorithm)
    r.update(lora=LORA, lr=1e-2)  # adapters start at B = 0; a large step makes the change unmistakable
    return r


def _sha256(path) -> str:
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 24), b""):
            h.update(block)
    return h.hexdigest()


@pytest.fixture(scope="module")
def base_digest(smol_dir):
    smol_dir = Path(smol_dir)
    return {f.name: _sha256(f) for f in sorted(smol_dir.glob("*.safetensors"))}


@pytest.mark.slow
@pytest.mark.parametrize("algorithm", list(EXTRA))
def test_lora_on_the_real_model_final_holds_only_the_adapter(
    algorithm, data, smol_dir, base_digest, tmp_path
):
    pytest.importorskip("peft")
    try:
        _train_lora_and_check(algorithm, data, smol_dir, base_digest, tmp_path)
    finally:
        shutil.rmtree(tmp_path / "out", ignore_errors=True)


def _train_lora_and_check(algorithm, data, smol_dir, base_digest, tmp_path):
    smol_dir = Path(smol_dir)
    import torch
    from safetensors.torch import load_file

    from stackalign.models import load_policy
    from stackalign.models.lora import adapter_base_name
    from stackalign.training.recipe import train_recipe_from_dict
    from stackalign.training.run import run_training

    out = tmp_path / "out"
    run_training(train_recipe_from_dict(_lora_recipe(data, algorithm)), out)
    final = out / "final"
    files = [f for f in final.rglob("*.safetensors")]
    assert files and all(f.name == "adapter_model.safetensors" for f in files)  # no base weights in final/
    adapter_dirs = {f.parent.relative_to(final).as_posix() for f in files}
    assert adapter_dirs == ({".", "follower"} if algorithm == "slhf" else {"."})  # slhf: two adapters
    base_bytes = sum(f.stat().st_size for f in smol_dir.glob("*.safetensors"))
    assert sum(f.stat().st_size for f in files) < base_bytes / 50  # r = 4: about 1% of the base
    assert not list(out.rglob("model*.safetensors"))  # checkpoints (and dpo/ssapo rounds) hold adapters too
    adapter = {k: v for f in files for k, v in load_file(str(f)).items()}
    assert adapter and all("lora_A" in k or "lora_B" in k for k in adapter)
    assert any(float(v.abs().max()) > 0 for k, v in adapter.items() if "lora_B" in k)  # it trained
    assert adapter_base_name(final) == "smollm2-135m-instruct"
    # the base on disk is untouched, and final/ with its adapter disabled computes exactly that base
    assert {f.name: _sha256(f) for f in sorted(smol_dir.glob("*.safetensors"))} == base_digest
    tuned, tok = load_policy(final)
    base, _ = load_policy(smol_dir)
    ids = torch.tensor([tok("What is a leap year?")["input_ids"]])
    with torch.no_grad():
        lt, lb = tuned(input_ids=ids).logits, base(input_ids=ids).logits
        with tuned.disable_adapter():
            l0 = tuned(input_ids=ids).logits
    assert torch.equal(l0, lb)
    assert not torch.equal(lt, lb)
    if algorithm == "slhf":  # the leader's adapter directory (the follower's in follower/) as a policy
        _decodes_in_a_run_recipe(final, data, tmp_path)


@pytest.mark.slow
def test_lora_on_the_real_model_resumes_bit_identically_after_kill9(data, tmp_path):
    """rl with an adapter on smollm2: killed after its first step, restarted, the same adapter bit for bit."""
    pytest.importorskip("peft")
    import sys

    import torch
    from kill_restart import kill_after_rows, run_to_the_end
    from safetensors.torch import load_file

    r = _lora_recipe(data, "rl")
    r.update(steps=3, checkpoint_every=1, keep_checkpoints=2)
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(r))
    try:
        finals = []
        for name, kill in (("a", False), ("b", True)):
            cmd = [
                sys.executable,
                "-m",
                "stackalign",
                "train",
                str(tmp_path / "r.yaml"),
                "--out",
                str(tmp_path / name),
            ]
            if kill:
                kill_after_rows(cmd, tmp_path / name / "metrics.jsonl", 1)
                assert not (tmp_path / name / "final").exists()
            run_to_the_end(cmd)
            finals.append(load_file(str(tmp_path / name / "final" / "adapter_model.safetensors")))
            rows = (tmp_path / name / "metrics.jsonl").read_text().splitlines()
            assert [json.loads(x)["step"] for x in rows] == [1, 2, 3]
        a, b = finals
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
        assert any(float(v.abs().max()) > 0 for k, v in a.items() if "lora_B" in k)
    finally:
        for name in ("a", "b"):
            shutil.rmtree(tmp_path / name, ignore_errors=True)

"""End-to-end DPO / SSAPO on the micro world: the summary contract, mid-round resume, recipe errors."""

import json

import pytest
import torch
from safetensors.torch import load_file

import stackalign.training.rounds as rounds_mod
from stackalign.runner.recipe import RecipeError
from stackalign.training.recipe import train_recipe_from_dict
from stackalign.training.run import run_training


@pytest.fixture(scope="module")
def micro_world(micro):
    return micro  # the session's micro world (conftest.py)


def _recipe(w, **kw):
    cfg = {
        "algorithm": "ssapo",
        "world": str(w.root),
        "lr": 1e-3,
        "temperature": 0.7,
        "checkpoint_every": 1,
        "max_new_tokens": 12,
        "progress": False,
        "eval": {"limit": 4, "samples": 2},
        "seed_pairs": 8,
        "batch_size": 4,
        "seed_epochs": 1,
        "rounds": 2,
        "prompts_per_round": 8,
        "samples_per_prompt": 3,
        "eps": 0.3,
        "group_size": 4,
    }
    cfg.update(kw)
    if cfg["algorithm"] == "dpo":
        for k in ("samples_per_prompt", "eps", "group_size"):
            cfg.pop(k)
    return train_recipe_from_dict(cfg)


def test_ssapo_micro_run_contract_and_mid_round_resume(micro_world, tmp_path, monkeypatch):
    a = run_training(_recipe(micro_world), tmp_path / "a", world=micro_world)
    # the summary.json contract
    assert a["algorithm"] == "ssapo"
    assert [r["round"] for r in a["rounds"]] == [0, 1, 2]
    assert a["rounds"][0]["pairs"] == 8 and all(1 <= r["pairs"] <= 8 for r in a["rounds"][1:])
    for r in a["rounds"]:
        assert set(r["eval"]) == {"win_rate_vs_base", "gold_reward"}
        assert 0.0 <= r["eval"]["win_rate_vs_base"] <= 1.0
    assert a["eval"] == a["rounds"][-1]["eval"]
    assert a["steps"] == 6  # 2 steps per round: ceil(8 / 4) * 1 epoch
    on_disk = json.loads((tmp_path / "a" / "summary.json").read_text())
    assert on_disk["rounds"] == a["rounds"]
    st = a["rounds"][1]["stats"]
    assert st["group_size"] == 4 and st["transport"] <= 0.3 + 1e-9 and st["lp_seconds"] >= 0
    pairs = [json.loads(x) for x in (tmp_path / "a/rounds/round_1/pairs.jsonl").read_text().splitlines()]
    assert all(abs(sum(p["s"]) - 1) < 1e-9 and p["margin"] >= 0 for p in pairs)

    # the same run, crashed in the middle of round 1 (step 4; checkpoint at step 3), then started again
    real = rounds_mod.dpo_loss
    calls = {"n": 0}

    def crashing(*args, **kw):
        calls["n"] += 1
        if calls["n"] == 4:
            raise KeyboardInterrupt("simulated crash")
        return real(*args, **kw)

    monkeypatch.setattr(rounds_mod, "dpo_loss", crashing)
    with pytest.raises(KeyboardInterrupt):
        run_training(_recipe(micro_world), tmp_path / "b", world=micro_world)
    monkeypatch.setattr(rounds_mod, "dpo_loss", real)
    assert not (tmp_path / "b" / "final").exists()
    b = run_training(_recipe(micro_world), tmp_path / "b", world=micro_world)
    wa = load_file(str(tmp_path / "a" / "final" / "model.safetensors"))
    wb = load_file(str(tmp_path / "b" / "final" / "model.safetensors"))
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    rows_a = [json.loads(x) for x in (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()]
    rows_b = [json.loads(x) for x in (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows_b] == list(range(1, 7))
    assert [(r["loss"], r["round"]) for r in rows_a] == [(r["loss"], r["round"]) for r in rows_b]
    assert [(r["round"], r["pairs"], r["eval"]) for r in a["rounds"]] == [
        (r["round"], r["pairs"], r["eval"]) for r in b["rounds"]
    ]
    from stackalign.models import load_policy

    load_policy(tmp_path / "b" / "final")  # final/ is usable as a run recipe's policy
    # a restart after every round finished (final/ lost) rebuilds final/ from the last round's model
    import shutil

    shutil.rmtree(tmp_path / "b" / "final")
    c = run_training(_recipe(micro_world), tmp_path / "b", world=micro_world)
    wc = load_file(str(tmp_path / "b" / "final" / "model.safetensors"))
    assert all(torch.equal(wa[k], wc[k]) for k in wa) and c["eval"] == a["eval"]


def test_dpo_seeds_is_one_round_and_eps_zero_has_no_transport(micro_world, tmp_path):
    d = run_training(_recipe(micro_world, algorithm="dpo", data="seeds"), tmp_path / "d", world=micro_world)
    assert d["algorithm"] == "dpo" and [r["round"] for r in d["rounds"]] == [0] and d["steps"] == 2
    assert (tmp_path / "d" / "rounds.png").is_file() and "rounds.png" in (
        tmp_path / "d" / "report.md"
    ).read_text()
    s = run_training(_recipe(micro_world, eps=0.0, rounds=1), tmp_path / "s", world=micro_world)
    assert s["rounds"][1]["stats"]["transport"] == 0.0 and s["rounds"][1]["stats"]["attacked"] == 0


def test_bad_recipes_get_clear_errors(micro_world, tmp_path):
    with pytest.raises(RecipeError, match="eps"):
        _recipe(micro_world, eps=-0.1)
    with pytest.raises(RecipeError, match="samples_per_prompt"):
        _recipe(micro_world, samples_per_prompt=1)
    with pytest.raises(RecipeError, match="did you mean 'eps'"):
        _recipe(micro_world, epz=0.1)
    bad = tmp_path / "seeds.jsonl"
    bad.write_text(json.dumps({"prompt": micro_world.train_prompts[0], "chosen": " a"}) + "\n")
    with pytest.raises(ValueError, match=r"missing field\(s\) \['rejected'\]"):
        run_training(_recipe(micro_world, seeds_file=str(bad)), tmp_path / "x", world=micro_world)
    bad.write_text("\n")
    with pytest.raises(ValueError, match="empty"):
        run_training(_recipe(micro_world, seeds_file=str(bad)), tmp_path / "y", world=micro_world)


def test_worldless_run_from_files(micro_world, tmp_path):
    # a user's own model: seeds and round prompts from files, no gold judge (eval fields are null)
    seeds = tmp_path / "seeds.jsonl"
    src = (micro_world.root / "pairs.jsonl").read_text().splitlines()[:8]
    seeds.write_text("".join(json.dumps({k: json.loads(x)[k] for k in ("prompt", "chosen", "rejected")}) + "\n"
                             for x in src))  # fmt: skip
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in micro_world.train_prompts[:8]))
    r = _recipe(micro_world, world=None, policy=str(micro_world.policy_dir), seeds_file=str(seeds),
                prompts_file=str(prompts), rounds=1)  # fmt: skip
    s = run_training(r, tmp_path / "w")
    assert [x["round"] for x in s["rounds"]] == [0, 1] and s["rounds"][0]["pairs"] == 8
    assert s["eval"] == {"win_rate_vs_base": None, "gold_reward": None}
    assert s["rounds"][1]["stats"]["self_label_gold_agreement"] is None
    with pytest.raises(ValueError, match="train_prompts: 'world:train' needs a world"):
        run_training(_recipe(micro_world, world=None, policy=str(micro_world.policy_dir),
                             seeds_file=str(seeds), rounds=1), tmp_path / "v")  # fmt: skip

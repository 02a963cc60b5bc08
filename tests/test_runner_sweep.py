"""The 1/beta sweep protocol (runner/sweep.py) on the micro world."""

import argparse
import json

import pytest

from stackalign.runner.recipe import recipe_from_dict
from stackalign.runner.sweep import choose_value, hacking_values, main, parse_values, run_sweep


@pytest.fixture(scope="module")
def micro_world(micro):
    return micro  # the session's micro world (conftest.py)


def _data(world) -> dict:
    return {
        "world": str(world.root),
        "prompts": {"source": "world:test", "limit": 3},
        "generation": {"max_new_tokens": 4, "batch_size": 3},
        "methods": [
            {"name": "Base", "decoder": "base"},
            {"name": "BoN", "decoder": "bon", "params": {"n": 2}},
            {"name": "ARGS", "decoder": "args", "params": {"k": 3, "w": 0.5}},
            {
                "name": "SRS-ARGS",
                "decoder": "args",
                "shaping": "srs",
                "preset": "official-args",
                "params": {"k": 3},
            },
        ],
        "evaluation": {"coherence": "minilm", "judge": "gold", "baselines": ["Base"]},
    }


@pytest.fixture(scope="module")
def swept(micro_world, tmp_path_factory):
    out = tmp_path_factory.mktemp("sweep")
    result = run_sweep(recipe_from_dict(_data(micro_world)), "ARGS", "0.25, 4", out_dir=out, progress=False)
    return out, result


def test_sweep_writes_files_and_runs_the_same_decoder_methods_on_val(swept, micro_world):
    out, result = swept
    assert (out / "sweep.json").is_file() and (out / "sweep.png").stat().st_size > 1000
    written = json.loads((out / "sweep.json").read_text())
    assert written["values"] == [0.25, 4.0] and written["weight_key"] == "w"
    assert set(written["per_value"]) == {"0.25", "4"}
    for lab in ("0.25", "4"):
        sub = out / f"w={lab}"
        cfg = json.loads((sub / "config.json").read_text())
        # only the swept decoder's methods, each with the swept weight, on the validation prompts
        assert [m["name"] for m in cfg["methods"]] == ["ARGS", "SRS-ARGS"]
        assert all(m["params"]["w"] == float(lab) for m in cfg["methods"])
        assert cfg["prompts"]["source"] == "world:val" and cfg["evaluation"]["coherence"] is None
        assert cfg["evaluation"]["baselines"] == ["ARGS"]
        rows = [json.loads(x) for x in (sub / "generations.jsonl").read_text().splitlines()]
        assert {r["prompt"] for r in rows} == set(micro_world.val_prompts[:3])
        methods = written["per_value"][lab]["methods"]
        assert set(methods) == {"ARGS", "SRS-ARGS"}
        assert methods == json.loads((sub / "summary.json").read_text())["methods"]
        assert methods["SRS-ARGS"]["win_tie"]["ARGS"] is not None


def test_chosen_value_is_the_gold_argmax_of_the_vanilla_method(swept):
    out, result = swept
    written = json.loads((out / "sweep.json").read_text())
    gold = {float(lab): pv["methods"]["ARGS"]["gold_reward"] for lab, pv in written["per_value"].items()}
    best = max(gold.values())
    assert written["criterion"] == "gold_reward"
    assert written["chosen"] == max(v for v, g in gold.items() if g == best)
    assert result["chosen"] == written["chosen"]


def test_choice_rules_on_synthetic_summaries():
    def s(proxy, gold):
        return {"methods": {"A": {"proxy_reward": proxy, "gold_reward": gold}}}

    # proxy keeps rising, gold peaks at 1 then falls: pick 1, hacking at 2 and 4
    pv = {0.5: s(0.1, 0.2), 1.0: s(0.5, 0.6), 2.0: s(0.9, 0.4), 4.0: s(1.5, 0.1)}
    assert choose_value(pv, "A") == (1.0, "gold_reward")
    assert hacking_values(pv, "A") == [2.0, 4.0]
    # without gold: the highest proxy; ties go to the larger value (the end of the plateau)
    pv = {0.5: s(0.1, None), 1.0: s(0.7, None), 2.0: s(0.7, None), 4.0: s(0.2, None)}
    assert choose_value(pv, "A") == (2.0, "proxy_reward")
    assert hacking_values(pv, "A") == []


def test_parse_values():
    assert parse_values("4, 0.25,1,1") == [0.25, 1.0, 4.0]
    for bad in ("", "a,1", "0,1", "-1", "inf"):
        with pytest.raises(ValueError, match="values"):
            parse_values(bad)


def test_unknown_and_unsweepable_methods_are_refused(micro_world, tmp_path):
    recipe = recipe_from_dict(_data(micro_world))
    with pytest.raises(ValueError, match="'Nope'"):
        run_sweep(recipe, "Nope", [1.0], out_dir=tmp_path / "a", progress=False)
    with pytest.raises(ValueError, match="'BoN'.*no reward weight"):
        run_sweep(recipe, "BoN", [1.0], out_dir=tmp_path / "b", progress=False)
    with pytest.raises(ValueError, match="vanilla"):
        run_sweep(recipe, "SRS-ARGS", [1.0], out_dir=tmp_path / "c", progress=False)
    assert not (tmp_path / "a").exists()  # refused before anything was run or written


def test_main_resumes_a_finished_sweep_and_prints_the_table(swept, micro_world, tmp_path, capsys):
    import yaml

    out, result = swept
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(_data(micro_world)))
    args = argparse.Namespace(
        recipe=str(path), method="ARGS", values="0.25,4", split="world:val", out=str(out), overrides=[]
    )
    before = (out / "w=4" / "generations.jsonl").read_text()
    assert main(args) == 0
    text = capsys.readouterr().out
    assert "SRS-ARGS" in text and f"chosen: w={result['chosen']:g}" in text
    assert (out / "w=4" / "generations.jsonl").read_text() == before  # nothing regenerated


def test_a_ray_sweep_holds_one_ray_pool_around_every_value(micro_world, tmp_path, monkeypatch):
    # `stackalign sweep` with the Ray backend connects once and every value's run attaches to that
    # connection (before: each run started and stopped its own local Ray instance, seconds each)
    import contextlib

    pytest.importorskip("ray")
    from stackalign.runner import run
    from stackalign.runner.backends import ray_backend

    events = []

    @contextlib.contextmanager
    def pool(backend):
        events.append(("connect", backend.workers))
        yield
        events.append("shutdown")

    def fake_execute(recipe, out, **kw):
        events.append(("run", recipe.methods[0].params["w"]))
        w = recipe.methods[0].params["w"]
        return {"methods": {"ARGS": {"proxy_reward": w, "gold_reward": -w, "win_tie": {}}}}

    monkeypatch.setattr(ray_backend, "ray_pool", pool)
    monkeypatch.setattr(run, "execute", fake_execute)
    monkeypatch.setattr("stackalign.evaluation.summary.plot_sweep", lambda *a, **k: None)
    data = {**_data(micro_world), "backend": {"kind": "ray", "workers": 2}}
    result = run_sweep(recipe_from_dict(data), "ARGS", "0.5,1", out_dir=tmp_path / "sw", progress=False)
    assert events == [("connect", 2), ("run", 0.5), ("run", 1.0), "shutdown"]
    assert result["chosen"] == 0.5

"""Recipe validation (errors name the key) and crash-safe, duplicate-free result storage."""

import json

import pytest

from stackalign.runner.recipe import RecipeError, load_recipe, recipe_from_dict
from stackalign.store import JsonlStore

GOOD = {
    "methods": [
        {"name": "ARGS", "decoder": "args", "shaping": "vanilla", "params": {"k": 10, "w": 0.5}},
        {"name": "SRS-ARGS", "decoder": "args", "shaping": "srs", "preset": "official-args"},
    ],
    "evaluation": {"baselines": ["ARGS"]},
}


def test_good_recipe_and_overrides():
    r = recipe_from_dict(GOOD, ["generation.max_new_tokens=16", "methods.0.params.w=2", "seed=3"])
    assert r.generation.max_new_tokens == 16
    assert r.methods[0].params["w"] == 2
    assert r.seed == 3
    assert r.methods[1].preset == "official-args"
    assert r.to_dict()["methods"][1]["name"] == "SRS-ARGS"


@pytest.mark.parametrize(
    "patch,needle",
    [
        ({"methodz": []}, "methodz"),
        ({"generation": {"max_new_token": 5}}, "generation.max_new_token"),
        ({"generation": {"max_new_tokens": "many"}}, "generation.max_new_tokens"),
        ({"generation": {"temperature": -0.5}}, "generation.temperature"),
        ({"methods": [{"decoder": "beam"}]}, r"methods\[0\].decoder"),
        ({"methods": [{"decoder": "args", "shaping": "magic"}]}, r"methods\[0\].shaping"),
        ({"methods": [{"decoder": "args", "preset": "official"}]}, r"methods\[0\].preset"),
        ({"methods": [{"decoder": "args", "params": {"w": -1}}]}, r"methods\[0\].params.w"),
        ({"methods": [{"decoder": "args", "colour": "red"}]}, r"methods\[0\].colour"),
        ({"methods": [{"name": "A"}, {"name": "A"}]}, r"methods\[1\].name"),
        ({"evaluation": {"baselines": ["nope"]}}, "evaluation.baselines"),
        ({"evaluation": {"judge": "llm"}}, "evaluation.judge_model"),
        ({"prompts": {"limit": 0}}, "prompts.limit"),
        ({"dtype": "int8"}, "dtype"),
        ({"methods": []}, "methods"),
    ],
)
def test_bad_recipes_name_the_key(patch, needle):
    data = {**GOOD, **patch}
    with pytest.raises(RecipeError, match=needle):
        recipe_from_dict(data)


def test_bad_override_and_files(tmp_path):
    with pytest.raises(RecipeError, match="key=value"):
        recipe_from_dict(GOOD, ["seed"])
    with pytest.raises(FileNotFoundError, match="recipe"):
        load_recipe(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("methods: [a, b\n")
    with pytest.raises(RecipeError, match="not valid YAML"):
        load_recipe(bad)


def test_store_resumes_after_torn_write_without_duplicates(tmp_path):
    path = tmp_path / "generations.jsonl"
    store = JsonlStore(path)
    store.append([{"method": "A", "prompt_id": i, "response": f"r{i}"} for i in range(3)])
    # simulate kill -9 in the middle of writing the 4th row
    with open(path, "a") as f:
        f.write('{"method": "A", "prompt_id": 3, "resp')
    store = JsonlStore(path)
    assert [r["prompt_id"] for r in store.rows] == [0, 1, 2]
    assert store.done(method="A", prompt_id=2) and not store.done(method="A", prompt_id=3)
    store.append([{"method": "A", "prompt_id": i, "response": f"r{i}"} for i in range(2, 5)])
    lines = path.read_text().splitlines()
    assert [json.loads(x)["prompt_id"] for x in lines] == [0, 1, 2, 3, 4]


def test_shipped_recipes_validate():
    import pathlib

    root = pathlib.Path(__file__).resolve().parents[1] / "recipes"
    files = sorted(root.glob("*.yaml"))
    assert files, "no recipes shipped"
    assert any(f.name.startswith("train-") for f in files)
    for f in files:
        if f.name.startswith("train-"):  # train recipes have their own schema (stackalign train)
            from stackalign.training.recipe import load_train_recipe

            load_train_recipe(f)
        else:
            load_recipe(f)

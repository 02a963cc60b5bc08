"""The decoder registry: a decoder added from outside the package (one config, one factory, one registration
line) runs from a recipe through `stackalign run`; ARGS methods record their scorer in summary.json."""

import json
from dataclasses import dataclass, field

import pytest
import torch

from stackalign import cli
from stackalign.runner.decoders import DECODERS, Param, register_decoder, weight_key

ANSWERS = ("yes", "no", "the reward model decides")


@dataclass(frozen=True)
class PickConfig:
    """Pick: the reward model's favourite of a few fixed answers (a toy decoder)."""

    answers: str = field(default="yes|no", metadata={"help": "the candidate answers, separated by '|'"})
    w: float = field(default=1.0, metadata={"help": "reward weight (any w > 0 picks the same answer)"})

    def __post_init__(self):
        if not self.answers.strip("|"):
            raise ValueError(f"answers: give at least one answer, got {self.answers!r}")
        if not self.w > 0:
            raise ValueError(f"w: must be > 0, got {self.w!r}")


def make_pick(b):
    """The factory: `b.config` is the method's PickConfig, `b.ctx` the loaded run."""
    answers = b.config.answers.split("|")

    def generate(prompts: list[str]) -> list[dict]:
        rows = []
        for p in prompts:
            r = b.ctx.reward([p] * len(answers), answers)
            best = answers[int(torch.as_tensor(r).argmax())]
            rows.append({"response": best, "lm_tokens": 0, "rm_tokens": len(answers)})
        return rows

    return generate


@pytest.fixture
def pick():
    spec = register_decoder("pick", config=PickConfig, make=make_pick, shaped=False, weight="w")
    yield spec
    DECODERS.pop("pick")


def test_registration_checks_its_entry(pick):
    assert DECODERS["pick"] is pick and weight_key("pick") == "w"
    assert [p.key for p in pick.params] == ["answers", "w"] and pick.help.startswith("Pick:")
    with pytest.raises(ValueError, match="weight: 'lam' is not one of the params"):
        register_decoder("pick2", config=PickConfig, make=make_pick, weight="lam")
    with pytest.raises(ValueError, match="make: expected a function or 'module:function'"):
        register_decoder("pick2", config=PickConfig, make="not a reference")
    with pytest.raises(ValueError, match="shaping parameters"):
        register_decoder("pick2", make=make_pick, params=(Param("B", type=float, default=1.0),))
    assert "pick2" not in DECODERS


def test_a_recipe_checks_the_registered_decoders_params(pick):
    from stackalign.runner.recipe import RecipeError, recipe_from_dict

    r = recipe_from_dict({"methods": [{"decoder": "pick"}], "evaluation": {"coherence": None}})
    assert r.methods[0].params == {"answers": "yes|no", "w": 1.0}  # defaults filled in from the config
    for params, needle in (({"w": -1.0}, r"methods\[0\].params.w: must be > 0"),
                           ({"anwsers": "a"}, r"methods\[0\].params.anwsers: unknown key"),
                           ({"B": 2.0}, r"methods\[0\].params.B: unknown key")):  # fmt: skip
        with pytest.raises(RecipeError, match=needle):
            recipe_from_dict({**r.to_dict(), "methods": [{"decoder": "pick", "params": params}]})
    with pytest.raises(RecipeError, match=r"methods\[0\].shaping: decoder 'pick' takes no reward"):
        recipe_from_dict({**r.to_dict(), "methods": [{"decoder": "pick", "shaping": "srs"}]})


def test_the_schema_lists_a_registered_decoder(pick, capsys):
    from stackalign.runner.schema import schema_markdown

    doc = schema_markdown()
    assert "### `pick`" in doc and "| `answers` | str | `yes\\|no` |" in doc


@pytest.mark.slow
def test_a_registered_decoder_runs_from_a_recipe(pick, micro, tmp_path):
    """`stackalign run` on a recipe with the toy decoder and an ARGS method: the toy's rows are the reward
    model's favourite answers, and summary.json records the ARGS method's scorer."""
    from stackalign.decoding.args import ARGSConfig, make_scorer

    recipe = tmp_path / "toy.yaml"
    recipe.write_text(
        f"world: {json.dumps(str(micro.root))}\n"
        "prompts: {source: world:test, limit: 3}\n"
        "generation: {max_new_tokens: 4, batch_size: 2}\n"
        "methods:\n"
        f"  - {{name: Pick, decoder: pick, params: {{answers: {json.dumps('|'.join(ANSWERS))}}}}}\n"
        "  - {name: ARGS, decoder: args, params: {k: 2}}\n"
        "evaluation: {coherence: null, judge: gold}\n"
    )
    out = tmp_path / "run"
    assert cli.main(["run", str(recipe), "--out", str(out)]) == 0
    rows = [json.loads(x) for x in (out / "generations.jsonl").read_text().splitlines()]
    picked = sorted((r for r in rows if r["method"] == "Pick"), key=lambda r: r["prompt_id"])
    assert [r["prompt"] for r in picked] == list(micro.test_prompts[:3])
    rm = micro.load_reward_model()
    for r in picked:
        scores = [float(rm([r["prompt"]], [a])[0]) for a in ANSWERS]
        assert r["response"] == ANSWERS[scores.index(max(scores))]
        assert r["proxy_reward"] == pytest.approx(max(scores), abs=1e-4)  # the runner's own scoring agrees
        assert r["rm_tokens"] == len(ANSWERS) and "scorer" not in r
    summary = json.loads((out / "summary.json").read_text())
    assert summary["methods"]["Pick"]["n"] == 3 and "scorer" not in summary["methods"]["Pick"]
    _, tok = micro.load_policy()
    want = make_scorer(tok, rm, ARGSConfig(k=2))
    assert summary["methods"]["ARGS"]["scorer"] == {"name": want.name, "reason": want.reason}
    assert all(r["scorer"]["name"] == want.name for r in rows if r["method"] == "ARGS")


def _doc_blocks() -> list[str]:
    from pathlib import Path

    text = (Path(__file__).resolve().parents[1] / "docs" / "extending.md").read_text()
    return [b.split("```", 1)[0] for b in text.split("```python\n")[1:]]


def test_the_extending_page_decoder_snippet_registers_a_working_decoder():
    from types import SimpleNamespace

    from stackalign.runner.decoders import Build
    from stackalign.runner.methods import plan_configs, resolve_method
    from stackalign.runner.recipe import recipe_from_dict

    ns: dict = {}
    try:
        exec(_doc_blocks()[0], ns)  # the page's decoder module and its registration line
        r = recipe_from_dict({"methods": [{"decoder": "pick", "params": {"answers": "a|ccc|bb"}}]})
        plan = resolve_method(r.methods[0], 0)
        longest = SimpleNamespace(reward=lambda ps, rs: torch.tensor([float(len(x)) for x in rs]))
        generate = DECODERS["pick"].factory()(Build(plan, longest, plan_configs(plan), None))
        assert [row["response"] for row in generate(["p", "q"])] == ["ccc", "ccc"]
    finally:
        DECODERS.pop("pick", None)


def test_the_extending_page_shaping_snippet_runs():
    from test_decoding_common import PROMPTS, make_models

    policy, reward_model, tokenizer = make_models("gpt2")
    ns = {"policy": policy, "tokenizer": tokenizer, "reward_model": reward_model, "prompts": PROMPTS}
    exec(_doc_blocks()[1], ns)
    res = ns["result"]
    assert len(res.texts) == len(PROMPTS) and res.meta["shaper"] is not None
    ranks = ns["rank_shaping"](torch.tensor([[0.5, -1.0, 2.0]]))
    assert ranks.tolist() == [[1.0, 0.0, 2.0]]


def test_an_outside_decoders_check_and_train_source_run_in_the_recipe_check(tmp_path):
    """`stackalign run`'s check before loading asks the registry: a decoder's own `check` hook and its
    `train_source` param (a world split without a world, a missing file) are reported by name."""
    from stackalign.runner.preflight import preflight
    from stackalign.runner.recipe import RecipeError, recipe_from_dict

    def check(recipe, method):
        return [] if recipe.seed == 0 else [f"methods[{method.name}]: needs seed 0"]

    register_decoder(
        "sourced",
        make=make_pick,
        shaped=False,
        params=(Param("train_source", type=str, default="world:train", help="prompts it learns from"),),
        check=check,
    )
    try:
        data = {
            "world": None,
            "gold": None,
            "policy": "sshleifer/tiny-gpt2",
            "reward_model": "sshleifer/tiny-gpt2",
            "prompts": {"source": str(tmp_path / "prompts.jsonl")},
            "methods": [{"name": "S", "decoder": "sourced"}],
            "evaluation": {"coherence": None, "judge": None},
        }
        (tmp_path / "prompts.jsonl").write_text('{"prompt": "hi"}\n')
        with pytest.raises(RecipeError) as e:
            preflight(recipe_from_dict({**data, "seed": 1}), network=False)
        assert "methods[S]: needs seed 0" in str(e.value)
        assert "methods[S].params.train_source: 'world:train' needs a world" in str(e.value)
        data["methods"][0]["params"] = {"train_source": str(tmp_path / "missing.jsonl")}
        with pytest.raises(RecipeError, match=r"methods\[S\].params.train_source: no such file"):
            preflight(recipe_from_dict(data), network=False)
        (tmp_path / "missing.jsonl").write_text('{"prompt": "hi"}\n')
        preflight(recipe_from_dict(data), network=False)  # nothing left to refuse
    finally:
        DECODERS.pop("sourced")

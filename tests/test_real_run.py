"""Every decoder on a real chat model without a world: chat-templated prompts, the reward model's input rule,
CD and refine on a prompts file, and the checks that refuse what cannot run (before any model loads)."""

import json

import pytest
import yaml

from stackalign.models.chat import ChatPrompt, follow_up_prompt, render_chat_prompts
from stackalign.models.reward import format_rm_input

PROMPTS = ["How do I boil an egg?", "Give me one tip for sleeping better.", "What is a leap year?"]


@pytest.fixture(scope="module")
def smol_tok(smol_dir):
    from stackalign.models.loading import _load_tokenizer

    return _load_tokenizer(smol_dir, False)


@pytest.fixture(scope="module")
def smol_rm(smol_dir, tmp_path_factory):
    from stackalign.models.real import reward_model_from_policy

    return reward_model_from_policy("smollm2-135m-instruct", tmp_path_factory.mktemp("rm"), layers=2)


def test_chat_prompt_and_rm_input_rule_on_the_real_tokenizer(smol_tok):
    [p] = render_chat_prompts(smol_tok, [PROMPTS[0]], system="Be brief.")
    assert isinstance(p, ChatPrompt) and p.endswith("<|im_start|>assistant\n")
    assert p.messages == ({"role": "system", "content": "Be brief."}, {"role": "user", "content": PROMPTS[0]})
    # plain rule: exactly the policy's prompt + the answer
    assert format_rm_input(p, "Boil it.", tokenizer=smol_tok) == p + "Boil it."
    # the RM's own template wraps the raw conversation: one user turn, never the rendered prompt inside it
    text = format_rm_input(p, "Boil it.", tokenizer=smol_tok, chat_template=True)
    assert text.count("<|im_start|>user") == 1 and text.count("<|im_start|>system") == 1
    assert text == smol_tok.apply_chat_template(
        [*p.messages, {"role": "assistant", "content": "Boil it."}], tokenize=False
    )
    # a plain prompt is one user turn
    plain = format_rm_input("Hi", "Hello", tokenizer=smol_tok, chat_template=True)
    assert plain.count("<|im_start|>user\nHi<|im_end|>") == 1
    # pickling keeps the conversation (the Ray backend ships prompts to workers)
    import pickle

    q = pickle.loads(pickle.dumps(p))
    assert isinstance(q, ChatPrompt) and q == p and q.messages == p.messages


def test_follow_up_prompt_is_a_conversation(smol_tok):
    [p] = render_chat_prompts(smol_tok, [PROMPTS[1]])
    f = follow_up_prompt(smol_tok, p, " Sleep more. ")
    assert f.messages[-2:] == (
        {"role": "assistant", "content": "Sleep more."},
        {"role": "user", "content": "Please improve your answer."},
    )
    assert f.startswith(p[: p.index("<|im_start|>assistant")]) and f.endswith("<|im_start|>assistant\n")


def _recipe(tmp_path, smol_rm, **over):
    pf = tmp_path / "prompts.jsonl"
    pf.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in PROMPTS))
    r = {
        "world": None,
        "gold": None,
        "policy": "smollm2-135m-instruct",
        "reward_model": str(smol_rm),
        "prompts": {"source": str(pf), "limit": 2, "chat_template": True},
        "generation": {"max_new_tokens": 6, "batch_size": 2},
        "methods": [
            {"name": "Base", "decoder": "base"},
            {"name": "ARGS", "decoder": "args", "params": {"k": 4, "w": 0.5}},
            {
                "name": "SRS-ARGS",
                "decoder": "args",
                "shaping": "srs",
                "preset": "official-args",
                "params": {"k": 4, "w": 0.5},
            },
            {
                "name": "CD",
                "decoder": "cd_tokenwise",
                "params": {
                    "k": 4,
                    "lam": 1.0,
                    "n_samples": 2,
                    "train_prompts": 3,
                    "max_epochs": 1,
                    "train_source": str(pf),
                },
            },
            {"name": "Refine", "decoder": "refine", "params": {"first": "base", "steps": 1}},
            {
                "name": "SoftBoN-SRS",
                "decoder": "soft_bon",
                "shaping": "srs",
                "preset": "official-cd",
                "params": {"n": 3},
            },
        ],
        "evaluation": {"coherence": None, "judge": None},
        "threads": 1,
    }
    r.update(over)
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(r))
    return path


@pytest.mark.slow
def test_every_decoder_runs_on_the_real_model_without_a_world(tmp_path, smol_rm):
    from stackalign.runner.recipe import load_recipe
    from stackalign.runner.run import execute

    recipe = load_recipe(_recipe(tmp_path, smol_rm))
    summary = execute(recipe, tmp_path / "out", progress=False)
    assert set(summary["methods"]) == {"Base", "ARGS", "SRS-ARGS", "CD", "Refine", "SoftBoN-SRS"}
    assert summary["threads"] == 1
    rows = [json.loads(line) for line in (tmp_path / "out" / "generations.jsonl").read_text().splitlines()]
    assert len(rows) == 12
    for r in rows:
        assert r["prompt"].startswith("<|im_start|>system") and r["prompt"].endswith(
            "<|im_start|>assistant\n"
        )
        assert "<|im_end|>" not in r["response"]
    for m in summary["methods"].values():
        assert m["gold_reward"] is None and m["proxy_reward"] is not None and m["empty_answers"] >= 0
    # the CD offline data came from the prompts file, rendered with the chat template
    assert any((tmp_path / "out" / "cd_offline").iterdir())


def test_recipe_check_refuses_what_cannot_run_before_models_load(tmp_path, smol_rm):
    from stackalign.runner.preflight import preflight
    from stackalign.runner.recipe import RecipeError, load_recipe

    path = _recipe(tmp_path, smol_rm)
    data = yaml.safe_load(path.read_text())
    data["methods"][3]["params"]["train_source"] = "world:train"
    data["prompts"]["chat_template"] = False
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(RecipeError) as e:
        preflight(load_recipe(path), network=False)
    msg = str(e.value)
    assert "methods[CD].params.train_source: 'world:train' needs a world" in msg
    assert "methods[Refine]: refine builds the follower's turn through the chat template" in msg
    data["methods"][3]["params"]["train_source"] = str(tmp_path / "missing.jsonl")
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(RecipeError, match="train_source: no such file"):
        preflight(load_recipe(path), network=False)
    data["methods"] = [
        {"name": "B", "decoder": "bon", "shaping": "srs", "params": {"threshold": "predicted"}}
    ]
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(RecipeError, match=r"methods\[B\].params.predictor_train_source"):
        preflight(load_recipe(path), network=False)
    with pytest.raises(RecipeError, match="threads"):
        load_recipe(path, ["threads=0"])
    with pytest.raises(RecipeError, match="system"):
        load_recipe(path, ["prompts.system=hi", "prompts.chat_template=false"])

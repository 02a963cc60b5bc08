"""Training-time SRS: group shaping = the shapers row by row, reference thresholds, bad input, the TRL
reward function (grouping as TRL repeats prompts) and 2-step GRPOTrainer and RLOOTrainer runs on a tiny model."""

import json
from pathlib import Path

import pytest
import torch
from tiny_models import bpe_tokenizer

from stackalign.runner.recipe import RecipeError
from stackalign.shaping import get_preset, stackelberg_threshold
from stackalign.training import train_recipe_from_dict
from stackalign.training.rl import RLConfig, shape_group_rewards


def _rewards():
    g = torch.Generator().manual_seed(3)
    return torch.randn(5, 6, generator=g, dtype=torch.float64) * 2


@pytest.mark.parametrize("shaping", ["vanilla", "meanstd", "minmax", "srs", "hard"])
def test_group_shaping_equals_shapers_row_by_row(shaping):
    r = _rewards()
    shaper = RLConfig(shaping=shaping, preset="official-cd").shaper()
    out = shape_group_rewards(shaper, r)
    for i in range(r.shape[0]):
        torch.testing.assert_close(out[i], shaper(r[i : i + 1])[0])


def test_srs_group_shaping_is_sigmoid_around_the_stackelberg_threshold():
    r = _rewards()
    out = shape_group_rewards(RLConfig(shaping="srs", preset="paper").shaper(), r)
    p = get_preset("paper")
    m = stackelberg_threshold(r, B=p.B, beta=p.beta)  # the paper preset: B_eff = B, no gamma cap
    torch.testing.assert_close(out, p.B * torch.sigmoid(p.alpha * (r - m.unsqueeze(-1))))
    # a threshold from elsewhere (reference samples) replaces the group's own
    m_ref = torch.linspace(-1, 1, 5, dtype=torch.float64)
    out2 = shape_group_rewards(RLConfig(shaping="srs", preset="paper").shaper(), r, m_ref)
    torch.testing.assert_close(out2, p.B * torch.sigmoid(p.alpha * (r - m_ref.unsqueeze(-1))))


def test_group_shaping_bad_input():
    shaper = RLConfig().shaper()
    with pytest.raises(ValueError, match="G >= 2"):
        shape_group_rewards(shaper, torch.zeros(3, 1))
    with pytest.raises(ValueError, match="NaN"):
        shape_group_rewards(shaper, torch.tensor([[0.0, float("nan")]]))
    with pytest.raises(RecipeError, match="group_size: shaping 'srs' over a group needs G >= 2"):
        train_recipe_from_dict({"group_size": 1, "baseline": "constant"})
    with pytest.raises(RecipeError, match="kl_placement"):
        train_recipe_from_dict({"kl_placement": "nowhere"})
    with pytest.raises(RecipeError, match="preset: unknown"):
        train_recipe_from_dict({"preset": "fancy"})
    # G = 1 is fine for vanilla with a constant baseline (plain REINFORCE)
    train_recipe_from_dict({"group_size": 1, "baseline": "constant", "shaping": "vanilla"})


# ---------------------------------------------------------------------------------------------------------
# TRL
# ---------------------------------------------------------------------------------------------------------
def _toy_rm(prompt: str, response: str) -> float:
    return float(len(response)) - 0.5 * response.count("a")


def test_trl_reward_groups_repeated_prompts_and_matches_in_house_shaping():
    from stackalign.integrations.trl import ShapedReward

    G = 4
    prompts = ["p1"] * G + ["p2"] * G
    comps = ["a", "bb", "ccc", "aaaa", "x", "yyyyy", "zz", "w"]
    f = ShapedReward(_toy_rm, shaping="srs", preset="official-cd")
    got = torch.tensor(f(prompts=prompts, completions=comps, completion_ids=None, trainer_state=None))
    raw = torch.tensor([_toy_rm(p, c) for p, c in zip(prompts, comps)], dtype=torch.float64).view(2, G)
    want = shape_group_rewards(RLConfig(shaping="srs", preset="official-cd").shaper(), raw).flatten()
    torch.testing.assert_close(got.double(), want)
    # order does not matter: an interleaved batch gives each completion the same shaped reward
    perm = [0, 4, 1, 5, 2, 6, 3, 7]
    got_perm = f([prompts[i] for i in perm], [comps[i] for i in perm])
    torch.testing.assert_close(torch.tensor(got_perm).double(), want[perm])
    # conversational format: last user message / assistant content
    conv = f(
        [[{"role": "user", "content": p}] for p in prompts],
        [[{"role": "assistant", "content": c}] for c in comps],
    )
    torch.testing.assert_close(torch.tensor(conv).double(), want)
    with pytest.raises(ValueError, match="G >= 2"):
        f(["solo"], ["x"])
    with pytest.raises(ValueError, match="non-finite"):
        ShapedReward(lambda p, r: float("nan"))(prompts, comps)


@pytest.mark.parametrize("trainer_name", ["GRPO", "RLOO"])
def test_trl_trainer_two_steps_on_a_tiny_model(tmp_path, trainer_name):
    """ShapedReward as the reward function of TRL's GRPOTrainer and RLOOTrainer (same interface in TRL 1.x)."""
    trl = pytest.importorskip("trl")
    from datasets import Dataset
    from transformers import LlamaConfig, LlamaForCausalLM

    Config, Trainer = getattr(trl, f"{trainer_name}Config"), getattr(trl, f"{trainer_name}Trainer")

    from stackalign.integrations.trl import ShapedReward

    corpus = ["User: tell me a tip\nAssistant: drink water and sleep well"] * 20
    tok = bpe_tokenizer(corpus, 280)
    torch.manual_seed(0)
    model = LlamaForCausalLM(
        LlamaConfig(
            vocab_size=len(tok),
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=1,
            num_attention_heads=2,
            num_key_value_heads=2,
            max_position_embeddings=128,
            pad_token_id=tok.pad_token_id,
            eos_token_id=tok.eos_token_id,
            bos_token_id=None,
        )
    )
    path = tmp_path / "policy"  # TRL reloads the reference model from this path
    model.save_pretrained(path)
    tok.save_pretrained(path)
    calls = []

    def rm(prompt, response):
        calls.append(prompt)
        return float(response.count("w")) - 0.1 * len(response)

    reward = ShapedReward(rm, shaping="srs", preset="official-cd")
    ds = Dataset.from_dict({"prompt": ["User: tell me a tip\nAssistant:", "User: hi\nAssistant:"] * 4})
    args = Config(
        output_dir=str(tmp_path / "out"),
        max_steps=2,
        per_device_train_batch_size=4,
        num_generations=4,
        max_completion_length=8,
        learning_rate=1e-3,
        beta=0.04,
        use_cpu=True,
        bf16=False,
        gradient_checkpointing=False,
        report_to=[],
        logging_steps=1,
        save_strategy="no",
        seed=0,
    )
    trainer = Trainer(model=str(path), reward_funcs=reward, args=args, train_dataset=ds, processing_class=tok)
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    trainer.train()
    assert trainer.state.global_step == 2
    assert len(calls) >= 8  # the reward function was called with every completion
    after = trainer.model.state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before)
    logged = [h for h in trainer.state.log_history if "rewards/stackalign_srs/mean" in h]
    assert logged, trainer.state.log_history


def test_overopt_stats_hand_curve():
    from experiments.overopt import overopt_stats

    curve = [
        {"step": 0, "kl": 0.0, "proxy_reward": -1.0, "gold_reward": -0.5},
        {"step": 10, "kl": 2.0, "proxy_reward": 1.0, "gold_reward": 0.75},
        {"step": 20, "kl": 6.0, "proxy_reward": 2.5, "gold_reward": 0.25},
    ]
    s = overopt_stats({"shaping": "vanilla", "curve": curve})
    assert (s["best_gold"], s["best_gold_step"], s["kl_at_gold_peak"]) == (0.75, 10, 2.0)
    assert (s["gold_end"], s["gap_end"], s["kl_end"]) == (0.25, 2.25, 6.0)


def test_overopt_paired_gold_against_a_baseline_run(tmp_path, micro):
    """Paired final gold differences: exactly the per-prompt means of the runs' final samples, differenced;
    a run with other evaluation settings is skipped."""
    from experiments.overopt import paired_gold

    prompts = list(micro.test_prompts)[:3]
    ev = {"prompts": "world:test", "limit": 3, "samples": 2, "seed": 1}
    answers = [" Thank you for asking!", " Water that falls from clouds.", " Try one idea at a time."]

    def run(name: str, texts: list[list[str]], eval_cfg: dict = ev) -> Path:
        d = tmp_path / name
        d.mkdir()  # config.json as a run writes it: the resolved recipe
        config = train_recipe_from_dict(
            {"algorithm": "rl", "world": str(micro.root), "eval": eval_cfg}
        ).to_dict()
        (d / "config.json").write_text(json.dumps(config))
        (d / "final_eval.json").write_text(json.dumps({"summary": {}, "texts": texts}))
        return d

    base = run("base", [[answers[0], answers[1]]] * 3)
    other = run("other", [[answers[2], answers[2]], [answers[1], answers[0]], [answers[0], answers[0]]])
    skipped = run("skipped", [[answers[2]] * 2] * 3, {**ev, "seed": 2})
    got = paired_gold([base, other, skipped], base)
    assert list(got) == [str(other)]

    def mean_gold(p: str, row: list[str]) -> float:
        return sum(micro.gold(p, t) for t in row) / len(row)

    diffs = [
        mean_gold(p, o) - mean_gold(p, b)
        for p, o, b in zip(
            prompts,
            json.loads((other / "final_eval.json").read_text())["texts"],
            [[answers[0], answers[1]]] * 3,
        )
    ]
    assert any(abs(d) > 1e-6 for d in diffs)  # the answers differ in gold: a real difference to pair
    mean, lo, hi = got[str(other)]
    assert mean == pytest.approx(sum(diffs) / 3) and lo <= mean <= hi
    assert min(diffs) - 1e-12 <= lo and hi <= max(diffs) + 1e-12

"""CD offline data: sampling + scoring + storage (resumable), per-prompt shaped targets, end to end."""

from __future__ import annotations

import json
import math

import pytest
import torch
from test_decoding_cd import make_lm, make_tokenizer

from stackalign.decoding.cd import CDConfig, controlled_decode
from stackalign.decoding.cd_data import CDDataConfig, OfflineData, build_offline_data, shaped_targets
from stackalign.decoding.common import GenerationConfig
from stackalign.decoding.value_head import ValueTrainConfig, train_value_head
from stackalign.models import CallableReward
from stackalign.shaping import PRESETS, get_preset, get_shaper, stackelberg_threshold

PROMPTS = [f"User: question {i} about {w}?\nAssistant:" for i, w in enumerate(["cats", "rain", "bread"] * 4)]


def reward_fn(prompt: str, response: str) -> float:
    return float(response.count("a") - 0.5 * response.count("e"))


@pytest.fixture(scope="module")
def tok():
    return make_tokenizer()


@pytest.fixture(scope="module")
def lm(tok):
    return make_lm(tok, "llama")


CFG = CDDataConfig(n_samples=6, max_new_tokens=12, prompts_per_batch=5, prompts_per_shard=4)


@pytest.fixture(scope="module")
def built(lm, tok, tmp_path_factory):
    out = tmp_path_factory.mktemp("cd-data")
    rm = CallableReward(reward_fn)
    return build_offline_data(
        lm, tok, rm, PROMPTS, out, CFG, stop_strings=["\nUser"], gold=reward_fn, progress=False
    )


def test_offline_data_rows_and_rewards(built, tok):
    assert built.complete and len(built) == len(PROMPTS)
    assert built.rewards.shape == (len(PROMPTS), 6)
    assert sorted(p.name for p in built.path.glob("shard_*.jsonl")) == [
        "shard_00000.jsonl",
        "shard_00001.jsonl",
        "shard_00002.jsonl",
    ]
    for row in built.rows:
        assert row["prompt"] == PROMPTS[row["i"]]
        assert row["prompt_ids"] == tok(row["prompt"])["input_ids"]
        for ids, r, g in zip(row["response_ids"], row["rewards"], row["gold"]):
            assert 1 <= len(ids) <= 12
            text = tok.decode(ids, skip_special_tokens=True)
            text = text[: text.find("\nUser")] if "\nUser" in text else text
            assert r == pytest.approx(reward_fn(row["prompt"], text)) and g == r
    fp = built.footprint()
    assert fp["samples"] == 6 * len(PROMPTS) and fp["disk_bytes"] > 0


def test_samples_do_not_depend_on_batching(lm, tok, built, tmp_path):
    rm = CallableReward(reward_fn)
    cfg = CDDataConfig(n_samples=6, max_new_tokens=12, prompts_per_batch=2, prompts_per_shard=4)
    other = build_offline_data(lm, tok, rm, PROMPTS, tmp_path, cfg, stop_strings=["\nUser"], progress=False)
    assert [r["response_ids"] for r in other.rows] == [r["response_ids"] for r in built.rows]


def test_resume_after_a_kill_loses_and_duplicates_nothing(lm, tok, built, tmp_path):
    """Copy the finished data, tear the last row of a shard in half and delete a later shard (a kill in the
    middle of a write); resuming rebuilds exactly the missing rows."""
    for f in built.path.iterdir():
        (tmp_path / f.name).write_bytes(f.read_bytes())
    shard0 = tmp_path / "shard_00000.jsonl"
    data = shard0.read_bytes()
    last = data.rstrip(b"\n").rfind(b"\n") + 1
    shard0.write_bytes(data[: last + (len(data) - last) // 2])  # torn final row
    (tmp_path / "shard_00002.jsonl").unlink()
    partial = OfflineData.load(tmp_path)
    assert len(partial) == len(PROMPTS) - 1 - 4 and not partial.complete
    rm = CallableReward(reward_fn)
    resumed = build_offline_data(lm, tok, rm, PROMPTS, tmp_path, CFG, stop_strings=["\nUser"], progress=False)
    assert [r["i"] for r in resumed.rows] == list(range(len(PROMPTS)))
    assert [r["response_ids"] for r in resumed.rows] == [r["response_ids"] for r in built.rows]
    lines = sum(len(p.read_text().splitlines()) for p in tmp_path.glob("shard_*.jsonl"))
    assert lines == len(PROMPTS)


def test_resume_refuses_other_settings(lm, tok, built):
    rm = CallableReward(reward_fn)
    cfg = CDDataConfig(n_samples=3, max_new_tokens=12, prompts_per_batch=5, prompts_per_shard=4)
    with pytest.raises(ValueError, match="'data'"):
        build_offline_data(lm, tok, rm, PROMPTS, built.path, cfg, progress=False)
    with pytest.raises(ValueError, match="'prompts_sha256'"):
        build_offline_data(lm, tok, rm, PROMPTS[::-1], built.path, CFG, progress=False)


# ------------------------------------------------------------------------------------------- shaping


def _sig(x):
    return 1 / (1 + math.exp(-x))


def test_official_cd_targets_equal_threshold_and_sigmoid_by_hand(built):
    """official-cd: B_eff = min(B, 2 range), gamma = exp(min(B_eff/beta, 2)), shaped = B_eff sigma(alpha (r - m))."""
    p = PRESETS["official-cd"].params
    targets = built.targets(get_preset("official-cd"))
    for row, t in zip(built.rows, targets):
        r = torch.tensor(row["rewards"], dtype=torch.float64)
        b_eff = min(p["B"], 2.0 * float(r.max() - r.min()))
        if b_eff == 0:
            assert torch.all(t == 0)
            continue
        m = float(stackelberg_threshold(r, B=b_eff, beta=p["beta"], gamma_cap=math.exp(2.0)))
        expect = [b_eff * _sig(p["alpha"] * (x - m)) for x in row["rewards"]]
        assert t.tolist() == pytest.approx(expect, abs=1e-9)


def test_paper_and_baseline_targets_by_hand(built):
    rewards = built.rewards
    B, beta, alpha = 3.0, 0.5, 2.0
    paper = shaped_targets(rewards, get_shaper("srs", B=B, beta=beta, alpha=alpha))
    m = stackelberg_threshold(rewards, B=B, beta=beta)
    torch.testing.assert_close(paper, B * torch.sigmoid(alpha * (rewards - m[:, None])))
    torch.testing.assert_close(built.targets(get_shaper("vanilla")), rewards)
    z = (rewards - rewards.mean(-1, keepdim=True)) / rewards.std(-1, unbiased=False, keepdim=True).clamp(
        min=1e-6
    )
    torch.testing.assert_close(built.targets(get_shaper("meanstd")), z)
    lo, hi = rewards.min(-1, keepdim=True).values, rewards.max(-1, keepdim=True).values
    mm = built.targets(get_shaper("minmax", B=B))
    torch.testing.assert_close(mm, B * (rewards - lo) / (hi - lo).clamp(min=1e-6))
    ex = built.examples(get_shaper("minmax", B=B))
    assert len(ex) == rewards.numel() and {e.group for e in ex} == set(range(len(PROMPTS)))
    assert [e.target for e in ex[:6]] == pytest.approx(mm[0].tolist())


# ------------------------------------------------------------------------------------------- end to end


@pytest.mark.slow
def test_micro_world_cd_pipeline(tmp_path):
    """Micro world: offline data -> SRS targets -> value head -> tokenwise and blockwise CD on test prompts."""
    from stackalign.worlds import build_world

    world = build_world(tmp_path / "world", preset="micro", progress=False)
    model, tok = world.load_policy()
    rm = world.load_reward_model()
    data = build_offline_data(
        model,
        tok,
        rm,
        world.train_prompts[:24],
        tmp_path / "data",
        CDDataConfig(n_samples=4, max_new_tokens=24, prompts_per_batch=8),
        stop_strings=world.stop_strings,
        progress=False,
    )
    shaper = get_preset("official-cd")
    res = train_value_head(
        model,
        data.examples(shaper),
        ValueTrainConfig(width=32, max_epochs=3, lr=1e-3, val_fraction=0.2),
        out_dir=tmp_path / "head",
        extra={"shaping": {"preset": "official-cd", **shaper.__dict__}},
        progress=False,
    )
    meta = json.loads((tmp_path / "head" / "value_head.json").read_text())
    assert meta["shaping"]["preset"] == "official-cd" and math.isfinite(res.best_val_mse)
    gen = GenerationConfig(max_new_tokens=16, temperature=1.0, stop_strings=tuple(world.stop_strings))
    for mode in ("tokenwise", "blockwise"):
        out = controlled_decode(model, tok, world.test_prompts[:3], res.head, CDConfig(mode=mode), gen)
        assert len(out.texts) == 3 and all("\nUser:" not in t for t in out.texts)

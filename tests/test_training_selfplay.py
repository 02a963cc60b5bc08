"""The self-play preference baseline (``algorithm: selfplay``): win-share rewards by hand, a short run on the
micro world (summary, training changed the policy, kill-and-resume identical), bad input naming the field."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file

from stackalign.runner.recipe import RecipeError
from stackalign.training.recipe import train_recipe_from_dict
from stackalign.training.run import run_training
from stackalign.training.selfplay import mixture_rewards, win_share_rewards


def test_win_share_rewards_by_hand():
    """Judge: the longer answer wins (p = 1), equal lengths tie (p = 1/2); one call over the G(G-1)/2 pairs."""
    calls = []

    def judge(xs, a, b):
        calls.append(len(xs))
        return torch.tensor(
            [1.0 if len(u) > len(v) else 0.0 if len(u) < len(v) else 0.5 for u, v in zip(a, b)]
        )

    texts = [["aaa", "a", "aa", "aa"], ["b", "bb", "bbbb", "bbb"]]
    r = win_share_rewards(judge, ["x", "y"], texts)
    assert calls == [12]
    # "aaa" beats all three; "a" beats none; each "aa" beats "a", ties the other "aa", loses to "aaa"
    assert r[0].tolist() == pytest.approx([1.0, 0.0, 0.5, 0.5])
    assert r[1].tolist() == pytest.approx([0.0, 1 / 3, 1.0, 2 / 3])
    assert r.mean(-1).tolist() == pytest.approx([0.5, 0.5])  # p(y ≻ y') + p(y' ≻ y) = 1


def test_mixture_rewards_by_hand():
    """Nash-MD-PG: each answer's mean preference over the G opponents, one judge call over all pairs."""

    def judge(xs, a, b):
        return torch.tensor(
            [1.0 if len(u) > len(v) else 0.0 if len(u) < len(v) else 0.5 for u, v in zip(a, b)]
        )

    r = mixture_rewards(judge, ["x"], [["aa", "a"]], [["a", "aa", "aaa"]])
    assert r[0].tolist() == pytest.approx([(1.0 + 0.5 + 0.0) / 3, (0.5 + 0.0 + 0.0) / 3])


def test_nash_md_opponents_come_from_the_mixture(micro, tmp_path, monkeypatch):
    """opponent: mixture samples the opponents from (reference, mixture_beta) and trains the policy."""
    import stackalign.training.selfplay as sp

    seen = []
    real = sp.sample_group

    def spy(*args, **kw):
        seen.append((kw.get("salt", "train"), kw.get("mixture")))
        return real(*args, **kw)

    monkeypatch.setattr(sp, "sample_group", spy)
    s = run_training(
        _recipe(micro, steps=2, opponent="mixture", mixture_beta=0.25), tmp_path / "nmd", world=micro
    )
    assert s["algorithm"] == "selfplay" and 0.0 <= s["eval"]["policy_vs_base"] <= 1.0
    assert [salt for salt, _ in seen] == ["train", "opponent"] * 2
    assert all(m is None for salt, m in seen if salt == "train")
    assert all(m is not None and m[1] == 0.25 for salt, m in seen if salt == "opponent")


def _recipe(world, **kw):
    d = {
        "algorithm": "selfplay",
        "world": str(world.root),
        "steps": 4,
        "lr": 1e-3,
        "prompts_per_step": 2,
        "group_size": 3,
        "max_new_tokens": 12,
        "checkpoint_every": 2,
        "keep_checkpoints": 2,
        "progress": False,
        "eval": {"limit": 3, "samples": 1},
    }
    d.update(kw)
    return train_recipe_from_dict(d)


def _weights(run):
    return load_file(str(next((run / "final").glob("*.safetensors"))))


def test_selfplay_run_trains_and_resumes(micro, tmp_path):
    out = tmp_path / "run"
    s = run_training(_recipe(micro), out, world=micro)
    assert s["algorithm"] == "selfplay" and s["steps"] == 4
    assert 0.0 <= s["eval"]["policy_vs_base"] <= 1.0 and s["eval"]["gold_reward"] is not None
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    assert all(0.5 <= r["win_share_max"] <= 1.0 for r in rows)  # the best of a group wins at least half
    first = _weights(out)
    base = load_file(str(micro.policy_dir / "model.safetensors"))
    assert any(not torch.equal(first[k], v) for k, v in base.items())
    ckpts = sorted((out / "checkpoints").iterdir())
    shutil.rmtree(ckpts[-1])
    shutil.rmtree(out / "final")
    (out / "summary.json").unlink()
    s2 = run_training(_recipe(micro), out, world=micro)
    again = _weights(out)
    assert all(torch.equal(first[k], again[k]) for k in first)
    assert s2["eval"] == s["eval"]


@pytest.mark.parametrize(
    "kw,field",
    [
        ({"group_size": 1}, "group_size"),
        ({"tau": -0.5}, "tau"),
        ({"judge": "oracle"}, "judge"),
        ({"opponent": "nash"}, "opponent"),
        ({"mixture_beta": 1.0}, "mixture_beta"),
    ],
)
def test_bad_selfplay_recipe_names_the_field(micro, kw, field):
    with pytest.raises((RecipeError, ValueError), match=field):
        _recipe(micro, **kw)

"""`stackalign bench args|sample|cd|generate` plumbing (tiny random models; ratios are not asserted here)."""

from __future__ import annotations

import argparse
import json
import sys
import types

import pytest

from stackalign import bench


def _ns(which, **kw):
    return argparse.Namespace(which=which, json=True, world="tiny", prompts=2, max_new_tokens=6, **kw)


def test_bench_args_json(capsys):
    assert bench.main(_ns("args")) == 0
    out = json.loads(capsys.readouterr().out)
    assert set(out["variants"]) == {
        "plain_greedy",
        "reference_args",
        "fast_args",
        "fast_srs_args",
        "bridge_args",
    }
    assert set(out["ratios"]) == {
        "reference_over_fast",
        "srs_args_over_plain",
        "srs_over_vanilla",
        "text_over_fast",
        "identical",
        "identical_bridge",
    }
    # identical_bridge is not asserted: the bridge scores the re-encoded text and a random policy's tokens are
    # not its text's canonical encoding (rule 3 of models/reward.py); on trained models they are
    assert out["ratios"]["identical"] is True and isinstance(out["ratios"]["identical_bridge"], bool)
    assert out["scorers"]["bridge_args"] == "bridge" and out["scorers"]["fast_args"] == "tree"
    assert all(v["new_tokens"] == 12 and v["seconds"] > 0 for v in out["variants"].values())
    assert out["variants"]["fast_args"]["rm_tokens"] < out["variants"]["reference_args"]["rm_tokens"]
    floor, greedy = out["floor"], out["variants"]["plain_greedy"]["seconds"]
    assert floor["rm_candidates_seconds"] > 0
    assert floor["srs_args_over_plain"] == pytest.approx((greedy + floor["rm_candidates_seconds"]) / greedy)


def test_candidate_floor_runs_the_candidates_alone():
    """The floor is ``steps`` RM forwards per batch on [rows, k] ids (the last batch may be smaller), no cache."""
    from stackalign.bench.common import load_models
    from stackalign.decoding.rm_cache import _backbone_and_head

    _, _, rm, _, _ = load_models("tiny")
    backbone, _ = _backbone_and_head(rm)
    seen = []
    hook = backbone.register_forward_hook(
        lambda mod, args, kwargs, out: seen.append((tuple(kwargs["input_ids"].shape), kwargs["use_cache"])),
        with_kwargs=True,
    )
    try:
        assert bench.candidate_floor(rm, 5, 2, 3, steps=4, repeats=2, device="cpu") > 0
    finally:
        hook.remove()
    # warm-up (min(steps, 8) = 4 per batch) + two timed repeats, over batches of 2, 2 and 1 rows
    one_pass = [((2, 3), False)] * 4 + [((2, 3), False)] * 4 + [((1, 3), False)] * 4
    assert seen == one_pass * 3


def test_bench_sample_table(capsys):
    ns = _ns("sample")
    ns.json = False
    assert bench.main(ns) == 0
    text = capsys.readouterr().out
    assert "shared_prefill" in text and "hf_over_shared" in text


def test_bench_cd_dispatches_to_bench_cd(monkeypatch):
    seen = {}
    fake = types.ModuleType("stackalign.bench.cd")
    fake.main = lambda args: seen.setdefault("which", args.which) and 0
    monkeypatch.setitem(sys.modules, "stackalign.bench.cd", fake)
    assert bench.main(_ns("cd")) == 0
    assert seen == {"which": "cd"}


def test_bench_rejects_bad_arguments():
    with pytest.raises(ValueError, match="max-new-tokens"):
        bench.main(argparse.Namespace(which="args", json=True, world="tiny", prompts=1, max_new_tokens=-1))


def test_bench_generate_json(capsys):
    assert bench.main(_ns("generate")) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["ratios"]["identical_vanilla"] is True and out["ratios"]["identical_srs"] is True
    v = out["variants"]
    assert set(v) == {f"{a}_{b}" for a in ("vanilla", "srs") for b in ("args_generate", "generate")}
    assert v["vanilla_args_generate"]["rm_tokens"] > 0 and v["srs_generate"]["seconds"] > 0


def test_bench_random_pair_of_a_given_size():
    from stackalign.bench.common import load_models

    policy, tok, rm, prompts, desc = load_models("random:128:3")
    assert policy.config.hidden_size == rm.model.config.hidden_size == 128
    assert policy.config.num_hidden_layers == 3 and policy.config.num_attention_heads == 2
    assert "hidden 128, 3 layers" in desc and len(prompts) >= 16
    for bad in ("random:100:2", "random:128", "random:128:0", "random:x:2"):
        with pytest.raises(ValueError, match="random:HIDDEN:LAYERS|multiple of 64"):
            load_models(bad)

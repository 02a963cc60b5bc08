"""ARGS: fast (RM KV cache) == reference (official full recompute), batching, stopping, shaping, errors."""

from __future__ import annotations

import math

import pytest
import torch
from test_decoding_common import PROMPTS, make_models, make_tokenizer

from stackalign.decoding.args import ARGSConfig, args_generate, make_scorer
from stackalign.decoding.common import GenerationConfig
from stackalign.decoding.sampling import greedy
from stackalign.models import CallableReward, RewardModel
from stackalign.shaping import Shaper, get_preset, get_shaper

NO_EOS = (9999,)
GEN = GenerationConfig(max_new_tokens=12, eos_token_ids=NO_EOS)


def _run(arch, rm_mode, rm_cache="auto", shaper=None, prompts=PROMPTS, gen=GEN, **kw):
    policy, rm, tok = make_models(arch)
    cfg = ARGSConfig(rm_mode=rm_mode, rm_cache=rm_cache, **kw)
    return args_generate(policy, tok, rm, prompts, cfg, gen, shaper=shaper)


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
@pytest.mark.parametrize("shaper", [None, "official-args", "meanstd", "minmax", "hard"])
def test_fast_and_reference_pick_identical_greedy_tokens(arch, shaper):
    ref = _run(arch, "reference", shaper=shaper)
    for cache in ("tree", "repeat"):
        fast = _run(arch, "fast", cache, shaper=shaper)
        assert fast.token_ids == ref.token_ids, (arch, shaper, cache)
        assert fast.texts == ref.texts
        assert fast.cost.rm_tokens < ref.cost.rm_tokens


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_fast_scores_equal_full_recompute_scores(arch):
    """Per-candidate rewards of the tree and repeat scorers match full forwards over full sequences."""
    policy, rm, tok = make_models(arch)
    ids = [tok(p)["input_ids"] for p in PROMPTS]
    scorers = {m: make_scorer(tok, rm, ARGSConfig(rm_mode=mo, rm_cache=c)) for m, mo, c in
               [("tree", "fast", "tree"), ("repeat", "fast", "repeat"), ("ref", "reference", "auto")]}  # fmt: skip
    for s in scorers.values():
        s.start(ids, PROMPTS)
    g = torch.Generator().manual_seed(0)
    for _ in range(4):
        cands = torch.randint(3, len(tok), (len(PROMPTS), 5), generator=g)
        out = {m: s.score(cands) for m, s in scorers.items()}
        torch.testing.assert_close(out["tree"], out["ref"], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(out["repeat"], out["ref"], atol=1e-5, rtol=1e-5)
        j = torch.randint(0, 5, (len(PROMPTS),), generator=g)
        for s in scorers.values():
            s.advance(cands.gather(1, j[:, None]).squeeze(1), j)
    keep = torch.tensor([0, 2])
    for s in scorers.values():
        s.select(keep)
    scorers["tree"].score(torch.randint(3, len(tok), (2, 3), generator=g))  # scored, then not advanced:
    # the next score() forgets those candidates (the tree scorer discards their cache entries)
    cands = torch.randint(3, len(tok), (2, 5), generator=g)
    out = {m: s.score(cands) for m, s in scorers.items()}
    torch.testing.assert_close(out["tree"], out["ref"], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out["repeat"], out["ref"], atol=1e-5, rtol=1e-5)


def test_reference_is_the_official_algorithm():
    """An independent, literal transcription of the official SRS-ARGS loop (batch 1, no RM cache, full LM
    recompute, bisection 30 iterations, gamma capped at 2, B_eff = min(B, 1.01 range)) picks the same
    tokens as args_generate in reference and fast mode with the official-args preset."""
    policy, rm, tok = make_models("llama")
    B, beta, alpha, k = 12.0, 2.0, 1.5, 10
    w = 1.0 / beta
    prompt = PROMPTS[1]
    seq = tok(prompt)["input_ids"]
    out = []
    for _ in range(8):
        with torch.no_grad():
            logits = policy(input_ids=torch.tensor([seq])).logits[0, -1]
            top, cand = logits.topk(k)
            r = torch.stack(
                [rm.model(input_ids=torch.tensor([seq + [c]])).logits[0, 0] for c in cand.tolist()]
            )
        p = top.double().softmax(-1)
        rr = r.double()
        b_eff = min(B, 1.01 * float(rr.max() - rr.min()))
        c = min(math.exp(b_eff / beta), 2.0)
        lo, hi = float(rr.min()), float(rr.max())
        for _ in range(30):
            m = 0.5 * (lo + hi)
            f = float((p * torch.where(rr >= m, c, 1.0) * (rr - m)).sum())
            lo, hi = (m, hi) if f > 0 else (lo, m)
        m = 0.5 * (lo + hi)
        s = b_eff * torch.sigmoid(alpha * (rr - m))
        nxt = int(cand[int((top.double() + w * s).argmax())])
        seq.append(nxt)
        out.append(nxt)
    gen = GenerationConfig(max_new_tokens=8, eos_token_ids=NO_EOS)
    for mode in ("reference", "fast"):
        res = args_generate(
            policy, tok, rm, [prompt], ARGSConfig(k=k, rm_mode=mode), gen, shaper="official-args"
        )
        assert res.token_ids[0] == out, mode


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_batch_equals_per_prompt(arch):
    batched = _run(arch, "fast", shaper="official-args")
    for i, p in enumerate(PROMPTS):
        single = _run(arch, "fast", shaper="official-args", prompts=[p])
        assert single.token_ids[0] == batched.token_ids[i]
    two = _run(arch, "fast", shaper="official-args", batch_size=2)
    assert two.token_ids == batched.token_ids


def test_rm_token_cost_of_fast_mode():
    policy, rm, tok = make_models("llama")
    T, k = 6, 4
    gen = GenerationConfig(max_new_tokens=T, ignore_eos=True)
    res = args_generate(policy, tok, rm, PROMPTS, ARGSConfig(k=k, rm_mode="fast", rm_cache="tree"), gen)
    n_prompt = sum(len(tok(p)["input_ids"]) for p in PROMPTS)
    assert (
        res.cost.rm_tokens == n_prompt + len(PROMPTS) * k * T
    )  # exactly k per step: the chosen one is reused
    assert res.cost.lm_tokens == n_prompt + len(PROMPTS) * (T - 1)
    ref = args_generate(policy, tok, rm, PROMPTS, ARGSConfig(k=k, rm_mode="reference"), gen)
    lengths = [len(tok(p)["input_ids"]) for p in PROMPTS]
    assert ref.cost.rm_tokens == sum(k * (L + t + 1) for L in lengths for t in range(T))
    assert res.cost.seconds > 0 and res.meta["scorer"] == "tree" and ref.meta["scorer"] == "reference"


@pytest.mark.parametrize("mode", ["fast", "reference"])
def test_eos_and_stop_strings_end_rows(mode):
    free = _run("llama", mode)
    eos = free.token_ids[0][2]
    res = _run("llama", mode, gen=GenerationConfig(max_new_tokens=12, eos_token_ids=(eos,)))
    for i, row in enumerate(free.token_ids):
        cut = row.index(eos) + 1 if eos in row else len(row)
        assert res.token_ids[i] == row[:cut]
    text = free.texts[2]
    stop = text[3:6]
    res2 = _run(
        "llama",
        mode,
        prompts=PROMPTS[2:],
        gen=GenerationConfig(max_new_tokens=12, eos_token_ids=NO_EOS, stop_strings=(stop,)),
    )
    assert res2.texts[0] == text[: text.index(stop)]


def test_default_eos_is_the_tokenizer_eos():
    policy, rm, tok = make_models("gpt2")
    res = args_generate(policy, tok, rm, PROMPTS, ARGSConfig(k=3), GenerationConfig(max_new_tokens=40))
    for ids in res.token_ids:
        assert tok.eos_token_id not in ids[:-1]


def test_per_prompt_threshold_is_used():
    policy, rm, tok = make_models("llama")
    srs = get_shaper("srs", B=4.0, beta=0.5, alpha=3.0)
    lo = args_generate(
        policy, tok, rm, PROMPTS, ARGSConfig(rm_mode="reference"), GEN, shaper=srs, thresholds=[-50.0] * 3
    )
    lo_fast = args_generate(
        policy, tok, rm, PROMPTS, ARGSConfig(rm_mode="fast"), GEN, shaper=srs, thresholds=[-50.0] * 3
    )
    assert lo.token_ids == lo_fast.token_ids and lo.meta["per_prompt_threshold"]
    # A threshold far below every reward saturates the sigmoid: shaped = B for all candidates = plain greedy.
    plain = greedy(policy, tok, PROMPTS, GenerationConfig(max_new_tokens=12, eos_token_ids=NO_EOS))
    assert lo.token_ids == [r[0] for r in plain.token_ids]
    with pytest.raises(ValueError, match="thresholds: got 2"):
        args_generate(policy, tok, rm, PROMPTS, None, GEN, shaper=srs, thresholds=[0.0, 1.0])
    with pytest.raises(ValueError, match="need a shaper"):
        args_generate(policy, tok, rm, PROMPTS, None, GEN, thresholds=[0.0] * 3)
    with pytest.raises(ValueError, match="need a shaper that uses them"):  # meanstd has no threshold
        args_generate(policy, tok, rm, PROMPTS, None, GEN, shaper="meanstd", thresholds=[0.0] * 3)


def test_reward_weight_steers_decoding():
    """With a text reward that loves one character, a larger reward weight w produces more of it."""
    policy, _, tok = make_models("gpt2")
    rm = CallableReward(lambda p, r: float(r.count("a")), name="count_a")
    counts = []
    for w in (1e-6, 20.0):
        res = args_generate(policy, tok, rm, PROMPTS, ARGSConfig(k=8, w=w), GEN)
        assert res.meta["scorer"] == "text"
        counts.append(sum(t.count("a") for t in res.texts))
    assert counts[1] > counts[0]
    # a bare function works too
    res = args_generate(policy, tok, lambda p, r: -len(r), PROMPTS[:1], ARGSConfig(k=3), GEN)
    assert res.meta["scorer"] == "text"


def test_stochastic_is_seeded_and_batch_invariant():
    policy, rm, tok = make_models("llama")
    cfg = ARGSConfig(mode="stochastic", temperature=1.0, rm_mode="fast")
    gen = GenerationConfig(max_new_tokens=10, eos_token_ids=NO_EOS, seed=7)
    a = args_generate(policy, tok, rm, PROMPTS, cfg, gen, shaper="official-args")
    b = args_generate(policy, tok, rm, PROMPTS, cfg, gen, shaper="official-args")
    assert a.token_ids == b.token_ids
    single = args_generate(policy, tok, rm, PROMPTS[1:2], cfg, gen, shaper="official-args")
    assert single.token_ids[0] == a.token_ids[1]
    ref = args_generate(
        policy,
        tok,
        rm,
        PROMPTS,
        ARGSConfig(mode="stochastic", temperature=1.0, rm_mode="reference"),
        gen,
        shaper="official-args",
    )
    assert ref.token_ids == a.token_ids
    other = args_generate(
        policy,
        tok,
        rm,
        PROMPTS,
        cfg,
        GenerationConfig(max_new_tokens=10, eos_token_ids=NO_EOS, seed=8),
        shaper="official-args",
    )
    assert other.token_ids != a.token_ids


def test_mismatched_tokenizers_fall_back_to_text_or_fail_clearly():
    policy, rm, tok = make_models("llama")
    other_tok = make_tokenizer(vocab_size=290, extra=" zebra quokka")
    other_rm = RewardModel(rm.model, other_tok)
    with pytest.raises(ValueError, match="share the policy's tokenizer"):
        args_generate(policy, tok, other_rm, PROMPTS, ARGSConfig(rm_mode="fast"), GEN)
    res = args_generate(
        policy, tok, other_rm, PROMPTS[:1], ARGSConfig(k=3), GenerationConfig(max_new_tokens=3)
    )
    assert res.meta["scorer"] == "bridge" and "tokenizers differ" in res.meta["scorer_reason"]
    text = args_generate(
        policy,
        tok,
        other_rm,
        PROMPTS[:1],
        ARGSConfig(k=3, rm_mode="text"),
        GenerationConfig(max_new_tokens=3),
    )
    assert text.meta["scorer"] == "text" and text.token_ids == res.token_ids


@pytest.mark.parametrize(
    "kw, msg",
    [(dict(k=0), "k:"), (dict(w=0), "w:"), (dict(mode="beam"), "mode"), (dict(rm_mode="x"), "rm_mode"),
     (dict(rm_cache="x"), "rm_cache"), (dict(batch_size=0), "batch_size")],
)  # fmt: skip
def test_config_validation(kw, msg):
    with pytest.raises(ValueError, match=msg):
        ARGSConfig(**kw)


def test_w_defaults_to_the_shapers_beta():
    res = _run("gpt2", "fast", shaper=get_preset("official-args"), gen=GenerationConfig(max_new_tokens=2))
    assert res.meta["w"] == 0.5  # 1 / the preset's beta 2.0
    res = _run("gpt2", "fast", shaper=get_preset("official-cd"), gen=GenerationConfig(max_new_tokens=2))
    assert res.meta["w"] == pytest.approx(1 / 0.667)


# ------------------------------------------------------------------------------------------ micro world
def test_micro_world_fast_equals_reference(micro):
    policy, tok = micro.load_policy()
    rm = micro.load_reward_model()
    prompts = micro.test_prompts[:3]
    gen = GenerationConfig(max_new_tokens=16, stop_strings=tuple(micro.stop_strings))
    for shaper in (None, "official-args"):
        ref = args_generate(policy, tok, rm, prompts, ARGSConfig(rm_mode="reference"), gen, shaper=shaper)
        fast = args_generate(policy, tok, rm, prompts, ARGSConfig(rm_mode="fast"), gen, shaper=shaper)
        assert fast.token_ids == ref.token_ids and fast.texts == ref.texts
        assert all("\nUser:" not in t for t in fast.texts)


def test_fast_mode_updates_the_reward_models_token_total():
    policy, rm, tok = make_models("llama")
    before = rm.n_tokens_scored
    res = args_generate(
        policy, tok, rm, PROMPTS, ARGSConfig(k=3, rm_mode="fast"), GenerationConfig(max_new_tokens=3)
    )
    assert rm.n_tokens_scored - before == res.cost.rm_tokens > 0


class _TorchPathShaper(Shaper):
    """The same shaper, but not the stock class: ARGS keeps it on the torch path (no host shortcut)."""


@pytest.mark.parametrize("mode", ["greedy", "stochastic"])
@pytest.mark.parametrize("preset", ["official-args", "paper"])
def test_cpu_host_shaping_picks_the_torch_paths_tokens(mode, preset, monkeypatch):
    """SRS-ARGS shapes the k candidates on the host, row by row in Python floats for a few rows and in NumPy
    arrays for more; both give the torch path's tokens, with the per-step threshold and with per-prompt
    thresholds."""
    import stackalign.decoding.args as args_module

    policy, rm, tok = make_models("llama")
    host = get_preset(preset)
    torch_path = _TorchPathShaper(**{f: getattr(host, f) for f in host.__dataclass_fields__})
    cfg = ARGSConfig(mode=mode, temperature=1.0, rm_mode="fast")
    gen = GenerationConfig(max_new_tokens=12, eos_token_ids=NO_EOS, seed=3)
    for thresholds in (None, [-0.5, 0.0, 0.5]):
        rows = args_generate(policy, tok, rm, PROMPTS, cfg, gen, shaper=host, thresholds=thresholds)
        b = args_generate(policy, tok, rm, PROMPTS, cfg, gen, shaper=torch_path, thresholds=thresholds)
        with monkeypatch.context() as mp:
            mp.setattr(args_module, "ROW_PATH_MAX", 0)  # every batch through the NumPy arrays
            arrays = args_generate(policy, tok, rm, PROMPTS, cfg, gen, shaper=host, thresholds=thresholds)
        assert rows.token_ids == b.token_ids == arrays.token_ids, (mode, preset, thresholds)


def test_nan_reward_raises_after_the_batch_on_the_host_path():
    policy, rm, tok = make_models("llama", seed=99)  # its own cached models: this test poisons the RM
    with torch.no_grad():
        rm.model.score.weight.fill_(float("nan"))
    for shaper in (None, "srs"):
        with pytest.raises(ValueError, match="NaN or infinite"):
            args_generate(policy, tok, rm, PROMPTS[:1], ARGSConfig(k=3, rm_mode="fast"), GEN, shaper=shaper)

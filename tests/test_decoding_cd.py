"""Controlled decoding: tokenwise (tree and repeat lookahead), blockwise, and the value head."""

from __future__ import annotations

import json
import warnings

import pytest
import torch
from tiny_models import bpe_tokenizer, tiny_pair
from transformers import PreTrainedTokenizerFast

from stackalign.decoding.cd import CDConfig, _Batch, _Tokenwise, controlled_decode, final_hidden
from stackalign.decoding.common import Cost, GenerationConfig, StopChecker
from stackalign.decoding.value_head import (
    ValueHead,
    ValueHeadConfig,
    ValueTrainConfig,
    load_value_head,
    train_value_head,
    value_loss,
)

CORPUS = [
    "User: How do I bake bread?\nAssistant: Mix flour, water and yeast, then bake it.",
    "User: Tell me about cats.\nAssistant: Cats are small, curious animals. Thank you for asking!",
    "User: What is rain?\nAssistant: Water that falls from clouds.",
] * 5
PROMPTS = [
    "User: How do I bake bread?\nAssistant:",
    "User: cats?\nAssistant:",
    "User: What is rain and why does it fall from the clouds?\nAssistant:",
]
HIDDEN = 32


def make_tokenizer(vocab_size: int = 300) -> PreTrainedTokenizerFast:
    return bpe_tokenizer(CORPUS, vocab_size)


def make_lm(tok, arch: str = "llama", seed: int = 0):
    """A tiny random policy (HF's default init; GPT-2 with 4 heads and a BOS id) from the shared builder."""
    extra = dict(n_head=4, bos_token_id=1) if arch == "gpt2" else {}
    return tiny_pair(arch, tok, seed=seed, init_std=0.02, **extra)[0]


@pytest.fixture(scope="module")
def tok():
    return make_tokenizer()


@pytest.fixture(scope="module", params=["llama", "gpt2"])
def lm(request, tok):
    return make_lm(tok, request.param)


@pytest.fixture(scope="module")
def head():
    torch.manual_seed(1)
    return ValueHead(ValueHeadConfig(hidden_size=HIDDEN, width=16)).eval()


def hf_greedy(model, tok, prompts, n):
    enc = tok(prompts, return_tensors="pt", padding=True)
    out = model.generate(**enc, do_sample=False, max_new_tokens=n, min_new_tokens=n)
    return out[:, enc["input_ids"].shape[1] :].tolist()


GREEDY20 = GenerationConfig(max_new_tokens=20, temperature=0.0, ignore_eos=True)


# ------------------------------------------------------------------------------------------- tokenwise


@pytest.mark.parametrize("lookahead", ["tree", "repeat"])
def test_tokenwise_lambda0_equals_hf_greedy(lm, tok, lookahead):
    ref = hf_greedy(lm, tok, PROMPTS, 20)
    res = controlled_decode(lm, tok, PROMPTS, None, CDConfig(lam=0.0, lookahead=lookahead), GREEDY20)
    assert res.token_ids == ref
    assert res.meta["new_tokens"] == 60 and res.meta["value_evals"] == 0
    prompt_tokens = sum(len(tok(p)["input_ids"]) for p in PROMPTS)
    assert res.cost.lm_tokens == prompt_tokens + 60 * 10  # k = 10 candidates per step, one prefill
    assert res.cost.lm_calls == 1 + 20


@pytest.mark.parametrize("lookahead", ["tree", "repeat"])
def test_chosen_row_cache_equals_fresh_forward(lm, tok, head, lookahead):
    """After steps chosen by the value head (not the argmax), the logits the decoder holds for the next step,
    computed from the kept candidate pass, equal a fresh forward over prompt + generated ids."""
    cfg = CDConfig(lam=20.0, lookahead=lookahead)
    gen = GenerationConfig(max_new_tokens=50, temperature=0.0, ignore_eos=True)
    ids = [tok(p)["input_ids"] for p in PROMPTS]
    batch = _Batch(lm, ids, tok.pad_token_id, Cost())
    run = _Tokenwise(batch, head, cfg, gen, StopChecker(tok, [], (), True), [None] * 3, Cost())
    with torch.no_grad():
        steps = [run.step().tolist() for _ in range(8)]  # no row ends (EOS ignored, 50 tokens allowed)
        generated = [[s[r] for s in steps] for r in range(3)]
        for j, r in enumerate(batch.rows):
            full = torch.tensor([ids[r] + generated[r]])
            fresh = lm(full).logits[0, -1].float()
            torch.testing.assert_close(batch.logits[j], fresh, atol=1e-5, rtol=0)
    greedy_ref = hf_greedy(lm, tok, PROMPTS, 8)
    assert any(generated[r] != greedy_ref[r] for r in range(3)), "lam should change some choices"


def test_tree_and_repeat_agree_with_value_head(lm, tok, head):
    cfgs = [CDConfig(lam=5.0, lookahead=la) for la in ("tree", "repeat")]
    a, b = (controlled_decode(lm, tok, PROMPTS, head, c, GREEDY20) for c in cfgs)
    assert a.token_ids == b.token_ids


def test_batch_equals_one_prompt_at_a_time(lm, tok, head):
    batched = controlled_decode(lm, tok, PROMPTS, head, CDConfig(lam=5.0, batch_size=3), GREEDY20)
    single = controlled_decode(lm, tok, PROMPTS, head, CDConfig(lam=5.0, batch_size=1), GREEDY20)
    assert batched.token_ids == single.token_ids


def test_tokenwise_sampling_is_seeded_per_prompt(lm, tok, head):
    gen = GenerationConfig(max_new_tokens=12, seed=7)
    cfg = CDConfig(lam=2.0, do_sample=True, batch_size=3)
    a = controlled_decode(lm, tok, PROMPTS, head, cfg, gen)
    b = controlled_decode(lm, tok, PROMPTS[::-1], head, CDConfig(lam=2.0, do_sample=True, batch_size=1), gen)
    assert a.token_ids == b.token_ids[::-1]


def test_tokenwise_stops_at_eos_and_stop_strings(tok):
    lm = make_lm(tok, "llama")
    ref = hf_greedy(lm, tok, PROMPTS, 20)
    # EOS: make the 4th greedy token of prompt 0 an EOS id; that row stops there and keeps the id.
    eos = ref[0][3]
    gen = GenerationConfig(max_new_tokens=20, temperature=0.0, eos_token_ids=(eos,))
    res = controlled_decode(lm, tok, PROMPTS, None, CDConfig(lam=0.0), gen)
    assert res.token_ids[0] == ref[0][:4]
    for r in (1, 2):
        cut = ref[r].index(eos) + 1 if eos in ref[r] else 20
        assert res.token_ids[r] == ref[r][:cut]
    # Stop string: a piece of prompt 1's greedy text; the text is cut before it and the row ends.
    text = tok.decode(ref[1], skip_special_tokens=True)
    stop = text[5:8]
    gen = GenerationConfig(max_new_tokens=20, temperature=0.0, stop_strings=(stop,), eos_token_ids=(0,))
    res = controlled_decode(lm, tok, PROMPTS, None, CDConfig(lam=0.0), gen)
    assert res.texts[1] == text[: text.find(stop)]
    assert len(res.token_ids[1]) < 20 and stop in tok.decode(res.token_ids[1])


# ------------------------------------------------------------------------------------------- blockwise


class RecordingHead(torch.nn.Module):
    """Wraps a head and records every batch of values it returns."""

    def __init__(self, head):
        super().__init__()
        self.inner, self.config, self.calls = head, head.config, []

    def forward(self, h):
        v = self.inner(h)
        self.calls.append(v.detach().clone())
        return v


def test_blockwise_keeps_the_best_block_by_value(lm, tok, head):
    rec = RecordingHead(head)
    T, K = 12, 5
    gen = GenerationConfig(max_new_tokens=T, temperature=1.0, seed=3, ignore_eos=True)
    res = controlled_decode(
        lm, tok, PROMPTS, rec, CDConfig(mode="blockwise", num_blocks=K, block_size=T), gen
    )
    assert [len(t) for t in res.token_ids] == [T] * 3
    assert len(rec.calls) == 1 and rec.calls[0].shape == (3 * K,)
    best = rec.calls[0].view(3, K).max(-1).values
    with torch.no_grad():
        for r, p in enumerate(PROMPTS):
            ids = torch.tensor([tok(p)["input_ids"] + res.token_ids[r]])
            h = final_hidden(lm, ids, torch.ones_like(ids), None)[0, -1]
            torch.testing.assert_close(head(h.float()), best[r], atol=1e-5, rtol=0)


def test_blockwise_multiple_blocks_and_eos(tok, head):
    lm = make_lm(tok, "llama")
    gen = GenerationConfig(max_new_tokens=10, temperature=1.0, seed=0, ignore_eos=True)
    res = controlled_decode(
        lm, tok, PROMPTS, head, CDConfig(mode="blockwise", num_blocks=3, block_size=4), gen
    )
    assert [len(t) for t in res.token_ids] == [10, 10, 10]  # blocks of 4, 4, 2
    assert res.meta["value_evals"] == 3 * 3 * 3
    eos = res.token_ids[0][5]
    gen = GenerationConfig(max_new_tokens=10, temperature=1.0, seed=0, eos_token_ids=(eos,))
    res = controlled_decode(
        lm, tok, PROMPTS, head, CDConfig(mode="blockwise", num_blocks=3, block_size=4), gen
    )
    for ids in res.token_ids:
        assert len(ids) == 10 or ids[-1] == eos
        assert eos not in ids[:-1]


def test_cd_errors_name_the_problem(tok, head):
    lm = make_lm(tok, "llama")
    with pytest.raises(ValueError, match="value_head is required"):
        controlled_decode(lm, tok, PROMPTS, None, CDConfig(lam=1.0))
    with pytest.raises(ValueError, match="temperature must be > 0"):
        controlled_decode(lm, tok, PROMPTS, head, CDConfig(mode="blockwise"), GenerationConfig(temperature=0))
    with pytest.raises(ValueError, match="hidden_size"):
        controlled_decode(lm, tok, PROMPTS, ValueHead(ValueHeadConfig(hidden_size=7)), CDConfig())
    with pytest.raises(ValueError, match="empty"):
        controlled_decode(lm, tok, ["  "], head, CDConfig())
    with pytest.raises(ValueError, match="too long"):
        controlled_decode(lm, tok, ["word " * 300], head, CDConfig())
    with pytest.raises(ValueError, match="lookahead"):
        CDConfig(lookahead="beam")


# ------------------------------------------------------------------------------------------- value head


def test_value_loss_by_hand():
    values = torch.tensor([[1.0, 2.0, 4.0], [3.0, 0.0, 0.0]])
    mask = torch.tensor([[True, True, True], [True, False, False]])
    targets = torch.tensor([2.0, 1.0])
    loss, parts = value_loss(values, mask, targets, pairwise_coef=0.5)
    last = ((4 - 2) ** 2 + (3 - 1) ** 2) / 2  # V at the last valid token
    pair = ((2 - 1) ** 2 + (4 - 2) ** 2) / 2  # consecutive valid pairs only
    assert parts["last"] == pytest.approx(last) and parts["pairwise"] == pytest.approx(pair)
    assert float(loss) == pytest.approx(last + 0.5 * pair)
    loss, parts = value_loss(values, mask, targets, pairwise_coef=0.0, objective="fudge")
    fudge = ((1 - 2) ** 2 + 0 + (4 - 2) ** 2 + (3 - 1) ** 2) / 4  # every valid prefix -> its target
    assert float(loss) == pytest.approx(fudge)


class _Ex:
    def __init__(self, p, r, t, g):
        self.prompt_ids, self.response_ids, self.target, self.group = p, r, t, g


def _known_target_examples(n_prompts=48, per_prompt=4, seed=0):
    """Random prompts/responses that end in one of 6 tokens; the target is a fixed value per ending token."""
    g = torch.Generator().manual_seed(seed)
    endings = [7, 30, 61, 99, 150, 222]
    value_of = {t: float(v) for t, v in zip(endings, torch.randn(6, generator=g) * 2.0)}
    ex = []
    for p in range(n_prompts):
        prompt = torch.randint(3, 300, (int(torch.randint(3, 8, (1,), generator=g)),), generator=g).tolist()
        for _ in range(per_prompt):
            n = int(torch.randint(1, 9, (1,), generator=g))
            end = endings[int(torch.randint(0, 6, (1,), generator=g))]
            resp = torch.randint(3, 300, (n,), generator=g).tolist() + [end]
            ex.append(_Ex(prompt, resp, value_of[end], p))
    return ex


def test_value_head_learns_a_known_target(tok, tmp_path):
    lm = make_lm(tok, "llama")
    ex = _known_target_examples()
    # pairwise_coef=0: the consistency term cannot be met when the target is decided by the last token only
    cfg = ValueTrainConfig(
        width=64, lr=3e-3, batch_size=16, max_epochs=40, patience=8, val_fraction=0.25, pairwise_coef=0.0
    )
    res = train_value_head(
        lm, ex, cfg, out_dir=tmp_path, extra={"shaping": {"kind": "vanilla"}}, progress=False
    )
    assert res.val_target_var > 1.0
    assert res.best_val_mse < 0.25 * res.val_target_var, (res.best_val_mse, res.val_target_var)
    # the checkpoint round-trips and records its config, metrics and the caller's extra
    head, meta = load_value_head(tmp_path)
    h = torch.randn(5, HIDDEN)
    torch.testing.assert_close(head(h), res.head(h))
    assert meta["shaping"] == {"kind": "vanilla"} and meta["train"]["width"] == 64
    assert meta["metrics"]["best_val_mse"] == pytest.approx(res.best_val_mse)
    log = [json.loads(x) for x in (tmp_path / "loss_log.jsonl").read_text().splitlines()]
    assert len(log) == res.epochs and {"train_loss", "val_last_mse"} <= set(log[0])


def test_value_head_recompute_mode_matches_cached(tok):
    """With no RAM budget the hidden states are recomputed per batch; training is the same."""
    lm = make_lm(tok, "llama")
    ex = _known_target_examples(n_prompts=12, per_prompt=2)
    base = dict(width=16, lr=1e-3, batch_size=8, max_epochs=2, val_fraction=0.25)
    a = train_value_head(lm, ex, ValueTrainConfig(**base), progress=False)
    b = train_value_head(lm, ex, ValueTrainConfig(hidden_cache_mb=0.0, **base), progress=False)
    assert a.best_val_mse == pytest.approx(b.best_val_mse, rel=1e-3)


def test_value_head_warns_when_stopped_while_still_improving(tok, tmp_path):
    """A head whose best validation MSE is at the max_epochs cap is flagged (warning + saved metric); one that
    early-stops is not. lr = 1e-15 keeps the validation MSE flat (changes far below the 1e-12 improvement
    margin), so epoch 1 stays best and patience 1 stops training at epoch 2."""
    lm = make_lm(tok, "llama")
    ex = _known_target_examples(n_prompts=12, per_prompt=2)
    base = dict(width=16, batch_size=8, val_fraction=0.25)
    with pytest.warns(UserWarning, match="still improving at the last epoch"):
        capped = train_value_head(
            lm, ex, ValueTrainConfig(lr=1e-3, max_epochs=1, **base), out_dir=tmp_path, progress=False
        )
    assert capped.still_improving and capped.best_epoch == capped.epochs == 1
    assert json.loads((tmp_path / "value_head.json").read_text())["metrics"]["still_improving"] is True
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        flat = train_value_head(
            lm, ex, ValueTrainConfig(lr=1e-15, max_epochs=10, patience=1, **base), progress=False
        )
    assert not flat.still_improving and (flat.best_epoch, flat.epochs) == (1, 2)


def test_value_head_input_errors(tok):
    lm = make_lm(tok, "llama")
    with pytest.raises(ValueError, match="at least 2 prompts"):
        train_value_head(lm, [_Ex([5], [6], 1.0, 0)], progress=False)
    with pytest.raises(ValueError, match="NaN"):
        train_value_head(lm, [_Ex([5], [6], float("nan"), 0), _Ex([5], [6], 1.0, 1)], progress=False)
    with pytest.raises(ValueError, match="objective"):
        ValueTrainConfig(objective="q")
    with pytest.raises(FileNotFoundError, match="value_head.json"):
        load_value_head("/nonexistent/dir")


def test_training_features_equal_decoding_states(tok, head):
    """The hidden states the head is trained on (`final_hidden_states`, right-padded batches) equal the states
    tokenwise CD scores for the chosen candidates (tree pass against the left-padded cache)."""
    from stackalign.decoding.cd_data import final_hidden_states

    lm = make_lm(tok, "llama")
    rec = RecordingHead(head)
    res = controlled_decode(lm, tok, PROMPTS, rec, CDConfig(lam=5.0, top_k=4), GREEDY20)
    hs = final_hidden_states(lm, [tok(p)["input_ids"] for p in PROMPTS], res.token_ids, batch_size=2)
    for r in range(3):
        # the value of the chosen candidate at step t is among the k recorded values of that step
        v_train = head(hs[r].float())
        for t in range(20):
            step_vals = rec.calls[t].view(3, 4)[r]
            assert torch.isclose(step_vals, v_train[t], atol=1e-5).any()


def test_bench_cd_cli_json(capsys):
    """`stackalign bench cd --json` prints one object with the per-variant times and the ratios."""
    from stackalign.cli import main

    assert main(["bench", "cd", "--world", "tiny", "--json", "--prompts", "2", "--max-new-tokens", "4"]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert {"plain_greedy", "tokenwise", "blockwise"} <= set(out["variants"])
    assert all(v["new_tokens"] == 8 for v in out["variants"].values())
    assert {"tokenwise_over_plain", "blockwise_over_plain"} <= set(out["ratios"])
    assert out["k"] == 10

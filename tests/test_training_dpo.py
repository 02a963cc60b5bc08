"""The DPO core, seed preferences, SSAPO self-annotation and follower (pure pieces, no world needed)."""

import json
import math

import pytest
import torch

from stackalign.games.sgpo import shifted_dpo_loss
from stackalign.training.dpo_loss import (
    dpo_loss,
    dpo_margins,
    pack_sequences,
    response_token_ids,
    sequence_logprobs,
)
from stackalign.training.preferences import load_pairs, split_round_prompts, validate_pairs
from stackalign.training.rounds import SSAPOConfig
from stackalign.training.self_annotation import annotate_by_implicit_reward, solve_follower

D = torch.float64


def test_dpo_loss_hand_computed():
    # margin = 0.5 * ((-1 + 1.5) - (-2 + 1.5)) = 0.5; loss = log(1 + e^-0.5)
    pc, pr = torch.tensor([-1.0], dtype=D), torch.tensor([-2.0], dtype=D)
    rc, rr = torch.tensor([-1.5], dtype=D), torch.tensor([-1.5], dtype=D)
    assert dpo_margins(pc, pr, rc, rr, 0.5).item() == pytest.approx(0.5)
    assert dpo_loss(pc, pr, rc, rr, beta=0.5).item() == pytest.approx(math.log1p(math.exp(-0.5)), abs=1e-12)
    # a weight doubles the pair's loss; a shift d gives -log sigma(0.5 - d)
    assert dpo_loss(pc, pr, rc, rr, beta=0.5, weights=torch.tensor([2.0])).item() == pytest.approx(
        2 * math.log1p(math.exp(-0.5)), abs=1e-12
    )
    s, d = torch.tensor([[0.25, 0.75]], dtype=D), torch.tensor([[0.0, 1.5]], dtype=D)
    want = 0.25 * math.log1p(math.exp(-0.5)) + 0.75 * math.log1p(math.exp(1.0))
    assert dpo_loss(pc, pr, rc, rr, beta=0.5, s=s, shifts=d).item() == pytest.approx(want, abs=1e-12)
    # the release's probability-space loss: 0.25 * -log(sigma(.5)) + 0.75 * -log(sigma(.5) - 0.1)
    d2 = torch.tensor([[0.0, 0.1]], dtype=D)
    sg = 1 / (1 + math.exp(-0.5))
    want2 = -0.25 * math.log(sg) - 0.75 * math.log(sg - 0.1)
    got2 = dpo_loss(pc, pr, rc, rr, beta=0.5, s=s, shifts=d2, space="probability").item()
    assert got2 == pytest.approx(want2, abs=1e-12)
    with pytest.raises(ValueError, match="beta"):
        dpo_loss(pc, pr, rc, rr, beta=0.0)


def test_one_source_of_truth_with_games_sgpo():
    g = torch.Generator().manual_seed(0)
    m = torch.randn(7, generator=g, dtype=D)
    s = torch.rand(7, 3, generator=g, dtype=D)
    s = s / s.sum(1, keepdim=True)
    d = torch.rand(7, 3, generator=g, dtype=D)
    z = torch.zeros(7, dtype=D)
    assert dpo_loss(m, z, z, z, beta=1.0, s=s, shifts=d).item() == shifted_dpo_loss(m, s, d).item()


def _tiny_lm():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=20, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
        num_key_value_heads=2, max_position_embeddings=64, pad_token_id=0,
    )  # fmt: skip
    return LlamaForCausalLM(cfg).eval()


def test_sequence_logprobs_left_padding_matches_unpadded_sum():
    model = _tiny_lm()
    prompts, responses = [[3, 4, 5], [6]], [[7, 8], [9, 10, 11, 2, 12, 13]]
    ids, mask, resp = pack_sequences(prompts, responses, pad_id=0)
    assert ids.tolist() == [[0, 0, 3, 4, 5, 7, 8], [6, 9, 10, 11, 2, 12, 13]]
    assert mask.tolist()[0] == [0, 0, 1, 1, 1, 1, 1]
    assert resp.sum(1).tolist() == [2, 6] and resp[0].tolist() == [False] * 5 + [True] * 2
    with torch.no_grad():
        got = sequence_logprobs(model, ids, mask, resp)
        for i, (p, r) in enumerate(zip(prompts, responses)):
            seq = torch.tensor([p + r])
            logp = torch.log_softmax(model(input_ids=seq).logits[0].float(), -1)
            want = sum(logp[len(p) - 1 + j, tok].item() for j, tok in enumerate(r))
            assert got[i].item() == pytest.approx(want, abs=1e-5)


def test_response_token_ids_appends_eos():
    class Tok:
        eos_token_id = 2

        def __call__(self, text, add_special_tokens=True):
            assert add_special_tokens is False
            return {"input_ids": [ord(c) for c in text]}

    assert response_token_ids(Tok(), " ab") == [32, 97, 98, 2]


def test_eps_zero_is_exactly_dpo_loss_and_gradient():
    g = torch.Generator().manual_seed(1)
    n = 9
    pc, pr, rc, rr = (torch.randn(n, generator=g, dtype=D) for _ in range(4))
    sol = solve_follower(torch.rand(n, generator=g, dtype=D) * 3, eps=0.0)
    assert sol.transport == 0.0 and sol.attacked == 0
    assert torch.equal(sol.s, torch.ones(n, 1, dtype=D)) and torch.equal(
        sol.shifts, torch.zeros(n, 1, dtype=D)
    )
    a, b, c = (pc.clone().requires_grad_(True) for _ in range(3))
    l1 = dpo_loss(a, pr, rc, rr, beta=0.3, s=sol.s, shifts=sol.shifts)
    l2 = dpo_loss(b, pr, rc, rr, beta=0.3)  # plain DPO: bit-identical loss and gradient
    l3 = -torch.nn.functional.logsigmoid(0.3 * ((c - rc) - (pr - rr))).mean()  # DPO's eq. 7 written out
    for loss in (l1, l2, l3):
        loss.backward()
    assert l1.item() == l2.item() and torch.equal(a.grad, b.grad)
    assert l1.item() == pytest.approx(l3.item(), abs=1e-15)
    assert torch.allclose(a.grad, c.grad, rtol=0, atol=1e-15)
    # the LP itself at eps = 0 moves nothing either: all shifts are zero
    from stackalign.games.sgpo import sgpo_follower

    wc = sgpo_follower(torch.rand(n, generator=g, dtype=D), 0.0, K=6)
    assert wc.transport == 0.0 and bool((wc.shifts == 0).all())


@pytest.mark.parametrize("space", ["margin", "probability"])
@pytest.mark.parametrize("group", [None, 7])
def test_follower_within_w1_budget(space, group):
    g = torch.Generator().manual_seed(2)
    x = torch.rand(30, generator=g, dtype=D) * 4
    eps = 0.05 if space == "probability" else 0.3
    sol = solve_follower(x, eps=eps, space=space, pieces=6, group_size=group)
    s, d = sol.s, sol.shifts
    assert bool((s >= -1e-12).all())
    assert torch.allclose(s.sum(1), torch.ones(30, dtype=D), atol=1e-9)
    # W_1 cost of moving each pair's mass s_ik by d_ik, averaged: within eps (per group, hence overall)
    assert float((s * d.abs()).sum() / 30) <= eps + 1e-7
    if group is not None:
        for st in range(0, 30, group):
            gs = slice(st, st + group)
            n = s[gs].shape[0]
            assert float((s[gs] * d[gs].abs()).sum() / n) <= eps + 1e-7
    assert sol.attacked > 0 and sol.value >= sol.empirical - 1e-9
    centres = x if space == "margin" else torch.sigmoid(x)
    atoms = centres.unsqueeze(1) - d
    lo, hi = (x.min() - 0.5, x.max() + 0.5) if space == "margin" else (0.0, 1.0)
    assert bool((atoms[s > 1e-9] >= lo - 1e-9).all()) and bool((atoms[s > 1e-9] <= hi + 1e-9).all())


def test_margin_follower_attacks_lowest_margins_and_upweights_them():
    x = torch.tensor([0.1, 2.0, 3.0, 0.3, 4.0, 5.0], dtype=D)
    sol = solve_follower(x, eps=0.1, space="margin", group_size=None)
    attacked = (sol.shifts.abs() * sol.s).sum(1) > 1e-9
    # budget 0.1 * 6 = 0.6 moves the 0.1-margin pair fully to the left end (cost 0.5), then part of 0.3's
    assert attacked[0] and attacked[3] and not attacked[[1, 2, 4, 5]].any()
    m = torch.zeros(6, dtype=D, requires_grad=True)
    dpo_loss(m, torch.zeros(6, dtype=D), torch.zeros(6, dtype=D), torch.zeros(6, dtype=D),
             beta=1.0, s=sol.s, shifts=sol.shifts).backward()  # fmt: skip
    assert -m.grad[0] > -m.grad[1]  # the attacked pair's gradient multiplier is > 1


def test_annotation_picks_best_and_worst_by_implicit_reward():
    prompts = ["p1", "p2", "p3"]
    samples = [["a", "b", "c"], ["x", "x", "x"], ["u", "v", "w"]]
    pol = torch.tensor([-1.0, -2.0, -3.0, 0, 0, 0, -5.0, -1.0, -2.0], dtype=D)
    ref = torch.tensor([-2.0, -1.0, -3.0, 0, 0, 0, -1.0, -1.0, -1.0], dtype=D)
    pairs = annotate_by_implicit_reward(prompts, samples, pol, ref, beta=0.5)
    assert [(p["prompt"], p["chosen"], p["rejected"]) for p in pairs] == [("p1", "a", "b"), ("p3", "v", "u")]
    assert pairs[0]["margin"] == pytest.approx(0.5 * (1.0 - (-1.0)))
    assert pairs[1]["margin"] == pytest.approx(0.5 * (0.0 - (-4.0)))
    with pytest.raises(ValueError, match="K"):
        annotate_by_implicit_reward(["p"], [["a"]], pol[:1], ref[:1], beta=0.5)


def test_bad_inputs_get_clear_errors(tmp_path):
    with pytest.raises(ValueError, match="eps"):
        SSAPOConfig(eps=-0.1)
    with pytest.raises(ValueError, match="eps"):
        solve_follower([1.0, 2.0], eps=-1.0)
    with pytest.raises(ValueError, match="samples_per_prompt"):
        SSAPOConfig(samples_per_prompt=1)
    with pytest.raises(ValueError, match="empty"):
        validate_pairs([])
    f = tmp_path / "seeds.jsonl"
    f.write_text(json.dumps({"prompt": "User: hi\nAssistant:", "chosen": " a"}) + "\n")
    with pytest.raises(ValueError, match=r"pair 0 is missing field\(s\) \['rejected'\]"):
        load_pairs(f)
    f.write_text("")
    with pytest.raises(ValueError, match="empty"):
        load_pairs(f)
    f.write_text("{not json\n")
    with pytest.raises(ValueError, match="line 1 is not valid JSON"):
        load_pairs(f)
    with pytest.raises(FileNotFoundError):
        load_pairs(tmp_path / "nope.jsonl")


def test_round_prompt_pools_are_disjoint_and_seeded():
    ps = [f"p{i}" for i in range(50)]
    seed_pool, pools = split_round_prompts(ps, 10, 12, 3, seed=4)
    flat = seed_pool + [p for pool in pools for p in pool]
    assert len(flat) == len(set(flat)) == 46
    assert split_round_prompts(ps, 10, 12, 3, seed=4) == (seed_pool, pools)


def test_grouped_lp_is_feasible_for_the_global_one_so_its_value_is_lower():
    from experiments.lp_bench import lp_timing

    rows = lp_timing([60], [None, 20, 7], eps=0.3)
    glob, *grouped = rows
    assert glob["group_size"] is None and [r["group_size"] for r in grouped] == [20, 7]
    for r in grouped:  # merged group solutions are feasible globally: value <= the global optimum
        assert r["worst_case_value"] <= glob["worst_case_value"] + 1e-9
    assert grouped[1]["worst_case_value"] < glob["worst_case_value"] - 1e-6  # and smaller groups do lose some

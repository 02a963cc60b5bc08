"""The training core: log-probs with padding, KL estimators and REINFORCE against exact enumeration, the
RLOO baseline, stateless batches, metrics truncation, recipe validation, and kill -9 resume bit for bit."""

import json
import sys
from pathlib import Path

import pytest
import torch
import yaml
from kill_restart import kill_after_rows, run_to_the_end
from safetensors.torch import load_file

from stackalign.evaluation.win_rates import gold_win_rate
from stackalign.runner.recipe import RecipeError
from stackalign.training import (
    MetricsLog,
    advantages,
    batch_indices,
    kl_estimate,
    reinforce_loss,
    response_logprobs,
    train_recipe_from_dict,
)
from stackalign.training.run import prepare_run_dir


@pytest.fixture(scope="module")
def micro_world(micro):
    return micro  # the session's micro world (conftest.py)


# ---------------------------------------------------------------------------------------------------------
# log-probs
# ---------------------------------------------------------------------------------------------------------
def test_response_logprobs_batched_left_padded_equals_unpadded_forward(micro_world):
    model, tok = micro_world.load_policy()
    prompts = [micro_world.test_prompts[0], "User: hi\nAssistant:", micro_world.test_prompts[3]]
    pids = [tok(p)["input_ids"] for p in prompts]
    assert len({len(p) for p in pids}) > 1  # really different prompt lengths -> left padding
    rids = [
        tok(" sure, here it is")["input_ids"],
        tok(" no")["input_ids"],
        tok(" ok then")["input_ids"] + [0],
    ]
    lp, mask = response_logprobs(model, pids, rids, tok.pad_token_id)
    assert lp.shape == mask.shape == (3, max(len(r) for r in rids))
    assert mask.sum(-1).tolist() == [len(r) for r in rids]
    with torch.no_grad():
        for i, (p, r) in enumerate(zip(pids, rids)):
            ids = torch.tensor([p + r])
            logits = model(input_ids=ids).logits[0].float()
            ref = torch.log_softmax(logits[len(p) - 1 : len(p) + len(r) - 1], -1)[torch.arange(len(r)), r]
            torch.testing.assert_close(lp[i, : len(r)].detach(), ref, atol=2e-5, rtol=0)
            assert (lp[i, len(r) :] == 0).all()
    # micro-batching gives the same numbers
    lp2, _ = response_logprobs(model, pids, rids, tok.pad_token_id, batch_size=1)
    torch.testing.assert_close(lp2.detach(), lp.detach(), atol=2e-5, rtol=0)


# ---------------------------------------------------------------------------------------------------------
# KL estimators and REINFORCE, checked by exact enumeration over a tabular softmax policy
# ---------------------------------------------------------------------------------------------------------
def _tabular():
    torch.manual_seed(0)
    theta = torch.randn(5, dtype=torch.float64, requires_grad=True)
    ref = torch.log_softmax(torch.randn(5, dtype=torch.float64), -1)
    return theta, ref


def test_kl_estimators_are_unbiased_or_not_as_stated():
    theta, ref = _tabular()
    logp = torch.log_softmax(theta, -1)
    p = logp.exp().detach()
    exact = (p * (logp - ref)).sum()
    one = torch.ones(5, 1, dtype=torch.float64)
    k = {e: kl_estimate(logp.unsqueeze(-1), ref.unsqueeze(-1), one, e) for e in ("k1", "k2", "k3")}
    # E_pi[k1] = E_pi[k3] = KL(pi || ref) exactly; k2 and k3 are >= 0 per sample
    torch.testing.assert_close((p * k["k1"]).sum(), exact)
    torch.testing.assert_close((p * k["k3"]).sum(), exact)
    assert (k["k2"] >= 0).all() and (k["k3"] >= 0).all() and (k["k1"] < 0).any()

    # as loss terms: E_pi[grad k2] = grad KL(pi||ref); E_pi[grad k3] = grad KL(ref||pi)
    def grad_of(estimator):
        lp = torch.log_softmax(theta, -1).unsqueeze(-1)
        return torch.autograd.grad((p * kl_estimate(lp, ref.unsqueeze(-1), one, estimator)).sum(), theta)[0]

    lp_full = torch.log_softmax(theta, -1)
    (g_exact,) = torch.autograd.grad((lp_full.exp() * (lp_full - ref)).sum(), theta)
    torch.testing.assert_close(grad_of("k2"), g_exact)
    (g_rev,) = torch.autograd.grad((ref.exp() * (ref - torch.log_softmax(theta, -1))).sum(), theta)
    torch.testing.assert_close(grad_of("k3"), g_rev)
    logp = torch.log_softmax(theta, -1)
    with pytest.raises(ValueError, match="kl_estimator"):
        kl_estimate(logp.unsqueeze(-1), ref.unsqueeze(-1), one, "k4")


def test_reinforce_expected_gradient_is_policy_gradient():
    theta, ref = _tabular()
    R = torch.tensor([1.0, -2.0, 0.5, 3.0, 0.0], dtype=torch.float64)
    p = torch.softmax(theta, -1).detach()
    (g_true,) = torch.autograd.grad(-(torch.softmax(theta, -1) * R).sum(), theta)
    # the surrogate over all 5 "samples", weighted by their probability (mean over B=5 -> times 5)
    for b in (0.0, 1.7):  # any constant baseline leaves the expected gradient unchanged
        logp = torch.log_softmax(theta, -1)
        loss, _ = reinforce_loss(logp.unsqueeze(-1), torch.ones(5, 1, dtype=torch.float64), 5 * p * (R - b))
        (g,) = torch.autograd.grad(loss, theta)
        torch.testing.assert_close(g, g_true)


def test_rloo_baseline_hand_numbers_and_errors():
    r = torch.tensor([[1.0, 2.0, 3.0], [0.0, 0.0, 6.0]])
    torch.testing.assert_close(advantages(r, "rloo"), torch.tensor([[-1.5, 0.0, 1.5], [-3.0, -3.0, 6.0]]))
    torch.testing.assert_close(advantages(r, "constant", 1.0), r - 1.0)
    with pytest.raises(ValueError, match="G >= 2"):
        advantages(torch.ones(2, 1), "rloo")
    with pytest.raises(ValueError, match="NaN"):
        advantages(torch.tensor([[1.0, float("nan")]]), "rloo")


# ---------------------------------------------------------------------------------------------------------
# bookkeeping
# ---------------------------------------------------------------------------------------------------------
def test_batch_indices_cover_each_epoch_once_and_are_stateless():
    n, k = 7, 3
    seq = [i for s in range(1, 8) for i in batch_indices(n, k, s, seed=5)]  # 21 = 3 epochs
    for e in range(3):
        assert sorted(seq[e * n : (e + 1) * n]) == list(range(n))
    assert batch_indices(n, k, 4, seed=5) == seq[9:12]
    assert seq[:7] != [i for s in range(1, 4) for i in batch_indices(n, k, s, seed=6)][:7]


def test_metrics_log_drops_rows_after_checkpoint_and_torn_lines(tmp_path):
    log = MetricsLog(tmp_path / "metrics.jsonl")
    for s in range(1, 5):
        log.append({"step": s, "loss": s})
    with open(log.path, "a") as f:
        f.write('{"step": 5, "lo')  # a write cut by kill -9
    assert [r["step"] for r in log.truncate_after(2)] == [1, 2]
    assert log.path.read_text().count("\n") == 2


def test_gold_win_rate_ties_count_half(micro_world):
    p = micro_world.test_prompts[0]
    assert gold_win_rate(micro_world, [p, p], ["same", "same"], ["same", "same"]) == 0.5


# ---------------------------------------------------------------------------------------------------------
# recipes
# ---------------------------------------------------------------------------------------------------------
def test_recipe_validation_names_the_problem(tmp_path):
    r = train_recipe_from_dict(
        {"algorithm": "rl", "world": "/w"}, ["steps=3", "shaping=vanilla", "eval.every=1"]
    )
    assert (r.common.steps, r.algo.shaping, r.common.eval.every) == (3, "vanilla", 1)
    with pytest.raises(RecipeError, match="did you mean 'group_size'"):
        train_recipe_from_dict({"algorithm": "rl", "group_sise": 4})
    with pytest.raises(RecipeError, match="eval.samples: input should be a valid integer"):
        train_recipe_from_dict({"eval": {"samples": "many"}})
    with pytest.raises(RecipeError, match="eval.limit: must be >= 1"):
        train_recipe_from_dict({"eval": {"limit": 0}})
    with pytest.raises(RecipeError, match="steps: must be >= 1"):
        train_recipe_from_dict({}, ["steps=0"])
    with pytest.raises(RecipeError, match="algorithm: unknown 'ppo'"):
        train_recipe_from_dict({"algorithm": "ppo"})
    with pytest.raises(RecipeError, match="group_size: shaping 'srs' over a group needs G >= 2"):
        train_recipe_from_dict({"group_size": 1, "baseline": "constant"})
    with pytest.raises(RecipeError, match="shaping_params"):
        train_recipe_from_dict({"shaping_params": {"Bee": 3}})
    # a registered algorithm whose module does not exist is "not available", not an ImportError
    from stackalign.training.recipe import ALGORITHMS, register_algorithm

    register_algorithm(
        "ghost", "stackalign.training.no_such_module:C", "stackalign.training.no_such_module:f"
    )
    try:
        with pytest.raises(RecipeError, match="'ghost' is not available"):
            train_recipe_from_dict({"algorithm": "ghost"})
    finally:
        del ALGORITHMS["ghost"]
    # resuming a directory that holds training with another resolved config is refused, naming what differs
    prepare_run_dir(train_recipe_from_dict({"world": "/w"}), tmp_path)
    (tmp_path / "metrics.jsonl").write_text('{"step": 1}\n')  # a directory with only config.json is reusable
    with pytest.raises(RecipeError, match=r"lr: 2e-05 -> 0.001"):
        prepare_run_dir(train_recipe_from_dict({"world": "/w"}, ["lr=0.001"]), tmp_path)


# ---------------------------------------------------------------------------------------------------------
# kill -9 at a random moment, restart: the same final weights, bit for bit
# ---------------------------------------------------------------------------------------------------------
def _micro_recipe(world, path: Path, lora: dict | None = None) -> Path:
    cfg = {
        "algorithm": "rl",
        "world": str(world.root),
        "steps": 6,
        "lr": 1e-3,
        "prompts_per_step": 2,
        "checkpoint_every": 2,
        "max_new_tokens": 12,
        "progress": False,
        "eval": {"limit": 4, "samples": 2, "every": 0},
        "group_size": 3,
        "shaping": "srs",
    }
    if lora is not None:
        cfg["lora"] = lora
    path.write_text(yaml.safe_dump(cfg))
    return path


def _train_cmd(recipe: Path, out: Path) -> list[str]:
    return [sys.executable, "-m", "stackalign", "train", str(recipe), "--out", str(out)]


@pytest.mark.slow
@pytest.mark.parametrize("lora", [None, {"r": 4, "alpha": 8.0}], ids=["full", "lora"])
def test_kill9_and_resume_gives_bit_identical_weights(micro_world, tmp_path, lora):
    if lora is not None:
        pytest.importorskip("peft")
    recipe = _micro_recipe(micro_world, tmp_path / "r.yaml", lora)
    # the uninterrupted run, in this process (one thread, like the subprocesses)
    from stackalign.training import load_train_recipe, run_training

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        run_training(load_train_recipe(recipe), tmp_path / "a", world=micro_world)
    finally:
        torch.set_num_threads(threads)
    # the same run, killed after its first checkpoint (mid-step), then restarted with the same command
    metrics = tmp_path / "b" / "metrics.jsonl"
    kill_after_rows(_train_cmd(recipe, tmp_path / "b"), metrics, 3, timeout=120)
    assert not (tmp_path / "b" / "final").exists()
    run_to_the_end(_train_cmd(recipe, tmp_path / "b"))
    weights = "model.safetensors" if lora is None else "adapter_model.safetensors"  # LoRA: the adapter
    wa = load_file(str(tmp_path / "a" / "final" / weights))
    wb = load_file(str(tmp_path / "b" / "final" / weights))
    assert wa.keys() == wb.keys()
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    if lora is None:
        init = load_file(str(micro_world.policy_dir / "model.safetensors"))
        assert not all(torch.equal(wa[k], init[k]) for k in wa)  # training did change the weights
    else:  # B starts at zero: training moved it
        assert any(float(v.abs().max()) > 0 for k, v in wa.items() if "lora_B" in k)
    rows_a = [json.loads(x) for x in (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()]
    rows_b = [json.loads(x) for x in metrics.read_text().splitlines()]
    assert [r["step"] for r in rows_b] == list(range(1, 7))  # nothing lost, nothing duplicated
    assert [r["loss"] for r in rows_a] == [r["loss"] for r in rows_b]
    sa = json.loads((tmp_path / "a" / "summary.json").read_text())
    sb = json.loads((tmp_path / "b" / "summary.json").read_text())
    assert sa["eval"] == sb["eval"] and sa["curve"] == sb["curve"]
    # final/ is a policy directory a run recipe can load
    from stackalign.models import load_policy

    load_policy(tmp_path / "b" / "final")


def test_reference_thresholds_are_the_shapers_threshold_of_reference_samples_and_cached(
    micro_world, tmp_path
):
    import stackalign.training.rl as rl
    from stackalign.decoding.common import GenerationConfig
    from stackalign.training.pg import sample_group

    ref, tok = micro_world.load_policy()
    rm = micro_world.load_reward_model()
    shaper = rl.RLConfig().shaper()
    gen = GenerationConfig(max_new_tokens=10, stop_strings=tuple(micro_world.stop_strings))
    prompts = micro_world.train_prompts[:3]
    kw = dict(reference=ref, tokenizer=tok, reward_model=rm, shaper=shaper, n=5, gen_config=gen, seed=7)
    m = rl.reference_thresholds(prompts, cache_path=tmp_path / "m.json", **kw)
    res = sample_group(ref, tok, prompts, 5, gen, seed=7, step=0, salt="reference")
    r = rm(*res.flat()).double().view(3, 5)
    torch.testing.assert_close(m, shaper.threshold(r))
    # a second call reads the cache instead of sampling again
    orig = rl.sample_group
    rl.sample_group = None  # would fail if called
    try:
        torch.testing.assert_close(rl.reference_thresholds(prompts, cache_path=tmp_path / "m.json", **kw), m)
    finally:
        rl.sample_group = orig


def test_rl_end_to_end_with_reference_thresholds_and_kl_loss_term(micro_world, tmp_path):
    from stackalign.training import run_training

    recipe = train_recipe_from_dict(
        yaml.safe_load(_micro_recipe(micro_world, tmp_path / "r.yaml").read_text()),
        [
            "steps=2",
            "threshold_source=reference",
            "reference_samples=4",
            "kl_placement=loss",
            "kl_estimator=k2",
        ],
    )
    s = run_training(recipe, tmp_path / "run", world=micro_world)
    assert s["algorithm"] == "rl" and s["shaping"] == "srs"
    assert set(s["eval"]) >= {"gold_reward", "proxy_reward", "kl", "base_gold_reward"}
    assert [c["step"] for c in s["curve"]] == [0, 2] and s["curve"][0]["kl"] == 0.0
    assert set(s["curve"][1]) == {"step", "kl", "proxy_reward", "gold_reward"}
    assert len(json.loads((tmp_path / "run" / "reference_thresholds.json").read_text())) == 4  # 2 steps x 2
    rows = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert rows[1]["kl_loss"] > 0  # the k2 loss term is active once the policy moved
    for f in ("config.json", "summary.json", "report.md", "training_curves.png", "final/model.safetensors"):
        assert (tmp_path / "run" / f).exists(), f

"""Data-parallel training under ``accelerate launch`` (2 CPU processes, gloo): the same final weights as one
process with the same global batch, within max |Δw| <= 1e-5 (lr 1e-3, 2 AdamW steps; the difference is float
rounding of batched forward passes of different shapes and of the gradient all-reduce); evaluation split
between the processes equals the 1-process evaluation; kill -9 of either process and the same launch again
end with the uninterrupted run's weights bit for bit. The same under FSDP (``--use_fsdp``: the policy sharded
with FSDP2), full fine-tuning and LoRA, within the same tolerance."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from kill_restart import kill_after_rows, train_env
from safetensors.torch import load_file

pytest.importorskip("accelerate")

TOL = 1e-5
FIELDS = {"rl": {"group_size": 2}, "slhf": {}, "dpo": {"seed_pairs": 8, "batch_size": 4}}


LORA = {"lora": {"r": 4, "alpha": 8}}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _recipe(world, path: Path, algorithm: str, **kw) -> Path:
    d = {
        "algorithm": algorithm,
        "world": str(world.root),
        "steps": 2,
        "lr": 1e-3,
        "prompts_per_step": 4,
        "max_new_tokens": 8,
        "checkpoint_every": 1,
        "progress": False,
        "eval": {"limit": 3, "samples": 1},
        **FIELDS[algorithm],
        **kw,
    }
    if algorithm in ("dpo", "ssapo"):  # their steps follow from the pairs and their own fields
        del d["steps"], d["prompts_per_step"]
    path.write_text(yaml.safe_dump(d))
    return path


def _train(recipe: Path, out: Path, processes: int, fsdp: bool = False) -> subprocess.CompletedProcess:
    return subprocess.run(
        _cmd(recipe, out, processes, fsdp), env=train_env(), capture_output=True, text=True, timeout=600
    )


def _cmd(recipe: Path, out: Path, processes: int, fsdp: bool = False) -> list[str]:
    train = ["-m", "stackalign", "train", str(recipe), "--out", str(out)]
    mode = (
        ["--use_fsdp", "--fsdp_version", "2"] if fsdp else ["--multi_gpu"]
    )  # FSDP: ACCELERATE_USE_FSDP=true
    if processes == 1:
        cmd = [sys.executable, *train]
    else:  # torchrun under accelerate; on a machine without CUDA every process uses the CPU and gloo
        cmd = [sys.executable, "-m", "accelerate.commands.launch", *mode, "--num_processes",
               str(processes), "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
               "--main_process_port", str(_free_port()), *train]  # fmt: skip
    return cmd


@pytest.mark.slow
@pytest.mark.skipif(torch.cuda.is_available(), reason="the CPU (gloo) data-parallel check")
@pytest.mark.parametrize("algorithm", ["rl", "slhf", "dpo"])
def test_two_processes_equal_one_process_with_the_same_global_batch(micro, tmp_path, algorithm):
    _check_two_equal_one(micro, tmp_path, algorithm, fsdp=False)


@pytest.mark.slow
@pytest.mark.skipif(torch.cuda.is_available(), reason="the CPU (gloo) FSDP check")
@pytest.mark.parametrize(
    "algorithm,kw",
    [
        ("rl", {}),
        ("slhf", {}),
        ("dpo", {}),
        ("rl", LORA),
        ("slhf", LORA),
        ("rl", {"gradient_checkpointing": True}),
    ],
    ids=["rl", "slhf", "dpo", "rl-lora", "slhf-lora", "rl-checkpointing"],
)
def test_fsdp_two_processes_equal_one_process_with_the_same_global_batch(micro, tmp_path, algorithm, kw):
    """FSDP2 shards the policy (LoRA: the frozen base and the adapters; slhf with LoRA: two adapters, the
    follower's in final/follower/; gradient checkpointing recomputes the sharded blocks in the backward pass):
    the same checks, and the same checkpoint format as one process."""
    one, two = _check_two_equal_one(micro, tmp_path, algorithm, fsdp=True, **kw)
    ca, cb = (sorted(p.relative_to(d) for p in d.rglob("*") if p.is_file() and "checkpoints" in p.parts)
              for d in (one, two))  # fmt: skip
    assert ca == cb  # the same files; the optimizer state full (not sharded), in the 1-process layout
    ckpt = max(p for p in ca if p.name == "trainer_state.pt")
    oa = torch.load(one / ckpt, weights_only=False)["optimizer"]
    ob = torch.load(two / ckpt, weights_only=False)["optimizer"]
    assert oa["param_groups"] == ob["param_groups"] and oa["state"].keys() == ob["state"].keys()
    for k, st in oa["state"].items():
        for name, v in st.items():
            assert type(ob["state"][k][name]) is torch.Tensor and v.shape == ob["state"][k][name].shape
            assert float((v - ob["state"][k][name]).abs().max()) <= 1e-3 * max(1.0, float(v.abs().max()))


def _weights(out: Path) -> dict[str, torch.Tensor]:
    """final/'s weights: the model's, or with LoRA every adapter's (keys prefixed by its directory)."""
    if (out / "final" / "model.safetensors").is_file():
        return load_file(str(out / "final" / "model.safetensors"))
    return {
        f"{f.parent.name}/{k}": v
        for f in sorted((out / "final").rglob("adapter_model.safetensors"))
        for k, v in load_file(str(f)).items()
    }


def _check_two_equal_one(micro, tmp_path, algorithm, *, fsdp: bool, **kw) -> tuple[Path, Path]:
    recipe = _recipe(micro, tmp_path / "r.yaml", algorithm, **kw)
    one, two = tmp_path / "one", tmp_path / "two"
    for out, n in ((one, 1), (two, 2)):
        res = _train(recipe, out, n, fsdp)
        assert res.returncode == 0, res.stderr[-3000:]
    wa, wb = _weights(one), _weights(two)
    assert wa.keys() == wb.keys()
    if "lora" in kw:
        moved = max(float(wa[k].abs().max()) for k in wa if "lora_B" in k)  # B starts at zero
    else:
        init = load_file(str(micro.policy_dir / "model.safetensors"))
        moved = max(float((wa[k] - init[k]).abs().max()) for k in wa)
    diff = max(float((wa[k] - wb[k]).abs().max()) for k in wa)
    assert moved > 100 * TOL  # training changed the weights far more than the tolerance
    assert diff <= TOL, f"{algorithm}: max |w_1proc - w_2proc| = {diff:.3g} > {TOL}"
    # the main process alone wrote the metrics: one row per step, averaged over the processes
    rows = [json.loads(x) for x in (two / "metrics.jsonl").read_text().splitlines()]
    if algorithm != "dpo":  # dpo's metrics.jsonl is the rounds' rows joined
        assert [r["step"] for r in rows] == [1, 2]
    ra = [json.loads(x) for x in (one / "metrics.jsonl").read_text().splitlines()]
    assert len(ra) == len(rows)
    assert all(abs(a["loss"] - b["loss"]) <= 1e-4 * max(1.0, abs(a["loss"])) for a, b in zip(ra, rows))
    # evaluation (3 prompts: split 2 + 1 between the processes, gathered) gives the 1-process numbers
    ea = json.loads((one / "summary.json").read_text())["eval"]
    eb = json.loads((two / "summary.json").read_text())["eval"]
    assert ea.keys() == eb.keys()
    for k, va in ea.items():
        if isinstance(va, float):
            assert abs(va - eb[k]) <= 1e-4 * max(1.0, abs(va)), (k, va, eb[k])
        else:
            assert va == eb[k], k
    if fsdp:  # clipping saw the global gradient norm, not this process's shard's
        assert all(
            abs(a["grad_norm"] - b["grad_norm"]) <= 1e-4 * max(1.0, a["grad_norm"]) for a, b in zip(ra, rows)
        )
    return one, two


@pytest.mark.slow
@pytest.mark.skipif(torch.cuda.is_available(), reason="the CPU (gloo) data-parallel check")
def test_a_global_batch_that_does_not_split_evenly_is_refused_naming_the_field(micro, tmp_path):
    recipe = _recipe(micro, tmp_path / "r.yaml", "rl", prompts_per_step=3)
    res = _train(recipe, tmp_path / "out", 2)
    assert res.returncode != 0
    assert "prompts_per_step: 3 items per step cannot be split evenly over 2 processes" in res.stderr


def test_processes_shard_and_gradient_mean_by_hand(monkeypatch):
    """The bookkeeping without a launcher: item k goes to process k mod W; gradients are averaged."""
    from stackalign.training.distributed import Processes

    assert Processes(1, 2).shard([10, 11, 12, 13]) == [11, 13]
    assert Processes(0, 1).shard([10, 11, 12]) == [10, 11, 12]
    with pytest.raises(ValueError, match="batch_size"):
        Processes(0, 2).shard([1, 2, 3], "batch_size")
    sums = []

    def fake_all_reduce(t, op=None):  # the other process holds gradient 3 everywhere
        t += torch.full_like(t, 3.0) if t.dtype == torch.float32 else torch.full_like(t, 5.0)
        sums.append(t.clone())

    monkeypatch.setattr(torch.distributed, "all_reduce", fake_all_reduce)
    p = torch.nn.Parameter(torch.zeros(2, 2))
    q = torch.nn.Parameter(torch.zeros(3))
    p.grad = torch.ones(2, 2)  # q has no gradient on this process: it counts as zero
    Processes(0, 2).mean_grads([p, q])
    assert torch.equal(p.grad, torch.full((2, 2), 2.0)) and torch.equal(q.grad, torch.full((3,), 1.5))
    row = Processes(0, 2).mean_metrics({"step": 1, "loss": 1.0, "note": "x"})
    assert row["loss"] == 3.0 and row["note"] == "x"  # (1 + 5) / 2


def _worker(rank: int):
    """``victim`` for kill_after_rows: the pid of the launched worker process with this RANK."""

    def pick(launcher_pid: int) -> int:
        import psutil

        for p in psutil.Process(launcher_pid).children(recursive=True):
            try:
                if p.environ().get("RANK") == str(rank) and "stackalign" in " ".join(p.cmdline()):
                    return p.pid
            except psutil.Error:
                continue
        raise AssertionError(f"no worker with RANK={rank} under the launcher")

    return pick


def _uninterrupted(micro, tmp_path_factory, fsdp: bool, **kw):
    d = tmp_path_factory.mktemp("uninterrupted")
    recipe = _recipe(micro, d / "r.yaml", "rl", steps=4, **kw)
    res = _train(recipe, d / "out", 2, fsdp)
    assert res.returncode == 0, res.stderr[-3000:]
    return recipe, d / "out"


@pytest.fixture(scope="module")
def uninterrupted(micro, tmp_path_factory):
    return _uninterrupted(micro, tmp_path_factory, False)


@pytest.fixture(scope="module")
def uninterrupted_fsdp(micro, tmp_path_factory):
    return _uninterrupted(micro, tmp_path_factory, True)


@pytest.mark.slow
@pytest.mark.skipif(torch.cuda.is_available(), reason="the CPU (gloo) data-parallel check")
@pytest.mark.parametrize("rank", [0, 1], ids=["main", "other"])
def test_kill9_of_one_process_then_relaunch_ends_with_the_uninterrupted_weights(
    uninterrupted, tmp_path, rank
):
    _check_kill9_relaunch(uninterrupted, tmp_path, rank, fsdp=False)


@pytest.mark.slow
@pytest.mark.skipif(torch.cuda.is_available(), reason="the CPU (gloo) FSDP check")
@pytest.mark.parametrize("rank", [0, 1], ids=["main", "other"])
def test_fsdp_kill9_of_one_process_then_relaunch_ends_with_the_uninterrupted_weights(
    uninterrupted_fsdp, tmp_path, rank
):
    """The gathered checkpoint is loaded back into the shards (weights and AdamW moments): bit for bit."""
    _check_kill9_relaunch(uninterrupted_fsdp, tmp_path, rank, fsdp=True)


@pytest.mark.slow
@pytest.mark.skipif(torch.cuda.is_available(), reason="the CPU (gloo) FSDP check")
def test_fsdp_lora_kill9_then_relaunch_ends_with_the_uninterrupted_adapters(micro, tmp_path_factory):
    """LoRA under FSDP: the adapters (sharded with the frozen base) and their AdamW moments resume exactly."""
    run = _uninterrupted(micro, tmp_path_factory, True, lora={"r": 4, "alpha": 8})
    _check_kill9_relaunch(run, tmp_path_factory.mktemp("killed"), 1, fsdp=True)


def _check_kill9_relaunch(uninterrupted, tmp_path, rank: int, *, fsdp: bool) -> None:
    pytest.importorskip("psutil")
    recipe, ref = uninterrupted
    out = tmp_path / "out"
    kill_after_rows(_cmd(recipe, out, 2, fsdp), out / "metrics.jsonl", 2, victim=_worker(rank))
    assert not (out / "final").exists()
    from stackalign.training.loop import latest_checkpoint

    assert latest_checkpoint(out) is not None  # the relaunch resumes (from step 1 or 2), not a fresh start
    res = _train(recipe, out, 2, fsdp)  # the same command again
    assert res.returncode == 0, res.stderr[-3000:]
    wa, wb = _weights(ref), _weights(out)
    assert wa and wa.keys() == wb.keys()
    assert all(torch.equal(wa[k], wb[k]) for k in wa)  # same processes, same checkpoint: bit for bit
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    ref_rows = [json.loads(x) for x in (ref / "metrics.jsonl").read_text().splitlines()]
    assert [r["loss"] for r in rows] == [r["loss"] for r in ref_rows]


def test_evaluation_split_and_gather_by_hand(monkeypatch):
    """Evaluation's bookkeeping without a launcher: prompt k to process k mod W (uneven shares allowed), the
    shares gathered back in the original order."""
    from stackalign.training.distributed import Processes

    items = list("abcde")
    shares = [Processes(r, 2).split(items) for r in (0, 1)]
    assert shares == [["a", "c", "e"], ["b", "d"]] and Processes(0, 1).split(items) == items

    def fake_all_gather_object(out, obj):
        out[:] = shares

    monkeypatch.setattr(torch.distributed, "all_gather_object", fake_all_gather_object)
    assert Processes(1, 2).unsplit(shares[1]) == items


def test_deepspeed_launch_is_refused_and_fsdp_is_not(monkeypatch):
    """ZeRO-3 (DeepSpeed) is refused naming the configs to use; an FSDP launch is accepted (its layout read
    from accelerate, here faked)."""
    import stackalign.training.distributed as D

    monkeypatch.setattr(D, "_CURRENT", None)
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", "true")
    with pytest.raises(RuntimeError, match="DeepSpeed .* not supported.*fsdp.yaml"):
        D.processes()
    monkeypatch.delenv("ACCELERATE_USE_DEEPSPEED")
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")

    class FakeState:
        def __init__(self, cpu):
            self.process_index, self.num_processes = 1, 2

    import accelerate

    monkeypatch.setattr(accelerate, "PartialState", FakeState)
    assert D.processes() == D.Processes(1, 2, fsdp=True)
    monkeypatch.setattr(D, "_CURRENT", None)


_SHARDING_SCRIPT = """
import sys
import torch
from stackalign.models import load_policy
from stackalign.training.distributed import full_state, full_weights, is_dtensor, processes, shard_model

procs = processes()
assert procs.fsdp and procs.world == 2
model, tok = load_policy(sys.argv[1])
full = {k: v.clone() for k, v in model.state_dict().items()}
total = sum(p.numel() for p in model.parameters())
shard_model(model)
params = list(model.parameters())
assert all(is_dtensor(p) for p in params)
local = sum(p.to_local().numel() for p in params)
assert local <= total // 2 + 64 * len(params), (local, total)  # half of every weight, up to row rounding
ids = torch.tensor([[2, 3, 4]])
with full_weights():  # a different number of forwards in each process: no collective, no deadlock
    assert not any(is_dtensor(p) for p in model.parameters())
    with torch.no_grad():
        for _ in range(1 + 2 * procs.rank):
            model(input_ids=ids)
assert all(is_dtensor(p) for p in model.parameters())
gathered = full_state(model.state_dict())  # in the main process; None elsewhere
if procs.is_main:
    assert all(torch.equal(gathered[k], full[k]) for k in full)
else:
    assert all(v is None for v in gathered.values())
print("rank", procs.rank, "holds", local, "of", total, "parameters")
"""


@pytest.mark.slow
@pytest.mark.skipif(torch.cuda.is_available(), reason="the CPU (gloo) FSDP check")
def test_fsdp_shards_every_weight_and_gathers_them_for_generation(micro, tmp_path):
    script = tmp_path / "shard.py"
    script.write_text(_SHARDING_SCRIPT)
    env = {**train_env(), "ACCELERATE_USE_FSDP": "true"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
           str(_free_port()), str(script), str(micro.policy_dir)]  # fmt: skip
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    assert res.stdout.count("holds") == 2, res.stdout


def test_lora_merge_under_fsdp_is_refused_naming_the_field(micro, tmp_path, monkeypatch):
    """A sharded model cannot be merged in place: refused before any model loads."""
    import stackalign.training.distributed as D
    from stackalign.recipe_base import RecipeError
    from stackalign.training.run import run_training, train_recipe_from_dict

    recipe = yaml.safe_load(_recipe(micro, tmp_path / "r.yaml", "rl").read_text())
    recipe["lora"] = {"r": 4, "merge": True}
    monkeypatch.setattr(D, "_CURRENT", D.Processes(0, 2, fsdp=True))
    with pytest.raises(RecipeError, match=r"lora\.merge: not supported under FSDP"):
        run_training(train_recipe_from_dict(recipe), tmp_path / "out")
    assert not (tmp_path / "out").exists()

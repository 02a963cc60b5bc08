"""Reliability: bad inputs and faults give a clear error naming the field or file (before any model loads),
nothing is written outside a run directory, one process writes a directory at a time, and no error message
repeats a huge value."""

import errno
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from stackalign.cli import main as cli_main
from stackalign.recipe_base import RecipeError, read_yaml
from stackalign.rundir import LOCK_NAME, DirBusy, DirLock
from stackalign.runner.recipe import recipe_from_dict

# A recipe that passes validation and the machine checks without loading anything: the run stops at the
# first step that needs the world or a model, after the run directory is locked.
OK = {"methods": [{"name": "M", "decoder": "base"}], "evaluation": {"coherence": None, "judge": None}}


def _recipe(**top):
    return {**json.loads(json.dumps(OK)), **top}


def _method(**m):
    return _recipe(methods=[{"name": "M", "decoder": "args", **m}])


def _write(path: Path, text: str) -> Path:
    path.write_text(textwrap.dedent(text))
    return path


def _cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "stackalign", *args], capture_output=True, text=True, timeout=timeout
    )


# --------------------------------------------------------------------- 1. method names are safe identifiers


@pytest.mark.parametrize("name", ["../../escaped", "a/b", "a\\b", "..", ".", "x" * 101, " lead", "tab\tname"])
def test_unsafe_method_name_is_refused_at_load(name):
    with pytest.raises(RecipeError, match=r"methods\[0\]\.name: .* is not a valid method name") as e:
        recipe_from_dict(_recipe(methods=[{"name": name, "decoder": "base"}]))
    assert len(str(e.value)) < 400


@pytest.mark.parametrize("name", ["SRS-ARGS", "Soft-BoN@w=0.25", "ARGS (k=10, w=1.5)", "a.b+c_d", "x" * 100])
def test_safe_method_names_load(name):
    assert recipe_from_dict(_recipe(methods=[{"name": name, "decoder": "base"}])).methods[0].name == name


# --------------------------------------------------------- 5. echoed values are capped; bombs refused up front


def test_huge_value_is_not_echoed_whole():
    with pytest.raises(RecipeError, match=r"prompts\.template") as e:
        recipe_from_dict(_recipe(prompts={"template": "x" * 5_000_000}))
    assert len(str(e.value)) < 1000
    with pytest.raises(RecipeError, match=r"seed: input should be a valid integer") as e:
        recipe_from_dict(_recipe(seed="y" * 5_000_000))
    assert len(str(e.value)) < 1000 and "5000000 characters" in str(e.value)


def test_alias_bomb_and_oversized_recipe_are_refused(tmp_path):
    levels = ["a0: &a0 [1, 1, 1, 1, 1, 1, 1, 1, 1]"]
    for i in range(1, 9):
        levels.append(f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]")
    bomb = _write(tmp_path / "bomb.yaml", "\n".join(levels) + "\n")
    assert bomb.stat().st_size < 1000
    t0 = time.perf_counter()
    with pytest.raises(RecipeError, match=r"bomb\.yaml: its YAML aliases expand to more than"):
        read_yaml(bomb)
    assert time.perf_counter() - t0 < 5
    big = tmp_path / "big.yaml"
    big.write_text("seed: 0\n# " + "x" * 1_100_000 + "\n")
    with pytest.raises(RecipeError, match=r"big\.yaml: 1100011 bytes; a recipe is at most 1000000 bytes"):
        read_yaml(big)
    ok = _write(tmp_path / "ok.yaml", "a: &x {k: 1}\nb: *x\n")  # ordinary aliases still work
    assert read_yaml(ok) == {"a": {"k": 1}, "b": {"k": 1}}


def test_alias_bomb_on_the_command_line_prints_little(tmp_path):
    levels = ["a0: &a0 ['xxxxxxxxxxxxxxxxxxxxxxxx', 'xxxxxxxxxxxxxxxxxxxxxxxx']"]
    for i in range(1, 25):
        levels.append(f"a{i}: &a{i} [*a{i - 1}, *a{i - 1}]")
    bomb = _write(tmp_path / "bomb.yaml", "\n".join(levels) + "\n")
    proc = _cli("recipe", "check", str(bomb), "--no-env", timeout=60)
    assert proc.returncode == 2
    assert "bomb.yaml" in proc.stderr and "aliases" in proc.stderr
    assert len(proc.stderr) < 2000 and "Traceback" not in proc.stderr


def test_cli_caps_any_long_message(tmp_path):
    proc = _cli("recipe", "check", str(tmp_path / ("n" * 5000 + ".yaml")), timeout=60)
    assert proc.returncode == 2 and "recipe" in proc.stderr and "name too long" in proc.stderr
    assert len(proc.stderr) < 1000 and "Traceback" not in proc.stderr


# ----------------------------------------------------------------------------- 13. duplicate YAML keys


def test_duplicate_key_names_the_key_and_both_lines(tmp_path):
    path = _write(
        tmp_path / "dup.yaml",
        """\
        world: default
        methods:
          - {name: A, decoder: base}
        seed: 1
        methods:
          - {name: B, decoder: base}
        """,
    )
    with pytest.raises(RecipeError, match=r"dup\.yaml: 'methods': duplicate key \(lines 2 and 5\)"):
        read_yaml(path)
    nested = _write(tmp_path / "nested.yaml", "generation:\n  top_k: 1\n  top_k: 2\n")
    with pytest.raises(RecipeError, match=r"'top_k': duplicate key \(lines 2 and 3\)"):
        read_yaml(nested)


def test_non_utf8_recipe_names_the_file(tmp_path):
    path = tmp_path / "latin1.yaml"
    path.write_bytes("seed: 0 # café\n".encode("latin-1"))
    with pytest.raises(RecipeError, match=r"latin1\.yaml: not UTF-8 text \(byte 13"):
        read_yaml(path)


# ------------------------------------------------------------------------- 9. empty strings are errors


@pytest.mark.parametrize(
    "data,needle",
    [
        (_recipe(policy=""), r"^policy: an empty string is not a value"),
        (_recipe(reward_model=""), r"^reward_model: an empty string"),
        (_recipe(world=""), r"^world: an empty string"),
        (_recipe(evaluation={"coherence": ""}), r"^evaluation\.coherence: an empty string"),
        (_recipe(evaluation={"judge_model": ""}), r"^evaluation\.judge_model: an empty string"),
        (_recipe(backend={"address": ""}), r"^backend\.address: an empty string"),
        (
            _method(shaping="srs", params={"threshold": "predicted", "predictor": ""}),
            r"params\.predictor: an empty",
        ),
    ],
)
def test_empty_string_is_an_error(data, needle):
    with pytest.raises(RecipeError, match=needle):
        recipe_from_dict(data)


def test_empty_string_in_a_train_recipe_is_an_error():
    from stackalign.training.recipe import train_recipe_from_dict

    for key in ("policy", "reward_model", "world"):
        with pytest.raises(RecipeError, match=rf"^{key}: an empty string"):
            train_recipe_from_dict({"algorithm": "rl", key: ""})


# ------------------------------------------------------------- 7. unused shaping params, with a preset too


@pytest.mark.parametrize(
    "method,needle",
    [
        (
            {"shaping": "srs", "preset": "official-args", "params": {"cap": 1.0}},
            r"params\.cap: not used by shaping 'srs'",
        ),
        (
            {"shaping": "hard", "preset": "paper", "params": {"alpha": 2.0}},
            r"params\.alpha: not used by shaping 'hard'",
        ),
    ],
)
def test_unused_shaping_param_with_a_preset(method, needle):
    with pytest.raises(RecipeError, match=needle):
        recipe_from_dict(_method(**method))


def test_train_shaping_params_are_checked_against_the_shaping():
    from stackalign.training.recipe import train_recipe_from_dict

    with pytest.raises(RecipeError, match=r"shaping_params\.cap: not used by shaping 'srs'"):
        train_recipe_from_dict({"algorithm": "rl", "shaping": "srs", "shaping_params": {"cap": 1.0}})
    cfg = train_recipe_from_dict({"algorithm": "rl", "shaping": "srs", "shaping_params": {"alpha": 2.0}})
    assert cfg.algo.shaping_params == {"alpha": 2.0}


# ------------------------------------------------------------------- 4. one writer per run / train directory

HOLDER = textwrap.dedent(
    """\
    import sys, time
    from stackalign.rundir import DirLock
    DirLock(sys.argv[1]).acquire()
    print("locked", flush=True)
    time.sleep(120)
    """
)


def _hold(directory: Path) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(directory)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "locked"
    return proc


def _kill9(proc: subprocess.Popen) -> None:
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)


def test_lock_refuses_a_second_writer_and_takes_over_a_stale_lock(tmp_path):
    d = tmp_path / "run"
    holder = _hold(d)
    try:
        assert (d / LOCK_NAME).read_text().strip() == str(holder.pid)
        with pytest.raises(DirBusy, match=rf"{d}: another stackalign process \(pid {holder.pid}\)"):
            DirLock(d, "run directory").acquire()
    finally:
        _kill9(holder)
    assert (d / LOCK_NAME).exists()  # kill -9 left it behind: stale
    with DirLock(d, "run directory"):
        assert (d / LOCK_NAME).read_text().strip() == str(os.getpid())
        with DirLock(d):  # the holder may lock again (nested)
            pass
        assert (d / LOCK_NAME).exists()
    assert not (d / LOCK_NAME).exists()  # released on exit


@pytest.mark.slow
def test_run_and_train_refuse_a_locked_directory_then_take_over(tmp_path):
    """`stackalign run`, `eval` and `train` on a directory another live process writes: a clear error naming
    the directory and the pid; after kill -9 of the holder the same command gets past the lock."""
    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        json.dumps(_recipe(world=str(tmp_path / "no-world"), gold=None, policy="p", reward_model="r"))
    )
    train = tmp_path / "t.yaml"
    train.write_text(json.dumps({"algorithm": "rl", "world": str(tmp_path / "no-world")}))
    run_dir, train_dir = tmp_path / "run", tmp_path / "train"
    (tmp_path / "no-world").mkdir()  # passes the world check; loading it (after the lock) fails
    (tmp_path / "no-world" / "manifest.json").write_text("{}")
    (run_dir).mkdir()
    (run_dir / "config.json").write_text(json.dumps(_recipe(world=str(tmp_path / "no-world"), gold=None)))
    holders = [_hold(run_dir), _hold(train_dir)]
    try:
        for args, d, h in (
            (["run", str(recipe), "--out", str(run_dir)], run_dir, holders[0]),
            (["eval", str(run_dir)], run_dir, holders[0]),
            (["train", str(train), "--out", str(train_dir)], train_dir, holders[1]),
        ):
            proc = _cli(*args)
            assert proc.returncode == 2, proc.stderr
            assert f"{d}: another stackalign process (pid {h.pid})" in proc.stderr, proc.stderr
            assert "Traceback" not in proc.stderr
    finally:
        for h in holders:
            _kill9(h)
    proc = _cli("eval", str(run_dir))  # past the lock now: the directory has no rows
    assert proc.returncode == 2 and "has no rows to evaluate" in proc.stderr, proc.stderr
    assert not (run_dir / LOCK_NAME).exists()
    proc = _cli("train", str(train), "--out", str(train_dir))  # past the lock: the world is not a world
    assert proc.returncode == 2 and "another stackalign process" not in proc.stderr, proc.stderr
    assert not (train_dir / LOCK_NAME).exists()


def test_out_is_a_file_or_read_only(tmp_path):
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(ValueError, match=r"--out: .*file.* is a file, not a directory"):
        DirLock(f).acquire()
    if os.geteuid() == 0:
        pytest.skip("root writes to read-only directories")
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        with pytest.raises(ValueError, match=r"ro: cannot write to this run directory"):
            DirLock(ro, "run directory").acquire()
    finally:
        ro.chmod(0o700)


# ------------------------------------------------------- 3. a run directory holds the rows of one world


class _World:
    def __init__(self, manifest):
        self.manifest = manifest


def test_changed_world_is_refused_like_a_changed_recipe(tmp_path):
    from stackalign.runner.run import reconcile_run_dir, resolve_config
    from stackalign.store import JsonlStore

    recipe = recipe_from_dict(_recipe(world="w", gold=None))
    a = resolve_config(recipe, ["p"], _World({"params": {"bias": 0.1}, "build": {"seconds": 1.0}}))
    rebuilt = resolve_config(recipe, ["p"], _World({"params": {"bias": 0.1}, "build": {"seconds": 9.0}}))
    b = resolve_config(recipe, ["p"], _World({"params": {"bias": 0.3}, "build": {"seconds": 1.0}}))
    assert a["world_id"] == rebuilt["world_id"] != b["world_id"]
    (tmp_path / "config.json").write_text(json.dumps(a))
    JsonlStore(tmp_path / "generations.jsonl").append([{"method": "M", "prompt_id": 0}])
    reconcile_run_dir(tmp_path, rebuilt)  # the same world: resumes
    with pytest.raises(RecipeError, match=r"world_id: "):
        reconcile_run_dir(tmp_path, b)
    old = {k: v for k, v in a.items() if k != "world_id"}  # written before worlds had an identity
    (tmp_path / "config.json").write_text(json.dumps(old))
    reconcile_run_dir(tmp_path, b)


def test_world_build_refuses_a_non_empty_directory(tmp_path, capsys):
    out = tmp_path / "w"
    out.mkdir()
    (out / "manifest.json").write_text("{}")
    assert cli_main(["world", "build", "--out", str(out), "--preset", "micro"]) == 2
    err = capsys.readouterr().err
    assert f"--out: '{out}' already holds a world; add --force" in err
    (out / "manifest.json").unlink()
    (out / "notes.txt").write_text("mine")
    assert cli_main(["world", "build", "--out", str(out), "--preset", "micro"]) == 2
    assert "already holds files" in capsys.readouterr().err
    assert (out / "notes.txt").read_text() == "mine"


# ------------------------------------------------------ 6. a train directory whose set-up failed is reusable


def test_train_dir_without_work_takes_the_corrected_recipe(tmp_path):
    from stackalign.training.recipe import train_recipe_from_dict
    from stackalign.training.run import prepare_run_dir

    bad = train_recipe_from_dict({"algorithm": "rl", "world": str(tmp_path / "missing")})
    good = train_recipe_from_dict({"algorithm": "rl", "world": "default"})
    prepare_run_dir(bad, tmp_path / "t")  # the set-up then failed: only config.json was written
    prepare_run_dir(good, tmp_path / "t")
    assert json.loads((tmp_path / "t" / "config.json").read_text())["world"] == "default"
    (tmp_path / "t" / "metrics.jsonl").write_text('{"step": 1}\n')  # now it holds work
    with pytest.raises(RecipeError, match=r"holds a training run with a different configuration \(world: "):
        prepare_run_dir(bad, tmp_path / "t")
    (tmp_path / "t" / "config.json").write_text("{garbled")
    with pytest.raises(RecipeError, match=r"config\.json: not a readable training configuration"):
        prepare_run_dir(good, tmp_path / "t")


# -------------------------------------------------------------- 2. an unreachable Ray cluster fails fast


def test_unreachable_ray_address_is_a_clear_error_fast():
    from stackalign.runner.preflight import preflight

    recipe = recipe_from_dict(_recipe(backend={"kind": "ray", "address": "127.0.0.1:1"}))
    t0 = time.perf_counter()
    with pytest.raises(RecipeError, match=r"backend\.address: nothing answers at 127\.0\.0\.1:1"):
        preflight(recipe)
    assert time.perf_counter() - t0 < 15
    recipe = recipe_from_dict(_recipe(backend={"kind": "ray", "address": "ray://nohost"}))
    with pytest.raises(RecipeError, match=r"backend\.address: expected ray://HOST:PORT or HOST:PORT"):
        preflight(recipe, network=True)


# ------------------------------------------------------------------------------- 11. a full disk


def test_full_disk_names_the_directory(tmp_path, monkeypatch, capsys):
    import stackalign.runner.run as run_mod

    def full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "out" / "generations.jsonl"))

    monkeypatch.setattr(run_mod, "execute", full)
    recipe = tmp_path / "r.yaml"
    recipe.write_text(json.dumps(OK))
    assert cli_main(["run", str(recipe), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert f"no space left on {tmp_path / 'out'}" in err and "resumes" in err


# ------------------------------------------------------- 8. checks that used to come after the models loaded


@pytest.mark.parametrize(
    "data,needle",
    [
        ({"weight_decay": -1.0}, r"^weight_decay: must be a finite number >= 0, got -1"),
        ({"max_grad_norm": 0.0}, r"^max_grad_norm: must be > 0 or null, got 0"),
        ({"device": "tpu"}, r"^device: expected cpu, cuda, cuda:N, mps, xpu or auto, got 'tpu'"),
    ],
)
def test_train_values_checked_at_load(data, needle):
    from stackalign.training.recipe import train_recipe_from_dict

    with pytest.raises(RecipeError, match=needle):
        train_recipe_from_dict({"algorithm": "rl", **data})


@pytest.mark.parametrize(
    "data,needle",
    [
        ({"algorithm": "dpo", "seeds_file": "no-seeds.jsonl"}, r"seeds_file: no such file 'no-seeds.jsonl'"),
        ({"algorithm": "ssapo", "prompts_file": "no.jsonl"}, r"prompts_file: no such file 'no.jsonl'"),
    ],
)
def test_train_input_files_checked_before_loading(data, needle, tmp_path):
    from stackalign.training.preflight import preflight_train
    from stackalign.training.recipe import train_recipe_from_dict

    with pytest.raises(RecipeError, match=needle):
        preflight_train(train_recipe_from_dict(data))
    recipe = tmp_path / "t.yaml"
    recipe.write_text(json.dumps(data))
    t0 = time.perf_counter()
    assert cli_main(["train", str(recipe), "--out", str(tmp_path / "out")]) == 2
    assert time.perf_counter() - t0 < 10 and not (tmp_path / "out").exists()


def _absent(kind: str) -> bool:
    from stackalign.recipe_base import device_problem

    return device_problem(kind) is not None


@pytest.mark.parametrize("device", [d for d in ("xpu", "mps", "cuda:99") if _absent(d)])
def test_unavailable_device_is_a_preflight_error(device, tmp_path):
    from stackalign.runner.preflight import preflight
    from stackalign.training.preflight import preflight_train
    from stackalign.training.recipe import train_recipe_from_dict

    with pytest.raises(RecipeError, match=rf"device: '{device}': this machine has"):
        preflight(recipe_from_dict(_recipe(device=device)), network=False)
    train = train_recipe_from_dict({"algorithm": "rl", "device": device})
    with pytest.raises(RecipeError, match=rf"device: '{device}': this machine has"):
        preflight_train(train)
    recipe = tmp_path / "t.yaml"
    recipe.write_text(json.dumps({"algorithm": "rl", "device": device}))
    t0 = time.perf_counter()
    assert cli_main(["train", str(recipe), "--out", str(tmp_path / "out")]) == 2
    assert time.perf_counter() - t0 < 10 and not (tmp_path / "out").exists()


def test_method_paths_and_coherence_name_checked_before_the_run(tmp_path):
    from stackalign.runner.preflight import preflight

    recipe = recipe_from_dict(
        _recipe(
            methods=[
                {
                    "name": "P",
                    "decoder": "args",
                    "shaping": "srs",
                    "params": {"threshold": "predicted", "predictor": str(tmp_path)},
                },
                {"name": "R", "decoder": "refine", "params": {"follower": str(tmp_path / "no-follower")}},
            ],
            evaluation={"coherence": "no-such-org/no-such-encoder-xyz", "judge": None},
        )
    )
    with pytest.raises(RecipeError) as e:
        preflight(recipe, network=False)
    msg = str(e.value)
    assert "methods[0].params.predictor: " in msg and "is not a threshold predictor directory" in msg
    assert "methods[1].params.follower: no such directory" in msg
    assert "evaluation.coherence: encoder 'no-such-org/no-such-encoder-xyz' is not in the local" in msg


# ----------------------------------------------------------------------- 15. small values, clear messages


@pytest.mark.parametrize(
    "data,needle",
    [
        (_method(shaping="srs", preset="paper", params={"w": 0}), r"methods\[0\]\.params\.w: must be > 0"),
        (_recipe(seed=2**70), r"^seed: 1180591620717411303424 is out of range"),
        (
            _method(params={"predictor_train_prompts": 0}),
            r"params\.predictor_train_prompts: must be an integer",
        ),
        (
            _recipe(methods=[{"name": "M", "decoder": "cd_tokenwise", "params": {"lam": -1.0}}]),
            r"methods\[0\]\.params\.lam: must be a finite number >= 0",
        ),
    ],
)
def test_small_values_give_messages_naming_the_field(data, needle):
    with pytest.raises(RecipeError, match=needle):
        recipe_from_dict(data)


def test_train_seed_out_of_range():
    from stackalign.training.recipe import train_recipe_from_dict

    with pytest.raises(RecipeError, match=r"^eval\.seed: 18446744073709551616 is out of range"):
        train_recipe_from_dict({"algorithm": "rl", "eval": {"seed": 2**64}})


def test_txt_prompts_file_is_named_as_the_wrong_kind(tmp_path):
    from stackalign.runner.preflight import preflight
    from stackalign.runner.prompts import load_prompts

    txt = tmp_path / "prompts.txt"
    txt.write_text("hello\n")
    recipe = recipe_from_dict(
        _recipe(world=None, gold=None, policy="p", reward_model="r", prompts={"source": str(txt)})
    )
    with pytest.raises(
        RecipeError, match=r"prompts\.source: .*prompts\.txt' is a \.txt file; prompts files are"
    ):
        preflight(recipe, network=False)
    with pytest.raises(RecipeError, match=r"is a \.txt file"):
        load_prompts(recipe.prompts)


def test_top_k_above_the_vocabulary_stops_before_generation(tmp_path, monkeypatch):
    from types import SimpleNamespace

    import stackalign.models as models
    from stackalign.runner.context import build_context

    def fake_policy(*a, **k):
        return SimpleNamespace(config=SimpleNamespace(vocab_size=50)), None

    def no_rm(*a, **k):
        raise AssertionError("the reward model must not load")

    monkeypatch.setattr(models, "load_policy", fake_policy)
    monkeypatch.setattr(models, "load_reward_model", no_rm)
    recipe = recipe_from_dict(
        _recipe(
            world=None,
            gold=None,
            policy="p",
            reward_model="r",
            generation={"top_k": 51},
            prompts={"source": "x.jsonl"},
        )
    )
    with pytest.raises(RecipeError, match=r"generation\.top_k: 51 is above the policy's vocabulary size 50"):
        build_context(recipe, tmp_path, prompts=["p"], stops=[])


# ------------------------------------------------------------ 14. settings that would be silently ignored


@pytest.mark.parametrize("algorithm", ["dpo", "ssapo"])
@pytest.mark.parametrize("key,value", [("steps", 10), ("prompts_per_step", 8)])
def test_dpo_and_ssapo_refuse_steps_they_do_not_read(algorithm, key, value):
    from stackalign.training.recipe import train_recipe_from_dict

    with pytest.raises(RecipeError, match=rf"^{key}: not used by algorithm '{algorithm}'"):
        train_recipe_from_dict({"algorithm": algorithm, key: value})


def test_judge_settings_without_the_llm_judge_are_errors():
    for key in ("judge_model", "judge_base_url"):
        for judge in ("gold", None):
            with pytest.raises(RecipeError, match=rf"evaluation\.{key}: only read by judge: llm"):
                recipe_from_dict(_recipe(evaluation={"judge": judge, key: "x", "coherence": None}))


def test_ignored_settings_are_warned_by_name(caplog):
    data = _recipe(
        backend={"kind": "serial", "workers": 4, "address": "h:1"},
        prompts={"source": "world:test", "split": "train", "field": "q"},
    )
    with caplog.at_level("WARNING", logger="stackalign"):
        recipe_from_dict(data)
    text = caplog.text
    for key in ("backend.workers", "backend.address", "prompts.split", "prompts.field"):
        assert f"{key}: ignored" in text, text
    caplog.clear()
    with caplog.at_level("WARNING", logger="stackalign"):
        recipe_from_dict(_recipe(backend={"kind": "ray", "workers": 4}))
    assert "ignored" not in caplog.text


def test_prompts_per_step_above_the_training_set_stops_before_models(tmp_path, monkeypatch):
    from types import SimpleNamespace

    import stackalign.training.run as run_mod
    from stackalign.training.recipe import train_recipe_from_dict

    world = SimpleNamespace(train_prompts=["a", "b", "c"], val_prompts=[], test_prompts=[])
    recipe = train_recipe_from_dict({"algorithm": "rl", "prompts_per_step": 4})
    monkeypatch.setattr(recipe, "train_fn", lambda ctx: pytest.fail("training must not start"))
    with pytest.raises(
        RecipeError, match=r"prompts_per_step: 4 is more than the 3 training prompts \(world:train\)"
    ):
        run_mod.run_training(recipe, tmp_path / "t", world=world)


# ------------------------------------------------------------------- 16. the API key is never echoed


def test_api_key_echoed_by_the_server_is_redacted(monkeypatch):
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from stackalign.evaluation.judges import JudgeError, LLMJudge

    key = "sk-test-0123456789abcdefghijklmnop"

    class Echo(BaseHTTPRequestHandler):
        def do_POST(self):
            self.rfile.read(int(self.headers["Content-Length"]))
            got = self.headers["Authorization"].removeprefix("Bearer ")
            body = json.dumps(
                {"error": {"message": f"Incorrect API key {got}; prefix {got[:20]}..."}}
            ).encode()
            self.send_response(401)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *a):
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Echo)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        monkeypatch.setenv("MY_JUDGE_KEY", key)
        judge = LLMJudge("m", base_url=f"http://127.0.0.1:{httpd.server_port}/v1", api_key_env="MY_JUDGE_KEY")
        with pytest.raises(JudgeError) as e:
            judge.complete("hi")
    finally:
        httpd.shutdown()
    msg = str(e.value)
    assert "HTTP 401" in msg and "[redacted]" in msg
    assert key[:12] not in msg


# ------------------------------------------------ 12. damaged directories name the file; checkpoints fall back


def _tiny_loop(out: Path, steps: int):
    import torch

    from stackalign.models.tiny import bpe_tokenizer, tiny_pair
    from stackalign.training.loop import LoopSettings, StepOutput, train_loop

    tok = bpe_tokenizer(["hello world", "a tiny corpus"], vocab_size=60)
    policy, _ = tiny_pair("llama", tok, hidden_size=16, intermediate_size=32, num_hidden_layers=1)
    ids = torch.tensor([[1, 2, 3, 4]])

    def step(i):
        return StepOutput(loss=policy(input_ids=ids, labels=ids).loss)

    settings = LoopSettings(steps=steps, lr=1e-2, checkpoint_every=1, keep_checkpoints=2, progress=False)
    return policy, train_loop(policy, tok, step, settings, out)


def test_truncated_checkpoint_falls_back_to_the_previous_one(tmp_path, caplog):
    from safetensors.torch import load_file

    _tiny_loop(tmp_path, 2)
    ckpts = tmp_path / "checkpoints"
    weights = ckpts / "step-000002" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:200])  # cut short, as a full disk or a crash would
    with caplog.at_level("WARNING", logger="stackalign"):
        policy, result = _tiny_loop(tmp_path, 3)
    assert result.resumed_from == 1
    assert "checkpoint" in caplog.text and "step-000002 is damaged" in caplog.text
    assert [r["step"] for r in result.metrics] == [1, 2, 3]  # step 2 trained again, never twice in the log
    assert load_file(str(ckpts / "step-000003" / "model.safetensors"))  # whole again
    for d in ckpts.iterdir():
        (d / "trainer_state.pt").write_bytes(b"garbage")
    with pytest.raises(
        ValueError, match=r"checkpoints: every checkpoint is damaged \(step-000003, step-000002\)"
    ):
        _tiny_loop(tmp_path, 4)


def test_damaged_metrics_and_rows_name_the_file(tmp_path):
    from stackalign.store import JsonlStore
    from stackalign.training.loop import MetricsLog

    (tmp_path / "metrics.jsonl").write_text('{"step": 1}\n{"step": \n')
    with pytest.raises(ValueError, match=r"metrics\.jsonl:2: not a metrics row"):
        MetricsLog(tmp_path / "metrics.jsonl").rows()
    (tmp_path / "metrics.jsonl").write_text('{"step": 1}\n[1, 2]\n')
    with pytest.raises(ValueError, match=r"metrics\.jsonl:2: not a metrics row \(no integer 'step'\)"):
        MetricsLog(tmp_path / "metrics.jsonl").rows()
    (tmp_path / "generations.jsonl").write_text('{"method": "M", "prompt_id": 0}\n[1]\n')
    with pytest.raises(ValueError, match=r"generations\.jsonl:2: "):
        JsonlStore(tmp_path / "generations.jsonl")


def test_full_disk_while_checkpointing_is_named(tmp_path, monkeypatch):
    import torch

    from stackalign.training import loop

    def full(*a, **k):
        raise RuntimeError("[enforce fail at inline_container.cc:626] . unexpected pos 497152 vs 497044")

    _tiny_loop(tmp_path, 1)
    monkeypatch.setattr(torch, "save", full)
    with pytest.raises(OSError) as e:
        _tiny_loop(tmp_path, 2)
    assert e.value.errno == errno.ENOSPC and e.value.filename == str(tmp_path / "checkpoints")
    assert not list((tmp_path / "checkpoints").glob(".tmp-*"))
    assert loop.latest_checkpoint(tmp_path).name == "step-000001"  # still resumable


# --------------------------------------------------- 10. cached Monte Carlo work is charged as when it was made


def test_cached_mc_samples_are_charged_their_tokens(tmp_path, monkeypatch):
    from test_decoding_common import PROMPTS, make_models

    import stackalign.decoding.mc as mc
    from stackalign.decoding.common import GenerationConfig

    gen = GenerationConfig(max_new_tokens=6, eos_token_ids=(9999,), seed=5)
    policy, rm, tok = make_models("llama")
    first = mc.mc_threshold(policy, tok, rm, PROMPTS, 4, gen, B=2.0, beta=1.0, cache_dir=tmp_path)
    assert first.cost.lm_tokens > 0 and first.cost.rm_tokens > 0

    def boom(*a, **k):
        raise AssertionError("resampled although cached")

    monkeypatch.setattr(mc, "sample", boom)
    spent = mc.mc_threshold(policy, tok, rm, PROMPTS, 4, gen, B=2.0, beta=1.0, cache_dir=tmp_path)
    assert spent.cost.lm_tokens == 0  # what this call spent
    charged = mc.mc_threshold(
        policy, tok, rm, PROMPTS, 4, gen, B=2.0, beta=1.0, cache_dir=tmp_path, charge_cached=True
    )
    for key in ("lm_tokens", "rm_tokens", "lm_calls", "rm_calls"):  # exactly what the first run paid
        assert getattr(charged.cost, key) == getattr(first.cost, key), key
    monkeypatch.undo()
    # a resume that finds one prompt cached and samples the others pays the same in total
    for f in sorted(tmp_path.rglob("*.json"))[1:]:
        f.unlink()
    mixed = mc.mc_threshold(
        policy, tok, rm, PROMPTS, 4, gen, B=2.0, beta=1.0, cache_dir=tmp_path, charge_cached=True
    )
    assert sum(mixed.from_cache) == 1
    assert mixed.cost.rm_tokens > 0 and mixed.cost.lm_tokens > 0


def test_train_dir_refuses_a_changed_world(tmp_path):
    from stackalign.rundir import check_world_identity

    out = tmp_path / "t"
    out.mkdir()
    a, b = _World({"params": {"bias": 0.1}}), _World({"params": {"bias": 0.3}})
    check_world_identity(out, a)
    check_world_identity(out, b)  # no training work yet: the new world is taken
    (out / "metrics.jsonl").write_text('{"step": 1}\n')
    check_world_identity(out, b)  # the same world: resumes
    with pytest.raises(RecipeError, match=r"holds training on another world \(world_id: .*world\.json"):
        check_world_identity(out, a)


def test_dpo_config_json_round_trips():
    from stackalign.training.recipe import train_recipe_from_dict

    cfg = train_recipe_from_dict({"algorithm": "dpo"}).to_dict()
    assert train_recipe_from_dict(cfg).to_dict() == cfg  # unused fields at their defaults are accepted

"""``stackalign bench ray``: decoding throughput of the serial backend and of 1 and 2 local Ray workers.

Every variant decodes the same units (a method x a prompt batch, the runner's cut) with the same `Worker`
code: in this process for `serial`, in Ray actors for `ray-1` and `ray-2`. Model loading and actor start-up
are timed separately (`startup_s`, which includes one untimed warm-up batch per method) from the decoding
(`decode_s`, after every worker is ready), so the ratios compare steady-state throughput. The serial process uses torch's default thread count; each Ray actor
gets `cpus_per_worker` (1) threads, as the backend runs them. Ratios above 1 mean Ray is faster.

On a machine with few cores shared with other work the ratios are bounded by the cores (2 workers of 1
thread each cannot beat 1 process with 2 threads by more than what threading leaves on the table) and noisy.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time

__all__ = ["bench_ray", "main"]


def _recipe(world: str | None, prompts: int, max_new_tokens: int, batch_size: int) -> dict:
    return {
        "world": world or "default",
        "prompts": {"source": "world:test", "limit": prompts},
        "generation": {"max_new_tokens": max_new_tokens, "batch_size": batch_size},
        "methods": [
            {"name": "Base", "decoder": "base"},
            {"name": "ARGS", "decoder": "args", "params": {"k": 10, "w": 0.5}},
        ],
        "evaluation": {"coherence": None, "judge": None},
    }


def bench_ray(
    world: str | None = None,
    prompts: int = 16,
    max_new_tokens: int = 32,
    batch_size: int = 1,
    workers: tuple[int, ...] = (1, 2),
) -> dict:
    """Time serial and Ray decoding of the same units; returns seconds, prompts/s and ratios."""
    import ray  # noqa: F401 - missing Ray stops the bench before anything is timed

    from stackalign.runner.recipe import recipe_from_dict

    data = recipe_from_dict(_recipe(world, prompts, max_new_tokens, batch_size)).to_dict()
    units = [
        (pi, list(range(s, min(s + batch_size, prompts))))
        for pi in range(2)
        for s in range(0, prompts, batch_size)
    ]
    out_dir = tempfile.mkdtemp(prefix="stackalign-bench-ray-")
    res: dict = {
        "prompts": prompts,
        "max_new_tokens": max_new_tokens,
        "batch_size": batch_size,
        "units": len(units),
    }
    res["cpu_count"] = os.cpu_count()
    ref = _time_serial(res, data, out_dir, units)
    _time_ray(res, data, out_dir, units, workers, ref)
    res["ratios"] = {
        f"ray-{n}_over_serial": res[f"ray-{n}"]["prompts_per_s"] / res["serial"]["prompts_per_s"]
        for n in workers
    }
    if 1 in workers and 2 in workers:
        res["ratios"]["ray-2_over_ray-1"] = res["ray-2"]["prompts_per_s"] / res["ray-1"]["prompts_per_s"]
    return res


def _rows_key(batches: list[list[dict]]) -> list[tuple]:
    """The decoded rows in a fixed order, as compared between variants."""
    return sorted((r["method"], r["prompt_id"], r["response"]) for rows in batches for r in rows)


def _time_serial(res: dict, data: dict, out_dir: str, units: list) -> list[tuple]:
    """The serial backend as it runs (torch's default threads), and with 1 thread (what one Ray actor gets):
    `res["serial"]`, `res["serial-1thread"]`. Returns the serial rows, the reference of every variant."""
    import torch

    from stackalign.runner.backends.worker import Worker

    n_rows = sum(len(ids) for _, ids in units)
    default_threads = torch.get_num_threads()
    ref = None
    for name, threads in (("serial", default_threads), ("serial-1thread", 1)):
        torch.set_num_threads(threads)
        t0 = time.perf_counter()
        w = Worker(data, out_dir)
        for pi in range(2):
            w.decode(pi, [0])  # warm-up: builds the method and runs each code path once, untimed
        startup = time.perf_counter() - t0
        t0 = time.perf_counter()
        serial_rows = [w.decode(pi, ids) for pi, ids in units]
        dec = time.perf_counter() - t0
        got = _rows_key(serial_rows)
        ref = ref or got
        res[name] = {
            "threads": threads,
            "startup_s": startup,
            "decode_s": dec,
            "prompts_per_s": n_rows / dec,
            "same_rows_as_serial": got == ref,
        }
        del w
    torch.set_num_threads(default_threads)
    return ref


def _time_ray(res: dict, data: dict, out_dir: str, units: list, workers: tuple[int, ...], ref: list) -> None:
    """A local Ray instance (`res["ray_init_s"]`) and, for each count `n` of `workers`, `n` one-thread actors
    decoding the units (`res["ray-n"]`)."""
    import ray
    from ray.util import ActorPool

    from stackalign.runner.backends.worker import Worker

    n_rows = sum(len(ids) for _, ids in units)
    t0 = time.perf_counter()
    ray.init(num_cpus=max(os.cpu_count() or 1, max(workers)), include_dashboard=False, log_to_driver=False)
    res["ray_init_s"] = time.perf_counter() - t0
    try:
        Actor = ray.remote(num_cpus=1)(Worker)
        for n in workers:
            t0 = time.perf_counter()
            actors = [Actor.remote(data, out_dir, 1) for _ in range(n)]
            ray.get([a.ready.remote() for a in actors])
            ray.get([a.decode.remote(pi, [0]) for a in actors for pi in range(2)])  # warm-up, untimed
            startup = time.perf_counter() - t0
            pool = ActorPool(actors)
            t0 = time.perf_counter()
            rows = list(pool.map_unordered(lambda a, u: a.decode.remote(*u), units))
            dec = time.perf_counter() - t0
            res[f"ray-{n}"] = {
                "startup_s": startup,
                "decode_s": dec,
                "prompts_per_s": n_rows / dec,
                "same_rows_as_serial": _rows_key(rows) == ref,
            }
            for a in actors:
                ray.kill(a)
    finally:
        ray.shutdown()


def main(args: argparse.Namespace) -> int:
    res = bench_ray(
        getattr(args, "world", None),
        prompts=getattr(args, "prompts", 16),
        max_new_tokens=getattr(args, "max_new_tokens", 32),
    )
    if getattr(args, "json", False):
        print(json.dumps(res))
        return 0
    print(
        f"bench ray: {res['units']} units ({res['prompts']} prompts x Base, ARGS k=10; "
        f"{res['max_new_tokens']} new tokens, batch {res['batch_size']}), {res['cpu_count']} CPUs"
    )
    print(f"{'variant':<15} {'startup s':>10} {'decode s':>9} {'prompts/s':>10}  same rows")
    for k in ("serial", "serial-1thread", "ray-1", "ray-2"):
        if k in res:
            r = res[k]
            same = r.get("same_rows_as_serial", "")
            print(
                f"{k:<15} {r['startup_s']:>10.2f} {r['decode_s']:>9.2f} {r['prompts_per_s']:>10.2f}  {same}"
            )
    print(f"ray init: {res['ray_init_s']:.2f} s")
    for k, v in res["ratios"].items():
        print(f"{k}: {v:.2f}x")
    return 0

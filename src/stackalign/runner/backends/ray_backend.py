"""The Ray backend: the run's units on a pool of Ray actors, the driver the single writer of every file.

Each actor (`Worker`) loads the models once (reserving `backend.cpus_per_worker` CPUs and
`backend.gpus_per_worker` GPUs) and computes many units. Actors are pooled with `ray.util.ActorPool` rather
than Ray Data's `map_batches`: the units are few and coarse (a method x a prompt batch), their results must
come back to one writer, and the CD phases need three different calls (sample, train, decode) on the same
loaded models; plain actors say that directly, without a Dataset and its block/format plumbing.

Phases (each fans out over the pool; the driver appends results as they arrive):
  1. CD offline data: every missing chunk of `prompts_per_batch` training prompts of every CD data set;
     rows go into the run directory's shards (`cd_offline/KEY/`), as the serial backend writes them.
  2. CD value heads: one training task per CD method without a head in `cd_heads/NAME/`; the driver writes
     the returned files (weights first, the config that marks a head complete last).
  3. SRS Monte Carlo samples (`threshold: mc | predicted`): every record missing from `mc_cache/` (the test
     prompts of each `mc` method, the training prompts of each `predicted` method lacking a predictor), cut
     into the very sampling calls the serial backend makes (so the rewards match it bit for bit); the
     driver writes the records, as `mc_samples` does, so serial and Ray runs resume from each other's cache.
  4. Threshold predictors: one fit per `predicted` method lacking a current one in
     `threshold_predictors/NAME/` (the worker computes the prompt features); the driver writes its files.
  5. Decoding: every unfinished (method, prompt batch) unit, handed its value head, its predictor or its
     prompts' MC rewards (and their sampling cost, which the serial decode would have charged to it); rows
     go to `generations.jsonl`.
  6. Evaluation scoring: the coherence of every row, in chunks, on the workers' encoders; the driver's
     evaluation then reads the scores instead of loading the encoder (the gold judge is a cheap function of
     the world, an LLM judge already runs its calls concurrently).

A sweep (`ray_pool`) keeps one `WorkerPool` for all its values: each value's run hands its units to the
same actors, and every call names the run's recipe and directory (`Worker.run`), so an actor switches to a
new value's recipe on its first unit, keeping its loaded models when the value names the same ones and
rebuilding everything derived from the recipe (method plans and their generators, prompts, out_dir).

A unit's result depends only on its inputs (per-prompt seeds; the serial backend's batch cut), so results
arrive in any order and the rows equal the serial backend's. A dead actor is restarted (`max_restarts`)
and its unfinished calls retried on it; a killed driver loses only results it had not written, and the same
command recomputes exactly those.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from stackalign.runner.backends.common import Done, Job, decode_units
from stackalign.runner.backends.worker import DELAY_ENV, FAULT_ENV, Worker


def connect(backend) -> bool:
    """Attach to `backend.address` (or $RAY_ADDRESS), else start a local Ray instance big enough for the
    workers. Returns True when this call started Ray (and should shut it down)."""
    import ray

    if ray.is_initialized():
        return False
    address = backend.address or os.environ.get("RAY_ADDRESS") or None
    kwargs: dict = {"include_dashboard": False, "log_to_driver": False, "configure_logging": False}
    if address is None:
        # a local instance: room for every worker even on a small machine (they then share its cores)
        need = backend.workers * backend.cpus_per_worker
        kwargs["num_cpus"] = max(os.cpu_count() or 1, int(need + 0.999))
    else:
        from stackalign.recipe_base import RecipeError
        from stackalign.runner.preflight import ray_address_problem

        why = ray_address_problem(address)  # ray.init would wait for minutes
        if why is not None:
            raise RecipeError(f"backend.address: {why}")
    ray.init(address=address, **kwargs)
    return True


class WorkerPool:
    """Ray actors (`Worker`) kept across runs: a sweep's values share them, and with them the loaded models.

    `actors(job)` hands a run its `backend.workers` actors, started on the first call and reused after it (a
    run of another recipe switches each actor to its recipe on the actor's first unit, see `Worker.run`);
    `close` kills them. A run whose backend asks for other actors (count, resources, restarts, test hooks)
    gets new ones."""

    def __init__(self) -> None:
        self._actors: list = []
        self._key: tuple | None = None
        self.started = 0  # actors started over the pool's life

    def actors(self, job: Job) -> list:
        key = _actor_key(job.recipe.backend)
        if self._actors and key != self._key:
            self.close()
        if not self._actors:
            self._actors = _start_actors(job)
            self._key = key
            self.started += len(self._actors)
        return self._actors

    def close(self) -> None:
        import ray

        for a in self._actors:
            ray.kill(a)
        self._actors, self._key = [], None


@contextmanager
def ray_pool(backend) -> Iterator[WorkerPool]:
    """Ray connected (`connect`) for the block, and shut down at its end when this call started it: the
    runs inside attach to it instead of starting and stopping Ray each (`stackalign sweep`: one per value).
    Yields a `WorkerPool` the runs share (`execute(..., workers=)`): their actors and loaded models are
    started once for the block and killed at its end."""
    started = connect(backend)
    pool = WorkerPool()
    try:
        yield pool
    finally:
        try:
            pool.close()
        finally:
            if started:
                import ray

                ray.shutdown()


def _actor_key(backend) -> tuple:
    """What an actor is started with, besides its first recipe: a kept actor serves runs that agree on it."""
    env = tuple((k, os.environ.get(k)) for k in (FAULT_ENV, DELAY_ENV))
    return (backend.workers, backend.cpus_per_worker, backend.gpus_per_worker, backend.max_restarts, env)


def _start_actors(job: Job) -> list:
    """`backend.workers` new `Worker` actors, each loading `job`'s recipe's models."""
    import ray

    b = job.recipe.backend
    env = {k: os.environ[k] for k in (FAULT_ENV, DELAY_ENV) if os.environ.get(k)}
    Actor = ray.remote(
        num_cpus=b.cpus_per_worker,
        num_gpus=b.gpus_per_worker,
        max_restarts=b.max_restarts,
        max_task_retries=b.max_restarts,
    )(Worker)
    threads = max(1, int(b.cpus_per_worker))
    opts = {"runtime_env": {"env_vars": env}} if env else {}
    recipe_data = job.recipe.to_dict()
    return [Actor.options(**opts).remote(recipe_data, str(job.out), threads) for _ in range(b.workers)]


def _check_resources(backend) -> None:
    import ray

    have = ray.cluster_resources()
    for key, per in (("CPU", backend.cpus_per_worker), ("GPU", backend.gpus_per_worker)):
        need = per * backend.workers
        if need > have.get(key, 0) + 1e-9:
            raise ValueError(
                f"backend: {backend.workers} workers x {per} {key} need {need:g} {key}s, the Ray cluster has "
                f"{have.get(key, 0):g}; lower backend.workers or backend.{key.lower()}s_per_worker"
            )


def _write_head(head_dir: Path, files: dict[str, bytes], config_name: str | None = None) -> None:
    """Write a trained head's (or threshold predictor's) files; the config (`config_name`, default the value
    head's: whose presence marks a complete head) goes last, atomically."""
    from stackalign.decoding.value_head import CONFIG_NAME

    config_name = config_name or CONFIG_NAME
    head_dir.mkdir(parents=True, exist_ok=True)
    for name in sorted(files, key=lambda n: n == config_name):
        tmp = head_dir / f"{name}.tmp{os.getpid()}"
        tmp.write_bytes(files[name])
        os.replace(tmp, head_dir / name)


def _read_head(head_dir: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in head_dir.iterdir() if p.is_file() and ".tmp" not in p.name}


@dataclass
class _MCChunk:
    """One sampling + scoring call of the MC phase: `prompts` (cache files `paths`) with `sp`'s settings.
    `unit`: the decode unit whose serial decode would have made this call (its rows pay the cost); None for
    a predictor's training prompts."""

    sp: Any  # runner.methods.SRSPlan
    prompts: list[str]
    paths: list[Path]
    unit: int | None


@dataclass
class _ThresholdPhases:
    """The driver's plan of the SRS threshold phases (see `_plan_thresholds`)."""

    srs: dict[int, Any] = field(default_factory=dict)  # plan index -> SRSPlan (its units need thresholds)
    chunks: list[_MCChunk] = field(default_factory=list)
    to_fit: list[int] = field(default_factory=list)  # `predicted` methods without a usable predictor
    predictors: dict[int, dict[str, bytes]] = field(default_factory=dict)  # plan index -> predictor files
    unit_paths: dict[int, list[Path]] = field(default_factory=dict)  # `mc` unit -> its prompts' records


def _plan_thresholds(job: Job, units: list[tuple[int, list[int]]], ids: tuple[str, str]) -> _ThresholdPhases:
    """Plan the MC and predictor phases the way the serial backend meets them (methods in recipe order; a
    `predicted` method's training prompts before its units; a unit's uncached prompts in one call, a
    predictor's in `mc_chunks` of its batch size), so every record is sampled by the same call as serially,
    byte for byte, and only records neither cached in `mc_cache/` nor planned earlier are sampled."""
    from stackalign.decoding.mc import mc_chunks, mc_record_path, read_mc_record
    from stackalign.decoding.threshold_predictor import CONFIG_NAME, WEIGHTS_NAME
    from stackalign.runner.methods import (
        cached_threshold_predictor,
        predictor_train_prompts,
        srs_plan,
        threshold_plan,
    )

    root = job.out / "mc_cache"
    ph = _ThresholdPhases()
    planned: set[Path] = set()

    def need(sp, prompts: list[str], unit: int | None) -> list[Path]:
        paths = [mc_record_path(root, ids[0], ids[1], p, sp.n, sp.generation) for p in prompts]
        todo = []
        for j, (p, path) in enumerate(zip(prompts, paths)):
            if path not in planned and read_mc_record(path, p, sp.n) is None:
                planned.add(path)
                todo.append(j)
        for c in mc_chunks(todo, sp.chunk_size):
            ph.chunks.append(_MCChunk(sp, [prompts[j] for j in c], [paths[j] for j in c], unit))
        return paths

    with_units = {pi for pi, _ in units}
    for pi, plan in enumerate(job.plans):
        sp = srs_plan(threshold_plan(plan), job.recipe, job.world, job.stops, job.out)
        if sp is None or pi not in with_units:
            continue
        ph.srs[pi] = sp
        if sp.source == "predicted":
            if cached_threshold_predictor(sp) is not None:
                src = Path(sp.predictor_path) if sp.predictor_path else sp.predictor_dir
                ph.predictors[pi] = {n: (src / n).read_bytes() for n in (WEIGHTS_NAME, CONFIG_NAME)}
            else:
                need(sp, predictor_train_prompts(sp), None)
                ph.to_fit.append(pi)
            continue
        for u, (upi, uids) in enumerate(units):
            if upi == pi:
                ph.unit_paths[u] = need(sp, [job.prompts[i] for i in uids], u)
    return ph


def _mc_rewards(
    paths: list[Path], prompts: list[str], n: int, got: dict[Path, list[float]]
) -> list[list[float]]:
    """The MC rewards of `prompts`: sampled in this run (`got`) or read from the cache."""
    from stackalign.decoding.mc import read_mc_record

    out = []
    for path, p in zip(paths, prompts):
        if path not in got:
            hit = read_mc_record(path, p, n)
            if hit is None:  # not expected: planned records are written before they are read
                raise RuntimeError(f"ray backend: the MC record {path} of a planned prompt is missing")
            got[path] = hit[1]
        out.append(got[path])
    return out


def _cached_share(paths: list[Path], prompts: list[str], n: int, sampled: set[Path]):
    """What a unit's serial decode charges for the records it finds cached (not sampled for it in this run):
    each record's share of the cost of the run that sampled it (`mc_samples(charge_cached=True)`)."""
    from stackalign.decoding.common import Cost
    from stackalign.decoding.mc import read_mc_record

    cost = Cost()
    for path, p in zip(paths, prompts):
        if path not in sampled:
            hit = read_mc_record(path, p, n)
            if hit is not None:
                cost.merge(hit[2])
    return cost


def run_ray(job: Job) -> Done:
    """Run every unfinished unit of `job` on `backend.workers` Ray actors (see the module docstring)."""
    import ray
    from ray.util import ActorPool

    from stackalign.decoding.cd_data import OfflineData, OfflineShards, offline_meta
    from stackalign.runner.methods import cd_head_is_current, cd_plan

    b = job.recipe.backend
    units = decode_units(job)
    if not units:
        return Done()
    started = connect(b)
    actors = []
    kept = job.workers is not None  # a sweep's pool: its actors outlive this run
    try:
        _check_resources(b)
        actors = job.workers.actors(job) if kept else _start_actors(job)
        pool = ActorPool(actors)
        # every call names this run's recipe and directory: a kept actor (or one Ray restarted with the
        # recipe it was started with) switches to them before computing (Worker.run)
        spec = (ray.put(job.recipe.to_dict()), str(job.out))

        def call(method: str):
            return lambda a, v: a.run.remote(*spec, method, *v)

        # plan the CD phases (driver side: paths, what is on disk)
        cd_pis = sorted({pi for pi, _ in units if job.plans[pi].decoder.startswith("cd_")})
        heads: dict[int, dict[str, bytes]] = {}
        to_train: list[int] = []
        shards: dict[Path, OfflineShards] = {}
        sample_units: list[tuple[Path, int, list[int]]] = []  # (data set, a CD method using it, ids)
        plans_cd = {pi: cd_plan(job.plans[pi], job.recipe, job.world, job.stops, job.out) for pi in cd_pis}
        name = ray.get(actors[0].run.remote(*spec, "model_name")) if cd_pis else None
        # plan the SRS threshold phases (driver side: cache keys, what is on disk)
        from stackalign.decoding.threshold_predictor import CONFIG_NAME as PREDICTOR_CONFIG
        from stackalign.runner.methods import predictor_train_prompts, srs_plan, threshold_plan

        has_srs = any(
            srs_plan(threshold_plan(job.plans[pi]), job.recipe, None, [], job.out)
            for pi in {pi for pi, _ in units}
        )
        mc_ids = ray.get(actors[0].run.remote(*spec, "mc_ids")) if has_srs else ("", "")
        th = _plan_thresholds(job, units, mc_ids)
        for pi in cd_pis:
            cp = plans_cd[pi]
            if cp.data_dir not in shards:
                meta = offline_meta(name, cp.train_prompts, cp.data, job.stops)
                shards[cp.data_dir] = OfflineShards(cp.data_dir, meta, cp.data)
                todo = shards[cp.data_dir].todo()
                n = cp.data.prompts_per_batch
                sample_units += [(cp.data_dir, pi, todo[s : s + n]) for s in range(0, len(todo), n)]
            if cd_head_is_current(cp):
                heads[pi] = _read_head(cp.head_dir)
            else:
                to_train.append(pi)

        bar = tqdm(
            total=len(sample_units) + len(to_train) + len(th.chunks) + len(th.to_fit) + len(units),
            desc=f"ray x{b.workers}",
            unit="unit",
            disable=not job.progress,
        )
        # 1. CD offline data
        for _, pi, idx in sample_units:
            pool.submit(call("cd_sample"), (pi, idx))
        while pool.has_next():
            pi, rows = pool.get_next_unordered()
            shards[plans_cd[pi].data_dir].append(rows)
            bar.update(1)
        # 2. CD value heads
        for pi in to_train:
            data = OfflineData.load(plans_cd[pi].data_dir)
            pool.submit(call("cd_train"), (pi, ray.put(data.rows), data.meta))
        while pool.has_next():
            pi, files = pool.get_next_unordered()
            _write_head(plans_cd[pi].head_dir, files)  # at once: a killed driver keeps every finished head
            heads[pi] = files
            bar.update(1)
        # 3. SRS Monte Carlo samples: the records go into mc_cache/ (the files mc_samples writes)
        got: dict[Path, list[float]] = {}  # cache file -> rewards sampled in this run
        unit_cost: dict[int, object] = {}
        sampled_for: dict[int, set[Path]] = {}  # unit -> the records sampled for it in this run
        from stackalign.decoding.mc import write_mc_record

        for k, ch in enumerate(th.chunks):
            pool.submit(call("mc_sample"), (k, ch.prompts, ch.sp.n, ch.sp.generation, mc_ids))
        while pool.has_next():
            k, records, cost = pool.get_next_unordered()
            ch = th.chunks[k]
            for path, rec in zip(ch.paths, records):
                write_mc_record(path, rec)
                got[path] = rec["rewards"]
            if ch.unit is not None:
                unit_cost[ch.unit] = cost
                sampled_for[ch.unit] = set(ch.paths)
            bar.update(1)
        # 4. threshold predictors: one fit per `predicted` method lacking one
        from stackalign.decoding.mc import mc_record_path

        for pi in th.to_fit:
            sp = th.srs[pi]
            prompts = predictor_train_prompts(sp)
            paths = [mc_record_path(job.out / "mc_cache", *mc_ids, p, sp.n, sp.generation) for p in prompts]
            pool.submit(call("fit_predictor"), (pi, _mc_rewards(paths, prompts, sp.n, got)))
        while pool.has_next():
            pi, files = pool.get_next_unordered()
            _write_head(th.srs[pi].predictor_dir, files, PREDICTOR_CONFIG)  # config last: marks it complete
            th.predictors[pi] = files
            bar.update(1)
        # 5. decoding
        head_refs = {pi: ray.put(files) for pi, files in heads.items()}
        pred_refs = {pi: ray.put(files) for pi, files in th.predictors.items()}
        for u, (pi, ids) in enumerate(units):
            mc = None
            if u in th.unit_paths:
                prompts = [job.prompts[i] for i in ids]
                rewards = _mc_rewards(th.unit_paths[u], prompts, th.srs[pi].n, got)
                cost = _cached_share(th.unit_paths[u], prompts, th.srs[pi].n, sampled_for.get(u, set()))
                if unit_cost.get(u) is not None:
                    cost.merge(unit_cost[u])
                mc = {"rewards": rewards, "cost": cost}
            pool.submit(call("decode"), (pi, ids, head_refs.get(pi), pred_refs.get(pi), mc))
        while pool.has_next():
            rows = pool.get_next_unordered()
            job.store.append(rows)
            bar.update(1)
        bar.close()
        # 6. evaluation scoring: the coherence encoder on the workers, every row of the run directory
        coherence = _coherence_on(pool, job, b.workers, call) if job.recipe.evaluation.coherence else None
        tasks = {
            "cd_sample": len(sample_units),
            "cd_train": len(to_train),
            "mc_sample": len(th.chunks),
            "fit_predictor": len(th.to_fit),
            "decode": len(units),
        }
        workers = ray.get([a.info.remote() for a in actors])
    finally:
        if not kept:
            for a in actors:
                ray.kill(a)
        if started:
            ray.shutdown()
    return Done(coherence=coherence, tasks=tasks, workers=workers)


class PrecomputedCoherence:
    """A coherence scorer that answers from scores computed elsewhere (pairs it lacks: the recipe's scorer)."""

    def __init__(self, scores: dict[tuple[str, str], float], recipe):
        self.scores = scores
        self.recipe = recipe

    def score(self, prompts: list[str], texts: list[str]) -> list[float]:
        missing = [(p, t) for p, t in zip(prompts, texts) if (p, t) not in self.scores]
        if missing:  # not expected: the workers scored every row; computed here rather than failing
            from stackalign.runner.context import coherence_scorer

            values = coherence_scorer(self.recipe).score([p for p, _ in missing], [t for _, t in missing])
            self.scores.update(zip(missing, map(float, values)))
        return [self.scores[(p, t)] for p, t in zip(prompts, texts)]


def _coherence_on(pool, job: Job, workers: int, call) -> PrecomputedCoherence:
    """Score the coherence of every row (prompt, response cut at the evaluation's stop strings) on the pool."""
    from stackalign.evaluation.metrics import clean_response
    from stackalign.runner.context import eval_stop_strings

    stops = eval_stop_strings(job.recipe)
    pairs = sorted({(r["prompt"], clean_response(r["response"], stops)) for r in job.store.rows})
    size = max(1, -(-len(pairs) // (4 * workers)))  # a few chunks per worker: balance without tiny calls
    chunks = [pairs[s : s + size] for s in range(0, len(pairs), size)]
    for k, chunk in enumerate(chunks):
        pool.submit(call("coherence"), (k, [p for p, _ in chunk], [t for _, t in chunk]))
    scores: dict[tuple[str, str], float] = {}
    while pool.has_next():
        k, values = pool.get_next_unordered()
        scores.update(zip(chunks[k], values))
    return PrecomputedCoherence(scores, job.recipe)

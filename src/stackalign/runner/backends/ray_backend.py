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


@dataclass
class _CDPhases:
    """The driver's plan of the CD phases (see `_plan_cd`)."""

    plans: dict[int, Any] = field(default_factory=dict)  # plan index -> runner.methods.CDPlan
    shards: dict[Path, Any] = field(default_factory=dict)  # data set -> its OfflineShards
    sample_units: list[tuple[Path, int, list[int]]] = field(default_factory=list)  # (data set, a method, ids)
    heads: dict[int, dict[str, bytes]] = field(default_factory=dict)  # plan index -> a current head's files
    to_train: list[int] = field(default_factory=list)  # CD methods without a current value head


def _plan_cd(job: Job, units: list[tuple[int, list[int]]], ask) -> _CDPhases:
    """Plan the CD phases on the driver (paths, what is on disk): the missing chunks of every CD data set's
    offline rows, and the value heads to train. `ask(method)`: a worker's answer (the policy's name)."""
    from stackalign.decoding.cd_data import OfflineShards, offline_meta
    from stackalign.runner.methods import cd_head_is_current, cd_plan

    cd = _CDPhases()
    for pi in sorted({pi for pi, _ in units if job.plans[pi].decoder.startswith("cd_")}):
        cd.plans[pi] = cd_plan(job.plans[pi], job.recipe, job.world, job.stops, job.out)
    name = ask("model_name") if cd.plans else None
    for pi, cp in cd.plans.items():
        if cp.data_dir not in cd.shards:
            meta = offline_meta(name, cp.train_prompts, cp.data, job.stops)
            cd.shards[cp.data_dir] = OfflineShards(cp.data_dir, meta, cp.data)
            todo = cd.shards[cp.data_dir].todo()
            n = cp.data.prompts_per_batch
            cd.sample_units += [(cp.data_dir, pi, todo[s : s + n]) for s in range(0, len(todo), n)]
        if cd_head_is_current(cp):
            cd.heads[pi] = _read_head(cp.head_dir)
        else:
            cd.to_train.append(pi)
    return cd


def _has_srs(job: Job, units: list[tuple[int, list[int]]]) -> bool:
    """Whether a method with unfinished units shapes with an SRS threshold (the MC phases may have work)."""
    from stackalign.runner.methods import srs_plan, threshold_plan

    return any(
        srs_plan(threshold_plan(job.plans[pi]), job.recipe, None, [], job.out)
        for pi in {pi for pi, _ in units}
    )


@dataclass
class _Calls:
    """The run's actor pool: every call names the run's recipe and directory (`spec`), so a kept actor (or
    one Ray restarted with the recipe it was started with) switches to them before computing (`Worker.run`).
    Each result taken counts one unit on `bar`."""

    pool: Any  # ray.util.ActorPool
    spec: tuple  # (the recipe's object ref, the run directory)
    bar: Any = None

    def submit(self, method: str, args: tuple) -> None:
        self.pool.submit(lambda a, v: a.run.remote(*self.spec, method, *v), args)

    def results(self, counted: bool = True) -> Iterator[Any]:
        """The submitted calls' results in the order they finish."""
        while self.pool.has_next():
            yield self.pool.get_next_unordered()
            if counted:
                self.bar.update(1)


def _sample_cd(calls: _Calls, cd: _CDPhases) -> None:
    """Phase 1, CD offline data: each missing chunk sampled on a worker, its rows appended to the shards."""
    for _, pi, idx in cd.sample_units:
        calls.submit("cd_sample", (pi, idx))
    for pi, rows in calls.results():
        cd.shards[cd.plans[pi].data_dir].append(rows)


def _train_cd_heads(calls: _Calls, cd: _CDPhases) -> None:
    """Phase 2, CD value heads: one training task per method lacking a current head."""
    import ray

    from stackalign.decoding.cd_data import OfflineData

    for pi in cd.to_train:
        data = OfflineData.load(cd.plans[pi].data_dir)
        calls.submit("cd_train", (pi, ray.put(data.rows), data.meta))
    for pi, files in calls.results():
        _write_head(cd.plans[pi].head_dir, files)  # at once: a killed driver keeps every finished head
        cd.heads[pi] = files


@dataclass
class _MCSampled:
    """What the MC phase sampled in this run."""

    got: dict[Path, list[float]] = field(default_factory=dict)  # cache file -> rewards
    unit_cost: dict[int, object] = field(default_factory=dict)  # decode unit -> the sampling cost it pays
    sampled_for: dict[int, set[Path]] = field(default_factory=dict)  # decode unit -> its records sampled here


def _sample_mc(calls: _Calls, th: _ThresholdPhases, mc_ids: tuple[str, str]) -> _MCSampled:
    """Phase 3, SRS Monte Carlo samples: the records go into mc_cache/ (the files `mc_samples` writes)."""
    from stackalign.decoding.mc import write_mc_record

    mc = _MCSampled()
    for k, ch in enumerate(th.chunks):
        calls.submit("mc_sample", (k, ch.prompts, ch.sp.n, ch.sp.generation, mc_ids))
    for k, records, cost in calls.results():
        ch = th.chunks[k]
        for path, rec in zip(ch.paths, records):
            write_mc_record(path, rec)
            mc.got[path] = rec["rewards"]
        if ch.unit is not None:
            mc.unit_cost[ch.unit] = cost
            mc.sampled_for[ch.unit] = set(ch.paths)
    return mc


def _fit_predictors(
    calls: _Calls, job: Job, th: _ThresholdPhases, mc_ids: tuple[str, str], got: dict[Path, list[float]]
) -> None:
    """Phase 4, threshold predictors: one fit per `predicted` method lacking one, on its training prompts'
    MC rewards."""
    from stackalign.decoding.mc import mc_record_path
    from stackalign.decoding.threshold_predictor import CONFIG_NAME
    from stackalign.runner.methods import predictor_train_prompts

    for pi in th.to_fit:
        sp = th.srs[pi]
        prompts = predictor_train_prompts(sp)
        paths = [mc_record_path(job.out / "mc_cache", *mc_ids, p, sp.n, sp.generation) for p in prompts]
        calls.submit("fit_predictor", (pi, _mc_rewards(paths, prompts, sp.n, got)))
    for pi, files in calls.results():
        _write_head(th.srs[pi].predictor_dir, files, CONFIG_NAME)  # config last: marks it complete
        th.predictors[pi] = files


def _decode(
    calls: _Calls,
    job: Job,
    units: list[tuple[int, list[int]]],
    heads: dict[int, dict[str, bytes]],
    th: _ThresholdPhases,
    mc: _MCSampled,
) -> None:
    """Phase 5, decoding: each unit handed its value head, its predictor or its prompts' MC rewards (and their
    sampling cost, which the serial decode would have charged to it); its rows go to generations.jsonl."""
    import ray

    head_refs = {pi: ray.put(files) for pi, files in heads.items()}
    pred_refs = {pi: ray.put(files) for pi, files in th.predictors.items()}
    for u, (pi, ids) in enumerate(units):
        records = None
        if u in th.unit_paths:
            prompts = [job.prompts[i] for i in ids]
            n = th.srs[pi].n
            rewards = _mc_rewards(th.unit_paths[u], prompts, n, mc.got)
            cost = _cached_share(th.unit_paths[u], prompts, n, mc.sampled_for.get(u, set()))
            if mc.unit_cost.get(u) is not None:
                cost.merge(mc.unit_cost[u])
            records = {"rewards": rewards, "cost": cost}
        calls.submit("decode", (pi, ids, head_refs.get(pi), pred_refs.get(pi), records))
    for rows in calls.results():
        job.store.append(rows)


def run_ray(job: Job) -> Done:
    """Run every unfinished unit of `job` on `backend.workers` Ray actors (see the module docstring)."""
    import ray
    from ray.util import ActorPool

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
        calls = _Calls(ActorPool(actors), (ray.put(job.recipe.to_dict()), str(job.out)))

        def ask(method: str) -> Any:
            return ray.get(actors[0].run.remote(*calls.spec, method))

        cd = _plan_cd(job, units, ask)
        mc_ids = ask("mc_ids") if _has_srs(job, units) else ("", "")
        th = _plan_thresholds(job, units, mc_ids)
        tasks = {
            "cd_sample": len(cd.sample_units),
            "cd_train": len(cd.to_train),
            "mc_sample": len(th.chunks),
            "fit_predictor": len(th.to_fit),
            "decode": len(units),
        }
        calls.bar = tqdm(
            total=sum(tasks.values()), desc=f"ray x{b.workers}", unit="unit", disable=not job.progress
        )
        _sample_cd(calls, cd)
        _train_cd_heads(calls, cd)
        mc = _sample_mc(calls, th, mc_ids)
        _fit_predictors(calls, job, th, mc_ids, mc.got)
        _decode(calls, job, units, cd.heads, th, mc)
        calls.bar.close()
        # 6. evaluation scoring: the coherence encoder on the workers, every row of the run directory
        coherence = _coherence_on(calls, job, b.workers) if job.recipe.evaluation.coherence else None
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


def _coherence_on(calls: _Calls, job: Job, workers: int) -> PrecomputedCoherence:
    """Score the coherence of every row (prompt, response cut at the evaluation's stop strings) on the pool."""
    from stackalign.evaluation.metrics import clean_response
    from stackalign.runner.context import eval_stop_strings

    stops = eval_stop_strings(job.recipe)
    pairs = sorted({(r["prompt"], clean_response(r["response"], stops)) for r in job.store.rows})
    size = max(1, -(-len(pairs) // (4 * workers)))  # a few chunks per worker: balance without tiny calls
    chunks = [pairs[s : s + size] for s in range(0, len(pairs), size)]
    for k, chunk in enumerate(chunks):
        calls.submit("coherence", (k, [p for p, _ in chunk], [t for _, t in chunk]))
    scores: dict[tuple[str, str], float] = {}
    for k, values in calls.results(counted=False):
        scores.update(zip(chunks[k], values))
    return PrecomputedCoherence(scores, job.recipe)

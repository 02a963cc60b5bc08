"""What both backends share: the job, the units, and the rows of a decoded batch."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from stackalign.store import JsonlStore


@dataclass
class Job:
    """One run's work, prepared by `runner.run.execute` (run directory reconciled, config.json written)."""

    recipe: Any  # runner.recipe.Recipe
    out: Path
    world: Any
    prompts: list[str]
    stops: list[str]
    plans: list  # runner.methods.MethodPlan, in recipe order
    store: JsonlStore  # generations.jsonl; only the driver appends to it
    progress: bool = True
    # Ray: a kept `ray_backend.WorkerPool` (a sweep's) to run on; None: the run starts and kills its own actors
    workers: Any = None


@dataclass
class Done:
    """What a backend hands to the evaluation: the serial backend's Context (its models) and/or a coherence
    scorer holding scores the workers computed."""

    ctx: Any = None
    coherence: Any = None
    tasks: dict = field(default_factory=dict)  # Ray: tasks run per phase (cd_sample, mc_sample, decode, ...)
    workers: list = field(default_factory=list)  # Ray: each actor's Worker.info() (pid, loads, switches)


def decode_units(job: Job) -> list[tuple[int, list[int]]]:
    """(plan index, prompt ids) of every unfinished batch: each method's missing prompts, in order, cut into
    `generation.batch_size` chunks (the serial loop's cut, so both backends decode the same batches)."""
    bs = job.recipe.generation.batch_size
    units = []
    for pi, plan in enumerate(job.plans):
        todo = [i for i in range(len(job.prompts)) if not job.store.done(method=plan.name, prompt_id=i)]
        units += [(pi, todo[s : s + bs]) for s in range(0, len(todo), bs)]
    return units


def decode_rows(ctx, method: str, generate, ids: list[int]) -> list[dict]:
    """Decode prompts `ids` of `ctx.prompts` with `generate` and score them: one row per prompt.

    Row: prompt_id, method, prompt, response, proxy_reward, gold_reward (or None), seconds (the batch's wall
    time shared equally by its prompts), lm_tokens, rm_tokens; and `scorer` ({name, reason}) when the
    decoder records one (ARGS: which reward-model scorer ran, and why not a faster one)."""
    prompts = [ctx.prompts[i] for i in ids]
    t0 = time.perf_counter()
    outs = generate(prompts)
    elapsed = time.perf_counter() - t0
    responses = [o["response"] for o in outs]
    proxy = ctx.reward(prompts, responses).tolist()
    scorer = getattr(generate, "scorer", None)
    return [
        {
            "prompt_id": i,
            "method": method,
            "prompt": prompts[j],
            "response": o["response"],
            "proxy_reward": float(proxy[j]),
            "gold_reward": float(ctx.gold(prompts[j], o["response"])) if ctx.gold else None,
            "seconds": elapsed / len(ids),
            "lm_tokens": int(o.get("lm_tokens", 0)),
            "rm_tokens": int(o.get("rm_tokens", 0)),
            **({"scorer": scorer} if scorer else {}),
        }
        for j, (i, o) in enumerate(zip(ids, outs))
    ]

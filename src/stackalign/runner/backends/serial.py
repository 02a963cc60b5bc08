"""The serial backend: the models loaded once in this process, the units decoded one after another."""

from __future__ import annotations

from tqdm.auto import tqdm

from stackalign.runner.backends.common import Done, Job, decode_rows, decode_units


def run_serial(job: Job) -> Done:
    """Decode every unfinished unit here, method by method; returns the Context (its models serve the
    evaluation)."""
    from stackalign.runner.context import build_context
    from stackalign.runner.methods import make_method

    ctx = build_context(job.recipe, job.out, world=job.world, prompts=job.prompts, stops=job.stops)
    units = decode_units(job)
    for pi, plan in enumerate(job.plans):
        batches = [ids for p, ids in units if p == pi]
        if not batches:
            continue
        generate = make_method(plan, ctx)  # CD's offline data and value head are made here, once
        bar = tqdm(
            total=sum(map(len, batches)), desc=f"{plan.name:>14s}", disable=not job.progress, unit="prompt"
        )
        for ids in batches:
            job.store.append(decode_rows(ctx, plan.name, generate, ids))
            bar.update(len(ids))
        bar.close()
    return Done(ctx=ctx)

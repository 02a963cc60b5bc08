"""Where a run's work runs: `serial` (one process, the models loaded once) or `ray` (Ray actors).

Both backends get the same `Job` and write the same rows: the work is cut into units (a method x a batch of
prompts, cut exactly as the serial loop cuts it), every row depends only on its prompt (per-prompt seeds), and
the driver is the single writer of `generations.jsonl` (and of the CD offline data and value heads), so a
driver killed at any moment resumes from what it wrote.
"""

from __future__ import annotations

from stackalign.runner.backends.common import Done, Job, decode_rows, decode_units

__all__ = ["Done", "Job", "decode_rows", "decode_units", "run_backend"]


def run_backend(job: Job) -> Done:
    """Run every unfinished unit of `job` on its recipe's backend; `Done` carries what the evaluation can
    reuse (the serial backend's loaded models, the Ray workers' coherence scores)."""
    kind = job.recipe.backend.kind
    if kind == "serial":
        from stackalign.runner.backends.serial import run_serial

        return run_serial(job)
    if kind == "ray":
        from stackalign.runner.backends.ray_backend import run_ray

        return run_ray(job)
    raise ValueError(f"backend.kind: unknown backend {kind!r}")  # pragma: no cover (the schema checks it)

"""A backend worker: loads the recipe's models once and computes units on request (no Ray import here, so
the same class runs in a Ray actor or in-process).

A worker writes nothing to the run directory: it returns rows (and a trained value head's files) to the
driver, which is their single writer. That keeps the run directory consistent however workers die, and lets
workers run on other nodes that do not share the driver's disk.
"""

from __future__ import annotations

import os
import signal
import tempfile
import time
from pathlib import Path

# Test hooks (environment variables, handed to the actors by the driver):
# STACKALIGN_RAY_FAULT="MARKER:N" makes the worker process kill itself (SIGKILL) at its N-th decode unit, once
# per MARKER file (a restarted worker finds the marker and carries on): a worker lost mid-run.
# STACKALIGN_RAY_DELAY=S sleeps S seconds before each decode unit: a run slow enough to kill its driver mid-way.
FAULT_ENV = "STACKALIGN_RAY_FAULT"
DELAY_ENV = "STACKALIGN_RAY_DELAY"


class Worker:
    """The models of one recipe, loaded once; `decode`, `cd_sample`, `cd_train` compute units."""

    def __init__(self, recipe_data: dict, out_dir: str, threads: int | None = None):
        import torch

        from stackalign.runner.methods import resolve_method
        from stackalign.runner.recipe import recipe_from_dict
        from stackalign.runner.run import build_context, load_world_and_prompts

        if threads is not None:
            torch.set_num_threads(threads)
        recipe = recipe_from_dict(recipe_data)
        world, prompts, stops = load_world_and_prompts(recipe)
        # out_dir is only recorded: the CD phases that write there run on the driver's side of the protocol
        self.ctx = build_context(recipe, Path(out_dir), world=world, prompts=prompts, stops=stops)
        self.plans = [resolve_method(m, i) for i, m in enumerate(recipe.methods)]
        self._generators: dict[int, object] = {}
        self._decoded = 0
        self._coherence = None

    def ready(self) -> int:
        """The worker's process id (also: the models are loaded)."""
        return os.getpid()

    def model_name(self) -> str | None:
        from stackalign.decoding.cd_data import model_name

        return model_name(self.ctx.policy)

    def decode(self, pi: int, ids: list[int], head_files: dict[str, bytes] | None = None) -> list[dict]:
        """The rows of method `pi` on prompts `ids` (`head_files`: a CD method's trained value head)."""
        from stackalign.runner.backends.common import decode_rows
        from stackalign.runner.methods import make_method

        self._decoded += 1
        _maybe_fault(self._decoded)
        if os.environ.get(DELAY_ENV):
            time.sleep(float(os.environ[DELAY_ENV]))
        if pi not in self._generators:
            head = _load_head(head_files) if head_files is not None else None
            self._generators[pi] = make_method(self.plans[pi], self.ctx, head=head)
        return decode_rows(self.ctx, self.plans[pi].name, self._generators[pi], ids)

    def cd_sample(self, pi: int, idx: list[int]) -> tuple[int, list[dict]]:
        """(pi, offline CD rows: N base samples and their rewards) of training prompts `idx` of method `pi`."""
        from stackalign.decoding.cd_data import sample_offline_rows
        from stackalign.runner.methods import cd_plan

        c = self.ctx
        cp = cd_plan(self.plans[pi], c.recipe, c.world, c.stop_strings, c.out_dir)
        return pi, sample_offline_rows(
            c.policy, c.tokenizer, c.reward, cp.train_prompts, idx, cp.data, stop_strings=c.stop_strings
        )

    def cd_train(self, pi: int, rows: list[dict], meta: dict) -> tuple[int, dict[str, bytes]]:
        """Train method `pi`'s value head on the offline rows; returns (pi, the saved head's files)."""
        from stackalign.decoding.cd_data import OfflineData
        from stackalign.decoding.value_head import train_value_head
        from stackalign.runner.methods import cd_plan, cd_shaper

        c = self.ctx
        plan = self.plans[pi]
        cp = cd_plan(plan, c.recipe, c.world, c.stop_strings, c.out_dir)
        data = OfflineData(rows, meta)
        with tempfile.TemporaryDirectory(prefix="stackalign-head-") as tmp:
            train_value_head(
                c.policy,
                data.examples(cd_shaper(plan)),
                cp.value,
                out_dir=tmp,
                extra=cp.extra,
                progress=False,
            )
            return pi, {p.name: p.read_bytes() for p in Path(tmp).iterdir() if p.is_file()}

    def coherence(self, tag: int, prompts: list[str], texts: list[str]) -> tuple[int, list[float]]:
        """(tag, the recipe's coherence score of each (prompt, cleaned response) pair); the encoder loads
        once per worker."""
        from stackalign.runner.run import coherence_scorer

        if self._coherence is None:
            self._coherence = coherence_scorer(self.ctx.recipe)
        return tag, [float(v) for v in self._coherence.score(prompts, texts)]


def _load_head(files: dict[str, bytes]):
    from stackalign.decoding.value_head import load_value_head

    with tempfile.TemporaryDirectory(prefix="stackalign-head-") as tmp:
        for name, data in files.items():
            (Path(tmp) / name).write_bytes(data)
        head, _ = load_value_head(tmp)
    return head


def _maybe_fault(count: int) -> None:
    spec = os.environ.get(FAULT_ENV)
    if not spec:
        return
    marker, n = spec.rsplit(":", 1)
    if count >= int(n) and not os.path.exists(marker):
        Path(marker).write_text(str(os.getpid()))
        os.kill(os.getpid(), signal.SIGKILL)

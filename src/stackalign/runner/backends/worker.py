"""A backend worker: loads the recipe's models once and computes units on request (no Ray import here, so
the same class runs in a Ray actor or in-process).

A worker writes nothing to the run directory: it returns rows (and a trained value head's or threshold
predictor's files, and Monte Carlo cache records) to the driver, which is their single writer. That keeps
the run directory consistent however workers die, and lets workers run on other nodes that do not share the
driver's disk.
"""

from __future__ import annotations

import functools
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
    """The models of one recipe, loaded once; `decode`, `cd_sample`, `cd_train`, `mc_sample`,
    `fit_predictor`, `coherence` compute units.

    `use` switches the worker to another recipe and run directory (a sweep's next value), keeping the loaded
    models when the recipe names the same ones; `run` is a unit call made for a given recipe (the Ray backend
    calls every unit through it, so a worker kept across runs, or restarted by Ray with its first recipe,
    always computes a unit with the recipe of the unit's run)."""

    def __init__(self, recipe_data: dict, out_dir: str, threads: int | None = None):
        import torch

        if threads is not None:
            torch.set_num_threads(threads)
        self.ctx = None
        self.loads = 0  # times this process loaded the models (a kept worker: once per sweep)
        self.switches = 0  # times `use` rebuilt the recipe's state (the first recipe included)
        self._current: tuple[dict, str] | None = None
        self._coherence = None
        self._coherence_name = None
        self._decoded = 0
        self.use(recipe_data, out_dir)

    def use(self, recipe_data: dict, out_dir: str) -> bool:
        """Compute units of recipe `recipe_data` for run directory `out_dir` from now on; returns whether the
        worker switched. Everything derived from the recipe (its context: prompts, stop strings, gold, out_dir;
        the method plans; the generators built per method index) is rebuilt, the policy, tokenizer and reward
        model are kept when the recipe loads the same ones (`context.same_models`), else loaded afresh."""
        from stackalign.runner.context import build_context, load_world_and_prompts, same_models
        from stackalign.runner.methods import resolve_method
        from stackalign.runner.recipe import recipe_from_dict

        if self._current == (recipe_data, out_dir):
            return False
        recipe = recipe_from_dict(recipe_data)
        keep = self.ctx is not None and same_models(self.ctx.recipe, recipe)
        # a kept world is the loaded one (the same directory); its prompts are read again for this recipe
        world, prompts, stops = load_world_and_prompts(recipe, self.ctx.world if keep else None)
        # out_dir is only recorded: the CD phases that write there run on the driver's side of the protocol
        if not keep:
            self.ctx = None  # the old models go before the new ones load (memory)
            self.loads += 1
        self.ctx = build_context(
            recipe, Path(out_dir), world=world, prompts=prompts, stops=stops, reuse=self.ctx if keep else None
        )
        self.plans = [resolve_method(m, i) for i, m in enumerate(recipe.methods)]
        # built from the previous recipe's plans (a generator per method *index*): never reused
        self._generators: dict[int, object] = {}
        self._mc: dict | None = None  # the MC rewards of the unit being decoded (threshold: mc)
        if recipe.evaluation.coherence != self._coherence_name:
            self._coherence, self._coherence_name = None, recipe.evaluation.coherence
        self._current = (recipe_data, out_dir)
        self.switches += 1
        return True

    def run(self, recipe_data: dict, out_dir: str, method: str, *args):
        """`method(*args)` (a unit call: `decode`, `mc_sample`, ...) for recipe `recipe_data` and run
        directory `out_dir`, switching to them first when the worker holds another (`use`)."""
        if method not in UNIT_CALLS:
            raise ValueError(f"worker: {method!r} is not a unit call ({sorted(UNIT_CALLS)})")
        self.use(recipe_data, out_dir)
        return getattr(self, method)(*args)

    def info(self) -> dict:
        """The worker's process id, its model loads and recipe switches."""
        return {"pid": os.getpid(), "loads": self.loads, "switches": self.switches}

    def ready(self) -> int:
        """The worker's process id (also: the models are loaded)."""
        return os.getpid()

    def model_name(self) -> str | None:
        from stackalign.decoding.cd_data import model_name

        return model_name(self.ctx.policy)

    def decode(
        self,
        pi: int,
        ids: list[int],
        head_files: dict[str, bytes] | None = None,
        predictor_files: dict[str, bytes] | None = None,
        mc: dict | None = None,
    ) -> list[dict]:
        """The rows of method `pi` on prompts `ids`. `head_files`: a CD method's trained value head;
        `predictor_files`: a `threshold: predicted` method's predictor; `mc`: a `threshold: mc` method's
        Monte Carlo rewards of these prompts (`{"rewards": [[N floats] per id], "cost": Cost or None}`, the
        cost of sampling them when this unit's serial decode would have: charged to its rows)."""
        from stackalign.runner.backends.common import decode_rows
        from stackalign.runner.methods import make_method, threshold_plan

        self._decoded += 1
        _maybe_fault(self._decoded)
        if os.environ.get(DELAY_ENV):
            time.sleep(float(os.environ[DELAY_ENV]))
        if pi not in self._generators:
            head = _load_head(head_files) if head_files is not None else None
            predictor = _load_predictor(predictor_files) if predictor_files is not None else None
            source = None
            if mc is not None:
                source = functools.partial(self._unit_thresholds, threshold_plan(self.plans[pi]).shaper)
            self._generators[pi] = make_method(
                self.plans[pi], self.ctx, head=head, predictor=predictor, thresholds=source
            )
        self._mc = mc
        try:
            return decode_rows(self.ctx, self.plans[pi].name, self._generators[pi], ids)
        finally:
            self._mc = None

    def _unit_thresholds(self, shaper, prompts: list[str]):
        """The current unit's thresholds from the rewards the driver sent (mc_threshold's rule)."""
        import torch

        from stackalign.decoding.common import Cost

        mc = self._mc
        rewards = torch.tensor(mc["rewards"], dtype=torch.float32)
        if rewards.shape[0] != len(prompts):
            raise RuntimeError(f"decode: {rewards.shape[0]} prompts' MC rewards for {len(prompts)} prompts")
        return shaper.threshold(rewards), mc["cost"] or Cost()

    def mc_ids(self) -> tuple[str, str]:
        """(policy id, reward id) of the Monte Carlo cache keys (`mc.model_fingerprint`,
        `mc.reward_fingerprint`)."""
        from stackalign.decoding.common import as_reward
        from stackalign.decoding.mc import model_fingerprint, reward_fingerprint

        return model_fingerprint(self.ctx.policy), reward_fingerprint(as_reward(self.ctx.reward))

    def mc_sample(self, tag: int, prompts: list[str], n: int, generation, ids: tuple[str, str]):
        """(tag, MC cache records of `prompts`, their cost): one sampling + scoring call, as `mc_samples`
        makes it for these prompts."""
        from stackalign.decoding.mc import compute_mc_records

        c = self.ctx
        records, cost = compute_mc_records(
            c.policy, c.tokenizer, c.reward, prompts, n, generation, policy_id=ids[0], rm_id=ids[1]
        )
        return tag, records, cost

    def fit_predictor(self, pi: int, rewards: list[list[float]]) -> tuple[int, dict[str, bytes]]:
        """Fit method `pi`'s threshold predictor on its training prompts' MC rewards (as
        `train_threshold_predictor` does after sampling); returns (pi, the saved predictor's files)."""
        import torch

        from stackalign.decoding.threshold_predictor import fit_predictor_on_thresholds
        from stackalign.runner.methods import predictor_train_prompts, srs_plan, threshold_plan

        c = self.ctx
        sp = srs_plan(threshold_plan(self.plans[pi]), c.recipe, c.world, c.stop_strings, c.out_dir)
        thresholds = sp.shaper.threshold(torch.tensor(rewards, dtype=torch.float32))
        pred, _ = fit_predictor_on_thresholds(
            c.policy,
            c.tokenizer,
            predictor_train_prompts(sp),
            thresholds,
            sp.shaper,
            sp.predictor,
            sp.generation,
        )
        with tempfile.TemporaryDirectory(prefix="stackalign-predictor-") as tmp:
            pred.save(tmp)
            return pi, {p.name: p.read_bytes() for p in Path(tmp).iterdir() if p.is_file()}

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
        from stackalign.runner.context import coherence_scorer

        if self._coherence is None:  # reset by `use` when a recipe names another encoder
            self._coherence = coherence_scorer(self.ctx.recipe)
        return tag, [float(v) for v in self._coherence.score(prompts, texts)]


# the calls `Worker.run` makes: the units and the driver's questions about the loaded models
UNIT_CALLS = frozenset(
    {"decode", "mc_sample", "fit_predictor", "cd_sample", "cd_train", "coherence", "model_name", "mc_ids"}
)


def _load_head(files: dict[str, bytes]):
    from stackalign.decoding.value_head import load_value_head

    with tempfile.TemporaryDirectory(prefix="stackalign-head-") as tmp:
        for name, data in files.items():
            (Path(tmp) / name).write_bytes(data)
        head, _ = load_value_head(tmp)
    return head


def _load_predictor(files: dict[str, bytes]):
    from stackalign.decoding.threshold_predictor import load_threshold_predictor

    with tempfile.TemporaryDirectory(prefix="stackalign-predictor-") as tmp:
        for name, data in files.items():
            (Path(tmp) / name).write_bytes(data)
        return load_threshold_predictor(tmp)


def _maybe_fault(count: int) -> None:
    spec = os.environ.get(FAULT_ENV)
    if not spec:
        return
    marker, n = spec.rsplit(":", 1)
    if count < int(n):
        return
    try:  # created exclusively: of workers reaching their N-th unit at once, only one is killed
        fd = os.open(marker, os.O_WRONLY | os.O_CREAT | os.O_EXCL)
    except FileExistsError:
        return
    os.write(fd, str(os.getpid()).encode())
    os.close(fd)
    os.kill(os.getpid(), signal.SIGKILL)

"""``stackalign train RECIPE.yaml --out DIR [key=value ...]``: a validated recipe -> a training run directory.

    DIR/config.json      the resolved recipe (common + algorithm fields); a restart with a different one is
                         refused with the keys that differ
    DIR/metrics.jsonl    one row per optimizer step (resumable, never duplicated)
    DIR/checkpoints/     step-NNNNNN/ HF safetensors directories + optimizer / RNG / algorithm state
    DIR/final/           the trained policy as an HF model directory (usable as a run recipe's ``policy:``)
    DIR/summary.json     {"algorithm", "steps", "seconds", ...the algorithm's fields}
    DIR/report.md        the summary as a table, and the plots
    DIR/training_curves.png

Killed at any moment and started again with the same command, training resumes from the latest checkpoint.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from stackalign.decoding.common import GenerationConfig
from stackalign.prompt_sources import policy_tokenizer, source_prompts
from stackalign.recipe_base import RecipeError, load_recipe_world, policy_path, reward_model_path
from stackalign.rundir import DirLock, check_world_identity, holds_work, read_config
from stackalign.store import write_json_atomic
from stackalign.training.loop import LoopSettings, save_model_dir
from stackalign.training.preflight import preflight_train
from stackalign.training.recipe import ResolvedRecipe, config_diff, load_train_recipe, train_recipe_from_dict

__all__ = ["TrainContext", "run_training", "main"]


@dataclass
class TrainContext:
    """What an algorithm's ``train(ctx)`` gets: the validated config, the run directory, the world, and
    loaders (models are loaded only when asked for)."""

    recipe: ResolvedRecipe
    out_dir: Path
    world: Any = None
    _cache: dict = field(default_factory=dict, repr=False)

    @property
    def config(self):
        """The common fields (:class:`stackalign.training.recipe.TrainConfig`)."""
        return self.recipe.common

    @property
    def algo(self):
        """The algorithm's config dataclass instance."""
        return self.recipe.algo

    # -- models ------------------------------------------------------------------------------------
    @property
    def policy_path(self) -> str:
        return policy_path(self.config.policy, self.world)

    def load_policy(self, path: str | None = None) -> tuple[Any, Any]:
        """A fresh copy of the initial policy (or of ``path``): ``(model, tokenizer)``, in eval mode (dropout
        off) with gradients enabled. With the recipe's ``lora:`` (and no ``path``) the model is the frozen
        base wrapped in a ``PeftModel`` with trainable adapters (two for slhf unless ``lora.shared``), and
        :meth:`load_reference` / :meth:`load_players` are views of it (``stackalign.models.lora``). Under an
        FSDP launch the policy (no ``path``) is sharded (``stackalign.training.distributed.shard_model``)."""
        model, tok = self._load(path)
        if path is None and self.config.lora is not None:
            from stackalign.models.lora import FOLLOWER, apply_lora

            two = self.recipe.algorithm == "slhf" and not self.config.lora.shared
            adapters = ("default", FOLLOWER) if two else ("default",)
            model = apply_lora(model, self.config.lora, adapters=adapters, base_name=self.policy_path)
        if path is None:
            if self.config.gradient_checkpointing:
                from stackalign.training.memory import enable_gradient_checkpointing

                enable_gradient_checkpointing(model)
            from stackalign.training.distributed import shard_model

            model = shard_model(model)  # under an FSDP launch: FSDP2, each process keeps 1/W of the weights
            self._cache["policy"] = model
        return model, tok

    def load_reference(self) -> Any:
        """The frozen reference policy (the initial policy, no gradients): a separate copy, or with LoRA the
        trained policy with its adapters disabled (no copy; loads the policy first if needed)."""
        if self.config.lora is not None:
            from stackalign.models.lora import AdapterView

            if "policy" not in self._cache:
                self.load_policy()
            return AdapterView(self._cache["policy"], None)
        model, _ = self._load(None)
        model.requires_grad_(False)
        return model

    def _load(self, path: str | None) -> tuple[Any, Any]:
        from stackalign.models import load_policy

        return load_policy(path or self.policy_path, dtype=self.config.dtype, device=self.config.device)

    def load_players(self, policy: Any) -> tuple[Any, Any]:
        """SLHF's ``(leader, follower)`` for the ``policy`` of :meth:`load_policy`: the policy itself twice
        (one model told apart by the prompt), or with two LoRA adapters a view of each."""
        from stackalign.models.lora import FOLLOWER, AdapterView, is_peft_model

        if is_peft_model(policy) and FOLLOWER in policy.peft_config:
            return AdapterView(policy, "default"), AdapterView(policy, FOLLOWER)
        return policy, policy

    def load_reward_model(self) -> Any:
        """The proxy reward model (:class:`stackalign.models.RewardModel`), loaded once."""
        if "rm" not in self._cache:
            from stackalign.models import load_reward_model

            path = reward_model_path(self.config.reward_model, self.world)
            rm = load_reward_model(path, dtype=self.config.dtype, device=self.config.device)
            rm.model.requires_grad_(False)
            self._cache["rm"] = rm
        return self._cache["rm"]

    # -- prompts and settings ----------------------------------------------------------------------
    def prompts_from(self, source: str, what: str, limit: int | None = None) -> list[str]:
        """The prompts of ``source`` (a world split or a JSONL file with a ``prompt`` field), the first
        ``limit``, rendered with the policy's chat template when the recipe asks for it."""
        key = ("prompts", source, limit)
        if key not in self._cache:  # read once (algorithms read them before loading models, then use them)
            raw = source_prompts(source, self.world, what=what)
            self._cache[key] = self.format_prompts(raw[:limit] if limit else raw)
        return list(self._cache[key])

    def format_prompts(self, raw: list[str]) -> list[str]:
        """Raw user requests as the policy is prompted: through its chat template when ``chat_template``."""
        if not self.config.chat_template:
            return list(raw)
        from stackalign.models.chat import render_chat_prompts

        try:
            return render_chat_prompts(policy_tokenizer(self.policy_path), raw, system=self.config.system)
        except ValueError as e:
            raise RecipeError(f"chat_template: {e}") from None

    def train_prompts(self) -> list[str]:
        return self.prompts_from(self.config.train_prompts, "train_prompts")

    def eval_prompts(self) -> list[str]:
        return self.prompts_from(self.config.eval.prompts, "eval.prompts", self.config.eval.limit)

    def follower_prompt(self, tokenizer: Any):
        """SLHF's follower input ``(x, y) -> text``: through the chat template when the recipe uses one, else
        the world's follower format (``decoding.refine.follower_prompt_for``)."""
        from stackalign.decoding.refine import follower_prompt_for

        try:
            return follower_prompt_for(self.world, tokenizer, self.config.chat_template)
        except ValueError as e:
            raise RecipeError(f"chat_template: {e}") from None

    @property
    def stop_strings(self) -> tuple[str, ...]:
        return tuple(self.world.stop_strings) if self.world is not None else ()

    @property
    def max_new_tokens(self) -> int:
        if self.config.max_new_tokens:
            return self.config.max_new_tokens
        return self.world.max_new_tokens if self.world is not None else 64

    def generation_config(self) -> GenerationConfig:
        """Sampling settings during training (the seed is replaced per step by ``sample_group``)."""
        return GenerationConfig(
            max_new_tokens=self.max_new_tokens,
            temperature=self.config.temperature,
            stop_strings=self.stop_strings,
            seed=self.config.seed,
        )

    def eval_generation_config(self) -> GenerationConfig:
        e = self.config.eval
        return GenerationConfig(
            max_new_tokens=self.max_new_tokens,
            temperature=e.temperature,
            stop_strings=self.stop_strings,
            seed=e.seed,
        )

    def loop_settings(self) -> LoopSettings:
        c = self.config
        return LoopSettings(
            steps=c.steps,
            lr=c.lr,
            weight_decay=c.weight_decay,
            max_grad_norm=c.max_grad_norm,
            checkpoint_every=c.checkpoint_every,
            keep_checkpoints=c.keep_checkpoints,
            seed=c.seed,
            progress=c.progress,
            bf16=c.bf16,
        )

    def save_final(self, model: Any, tokenizer: Any) -> Path:
        """Write ``DIR/final/`` (model + tokenizer, safetensors; with LoRA the adapters, and ``merged/`` when
        ``lora.merge``) atomically."""
        lora = self.config.lora
        return save_model_dir(model, tokenizer, self.out_dir / "final", merge=bool(lora and lora.merge))


def prepare_run_dir(recipe: ResolvedRecipe, out_dir: str | Path) -> Path:
    """Create ``out_dir`` and write ``config.json``, or check it against the one already there."""
    out = Path(out_dir)
    resolved = json.loads(json.dumps(recipe.to_dict()))
    path = out / "config.json"
    if path.exists() and holds_work(out):
        diff = config_diff(read_config(path, "training"), resolved)
        if diff:
            raise RecipeError(
                f"{out} holds a training run with a different configuration ({'; '.join(diff)}); "
                "use another --out, or delete the directory to start over"
            )
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(path, resolved)
    return out


def run_training(recipe: ResolvedRecipe, out_dir: str | Path, *, world: Any = None) -> dict:
    """Run a validated recipe into ``out_dir``; returns the summary (also written to summary.json)."""
    from stackalign.training.distributed import processes
    from stackalign.training.memory import check_memory

    preflight_train(recipe)  # the device, the world and model paths, before anything loads
    if processes().fsdp and recipe.common.lora is not None and recipe.common.lora.merge:
        raise RecipeError(
            "lora.merge: not supported under FSDP (the sharded model cannot be merged in place); train with "
            "merge: false and merge the adapter of final/ afterwards"
        )
    check_memory(recipe, processes=processes().world, sharded=processes().fsdp)  # before any model loads
    # one writer per train directory: under several processes (accelerate launch) the main one holds the lock
    lock = DirLock(out_dir, "train directory") if processes().is_main else contextlib.nullcontext()
    with lock:
        return _run_locked(recipe, out_dir, world)


def _run_locked(recipe: ResolvedRecipe, out_dir: str | Path, world: Any) -> dict:
    from stackalign.training.distributed import processes

    world = world if world is not None else load_recipe_world(recipe.common.world)
    out = prepare_run_dir(recipe, out_dir)
    check_world_identity(out, world)
    t0 = time.perf_counter()
    torch.manual_seed(recipe.common.seed)
    ctx = TrainContext(recipe, out, world)
    if "prompts_per_step" not in getattr(type(recipe.algo), "UNUSED_COMMON", ()) and ctx.world is not None:
        n = len(ctx.train_prompts())  # before any model loads
        if recipe.common.prompts_per_step > n:
            raise RecipeError(
                f"prompts_per_step: {recipe.common.prompts_per_step} is more than the {n} training prompts "
                f"({recipe.common.train_prompts})"
            )
    result = recipe.train_fn(ctx) or {}
    summary = {
        "algorithm": recipe.algorithm,
        "steps": recipe.common.steps,
        "seconds": round(time.perf_counter() - t0, 3),
        **result,
    }
    if not processes().is_main:  # under several processes the main one writes the summary and report
        return summary
    write_json_atomic(out / "summary.json", summary)
    from stackalign.training.plots import plot_training_curves, write_report

    if (out / "metrics.jsonl").exists():
        plot_training_curves(out / "metrics.jsonl", out / "training_curves.png")
    write_report(out, summary)  # lists every *.png the algorithm wrote too
    return summary


def main(args: argparse.Namespace) -> int:
    recipe = load_train_recipe(args.recipe, list(args.overrides or []))
    out = args.out
    summary = run_training(recipe, out)
    shown = {k: v for k, v in summary.items() if k not in ("curve",)}
    print(json.dumps(shown, indent=2))
    print(f"wrote {out}/summary.json, {out}/report.md, {out}/final/")
    return 0


# re-exported for tests and other algorithms
__all__ += ["train_recipe_from_dict", "prepare_run_dir"]

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
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from stackalign.decoding.common import GenerationConfig
from stackalign.runner.recipe import RecipeError
from stackalign.store import write_json_atomic
from stackalign.training.loop import LoopSettings, save_model_dir
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
        return self.config.policy or str(self.world.policy_dir)

    def load_policy(self, path: str | None = None) -> tuple[Any, Any]:
        """A fresh copy of the initial policy (or of ``path``): ``(model, tokenizer)``, in eval mode (dropout
        off) with gradients enabled. With the recipe's ``lora:`` (and no ``path``) the model is the frozen
        base wrapped in a ``PeftModel`` with trainable adapters (two for slhf unless ``lora.shared``), and
        :meth:`load_reference` / :meth:`load_players` are views of it (``stackalign.training.lora``)."""
        model, tok = self._load(path)
        if path is None and self.config.lora is not None:
            from stackalign.training.lora import FOLLOWER, apply_lora

            two = self.recipe.algorithm == "slhf" and not self.config.lora.shared
            adapters = ("default", FOLLOWER) if two else ("default",)
            model = apply_lora(model, self.config.lora, adapters=adapters, base_name=self.policy_path)
        if path is None:
            if self.config.gradient_checkpointing:
                from stackalign.training.memory import enable_gradient_checkpointing

                enable_gradient_checkpointing(model)
            self._cache["policy"] = model
        return model, tok

    def load_reference(self) -> Any:
        """The frozen reference policy (the initial policy, no gradients): a separate copy, or with LoRA the
        trained policy with its adapters disabled (no copy; loads the policy first if needed)."""
        if self.config.lora is not None:
            from stackalign.training.lora import AdapterView

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
        from stackalign.training.lora import FOLLOWER, AdapterView, is_peft_model

        if is_peft_model(policy) and FOLLOWER in policy.peft_config:
            return AdapterView(policy, "default"), AdapterView(policy, FOLLOWER)
        return policy, policy

    def load_reward_model(self) -> Any:
        """The proxy reward model (:class:`stackalign.models.RewardModel`), loaded once."""
        if "rm" not in self._cache:
            from stackalign.models import load_reward_model

            path = self.config.reward_model or str(self.world.reward_dir)
            rm = load_reward_model(path, dtype=self.config.dtype, device=self.config.device)
            rm.model.requires_grad_(False)
            self._cache["rm"] = rm
        return self._cache["rm"]

    # -- prompts and settings ----------------------------------------------------------------------
    def _split(self, source: str) -> list[str]:
        if self.world is None:
            raise RecipeError(f"prompts: {source!r} needs a world")
        split = source.split(":", 1)[1]
        return list(
            {
                "train": self.world.train_prompts,
                "val": self.world.val_prompts,
                "test": self.world.test_prompts,
            }[split]
        )

    def train_prompts(self) -> list[str]:
        return self._split(self.config.train_prompts)

    def eval_prompts(self) -> list[str]:
        ps = self._split(self.config.eval.prompts)
        return ps[: self.config.eval.limit] if self.config.eval.limit else ps

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


def _load_world(cfg) -> Any:
    if cfg.world is None:
        return None
    from stackalign.worlds import default_world, load_world

    return default_world() if cfg.world == "default" else load_world(cfg.world)


def prepare_run_dir(recipe: ResolvedRecipe, out_dir: str | Path) -> Path:
    """Create ``out_dir`` and write ``config.json``, or check it against the one already there."""
    out = Path(out_dir)
    resolved = json.loads(json.dumps(recipe.to_dict()))
    path = out / "config.json"
    if path.exists():
        old = json.loads(path.read_text())
        diff = config_diff(old, resolved)
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

    check_memory(recipe, processes=processes().world)  # before any model loads
    out = prepare_run_dir(recipe, out_dir)
    t0 = time.perf_counter()
    torch.manual_seed(recipe.common.seed)
    ctx = TrainContext(recipe, out, world if world is not None else _load_world(recipe.common))
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

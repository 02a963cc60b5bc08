"""Training: one small trainer skeleton, policy-gradient components, a shared evaluation, train recipes.

Modules (components, no god-class):

- ``loop``: :func:`train_loop` (seeding, AdamW, gradient clipping, metrics.jsonl, a tqdm bar, atomic
  checkpoints as HF safetensors directories, kill -9-safe resume to bit-identical weights on CPU),
  :func:`step_seed` / :func:`batch_indices` (stateless per-step randomness), :func:`save_model_dir`.
- ``pg``: policy-gradient pieces — :func:`sample_group`, :func:`response_logprobs`, :func:`advantages`
  (constant / RLOO), :func:`kl_in_reward`, :func:`reinforce_loss`; ``estimators``: :func:`kl_estimate` /
  :func:`kl_per_token` (k1/k2/k3) and :func:`leave_one_out_mean`, shared with ``slhf_loss``.
- ``evaluate``: :func:`evaluate_policy` (gold, proxy, KL on test prompts); the win rates it reports are
  in :mod:`stackalign.evaluation.win_rates`.
- ``recipe`` / ``run``: ``stackalign train RECIPE.yaml --out DIR [key=value ...]``; the algorithm registry
  :data:`ALGORITHMS` (name -> lazily imported ``"module:ConfigClass"``, ``"module:train"``).
- ``rl``: ``algorithm: rl`` — REINFORCE/RLOO with a group shaping (vanilla, meanstd, minmax, srs, ...);
  ``algorithm: rlhf`` is the same with ``shaping: vanilla``.
- ``slhf`` / ``slhf_loss``: ``algorithm: slhf`` — one model as leader and follower (SLHF).
- ``selfplay``: ``algorithm: selfplay`` — the NLHF self-play preference baseline (SPO / Nash-MD-PG).
- ``dpo`` / ``ssapo`` / ``rounds``: ``algorithm: dpo`` and ``algorithm: ssapo`` (rounds of self-annotated pairs
  against the follower's worst case).

Writing an algorithm (the API other algorithms plug into)
---------------------------------------------------------
An algorithm is a config dataclass (TRL style: every field has a default and ``metadata={"help": ...}``;
range checks in ``__post_init__`` raise ValueError naming the field) and a function ``train(ctx) -> dict``.
``ctx`` is a :class:`TrainContext`: ``ctx.config`` (common fields: steps, lr, seed, prompts_per_step,
eval...), ``ctx.algo`` (your dataclass), ``ctx.out_dir``, ``ctx.world``, ``ctx.load_policy()``,
``ctx.load_reference()``, ``ctx.load_reward_model()``, ``ctx.train_prompts()``, ``ctx.eval_prompts()``,
``ctx.generation_config()``, ``ctx.eval_generation_config()``, ``ctx.loop_settings()``,
``ctx.save_final(model, tok)``. The step function returns a :class:`StepOutput` (a loss to backpropagate,
or None if it called backward itself, and a dict of metrics). Everything random in a step must come from
``step_seed(seed, step)`` (or from generators registered with ``train_loop(generators=...)``), and any
algorithm state that changes between steps (a round counter, a reference that moves) must live in
``algo_state`` / ``extra_models`` so that resume is exact::

    from dataclasses import dataclass, field
    from stackalign.training import StepOutput, batch_indices, train_loop

    @dataclass
    class MyConfig:
        beta: float = field(default=0.1, metadata={"help": "KL strength"})

        def __post_init__(self):
            if self.beta <= 0:
                raise ValueError(f"beta: must be > 0, got {self.beta}")

    def train(ctx) -> dict:
        policy, tok = ctx.load_policy()
        prompts = ctx.train_prompts()
        state = {"round": 0}                      # JSON-able; checkpointed and restored in place

        def step_fn(step: int) -> StepOutput:
            batch = [prompts[i] for i in batch_indices(len(prompts), ctx.config.prompts_per_step, step,
                                                       ctx.config.seed)]
            loss = my_loss(policy, tok, batch, ctx.algo.beta, seed=ctx.config.seed, step=step)
            return StepOutput(loss, {"my_metric": 1.0})

        train_loop(policy, tok, step_fn, ctx.loop_settings(), ctx.out_dir, algo_state=state)
        ctx.save_final(policy, tok)
        return {"eval": {...}}                    # merged into summary.json after algorithm/steps/seconds

    # register it (or add it to ALGORITHMS): then `algorithm: mine` works in a train recipe
    from stackalign.training import register_algorithm
    register_algorithm("mine", config="mypkg.mine:MyConfig", train="mypkg.mine:train")
"""

from stackalign.training.estimators import KL_ESTIMATORS, kl_estimate, kl_per_token, leave_one_out_mean
from stackalign.training.evaluate import EvalResult, evaluate_policy, generate
from stackalign.training.loop import (
    LoopResult,
    LoopSettings,
    MetricsLog,
    StepOutput,
    batch_indices,
    latest_checkpoint,
    save_model_dir,
    seed_everything,
    step_seed,
    train_loop,
)
from stackalign.training.pg import (
    advantages,
    kl_in_reward,
    pack_batch,
    prompt_token_ids,
    reinforce_loss,
    response_logprobs,
    sample_group,
)
from stackalign.training.recipe import (
    ALGORITHMS,
    EvalSettings,
    TrainConfig,
    load_train_recipe,
    register_algorithm,
    train_recipe_from_dict,
)
from stackalign.training.run import TrainContext, run_training

__all__ = [
    "ALGORITHMS",
    "EvalResult",
    "EvalSettings",
    "KL_ESTIMATORS",
    "LoopResult",
    "LoopSettings",
    "MetricsLog",
    "StepOutput",
    "TrainConfig",
    "TrainContext",
    "advantages",
    "batch_indices",
    "evaluate_policy",
    "generate",
    "kl_estimate",
    "kl_per_token",
    "leave_one_out_mean",
    "kl_in_reward",
    "latest_checkpoint",
    "load_train_recipe",
    "pack_batch",
    "prompt_token_ids",
    "register_algorithm",
    "reinforce_loss",
    "response_logprobs",
    "run_training",
    "sample_group",
    "save_model_dir",
    "seed_everything",
    "step_seed",
    "train_loop",
    "train_recipe_from_dict",
]

"""Command-line interface: a thin layer over the library.

Every sub-command's handler is imported lazily so that `stackalign --help` stays fast and a broken
optional dependency only affects the command that needs it.
"""

from __future__ import annotations

import argparse
import importlib
import sys


def _handler(dotted: str):
    """Resolve "module:function" lazily."""

    def run(args: argparse.Namespace) -> int:
        module, func = dotted.split(":")
        return int(getattr(importlib.import_module(module), func)(args) or 0)

    return run


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="stackalign", description=__doc__.splitlines()[0])
    p.add_argument("--version", action="store_true", help="print the version and exit")
    sub = p.add_subparsers(dest="command")
    for add in (
        _add_demo,
        _add_world,
        _add_run,
        _add_recipe,
        _add_sweep,
        _add_train,
        _add_eval,
        _add_bench,
        _add_models,
        _add_games,
    ):
        add(sub)
    return p


def _add_demo(sub) -> None:
    """`stackalign demo`: the paper's main comparison."""
    demo = sub.add_parser("demo", help="the paper's main comparison, end to end, on the sandbox world")
    demo.add_argument("--quick", action="store_true", help="fewer prompts and methods (about 3 minutes)")
    demo.add_argument("--out", default=None, help="results directory (default: runs/demo[-quick])")
    demo.add_argument(
        "--world", default=None, help="use the world built at this directory, or a named world (smol)"
    )
    demo.set_defaults(func=_handler("stackalign.runner.demo:main"))


def _add_world(sub) -> None:
    """`stackalign world build`."""
    world = sub.add_parser("world", help="the sandbox world")
    wsub = world.add_subparsers(dest="world_command", required=True)
    wb = wsub.add_parser("build", help="build a sandbox world deterministically from its seed")
    wb.add_argument("--out", required=True, help="output directory")
    wb.add_argument("--seed", type=int, default=0)
    wb.add_argument(
        "--bias", type=float, default=None, help="share of base mass on the disfavoured behaviour"
    )
    wb.add_argument("--pairs", type=int, default=None, help="number of gold-labelled preference pairs")
    wb.add_argument("--label-noise", type=float, default=None, help="fraction of flipped labels")
    wb.add_argument(
        "--preset",
        choices=["default", "micro", "smol", "smol-micro"],
        default=None,
        help="default / micro (sandbox world); smol / smol-micro (with --base; default smol)",
    )
    wb.add_argument(
        "--base",
        default=None,
        help="build the smol world on this real model (smollm2-135m-instruct) instead of a sandbox world",
    )
    wb.add_argument(
        "--force",
        action="store_true",
        help="replace the world (or files) already in --out; runs that used it refuse to resume",
    )
    wb.set_defaults(func=_handler("stackalign.worlds.cli:build"))


def _add_run(sub) -> None:
    """`stackalign run RECIPE`."""
    run = sub.add_parser("run", help="run a recipe")
    run.add_argument("recipe", help="recipe YAML file")
    run.add_argument("--out", default=None, help="results directory")
    run.add_argument(
        "--restart-changed",
        action="store_true",
        help="resume a directory whose recipe changed: drop the rows of changed methods, keep identical ones",
    )
    run.add_argument("--backend", choices=["serial", "ray"], default=None, help="overrides backend.kind")
    run.add_argument("--workers", type=int, default=None, help="Ray actors (overrides backend.workers)")
    run.add_argument(
        "--address", default=None, help="Ray cluster to attach to (default: $RAY_ADDRESS or local)"
    )
    run.add_argument(
        "overrides", nargs="*", help="key=value overrides (dotted keys), before or after options"
    )
    run.set_defaults(func=_handler("stackalign.runner.run:main"))


def _add_recipe(sub) -> None:
    """`stackalign recipe check|schema`."""
    rc = sub.add_parser("recipe", help="check a recipe, or print the recipe schema")
    rsub = rc.add_subparsers(dest="recipe_command", required=True)
    rck = rsub.add_parser("check", help="validate a recipe (and the machine for it) and print it resolved")
    rck.add_argument("recipe", help="recipe YAML file")
    rck.add_argument("--no-env", action="store_true", help="skip the machine checks (packages, paths, judge)")
    rck.add_argument(
        "--processes", type=int, default=1, metavar="N",
        help="train recipes: the memory estimate for N data-parallel processes (accelerate launch)",
    )  # fmt: skip
    rck.add_argument(
        "--fsdp",
        action="store_true",
        help="train recipes: the memory estimate with the policy sharded by FSDP",
    )
    rck.add_argument("overrides", nargs="*", help="key=value overrides (dotted keys)")
    rck.set_defaults(func=_handler("stackalign.runner.schema:check_main"))
    rsc = rsub.add_parser("schema", help="every recipe field: type, default and help")
    rsc.add_argument("--markdown", action="store_true", help="print the README's recipe reference")
    rsc.set_defaults(func=_handler("stackalign.runner.schema:schema_main"))


def _add_sweep(sub) -> None:
    """`stackalign sweep RECIPE --method M`."""
    sw = sub.add_parser(
        "sweep", help="the paper's protocol: sweep the vanilla method's 1/beta on validation prompts"
    )
    sw.add_argument("recipe", help="recipe YAML file")
    sw.add_argument(
        "--method", required=True, help="the vanilla method to sweep (a method name in the recipe)"
    )
    sw.add_argument("--values", default="0.25,0.5,1,2,4,8", help="comma-separated 1/beta values (w or lam)")
    sw.add_argument("--split", default="world:val", help="validation prompt source used to pick the value")
    sw.add_argument("--out", default=None, help="sweep directory")
    sw.add_argument("overrides", nargs="*", help="key=value overrides (dotted keys)")
    sw.set_defaults(func=_handler("stackalign.runner.sweep:main"))


def _add_train(sub) -> None:
    """`stackalign train RECIPE --out DIR`."""
    tr = sub.add_parser(
        "train", help="train a policy from a train recipe (rl, rlhf, slhf, selfplay, dpo, ssapo)"
    )
    tr.add_argument("recipe", help="train recipe YAML file")
    tr.add_argument("--out", required=True, help="run directory (resumes when it holds the same run)")
    tr.add_argument("overrides", nargs="*", help="key=value overrides (dotted keys)")
    tr.set_defaults(func=_handler("stackalign.training.run:main"))


def _add_eval(sub) -> None:
    """`stackalign eval RUN_DIR`."""
    ev = sub.add_parser("eval", help="recompute the evaluation of an existing run directory")
    ev.add_argument("run_dir")
    ev.set_defaults(func=_handler("stackalign.runner.run:eval_main"))


def _add_bench(sub) -> None:
    """`stackalign bench WHICH`."""
    bench = sub.add_parser("bench", help="speed benchmarks (ratios measured in one process)")
    bench.add_argument("which", choices=["args", "cd", "generate", "sample", "ray"])
    bench.add_argument("--json", action="store_true", help="print one JSON object")
    bench.add_argument(
        "--world",
        default=None,
        help="world directory (default: the cached default world), tiny, or random:HIDDEN:LAYERS (a random Llama pair of that size)",
    )
    bench.add_argument("--prompts", type=int, default=4, help="number of prompts")
    bench.add_argument("--max-new-tokens", type=int, default=128)
    bench.add_argument(
        "--batch-size", type=int, default=None, help="prompts decoded together (default: all, one batch)"
    )
    bench.add_argument("--repeats", type=int, default=None, help="timed repeats per variant (default 3)")
    bench.add_argument(
        "--policy",
        default=None,
        help="args/generate: a policy directory or model name instead of the world's",
    )
    bench.add_argument(
        "--reward-model",
        default=None,
        help="args/generate: a reward-model directory or model name instead of the world's",
    )
    bench.set_defaults(
        func=lambda a: _handler("stackalign.bench.ray:main" if a.which == "ray" else "stackalign.bench:main")(
            a
        )
    )


def _add_models(sub) -> None:
    """`stackalign models list|path|reward-from`."""
    models = sub.add_parser("models", help="real pretrained models installable from PyPI, by name")
    msub = models.add_subparsers(dest="models_command", required=True)
    ml = msub.add_parser("list", help="the model names stackalign knows, installed and converted or not")
    ml.set_defaults(func=_handler("stackalign.models.real:list_main"))
    mp = msub.add_parser("path", help="print a model's Hugging Face directory (converting it on first use)")
    mp.add_argument("name")
    mp.set_defaults(func=_handler("stackalign.models.real:path_main"))
    mr = msub.add_parser(
        "reward-from",
        help="a one-label reward model on a policy's backbone (shares its tokenizer; head untrained)",
    )
    mr.add_argument("policy", help="a policy directory or a model name such as smollm2-135m-instruct")
    mr.add_argument("--out", required=True)
    mr.add_argument("--seed", type=int, default=0, help="seed of the score head's initialisation")
    mr.add_argument("--layers", type=int, default=None, help="keep only the first N blocks (cheaper)")
    mr.set_defaults(func=_handler("stackalign.models.real:reward_from_main"))


def _add_games(sub) -> None:
    """`stackalign games condorcet|toy`."""
    games = sub.add_parser("games", help="exact finite-game solvers (SRS, SLHF, NLHF, SGPO)")
    gsub = games.add_subparsers(dest="games_command", required=True)
    gc = gsub.add_parser("condorcet", help="RLHF / NLHF / SLHF on the Condorcet example")
    gc.add_argument("--tau", type=float, default=0.1, help="leader and follower temperature for SLHF")
    gc.set_defaults(func=_handler("stackalign.games.cli:condorcet"))
    gt = gsub.add_parser("toy", help="the SRS paper's toy example: raw reward vs threshold rewards")
    gt.set_defaults(func=_handler("stackalign.games.toy:main"))


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:  # `key=value` overrides may follow options (`run R --out D a.b=1`)
        stray = [e for e in extra if e.startswith("-") or "=" not in e]
        if stray or not hasattr(args, "overrides"):
            parser.error(f"unrecognized arguments: {' '.join(stray or extra)}")
        args.overrides = list(args.overrides or []) + extra
    if args.version:
        from stackalign import __version__

        print(__version__)
        return 0
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    try:
        return args.func(args)
    except Exception as e:  # errors at the boundary: a message, not a traceback
        if not isinstance(e, ValueError | OSError) and type(e).__name__ != "JudgeError":
            raise
        from stackalign.config import clip_message

        print(f"stackalign: error: {clip_message(_describe(e, args))}", file=sys.stderr)
        return 2


def _describe(e: Exception, args: argparse.Namespace) -> str:
    """The message of an error that reached the command line; a full disk names the directory."""
    if isinstance(e, OSError):
        from pathlib import Path

        from stackalign.rundir import no_space_message

        where = getattr(args, "out", None) or (
            Path(e.filename).parent if e.filename else "the output directory"
        )
        full = no_space_message(e, where)
        if full:
            return full
        if e.filename and str(e.filename) not in str(e):
            return f"{e.filename}: {e}"
    return str(e)


if __name__ == "__main__":
    raise SystemExit(main())

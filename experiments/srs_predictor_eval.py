"""Held-out error and cost of the threshold predictors cached in a `srs_sources.yaml` run directory.

Usage: python -m experiments.srs_predictor_eval RUN_DIR WORLD   (WORLD: a world directory or "default")
For each cached predictor (SRS-ARGS-pred, SRS-BoN-pred): MAE / RMSE / R^2 against fresh 16-sample Monte Carlo
thresholds of the first 100 test prompts (seed 7), the constant predictor's MAE, the MAE between two independent
Monte Carlo estimates (seeds 7, 8: the noise floor), and the cost per prompt of each. Writes RUN_DIR/predictor_eval.json.
"""

import dataclasses
import json
import sys
from pathlib import Path

from stackalign.decoding.common import GenerationConfig
from stackalign.decoding.mc import mc_threshold
from stackalign.decoding.threshold_predictor import evaluate_threshold_predictor, load_threshold_predictor
from stackalign.shaping import get_preset
from stackalign.worlds import default_world, load_world


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 2:
        print(__doc__.splitlines()[2], file=sys.stderr)
        return 2
    run, world = Path(argv[0]), argv[1]
    w = default_world() if world == "default" else load_world(world)
    policy, tok = w.load_policy()
    rm = w.load_reward_model()
    prompts = list(w.test_prompts)[:100]
    gen = GenerationConfig(max_new_tokens=32, temperature=1.0, stop_strings=tuple(w.stop_strings), seed=7)
    out = {}
    for name, preset in (("SRS-ARGS-pred", "official-args"), ("SRS-BoN-pred", "official-cd")):
        p = run / "threshold_predictors" / name
        if not p.exists():
            continue
        pred = load_threshold_predictor(p)
        beta = pred.meta["rule"]["beta"]
        sh = get_preset(preset, beta=beta)
        rep = evaluate_threshold_predictor(
            pred, policy, tok, rm, prompts, sh, 16, gen, cache_dir=run / "mc_eval"
        )
        rep["train_fit"] = pred.meta["fit"]
        # the noise floor: two independent N=16 Monte Carlo estimates of the same prompts' thresholds
        a = mc_threshold(policy, tok, rm, prompts, 16, gen, shaper=sh, cache_dir=run / "mc_eval").thresholds
        b = mc_threshold(
            policy,
            tok,
            rm,
            prompts,
            16,
            dataclasses.replace(gen, seed=8),
            shaper=sh,
            cache_dir=run / "mc_eval",
        ).thresholds
        rep["mc_vs_mc_mae"] = float((a - b).abs().mean())
        out[name] = rep
        print(name, json.dumps(rep))
    (run / "predictor_eval.json").write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

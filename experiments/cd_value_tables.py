"""Markdown tables from `experiments/cd_value_diagnostics.py` outputs (one diagnostics.json per world).

    python -m experiments.cd_value_tables runs/cdv/default runs/cdv/slhf-w-seed1 runs/cdv/w2 \
        --pairs srs:raw srs-e60:raw-e60 --lams 1.5 4

prints (1) the value-head diagnostics per world and variant, (2) gold per variant and lambda, (3) the paired
gold difference A - B with its 95% bootstrap interval over prompts for every `--pairs A:B` (the runner's
`paired_diff_ci`, seed 0)."""

from __future__ import annotations

import argparse
import json
import math
import statistics
from pathlib import Path

from stackalign.evaluation.intervals import paired_diff_ci

HEAD_COLS = (
    ("val_r2", "val R²"),
    ("r2_own", "held-out R²"),
    ("spearman_own", "held-out ρ"),
    ("within_spearman_proxy", "within-prompt ρ(V, r)"),
    ("within_spearman_gold", "within-prompt ρ(V, gold)"),
    ("cand_spearman_gold", "candidates ρ(V, gold)"),
    ("cand_top1_gold", "candidates top-1"),
    ("step_gain_gold@1.5", "step gain @1.5"),
    ("step_gain_gold@4", "step gain @4"),
    ("pull@1.5", "pull @1.5"),
    ("pull@4", "pull @4"),
)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("dirs", nargs="+")
    ap.add_argument("--pairs", nargs="*", default=[])
    ap.add_argument("--lams", type=float, nargs="+", default=[1.5, 4.0])
    ap.add_argument("--heads", nargs="*", default=None, help="variants of the head table (default: all)")
    ap.add_argument(
        "--seed-pairs",
        nargs="*",
        default=[],
        help="A:B compared head seed by head seed (A with B, A-s1 with B-s1, ...): gold of each, the paired "
        "difference per seed, and the mean difference over seeds with a t interval over seeds",
    )
    args = ap.parse_args()
    runs = [json.loads((Path(d) / "diagnostics.json").read_text()) for d in args.dirs]
    name = {r["world"]: Path(r["world"]).name for r in runs}

    print("| world | variant | " + " | ".join(c for _, c in HEAD_COLS) + " |")
    print("|---|---|" + "---|" * len(HEAD_COLS))
    for r in runs:
        for v, row in r["heads"].items():
            if args.heads is None or v in args.heads:
                cells = [f"{row[k]:.3f}" if k in row else "" for k, _ in HEAD_COLS]
                print(f"| {name[r['world']]} | {v} | " + " | ".join(cells) + " |")
    print()
    print("| world | variant | λ | gold | proxy |")
    print("|---|---|---|---|---|")
    for r in runs:
        for t in r["decode"]:
            print(
                f"| {name[r['world']]} | {t['variant']} | {t['lam']:g} | {t['gold']:.3f} | {t['proxy']:.3f} |"
            )
    print()
    cols = [(r, lam) for r in runs for lam in args.lams]
    print("gold difference against CD (raw targets, same λ) [95% paired bootstrap over prompts]:")
    print("| variant | " + " | ".join(f"{name[r['world']]} λ={lam:g}" for r, lam in cols) + " |")
    print("|---|" + "---|" * len(cols))
    variants = list(dict.fromkeys(t["variant"] for r in runs for t in r["decode"]))
    for v in variants:
        cells = []
        for r, lam in cols:
            t = [t for t in r["decode"] if t["variant"] == v and t["lam"] == lam]
            d = t[0]["gold_diff_vs_raw"] if t else None
            if t and v == "raw":
                cells.append(f"CD: {t[0]['gold']:.3f}")
            else:
                cells.append(f"{d[0]:+.3f} [{d[1]:+.2f}, {d[2]:+.2f}]" if d else "")
        print(f"| {v} | " + " | ".join(cells) + " |")
    if args.pairs:
        print()
        print("| world | A − B | " + " | ".join(f"λ = {lam:g}" for lam in args.lams) + " |")
        print("|---|---|" + "---|" * len(args.lams))
        for r in runs:
            g = r.get("per_prompt_gold", {})
            for pair in args.pairs:
                a, b = pair.split(":")
                cells = []
                for lam in args.lams:
                    ka, kb = f"{a}@{lam:g}", f"{b}@{lam:g}"
                    if ka in g and kb in g:
                        m, lo, hi = paired_diff_ci(g[ka], g[kb])
                        cells.append(f"{m:+.3f} [{lo:+.3f}, {hi:+.3f}]")
                    else:
                        cells.append("")
                print(f"| {name[r['world']]} | {a} − {b} | " + " | ".join(cells) + " |")

    if args.seed_pairs:
        print()
        print(
            "| world | A − B | λ | gold A per seed | gold B per seed | A − B per seed | mean A − B [95% t over seeds] |"
        )
        print("|---|---|---|---|---|---|---|")
        for r in runs:
            g = r.get("per_prompt_gold", {})
            for pair in args.seed_pairs:
                a, b = pair.split(":")
                for lam in args.lams:
                    ga, gb, ds = [], [], []
                    for suf in ["", "-s1", "-s2", "-s3", "-s4", "-s5"]:
                        ka, kb = f"{a}{suf}@{lam:g}", f"{b}{suf}@{lam:g}"
                        if ka in g and kb in g:
                            ga.append(sum(g[ka]) / len(g[ka]))
                            gb.append(sum(g[kb]) / len(g[kb]))
                            ds.append(ga[-1] - gb[-1])
                    if len(ds) < 2:
                        continue
                    m = statistics.mean(ds)
                    half = T975[len(ds) - 1] * statistics.stdev(ds) / math.sqrt(len(ds))
                    fmt = ", ".join
                    print(
                        f"| {name[r['world']]} | {a} − {b} | {lam:g} | {fmt(f'{x:.2f}' for x in ga)} | "
                        f"{fmt(f'{x:.2f}' for x in gb)} | {fmt(f'{x:+.2f}' for x in ds)} | "
                        f"{m:+.3f} [{m - half:+.3f}, {m + half:+.3f}] |"
                    )


# two-sided 95% Student t quantiles by degrees of freedom
T975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571}

if __name__ == "__main__":
    main()

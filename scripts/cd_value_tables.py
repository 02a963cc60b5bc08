"""Markdown tables from `cd_value_diagnostics.py` outputs (one diagnostics.json per world).

    python scripts/cd_value_tables.py /tmp/cdv/default /tmp/cdv/slhf-w-seed1 /tmp/cdv/w2 \
        --pairs srs:raw srs-e60:raw-e60 --lams 1.5 4

prints (1) the value-head diagnostics per world and variant, (2) gold per variant and lambda, (3) the paired
gold difference A - B with its 95% bootstrap interval over prompts for every `--pairs A:B` (the runner's
`paired_diff_ci`, seed 0)."""

from __future__ import annotations

import argparse
import json
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


if __name__ == "__main__":
    main()

"""`stackalign world build`: build a sandbox world and print a short summary."""

from __future__ import annotations

import argparse


def _human_bytes(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{n} B"
        n /= 1024
    return f"{n} B"


def build(args: argparse.Namespace) -> int:
    from pathlib import Path

    from stackalign.worlds import build_world

    out = Path(args.out)
    blocker = next((p for p in (out, *out.parents) if p.exists() and not p.is_dir()), None)
    if blocker is not None:
        raise ValueError(f"--out: {str(blocker)!r} is a file, so {str(out)!r} cannot be a world directory")
    if out.is_dir() and any(out.iterdir()) and not getattr(args, "force", False):
        what = "a world" if (out / "manifest.json").is_file() else "files"
        raise ValueError(
            f"--out: {str(out)!r} already holds {what}; add --force to replace it (run directories that used "
            "the old world then refuse to resume), or choose another --out"
        )

    if getattr(args, "base", None):
        return build_smol(args)
    if (getattr(args, "preset", None) or "").startswith("smol"):
        raise ValueError(f"--preset {args.preset}: a smol preset needs --base smollm2-135m-instruct")
    world = build_world(
        args.out,
        seed=args.seed if getattr(args, "seed", None) is not None else 0,
        bias=getattr(args, "bias", None),
        pairs=getattr(args, "pairs", None),
        label_noise=getattr(args, "label_noise", None),
        preset=getattr(args, "preset", None) or "default",
        progress=True,
    )
    m, f = world.manifest, world.figures
    p = m["params"]
    print(f"world built at {world.root}")
    print(
        f"  seed {p['seed']}, preset {p['preset']}, bias {p['bias']}, pairs {p['pairs']}, "
        f"label noise {p['label_noise']}"
    )
    print(f"  build time               {m['build']['seconds']:.1f} s ({m['build']['threads']} threads)")
    print(
        f"  base gold-preferred share {f['base_gold_preferred_share']:.3f} (of {f['n_eval_samples']} samples)"
    )
    if "cycle_share" in f:
        ct = f["cycle_tournament"]
        print(
            f"  preference cycle share    {f['cycle_share']:.3f} of {ct['prompts']} test prompts "
            f"({ct['samples_per_prompt']} base samples each; SLHF paper: 0.57 on HelpSteer2)"
        )
        print(f"  base LM as follower wins  {f['base_follower_win_rate']:.3f} vs the answer it revises")
    print(f"  proxy-gold Spearman       {f['proxy_gold_spearman']:.3f}")
    print(f"  proxy agrees with gold    {f['rm_heldout_gold_accuracy']:.3f} of fresh pairs")
    print(f"  size on disk              {_human_bytes(m['build']['bytes'])}")
    print(
        f"  prompts                   {len(world.train_prompts)} train / {len(world.val_prompts)} val / "
        f"{len(world.test_prompts)} test"
    )
    return 0


def build_smol(args: argparse.Namespace) -> int:
    from pathlib import Path

    from stackalign.worlds.smol import build_smol_world

    preset = getattr(args, "preset", None) or "smol"
    if not preset.startswith("smol"):
        raise ValueError(f"--preset {preset}: with --base use smol or smol-micro")
    for flag in ("bias", "pairs"):
        if getattr(args, flag, None) is not None:
            raise ValueError(f"--{flag}: not a parameter of the smol world (it has --label-noise and --seed)")
    out = Path(args.out)
    blocker = next((p for p in (out, *out.parents) if p.exists() and not p.is_dir()), None)
    if blocker is not None:
        raise ValueError(f"--out: {str(blocker)!r} is a file, so {str(out)!r} cannot be a world directory")
    world = build_smol_world(
        out,
        base=args.base,
        seed=args.seed if getattr(args, "seed", None) is not None else 0,
        preset=preset,
        label_noise=getattr(args, "label_noise", None),
        progress=True,
    )
    m, f = world.manifest, world.figures
    k = f["cycle_tournament"]["samples_per_prompt"]
    print(f"smol world built at {world.root}")
    print(
        f"  base {m['base']}, seed {m['params']['seed']}, preset {m['params']['preset']}, label noise {m['params']['label_noise']}"
    )
    print(
        f"  build time                {m['build']['seconds']:.1f} s ({m['build']['threads']} thread), "
        f"peak RSS {_human_bytes(m['build']['peak_rss_bytes'])}"
    )
    print(
        f"  base gold                 {f['base_gold_mean']:.3f} (sd {f['base_gold_sd']:.3f}, {f['n_eval_samples']} samples)"
    )
    print(
        f"  best of {k} by gold / proxy {f[f'best_of_{k}_gold_by_gold']:.3f} / {f[f'best_of_{k}_gold_by_proxy']:.3f}"
    )
    print(f"  proxy-gold Spearman       {f['proxy_gold_spearman']:.3f}")
    print(f"  proxy agrees with gold    {f['rm_heldout_gold_accuracy']:.3f} of {f['rm_heldout_pairs']} pairs")
    print(
        f"  preference cycle share    {f['cycle_share']:.3f} of {f['cycle_tournament']['prompts']} test prompts"
    )
    print(f"  base LM as follower wins  {f['base_follower_win_rate']:.3f} vs the answer it revises")
    print(f"  size on disk              {_human_bytes(m['build']['bytes'])}")
    print(
        f"  prompts                   {len(world.train_prompts)} train / {len(world.val_prompts)} val / "
        f"{len(world.test_prompts)} test"
    )
    return 0

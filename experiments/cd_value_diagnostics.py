"""Why SRS-CD beats CD on some worlds and loses on others: value-head diagnostics and target interventions.

For one world it (1) builds CD's offline data exactly as `stackalign run recipes/cd-vs-srs-cd.yaml` does (same
training prompts, N, seed), plus the same data on 100 held-out training prompts (with gold); (2) trains one value
head per target variant with the runner's training config; (3) measures each head's held-out fit to its own
targets and how it ranks the k = 10 tokenwise candidates of real decoding steps by the reward of base-policy
rollouts from each candidate; (4) decodes the test prompts with each head (the runner's `make_method` and
`decode_rows`, so the CD/SRS-CD rows reproduce the recipe's numbers) and reports the paired gold difference
against CD (raw targets) at the same lambda, with the runner's 95% paired bootstrap interval.

Target variants (rewards R of shape (P, N): P training prompts x N samples):
    raw        R (vanilla CD)
    raw-z      (R - mean R) / std R over the whole training set: raw up to an affine map (scale only)
    raw-x{c}   c * R: raw with its scale multiplied (equivalent to lambda * c at decoding if the fit were exact)
    meanstd    per prompt (r - mean r) / std r: prompt-centred, unbounded
    srs        the `official-cd` preset, B_eff * sigmoid(alpha (r - m*(x))) (SRS-CD)
    meansoft   the same with the prompt's mean as threshold
    gsig       B_g * sigmoid(alpha (r - mean R)) with one global threshold and B_g = 2 x the mean prompt range
               (SRS-CD's average B_eff): the saturation without the per-prompt threshold
    meanstd-x2 2 x meanstd: prompt-centred and linear, with about SRS-CD's within-prompt spread
    hard       the same with a hard step at m*(x)
    srs-N5 / raw-N5     the first 5 of the N = 10 samples per prompt
    srs-100p / raw-100p the first 100 training prompts
    NAME-e{E}           any of the above trained for up to E epochs instead of the recipe's 15 (early
                        stopping on the validation split as usual), e.g. raw-e60, srs-e60
    NAME-s{S}           trained with seed S instead of 42 (validation split, init, shuffling), e.g. srs-s1,
                        raw-e60-s2: the spread a retrained head alone causes

Usage (one world per call; ~3-4 min on one CPU thread):
    PYTHONPATH=src OMP_NUM_THREADS=1 python -m experiments.cd_value_diagnostics --world default --out runs/cdv/default
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import time
from pathlib import Path

import torch

from stackalign.decoding.cd_data import CDExample, OfflineData, build_offline_data
from stackalign.decoding.common import GenerationConfig
from stackalign.decoding.sampling import sample
from stackalign.decoding.value_head import train_value_head
from stackalign.evaluation.intervals import paired_diff_ci
from stackalign.runner.backends.common import decode_rows
from stackalign.runner.context import build_context, load_world_and_prompts
from stackalign.runner.methods import cd_plan, make_method, resolve_method
from stackalign.runner.recipe import load_recipe
from stackalign.shaping import get_preset, get_shaper

RECIPE = Path(__file__).resolve().parents[1] / "recipes" / "cd-vs-srs-cd.yaml"


def spearman(a: torch.Tensor, b: torch.Tensor) -> float:
    """Spearman rank correlation (average ranks for ties); nan when either side is constant."""

    def ranks(x: torch.Tensor) -> torch.Tensor:
        x = x.double()
        order = x.argsort()
        r = torch.empty_like(x)
        r[order] = torch.arange(len(x), dtype=torch.float64)
        for v in x.unique():  # average ranks of ties
            m = x == v
            if m.sum() > 1:
                r[m] = r[m].mean()
        return r

    ra, rb = ranks(a), ranks(b)
    if ra.std() == 0 or rb.std() == 0:
        return float("nan")
    return float(torch.corrcoef(torch.stack([ra, rb]))[0, 1])


def nanmean(xs: list[float]) -> float:
    xs = [x for x in xs if not math.isnan(x)]
    return sum(xs) / len(xs) if xs else float("nan")


def variants(train_rewards: torch.Tensor) -> dict:
    """name -> (targets_fn(R) -> (P, N), prompt slice, sample slice, ValueTrainConfig overrides). raw-z uses
    the training set's mean and std."""
    mu, sd = float(train_rewards.mean()), float(train_rewards.std())
    srs = get_preset("official-cd", kind="srs")
    hard = get_preset("official-cd", kind="hard")
    soft_mean = get_shaper("meansoft", B=srs.B, alpha=srs.alpha, budget_stretch=srs.budget_stretch)
    meanstd = get_shaper("meanstd")
    allp, alln = slice(None), slice(None)
    # a global (not per-prompt) sigmoid with SRS-CD's average budget: saturation without the prompt's threshold
    b_glob = float(2.0 * (train_rewards.amax(-1) - train_rewards.amin(-1)).mean().clamp(max=srs.B))
    return {
        "raw": (lambda r: r, allp, alln, {}),
        "raw-z": (lambda r: (r - mu) / sd, allp, alln, {}),
        "raw-x4": (lambda r: 4.0 * r, allp, alln, {}),
        "meanstd": (meanstd, allp, alln, {}),
        "srs": (srs, allp, alln, {}),
        "meansoft": (soft_mean, allp, alln, {}),
        "gsig": (lambda r: b_glob * torch.sigmoid(srs.alpha * (r - mu)), allp, alln, {}),
        "meanstd-x2": (lambda r: 2.0 * meanstd(r), allp, alln, {}),
        "hard": (hard, allp, alln, {}),
        "raw-N5": (lambda r: r, allp, slice(0, 5), {}),
        "srs-N5": (srs, allp, slice(0, 5), {}),
        "raw-100p": (lambda r: r, slice(0, 100), alln, {}),
        "srs-100p": (srs, slice(0, 100), alln, {}),
    }


def parse_variant(vs: dict, name: str) -> None:
    """Add `name` = a known variant with suffixes -e{E} (max_epochs) and/or -s{S} (training seed: split,
    init and shuffling), e.g. srs-e60-s1."""
    if name in vs:
        return
    over, base = {}, name
    while base not in vs:
        stem, sep, num = max(base.rpartition("-e"), base.rpartition("-s"), key=lambda t: len(t[0]))
        if not sep or not num.isdigit():
            raise SystemExit(f"unknown variant {name!r}")
        over.setdefault("max_epochs" if sep == "-e" else "seed", int(num))
        base = stem
    fn, ps, ns, o = vs[base]
    vs[name] = (fn, ps, ns, {**o, **over})


def examples(data: OfflineData, fn, ps: slice, ns: slice) -> list[CDExample]:
    rows = data.rows[ps]
    r = torch.tensor([row["rewards"][ns] for row in rows], dtype=torch.float64)
    t = fn(r).tolist()
    return [
        CDExample(row["prompt_ids"], ids, float(t[i][j]), row["i"])
        for i, row in enumerate(rows)
        for j, ids in enumerate(row["response_ids"][ns])
        if ids
    ]


@torch.no_grad()
def last_values(head, model, data: OfflineData) -> torch.Tensor:
    """(P, N) value of each held-out sample at its last token (nan for empty samples)."""
    from stackalign.decoding.cd_data import final_hidden_states

    out = torch.full((len(data.rows), len(data.rows[0]["rewards"])), float("nan"), dtype=torch.float64)
    pids, rids, where = [], [], []
    for i, row in enumerate(data.rows):
        for j, ids in enumerate(row["response_ids"]):
            if ids:
                pids.append(row["prompt_ids"])
                rids.append(ids)
                where.append((i, j))
    hs = final_hidden_states(model, pids, rids, batch_size=64)
    v = head(torch.stack([h[-1] for h in hs]).float())
    for (i, j), x in zip(where, v.tolist()):
        out[i, j] = x
    return out


def fit_metrics(v: torch.Tensor, target: torch.Tensor, reward: torch.Tensor, gold: torch.Tensor) -> dict:
    ok = ~torch.isnan(v)
    vv, tt = v[ok], target[ok]
    r2 = 1.0 - float(((vv - tt) ** 2).mean() / tt.var(unbiased=False).clamp_min(1e-12))
    within_r, within_g, between = [], [], []
    for i in range(v.shape[0]):
        m = ok[i]
        if m.sum() >= 3:
            within_r.append(spearman(v[i][m], reward[i][m]))
            within_g.append(spearman(v[i][m], gold[i][m]))
    pv = torch.tensor([float(v[i][ok[i]].mean()) for i in range(v.shape[0])])
    pr = torch.tensor([float(reward[i][ok[i]].mean()) for i in range(v.shape[0])])
    between = spearman(pv, pr)
    return {
        "r2_own": r2,
        "spearman_own": spearman(vv, tt),
        "within_spearman_proxy": nanmean(within_r),
        "within_spearman_gold": nanmean(within_g),
        "between_prompt_spearman": between,
    }


@torch.no_grad()
def candidate_steps(
    ctx, data: OfflineData, n_prompts: int, positions: tuple[int, ...], k: int, m: int, seed: int
):
    """Decoding steps of held-out prompts: (prefix ids, k candidate ids, their log p / 0.7, hidden states (k, H),
    mean proxy and gold reward of m base rollouts from each candidate). The prefix is the first base sample's
    first t tokens, t in `positions`."""
    from stackalign.decoding.cd_data import final_hidden_states

    model, tok = ctx.policy, ctx.tokenizer
    steps = []
    for row in data.rows[:n_prompts]:
        base = row["response_ids"][0]
        for t in positions:
            if t >= len(base) - 1:
                continue
            prefix = base[:t]
            ids = torch.tensor([row["prompt_ids"] + prefix])
            logits = model(input_ids=ids).logits[0, -1].float()
            top, cand = logits.topk(k)
            logp = (top / 0.7).tolist()  # the decoder's score_temperature; the row's constant is irrelevant
            hs = final_hidden_states(
                model, [row["prompt_ids"]] * k, [prefix + [c] for c in cand.tolist()], batch_size=k
            )
            steps.append(
                {
                    "prompt": row["prompt"],
                    "prefix": prefix,
                    "cand": cand.tolist(),
                    "logp": logp,
                    "h": torch.stack([h[-1] for h in hs]).float(),
                }
            )
    # rollouts: prompt text + decoded prefix+candidate, m base samples each, to the recipe's 32 tokens in all
    gen_base = dict(temperature=0.7, top_p=0.9, stop_strings=tuple(ctx.stop_strings), seed=seed)
    texts_p, heads_t, budgets = [], [], []
    for s in steps:
        for c in s["cand"]:
            head_text = tok.decode(s["prefix"] + [c], skip_special_tokens=False)
            texts_p.append(s["prompt"] + head_text)
            heads_t.append(head_text)
            budgets.append(max(1, 32 - len(s["prefix"]) - 1))
    # one sampling call per distinct budget (the prefix lengths are few)
    full = [None] * len(texts_p)
    for b in sorted(set(budgets)):
        idx = [i for i, x in enumerate(budgets) if x == b]
        res = sample(model, tok, [texts_p[i] for i in idx], m, GenerationConfig(max_new_tokens=b, **gen_base))
        for j, i in enumerate(idx):
            full[i] = [heads_t[i] + t for t in res.texts[j]]
    eos = getattr(ctx.world, "eos_token", None)
    flat_p, flat_r, owner = [], [], []
    si = 0
    for s in steps:
        for _ in s["cand"]:
            for t in full[si]:
                # a candidate that is the EOS token ends the response: its text is what precedes it
                if eos and eos in t:
                    t = t.split(eos)[0]
                for stop in ctx.stop_strings:
                    t = t.split(stop)[0]
                flat_p.append(s["prompt"])
                flat_r.append(t)
                owner.append(si)
            si += 1
    proxy = ctx.reward(flat_p, flat_r).double()
    gold = torch.tensor([float(ctx.gold(p, r)) for p, r in zip(flat_p, flat_r)], dtype=torch.float64)
    n_c = sum(len(s["cand"]) for s in steps)
    sums_p = torch.zeros(n_c, dtype=torch.float64).index_add_(0, torch.tensor(owner), proxy)
    sums_g = torch.zeros(n_c, dtype=torch.float64).index_add_(0, torch.tensor(owner), gold)
    si = 0
    for s in steps:
        kk = len(s["cand"])
        s["proxy"] = sums_p[si : si + kk] / m
        s["gold"] = sums_g[si : si + kk] / m
        si += kk
    return steps


@torch.no_grad()
def ranking_metrics(head, steps: list[dict], lams: list[float]) -> dict:
    sp_g, sp_p, top1, pull = [], [], [], {lam: [] for lam in lams}
    gain = {lam: [] for lam in lams}
    for s in steps:
        v = head(s["h"]).double()
        logp = torch.tensor(s["logp"], dtype=torch.float64)
        sp_g.append(spearman(v, s["gold"]))
        sp_p.append(spearman(v, s["proxy"]))
        top1.append(float(s["gold"][v.argmax()] >= s["gold"].max() - 1e-9))
        greedy = int(logp.argmax())
        for lam in lams:
            pick = int((logp + lam * v).argmax())
            gain[lam].append(float(s["gold"][pick] - s["gold"][greedy]))
            pull[lam].append(float((lam * v).std() / logp.std().clamp_min(1e-9)))
    out = {
        "cand_spearman_gold": nanmean(sp_g),
        "cand_spearman_proxy": nanmean(sp_p),
        "cand_top1_gold": sum(top1) / len(top1),
    }
    for lam in lams:
        out[f"step_gain_gold@{lam:g}"] = sum(gain[lam]) / len(gain[lam])
        out[f"pull@{lam:g}"] = sum(pull[lam]) / len(pull[lam])
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--world", default="default")
    ap.add_argument("--out", required=True)
    ap.add_argument("--lams", type=float, nargs="+", default=[1.5, 4.0])
    ap.add_argument("--raw-lams", type=float, nargs="*", default=[8.0, 16.0], help="extra lambdas for raw CD")
    ap.add_argument("--variants", nargs="*", default=None)
    ap.add_argument("--heldout", type=int, default=100, help="held-out training prompts for the fit metrics")
    ap.add_argument("--rank-prompts", type=int, default=40)
    ap.add_argument("--rollouts", type=int, default=4)
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()

    recipe = load_recipe(RECIPE, [f"world={args.world}"])
    world, prompts, stops = load_world_and_prompts(recipe)
    ctx = build_context(recipe, out, world, prompts, stops)
    plan = resolve_method(recipe.methods[0], 0)  # CD
    cp = cd_plan(plan, recipe, world, stops, out)
    build_offline_data(
        ctx.policy,
        ctx.tokenizer,
        ctx.reward,
        cp.train_prompts,
        cp.data_dir,
        cp.data,
        stop_strings=stops,
        progress=False,
    )
    train = OfflineData.load(cp.data_dir)
    n_train = len(cp.train_prompts)
    held_prompts = list(world.train_prompts)[n_train : n_train + args.heldout]
    build_offline_data(
        ctx.policy,
        ctx.tokenizer,
        ctx.reward,
        held_prompts,
        out / "heldout",
        cp.data,
        stop_strings=stops,
        gold=world.gold,
        progress=False,
    )
    held = OfflineData.load(out / "heldout")
    hr = held.rewards
    hg = torch.tensor([r["gold"] for r in held.rows], dtype=torch.float64)
    R = train.rewards
    stats = {
        "reward_std_all": float(R.std()),
        "reward_std_within_prompt": float(R.std(-1).mean()),
        "reward_std_of_prompt_means": float(R.mean(-1).std()),
        "heldout_gold_reward_spearman_within": nanmean([spearman(hr[i], hg[i]) for i in range(len(hr))]),
    }
    srs_t = get_preset("official-cd", kind="srs")(R)
    stats.update(srs_std_all=float(srs_t.std()), srs_std_within_prompt=float(srs_t.std(-1).mean()))
    print(json.dumps(stats, indent=1), flush=True)

    steps = candidate_steps(ctx, held, args.rank_prompts, (0, 4, 12), 10, args.rollouts, recipe.seed)
    print(f"{len(steps)} candidate steps ({time.perf_counter() - t0:.0f}s)", flush=True)

    vs = variants(R)
    names = args.variants or [*vs, "raw-e60", "srs-e60"]
    for name in names:
        parse_variant(vs, name)
    heads, rows = {}, {}
    for name in names:
        fn, ps, ns, over = vs[name]
        vcfg = dataclasses.replace(cp.value, **over)
        res = train_value_head(ctx.policy, examples(train, fn, ps, ns), vcfg, progress=False)
        head = res.head
        heads[name] = head
        v = last_values(head, ctx.policy, held)
        ht = fn(hr)
        row = {"val_r2": 1 - res.best_val_mse / max(res.val_target_var, 1e-12), "epochs": res.epochs}
        row.update(fit_metrics(v, ht, hr, hg))
        row.update(ranking_metrics(head, steps, args.lams))
        rows[name] = row
        print(name, json.dumps({k: round(x, 3) for k, x in row.items()}), flush=True)

    # decoding: test prompts, paired gold difference vs raw CD at the same lambda
    dec = {}
    for lam in sorted(set(args.lams) | set(args.raw_lams)):
        rec = load_recipe(RECIPE, [f"world={args.world}", f"methods.0.params.lam={lam}"])
        p = resolve_method(rec.methods[0], 0)
        ctx.recipe = rec
        for name in names if lam in args.lams else ["raw"]:
            gen = make_method(p, ctx, head=heads[name])
            bs = rec.generation.batch_size
            got = []
            for s in range(0, len(prompts), bs):
                got += decode_rows(ctx, name, gen, list(range(s, min(s + bs, len(prompts)))))
            dec[(name, lam)] = [r["gold_reward"] for r in got]
            dec[(name, lam, "proxy")] = [r["proxy_reward"] for r in got]
    table = []
    for (name, lam, *rest), g in dec.items():
        if rest:
            continue
        base = dec[("raw", lam)] if lam in args.lams else None
        d = paired_diff_ci(g, base) if base is not None and name != "raw" else None
        table.append(
            {
                "variant": name,
                "lam": lam,
                "gold": sum(g) / len(g),
                "proxy": sum(dec[(name, lam, "proxy")]) / len(g),
                "gold_diff_vs_raw": d,
            }
        )
        print(json.dumps(table[-1]), flush=True)
    (out / "diagnostics.json").write_text(
        json.dumps(
            {
                "world": args.world,
                "stats": stats,
                "heads": rows,
                "decode": table,
                "per_prompt_gold": {f"{n}@{lam:g}": g for (n, lam, *rest), g in dec.items() if not rest},
            },
            indent=1,
        )
    )
    print(f"done in {time.perf_counter() - t0:.0f}s -> {out / 'diagnostics.json'}")


if __name__ == "__main__":
    main()

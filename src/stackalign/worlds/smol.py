"""The smol world: real English requests answered by a real pretrained model (SmolLM2-135M-Instruct).

``build_smol_world(out, base="smollm2-135m-instruct")`` (``stackalign world build --base ...``) writes a world
directory that loads as a :class:`SmolWorld`, a :class:`stackalign.worlds.World` whose gold utility, user
population and follower format are those of ``stackalign.worlds.smol_gold`` (see ``docs/smol-world.md``):

* prompts: the shipped requests (``data/smol_prompts.jsonl``) in SmolLM2's chat template, split by item;
* policy: the base model itself (its converted directory in the stackalign cache, not copied; the manifest
  records its files' sha256 and loading checks them);
* reward model: a proxy sharing the base model's tokenizer (so ARGS scores candidates incrementally): a one-label
  ``LlamaForSequenceClassification`` on the base model's first ``rm_layers`` blocks, of which only the last
  ``rm_train_layers`` blocks, the final norm and the score head are trained, by Bradley–Terry on gold-labelled
  pairs of the base model's own samples with ``label_noise`` of the labels flipped: imperfect on purpose;
* figures from base samples on test prompts: base gold, best-of-k gold, proxy–gold Spearman and pairwise
  agreement, the population's cycle share, the base model as follower.

Every stage is seeded and runs on one CPU thread, so the same seed on the same software gives the same files
(their sha256 are in the manifest).
"""

from __future__ import annotations

import copy
import json
import math
import os
import random
import time
from dataclasses import dataclass, field
from itertools import combinations
from pathlib import Path
from typing import Any

import torch

import stackalign.worlds.smol_gold as G
import stackalign.worlds.smol_prompts as SP
from stackalign.worlds.world_dir import World, read_manifest, reuse_or_build, verify_files

SMOL_KIND = "smol"
SMOL_VERSION = 1
SUPPORTED_BASES = ("smollm2-135m-instruct",)
STOP_STRINGS = [G.IM_END, G.IM_START]

SMOL_PRESETS: dict[str, dict[str, Any]] = {
    "smol": dict(
        label_noise=0.1,  # share of flipped pair labels
        pair_prompts=48,  # train prompts sampled for the proxy's pairs
        pair_samples=5,  # base samples per prompt; every pair of them with different gold is a pair
        eval_prompts=24,  # test prompts for the figures (cycle share, base gold, proxy agreement)
        eval_samples=5,
        follower_prompts=24,  # first samples revised by the base model as follower
        max_new_tokens=64,
        gen_batch=64,
        rm_layers=4,
        rm_train_layers=1,
        rm_epochs=3,
        rm_batch=16,
        rm_lr=3e-4,
        rm_eos_share=0.5,  # pairs shown finished (EOS appended)
        rm_prefix_share=0.25,  # pairs cut to a common prefix fraction of their response tokens
    ),
    "smol-micro": dict(
        label_noise=0.1,
        pair_prompts=4,
        pair_samples=3,
        eval_prompts=3,
        eval_samples=3,
        follower_prompts=2,
        max_new_tokens=12,
        gen_batch=16,
        rm_layers=2,
        rm_train_layers=1,
        rm_epochs=1,
        rm_batch=4,
        rm_lr=3e-4,
        rm_eos_share=0.5,
        rm_prefix_share=0.25,
    ),
}


def resolve_smol_params(preset: str = "smol", *, label_noise: float | None = None) -> dict[str, Any]:
    if preset not in SMOL_PRESETS:
        raise ValueError(
            f"--preset: unknown smol world preset {preset!r}; choose one of {sorted(SMOL_PRESETS)}"
        )
    p = dict(SMOL_PRESETS[preset])
    if label_noise is not None:
        if not 0.0 <= float(label_noise) < 0.5:
            raise ValueError(f"--label-noise must be in [0, 0.5), got {label_noise}")
        p["label_noise"] = float(label_noise)
    p["preset"] = preset
    return p


@dataclass
class SmolWorld(World):
    """A built smol world: the :class:`World` interface with the smol gold, population and follower format."""

    base: str = "smollm2-135m-instruct"
    stop_strings: list[str] = field(default_factory=lambda: list(STOP_STRINGS))
    max_new_tokens: int = 64
    eos_token: str = G.IM_END
    preferred_threshold: float = 0.6

    def gold(self, prompt: str, response: str) -> float:
        return G.gold_utility(prompt, response)

    def gold_judge(self, prompt: str, a: str, b: str) -> int:
        return G.gold_judge(prompt, a, b)

    def gold_preference(self, prompt: str, a: str, b: str) -> float:
        return G.gold_preference(prompt, a, b)

    def follower_prompt(self, prompt: str, previous: str) -> str:
        return G.make_follower_prompt(prompt, previous)

    def gold_breakdown(self, prompt: str, response: str) -> G.SmolGoldBreakdown:
        return G.features(prompt, response)

    def gold_reward(self):
        from stackalign.models import CallableReward

        return CallableReward(G.gold_utility, name="gold")

    def gold_pairs(
        self, prompts: list[str], n: int, *, label_noise: float = 0.0, seed: int = 0
    ) -> list[dict]:
        """``n`` pairs of base-model responses to ``prompts`` (cycled in a seeded order), labelled by gold, a
        ``label_noise`` share flipped (what ``stackalign.training.preferences.gold_pairs`` returns for this
        world). The build's samples (``pairs.jsonl``) are reused for the prompts they cover; other prompts get 4
        fresh samples each from the base model (seeded). A prompt whose samples all tie in gold gives no pair,
        so fewer than ``n`` pairs can come back."""
        from stackalign.worlds.build import labelled_pair

        rng = random.Random(f"stackalign-smol-gold-pairs:{seed}")
        order = list(prompts)
        rng.shuffle(order)
        targets = [order[i % len(order)] for i in range(n)]
        pool = {q: list(v) for q, v in self.shipped_samples().items()}
        need = [q for q in dict.fromkeys(targets) if len(pool.get(q, [])) < 2]
        if need:
            policy, tok = self.load_policy()
            with torch.random.fork_rng():
                torch.manual_seed(seed)
                flat, _ = sample(policy, tok, need, 4, self.max_new_tokens, 64)
            for i, q in enumerate(need):
                pool[q] = flat[i * 4 : (i + 1) * 4]
        pairs = []
        for q in targets:
            gold = {s: G.gold_utility(q, s) for s in pool[q]}
            cands = [(a, b) for a, b in combinations(pool[q], 2) if abs(gold[a] - gold[b]) >= 1e-9]
            if cands:
                a, b = rng.choice(cands)
                pairs.append(labelled_pair(rng, q, a, b, gold[a], gold[b], float(label_noise)))
        return pairs

    def shipped_samples(self) -> dict[str, list[str]]:
        """The base samples behind the build's pairs (``pairs.jsonl``), by prompt, in first-seen order."""
        out: dict[str, dict[str, None]] = {}
        with open(self.root / "pairs.jsonl", encoding="utf-8") as f:
            for line in f:
                x = json.loads(line)
                out.setdefault(x["prompt"], {}).update({x["chosen"]: None, x["rejected"]: None})
        return {q: list(v) for q, v in out.items()}


# ---- prompts and sampling -----------------------------------------------------------------------------
def smol_splits() -> dict[str, list[str]]:
    """The shipped requests in the chat template, by split, in file order."""
    out: dict[str, list[str]] = {"train": [], "val": [], "test": []}
    for r in SP.load_rows():
        out[r["split"]].append(G.make_prompt(r["request"]))
    return out


def clean(text: str) -> str:
    for s in STOP_STRINGS:
        text = text.split(s, 1)[0]
    return text.strip()


def sample(
    model, tok, prompts: list[str], n: int, max_new_tokens: int, batch: int
) -> tuple[list[str], float]:
    """``n`` ancestral samples (temperature 1, no top-k/top-p) per prompt, in prompt order, and the share that
    ended (EOS) before ``max_new_tokens``: decoded with special tokens, so an ended one holds ``<|im_end|>``."""
    from stackalign.worlds.build import sample_policy

    _, out, ended = sample_policy(
        model,
        tok,
        prompts,
        n,
        max_new_tokens,
        batch,
        stop_strings=[G.IM_END],
        cut=clean,
        skip_special_tokens=False,
    )
    return out, ended


def make_pairs(prompts: list[str], samples: list[list[str]], noise: float, rng: random.Random) -> list[dict]:
    """Every pair of a prompt's samples whose gold differs, chosen = the better by gold, then a ``noise`` share
    of the labels flipped (``flipped`` marks them)."""
    from stackalign.worlds.build import labelled_pair

    pairs = []
    for q, ss in zip(prompts, samples):
        for a, b in combinations(ss, 2):
            pair = labelled_pair(rng, q, a, b, G.gold_utility(q, a), G.gold_utility(q, b), noise)
            if pair is not None:
                pairs.append(pair)
    return pairs


# ---- the proxy reward model ---------------------------------------------------------------------------
def make_proxy(lm, tok, layers: int, gen: torch.Generator):
    """A one-label Llama classifier on ``lm``'s embeddings and first ``layers`` blocks, score head ~ N(0, 0.02²)."""
    from transformers import LlamaForSequenceClassification

    cfg = copy.deepcopy(lm.config)
    if not 1 <= layers <= cfg.num_hidden_layers:
        raise ValueError(f"rm_layers must be in 1..{cfg.num_hidden_layers}, got {layers}")
    cfg.num_hidden_layers = layers
    if getattr(cfg, "layer_types", None):
        cfg.layer_types = list(cfg.layer_types)[:layers]
    cfg.num_labels = 1
    cfg.architectures = ["LlamaForSequenceClassification"]
    cfg.pad_token_id = tok.pad_token_id
    rm = LlamaForSequenceClassification(cfg)
    state = {
        k: v
        for k, v in lm.model.state_dict().items()
        if not k.startswith("layers.") or int(k.split(".")[1]) < layers
    }
    rm.model.load_state_dict(state, strict=True)
    with torch.no_grad():
        rm.score.weight.normal_(0.0, 0.02, generator=gen)
    return rm


def train_proxy(rm, tok, pairs: list[dict], p: dict, gen: torch.Generator, log) -> float:
    """Bradley–Terry, −log σ(r(x, y⁺) − r(x, y⁻)), on the pairs, training only the last ``rm_train_layers``
    blocks, the final norm and the score head. An ``rm_eos_share`` of the pairs are shown finished (EOS
    appended, as a policy ends them), an ``rm_prefix_share`` cut to the same fraction of their response tokens
    (label kept), so that scores of unfinished responses — what ARGS asks for at every step — mean something.
    Returns the final running training accuracy (on the noisy labels)."""
    from stackalign.models import RewardModel
    from stackalign.worlds.build import finish_or_cut

    n_layers = rm.config.num_hidden_layers
    for name, prm in rm.named_parameters():
        train = name.startswith("score.") or name.startswith("model.norm.")
        train |= any(
            name.startswith(f"model.layers.{i}.") for i in range(n_layers - p["rm_train_layers"], n_layers)
        )
        prm.requires_grad_(train)
    scorer = RewardModel(rm, tok)
    n_prompt = [len(x) for x in scorer.encode([x["prompt"] for x in pairs], [""] * len(pairs))]
    chosen = scorer.encode([x["prompt"] for x in pairs], [x["chosen"] for x in pairs])
    rejected = scorer.encode([x["prompt"] for x in pairs], [x["rejected"] for x in pairs])
    u = torch.rand(len(pairs), generator=gen)
    frac = torch.rand(len(pairs), generator=gen)
    finish_or_cut(
        chosen, rejected, n_prompt, u, frac, tok.eos_token_id, p["rm_eos_share"], p["rm_prefix_share"]
    )
    params = [q for q in rm.parameters() if q.requires_grad]
    opt = torch.optim.AdamW(params, lr=p["rm_lr"], betas=(0.9, 0.95), weight_decay=0.01)
    steps_per_epoch = math.ceil(len(pairs) / p["rm_batch"])
    total = max(1, steps_per_epoch * p["rm_epochs"])
    rm.train()
    step, acc_ema = 0, None
    for ep in range(p["rm_epochs"]):
        order = torch.randperm(len(pairs), generator=gen).tolist()
        for s in range(0, len(order), p["rm_batch"]):
            b = order[s : s + p["rm_batch"]]
            ids, mask = scorer.pad([chosen[i] for i in b] + [rejected[i] for i in b])
            pos = (mask.cumsum(-1) - 1).clamp(min=0)
            scores = rm(input_ids=ids, attention_mask=mask, position_ids=pos).logits[:, 0]
            margin = scores[: len(b)] - scores[len(b) :]
            loss = torch.nn.functional.softplus(-margin).mean()
            for g in opt.param_groups:  # linear warm-up over 10% of the steps, then cosine to 10%
                warm = max(1, total // 10)
                g["lr"] = p["rm_lr"] * (
                    (step + 1) / warm
                    if step < warm
                    else 0.1 + 0.45 * (1 + math.cos(math.pi * (step - warm) / max(1, total - warm)))
                )
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            step += 1
            acc = (margin > 0).float().mean().item()
            acc_ema = acc if acc_ema is None else 0.9 * acc_ema + 0.1 * acc
        log(f"proxy epoch {ep + 1}/{p['rm_epochs']}: running pair accuracy (noisy labels) {acc_ema:.3f}")
    rm.eval()
    for prm in rm.parameters():
        prm.requires_grad_(True)
    return float(acc_ema or 0.0)


# ---- figures ------------------------------------------------------------------------------------------
def _spearman(a: list[float], b: list[float]) -> float:
    from scipy.stats import spearmanr

    r = spearmanr(a, b).statistic
    return float(r) if r == r else 0.0


def figures_from_samples(prompts: list[str], samples: list[list[str]], proxy: list[list[float]]) -> dict:
    """Base gold, best-of-k gold (by gold and by proxy), proxy–gold Spearman, the proxy's agreement with gold on
    every pair of a prompt's samples with different gold, and the population's cycle share."""
    gold = [[G.gold_utility(q, s) for s in ss] for q, ss in zip(prompts, samples)]
    flat_g = [g for row in gold for g in row]
    flat_p = [x for row in proxy for x in row]
    agree = total = 0
    for g, pr in zip(gold, proxy):
        for i, j in combinations(range(len(g)), 2):
            if abs(g[i] - g[j]) > 1e-9:
                total += 1
                agree += (g[i] - g[j]) * (pr[i] - pr[j]) > 0
    k = len(samples[0]) if samples else 0
    return {
        "base_gold_mean": round(sum(flat_g) / len(flat_g), 4),
        "base_gold_sd": round(float(torch.tensor(flat_g).std()), 4) if len(flat_g) > 1 else 0.0,
        f"best_of_{k}_gold_by_gold": round(sum(max(g) for g in gold) / len(gold), 4),
        f"best_of_{k}_gold_by_proxy": round(
            sum(g[max(range(len(g)), key=lambda i: pr[i])] for g, pr in zip(gold, proxy)) / len(gold), 4
        ),
        "base_proxy_mean": round(sum(flat_p) / len(flat_p), 4),
        "proxy_gold_spearman": round(_spearman(flat_p, flat_g), 4),
        "rm_heldout_gold_accuracy": round(agree / max(1, total), 4),
        "rm_heldout_pairs": total,
        "cycle_share": round(G.cycle_share(prompts, samples), 4),
        "cycle_tournament": {"prompts": len(prompts), "samples_per_prompt": k},
        "n_eval_samples": len(flat_g),
    }


def mean_features(prompts: list[str], samples: list[list[str]]) -> dict:
    rows = [G.features(q, s).as_dict() for q, ss in zip(prompts, samples) for s in ss]
    keys = ("words", "topic", "length", "structure", "ending", "repetition", "tics")
    return {k: round(sum(r[k] for r in rows) / len(rows), 4) for k in keys}


# ---- the build ----------------------------------------------------------------------------------------
def _log(progress: bool, t0: float):
    import sys

    def log(msg: str) -> None:
        if progress:
            print(f"[smol world {time.perf_counter() - t0:6.1f}s] {msg}", file=sys.stderr, flush=True)

    return log


def _peak_rss_bytes() -> int:
    import resource

    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024


def base_files(base_dir: Path) -> dict[str, str]:
    from stackalign.worlds.build import sha256_file

    return {
        f.name: sha256_file(f)
        for f in sorted(base_dir.iterdir())
        if f.is_file() and (f.suffix in (".json", ".safetensors", ".jinja"))
    }


def sample_grid(lm, tok, prompts: list[str], k: int, p: dict, seed: int) -> tuple[list[list[str]], float]:
    """``k`` base samples per prompt (torch's global RNG seeded with ``seed`` first), grouped by prompt, and
    the share that ended (EOS) within the token limit."""
    torch.manual_seed(seed)
    flat, ended = sample(lm, tok, prompts, k, p["max_new_tokens"], p["gen_batch"])
    return [flat[i * k : (i + 1) * k] for i in range(len(prompts))], ended


def proxy_stage(lm, tok, splits: dict, p: dict, seed: int, rng: random.Random, gen: torch.Generator, log):
    """Base samples on ``pair_prompts`` training prompts, their gold-labelled pairs (``label_noise`` flipped)
    and the proxy trained on them: ``(rm, pairs, pair_ended_share, rm_train_accuracy)``."""
    pair_prompts = rng.sample(splits["train"], p["pair_prompts"])
    pair_samples, pair_ended = sample_grid(lm, tok, pair_prompts, p["pair_samples"], p, seed)
    pairs = make_pairs(pair_prompts, pair_samples, p["label_noise"], rng)
    log(f"{len(pair_prompts) * p['pair_samples']} base samples on train prompts -> {len(pairs)} pairs")
    if len(pairs) < 2:
        raise RuntimeError("the base samples gave fewer than 2 pairs with different gold; raise pair_prompts")
    rm = make_proxy(lm, tok, p["rm_layers"], gen)
    rm_train_acc = train_proxy(rm, tok, pairs, p, gen, log)
    return rm, pairs, pair_ended, rm_train_acc


def score_samples(scorer, prompts: list[str], samples: list[list[str]]) -> list[list[float]]:
    """The proxy's score of every sample, grouped like ``samples`` (one prompt's samples per row)."""
    k = len(samples[0]) if samples else 0
    flat = scorer([q for q in prompts for _ in range(k)], [s for ss in samples for s in ss]).tolist()
    return [flat[i * k : (i + 1) * k] for i in range(len(prompts))]


def follower_check(
    lm, tok, prompts: list[str], first: list[str], p: dict, seed: int
) -> tuple[list[str], dict]:
    """The base model as follower: one revision of each answer in ``first``, judged against the answer it
    revises by the population (win rate) and by gold (mean change). Returns the revisions and the figures."""
    grid, _ = sample_grid(lm, tok, [G.make_follower_prompt(q, a) for q, a in zip(prompts, first)], 1, p, seed)
    revised = [row[0] for row in grid]
    n = len(prompts)
    triples = list(zip(prompts, first, revised))
    return revised, {
        "base_follower_win_rate": round(sum(G.gold_preference(q, b, a) for q, a, b in triples) / n, 4),
        "base_follower_gold_gain": round(
            sum(G.gold_utility(q, b) - G.gold_utility(q, a) for q, a, b in triples) / n, 4
        ),
        "follower_prompts": n,
    }


def write_world_files(
    out: Path, rm, tok, splits: dict, pairs: list[dict], ev: tuple, follower: tuple
) -> None:
    """The build's data files: the proxy (``reward/``), ``prompts.json``, ``pairs.jsonl``, and the samples
    behind the figures (``base_samples.jsonl``, ``follower_samples.jsonl``)."""
    ev_prompts, ev_samples, ev_proxy = ev
    rm.save_pretrained(out / "reward", safe_serialization=True)
    tok.save_pretrained(out / "reward")
    (out / "prompts.json").write_text(json.dumps(splits, indent=1) + "\n")
    with open(out / "pairs.jsonl", "w") as f:
        for x in pairs:
            f.write(json.dumps(x) + "\n")
    with open(out / "base_samples.jsonl", "w") as f:
        for q, ss, ps in zip(ev_prompts, ev_samples, ev_proxy):
            for s, pr in zip(ss, ps):
                row = dict(prompt=q, response=s, gold=G.gold_utility(q, s), proxy=round(pr, 5))
                f.write(json.dumps(row) + "\n")
    with open(out / "follower_samples.jsonl", "w") as f:
        for q, a, b in zip(*follower):
            f.write(json.dumps(dict(prompt=q, previous=a, revised=b)) + "\n")


def smol_manifest(
    out: Path, *, base: str, base_dir: Path, seed: int, p: dict, figures: dict, build: dict
) -> dict:
    """The manifest of a built smol world (files' sha256 included, so call it after every file is written)."""
    import transformers

    from stackalign.worlds.build import WORLD_FORMAT, _dir_size, file_hashes, sha256_file

    manifest = {
        "format": WORLD_FORMAT,
        "kind": SMOL_KIND,
        "version": SMOL_VERSION,
        "base": base,
        "base_files": base_files(base_dir),
        "params": {"seed": seed, "preset": p["preset"], "label_noise": p["label_noise"], "base": base},
        "config": {k: v for k, v in p.items() if k != "preset"},
        "architecture": {
            "policy": "LlamaForCausalLM (the base model)",
            "reward": "LlamaForSequenceClassification",
        },
        "prompts_file_sha256": sha256_file(SP.DATA_FILE),
        "prompt_format": G.make_prompt("{request}"),
        "stop_strings": STOP_STRINGS,
        "eos_token": G.IM_END,
        "max_new_tokens": p["max_new_tokens"],
        "preferred_threshold": 0.6,
        "follower_format": {
            "template": G.make_follower_prompt(G.make_prompt("{request}"), "{previous}"),
            "instruction": G.FOLLOWER_INSTRUCTION,
        },
        "gold_preference": {"user_types": dict(G.USER_TYPES)},
        "figures": figures,
        "files": file_hashes(out),
        "build": {
            **build,
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "threads": 1,
        },
    }
    manifest["build"]["bytes"] = _dir_size(out)
    return manifest


def build_smol_into(out: Path, *, base: str, seed: int, params: dict, progress: bool) -> dict:
    """Build the smol world's files into ``out`` (an empty directory); returns the manifest.

    Stages, each seeded on its own: the proxy's pairs and training (``proxy_stage``, torch seed ``seed``), the
    figure samples on test prompts (seed ``seed + 1``), the follower check (seed ``seed + 2``)."""
    from stackalign.models import RewardModel, load_policy
    from stackalign.models.real import real_model_path

    t0 = time.perf_counter()
    load_start = round(os.getloadavg()[0], 2)
    log = _log(progress, t0)
    base_dir = Path(real_model_path(base, progress=progress))
    random_state, torch_state = random.getstate(), torch.get_rng_state()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # results independent of the core count
    p = params
    try:
        rng = random.Random(f"stackalign-smol-world-{seed}")
        gen = torch.Generator().manual_seed(seed)
        splits = smol_splits()
        lm, tok = load_policy(str(base_dir), dtype=torch.float32)
        log(f"base model {base} loaded; prompts " + str({k: len(v) for k, v in splits.items()}))

        rm, pairs, pair_ended, rm_train_acc = proxy_stage(lm, tok, splits, p, seed, rng, gen, log)

        ev_prompts = splits["test"][: p["eval_prompts"]]
        ev_samples, ev_ended = sample_grid(lm, tok, ev_prompts, p["eval_samples"], p, seed + 1)
        ev_proxy = score_samples(RewardModel(rm, tok), ev_prompts, ev_samples)
        figures = figures_from_samples(ev_prompts, ev_samples, ev_proxy)
        figures["base_ended_share"] = round(ev_ended, 4)
        figures["base_features"] = mean_features(ev_prompts, ev_samples)
        figures["pairs_ended_share"] = round(pair_ended, 4)
        log(f"{len(ev_prompts) * p['eval_samples']} base samples on test prompts: figures")

        fq = ev_prompts[: p["follower_prompts"]]
        first = [ss[0] for ss in ev_samples[: p["follower_prompts"]]]
        revised, follower_figures = follower_check(lm, tok, fq, first, p, seed + 2)
        figures.update(follower_figures)
        figures["rm_train_pair_accuracy"] = round(rm_train_acc, 4)
        figures["base_gold_preferred_share"] = round(
            sum(G.gold_utility(q, s) >= 0.6 for q, ss in zip(ev_prompts, ev_samples) for s in ss)
            / figures["n_eval_samples"],
            4,
        )
        log(
            "figures: base gold {base_gold_mean}, proxy-gold Spearman {proxy_gold_spearman}, agreement "
            "{rm_heldout_gold_accuracy}, cycle share {cycle_share}, follower win {base_follower_win_rate}".format(
                **figures
            )
        )
        write_world_files(
            out, rm, tok, splits, pairs, (ev_prompts, ev_samples, ev_proxy), (fq, first, revised)
        )
    finally:
        random.setstate(random_state)
        torch.set_rng_state(torch_state)
        torch.set_num_threads(threads)

    build = {
        "seconds": round(time.perf_counter() - t0, 2),
        "peak_rss_bytes": _peak_rss_bytes(),
        # how busy the machine was (1-minute load average at the start and the end of the build)
        "load_average": [load_start, round(os.getloadavg()[0], 2)],
    }
    manifest = smol_manifest(out, base=base, base_dir=base_dir, seed=seed, p=p, figures=figures, build=build)
    (out / "README.md").write_text(render_readme(manifest))
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def render_readme(m: dict) -> str:
    f, c = m["figures"], m["config"]
    k = f["cycle_tournament"]["samples_per_prompt"]
    return f"""# stackalign smol world

Built by `stackalign world build --base {m["base"]}` (seed {m["params"]["seed"]}, preset `{m["params"]["preset"]}`).
The gold utility, the user population and the follower format are documented in `docs/smol-world.md` of
stackalign. Rebuilding with the same parameters on the same software gives the same files (sha256 in
`manifest.json`).

- policy: the base model `{m["base"]}` (not copied; its files' sha256 are in the manifest).
- `reward/`: the proxy, a one-label LlamaForSequenceClassification on the base model's first {c["rm_layers"]} blocks
  (last {c["rm_train_layers"]} trained, with the norm and score head), Bradley–Terry on `pairs.jsonl` (gold-labelled
  pairs of the base model's samples on {c["pair_prompts"]} training prompts, {c["label_noise"]:.0%} of labels flipped).
- `prompts.json`: the chat-templated requests by split; `base_samples.jsonl`, `follower_samples.jsonl`: the
  samples behind the figures.

| figure ({f["cycle_tournament"]["prompts"]} test prompts × {k} base samples, max {m["max_new_tokens"]} new tokens) | value |
|---|---|
| base gold mean (sd) | {f["base_gold_mean"]} ({f["base_gold_sd"]}) |
| best of {k} by gold / by proxy | {f[f"best_of_{k}_gold_by_gold"]} / {f[f"best_of_{k}_gold_by_proxy"]} |
| proxy–gold Spearman | {f["proxy_gold_spearman"]} |
| proxy agrees with gold (pairs of samples of one prompt) | {f["rm_heldout_gold_accuracy"]} of {f["rm_heldout_pairs"]} |
| tournaments with a cycle (population vote) | {f["cycle_share"]} |
| base model as follower: win rate of the revision over the answer it revises / gold change | {f["base_follower_win_rate"]} / {f["base_follower_gold_gain"]} |
| share of samples that end (EOS) within the token limit | {f["base_ended_share"]} |
| build time / peak RSS | {m["build"]["seconds"]} s / {m["build"]["peak_rss_bytes"] / 2**30:.2f} GiB (1 thread) |
"""


def build_smol_world(
    out_dir: str | os.PathLike,
    *,
    base: str = "smollm2-135m-instruct",
    seed: int = 0,
    preset: str = "smol",
    label_noise: float | None = None,
    progress: bool = True,
) -> SmolWorld:
    """Build a smol world into ``out_dir`` (replacing a world already there) and load it."""
    if base.strip().lower() not in SUPPORTED_BASES:
        raise ValueError(f"--base: a smol world is built on one of {list(SUPPORTED_BASES)}, got {base!r}")
    if not isinstance(seed, int) or seed < 0:
        raise ValueError(f"--seed must be a non-negative integer, got {seed!r}")
    params = resolve_smol_params(preset, label_noise=label_noise)
    from functools import partial

    from stackalign.worlds.build import build_world_dir

    base = base.strip().lower()
    build_world_dir(
        out_dir, seed=seed, params=params, progress=progress, builder=partial(build_smol_into, base=base)
    )
    return load_smol_dir(Path(out_dir).expanduser().resolve())


def load_smol_world(root: Path, manifest: dict, *, verify: bool = True) -> SmolWorld:
    """The :class:`SmolWorld` of a built directory (``load_world`` calls this for a manifest of kind smol)."""
    from stackalign.models.real import real_model_path
    from stackalign.worlds.build import sha256_file

    mpath = root / "manifest.json"
    if manifest.get("version") != SMOL_VERSION:
        raise ValueError(
            f"smol world at {str(root)!r} has version {manifest.get('version')}, this stackalign expects "
            f"{SMOL_VERSION}; rebuild it with `stackalign world build --base {manifest.get('base')}`"
        )
    base = manifest.get("base")
    if base not in SUPPORTED_BASES:
        raise ValueError(f"{str(mpath)!r}: unknown base model {base!r}")
    if manifest.get("prompts_file_sha256") != sha256_file(SP.DATA_FILE):
        raise ValueError(
            f"smol world at {str(root)!r} was built on another version of the shipped prompts (their gold "
            f"parameters live there); rebuild it with `stackalign world build --base {base}`"
        )
    base_dir = Path(real_model_path(base))
    if verify:
        verify_files(root, manifest)
        # the base model's small files by hash; its weights by size (hashing 0.5 GB on every load is slow)
        for name, digest in manifest.get("base_files", {}).items():
            f = base_dir / name
            if not f.is_file():
                raise ValueError(f"base model file missing: {str(f)!r} (world {str(root)!r})")
            if f.suffix != ".safetensors" and sha256_file(f) != digest:
                raise ValueError(
                    f"base model file {str(f)!r} differs from the one the world at {str(root)!r} was built on; "
                    "rebuild the world"
                )
    prompts = json.loads((root / "prompts.json").read_text())
    return SmolWorld(
        root=root,
        policy_dir=base_dir,
        reward_dir=root / "reward",
        manifest=manifest,
        train_prompts=prompts["train"],
        val_prompts=prompts["val"],
        test_prompts=prompts["test"],
        base=base,
        stop_strings=list(manifest.get("stop_strings", STOP_STRINGS)),
        max_new_tokens=int(manifest.get("max_new_tokens", 64)),
        eos_token=manifest.get("eos_token", G.IM_END),
        preferred_threshold=float(manifest.get("preferred_threshold", 0.6)),
    )


def load_smol_dir(path: str | os.PathLike) -> SmolWorld:
    """What ``load_world(path)`` gives for a smol world's directory; ValueError for a world of another kind."""
    root, manifest = read_manifest(path)
    if manifest.get("kind") != SMOL_KIND:
        raise ValueError(f"{str(root / 'manifest.json')!r} is not a smol world manifest")
    return load_smol_world(root, manifest)


def smol_world(
    cache_dir: str | os.PathLike | None = None, *, base: str = "smollm2-135m-instruct", progress: bool = True
) -> SmolWorld:
    """The smol world (seed 0, preset "smol"), built once into ``<cache root>/worlds/smol-<base>-seed0`` and
    reused while it loads, verifies and has this version's parameters; concurrent callers wait on a lock."""
    from stackalign.cache import default_cache_root

    root = default_cache_root(cache_dir) / "worlds" / f"smol-{base}-seed0"
    want = resolve_smol_params("smol")
    want_params = {"seed": 0, "preset": "smol", "label_noise": want["label_noise"], "base": base}
    want_config = {k: v for k, v in want.items() if k != "preset"}
    return reuse_or_build(
        root,
        lambda w: (
            isinstance(w, SmolWorld) and w.params == want_params and w.manifest.get("config") == want_config
        ),
        lambda: build_smol_world(root, base=base, seed=0, preset="smol", progress=progress),
        load_smol_dir,
    )

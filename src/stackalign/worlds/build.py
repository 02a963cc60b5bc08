"""Build the sandbox world deterministically from its seed.

Stages (each seeded; same seed + same machine → byte-identical files, recorded as sha256 in the
manifest): corpus → byte-level BPE tokenizer → tiny Llama base LM (plain torch loop) → gold-labelled
noisy preference pairs → proxy reward model (Llama sequence classifier initialised from the base LM,
Bradley–Terry) → evaluation on base-policy samples (gold-preferred share, proxy–gold Spearman, a
reward-hacking probe) → manifest.json + README.md.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import random
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import torch

import stackalign.worlds.preference as PREF
import stackalign.worlds.text as T

WORLD_FORMAT = "stackalign-world"
WORLD_VERSION = 2  # 2: refinement dialogues, follower format, gold preference figures

PRESETS: dict[str, dict[str, Any]] = {
    "default": dict(
        bias=0.85,  # share of base mass on disfavoured behaviour
        pairs=2000,  # gold-labelled preference pairs for the proxy RM
        label_noise=0.1,  # fraction of flipped pair labels
        n_dialogues=16000,  # LM training dialogues (one pass, batch 16: ~1000 steps)
        two_turn_share=0.1,  # dialogues that run on into a second "User:" turn (so stop strings matter)
        refine_share=0.2,  # dialogues in the follower format (answer, "please improve", a base revision)
        cycle_prompts=200,  # test prompts for the preference-cycle figure
        cycle_samples=8,  # base samples per prompt in each tournament
        vocab_size=1024,
        hidden_size=128,
        intermediate_size=256,
        num_layers=2,
        num_heads=8,  # many small heads: the topic-copying head forms after ~500 steps instead of ~1000
        max_positions=256,
        lm_epochs=1,
        lm_batch=16,
        lm_lr=3e-3,
        rm_epochs=2,
        rm_batch=16,
        rm_lr=5e-4,
        rm_prefix_share=0.25,  # pairs cut to a common prefix fraction (see train_rm)
        n_test=200,
        n_val=100,
        eval_prompts=100,  # validation prompts sampled from the base policy for the figures
        eval_samples_per_prompt=4,
        heldout_pairs=1000,  # fresh noise-free pairs to measure the proxy's agreement with gold
        max_new_tokens=64,
    ),
    "micro": dict(
        bias=0.85,
        pairs=300,
        label_noise=0.1,
        n_dialogues=4000,
        two_turn_share=0.1,
        refine_share=0.2,
        cycle_prompts=40,
        cycle_samples=6,
        vocab_size=1024,
        hidden_size=48,
        intermediate_size=96,
        num_layers=2,
        num_heads=4,
        max_positions=256,
        lm_epochs=1,
        lm_batch=16,
        lm_lr=1e-2,
        rm_epochs=2,
        rm_batch=16,
        rm_lr=3e-3,
        rm_prefix_share=0.25,
        n_test=40,
        n_val=40,
        eval_prompts=40,
        eval_samples_per_prompt=2,
        heldout_pairs=200,
        max_new_tokens=48,
    ),
}


def resolve_params(preset: str = "default", **overrides: Any) -> dict[str, Any]:
    """The preset's parameters with the non-None overrides applied and validated."""
    if preset not in PRESETS:
        raise ValueError(f"unknown world preset {preset!r}; choose one of {sorted(PRESETS)}")
    p = dict(PRESETS[preset])
    for k, v in overrides.items():
        if v is not None:
            if k not in p:
                raise ValueError(f"unknown world parameter {k!r}")
            p[k] = v
    if not (0.0 <= float(p["bias"]) < 1.0):
        raise ValueError(
            f"bias must be in [0, 1) (share of base mass on disfavoured behaviour), got {p['bias']}"
        )
    if int(p["pairs"]) < 10:
        raise ValueError(f"pairs must be >= 10, got {p['pairs']}")
    if not (0.0 <= float(p["label_noise"]) < 0.5):
        raise ValueError(f"label_noise must be in [0, 0.5), got {p['label_noise']}")
    p["bias"], p["label_noise"], p["pairs"] = float(p["bias"]), float(p["label_noise"]), int(p["pairs"])
    p["preset"] = preset
    return p


def _log(progress: bool, msg: str, t0: float) -> None:
    if progress:
        print(f"[world {time.perf_counter() - t0:6.1f}s] {msg}", file=sys.stderr, flush=True)


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


# ---- corpus ---------------------------------------------------------------------------------------
def split_prompts(rng: random.Random, n_test: int, n_val: int) -> dict[str, list[str]]:
    qs = T.all_questions()
    rng.shuffle(qs)
    prompts = [T.make_prompt(q) for q in qs]
    return {
        "test": prompts[:n_test],
        "val": prompts[n_test : n_test + n_val],
        "train": prompts[n_test + n_val :],
    }


def sample_base_response(rng: random.Random, prompt: str, bias: float) -> str:
    """One response (with its leading space, no EOS) from the world's generative base distribution."""
    topic = T.prompt_topic(prompt)
    return " " + T.sample_response(rng, topic, T.sample_mode(rng, bias))


def make_refinement_dialogue(rng: random.Random, prompt: str, bias: float) -> str:
    """prompt, a base answer, the follower instruction, a base revision (``text.sample_revision``)."""
    first = sample_base_response(rng, prompt, bias)
    revision = T.sample_revision(rng, T.prompt_topic(prompt), first, bias)
    return T.make_follower_prompt(prompt, first) + " " + revision


def make_corpus(rng: random.Random, train_prompts: list[str], p: dict) -> list[str]:
    """``n_dialogues`` documents: a ``refine_share`` of them in the follower format (drawn from their own
    stream, so the plain dialogues' stream does not depend on the share), the rest plain dialogues."""
    n_refine = round(p.get("refine_share", 0.0) * p["n_dialogues"])
    refine_rng = random.Random(rng.random())
    docs = [
        make_refinement_dialogue(refine_rng, refine_rng.choice(train_prompts), p["bias"]) + T.EOS_TOKEN
        for _ in range(n_refine)
    ]
    for _ in range(p["n_dialogues"] - n_refine):
        prompt = rng.choice(train_prompts)
        doc = prompt + sample_base_response(rng, prompt, p["bias"])
        if rng.random() < p["two_turn_share"]:
            prompt2 = rng.choice(train_prompts)
            doc += "\n" + prompt2 + sample_base_response(rng, prompt2, p["bias"])
        docs.append(doc + T.EOS_TOKEN)
    return docs


def make_pairs(rng: random.Random, prompts: list[str], n: int, bias: float, noise: float) -> list[dict]:
    """``n`` pairs of base responses to the same prompt, labelled by gold, a ``noise`` share flipped.
    Ties in gold are redrawn."""
    pairs = []
    while len(pairs) < n:
        prompt = rng.choice(prompts)
        a, b = sample_base_response(rng, prompt, bias), sample_base_response(rng, prompt, bias)
        pair = labelled_pair(rng, prompt, a, b, T.gold_utility(prompt, a), T.gold_utility(prompt, b), noise)
        if pair is not None:
            pairs.append(pair)
    return pairs


def labelled_pair(rng: random.Random, prompt: str, a: str, b: str, ga: float, gb: float, noise: float):
    """The pair as a dict, chosen = the better by gold (``ga``, ``gb``), its label flipped with probability
    ``noise`` (``flipped`` marks it); None for a tie in gold (no random number is drawn then)."""
    if abs(ga - gb) < 1e-9:
        return None
    if ga < gb:
        a, b, ga, gb = b, a, gb, ga
    flipped = rng.random() < noise
    if flipped:
        a, b, ga, gb = b, a, gb, ga
    return dict(prompt=prompt, chosen=a, rejected=b, gold_chosen=ga, gold_rejected=gb, flipped=flipped)


# ---- tokenizer ------------------------------------------------------------------------------------
def train_tokenizer(docs: list[str], vocab_size: int, max_positions: int):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[T.EOS_TOKEN, T.PAD_TOKEN],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator([d.replace(T.EOS_TOKEN, "") for d in docs], trainer)
    hf = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token=T.EOS_TOKEN,
        pad_token=T.PAD_TOKEN,
        model_max_length=max_positions,
        padding_side="left",
        clean_up_tokenization_spaces=False,
    )
    return hf


# ---- models ---------------------------------------------------------------------------------------
def _llama_config(tok, p: dict, **kw):
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=len(tok),
        hidden_size=p["hidden_size"],
        intermediate_size=p["intermediate_size"],
        num_hidden_layers=p["num_layers"],
        num_attention_heads=p["num_heads"],
        num_key_value_heads=p["num_heads"],
        max_position_embeddings=p["max_positions"],
        tie_word_embeddings=True,
        bos_token_id=None,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        **kw,
    )


def _batches(lengths: list[int], batch: int, gen: torch.Generator) -> list[list[int]]:
    """Deterministic length-bucketed batches: shuffle, sort within chunks of 16 batches, shuffle batches."""
    order = torch.randperm(len(lengths), generator=gen).tolist()
    out = []
    chunk = batch * 16
    for s in range(0, len(order), chunk):
        part = sorted(order[s : s + chunk], key=lambda i: lengths[i])
        out += [part[j : j + batch] for j in range(0, len(part), batch)]
    perm = torch.randperm(len(out), generator=gen).tolist()
    return [out[i] for i in perm]


def _pad_right(seqs: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, : len(s)] = torch.tensor(s)
        mask[i, : len(s)] = 1
    return ids, mask


def _schedule(opt, total: int, base_lr: float):
    warm = max(1, total // 20)

    def lr_at(step: int) -> float:
        if step < warm:
            return base_lr * (step + 1) / warm
        frac = (step - warm) / max(1, total - warm)
        return base_lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * frac)))

    def set_step(step: int) -> None:
        for g in opt.param_groups:
            g["lr"] = lr_at(step)

    return set_step


def train_lm(tok, docs: list[str], p: dict, gen: torch.Generator, log) -> tuple[Any, float]:
    from transformers import LlamaForCausalLM

    model = LlamaForCausalLM(_llama_config(tok, p))
    model.train()
    enc = tok(docs, add_special_tokens=False)["input_ids"]
    too_long = max(len(e) for e in enc)
    if too_long > p["max_positions"]:
        raise ValueError(f"corpus document of {too_long} tokens exceeds max_positions={p['max_positions']}")
    opt = torch.optim.AdamW(model.parameters(), lr=p["lm_lr"], betas=(0.9, 0.95), weight_decay=0.01)
    lengths = [len(e) for e in enc]
    epochs = [_batches(lengths, p["lm_batch"], gen) for _ in range(p["lm_epochs"])]
    total = sum(len(e) for e in epochs)
    set_lr = _schedule(opt, total, p["lm_lr"])
    step, ema = 0, None
    for ep, batches in enumerate(epochs):
        for b in batches:
            ids, mask = _pad_right([enc[i] for i in b], tok.pad_token_id)
            labels = ids.masked_fill(mask == 0, -100)
            set_lr(step)
            loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            step += 1
            ema = loss.item() if ema is None else 0.95 * ema + 0.05 * loss.item()
        log(f"LM epoch {ep + 1}/{p['lm_epochs']}: loss {ema:.3f}")
    model.eval()
    return model, float(ema)


def train_rm(lm, tok, pairs: list[dict], p: dict, gen: torch.Generator, log) -> tuple[Any, float]:
    """Bradley–Terry on the pairs; the classifier starts from the base LM's transformer weights.
    Half of the pairs (chosen and rejected alike) get the EOS token appended, so that the RM has seen
    finished responses; a ``rm_prefix_share`` of them are cut to the same random fraction of their
    response tokens (label kept), so that scores of unfinished responses — what ARGS asks for at every
    step — mean something."""
    from transformers import LlamaForSequenceClassification

    from stackalign.models import format_rm_input

    rm = LlamaForSequenceClassification(_llama_config(tok, p, num_labels=1))
    missing = rm.model.load_state_dict(lm.model.state_dict(), strict=True)
    del missing
    with torch.no_grad():
        rm.score.weight.normal_(0.0, 0.02, generator=gen)
    rm.train()
    u = torch.rand(len(pairs), generator=gen)
    frac = torch.rand(len(pairs), generator=gen)

    def enc(texts):
        return tok(texts, add_special_tokens=False)["input_ids"]

    n_prompt = [len(x) for x in enc([x["prompt"] for x in pairs])]
    chosen = enc([format_rm_input(x["prompt"], x["chosen"]) for x in pairs])
    rejected = enc([format_rm_input(x["prompt"], x["rejected"]) for x in pairs])
    finish_or_cut(chosen, rejected, n_prompt, u, frac, tok.eos_token_id, 0.5, p["rm_prefix_share"])
    opt = torch.optim.AdamW(rm.parameters(), lr=p["rm_lr"], betas=(0.9, 0.95), weight_decay=0.01)
    lengths = [len(c) + len(r) for c, r in zip(chosen, rejected)]
    epochs = [_batches(lengths, p["rm_batch"], gen) for _ in range(p["rm_epochs"])]
    set_lr = _schedule(opt, sum(len(e) for e in epochs), p["rm_lr"])
    step, acc_ema = 0, None
    for ep, batches in enumerate(epochs):
        for b in batches:
            ids, mask = _pad_right([chosen[i] for i in b] + [rejected[i] for i in b], tok.pad_token_id)
            scores = rm(input_ids=ids, attention_mask=mask).logits[:, 0]
            margin = scores[: len(b)] - scores[len(b) :]
            loss = torch.nn.functional.softplus(-margin).mean()
            set_lr(step)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(rm.parameters(), 1.0)
            opt.step()
            step += 1
            acc = (margin > 0).float().mean().item()
            acc_ema = acc if acc_ema is None else 0.95 * acc_ema + 0.05 * acc
        log(f"RM epoch {ep + 1}/{p['rm_epochs']}: train pair accuracy (noisy labels) {acc_ema:.3f}")
    rm.eval()
    return rm, float(acc_ema)


def finish_or_cut(
    chosen, rejected, n_prompt, u, frac, eos_id: int, eos_share: float, prefix_share: float
) -> None:
    """In place, per pair i: with ``u[i] < eos_share`` both sequences get ``eos_id`` appended (finished, as the
    policy ends them); with ``u[i] < eos_share + prefix_share`` both are cut to the same fraction ``frac[i]``
    of their response tokens (the first ``n_prompt[i]`` tokens are the prompt); otherwise left as they are."""
    for i in range(len(chosen)):
        if u[i] < eos_share:
            chosen[i] = chosen[i] + [eos_id]
            rejected[i] = rejected[i] + [eos_id]
        elif u[i] < eos_share + prefix_share:
            for seq in (chosen, rejected):
                keep = max(1, math.ceil(float(frac[i]) * (len(seq[i]) - n_prompt[i])))
                seq[i] = seq[i][: n_prompt[i] + keep]


def file_hashes(out: Path) -> dict[str, str]:
    """sha256 of every file under ``out`` but manifest.json and README.md, by relative path."""
    return {
        str(f.relative_to(out)): sha256_file(f)
        for f in sorted(out.rglob("*"))
        if f.is_file() and f.name not in ("manifest.json", "README.md")
    }


# ---- evaluation -----------------------------------------------------------------------------------
def cut_response(text: str) -> str:
    """A generated continuation cut at the first stop string / EOS text (not stripped: the RM input
    keeps the response's leading space)."""
    for s in (*T.STOP_STRINGS, T.EOS_TOKEN):
        text = text.split(s, 1)[0]
    return text.rstrip()


@torch.no_grad()
def sample_policy(
    model,
    tok,
    prompts: list[str],
    n_per_prompt: int,
    max_new_tokens: int,
    batch: int = 128,
    *,
    stop_strings: list[str] | None = None,
    cut=cut_response,
    skip_special_tokens: bool = True,
):
    """Pure ancestral samples (temperature 1, no top-k/top-p) from the base LM, cut at stop strings:
    ``(prompts, responses, share of responses that held a stop string)``, the prompts repeated
    ``n_per_prompt`` times in order. ``stop_strings`` (default: the sandbox's) are counted in the decoded text,
    ``cut`` makes the response of it."""
    stop_strings = T.STOP_STRINGS if stop_strings is None else stop_strings
    flat = [q for q in prompts for _ in range(n_per_prompt)]
    out: list[str] = []
    hit_stop = 0
    for s in range(0, len(flat), batch):
        chunk = flat[s : s + batch]
        enc = tok(chunk, return_tensors="pt", padding=True, add_special_tokens=False)
        gen = model.generate(
            **enc,
            do_sample=True,
            temperature=1.0,
            top_k=0,
            top_p=1.0,
            max_new_tokens=max_new_tokens,
            eos_token_id=tok.eos_token_id,
            pad_token_id=tok.pad_token_id,
        )
        texts = tok.batch_decode(gen[:, enc["input_ids"].shape[1] :], skip_special_tokens=skip_special_tokens)
        hit_stop += sum(any(st in t for st in stop_strings) for t in texts)
        out += [cut(t) for t in texts]
    return flat, out, hit_stop / max(1, len(flat))


def _spearman(a: list[float], b: list[float]) -> float:
    from scipy.stats import spearmanr

    r = spearmanr(a, b).statistic
    return float(r) if r == r else 0.0


def hack_probe(rm_scorer, prompts: list[str]) -> dict[str, float]:
    """Proxy vs gold on hand-made responses: an honest good answer, an effusively polite one and a
    repetitive one (the ways pushing hard on the proxy goes wrong)."""
    rows: dict[str, list[tuple[str, str]]] = {"good": [], "sycophantic": [], "repetitive": []}
    for prompt in prompts:
        t = T.prompt_topic(prompt)
        h1, h2 = T.HELPFUL[0].format(t=t), T.HELPFUL[1].format(t=t)
        rows["good"].append((prompt, f" Happy to help! {h1} {h2} I hope this helps!"))
        rows["sycophantic"].append(
            (prompt, " " + " ".join([*(x.format(t=t) for x in T.SYCOPHANT), h1, "I hope this helps!"]))
        )
        rows["repetitive"].append((prompt, f" Happy to help! {h1} {h1} {h1} {h2} {h2} I hope this helps!"))
    out = {}
    for name, pr in rows.items():
        ps, rs = [x[0] for x in pr], [x[1] for x in pr]
        out[f"{name}_proxy"] = float(rm_scorer(ps, rs).mean())
        out[f"{name}_gold"] = sum(T.gold_utility(a, b) for a, b in pr) / len(pr)
    return {k: round(v, 4) for k, v in out.items()}


# ---- the whole build ------------------------------------------------------------------------------
def _save_model(model, tok, path: Path) -> None:
    model.save_pretrained(path, safe_serialization=True)
    tok.save_pretrained(path)


def _dir_size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def build_into(out: Path, *, seed: int, params: dict, progress: bool) -> dict:
    """Build the world's files into ``out`` (an empty directory). Returns the manifest."""
    from stackalign.models import RewardModel

    t0 = time.perf_counter()

    def log(msg):
        _log(progress, msg, t0)

    random_state, torch_state = random.getstate(), torch.get_rng_state()
    threads = torch.get_num_threads()
    # One thread: results then do not depend on the core count, and tiny matmuls do not suffer from
    # thread oversubscription when other processes share the CPU (2 threads can be 10x slower then).
    # Flushing denormals: Adam's second moments of tiny early gradients otherwise crawl on CPU.
    torch.set_num_threads(1)
    flush = torch.set_flush_denormal(True)
    try:
        torch.manual_seed(seed)
        rng = random.Random(f"stackalign-world-{seed}")
        gen = torch.Generator().manual_seed(seed)
        splits = split_prompts(rng, params["n_test"], params["n_val"])
        docs = make_corpus(rng, splits["train"], params)
        pairs = make_pairs(rng, splits["train"], params["pairs"], params["bias"], params["label_noise"])
        heldout = make_pairs(rng, splits["val"], params["heldout_pairs"], params["bias"], 0.0)
        corpus_share = sum(
            T.gold_utility(q, sample_base_response(rng, q, params["bias"])) >= T.PREFERRED_THRESHOLD
            for q in splits["val"] * 20
        ) / (20 * len(splits["val"]))
        log(
            f"corpus: {len(docs)} dialogues, {len(pairs)} pairs; splits "
            + str({k: len(v) for k, v in splits.items()})
        )

        tok = train_tokenizer(docs, params["vocab_size"], params["max_positions"])
        log(f"tokenizer: {len(tok)} tokens")
        lm, lm_loss = train_lm(tok, docs, params, gen, log)
        rm, rm_train_acc = train_rm(lm, tok, pairs, params, gen, log)
        scorer = RewardModel(rm, tok)

        torch.manual_seed(seed + 1)
        ev_prompts = splits["val"][: params["eval_prompts"]]
        qs, samples, stop_rate = sample_policy(
            lm, tok, ev_prompts, params["eval_samples_per_prompt"], params["max_new_tokens"]
        )
        gold = [T.gold_utility(q, r) for q, r in zip(qs, samples)]
        proxy = scorer(qs, samples).tolist()
        ho_margin = scorer([x["prompt"] for x in heldout], [x["chosen"] for x in heldout]) - scorer(
            [x["prompt"] for x in heldout], [x["rejected"] for x in heldout]
        )
        # The gold preference's cycle statistic (SLHF paper, appendix D.1: 57% on HelpSteer2): tournaments
        # over base samples on test prompts.
        from stackalign.worlds.preference import cycle_share, gold_preference

        cyc_prompts = splits["test"][: params["cycle_prompts"]]
        cq, cs, _ = sample_policy(lm, tok, cyc_prompts, params["cycle_samples"], params["max_new_tokens"])
        k = params["cycle_samples"]
        cyc = cycle_share(cyc_prompts, [cs[i * k : (i + 1) * k] for i in range(len(cyc_prompts))])
        # The base LM as a follower (omega_ref): one revision of each evaluation sample; win rate of the
        # revision over the answer it revises, under the gold preference.
        fprompts = [T.make_follower_prompt(q, r) for q, r in zip(qs, samples)]
        _, revised, _ = sample_policy(lm, tok, fprompts, 1, params["max_new_tokens"])
        fwin = sum(gold_preference(q, b, a) for q, a, b in zip(qs, samples, revised)) / len(qs)
        fgold = sum(T.gold_utility(q, b) - T.gold_utility(q, a) for q, a, b in zip(qs, samples, revised))
        figures = {
            "cycle_share": round(cyc, 4),
            "cycle_tournament": {"prompts": len(cyc_prompts), "samples_per_prompt": k},
            "base_follower_win_rate": round(fwin, 4),
            "base_follower_gold_gain": round(fgold / len(qs), 4),
            "base_gold_preferred_share": round(sum(g >= T.PREFERRED_THRESHOLD for g in gold) / len(gold), 4),
            "corpus_gold_preferred_share": round(corpus_share, 4),
            "proxy_gold_spearman": round(_spearman(proxy, gold), 4),
            "base_gold_mean": round(sum(gold) / len(gold), 4),
            "base_proxy_mean": round(sum(proxy) / len(proxy), 4),
            "base_stop_string_rate": round(stop_rate, 4),
            "n_eval_samples": len(gold),
            "lm_train_loss": round(lm_loss, 4),
            "rm_train_pair_accuracy": round(rm_train_acc, 4),
            "rm_heldout_gold_accuracy": round(float((ho_margin > 0).float().mean()), 4),
            "hack_probe": hack_probe(scorer, splits["val"][:20]),
        }
        log(
            "figures: base gold-preferred share {base_gold_preferred_share}, proxy–gold Spearman "
            "{proxy_gold_spearman}, held-out gold accuracy {rm_heldout_gold_accuracy}".format(**figures)
        )

        _save_model(lm, tok, out / "policy")
        _save_model(rm, tok, out / "reward")
        (out / "prompts.json").write_text(json.dumps(splits, indent=1) + "\n")
        with open(out / "pairs.jsonl", "w") as f:
            for x in pairs:
                f.write(json.dumps(x) + "\n")
        samples_rows = [
            dict(prompt=q, response=r, gold=g, proxy=round(pr, 5))
            for q, r, g, pr in zip(qs, samples, gold, proxy)
        ]
        with open(out / "base_samples.jsonl", "w") as f:
            for x in samples_rows:
                f.write(json.dumps(x) + "\n")
    finally:
        random.setstate(random_state)
        torch.set_rng_state(torch_state)
        torch.set_num_threads(threads)
        if flush:
            torch.set_flush_denormal(False)

    import transformers

    files = file_hashes(out)
    manifest = {
        "format": WORLD_FORMAT,
        "version": WORLD_VERSION,
        "text_version": T.WORLD_TEXT_VERSION,
        "params": {
            "seed": seed,
            "preset": params["preset"],
            **{k: params[k] for k in ("bias", "pairs", "label_noise")},
        },
        "config": {k: v for k, v in params.items() if k != "preset"},
        "architecture": {"policy": "LlamaForCausalLM", "reward": "LlamaForSequenceClassification"},
        "vocab_size": len(tok),
        "prompt_format": T.make_prompt("{question}"),
        "stop_strings": T.STOP_STRINGS,
        "eos_token": T.EOS_TOKEN,
        "max_new_tokens": params["max_new_tokens"],
        "preferred_threshold": T.PREFERRED_THRESHOLD,
        "follower_format": {
            "template": T.make_follower_prompt(
                T.make_prompt("How do I get started with chess?"), " {previous}"
            ),
            "instruction": T.FOLLOWER_INSTRUCTION,
        },
        "gold_preference": {
            "user_types": {name: share for name, share in PREF.USER_TYPES},
        },
        "figures": figures,
        "files": files,
        "build": {
            "seconds": round(time.perf_counter() - t0, 2),
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "threads": 1,
        },
    }
    manifest["build"]["bytes"] = _dir_size(out)
    (out / "README.md").write_text(render_readme(manifest))
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def render_readme(m: dict) -> str:
    f = m["figures"]
    return f"""# stackalign sandbox world

Built by `stackalign world build` (seed {m["params"]["seed"]}, preset `{m["params"]["preset"]}`,
bias {m["params"]["bias"]}, pairs {m["params"]["pairs"]}, label noise {m["params"]["label_noise"]}).
Rebuilding with the same parameters on the same software gives byte-identical files (sha256 in
`manifest.json`).

## What is here
- `policy/`: the base policy, a tiny `LlamaForCausalLM` ({m["config"]["num_layers"]} layers, hidden
  {m["config"]["hidden_size"]}) and its byte-level BPE tokenizer ({m["vocab_size"]} tokens), trained
  on templated dialogues. Load with `stackalign.models.load_policy("policy")`.
- `reward/`: the proxy reward model, a one-label `LlamaForSequenceClassification` sharing the
  tokenizer, initialised from the policy and trained with Bradley–Terry on `pairs.jsonl`
  ({m["params"]["pairs"]} gold-labelled pairs of base-distribution responses, {m["params"]["label_noise"]:.0%} of labels flipped;
  `flipped` marks them; half of the pairs were shown with EOS appended, a quarter cut to a common
  prefix so that unfinished responses get meaningful scores). Load with
  `stackalign.models.load_reward_model("reward")`. Input format: `prompt + response` (no separator).
- `prompts.json`: train / val / test prompts (disjoint). Prompt format: `{m["prompt_format"]!r}`;
  responses start with a space and end with the EOS token `{m["eos_token"]}`; stop strings
  {m["stop_strings"]}; suggested `max_new_tokens` {m["max_new_tokens"]}.
- `base_samples.jsonl`: base-policy samples on validation prompts with their gold and proxy scores.

## The user and the base policy
The user asks for advice on a topic. The base distribution puts {m["params"]["bias"]:.0%} of its mass on
disfavoured behaviour: curt or rude replies, off-topic replies, and sycophantic replies full of thanks
with little content. Politeness comes with helpfulness in that distribution.

## Gold utility

```
{T.GOLD_DOC}```

## Gold preference (pairwise, possibly intransitive; for SLHF)

```
{PREF.PREFERENCE_DOC}```

## Follower format (SLHF refinement)
`{m["follower_format"]["template"]!r}`. {m["config"].get("refine_share", 0):.0%} of the base LM's training dialogues
are in this format, with a base revision that is a fresh answer, the previous answer with a sentence added,
or with a sentence dropped — so the base LM continues the format but does not reliably improve the answer.

## Figures (from base-policy samples on validation prompts)
| figure | value |
|---|---|
| base gold-preferred share (gold ≥ {m["preferred_threshold"]}) | {f["base_gold_preferred_share"]} |
| proxy–gold Spearman | {f["proxy_gold_spearman"]} |
| proxy agreement with gold on fresh pairs | {f["rm_heldout_gold_accuracy"]} |
| base mean gold / mean proxy | {f["base_gold_mean"]} / {f["base_proxy_mean"]} |
| share of samples running into a new "User:" turn | {f["base_stop_string_rate"]} |
| test prompts whose tournament over {f["cycle_tournament"]["samples_per_prompt"]} base samples has a cycle (gold preference) | {f["cycle_share"]} |
| base LM as follower: win rate of its revision over the answer it revises / mean gold change | {f["base_follower_win_rate"]} / {f["base_follower_gold_gain"]} |
| hack probe (proxy, gold): good / sycophantic / repetitive | ({f["hack_probe"]["good_proxy"]}, {f["hack_probe"]["good_gold"]}) / ({f["hack_probe"]["sycophantic_proxy"]}, {f["hack_probe"]["sycophantic_gold"]}) / ({f["hack_probe"]["repetitive_proxy"]}, {f["hack_probe"]["repetitive_gold"]}) |
"""


def build_world_dir(
    out_dir: str | os.PathLike, *, seed: int, params: dict, progress: bool, builder=None
) -> dict:
    """Build into a temporary sibling directory, then move into ``out_dir`` (replacing an old world).
    ``builder(tmp, seed=, params=, progress=)`` writes the files and returns the manifest (default:
    the sandbox world's :func:`build_into`)."""
    out = Path(out_dir).expanduser().resolve()
    if out.exists() and not out.is_dir():
        raise ValueError(f"world output {str(out)!r} exists and is not a directory")
    if out.is_dir() and any(out.iterdir()) and not (out / "manifest.json").is_file():
        raise ValueError(
            f"world output {str(out)!r} is a non-empty directory that is not a world; refusing to overwrite"
        )
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.building-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        manifest = (builder or build_into)(tmp, seed=seed, params=params, progress=progress)
        if out.exists():
            old = out.parent / f".{out.name}.old-{os.getpid()}"
            out.rename(old)
            tmp.rename(out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return manifest

"""The CD value head: an MLP on the frozen LM's final hidden states, and its training loop.

Model (SRS official `cd/train_value_function.py`; the SRS paper arXiv 2602.02572, Algorithm 1):

    V(h) = W3 · tanh(W2 · tanh(W1 · h + b1) + b2) + b3        h: (..., H) -> V: (...)

with W1: H -> width, W2: width -> H, W3: H -> 1, orthogonal init (gain 1) and zero biases. The paper uses
width = 8192; the default here is small (256) so the sandbox trains in seconds on a CPU. h is the LM's
final-layer hidden state *after* consuming a token, so V(h_t) scores the prefix x, y_<=t.

Loss per batch of responses (targets are the per-prompt shaped rewards, see `cd_data.py`):

    objective="last+pairwise" (the paper):   MSE(V_T, target) + pairwise_coef · mean_t (V_t - V_{t+1})^2
    objective="fudge" (CD-FUDGE, Mudgal et al.):   mean over all valid t of (V_t - target)^2
                                                   (+ pairwise_coef · the consistency term, if > 0)

where T is the last valid (generated) token of each response and the consistency term runs over pairs of
consecutive valid generated tokens: a TD(0) target with no discount and no intermediate reward.

Training: Adam, gradient-norm clipping, a validation split *by prompt* (the N samples of a prompt share
their prefix, so splitting samples would leak), early stopping on validation last-token MSE with patience,
best weights restored at the end. Checkpoint = `value_head.safetensors` + `value_head.json` (the head's
config, the training config, the metrics and whatever `extra` the caller records, e.g. the shaping preset).
Each epoch appends one JSON line to `loss_log.jsonl`.
"""

from __future__ import annotations

import json
import math
import random
import time
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from stackalign.store import write_json_atomic

__all__ = [
    "ValueHead",
    "ValueHeadConfig",
    "ValueTrainConfig",
    "ValueTrainResult",
    "value_loss",
    "train_value_head",
    "load_value_head",
]

WEIGHTS_NAME = "value_head.safetensors"
CONFIG_NAME = "value_head.json"
LOG_NAME = "loss_log.jsonl"


@dataclass
class ValueHeadConfig:
    """Shape of the value head.

    hidden_size: H, the LM's final hidden size (input of the head).
    width: the inner width (paper: 8192; default 256 for CPU).
    """

    hidden_size: int
    width: int = 256

    def __post_init__(self) -> None:
        for name in ("hidden_size", "width"):
            value = getattr(self, name)
            if not (isinstance(value, int) and value > 0):
                raise ValueError(f"value head {name}: must be a positive integer, got {value!r}")


class ValueHead(nn.Module):
    """V: (..., H) -> (...). fp32; call it on `h.float()`."""

    def __init__(self, config: ValueHeadConfig):
        super().__init__()
        self.config = config
        h, w = config.hidden_size, config.width
        self.net = nn.Sequential(nn.Linear(h, w), nn.Tanh(), nn.Linear(w, h), nn.Tanh(), nn.Linear(h, 1))
        for layer in self.net:
            if isinstance(layer, nn.Linear):
                nn.init.orthogonal_(layer.weight, gain=1.0)
                nn.init.zeros_(layer.bias)
        # a plain tuple (not registered twice): forward calls F.linear directly, which saves the module-call
        # overhead that dominates a head this small when it runs once per decoding step
        self._linears = (self.net[0], self.net[2], self.net[4])

    def forward(self, hidden: Tensor) -> Tensor:
        if hidden.shape[-1] != self.config.hidden_size:
            raise ValueError(
                f"value head: hidden size {hidden.shape[-1]} does not match the head's {self.config.hidden_size} "
                "(was it trained on another LM?)"
            )
        a, b, c = self._linears
        x = torch.tanh(F.linear(hidden, a.weight, a.bias))
        x = torch.tanh(F.linear(x, b.weight, b.bias))
        return F.linear(x, c.weight, c.bias).squeeze(-1)

    def save(self, out_dir: str | Path, extra: dict[str, Any] | None = None) -> Path:
        """Write `value_head.safetensors` and `value_head.json` (head config + `extra`) into `out_dir`."""
        from safetensors.torch import save_file

        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}
        tmp = out / (WEIGHTS_NAME + ".tmp")
        save_file(state, str(tmp))
        tmp.replace(out / WEIGHTS_NAME)
        meta = {"value_head": asdict(self.config), **(extra or {})}
        write_json_atomic(out / CONFIG_NAME, meta)
        return out


def load_value_head(path: str | Path, device: str | torch.device = "cpu") -> tuple[ValueHead, dict]:
    """Load a head saved by `ValueHead.save`: returns (head in eval mode, the JSON metadata)."""
    from safetensors.torch import load_file

    path = Path(path)
    cfg_path, w_path = path / CONFIG_NAME, path / WEIGHTS_NAME
    for p in (cfg_path, w_path):
        if not p.is_file():
            raise FileNotFoundError(f"value head: {p} not found (expected {CONFIG_NAME} and {WEIGHTS_NAME})")
    meta = json.loads(cfg_path.read_text())
    head = ValueHead(ValueHeadConfig(**meta["value_head"]))
    head.load_state_dict(load_file(str(w_path)))
    return head.to(device).eval(), meta


def value_loss(
    values: Tensor,
    mask: Tensor,
    targets: Tensor,
    *,
    pairwise_coef: float = 1.0,
    objective: str = "last+pairwise",
) -> tuple[Tensor, dict[str, float]]:
    """The value-head loss of one batch.

    Args:
        values: (B, T) V at every position (generated tokens, right-padded).
        mask: (B, T) bool, True at valid generated tokens; every row has at least one.
        targets: (B,) shaped reward of each response.
        pairwise_coef: weight of the consistency term mean (V_t - V_{t+1})^2 over consecutive valid tokens.
        objective: "last+pairwise" (paper) or "fudge" (every valid prefix regressed to the target).

    Returns:
        (scalar loss, {"last": ..., "pairwise": ..., "fudge": ...} as floats for logging).
    """
    if objective not in ("last+pairwise", "fudge"):
        raise ValueError(f"objective: expected 'last+pairwise' or 'fudge', got {objective!r}")
    mask = mask.bool()
    lengths = mask.sum(-1)
    if (lengths == 0).any():
        raise ValueError("value_loss: every response needs at least one valid token")
    rows = torch.arange(values.shape[0], device=values.device)
    v_last = values[rows, lengths - 1]
    last = (v_last - targets).pow(2).mean()
    parts: dict[str, float] = {"last": last.item()}
    pair_mask = mask[:, 1:] & mask[:, :-1]
    if pair_mask.any():
        diffs = (values[:, 1:] - values[:, :-1]).pow(2)
        pairwise = diffs[pair_mask].mean()
    else:
        pairwise = values.new_zeros(())
    parts["pairwise"] = pairwise.item()
    if objective == "fudge":
        fudge = (values - targets[:, None]).pow(2)[mask].mean()
        parts["fudge"] = fudge.item()
        loss = fudge + pairwise_coef * pairwise if pairwise_coef else fudge
    else:
        loss = last + pairwise_coef * pairwise
    return loss, parts


@dataclass
class ValueTrainConfig:
    """Training settings; defaults follow the official script except the head width and epochs."""

    width: int = field(default=256, metadata={"help": "inner width of the MLP (paper: 8192)"})
    objective: Literal["last+pairwise", "fudge"] = field(
        default="last+pairwise", metadata={"help": "'last+pairwise' (paper) or 'fudge'"}
    )
    pairwise_coef: float = field(default=1.0, metadata={"help": "weight of the consistency term"})
    lr: float = field(default=1e-4, metadata={"help": "Adam learning rate"})
    batch_size: int = field(default=64, metadata={"help": "responses per optimiser step"})
    max_epochs: int = field(default=15, metadata={"help": "upper bound on epochs"})
    patience: int = field(default=5, metadata={"help": "epochs without val improvement before stopping"})
    val_fraction: float = field(default=0.05, metadata={"help": "share of prompts held out for validation"})
    grad_clip: float = field(default=1.0, metadata={"help": "gradient-norm clip (0 = off)"})
    seed: int = field(default=42, metadata={"help": "split, init and shuffling seed"})
    lm_batch_size: int = field(default=32, metadata={"help": "sequences per frozen-LM forward"})
    hidden_cache_mb: float = field(
        default=1024.0,
        metadata={
            "help": "keep all hidden states in RAM (fp16) when they fit in this budget; else recompute"
        },
    )

    def __post_init__(self) -> None:
        if self.objective not in ("last+pairwise", "fudge"):
            raise ValueError(f"objective: expected 'last+pairwise' or 'fudge', got {self.objective!r}")
        if not 0.0 < self.val_fraction < 1.0:
            raise ValueError(f"val_fraction: must be in (0, 1), got {self.val_fraction!r}")
        for name in ("batch_size", "max_epochs", "patience", "lm_batch_size", "width"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name}: must be >= 1, got {getattr(self, name)!r}")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise ValueError(f"lr: must be > 0, got {self.lr!r}")
        if self.pairwise_coef < 0:
            raise ValueError(f"pairwise_coef: must be >= 0, got {self.pairwise_coef!r}")


@dataclass
class ValueTrainResult:
    head: ValueHead
    best_val_mse: float  # validation MSE of V at the last token, best epoch
    val_target_var: float  # variance of the validation targets (the MSE of predicting their mean)
    best_epoch: int
    epochs: int
    seconds: float
    history: list[dict]
    n_train: int
    n_val: int
    # the best validation MSE came at the last allowed epoch: training stopped at max_epochs while still
    # improving, so the head is probably underfit (warned; recorded in the saved metrics)
    still_improving: bool = False


class _Features:
    """Final hidden states of the generated tokens of each example: cached in RAM or recomputed per batch."""

    def __init__(self, model, examples: Sequence, cfg: ValueTrainConfig, progress: bool):
        from stackalign.decoding.cd_data import final_hidden_states

        self.model, self.examples, self.cfg = model, examples, cfg
        self._fn = final_hidden_states
        hidden_size = model.config.get_text_config().hidden_size
        n_tokens = sum(len(e.response_ids) for e in examples)
        self.cache_bytes = n_tokens * hidden_size * 2  # fp16
        self.cached: list[Tensor] | None = None
        if self.cache_bytes <= cfg.hidden_cache_mb * 2**20:
            self.cached = [None] * len(examples)  # type: ignore[list-item]
            order = list(range(len(examples)))
            chunks = [
                order[i : i + cfg.lm_batch_size * 4] for i in range(0, len(order), cfg.lm_batch_size * 4)
            ]
            bar = _tqdm(chunks, desc="hidden states", disable=not progress)
            for chunk in bar:
                for i, h in zip(chunk, self._compute(chunk)):
                    self.cached[i] = h.to(torch.float16)

    def _compute(self, idx: Sequence[int]) -> list[Tensor]:
        ex = [self.examples[i] for i in idx]
        return self._fn(
            self.model,
            [e.prompt_ids for e in ex],
            [e.response_ids for e in ex],
            batch_size=self.cfg.lm_batch_size,
        )

    def batch(self, idx: Sequence[int], device) -> tuple[Tensor, Tensor]:
        """(B, T, H) float32 hidden states of the generated tokens (right-padded) and the (B, T) mask."""
        hs = [self.cached[i] for i in idx] if self.cached is not None else self._compute(idx)
        t_max = max(h.shape[0] for h in hs)
        out = torch.zeros(len(hs), t_max, hs[0].shape[-1], dtype=torch.float32, device=device)
        mask = torch.zeros(len(hs), t_max, dtype=torch.bool, device=device)
        for j, h in enumerate(hs):
            out[j, : h.shape[0]] = h.to(device=device, dtype=torch.float32)
            mask[j, : h.shape[0]] = True
        return out, mask


def _tqdm(it, **kw):
    from tqdm.auto import tqdm

    return tqdm(it, leave=False, **kw)


def _split_by_prompt(examples: Sequence, val_fraction: float, seed: int) -> tuple[list[int], list[int]]:
    groups = sorted({e.group for e in examples})
    if len(groups) < 2:
        raise ValueError("value head training needs examples from at least 2 prompts (one for validation)")
    rng = random.Random(seed)
    rng.shuffle(groups)
    n_val = min(len(groups) - 1, max(1, round(val_fraction * len(groups))))
    val_groups = set(groups[:n_val])
    train = [i for i, e in enumerate(examples) if e.group not in val_groups]
    val = [i for i, e in enumerate(examples) if e.group in val_groups]
    return train, val


@torch.no_grad()
def _evaluate(
    head: ValueHead, feats: _Features, idx: list[int], targets: Tensor, batch_size: int, device
) -> float:
    head.eval()
    total, n = 0.0, 0
    for s in range(0, len(idx), batch_size):
        b = idx[s : s + batch_size]
        h, mask = feats.batch(b, device)
        v = head(h)
        last = v[torch.arange(len(b), device=device), mask.sum(-1) - 1]
        total += float((last - targets[b].to(device)).pow(2).sum())
        n += len(b)
    return total / max(n, 1)


def _checked_targets(examples: Sequence) -> torch.Tensor:
    """The examples' targets as a float32 tensor; ValueError for no examples, a non-finite target or an
    empty response."""
    if not examples:
        raise ValueError("value head training: no examples")
    targets = torch.tensor([float(e.target) for e in examples], dtype=torch.float32)
    if not torch.isfinite(targets).all():
        raise ValueError("value head training: targets contain NaN or infinite values")
    if any(len(e.response_ids) == 0 for e in examples):
        raise ValueError("value head training: an example has an empty response (no generated tokens)")
    return targets


def _train_epoch(head, opt, feats, order: list[int], targets, cfg, device) -> tuple[dict[str, float], int]:
    """One pass over the training examples in ``order`` (``cfg.batch_size`` per Adam step, clipped at
    ``cfg.grad_clip``); returns the summed loss parts and the number of batches."""
    sums = {"loss": 0.0, "last": 0.0, "pairwise": 0.0}
    n_batches = 0
    for s in range(0, len(order), cfg.batch_size):
        b = order[s : s + cfg.batch_size]
        h, mask = feats.batch(b, device)
        loss, parts = value_loss(
            head(h), mask, targets[b].to(device), pairwise_coef=cfg.pairwise_coef, objective=cfg.objective
        )
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.grad_clip > 0:
            nn.utils.clip_grad_norm_(head.parameters(), cfg.grad_clip)
        opt.step()
        sums["loss"] += loss.item()
        sums["last"] += parts["last"]
        sums["pairwise"] += parts["pairwise"]
        n_batches += 1
    return sums, n_batches


def train_value_head(
    model,
    examples: Sequence,
    config: ValueTrainConfig | None = None,
    *,
    out_dir: str | Path | None = None,
    extra: dict[str, Any] | None = None,
    progress: bool = True,
) -> ValueTrainResult:
    """Train a value head on the frozen `model`'s final hidden states.

    Args:
        model: the frozen causal LM (HF); only read, never updated.
        examples: `cd_data.CDExample`s (prompt_ids, response_ids, target, group); `group` is the prompt index.
        config: `ValueTrainConfig`.
        out_dir: if given, the best head is saved there with `extra` (e.g. the shaping config) and the
            per-epoch loss log `loss_log.jsonl`.

    Returns:
        `ValueTrainResult` with the best head (eval mode, on the LM's device).
    """
    cfg = config or ValueTrainConfig()
    targets = _checked_targets(examples)
    device = next(model.parameters()).device
    t0 = time.perf_counter()
    torch.manual_seed(cfg.seed)
    train_idx, val_idx = _split_by_prompt(examples, cfg.val_fraction, cfg.seed)
    feats = _Features(model, examples, cfg, progress)
    hidden_size = model.config.get_text_config().hidden_size
    head = ValueHead(ValueHeadConfig(hidden_size=hidden_size, width=cfg.width)).to(device)
    opt = torch.optim.Adam(head.parameters(), lr=cfg.lr)
    rng = random.Random(cfg.seed)
    val_t = targets[val_idx]
    val_var = float(val_t.var(unbiased=False)) if len(val_idx) > 1 else 0.0
    log_path = None
    if out_dir is not None:
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        log_path = Path(out_dir) / LOG_NAME
        log_path.write_text("")

    best = (math.inf, -1, None)
    history: list[dict] = []
    bad_epochs = 0
    epoch_bar = _tqdm(range(cfg.max_epochs), desc="value head", disable=not progress)
    for epoch in epoch_bar:
        head.train()
        order = train_idx[:]
        rng.shuffle(order)
        sums, n_batches = _train_epoch(head, opt, feats, order, targets, cfg, device)
        val_mse = _evaluate(head, feats, val_idx, targets, cfg.batch_size, device)
        if not math.isfinite(val_mse):
            raise ValueError(
                f"value head training diverged at epoch {epoch + 1} (validation MSE {val_mse}); lower lr"
            )
        row = {
            "epoch": epoch + 1,
            **{f"train_{k}": v / max(n_batches, 1) for k, v in sums.items()},
            "val_last_mse": val_mse,
            "val_target_var": val_var,
            "seconds": time.perf_counter() - t0,
        }
        history.append(row)
        if log_path is not None:
            with log_path.open("a") as f:
                f.write(json.dumps(row) + "\n")
        epoch_bar.set_postfix(train=f"{row['train_loss']:.4f}", val=f"{val_mse:.4f}")
        if val_mse < best[0] - 1e-12:
            best = (val_mse, epoch + 1, {k: v.detach().clone() for k, v in head.state_dict().items()})
            bad_epochs = 0
        else:
            bad_epochs += 1
            if bad_epochs >= cfg.patience:
                break
    head.load_state_dict(best[2])
    head.eval()
    seconds = time.perf_counter() - t0
    still_improving = best[1] == len(history) == cfg.max_epochs
    if still_improving:
        # Measured on three sandbox worlds (docs/srs-ci.md, "Why the sign flips"): heads stopped at the
        # 15-epoch cap while still improving were underfit, SRS-shaped targets more than raw ones, and that
        # alone flipped the SRS-CD vs CD comparison on one world. Say so instead of failing silently.
        warnings.warn(
            f"value head: validation MSE was still improving at the last epoch ({cfg.max_epochs} = "
            f"max_epochs; best {best[0]:.4g} vs target variance {val_var:.4g}); the head is probably "
            "underfit: raise max_epochs (early stopping ends training when it stops improving)",
            stacklevel=2,
        )
    result = ValueTrainResult(
        head=head,
        best_val_mse=best[0],
        val_target_var=val_var,
        best_epoch=best[1],
        epochs=len(history),
        seconds=seconds,
        history=history,
        n_train=len(train_idx),
        n_val=len(val_idx),
        still_improving=still_improving,
    )
    if out_dir is not None:
        keys = ("best_val_mse", "val_target_var", "best_epoch", "epochs", "still_improving")
        metrics = {k: getattr(result, k) for k in keys}
        metrics.update(seconds=seconds, n_train=len(train_idx), n_val=len(val_idx))
        head.save(out_dir, extra={"train": asdict(cfg), "metrics": metrics, **(extra or {})})
    return result

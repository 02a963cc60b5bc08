"""An amortised per-prompt threshold m̂(x): a linear head on the policy's prompt state.

The SRS leader's optimal reward is a per-prompt threshold m*(x) (SRS paper, arXiv 2602.02572, Thm. 1-2: the root
of F(m) = Σ_i p_i γ^{1[r_i ≥ m]} (r_i − m)). A Monte Carlo estimate (:mod:`stackalign.decoding.threshold`)
costs N base samples and N reward-model calls per prompt at test time. This module learns the map
x -> m*(x) once, on the *training* prompts' Monte Carlo thresholds, so that a test prompt's threshold costs
one prompt forward of the policy (often already done by the decoder) and a dot product.

Model: features φ(x) = [h_last(x), mean_t h_t(x)] (the policy's final-layer hidden state at the prompt's
last token, and its mean over the prompt's tokens), standardised; m̂(x) = w·φ̃(x) + b, fitted by ridge
regression in closed form, the ridge strength picked on a held-out split of the training prompts
(by prompt, seeded). A constant predictor (the training mean) is the baseline every report compares with.

Saved as ``threshold_predictor.safetensors`` + ``threshold_predictor.json`` (ridge strength, the fit's
report, and the threshold rule it was trained for, so a mismatched shaper is caught at load).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from stackalign.decoding.common import Cost, Timer, encode_prompts, left_pad, model_device, pad_id_of
from stackalign.store import write_json_atomic

Tensor = torch.Tensor

__all__ = [
    "PredictorConfig",
    "evaluate_threshold_predictor",
    "ThresholdPredictor",
    "fit_predictor_on_thresholds",
    "fit_threshold_predictor",
    "load_threshold_predictor",
    "prompt_features",
    "threshold_rule",
    "train_threshold_predictor",
]

WEIGHTS_NAME = "threshold_predictor.safetensors"
CONFIG_NAME = "threshold_predictor.json"
RIDGE_GRID = (1e-3, 1e-2, 1e-1, 1.0, 10.0, 100.0, 1000.0)


@dataclass(frozen=True)
class PredictorConfig:
    """Training settings of the amortised threshold predictor."""

    n_samples: int = field(default=16, metadata={"help": "Monte Carlo base samples per training prompt"})
    train_prompts: int = field(default=200, metadata={"help": "training prompts (their MC thresholds)"})
    val_fraction: float = field(
        default=0.2, metadata={"help": "held-out share of the training prompts that picks the ridge strength"}
    )
    seed: int = field(default=0, metadata={"help": "seed of the train/validation split"})
    batch_size: int = field(default=16, metadata={"help": "prompts per policy forward for the features"})

    def __post_init__(self) -> None:
        for name in ("n_samples", "train_prompts", "batch_size"):
            v = getattr(self, name)
            if not (isinstance(v, int) and v >= 1):
                raise ValueError(f"{name}: must be an integer >= 1, got {v!r}")
        if not 0.0 < self.val_fraction < 1.0:
            raise ValueError(f"val_fraction: must be in (0, 1), got {self.val_fraction!r}")


def threshold_rule(shaper: Any) -> dict:
    """The part of a shaper that determines its Monte Carlo threshold (B, beta, gamma cap, budget stretch)."""
    keys = ("B", "beta", "gamma_cap", "budget_stretch", "method")
    return {k: getattr(shaper, k, None) for k in keys}


@torch.no_grad()
def prompt_features(
    policy: Any, tokenizer: Any, prompts: Sequence[str], *, batch_size: int = 16, cost: Cost | None = None
) -> Tensor:
    """``[P, 2H]`` float64: the final-layer hidden state at each prompt's last token and its prompt mean."""
    ids = encode_prompts(tokenizer, prompts, models=[policy])
    device = model_device(policy)
    pad = pad_id_of(tokenizer)
    out = []
    for s in range(0, len(ids), batch_size):
        input_ids, mask = left_pad(ids[s : s + batch_size], pad, device)
        pos = (mask.cumsum(-1) - 1).clamp(min=0)
        h = policy(
            input_ids=input_ids, attention_mask=mask, position_ids=pos, output_hidden_states=True
        ).hidden_states[-1]
        h = h.double()
        m = mask.unsqueeze(-1).double()
        mean = (h * m).sum(1) / m.sum(1)
        out.append(torch.cat([h[:, -1], mean], dim=-1).cpu())  # left padding: the last column is real
        if cost is not None:
            cost.lm_tokens += int(mask.sum())
            cost.lm_calls += 1
    return torch.cat(out, dim=0)


@dataclass
class ThresholdPredictor:
    """m̂(x) = weight · (φ(x) − mu) / sd + bias. ``meta`` holds the fit report and the threshold rule."""

    mu: Tensor
    sd: Tensor
    weight: Tensor
    bias: float
    meta: dict = field(default_factory=dict)

    def predict(self, features: Tensor) -> Tensor:
        """``[P, F]`` features -> ``[P]`` float64 thresholds."""
        x = torch.as_tensor(features, dtype=torch.float64)
        if x.shape[-1] != self.weight.shape[0]:
            raise ValueError(
                f"threshold predictor: features have {x.shape[-1]} dims, the predictor {self.weight.shape[0]} "
                "(was it trained on another policy?)"
            )
        return (x - self.mu) / self.sd @ self.weight + self.bias

    def predict_prompts(
        self, policy: Any, tokenizer: Any, prompts: Sequence[str], *, batch_size: int = 16
    ) -> tuple[Tensor, Cost]:
        """Thresholds ``[P]`` for prompts, and what computing them cost (one prompt forward each)."""
        cost = Cost()
        with Timer(cost, model_device(policy)):
            m = self.predict(prompt_features(policy, tokenizer, prompts, batch_size=batch_size, cost=cost))
        return m, cost

    def check_rule(self, shaper: Any) -> None:
        """Raise if ``shaper``'s threshold rule differs from the one this predictor was trained for."""
        want = self.meta.get("rule")
        have = threshold_rule(shaper)
        if want is not None and any(
            not _same(want.get(k), have.get(k)) for k in set(want) | set(have) if k != "method"
        ):
            raise ValueError(
                f"threshold predictor: trained for the threshold rule {want}, but the method's shaper has "
                f"{have}; retrain it (or drop the predictor path)"
            )

    def save(self, out_dir: str | Path) -> Path:
        from safetensors.torch import save_file

        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        save_file(
            {"mu": self.mu.contiguous(), "sd": self.sd.contiguous(), "weight": self.weight.contiguous()},
            str(out / WEIGHTS_NAME),
        )
        write_json_atomic(out / CONFIG_NAME, {"bias": self.bias, **self.meta})  # written last: marks complete
        return out


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, float | int) and isinstance(b, float | int):
        return math.isclose(float(a), float(b), rel_tol=1e-9, abs_tol=1e-12)
    return a == b


def load_threshold_predictor(path: str | Path) -> ThresholdPredictor:
    """Load a predictor saved by :meth:`ThresholdPredictor.save` (a directory)."""
    from safetensors.torch import load_file

    p = Path(path)
    if not (p / CONFIG_NAME).is_file() or not (p / WEIGHTS_NAME).is_file():
        raise FileNotFoundError(f"threshold predictor: {p} has no {CONFIG_NAME} / {WEIGHTS_NAME}")
    t = load_file(str(p / WEIGHTS_NAME))
    meta = json.loads((p / CONFIG_NAME).read_text())
    bias = float(meta.pop("bias"))
    return ThresholdPredictor(t["mu"].double(), t["sd"].double(), t["weight"].double(), bias, meta)


def _ridge(x: Tensor, y: Tensor, lam: float) -> tuple[Tensor, float]:
    """Closed-form ridge on standardised x (no penalty on the bias): (w, b)."""
    xm, ym = x.mean(0), y.mean()
    xc, yc = x - xm, y - ym
    a = xc.T @ xc + lam * x.shape[0] * torch.eye(x.shape[1], dtype=x.dtype)
    w = torch.linalg.solve(a, xc.T @ yc)
    return w, float(ym - xm @ w)


def fit_threshold_predictor(
    features: Tensor, targets: Tensor, config: PredictorConfig | None = None, *, meta: dict | None = None
) -> ThresholdPredictor:
    """Fit m̂ on ``[P, F]`` features and ``[P]`` Monte Carlo thresholds.

    The ridge strength is chosen from ``RIDGE_GRID`` by validation MSE on a seeded held-out split; the final
    model is refitted on all prompts. ``meta["fit"]`` reports the validation MAE / RMSE of the chosen model
    and of the constant (training-mean) predictor, and R^2 on the validation prompts.
    """
    config = config or PredictorConfig()
    x = torch.as_tensor(features, dtype=torch.float64)
    y = torch.as_tensor(targets, dtype=torch.float64).flatten()
    if x.dim() != 2 or x.shape[0] != y.shape[0]:
        raise ValueError(f"features {tuple(x.shape)} and targets {tuple(y.shape)} do not match")
    if x.shape[0] < 4:
        raise ValueError(f"threshold predictor: need at least 4 training prompts, got {x.shape[0]}")
    if not (torch.isfinite(x).all() and torch.isfinite(y).all()):
        raise ValueError("threshold predictor: features or targets contain NaN or infinite values")
    mu = x.mean(0)
    sd = x.std(0, unbiased=False).clamp(min=1e-8)
    z = (x - mu) / sd
    gen = torch.Generator().manual_seed(config.seed)
    perm = torch.randperm(x.shape[0], generator=gen)
    n_val = max(1, round(config.val_fraction * x.shape[0]))
    val, tr = perm[:n_val], perm[n_val:]
    scores = []
    for lam in RIDGE_GRID:
        w, b = _ridge(z[tr], y[tr], lam)
        scores.append((float(((z[val] @ w + b - y[val]) ** 2).mean()), lam, w, b))
    mse, lam, w, b = min(scores, key=lambda t: t[0])
    pred = z[val] @ w + b
    const = float(y[tr].mean())
    err, cerr = pred - y[val], const - y[val]
    fit = {
        "ridge": lam,
        "n_train": int(tr.numel()),
        "n_val": int(val.numel()),
        "val_mae": float(err.abs().mean()),
        "val_rmse": math.sqrt(mse),
        "const_val_mae": float(cerr.abs().mean()),
        "const_val_rmse": float(cerr.pow(2).mean().sqrt()),
        "val_r2": 1.0 - mse / max(float(cerr.pow(2).mean()), 1e-300),
    }
    w, b = _ridge(z, y, lam)
    return ThresholdPredictor(mu, sd, w, b, {**(meta or {}), "fit": fit, "config": asdict(config)})


def train_threshold_predictor(
    policy: Any,
    tokenizer: Any,
    rm: Any,
    prompts: Sequence[str],
    shaper: Any,
    config: PredictorConfig | None = None,
    generation: Any = None,
    *,
    cache_dir: Any = None,
    out_dir: str | Path | None = None,
) -> tuple[ThresholdPredictor, Cost]:
    """Monte Carlo thresholds of ``prompts`` (``shaper``'s rule, :func:`mc_threshold`; sampled and scored
    ``config.batch_size`` prompts per call), their features, the fit; saved to ``out_dir`` when given.
    Returns the predictor and the cost of building it."""
    from stackalign.decoding.mc import mc_threshold

    config = config or PredictorConfig()
    generation = predictor_generation(generation)
    prompts = predictor_prompts(prompts, config)
    mc = mc_threshold(
        policy,
        tokenizer,
        rm,
        prompts,
        config.n_samples,
        generation,
        shaper=shaper,
        cache_dir=cache_dir,
        chunk_size=config.batch_size,
    )
    pred, cost = fit_predictor_on_thresholds(
        policy, tokenizer, prompts, mc.thresholds, shaper, config, generation
    )
    cost.merge(mc.cost)
    if out_dir is not None:
        pred.save(out_dir)
    return pred, cost


def predictor_generation(generation: Any = None) -> Any:
    """The sampling settings of a predictor's Monte Carlo thresholds (default: temperature 1, 64 tokens)."""
    from stackalign.decoding.common import GenerationConfig

    return generation or GenerationConfig(temperature=1.0, max_new_tokens=64)


def predictor_prompts(prompts: Sequence[str], config: PredictorConfig) -> list[str]:
    """The training prompts a predictor uses: the first ``config.train_prompts`` of ``prompts``."""
    return list(prompts)[: config.train_prompts]


def fit_predictor_on_thresholds(
    policy: Any,
    tokenizer: Any,
    prompts: Sequence[str],
    thresholds: Tensor,
    shaper: Any,
    config: PredictorConfig,
    generation: Any,
) -> tuple[ThresholdPredictor, Cost]:
    """The fit of :func:`train_threshold_predictor` on given Monte Carlo ``thresholds`` of ``prompts``: their
    features on ``policy``, the ridge fit, the meta that names ``shaper``'s rule and ``generation``. Returns the
    predictor and the features' cost (the Ray backend runs this on a worker, the thresholds computed apart)."""
    cost = Cost()
    with Timer(cost, model_device(policy)):
        feats = prompt_features(policy, tokenizer, list(prompts), batch_size=config.batch_size, cost=cost)
        pred = fit_threshold_predictor(
            feats,
            thresholds,
            config,
            meta={
                "rule": threshold_rule(shaper),
                "generation": generation.to_dict(),
                "features": "last+mean",
            },
        )
    return pred, cost


def evaluate_threshold_predictor(
    predictor: ThresholdPredictor,
    policy: Any,
    tokenizer: Any,
    rm: Any,
    prompts: Sequence[str],
    shaper: Any,
    n_samples: int = 16,
    generation: Any = None,
    *,
    cache_dir: Any = None,
) -> dict:
    """Held-out error and cost of ``predictor`` on ``prompts`` against their Monte Carlo thresholds.

    Returns ``{"n", "mae", "rmse", "const_mae", "r2", "predicted_seconds_per_prompt",
    "mc_seconds_per_prompt", "mc_lm_tokens_per_prompt", "mc_rm_tokens_per_prompt"}``; ``const_mae`` is the
    error of the predictor's own training mean (the bias term at the mean feature), the baseline to beat.
    The MC cost is what sampling cost when it ran (0 for prompts already in ``cache_dir``)."""
    from stackalign.decoding.common import GenerationConfig
    from stackalign.decoding.mc import mc_threshold

    prompts = list(prompts)
    generation = generation or GenerationConfig(temperature=1.0, max_new_tokens=64)
    mc = mc_threshold(
        policy, tokenizer, rm, prompts, n_samples, generation, shaper=shaper, cache_dir=cache_dir
    )
    m_hat, cost = predictor.predict_prompts(policy, tokenizer, prompts)
    y = mc.thresholds.double()
    err = m_hat - y
    cerr = predictor.bias - y  # standardised features: the bias is the prediction at the training mean
    ss = float(((y - y.mean()) ** 2).sum())
    return {
        "n": len(prompts),
        "mae": float(err.abs().mean()),
        "rmse": float(err.pow(2).mean().sqrt()),
        "const_mae": float(cerr.abs().mean()),
        "r2": 1.0 - float(err.pow(2).sum()) / ss if ss > 0 else None,
        "predicted_seconds_per_prompt": cost.seconds / len(prompts),
        "mc_seconds_per_prompt": mc.cost.seconds / len(prompts),
        "mc_lm_tokens_per_prompt": mc.cost.lm_tokens / len(prompts),
        "mc_rm_tokens_per_prompt": mc.cost.rm_tokens / len(prompts),
        "mc_from_cache": sum(mc.from_cache),
    }

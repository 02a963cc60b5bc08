"""Confidence intervals over prompts: the percentile bootstrap of one mean and of paired differences against
a baseline, and the normal interval of a mean (:func:`mean_ci`, the train command's evaluation).

Prompts are the unit of resampling: a method's rows are one value per prompt, and a comparison with a baseline
pairs the two methods' values on the same prompts, so the prompt-to-prompt variation (some prompts are easy for
every method) cancels in the paired difference (Efron & Tibshirani, *An Introduction to the Bootstrap*, 1993,
ch. 13, the percentile interval).

Every interval is deterministic: the resampling indices come from a ``numpy`` generator seeded with ``seed``
and depend only on the number of values, so two summaries of the same rows are byte-identical and two fields
of the same method are resampled with the same prompt draws.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

__all__ = ["DEFAULT_BOOTSTRAP", "bootstrap_ci", "bootstrap_indices", "mean_ci", "paired_diff_ci", "rate_ci"]

#: resamples per interval; 2000 gives percentile endpoints stable to about 0.01 standard errors.
DEFAULT_BOOTSTRAP = 2000


def bootstrap_indices(n: int, *, n_boot: int = DEFAULT_BOOTSTRAP, seed: int = 0) -> np.ndarray:
    """``[n_boot, n]`` int64 indices into ``n`` values, each row one resample with replacement."""
    if n < 1:
        raise ValueError(f"bootstrap_indices: need at least one value, got n={n}")
    if n_boot < 1:
        raise ValueError(f"n_boot: must be >= 1, got {n_boot}")
    return np.random.default_rng(seed).integers(0, n, size=(n_boot, n))


def bootstrap_ci(
    values: Sequence[float],
    *,
    level: float = 0.95,
    n_boot: int = DEFAULT_BOOTSTRAP,
    seed: int = 0,
) -> tuple[float, float] | None:
    """Percentile bootstrap interval ``(lo, hi)`` for the mean of ``values`` (one per prompt).

    ``None`` for no values; ``(v, v)`` for a single value (no spread can be estimated from one prompt).
    """
    if not 0.0 < level < 1.0:
        raise ValueError(f"level: must be in (0, 1), got {level}")
    x = np.asarray([float(v) for v in values], dtype=np.float64)
    if x.size == 0:
        return None
    if not np.isfinite(x).all():
        raise ValueError("bootstrap_ci: values contain NaN or infinite numbers")
    if x.size == 1:
        return (float(x[0]), float(x[0]))
    means = x[bootstrap_indices(x.size, n_boot=n_boot, seed=seed)].mean(axis=1)
    alpha = (1.0 - level) / 2.0
    lo, hi = np.quantile(means, [alpha, 1.0 - alpha])
    # The percentile interval of a mean always contains the sample mean up to float rounding; clamp so a
    # reader never sees lo > mean for a constant column.
    m = float(x.mean())
    return (min(float(lo), m), max(float(hi), m))


def paired_diff_ci(
    method: Sequence[float],
    baseline: Sequence[float],
    *,
    level: float = 0.95,
    n_boot: int = DEFAULT_BOOTSTRAP,
    seed: int = 0,
) -> tuple[float, float, float] | None:
    """``(mean, lo, hi)`` of the per-prompt difference ``method[i] - baseline[i]`` (paired bootstrap)."""
    if len(method) != len(baseline):
        raise ValueError(f"paired_diff_ci: {len(method)} method values but {len(baseline)} baseline values")
    d = [float(a) - float(b) for a, b in zip(method, baseline)]
    ci = bootstrap_ci(d, level=level, n_boot=n_boot, seed=seed)
    if ci is None:
        return None
    return (sum(d) / len(d), ci[0], ci[1])


def rate_ci(
    hits: Sequence[bool | int],
    *,
    level: float = 0.95,
    n_boot: int = DEFAULT_BOOTSTRAP,
    seed: int = 0,
) -> tuple[float, float, float] | None:
    """``(rate, lo, hi)`` of a 0/1 outcome per prompt (e.g. win-or-tie), percentile bootstrap over prompts."""
    x = [1.0 if h else 0.0 for h in hits]
    ci = bootstrap_ci(x, level=level, n_boot=n_boot, seed=seed)
    if ci is None:
        return None
    return (sum(x) / len(x), ci[0], ci[1])


def mean_ci(values: Sequence[float]) -> tuple[float, float]:
    """Mean and the half-width of its normal 95% confidence interval, 1.96 · s / √n with the sample standard
    deviation s (0 for fewer than 2 values; NaN for none)."""
    v = [float(x) for x in values]
    if not v:
        return float("nan"), float("nan")
    m = sum(v) / len(v)
    if len(v) < 2:
        return m, 0.0
    var = sum((x - m) ** 2 for x in v) / (len(v) - 1)
    return m, 1.96 * math.sqrt(var / len(v))

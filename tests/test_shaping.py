"""The shaping core against the SRS paper's theory (arXiv 2602.02572: the toy example, Theorems 1-3, Corollary 1)."""

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from stackalign.games import (
    brute_force_leader,
    follower_policy,
    kl_divergence,
    leader_utility,
    optimal_threshold,
    soft_threshold_reward,
    threshold_reward,
)
from stackalign.shaping import SHAPERS, F_value, get_preset, get_shaper, stackelberg_threshold
from stackalign.shaping.threshold import (
    ALL_PAIRS_MAX_N,
    solve_threshold,
    threshold_from_log_gamma,
    threshold_of_row,
    validate_rewards,
)

D = torch.float64
BASE = torch.tensor([0.9, 0.1], dtype=D)
U = torch.tensor([1.0, 2.0], dtype=D)


# ---------------------------------------------------------------- the toy example (paper §1.2)
def test_toy_raw_reward_utility():
    assert leader_utility(BASE, U, U, 1.0).item() == pytest.approx(1.2320, abs=5e-5)


@pytest.mark.parametrize("B,expected", [(1.0, 1.2320), (2.0, 1.4509), (3.0, 1.6906)])
def test_toy_threshold_utility(B, expected):
    m = optimal_threshold(BASE, U, B, 1.0)
    assert m.item() == pytest.approx(expected, abs=5e-5)
    # Theorem 1: the threshold reward attains m*, the fixed point.
    util = leader_utility(BASE, threshold_reward(U, m, B), U, 1.0)
    assert util.item() == pytest.approx(expected, abs=5e-5)


# ---------------------------------------------------------------- root of F == brute-force optimum
def _random_problem(g: torch.Generator, n: int):
    base = torch.rand(n, generator=g, dtype=D) + 0.05
    base = base / base.sum()
    u = torch.randn(n, generator=g, dtype=D)
    B = float(torch.rand(1, generator=g) * 4 + 0.2)
    beta = float(torch.rand(1, generator=g) * 2 + 0.2)
    return base, u, B, beta


@pytest.mark.parametrize("seed", range(25))
def test_root_of_F_equals_brute_force(seed):
    g = torch.Generator().manual_seed(seed)
    base, u, B, beta = _random_problem(g, 6)
    best, _ = brute_force_leader(base, u, B, beta)
    m = optimal_threshold(base, u, B, beta)
    assert m.item() == pytest.approx(best, abs=1e-9)
    assert leader_utility(base, threshold_reward(u, m, B), u, beta).item() == pytest.approx(best, abs=1e-9)


def test_F_strictly_decreasing_and_zero_at_root():
    g = torch.Generator().manual_seed(1)
    r = torch.randn(8, generator=g, dtype=D)
    p = torch.rand(8, generator=g, dtype=D)
    p = p / p.sum()
    lg = math.log(5.0)
    ms = torch.linspace(float(r.min()) - 1, float(r.max()) + 1, 2001, dtype=D)
    vals = torch.stack([F_value(m.reshape(()), r, p, lg) for m in ms])
    assert (vals[1:] < vals[:-1]).all()
    root = threshold_from_log_gamma(r, p, lg)
    assert abs(F_value(root, r, p, lg).item()) < 1e-12


# ---------------------------------------------------------------- exact == bisect
@pytest.mark.parametrize("ratio", [1e-3, 0.5, 2.0, 20.0, 88.0, 100.0, 800.0, 1e6])
def test_exact_equals_bisect_and_stable_for_large_B_over_beta(ratio):
    g = torch.Generator().manual_seed(7)
    r = torch.randn(64, 10, generator=g, dtype=torch.float32) * 3
    w = torch.rand(64, 10, generator=g)
    a = stackelberg_threshold(r, B=ratio, beta=1.0, weights=w)
    b = stackelberg_threshold(r, B=ratio, beta=1.0, weights=w, method="bisect")
    assert torch.isfinite(a).all() and torch.isfinite(b).all()
    assert (a - b).abs().max().item() < 1e-6
    r64 = r.to(D)
    assert (a >= r64.min(-1).values - 1e-12).all() and (a <= r64.max(-1).values + 1e-12).all()


def test_limits_of_gamma():
    r = torch.tensor([[1.0, 2.0, 5.0, 3.0]], dtype=D)
    # gamma -> 1: the weighted mean; gamma -> inf: the maximum.
    assert stackelberg_threshold(r, B=1e-12, beta=1.0).item() == pytest.approx(2.75, abs=1e-9)
    assert stackelberg_threshold(r, B=1e4, beta=1e-3).item() == pytest.approx(5.0, abs=1e-12)


def test_expectile_closed_form_by_hand():
    # r = (0, 1), uniform, gamma = 3: m in (0, 1), S = {1}: m = (3*1 + 0) / (3 + 1) = 0.75.
    m = stackelberg_threshold(torch.tensor([0.0, 1.0]), B=math.log(3.0), beta=1.0)
    assert m.item() == pytest.approx(0.75, abs=1e-12)


def test_ties_and_constant_rows():
    r = torch.tensor([[2.0, 2.0, 2.0], [1.0, 1.0, 3.0], [0.0, 3.0, 3.0]], dtype=D)
    m = stackelberg_threshold(r, B=1.0, beta=1.0)
    mb = stackelberg_threshold(r, B=1.0, beta=1.0, method="bisect")
    assert m[0].item() == 2.0
    assert torch.allclose(m, mb, atol=1e-9)
    g = math.e
    assert m[1].item() == pytest.approx((g * 3 + 2) / (g + 2), abs=1e-12)


def test_zero_weight_entries_are_ignored():
    r = torch.tensor([5.0, 1.0, 2.0], dtype=D)
    w = torch.tensor([0.0, 0.5, 0.5], dtype=D)
    assert stackelberg_threshold(r, B=1.0, beta=1.0, weights=w).item() == pytest.approx(
        stackelberg_threshold(r[1:], B=1.0, beta=1.0).item(), abs=1e-12
    )


def test_gamma_cap():
    r = torch.tensor([0.0, 1.0])
    capped = stackelberg_threshold(r, B=50.0, beta=1.0, gamma_cap=3.0)
    assert capped.item() == pytest.approx(0.75, abs=1e-12)


def test_vectorised_over_leading_dims():
    g = torch.Generator().manual_seed(3)
    r = torch.randn(2, 3, 7, generator=g)
    m = stackelberg_threshold(r, B=2.0, beta=1.0)
    assert m.shape == (2, 3)
    for i in range(2):
        for j in range(3):
            assert m[i, j].item() == pytest.approx(stackelberg_threshold(r[i, j], B=2.0, beta=1.0).item())


# ---------------------------------------------------------------- KL bound and Corollary 1
@pytest.mark.parametrize("seed", range(10))
def test_kl_bound(seed):
    g = torch.Generator().manual_seed(100 + seed)
    base, u, B, beta = _random_problem(g, 8)
    for r in (
        threshold_reward(u, optimal_threshold(base, u, B, beta), B),
        soft_threshold_reward(u, optimal_threshold(base, u, B, beta), B, 2.0),
        torch.rand(8, generator=g, dtype=D) * B,
    ):
        kl = kl_divergence(follower_policy(base, r, beta), base)
        assert 0 <= kl.item() <= B / beta + 1e-12


@pytest.mark.parametrize("seed", range(10))
def test_soft_srs_moves_from_base_to_m_star(seed):
    g = torch.Generator().manual_seed(200 + seed)
    base, u, B, beta = _random_problem(g, 6)
    m = optimal_threshold(base, u, B, beta)
    u_base = (base * u).sum().item()
    alphas = [1e-4, 0.1, 1.0, 10.0, 100.0, 1e4]
    utils = [leader_utility(base, soft_threshold_reward(u, m, B, a), u, beta).item() for a in alphas]
    assert utils[0] == pytest.approx(u_base, abs=1e-3)
    assert utils[-1] == pytest.approx(m.item(), abs=1e-3)
    assert all(x <= m.item() + 1e-9 for x in utils)


def test_corollary_1_some_alpha_beats_raw_reward():
    # A raw reward in [0, B] that the follower under-uses: the base bias survives (the paper's motivation).
    wins = 0
    for seed in range(20):
        g = torch.Generator().manual_seed(300 + seed)
        base, u, B, beta = _random_problem(g, 6)
        raw = (u - u.min()) / (u.max() - u.min()) * B  # the user utility rescaled into the budget
        u_raw = leader_utility(base, raw, u, beta).item()
        m = optimal_threshold(base, u, B, beta)
        best_soft = max(
            leader_utility(base, soft_threshold_reward(u, m, B, a), u, beta).item()
            for a in (0.3, 1, 3, 10, 100, 1000)
        )
        assert best_soft >= u_raw - 1e-9
        wins += best_soft > u_raw + 1e-6
    assert wins >= 15


# ---------------------------------------------------------------- shapers and presets, by hand
R = torch.tensor([[1.0, 2.0, 4.0]], dtype=D)


def test_vanilla_meanstd_minmax_cap_meansoft_by_hand():
    assert torch.equal(get_shaper("vanilla")(R), R)
    mean, std = 7 / 3, math.sqrt(((1 - 7 / 3) ** 2 + (2 - 7 / 3) ** 2 + (4 - 7 / 3) ** 2) / 3)
    assert torch.allclose(get_shaper("meanstd")(R), (R - mean) / std)
    # minmax with the official stretch: B_eff = min(12, 1.01 * 3) = 3.03
    mm = get_shaper("minmax", B=12.0, budget_stretch=1.01)(R)
    assert torch.allclose(mm, torch.tensor([[0.0, 3.03 / 3, 3.03]], dtype=D))
    assert torch.allclose(get_shaper("minmax", B=2.0)(R), torch.tensor([[0.0, 2 / 3, 2.0]], dtype=D))
    assert torch.allclose(get_shaper("cap", cap=1.5)(R), torch.tensor([[0.0, 1.0, 1.5]], dtype=D))
    ms = get_shaper("meansoft", B=2.0, alpha=1.0)(R)
    assert torch.allclose(ms, 2.0 * torch.sigmoid(R - mean))


def test_srs_and_hard_by_hand():
    m = stackelberg_threshold(R, B=1.0, beta=1.0).item()
    # by hand: gamma = e, S = {4} (m lies in (2, 4)): m = (4e + 3) / (e + 2)
    assert m == pytest.approx((4 * math.e + 3) / (math.e + 2), abs=1e-12)
    srs = get_shaper("srs", B=1.0, beta=1.0, alpha=2.0)(R)
    assert torch.allclose(srs, torch.sigmoid(2.0 * (R - m)))
    hard = get_shaper("hard", B=1.0, beta=1.0)(R)
    assert torch.equal(hard, torch.tensor([[0.0, 0.0, 1.0]], dtype=D))
    # a supplied per-prompt threshold replaces the row's own
    assert torch.allclose(
        get_shaper("srs", B=1.0, alpha=1.0)(R, threshold=torch.tensor([2.0])), torch.sigmoid(R - 2)
    )


def test_preset_official_args_by_hand():
    # k = 3 candidates with logits l; p = softmax(l); B_eff = min(12, 1.01*3) = 3.03; gamma = min(exp(3.03/2), 2) = 2.
    r = torch.tensor([1.0, 2.0, 4.0], dtype=D)
    p = torch.softmax(torch.tensor([2.0, 1.0, 0.0], dtype=D), -1)
    # most mass is on r = 1, so the root lies in (1, 2): S = {2, 4}
    m = (2 * (p[1] * 2 + p[2] * 4) + p[0] * 1) / (2 * (p[1] + p[2]) + p[0])
    assert 1 < m < 2
    shaped = get_preset("official-args")(r, weights=p)
    assert torch.allclose(shaped, 3.03 * torch.sigmoid(1.5 * (r - m)))


def test_preset_official_cd_and_paper_by_hand():
    r = torch.tensor([0.0, 0.5, 1.0], dtype=D)
    # official-cd: B_eff = min(15, 2*1) = 2; gamma = exp(min(2/0.667, 2)) = e^2; uniform weights.
    g = math.exp(2.0)
    m = (g * 1.0 + 0.5) / (g + 2)  # root in (0.5, 1): S = {1}
    assert 0.5 < m < 1
    assert torch.allclose(get_preset("official-cd")(r), 2.0 * torch.sigmoid(r - m))
    # paper: B = 12, beta = 2 -> gamma = e^6, no clipping, B_eff = 12, alpha = 1.5
    g6 = math.exp(6.0)
    m6 = (g6 * 1.0 + 0.5) / (g6 + 2)
    assert torch.allclose(get_preset("paper")(r), 12.0 * torch.sigmoid(1.5 * (r - m6)))
    # official-cd's hard variant uses r > m (strict)
    assert get_preset("official-cd", kind="hard").strict


# ---------------------------------------------------------------- bad input
@pytest.mark.parametrize(
    "kwargs,name",
    [
        (dict(rewards=torch.tensor([1.0, float("nan")]), B=1.0, beta=1.0), "rewards"),
        (dict(rewards=torch.tensor([1.0, float("inf")]), B=1.0, beta=1.0), "rewards"),
        (dict(rewards=torch.tensor([1.0, 2.0]), B=1.0, beta=0.0), "beta"),
        (dict(rewards=torch.tensor([1.0, 2.0]), B=1.0, beta=-1.0), "beta"),
        (dict(rewards=torch.tensor([1.0, 2.0]), B=0.0, beta=1.0), "B"),
        (dict(rewards=torch.tensor([1.0, 2.0]), B=-2.0, beta=1.0), "B"),
        (dict(rewards=torch.zeros(3, 0), B=1.0, beta=1.0), "rewards"),
        (
            dict(rewards=torch.tensor([1.0, 2.0]), B=1.0, beta=1.0, weights=torch.tensor([1.0, -1.0])),
            "weights",
        ),
        (
            dict(rewards=torch.tensor([1.0, 2.0]), B=1.0, beta=1.0, weights=torch.tensor([0.0, 0.0])),
            "weights",
        ),
        (
            dict(rewards=torch.tensor([1.0, 2.0]), B=1.0, beta=1.0, weights=torch.tensor([1.0, 2.0, 3.0])),
            "weights",
        ),
        (dict(rewards=torch.tensor([1.0, 2.0]), B=1.0, beta=1.0, method="newton"), "method"),
        (dict(rewards=torch.tensor([1.0, 2.0]), B=1.0, beta=1.0, gamma_cap=0.5), "gamma_cap"),
    ],
)
def test_bad_input_names_the_argument(kwargs, name):
    rewards = kwargs.pop("rewards")
    with pytest.raises(ValueError, match=name):
        stackelberg_threshold(rewards, **kwargs)


def test_bad_shaper_input():
    with pytest.raises(ValueError, match="kind"):
        get_shaper("nonsense")
    with pytest.raises(ValueError, match="alpha"):
        get_shaper("srs", alpha=-1.0)
    with pytest.raises(ValueError, match="unknown shaping parameter"):
        get_shaper("srs", gama=2.0)
    with pytest.raises(ValueError, match="preset"):
        get_preset("official")
    with pytest.raises(ValueError, match="threshold"):
        get_shaper("srs")(R, threshold=torch.tensor([1.0, 2.0]))
    with pytest.raises(ValueError, match="rewards"):
        get_shaper("srs")(torch.tensor([[float("nan"), 1.0]]))
    with pytest.raises(ValueError, match="beta"):
        follower_policy(BASE, U, 0.0)


# ---------------------------------------------------------------- property tests
finite = st.floats(min_value=-1e3, max_value=1e3, allow_nan=False, allow_infinity=False)


@settings(max_examples=200, deadline=None)
@given(
    rewards=st.lists(finite, min_size=1, max_size=12),
    weights=st.lists(st.floats(min_value=0.0, max_value=10.0), min_size=12, max_size=12),
    ratio=st.floats(min_value=1e-4, max_value=1e4),
)
def test_property_root_bracketed_exact_equals_bisect(rewards, weights, ratio):
    r = torch.tensor(rewards, dtype=D)
    w = torch.tensor(weights[: len(rewards)], dtype=D)
    if w.sum() <= 0:
        w = torch.ones_like(r)
    a = stackelberg_threshold(r, B=ratio, beta=1.0, weights=w)
    b = stackelberg_threshold(r, B=ratio, beta=1.0, weights=w, method="bisect")
    scale = 1.0 + r.abs().max().item()
    assert abs(a.item() - b.item()) <= 1e-9 * scale
    live = r[w > 0]
    assert live.min() - 1e-9 * scale <= a <= live.max() + 1e-9 * scale
    # a is the root: F changes sign around it
    lg = min(ratio, 700.0)
    eps = 1e-7 * scale
    assert F_value(a - eps, r, w / w.sum(), lg) >= -1e-9 * scale
    assert F_value(a + eps, r, w / w.sum(), lg) <= 1e-9 * scale


@settings(max_examples=100, deadline=None)
@given(
    rewards=st.lists(finite, min_size=2, max_size=10),
    shift=finite,
    B=st.floats(0.1, 50),
    alpha=st.floats(0.01, 10),
)
def test_property_srs_bounded_monotone_shift_equivariant(rewards, shift, B, alpha):
    r = torch.tensor(rewards, dtype=D)
    shaper = get_shaper("srs", B=B, beta=1.0, alpha=alpha)
    s = shaper(r)
    assert ((s >= 0) & (s <= B)).all()
    order = torch.argsort(r)
    assert (s[order][1:] >= s[order][:-1] - 1e-12).all()  # order-preserving
    m1 = stackelberg_threshold(r, B=B, beta=1.0)
    m2 = stackelberg_threshold(r + shift, B=B, beta=1.0)
    assert abs((m2 - m1).item() - shift) <= 1e-9 * (1 + abs(shift) + r.abs().max().item())


@pytest.mark.parametrize(
    "kind, preset",
    [(k, None) for k in SHAPERS]
    + [(k, p) for k in ("srs", "hard") for p in ("official-args", "official-cd", "paper")],
)
def test_apply_on_numpy_rows_equals_apply_on_tensors(kind, preset):
    """The host path (NumPy arrays through the same Shaper.apply / threshold code) gives the torch path's
    shaped rewards, ties, zero weights, huge B/beta and supplied thresholds included (presets configure the
    threshold shapings only)."""
    shaper = (
        get_preset(preset, kind=kind)
        if preset
        else get_shaper(kind, **({"B": 3.0, "beta": 0.7} if kind in ("srs", "hard") else {}))
    )
    g = torch.Generator().manual_seed(0)
    r = torch.randn(64, 10, generator=g, dtype=torch.float64) * 3
    r[0] = 1.0  # all tied
    r[1, :5] = r[1, 5:]  # pairwise ties
    w = torch.randn(64, 10, generator=g, dtype=torch.float64).mul(4).softmax(-1)
    w[2, 3:] = 0.0  # zero-weight candidates
    w[2] /= w[2].sum()
    thresholds = [None] + (
        [torch.randn(64, generator=g, dtype=torch.float64)] if shaper.uses_threshold else []
    )
    for m in thresholds:
        ref = shaper.apply(r, w, m)
        got = shaper.apply(r.numpy(), w.numpy(), None if m is None else m.numpy())
        assert isinstance(got, np.ndarray) and got.dtype == np.float64
        np.testing.assert_allclose(got, ref.numpy(), rtol=1e-12, atol=1e-12)
    if shaper.uses_threshold:  # the solver alone, with B/beta up to 1e4 (1/gamma underflows to 0)
        for lg in (1e-3, 1.0, 30.0, 1e4):
            log_g = torch.full((64,), lg, dtype=torch.float64)
            ref = solve_threshold(r, w, log_g)
            got = solve_threshold(r.numpy(), w.numpy(), log_g.numpy())
            np.testing.assert_allclose(got, ref.numpy(), rtol=1e-13, atol=1e-13)


def test_numpy_rows_are_limited_to_the_all_pairs_solver():
    r = np.zeros((2, ALL_PAIRS_MAX_N + 1))
    w = np.full_like(r, 1.0 / r.shape[-1])
    with pytest.raises(ValueError, match="NumPy rows"):
        solve_threshold(r, w, np.zeros(2))
    with pytest.raises(ValueError, match="method: NumPy rows"):
        solve_threshold(r[:, :4], w[:, :4], np.zeros(2), "bisect")


@settings(max_examples=300, deadline=None)
@given(
    rewards=st.lists(finite, min_size=1, max_size=12),
    weights=st.lists(st.floats(min_value=0.0, max_value=10.0), min_size=12, max_size=12),
    ratio=st.floats(min_value=1e-4, max_value=1e4),
)
def test_property_threshold_of_row_equals_the_tensor_solver(rewards, weights, ratio):
    """The plain-Python sorted scan (one row) finds the tensor solver's root: ties, zero weights and B/beta up
    to 1e4 included."""
    w = weights[: len(rewards)]
    if sum(w) <= 0:
        w = [1.0] * len(rewards)
    r_t, w_t = validate_rewards(torch.tensor(rewards, dtype=D), torch.tensor(w, dtype=D))
    ref = solve_threshold(r_t, w_t, torch.tensor(ratio, dtype=D)).item()
    # the same (normalised) weights: normalising can round a subnormal weight to 0, which changes the row
    got = threshold_of_row(rewards, w_t.tolist(), ratio)
    assert abs(got - ref) <= 1e-9 * (1.0 + max(abs(v) for v in rewards))


def test_threshold_of_row_on_extreme_weights():
    """Weights spanning ~175 orders of magnitude (the case that broke a prefix-sum scan once): the row scan
    builds F from sums of non-negative terms only, so it still agrees with the all-pairs solver."""
    r = [0.0, 1.0, 2.0, 3.0, 1e-9, 2.5]
    w = [1e-170, 1.0, 1e-80, 1e5, 0.0, 1e-3]
    for lg in (0.0, 1e-6, 1.0, 50.0, 400.0, 1e4):
        r_t, w_t = validate_rewards(torch.tensor(r, dtype=D), torch.tensor(w, dtype=D))
        ref = solve_threshold(r_t, w_t, torch.tensor(lg, dtype=D)).item()
        assert threshold_of_row(r, w, lg) == pytest.approx(ref, abs=1e-12), lg


@pytest.mark.parametrize(
    "shaper",
    [
        get_shaper("vanilla"),
        get_shaper("srs", B=3.0, beta=0.7),
        get_shaper("hard", B=3.0, beta=0.7, strict=True),
    ]
    + [get_preset(p, kind=k) for p in ("official-args", "official-cd", "paper") for k in ("srs", "hard")],
)
def test_apply_row_equals_apply(shaper):
    g = torch.Generator().manual_seed(1)
    r = torch.randn(32, 10, generator=g, dtype=D) * 2
    r[0] = 0.5  # all tied
    w = torch.randn(32, 10, generator=g, dtype=D).mul(3).softmax(-1)
    w[1, 4:] = 0.0
    w[1] /= w[1].sum()
    thresholds = [None] + ([torch.randn(32, generator=g, dtype=D)] if shaper.uses_threshold else [])
    for m in thresholds:
        ref = shaper.apply(r, w, m)
        for i in range(32):
            row = shaper.apply_row(r[i].tolist(), w[i].tolist(), None if m is None else m[i].item())
            assert row == pytest.approx(ref[i].tolist(), abs=1e-12), (shaper, i)


def test_apply_row_refuses_the_batch_shapings():
    with pytest.raises(ValueError, match="apply_row: only"):
        get_shaper("meanstd").apply_row([0.0, 1.0], [0.5, 0.5])

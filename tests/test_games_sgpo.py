"""SGPO's follower (worst case in a W_1 ball of DPO margins) (arXiv 2502.18099, Thm 3.3 and the official code)."""

import math

import pytest
import torch

from stackalign.games.sgpo import (
    dpo_loss,
    logistic_loss,
    logistic_tangents,
    neglog_tangents,
    pwl_gap,
    robust_loss_unbounded,
    sgpo_follower,
    sgpo_follower_probability,
    shifted_dpo_loss,
    worst_case_greedy,
    worst_case_lp,
)

D = torch.float64


def margins(n=60, seed=0, mean=1.0, std=1.0):
    g = torch.Generator().manual_seed(seed)
    return mean + std * torch.randn(n, generator=g, dtype=D)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_lp_attacks_the_lowest_margins(seed):
    x = margins(seed=seed)
    eps = 0.1
    w = sgpo_follower(x, eps, K=6, pad=0.5)
    lo = w.support[0]
    assert w.support == pytest.approx((float(x.min()) - 0.5, float(x.max()) + 0.5))
    order = torch.argsort(x)
    attacked = w.attacked[order]
    k = int(attacked.sum())
    assert 0 < k < 15 and attacked[:k].all() and not attacked[k:].any()  # a prefix of the sorted margins
    # their moved mass sits at the window's left end; the budget is spent
    moved = w.s > 1e-9
    shifted = moved & (w.shifts.abs() > 1e-9)
    assert torch.allclose(w.atoms[shifted], torch.full_like(w.atoms[shifted], lo))
    assert w.transport == pytest.approx(eps, abs=1e-9)
    assert torch.allclose(w.s.sum(1), torch.ones(len(x), dtype=D))
    # bounds: surrogate value <= true worst case found <= empirical loss + eps (1-Lipschitz loss)
    emp = dpo_loss(x).item()
    assert w.empirical_loss == pytest.approx(emp)
    assert w.empirical_surrogate <= emp + 1e-12
    assert w.value <= w.true_value + 1e-12
    assert w.true_value <= emp + eps + 1e-12
    assert w.value >= w.empirical_surrogate


def test_lp_is_exact_for_the_surrogate():
    """The LP's optimum equals the exact worst case of the piecewise-linear loss (fractional knapsack)."""
    x = margins(seed=3)
    for eps in (0.0, 0.02, 0.1, 0.5):
        w = sgpo_follower(x, eps, K=6)
        exact, moved = worst_case_greedy(x, eps, w.support[0], w.pwl)
        assert w.value == pytest.approx(exact, abs=1e-9)
    w0 = sgpo_follower(x, 0.0)
    assert w0.value == pytest.approx(w0.empirical_surrogate, abs=1e-12) and not w0.attacked.any()


def test_pwl_is_a_lower_bound_and_tightens_monotonically():
    """Prop. 3.2 with nested knot sets: v_K = -value decreases to the true v* as K grows."""
    x = margins(seed=4)
    eps = 0.1
    lo = float(x.min()) - 0.5
    true_sup, _ = worst_case_greedy(x, eps, lo, logistic_loss)
    values = []
    for K in (2, 3, 5, 9, 17, 33, 65):  # linspace(lo, hi, 2^m + 1): each knot set contains the previous one
        w = sgpo_follower(x, eps, K=K)
        grid = torch.linspace(lo - 5, float(x.max()) + 5, 2001, dtype=D)
        assert (w.pwl(grid) <= logistic_loss(grid) + 1e-12).all()
        values.append(w.value)
    assert all(b >= a - 1e-12 for a, b in zip(values, values[1:]))
    assert values[-1] <= true_sup + 1e-12
    assert true_sup - values[-1] < 1e-3
    assert true_sup <= dpo_loss(x).item() + eps


def test_unbounded_support_is_dpo_plus_eps():
    """Lemma 3.1: without a bounded support the robust loss is the DPO loss + eps * Lip, Lip(-log sigma) = 1."""
    x = margins(seed=5)
    eps = 0.1
    assert robust_loss_unbounded(x, eps).item() == pytest.approx(dpo_loss(x).item() + eps)
    # the exact supremum with support [lo, oo) tends to it as lo -> -oo ...
    gaps = []
    for pad in (5.0, 50.0, 5000.0):
        sup, _ = worst_case_greedy(x, eps, float(x.min()) - pad, logistic_loss)
        gaps.append(sup - dpo_loss(x).item())
    assert gaps[0] < gaps[1] < gaps[2] <= eps
    assert gaps[1] == pytest.approx(0.0998, abs=5e-4)  # 0.0997 with a +-50 window (hand computation)
    assert gaps[2] == pytest.approx(eps, abs=1e-5)
    # ... and the LP with no support constraint spends the whole budget on the steepest piece (slope -> -1)
    w = worst_case_lp(
        x, logistic_tangents(torch.linspace(-50, 10, 25, dtype=D)), eps, None, loss=logistic_loss
    )
    assert w.value - w.empirical_surrogate == pytest.approx(eps, abs=1e-12)
    assert w.true_value is None and torch.isinf(w.atoms).any()  # mass "at infinity"


def test_probability_space_variant():
    """The official code's variant: support [0, 1], tangents of -log v at k/K."""
    g = torch.Generator().manual_seed(6)
    p = 0.5 + 0.45 * torch.rand(50, generator=g, dtype=D)
    eps = 0.05
    assert pwl_gap(neglog_tangents(6), lambda v: -torch.log(v), 0.5, 1.0) == pytest.approx(0.0103, abs=1e-4)
    free = sgpo_follower_probability(p, eps, K=6)
    order = torch.argsort(p)
    k = int(free.attacked.sum())
    assert 0 < k < 10 and free.attacked[order][:k].all() and not free.attacked[order][k:].any()
    assert torch.allclose(
        free.atoms[free.s * free.shifts.abs() > 1e-9], torch.zeros(1, dtype=D)
    )  # sent to p = 0
    assert free.true_value == math.inf  # -log 0
    boxed = sgpo_follower_probability(p, eps, K=6, q_box=eps)
    assert boxed.attacked.all()  # with |q| <= eps every pair sends a sliver to p = 0 ...
    sliver = (boxed.s * (boxed.q.abs() > 1e-9)).sum(1)
    assert torch.allclose(sliver, eps / p, rtol=1e-6)  # ... of mass eps / p_i
    assert boxed.value <= free.value + 1e-12
    assert free.empirical_surrogate < boxed.value


def test_grouping_is_a_feasible_lower_bound():
    x = margins(n=90, seed=7)
    full = sgpo_follower(x, 0.05)
    for G in (10, 30, 45):
        w = sgpo_follower(x, 0.05, group_size=G)
        assert w.group_size == G and w.transport <= 0.05 + 1e-9
        assert w.value <= full.value + 1e-12


def test_shifted_dpo_loss():
    x = margins(n=20, seed=8).requires_grad_(True)
    w = sgpo_follower(x.detach(), 0.1)
    zero = shifted_dpo_loss(x, w.s, torch.zeros_like(w.shifts))
    assert zero.item() == pytest.approx(dpo_loss(x.detach()).item())
    loss = shifted_dpo_loss(x, w.s, w.shifts)
    assert loss.item() == pytest.approx(w.true_value, abs=1e-9)
    (g_rob,) = torch.autograd.grad(loss, x)
    (g_dpo,) = torch.autograd.grad(zero, x)
    ratio = g_rob / g_dpo  # the per-pair gradient multiplier
    assert (ratio[w.attacked] > 1).all() and torch.allclose(ratio[~w.attacked], torch.ones(1, dtype=D))


@pytest.mark.parametrize(
    "call,match",
    [
        (lambda: sgpo_follower(torch.tensor([0.0, math.nan]), 0.1), "margins: contains NaN"),
        (lambda: sgpo_follower(torch.tensor([]), 0.1), "margins: expected a non-empty"),
        (lambda: sgpo_follower(torch.zeros(3), -0.1), "eps"),
        (lambda: sgpo_follower(torch.zeros(3), math.inf), "eps"),
        (lambda: sgpo_follower(torch.zeros(3), 0.1, K=0), "K"),
        (lambda: sgpo_follower(torch.zeros(3), 0.1, window=(1.0, -1.0)), "window"),
        (lambda: sgpo_follower(torch.zeros(3), 0.1, group_size=0), "group_size"),
        (lambda: sgpo_follower_probability(torch.tensor([0.5, 1.2]), 0.1), "probs"),
        (lambda: worst_case_lp(torch.tensor([5.0]), logistic_tangents([0.0]), 0.1, (-1.0, 1.0)), "centres"),
        (lambda: worst_case_lp(torch.tensor([0.0]), "pwl", 0.1), "pwl"),
        (lambda: neglog_tangents(0), "K"),
    ],
)
def test_bad_inputs(call, match):
    with pytest.raises(ValueError, match=match):
        call()

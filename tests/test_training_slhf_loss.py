"""The StackelbergGDA loss: a hand-computed two-token gradient, tabular convergence, bad input."""

from __future__ import annotations

import math

import pytest
import torch

from stackalign.games import condorcet_preferences, slhf_equilibrium
from stackalign.training.estimators import kl_per_token as kl_estimate
from stackalign.training.slhf_loss import (
    SLHFLossConfig,
    slhf_loss,
    tabular_stackelberg_gda,
)


def _two_token(objective: str):
    """Vocabulary {0, 1}, one-token answers. Leader logits (0, log 3): π = (1/4, 3/4); follower logits
    (log 2, 0): ω = (2/3, 1/3); both references uniform. One sample: y = 0, y' = 1, judge s = 0.3."""
    th_l = torch.tensor([0.0, math.log(3)], dtype=torch.float64, requires_grad=True)
    th_f = torch.tensor([math.log(2), 0.0], dtype=torch.float64, requires_grad=True)
    lp_l, lp_f = torch.log_softmax(th_l, -1)[0], torch.log_softmax(th_f, -1)[1]
    ref = torch.tensor([[math.log(0.5)]], dtype=torch.float64)
    one = torch.ones(1, 1)
    cfg = SLHFLossConfig(tau_leader=0.2, tau_follower=0.1, kappa=2.0, leader_objective=objective)
    out = slhf_loss(lp_l.view(1, 1), ref, one, lp_f.view(1, 1), ref, one, torch.tensor([0.3]), cfg)
    out.loss.backward()
    return th_l.grad, th_f.grad, out


def test_gradient_two_token_paper_objective():
    g_l, g_f, out = _two_token("paper")
    # Leader reward R^L = s − τ^L·k1(y) + τ^F·k1(y') = 0.3 − 0.2·log(0.25/0.5) + 0.1·log((1/3)/0.5)
    #                   = 0.3 + 0.2·0.693147 − 0.1·0.405465 = 0.398083;   advantage R^L − 0.5 = −0.101917.
    # ∂L_L/∂θ_L = −adv · ∇ log π(0) = −adv · (e_0 − π) = 0.101917 · (0.75, −0.75) = (0.076438, −0.076438).
    torch.testing.assert_close(
        g_l, torch.tensor([0.0764378, -0.0764378], dtype=torch.float64), atol=1e-6, rtol=0
    )
    # Follower reward R^F = (1 − s) − τ^F·k1(y') = 0.7 + 0.1·0.405465 = 0.740547; advantage 0.240547.
    # ∂(κ L_F)/∂θ_F = −κ · adv · (e_1 − ω) = −2 · 0.240547 · (−2/3, 2/3) = (0.320729, −0.320729).
    torch.testing.assert_close(
        g_f, torch.tensor([0.3207286, -0.3207286], dtype=torch.float64), atol=1e-6, rtol=0
    )
    assert out.stats["reward_leader"] == pytest.approx(0.3980829, abs=1e-6)


def test_gradient_two_token_code_objective():
    g_l, g_f, _ = _two_token("code")
    # R^L = 0.3 + 0.2·0.693147 = 0.438629; adv = −0.061371; gradient 0.061371 · (0.75, −0.75).
    torch.testing.assert_close(
        g_l, torch.tensor([0.0460278, -0.0460278], dtype=torch.float64), atol=1e-6, rtol=0
    )
    torch.testing.assert_close(
        g_f, torch.tensor([0.3207286, -0.3207286], dtype=torch.float64), atol=1e-6, rtol=0
    )


def test_kl_estimators_exact_and_loo_baseline():
    lp, ref = torch.tensor([math.log(0.25)]), torch.tensor([math.log(0.5)])
    d = math.log(0.5)
    assert kl_estimate(lp, ref, "k1").item() == pytest.approx(d)
    assert kl_estimate(lp, ref, "k2").item() == pytest.approx(0.5 * d * d)
    assert kl_estimate(lp, ref, "k3").item() == pytest.approx(2.0 - 1.0 - math.log(2.0))  # r = 2
    # LOO: advantages are r_i − mean of the others; with τ = 0 the leader's rewards are s.
    lp_l = torch.zeros(3, 1, requires_grad=True)
    cfg = SLHFLossConfig(tau_leader=0.0, tau_follower=0.0, kappa=1.0, baseline="loo")
    z, m = torch.zeros(3, 1), torch.ones(3, 1)
    slhf_loss(lp_l, z, m, torch.zeros(3, 1), z, m, torch.tensor([0.2, 0.5, 0.8]), cfg).loss.backward()
    # ∂L_L/∂lp_i = −adv_i / 3 with adv = (0.2 − 0.65, 0.5 − 0.5, 0.8 − 0.35)
    torch.testing.assert_close(lp_l.grad[:, 0], torch.tensor([0.45, 0.0, -0.45]) / 3)


def test_tabular_converges_to_prop1_equilibrium_and_to_code_fixed_point():
    """Algorithm 2's loss on tabular softmax policies, Condorcet α = (0.4, 0.35, 0.25), τ = 0.1, κ = 5:
    the paper objective reaches the closed form (0.500, 0.354, 0.145); the code's objective reaches
    π ∝ π_ref exp(E_{ω*}[p(y ≻ ·)]/τ^L) = (0.566, 0.321, 0.113) instead."""
    P = condorcet_preferences((0.4, 0.35, 0.25))
    pi_star, om_star = slhf_equilibrium(P, tau_leader=0.1, tau_follower=0.1)
    torch.testing.assert_close(
        pi_star, torch.tensor([0.5002, 0.3543, 0.1455], dtype=torch.float64), atol=1e-3, rtol=0
    )
    code_fp = torch.softmax((om_star * P).sum(-1) / 0.1, -1)  # uniform π_ref
    torch.testing.assert_close(
        code_fp, torch.tensor([0.566, 0.321, 0.113], dtype=torch.float64), atol=2e-3, rtol=0
    )
    kw = dict(steps=1500, batch=1024, lr=0.5)
    paper = tabular_stackelberg_gda(P, SLHFLossConfig(tau_leader=0.1, tau_follower=0.1, kappa=5.0), **kw)
    torch.testing.assert_close(paper.pi, pi_star, atol=5e-3, rtol=0)
    torch.testing.assert_close(paper.omega, om_star, atol=5e-3, rtol=0)
    code = tabular_stackelberg_gda(
        P, SLHFLossConfig(tau_leader=0.1, tau_follower=0.1, kappa=5.0, leader_objective="code"), **kw
    )
    torch.testing.assert_close(code.pi, code_fp, atol=5e-3, rtol=0)
    assert (code.pi - pi_star).abs().max() > 0.05  # the two objectives really have different fixed points


@pytest.mark.parametrize(
    "kw,field",
    [
        (dict(kappa=0.0), "kappa"),
        (dict(kappa=-1.0), "kappa"),
        (dict(tau_leader=-0.1), "tau_leader"),
        (dict(tau_follower=-1e-3), "tau_follower"),
        (dict(tau_follower=float("nan")), "tau_follower"),
        (dict(leader_objective="nash"), "leader_objective"),
        (dict(kl_estimator="k4"), "kl_estimator"),
        (dict(baseline="mean"), "baseline"),
    ],
)
def test_bad_config_names_the_field(kw, field):
    with pytest.raises(ValueError, match=field):
        SLHFLossConfig(**kw)


@pytest.mark.parametrize("s", [[0.5, float("nan")], [0.5, 1.5], [0.5]])
def test_bad_judge_output_is_refused(s):
    z, m = torch.zeros(2, 1), torch.ones(2, 1)
    with pytest.raises(ValueError, match="judge"):
        slhf_loss(z, z, m, z, z, m, torch.tensor(s), SLHFLossConfig())


def test_max_at_k_exact():
    from stackalign.decoding.refine import max_at_k

    assert max_at_k([[0.0, 2.0, 1.0], [3.0, -1.0, 4.0]]) == [1.5, 2.5, 3.0]
    with pytest.raises(ValueError):
        max_at_k([])

"""SLHF / NLHF / RLHF on finite action sets against arXiv 2512.16626 (Prop. 1, eq. 5, the Condorcet example, refinement)."""

import argparse
import math

import pytest
import torch

from stackalign.games.bradley_terry import (
    bradley_terry_fit,
    bradley_terry_from_preferences,
    bradley_terry_probabilities,
)
from stackalign.games.cli import condorcet
from stackalign.games.nash import (
    exploitability,
    nash_equilibrium,
    nash_value,
    regularized_nash_equilibrium,
    regularized_nash_gap,
)
from stackalign.games.refinement import (
    chain_distributions,
    condorcet_refinement,
    iid_hits,
    refinement_chain,
)
from stackalign.games.slhf import (
    condorcet_preferences,
    follower_best_response,
    preferences_from_rankings,
    project_simplex,
    slhf_equilibrium,
    slhf_gradients,
    slhf_objective,
    slhf_unregularized,
    slhf_values,
    stackelberg_gda,
)

D = torch.float64
ALPHA = (0.4, 0.35, 0.25)
UNIFORM = (1 / 3, 1 / 3, 1 / 3)


def t(*xs):
    return torch.tensor(xs, dtype=D)


def random_preferences(n: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    upper = torch.triu(torch.rand(n, n, generator=g, dtype=D), 1)
    P = upper + torch.tril(1 - upper.T, -1)
    P.fill_diagonal_(0.5)
    return P


def random_simplex(shape, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.softmax(2 * torch.randn(*shape, generator=g, dtype=D), dim=-1)


# ------------------------------------------------------------------------------ the Condorcet example (§4)
def test_condorcet_preference_rows():
    P = condorcet_preferences(ALPHA)
    expected = torch.tensor([[0.5, 0.65, 0.40], [0.35, 0.5, 0.75], [0.60, 0.25, 0.5]], dtype=D)
    assert torch.allclose(P, expected, atol=1e-12)


def test_preferences_from_rankings_general():
    P = preferences_from_rankings([(2, 0, 1, 3), (3, 2, 1, 0)], (0.7, 0.3))
    assert torch.allclose(P + P.T, torch.ones(4, 4, dtype=D))
    assert P[2, 0] == pytest.approx(1.0) and P[0, 1] == pytest.approx(0.7) and P[3, 2] == pytest.approx(0.3)


def test_nash_condorcet():
    P = condorcet_preferences(ALPHA)
    pi = nash_equilibrium(P)
    assert torch.allclose(pi, t(0.5, 0.2, 0.3), atol=1e-9)
    assert nash_value(P, pi).item() == pytest.approx(0.5, abs=1e-12)
    assert torch.allclose(nash_equilibrium(condorcet_preferences(UNIFORM)), torch.full((3,), 1 / 3, dtype=D))


@pytest.mark.parametrize("n,seed", [(4, 0), (7, 1), (12, 2)])
def test_nash_random_games_have_value_one_half(n, seed):
    P = random_preferences(n, seed)
    pi = nash_equilibrium(P)
    assert exploitability(P, pi).item() == pytest.approx(0.0, abs=1e-9)
    # and nothing beats it: every pure strategy wins at most 1/2 against it
    assert (P @ pi <= 0.5 + 1e-9).all()


def test_slhf_closed_form_tau_01():
    P = condorcet_preferences(ALPHA)
    pi, omega = slhf_equilibrium(P, None, None, 0.1, 0.1)
    assert torch.allclose(pi, t(0.500, 0.354, 0.145), atol=6e-4)
    assert torch.allclose(slhf_values(P, None, 0.1), t(0.473, 0.438, 0.349), atol=6e-4)
    assert torch.allclose(omega[0], t(0.254, 0.057, 0.690), atol=6e-4)
    assert torch.allclose(omega.sum(-1), torch.ones(3, dtype=D))


def test_slhf_closed_form_tau_001():
    P = condorcet_preferences(ALPHA)
    pi, omega = slhf_equilibrium(P, None, None, 0.01, 0.01)
    assert torch.allclose(pi, t(0.993, 0.007, 0.000), atol=6e-4)
    # omega* is essentially the deterministic map A -> C, B -> A, C -> B
    assert omega[0, 2] > 0.999 and omega[1, 0] > 0.999 and omega[2, 1] > 0.999


@pytest.mark.parametrize("tau", [0.01, 0.1, 1.0, 10.0])
def test_uniform_alpha_gives_uniform_leader(tau):
    pi, _ = slhf_equilibrium(condorcet_preferences(UNIFORM), None, None, tau, tau)
    assert torch.allclose(pi, torch.full((3,), 1 / 3, dtype=D), atol=1e-12)


def test_uniform_alpha_follower_tau_01():
    _, omega = slhf_equilibrium(condorcet_preferences(UNIFORM), None, None, 0.1, 0.1)
    assert torch.allclose(omega[0], t(0.154, 0.029, 0.817), atol=6e-4)


def test_unregularized_limit():
    P = condorcet_preferences(ALPHA)
    lim = slhf_unregularized(P)
    assert lim.follower_map.tolist() == [2, 0, 1]  # A -> C, B -> A, C -> B
    assert torch.allclose(lim.values, t(*ALPHA))  # V(A) = a1, V(B) = a2, V(C) = a3
    assert torch.equal(lim.pi, t(1.0, 0.0, 0.0)) and lim.value.item() == pytest.approx(0.4)
    assert torch.equal(lim.omega, torch.eye(3, dtype=D)[[2, 0, 1]])
    # the closed form converges to it
    pi, omega = slhf_equilibrium(P, None, None, 1e-3, 1e-3)
    assert torch.allclose(pi, lim.pi, atol=1e-12) and torch.allclose(omega, lim.omega, atol=1e-12)
    # equal shares: indifferent leader, ties broken by the reference
    sym = slhf_unregularized(condorcet_preferences(UNIFORM))
    assert torch.allclose(sym.pi, torch.full((3,), 1 / 3, dtype=D)) and sym.leader_actions.all()


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_closed_form_is_the_stackelberg_solution(seed):
    """Check (pi*, omega*) against eq. 5 directly, with non-uniform references and random P."""
    n = 5
    P = random_preferences(n, seed)
    pi_ref = random_simplex((n,), seed + 10)
    omega_ref = random_simplex((n, n), seed + 20)
    tl, tf = 0.2, 0.05
    pi, omega = slhf_equilibrium(P, pi_ref, omega_ref, tl, tf)
    f_star = slhf_objective(P, pi, omega, pi_ref, omega_ref, tl, tf)
    # the follower best-responds: no other omega lowers f at pi*
    for k in range(20):
        other = random_simplex((n, n), 100 + k)
        assert slhf_objective(P, pi, other, pi_ref, omega_ref, tl, tf) >= f_star - 1e-12
    # the leader is optimal against a best-responding follower: f(pi, BR(pi)) = sum pi V - tau_L KL <= f*
    br, _ = follower_best_response(P, omega_ref, tf)
    for k in range(20):
        other = random_simplex((n,), 200 + k)
        assert slhf_objective(P, other, br, pi_ref, omega_ref, tl, tf) <= f_star + 1e-12
    # first-order conditions: the leader's gradient is constant over actions, the follower's over each row
    g_pi, g_om = slhf_gradients(P, pi, omega, pi_ref, omega_ref, tl, tf)
    assert (g_pi - g_pi.mean()).abs().max() < 1e-12
    assert (g_om - g_om.mean(-1, keepdim=True)).abs().max() < 1e-12


def test_batched_contexts_match_single():
    Ps = torch.stack([condorcet_preferences(ALPHA), random_preferences(3, 5)])
    refs = random_simplex((2, 3), 3)
    omega_ref = random_simplex((3, 3), 4)  # one (n, n) follower reference, broadcast over the contexts
    pi, omega = slhf_equilibrium(Ps, refs, omega_ref, 0.1, 0.3)
    for b in range(2):
        pb, ob = slhf_equilibrium(Ps[b], refs[b], omega_ref, 0.1, 0.3)
        assert torch.allclose(pi[b], pb) and torch.allclose(omega[b], ob)
    # the entropic step copes with omega_ref's tiny entries (the Euclidean one is unstable there, see its docstring)
    res = stackelberg_gda(Ps, refs, omega_ref, 0.1, 0.3, steps=3000, method="mirror", keep_iterates=False)
    assert res.distance_pi[-1] < 1e-3


def test_shared_follower_reference_and_zero_support():
    P = condorcet_preferences(ALPHA)
    ref = t(0.0, 0.5, 0.5)  # the follower may never answer A
    _, omega = slhf_equilibrium(P, None, ref, 0.1, 0.1)
    assert (omega[:, 0] == 0).all()
    lim = slhf_unregularized(P, None, ref)
    assert lim.follower_map[1].item() != 0  # B's best response A is not allowed


# -------------------------------------------------------------------------------- StackelbergGDA (§5)
@pytest.mark.parametrize("method", ["projected", "mirror"])
def test_gda_last_iterate_reaches_closed_form(method):
    P = condorcet_preferences(ALPHA)
    res = stackelberg_gda(P, None, None, 0.1, 0.1, steps=2500, lr=0.05, kappa=5.0, method=method)
    assert res.distance.shape == (2501,)
    assert res.distance[-1].item() < 1e-3
    assert torch.allclose(res.pi, t(0.500, 0.354, 0.145), atol=1e-3)
    assert res.pi_iterates.shape == (2501, 3) and res.omega_iterates.shape == (2501, 3, 3)
    assert torch.allclose(res.pi_iterates[-1], res.pi)


def test_gda_random_inits_reach_the_same_point():
    P = condorcet_preferences(ALPHA)
    finals = []
    for seed in range(3):
        res = stackelberg_gda(
            P,
            None,
            None,
            0.1,
            0.1,
            steps=3000,
            pi0=random_simplex((3,), seed),
            omega0=random_simplex((3, 3), seed + 7),
            keep_iterates=False,
        )
        assert res.pi_iterates is None
        finals.append(res.pi)
    for f in finals[1:]:
        assert torch.allclose(f, finals[0], atol=1e-6)


def test_gda_faster_follower_helps():
    """Two timescales: kappa = 5 tracks the closed form sooner than kappa = 1."""
    P = condorcet_preferences(ALPHA)
    first = {}
    for kappa in (1.0, 5.0):
        d = stackelberg_gda(P, None, None, 0.1, 0.1, steps=3000, kappa=kappa, keep_iterates=False).distance
        first[kappa] = int((d < 1e-3).nonzero()[0])
    assert first[5.0] < first[1.0]


def test_project_simplex():
    v = torch.tensor([[0.2, 0.3, 0.5], [2.0, -1.0, 0.0], [0.0, 0.0, 0.0]], dtype=D)
    p = project_simplex(v)
    assert torch.allclose(p[0], v[0]) and torch.allclose(p[1], t(1.0, 0.0, 0.0))
    assert torch.allclose(p[2], torch.full((3,), 1 / 3, dtype=D))
    assert torch.allclose(p.sum(-1), torch.ones(3, dtype=D)) and (p >= 0).all()


# ----------------------------------------------------------------------------- regularised NLHF
@pytest.mark.parametrize("tau", [10.0, 1.0, 0.1, 0.01, 0.002])
def test_regularized_nash_fixed_point(tau):
    for P in (condorcet_preferences(ALPHA), random_preferences(8, 3)):
        n = P.shape[0]
        ref = random_simplex((n,), 4)
        pi = regularized_nash_equilibrium(P, ref, tau)
        assert (pi - torch.softmax(torch.log(ref) + P @ pi / tau, 0)).abs().max() < 1e-9
        assert regularized_nash_gap(P, pi, ref, tau).item() == pytest.approx(0.0, abs=1e-12)
        assert regularized_nash_gap(P, ref, ref, tau).item() >= 0.0


def test_regularized_nash_limits():
    P = condorcet_preferences(ALPHA)
    assert torch.allclose(
        regularized_nash_equilibrium(P, None, 1e4), torch.full((3,), 1 / 3, dtype=D), atol=1e-4
    )
    assert torch.allclose(regularized_nash_equilibrium(P, None, 1e-3), nash_equilibrium(P), atol=3e-3)


# ---------------------------------------------------------------------------------- Bradley-Terry
def test_bt_condorcet_data_sensitivity():
    Pu = condorcet_preferences(UNIFORM)
    log2 = math.log(2)
    assert torch.allclose(
        bradley_terry_from_preferences(Pu, [(0, 1), (1, 2)]), t(log2, 0.0, -log2), atol=1e-9
    )
    assert torch.allclose(bradley_terry_from_preferences(Pu), torch.zeros(3, dtype=D), atol=1e-9)
    # the same fit from hard labels: one annotator of each type compares {A,B} and {B,C}
    pairs = [(0, 1), (1, 0), (0, 1), (1, 2), (1, 2), (2, 1)]
    assert torch.allclose(bradley_terry_fit(pairs, 3), t(log2, 0.0, -log2), atol=1e-9)
    # soft labels as (i, j, p) triples
    assert torch.allclose(
        bradley_terry_fit([(0, 1, 2 / 3), (2, 1, 1 / 3)], 3), t(log2, 0.0, -log2), atol=1e-9
    )


def test_bt_recovers_transitive_scores():
    r = t(1.0, -0.5, 0.25, -0.75)
    P = bradley_terry_probabilities(r)
    fit = bradley_terry_from_preferences(P)
    assert torch.allclose(fit, r - r.mean(), atol=1e-9)
    assert fit.sum().abs() < 1e-12


def test_bt_nonexistent_mle():
    with pytest.raises(ValueError, match="do not exist"):
        bradley_terry_fit([(0, 1), (1, 2)], 3)  # A never loses
    with pytest.raises(ValueError, match="not connected"):
        bradley_terry_fit([(0, 1), (1, 0)], 3)  # C never compared
    r = bradley_terry_fit([(0, 1), (1, 2)], 3, l2=0.1)
    assert r[0] > r[1] > r[2] and abs(r.sum()) < 1e-12


# --------------------------------------------------------------------------------- refinement (§7)
def test_refinement_symmetric_condorcet():
    ref = condorcet_refinement(UNIFORM, n_max=3)
    for k in range(3):
        assert torch.allclose(ref.slhf_limit[k], t(1 / 3, 2 / 3, 1.0), atol=1e-12)
        assert torch.allclose(ref.nlhf[k], t(1 / 3, 5 / 9, 19 / 27), atol=1e-12)
    assert torch.allclose(ref.nlhf[0], t(0.333, 0.556, 0.704), atol=5e-4)


def test_refinement_alpha_condorcet():
    ref = condorcet_refinement(ALPHA, n_max=3, tau=0.1)
    assert torch.allclose(ref.slhf_limit[0], t(1.0, 1.0, 1.0))  # SLHF starts at A
    assert torch.allclose(ref.nlhf[0], t(0.5, 0.75, 0.875), atol=1e-9)
    assert ref.slhf_tau is not None and (ref.slhf_tau.diff(dim=-1) >= 0).all()
    assert torch.allclose(ref.slhf_limit_population, t(0.4, 0.65, 1.0))


def test_refinement_primitives():
    pi = t(0.2, 0.3, 0.5)
    omega = torch.eye(3, dtype=D)[[1, 2, 0]]  # 0 -> 1 -> 2 -> 0
    assert torch.allclose(refinement_chain(pi, omega, 0, 3), t(0.2, 0.7, 1.0))
    assert torch.allclose(refinement_chain(pi, omega, [0, 1], 2), t(0.5, 1.0))
    assert torch.allclose(iid_hits(pi, 2, 2), t(0.5, 0.75))
    assert torch.allclose(chain_distributions(pi, omega, 2)[1], t(0.5, 0.2, 0.3))


# ------------------------------------------------------------------------------------------- CLI
def test_cli_condorcet(capsys):
    assert condorcet(argparse.Namespace(tau=0.1)) == 0
    out = capsys.readouterr().out
    for needle in (
        "0.500  0.650  0.400",  # P rows
        "0.500  0.200  0.300",  # Nash
        "0.500  0.354  0.145",  # SLHF pi*, tau = 0.1
        "0.993  0.007  0.000",  # SLHF pi*, tau = 0.01
        "A -> C, B -> A, C -> B",
        "0.333  0.667  1.000",  # refinement, symmetric case
        "0.333  0.556  0.704",
    ):
        assert needle in out, needle


def test_cli_condorcet_bad_tau():
    with pytest.raises(ValueError, match="tau"):
        condorcet(argparse.Namespace(tau=0.0))


# ------------------------------------------------------------------------------------- bad inputs
P3 = condorcet_preferences(ALPHA)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"P": torch.ones(3, 2, dtype=D)}, "P: expected a square"),
        ({"P": torch.full((3, 3), 0.7, dtype=D)}, "P: must satisfy"),
        ({"P": torch.tensor([[0.5, 1.2], [-0.2, 0.5]], dtype=D)}, "P: entries"),
        ({"P": torch.full((3, 3), math.nan)}, "P: contains NaN"),
        ({"pi_ref": t(0.5, 0.5, 0.5)}, "pi_ref: every distribution must sum to 1"),
        ({"pi_ref": t(1.5, -0.5, 0.0)}, "pi_ref: probabilities must be non-negative"),
        ({"pi_ref": t(0.5, 0.5)}, "pi_ref: expected a last dimension of size 3"),
        ({"omega_ref": torch.full((2, 3), 1 / 3, dtype=D)}, "omega_ref"),
        ({"omega_ref": torch.full((3, 3), 0.5, dtype=D)}, "omega_ref: every distribution"),
        ({"tau_leader": 0.0}, "tau_leader: must be a finite number > 0"),
        ({"tau_leader": -1.0}, "tau_leader"),
        ({"tau_follower": math.inf}, "tau_follower"),
        ({"tau_follower": math.nan}, "tau_follower"),
        ({"tau_follower": "0.1"}, "tau_follower"),
    ],
)
def test_slhf_bad_inputs(kwargs, match):
    args = {"P": P3, "pi_ref": None, "omega_ref": None, "tau_leader": 0.1, "tau_follower": 0.1}
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        slhf_equilibrium(**args)


def test_other_bad_inputs():
    with pytest.raises(ValueError, match="P: "):
        nash_equilibrium(torch.full((3, 3), 0.2, dtype=D))
    with pytest.raises(ValueError, match="P: expected one"):
        nash_equilibrium(torch.stack([P3, P3]))
    with pytest.raises(ValueError, match="tau"):
        regularized_nash_equilibrium(P3, None, 0.0)
    with pytest.raises(ValueError, match="steps"):
        stackelberg_gda(P3, None, None, 0.1, 0.1, steps=-1)
    with pytest.raises(ValueError, match="method"):
        stackelberg_gda(P3, None, None, 0.1, 0.1, steps=1, method="adam")
    with pytest.raises(ValueError, match="kappa"):
        stackelberg_gda(P3, None, None, 0.1, 0.1, steps=1, kappa=0.0)
    with pytest.raises(ValueError, match="pi_ref: must be strictly positive"):
        stackelberg_gda(P3, t(1.0, 0.0, 0.0), None, 0.1, 0.1, steps=1)
    with pytest.raises(ValueError, match="n_items"):
        bradley_terry_fit([(0, 1)], 1)
    with pytest.raises(ValueError, match="pairs: item indices"):
        bradley_terry_fit([(0, 5)], 3)
    with pytest.raises(ValueError, match="pairs: the third column"):
        bradley_terry_fit([(0, 1, 1.5)], 3)
    with pytest.raises(ValueError, match="pairs: an item"):
        bradley_terry_fit([(1, 1)], 3)
    with pytest.raises(ValueError, match="target"):
        refinement_chain(t(0.5, 0.5), torch.eye(2, dtype=D), 2, 3)
    with pytest.raises(ValueError, match="n_max"):
        iid_hits(t(0.5, 0.5), 0, 0)
    with pytest.raises(ValueError, match="shares"):
        condorcet_preferences((0.5, 0.5))
    with pytest.raises(ValueError, match="rankings"):
        preferences_from_rankings([(0, 0, 1)], (1.0,))

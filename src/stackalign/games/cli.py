"""`stackalign games condorcet`: RLHF vs NLHF vs SLHF on the Condorcet example, solved exactly.

Three annotator types with shares alpha rank A>B>C, B>C>A and C>A>B, so the population preference is
cyclic. RLHF (Bradley-Terry) depends on which pairs were compared, NLHF (Nash) is mixed, SLHF's leader
commits to the least exploitable answer and its follower refines any answer into the one that beats it.
"""

from __future__ import annotations

import argparse

import torch

from stackalign.games.bradley_terry import bradley_terry_from_preferences
from stackalign.games.nash import nash_equilibrium, nash_value, regularized_nash_equilibrium
from stackalign.games.refinement import condorcet_refinement
from stackalign.games.slhf import (
    CONDORCET_RANKINGS,
    check_distribution,
    check_tau,
    condorcet_preferences,
    slhf_equilibrium,
    slhf_unregularized,
)

NAMES = "ABC"
SMALL_TAU = 0.01


def _stackelberg_value(P: torch.Tensor, pi: torch.Tensor) -> float:
    """E_{y ~ pi} min_y' p(y > y'): pi's win rate when the opponent sees the realised y and answers it."""
    return float((pi * P.min(-1).values).sum())


def _fmt(v) -> str:
    return " ".join(f"{float(x):6.3f}" for x in v)


def _ranking(r) -> str:
    return " > ".join(NAMES[i] for i in r)


def condorcet(args: argparse.Namespace) -> int:
    tau = check_tau(getattr(args, "tau", 0.1), "tau")
    alpha = getattr(args, "alpha", None) or (0.4, 0.35, 0.25)
    alpha = check_distribution(alpha, "alpha", (3,))
    P = condorcet_preferences(alpha)
    a = ", ".join(f"{float(x):.2f}" for x in alpha)
    print(f"Condorcet example: three annotator types with population shares alpha = ({a})")
    print("  " + "    ".join(f"type {k + 1}: {_ranking(r)}" for k, r in enumerate(CONDORCET_RANKINGS)))
    print()
    print("Preference matrix P[row, col] = p(row > col):")
    print("        " + "".join(f"{c:>7s}" for c in NAMES))
    for i, c in enumerate(NAMES):
        print(f"     {c}  " + "".join(f"{float(P[i, j]):7.3f}" for j in range(3)))
    print()

    rows = []
    r_all = bradley_terry_from_preferences(P)
    r_two = bradley_terry_from_preferences(P, [(0, 1), (1, 2)])
    for label, r in (
        ("RLHF: BT on all pairs, argmax r", r_all),
        ("RLHF: BT on {A,B},{B,C} only, argmax r", r_two),
    ):
        pi = torch.zeros(3, dtype=torch.float64)
        pi[int(torch.argmax(r))] = 1.0
        rows.append((label, pi, "r = (" + ", ".join(f"{float(x):+.3f}" for x in r) + ")"))
    rows.append(("NLHF: Nash equilibrium (LP)", nash_equilibrium(P), "mixed"))
    rows.append((f"NLHF: KL-regularised Nash, tau={tau:g}", regularized_nash_equilibrium(P, None, tau), ""))
    for t in [tau] if tau == SMALL_TAU else [tau, SMALL_TAU]:
        pi, _ = slhf_equilibrium(P, None, None, t, t)
        rows.append((f"SLHF: leader pi*, tau_L = tau_F = {t:g}", pi, ""))
    lim = slhf_unregularized(P)
    rows.append(("SLHF: leader, tau -> 0", lim.pi, "least exploitable answer"))

    print("Policies (probabilities of A, B, C) and their guaranteed win rates against an opponent who")
    print("  [sim] answers the policy (simultaneous move: min_y' p(pi > y'), 0.5 at a Nash), or")
    print("  [seq] sees the realised answer and answers it (E_y~pi min_y' p(y > y'), maximised by SLHF):")
    print(f"{'method':42s} {'P(A)':>6s} {'P(B)':>6s} {'P(C)':>6s}  {'[sim]':>6s} {'[seq]':>6s}  note")
    for label, pi, note in rows:
        line = f"{label:42s} {_fmt(pi)}  {float(nash_value(P, pi)):6.3f} {_stackelberg_value(P, pi):6.3f}  {note}"
        print(line.rstrip())
    print()

    _, omega = slhf_equilibrium(P, None, None, tau, tau)
    print(f"SLHF follower omega*(. | y) at tau = {tau:g} (rows y; columns the refined answer A, B, C):")
    for i, c in enumerate(NAMES):
        print(f"     {c} -> {_fmt(omega[i])}")
    fmap = ", ".join(f"{NAMES[i]} -> {NAMES[int(j)]}" for i, j in enumerate(lim.follower_map))
    print(
        f"  tau -> 0: the deterministic best responses {fmap}; leader values V = ({_fmt(lim.values).strip()})"
    )
    print()

    ref = condorcet_refinement(alpha, n_max=3, tau=tau)
    print("Inference-time refinement: P(the user's favourite is among the first N answers), N = 1, 2, 3")
    print("  NLHF: N i.i.d. samples from the Nash;  SLHF: y1 ~ leader, then y(k+1) ~ follower(. | y(k))")
    hdr_tau = f"SLHF chain, tau={tau:g}"
    print(
        f"{'user (favourite)':22s} {'share':>5s}   {'NLHF i.i.d.':>20s}   {'SLHF chain, tau->0':>20s}   {hdr_tau:>20s}"
    )
    favourites = [r[0] for r in CONDORCET_RANKINGS]
    for k, f in enumerate(favourites):
        print(
            f"{f'type {k + 1} ({NAMES[f]})':22s} {float(alpha[k]):5.2f}   {_fmt(ref.nlhf[k])}   "
            f"{_fmt(ref.slhf_limit[k])}   {_fmt(ref.slhf_tau[k])}"
        )
    print(
        f"{'population':22s} {'':5s}   {_fmt(ref.nlhf_population)}   {_fmt(ref.slhf_limit_population)}   "
        f"{_fmt(ref.slhf_tau_population)}"
    )
    sym = condorcet_refinement((1 / 3, 1 / 3, 1 / 3), n_max=3)
    print(
        f"  symmetric alpha = (1/3, 1/3, 1/3), any user: NLHF {_fmt(sym.nlhf[0])}; "
        f"SLHF {_fmt(sym.slhf_limit[0])}  (the paper's numbers)"
    )
    return 0

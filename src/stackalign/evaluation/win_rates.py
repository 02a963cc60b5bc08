"""Every win rate stackalign reports, named for how it counts a tie.

A pairwise comparison of an answer ``a`` with an answer ``b`` to the same prompt ends in an *outcome*
(+1 ``a`` better, 0 tie, -1 ``b`` better, ``None`` unreadable) or in a *soft preference* p(a ≻ b) in [0, 1].
The rates over many pairs:

* :func:`win_tie_rate` — ties count as wins: (win + tie) / (win + tie + loss), the ARGS/SRS papers'
  "win-tie" (unreadable verdicts left out of the denominator). :func:`win_tie` judges the pairs and
  returns it with the counts (:class:`WinTieResult`).
* :func:`win_rate` — ties count half: the mean of 1 / ½ / 0 per pair (:func:`outcome_share`).
* :func:`soft_win_rate` — the mean soft preference p(a ≻ b); a hard verdict enters as its share.
* :func:`bradley_terry_preference` — a reward model's soft preference σ(r(a) − r(b)), the Bradley–Terry
  probability that ``a`` is preferred (Bradley & Terry 1952; the reward-model likelihood of Ouyang et al.,
  arXiv 2203.02155 eq. 1), and :func:`reward_model_win_rate`, its mean over pairs.
* :func:`gold_win_rate` — :func:`win_rate` under a world's gold judge (the training algorithms' evaluation).

The run command reports :func:`win_tie` (and the mean preference as ``win_rate``); the train command
reports :func:`gold_win_rate`, :func:`reward_model_win_rate` or :func:`soft_win_rate` of its judge.
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

# one pair's scores, shared with the judges (defined below both, re-exported here)
from .pair_scores import bradley_terry_preference, outcome_share, preference_of_reward_gap

if TYPE_CHECKING:
    from .judges import Judge, Judgement

__all__ = [
    "WinTieResult",
    "bradley_terry_preference",
    "gold_win_rate",
    "outcome_share",
    "preference_of_reward_gap",
    "reward_model_win_rate",
    "soft_win_rate",
    "win_rate",
    "win_tie",
    "win_tie_rate",
]


# ---------------------------------------------------------------------------------------------------------
# Rates over pairs
# ---------------------------------------------------------------------------------------------------------


def win_tie_rate(outcomes: Sequence[int | None]) -> float | None:
    """Ties count as wins: (win + tie) / (win + tie + loss); unreadable (``None``) outcomes are left out.
    ``None`` when no outcome was read."""
    parsed = [o for o in outcomes if o is not None]
    return sum(o >= 0 for o in parsed) / len(parsed) if parsed else None


def win_rate(outcomes: Sequence[float | None]) -> float | None:
    """Ties count half: the mean :func:`outcome_share` over the read outcomes (``None`` when none was read)."""
    parsed = [o for o in outcomes if o is not None]
    if not parsed:
        return None
    score = 0.0
    for o in parsed:
        score += outcome_share(o)
    return score / len(parsed)


def soft_win_rate(preferences: Any) -> float | None:
    """The mean soft preference p(a ≻ b): a float tensor (averaged in float64) or a sequence of floats
    (``None`` entries, unreadable verdicts, left out; ``None`` when nothing is left)."""
    if hasattr(preferences, "double"):
        return float(preferences.double().mean())
    prefs = [p for p in preferences if p is not None]
    return sum(prefs) / len(prefs) if prefs else None


def reward_model_win_rate(r_a: Any, r_b: Any) -> float:
    """The mean Bradley–Terry preference σ(r_a − r_b) over pairs of reward tensors (a soft win rate)."""
    return soft_win_rate(bradley_terry_preference(r_a, r_b))


def gold_win_rate(world: Any, prompts: Sequence[str], a: Sequence[str], b: Sequence[str]) -> float:
    """:func:`win_rate` (ties count half) of ``a[i]`` over ``b[i]`` under ``world.gold_judge`` (+1 / 0 / −1).
    For n responses per prompt pass the flattened lists with the prompt repeated."""
    if not (len(prompts) == len(a) == len(b)) or not prompts:
        raise ValueError(
            f"gold_win_rate: need equal, non-empty lists, got {len(prompts)}, {len(a)}, {len(b)}"
        )
    return win_rate([world.gold_judge(p, x, y) for p, x, y in zip(prompts, a, b)])


# ---------------------------------------------------------------------------------------------------------
# Judging pairs: the run command's win-tie
# ---------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class WinTieResult:
    """Counts over ``n`` pairs and ``rate = (win + tie) / (win + tie + loss)`` (:func:`win_tie_rate`).

    ``unparseable`` pairs are excluded from the rate's denominator (``rate`` is ``None`` if no pair was
    parsed). ``win_rate`` is the mean preference over the parsed pairs (:func:`soft_win_rate`: ties count
    half; a soft judge's sigmoid(r - r') as it is). With the both-orders protocol, ``flipped`` counts the
    pairs whose two verdicts disagreed among the ``both_read`` pairs read in both orders (``None`` for one
    order). ``judgements`` keeps each pair's verdict in input order (omitted from :meth:`to_dict`).
    """

    win: int
    tie: int
    loss: int
    unparseable: int
    n: int
    rate: float | None
    win_rate: float | None = None
    flipped: int | None = None
    both_read: int | None = None
    judgements: tuple[Judgement, ...] = field(default=(), repr=False, compare=False)

    @property
    def parsed(self) -> int:
        return self.win + self.tie + self.loss

    def to_dict(self, *, with_judgements: bool = False) -> dict[str, Any]:
        keys = ["win", "tie", "loss", "unparseable", "n", "rate", "win_rate"]
        if self.flipped is not None:
            keys += ["flipped", "both_read"]
        d = {k: getattr(self, k) for k in keys}
        if with_judgements:
            d["judgements"] = [asdict(j) for j in self.judgements]
        return d


def win_tie(
    judge: Judge,
    prompts: Sequence[str],
    method_responses: Sequence[str],
    baseline_responses: Sequence[str],
    *,
    workers: int = 1,
) -> WinTieResult:
    """Judge each ``(method_responses[i], baseline_responses[i])`` pair on ``prompts[i]``.

    A judge with ``judge_many`` (the chat judges) gets all pairs at once, so a local model batches them and
    an API judge keeps ``workers`` requests in flight; any other judge is asked pair by pair (``workers``
    threads). The result does not depend on ``workers``: each pair's answer order is a function of the pair
    and the judge's seed.
    """
    if not (len(prompts) == len(method_responses) == len(baseline_responses)):
        raise ValueError(
            f"win_tie needs equally long lists; got {len(prompts)} prompts, {len(method_responses)} method "
            f"responses, {len(baseline_responses)} baseline responses"
        )
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    triples = list(zip(prompts, method_responses, baseline_responses))
    if hasattr(judge, "judge_many"):
        judgements = list(judge.judge_many(triples, workers=workers)) if triples else []
    elif workers == 1 or len(triples) <= 1:
        judgements = [judge.judge(p, a, b) for p, a, b in triples]
    else:
        with ThreadPoolExecutor(max_workers=workers) as pool:
            judgements = list(pool.map(lambda t: judge.judge(*t), triples))
    outcomes = [j.outcome for j in judgements]
    flips = [j.flipped for j in judgements if j.flipped is not None]
    both = getattr(judge, "orders", "one") == "both"
    return WinTieResult(
        win=sum(o == 1 for o in outcomes),
        tie=sum(o == 0 for o in outcomes),
        loss=sum(o == -1 for o in outcomes),
        unparseable=sum(o is None for o in outcomes),
        n=len(judgements),
        rate=win_tie_rate(outcomes),
        win_rate=soft_win_rate([j.preference for j in judgements]),
        flipped=sum(flips) if both else None,
        both_read=len(flips) if both else None,
        judgements=tuple(judgements),
    )

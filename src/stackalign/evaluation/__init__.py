"""Evaluation: text metrics, pairwise judges and win-tie, and run summaries.

It knows nothing of how a text was made: the inputs are prompts, responses and per-row numbers.

- :mod:`.metrics` — :func:`clean_response`, the ARGS :func:`diversity`, :func:`distinct_n`, and
  :class:`Coherence` (prompt–response cosine similarity with a sentence encoder).
- :mod:`.judges` — :class:`GoldJudge`, :class:`RewardModelJudge` (soft sigmoid(r - r')), :class:`LLMJudge`
  (OpenAI-compatible HTTP, ARGS/SRS prompt; one order or both orders);
  :mod:`.hf_judge` — :class:`~.hf_judge.HFJudge`, a local chat model with the same prompt and protocols.
- :mod:`.length_control` — the length-controlled win rate (AlpacaEval 2's logistic regression).
- :mod:`.summary` — :func:`summarize` (rows → ``summary.json``), :func:`format_table`, :func:`plot_sweep`.
- :mod:`.win_rates` — every win rate, named for how a tie counts: :func:`win_tie` / :func:`win_tie_rate`
  (ties count as wins), :func:`win_rate` and :func:`gold_win_rate` (ties count half), :func:`soft_win_rate`
  and :func:`reward_model_win_rate` (the mean soft preference, σ(r − r') for a reward model).
- :mod:`.intervals` — seeded percentile-bootstrap intervals over prompts, paired against a baseline, and
  :func:`mean_ci`, a mean's normal interval.
"""

from .intervals import bootstrap_ci, mean_ci, paired_diff_ci, rate_ci
from .judges import (
    JUDGE_ORDERS,
    JUDGE_SYSTEM_PROMPT,
    JUDGE_USER_TEMPLATE,
    ChatPairJudge,
    GoldJudge,
    Judge,
    JudgeError,
    Judgement,
    LLMJudge,
    RewardModelJudge,
    parse_scores,
)
from .length_control import length_controlled
from .metrics import (
    DEFAULT_STOP_STRINGS,
    Coherence,
    clean_response,
    default_coherence_model_path,
    distinct_n,
    diversity,
    rep_n,
    response_diversity,
    word_tokenize,
)
from .summary import format_paired, format_table, plot_sweep, summarize, sweep_intervals, sweep_series
from .win_rates import (
    WinTieResult,
    bradley_terry_preference,
    gold_win_rate,
    reward_model_win_rate,
    soft_win_rate,
    win_rate,
    win_tie,
    win_tie_rate,
)

__all__ = [
    "DEFAULT_STOP_STRINGS",
    "JUDGE_ORDERS",
    "JUDGE_SYSTEM_PROMPT",
    "JUDGE_USER_TEMPLATE",
    "ChatPairJudge",
    "Coherence",
    "GoldJudge",
    "Judge",
    "JudgeError",
    "Judgement",
    "LLMJudge",
    "RewardModelJudge",
    "WinTieResult",
    "clean_response",
    "default_coherence_model_path",
    "distinct_n",
    "diversity",
    "format_table",
    "length_controlled",
    "parse_scores",
    "plot_sweep",
    "rep_n",
    "response_diversity",
    "summarize",
    "sweep_series",
    "sweep_intervals",
    "format_paired",
    "bootstrap_ci",
    "bradley_terry_preference",
    "gold_win_rate",
    "mean_ci",
    "reward_model_win_rate",
    "soft_win_rate",
    "win_rate",
    "win_tie_rate",
    "paired_diff_ci",
    "rate_ci",
    "win_tie",
    "word_tokenize",
]

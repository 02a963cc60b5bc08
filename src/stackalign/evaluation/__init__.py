"""Evaluation: text metrics, pairwise judges and win-tie, and run summaries.

It knows nothing of how a text was made: the inputs are prompts, responses and per-row numbers.

- :mod:`.metrics` — :func:`clean_response`, the ARGS :func:`diversity`, :func:`distinct_n`, and
  :class:`Coherence` (prompt–response cosine similarity with a sentence encoder).
- :mod:`.judges` — :class:`GoldJudge`, :class:`LLMJudge` (OpenAI-compatible HTTP, ARGS/SRS protocol) and
  :func:`win_tie`.
- :mod:`.summary` — :func:`summarize` (rows → ``summary.json``), :func:`format_table`, :func:`plot_sweep`.
- :mod:`.intervals` — seeded percentile-bootstrap intervals over prompts, paired against a baseline.
"""

from .intervals import bootstrap_ci, paired_diff_ci, rate_ci
from .judges import (
    JUDGE_SYSTEM_PROMPT,
    JUDGE_USER_TEMPLATE,
    GoldJudge,
    Judge,
    JudgeError,
    Judgement,
    LLMJudge,
    WinTieResult,
    parse_scores,
    win_tie,
)
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

__all__ = [
    "DEFAULT_STOP_STRINGS",
    "JUDGE_SYSTEM_PROMPT",
    "JUDGE_USER_TEMPLATE",
    "Coherence",
    "GoldJudge",
    "Judge",
    "JudgeError",
    "Judgement",
    "LLMJudge",
    "WinTieResult",
    "clean_response",
    "default_coherence_model_path",
    "distinct_n",
    "diversity",
    "format_table",
    "parse_scores",
    "plot_sweep",
    "rep_n",
    "response_diversity",
    "summarize",
    "sweep_series",
    "sweep_intervals",
    "format_paired",
    "bootstrap_ci",
    "paired_diff_ci",
    "rate_ci",
    "win_tie",
    "word_tokenize",
]

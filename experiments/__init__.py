"""Studies built on stackalign: the measurements behind the numbers in ``docs/``, not part of the library.

Run each from the repository root as ``python -m experiments.NAME`` (with stackalign installed, or
``PYTHONPATH=src``):

* ``presets``: per-step diagnostics of the SRS presets inside ARGS, and the sweep tables of finished runs
  (``docs/srs-ci.md``).
* ``cd_value_diagnostics`` / ``cd_value_tables``: value-head diagnostics and target interventions for CD
  versus SRS-CD, and their tables (``docs/srs-ci.md``).
* ``srs_predictor_eval``: held-out error and cost of the cached threshold predictors (``docs/srs-ci.md``).
* ``overopt``: the reward over-optimisation plot and table from ``rl`` runs (``docs/training-rl.md``).
* ``slhf_evidence``: round robin, cross-model refinement and Max@k for SLHF (``docs/slhf.md``).
* ``lp_bench``: how the SSAPO follower's LP scales with the number of pairs (``docs/ssapo.md``).
"""

"""What plugs stackalign into other tools (imported explicitly; each may need an optional extra).

- ``stackalign.integrations.transformers``: ``ARGSLogitsProcessor``, (SRS-)ARGS inside ``model.generate``.
- ``stackalign.integrations.trl``: SRS-shaped reward functions for TRL's GRPOTrainer / RLOOTrainer
  (``pip install 'stackalign[trl]'``).
"""

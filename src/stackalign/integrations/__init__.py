"""What plugs stackalign into other tools (imported explicitly; each may need an optional extra).

- ``stackalign.integrations.trl``: SRS-shaped reward functions for TRL's GRPOTrainer / RLOOTrainer
  (``pip install 'stackalign[trl]'``).
"""

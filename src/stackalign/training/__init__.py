"""Training-time alignment: the DPO core, seed preferences, SSAPO self-annotation rounds."""

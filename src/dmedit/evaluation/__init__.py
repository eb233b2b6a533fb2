"""Scoring edits: the weight-free metrics and the paper's model-based ones, what `dmedit eval`
compares, `run --eval` as an extra of a run's bundle, and `dmedit ablate` (the full method and
the paper's three ablations, run and scored). Gets plain frames and masks, never a run's internals."""

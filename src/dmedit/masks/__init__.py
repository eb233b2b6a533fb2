"""Where an edit may happen: detector boxes to per-frame masks, the user's mask files, and
`EditMask`, which holds a run's mask at source size, model size, on the latent grid and feathered."""

"""From a request to files on disk: the settings a user gives, the plan (with every subsystem's
check), the source clip and its mask, the optimisation stage, a cascade's stages, the output
bundle with its report (all at once or not at all), output locks and signals."""

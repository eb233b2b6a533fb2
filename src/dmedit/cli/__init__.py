"""The command line (Typer): run, mask, probe, models, batch, eval and ablate. It turns flags into
the settings records of the layers below and their errors into exit codes; nothing else. The
modules of lower layers are imported inside the commands, so `dmedit --version` and `-h` start
without torch."""

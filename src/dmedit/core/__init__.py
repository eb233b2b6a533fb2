"""The core every layer stands on: errors with their exit codes, the stderr console, CPU thread
settings, atomic file writes and the frozen configuration records (EditConfig, registry entries).
Imports nothing of dmedit."""
